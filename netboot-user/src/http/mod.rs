//! The HTTP handoff: per-node iPXE scripts, static boot files, leases and metrics.
//!
//! - `GET /boot.ipxe[?mac=MAC]`: `http.script` (a minijinja template under `http.root`) rendered
//!   for the node (without `mac`, the node that has the requesting address): `mac`, `ip`, `hostname`, `class`, `arch`, `vars`, `server`. Every value is
//!   reduced to characters that cannot change an iPXE script's meaning (no newline, `$`, `;`,
//!   quotes, spaces), so a hostname or a variable cannot inject commands.
//! - Static files under `http.root` ([`crate::http::files`]): kept open, sent with sendfile(2)
//!   on plain connections ([`crate::http::conn`]), HEAD, one Range, ETag/If-None-Match,
//!   Last-Modified, confined to the root: `..` and symlinks leaving it are refused.
//! - `GET /api/v1/nodes[?stage=S][&idle=SECS]` and `/api/v1/nodes/MAC`: boot timelines
//!   ([`crate::timeline`]).
//! - `GET /api/v1/leases`: the lease store as JSON (with the kernel's renewals not yet written); `GET /api/v1/status`: what
//!   `netboot-xdp status --json` prints; `GET /metrics`: Prometheus text ([`crate::metrics`]).
//!
//! The same routes are served on the agent's control socket (`/run/netboot-xdp/IFACE.sock`),
//! which the CLI uses whatever `http.listen` is.

pub mod api;
pub mod auth;
pub mod client;
pub mod conn;
pub mod files;
pub mod grub;
pub mod listener;
pub mod openapi;
pub mod page;

use crate::published::Follower;
use crate::config::{Config, Host};
use crate::store::LeaseReader;
use crate::fastpath::{Counters, pins};
use crate::http::listener::PeerAddr;
use crate::mac::MacAddr;
use crate::stats::Stats;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::Extension;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::{BTreeMap, HashMap};
use crate::runtime::AgentRecord;
use crate::stats::Stage;
use crate::store::records::Intent;
use crate::config::profile::{Choice, Facts, choose};
use crate::timeline::{Milestone, Timelines};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// What the HTTP layer takes from the config; replaced as a whole on reload.
pub struct View {
    pub root: PathBuf,
    pub script: PathBuf,
    pub hosts: HashMap<MacAddr, Host>,
    /// `[api] tokens_file`'s tokens.
    pub tokens: crate::http::auth::Tokens,
    pub public_read: bool,
    /// `http.listen`'s port, for the URLs scripts get.
    pub port: u16,
    pub profiles: Vec<crate::config::profile::Profile>,
    /// `http.listen` also speaks TLS (`[api] tls_cert`): tokens are refused over plain HTTP.
    pub tls: bool,
    /// `http.max_downloads` (0 = unlimited).
    pub max_downloads: u32,
}

impl View {
    pub fn new(config: &Config) -> View {
        View {
            root: config.http.root.clone(),
            script: config.http.script.clone(),
            hosts: config.dhcp.reservations().map(|h| (h.mac, h.clone())).collect(),
            tokens: crate::http::auth::Tokens::new(config.api.tokens_path.clone()),
            public_read: config.api.public_read,
            port: config.http.listen.port(),
            profiles: config.profiles.clone(),
            tls: config.api.tls_cert.is_some(),
            max_downloads: config.http.max_downloads,
        }
    }
}

/// What a node with intent `local` gets: back to the firmware's next boot device, explicitly
/// (a BIOS boots the first disk through `sanboot`; UEFI's boot manager takes `exit` as "next").
const LOCAL_BOOT_SCRIPT: &str = "#!ipxe\necho netboot-xdp: intent local, booting the local disk\n\
iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n";

pub struct HttpState {
    view: RwLock<Arc<View>>,
    pub server: Ipv4Addr,
    /// Where scripts and `/api/v1/leases` read leases.
    pub leases: LeaseReader,
    pub agent: AgentRecord,
    pub stats: Arc<Stats>,
    pub timelines: Arc<Timelines>,
    /// Kernel renewals not in the store yet, shown in `/api/v1/leases`.
    pub renewals: Arc<crate::dhcp::UnwrittenRenewals>,
    /// This server's view of its cluster (shared store only).
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    /// `cluster.server_id` without a shared store.
    server_id: Option<String>,
    /// Hosts of the API, node intents, the audit log (absent in unit tests).
    pub provision: Option<Arc<crate::provision::Provision>>,
    /// The machines that asked (absent in unit tests).
    pub discovery: Option<Arc<crate::provision::discovery::Discovery>>,
    /// Files of `http.root` kept open.
    pub files: crate::http::files::OpenFiles,
    /// Files being sent now, for `http.max_downloads`.
    downloads: Arc<std::sync::atomic::AtomicU32>,
}

/// A place among the files being sent, held by the response (its extensions live until the
/// connection wrote the last byte) and given back on drop.
#[derive(Clone)]
struct Download {
    _slot: Arc<DownloadSlot>,
}

struct DownloadSlot(Arc<std::sync::atomic::AtomicU32>);

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl HttpState {
    /// A place among `max` concurrent downloads (0 = unlimited), or `None` when all are taken.
    fn admit_download(&self, max: u32) -> Option<Download> {
        use std::sync::atomic::Ordering;
        let taken = self.downloads.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1));
        taken.ok().map(|_| Download { _slot: Arc::new(DownloadSlot(self.downloads.clone())) })
    }
}

impl HttpState {
    /// Fails only on a `cluster.store` URL that does not parse (validated with the config).
    pub fn new(config: &Config, server: Ipv4Addr, agent: AgentRecord, stats: Arc<Stats>, timelines: Arc<Timelines>) -> anyhow::Result<HttpState> {
        Ok(HttpState {
            view: RwLock::new(Arc::new(View::new(config))),
            server,
            leases: LeaseReader::new(config)?,
            agent,
            stats,
            timelines,
            renewals: Arc::default(),
            cluster: None,
            server_id: config.cluster.server_id().map(str::to_string),
            provision: None,
            discovery: None,
            files: Default::default(),
            downloads: Arc::default(),
        })
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status of the agent: what `netboot-xdp status --json` prints.
    pub fn status(&self) -> serde_json::Value {
        let counters = Counters::from_pin(&pins::iface_dir(&self.agent.iface)).ok();
        serde_json::json!({
            "iface": self.agent.iface,
            "agent_pid": self.agent.pid,
            "agent_running": true,
            "xdp_mode": self.agent.xdp_mode,
            "config": self.agent.config,
            "counters": counters.map(|c| c.named()),
            "agent": self.stats.snapshot(),
            "nodes": self.timelines.len(),
            "nodes_evicted": self.timelines.nodes_dropped(),
            "cluster": match &self.cluster {
                Some(c) => c.to_json(),
                None => serde_json::json!({
                    "server_id": self.server_id,
                    "members": self.server_id.iter().collect::<Vec<_>>(),
                    "owned_buckets": netboot_common::cluster::BUCKETS,
                    "store": "ok",
                    "backend": "sqlite",
                }),
            },
        })
    }
}

/// Binds `http.listen` (at start, so that a busy port stops the agent with a clear error), with
/// an accept backlog for a storm: thousands of iPXE clients connect within a second, and a SYN
/// dropped on a full queue costs its client a 1 s retransmission (the kernel caps the backlog at
/// `net.core.somaxconn`).
pub async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let err = |e: std::io::Error| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}");
    let s = Socket::new(Domain::for_address(listen), Type::STREAM, None).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if listen.is_ipv6() {
        // `[::]:8080` serves IPv4 and IPv6 clients alike, whatever net.ipv6.bindv6only says.
        s.set_only_v6(false).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&listen.into()).map_err(err)?;
    s.listen(65_535).map_err(err)?;
    tokio::net::TcpListener::from_std(s.into()).map_err(err)
}

/// Serves `listener` (nodes and operators) and the control socket `control` (the CLI) until
/// `shutdown` changes; each config published on `configs` applies to the next request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: tokio::net::UnixListener,
    state: Arc<HttpState>,
    mut configs: Follower,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (max_connections, per_client) = (configs.current().http.max_connections, configs.current().http.max_connections_per_client);
    let tls = crate::config::tls::server_config(&configs.current().api)?;
    let follow = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(config) = configs.changed().await {
                let view = Arc::new(View::new(&config));
                *state.view.write().unwrap_or_else(|e| e.into_inner()) = view;
                state.files.clear();
                configs.applied();
            }
        })
    };
    let mut listener = crate::http::listener::LimitedListener::new(listener, max_connections, state.stats.clone()).per_client(per_client);
    let tls_on = tls.is_some();
    if let Some(tls) = tls {
        listener = listener.with_tls(tls);
    }
    let stats = state.stats.clone();
    let app = router(state);
    tracing::info!(listen = %axum::serve::Listener::local_addr(&listener)?, max_connections, per_client, tls = tls_on, "HTTP service up");
    let until = |mut s: watch::Receiver<bool>| async move {
        let _ = s.changed().await;
    };
    let tcp = crate::http::conn::serve(listener, app.clone(), stats, shutdown.clone());
    let unix = axum::serve(control, app).with_graceful_shutdown(until(shutdown));
    let (_, result) = tokio::join!(tcp, async { unix.await });
    follow.abort();
    result?;
    Ok(())
}

pub fn router(state: Arc<HttpState>) -> axum::Router {
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/boot.ipxe", get(boot_script))
        .route("/api/v1/leases", get(leases))
        .route("/api/v1/leases6", get(leases6))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{mac}", get(node))
        .route("/api/v1/status", get(status))
        .merge(crate::http::api::routes())
        .route("/metrics", get(metrics))
        .fallback(static_file)
        .layer(middleware::from_fn_with_state(state.clone(), crate::http::api::authorize))
        .layer(middleware::from_fn_with_state(state.clone(), confine_and_count))
        .with_state(state)
}

/// The live dashboard: one page, no build step, no CDN; it reads the API.
async fn dashboard() -> Response {
    const PAGE: &str = include_str!("dashboard.html");
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// The address of the peer (absent on the control socket).
#[derive(Clone, Copy)]
struct Peer(Option<std::net::IpAddr>);

/// Files under `http.root` (see [`crate::http::files`]); any other `/api/` path is no route.
async fn static_file(State(st): State<Arc<HttpState>>, req: Request) -> Response {
    let path = req.uri().path();
    if path.starts_with("/api/") {
        return crate::http::api::text(StatusCode::NOT_FOUND, "no such API route (see /api/v1/openapi.json)");
    }
    let rel = percent_encoding::percent_decode_str(path.trim_start_matches('/')).decode_utf8_lossy();
    let view = st.view();
    match st.files.get(&view.root, &rel) {
        Ok(file) => {
            // Over `http.max_downloads`: come back in a second. Only iPXE is told so: it waits
            // out a 503 with Retry-After and asks again (measured, docs/BENCHMARKS.md). UEFI's
            // HTTP boot client (`UefiHttpBoot/1.0`, EDK2's HttpBootDxe, GRUB) accepts only 200
            // and would fail the boot, so it and every other client are always served (and
            // counted among the downloads).
            let max = if waits_out_a_503(req.headers()) { view.max_downloads } else { 0 };
            let Some(download) = st.admit_download(max) else {
                st.stats.bump("http_downloads_deferred");
                return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], "busy, retry\n").into_response();
            };
            let sendfile = req.extensions().get::<crate::http::files::SendFileOk>().is_some();
            let mut resp = crate::http::files::respond(req.method(), req.headers(), path, file, sendfile);
            resp.extensions_mut().insert(download);
            resp
        }
        Err(crate::http::files::Refusal::Outside) => {
            st.stats.bump("http_refused_path");
            StatusCode::FORBIDDEN.into_response()
        }
        Err(crate::http::files::Refusal::NotFound) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether the client is iPXE (`User-Agent: iPXE/…`), which retries a 503 by itself.
fn waits_out_a_503(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::USER_AGENT).is_some_and(|ua| ua.as_bytes().starts_with(b"iPXE/"))
}

/// Counts and times every request, and records files fetched on the node's timeline (when
/// their last byte is sent, for a file the connection sends itself).
async fn confine_and_count(State(st): State<Arc<HttpState>>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    st.stats.bump("http_requests");
    let peer = req.extensions().get::<ConnectInfo<PeerAddr>>().map(|c| match c.0.addr {
        SocketAddr::V4(a) => std::net::IpAddr::V4(*a.ip()),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().map_or(std::net::IpAddr::V6(*a.ip()), std::net::IpAddr::V4),
    });
    req.extensions_mut().insert(Peer(peer));
    let path = req.uri().path().trim_start_matches('/').to_string();
    let is_file = !path.is_empty() && !matches!(path.as_str(), "boot.ipxe" | "metrics") && !path.starts_with("api/");
    let mut resp = next.run(req).await;
    st.stats.observe(Stage::HttpRequest, started.elapsed());
    if let (true, Some(ip)) = (is_file, peer) {
        let status = resp.status().as_u16();
        let bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let timelines = st.timelines.clone();
        let record = move |complete: bool| {
            let what = Milestone::File { path: format!("/{path}"), status: if complete { status } else { 499 }, bytes, ms: started.elapsed().as_millis() as u64 };
            timelines.record_by_ip(ip, what);
        };
        match resp.extensions_mut().get_mut::<crate::http::files::SendFile>() {
            Some(sf) => sf.done = Some(Arc::new(record)),
            None => {
                record(true);
            }
        }
    }
    resp
}

/// Keeps only characters that cannot change the meaning of an iPXE script line.
pub fn ipxe_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._:-/=+,@?".contains(c) { c } else { '_' }).collect()
}

async fn boot_script(
    State(st): State<Arc<HttpState>>,
    Extension(peer): Extension<Peer>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    st.stats.bump("http_scripts");
    // `?mac=` if iPXE's URL carries it (`boot.ipxe?mac=${mac}`), else the node that has the
    // requesting address.
    let mac: Option<MacAddr> = match q.get("mac") {
        Some(m) => m.parse().ok(),
        None => peer.0.and_then(|ip| st.timelines.mac_of(ip)),
    };
    let view = st.view();
    let intent = mac.zip(st.provision.as_ref()).and_then(|(m, p)| p.intent(m)).map(|i| i.intent);
    if let (Some(Intent::Local), Some(mac)) = (intent, mac) {
        // The local disk: no lease, no template.
        st.stats.bump("http_scripts_local");
        st.timelines.record(mac, Milestone::Script { status: 200, known: true });
        let plan = plan(&st, &view, Some(mac), None);
        return ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], plan.local_boot).into_response();
    }
    let host = mac.and_then(|m| view.hosts.get(&m));
    let leased = match mac {
        Some(m) => match st.leases.latest_for_mac(m).await {
            Ok(l) => l,
            Err(e) if host.is_some() => {
                tracing::warn!(%m, "boot script: lease store unreadable, the reservation serves: {e:#}");
                None
            }
            Err(e) => {
                // Not "unknown node": the node may well be known; iPXE retries a 503.
                tracing::warn!(%m, "boot script: lease store unreadable: {e:#}");
                return store_unavailable(&st, Some(m));
            }
        },
        None => None,
    };
    // An install gets a token of its own for its installer's phone-home, given only to the
    // node itself (a request from one of its addresses, or the control socket): anyone else
    // asking `?mac=X` could otherwise report X installed before it installed anything.
    let from_the_node = |m: MacAddr| match peer.0 {
        None => true,
        Some(ip) => {
            leased.as_ref().is_some_and(|l| std::net::IpAddr::V4(l.ip) == ip)
                || host.is_some_and(|h| std::net::IpAddr::V4(h.ip) == ip || h.ip6.is_some_and(|a| std::net::IpAddr::V6(a) == ip))
                || st.timelines.mac_of(ip) == Some(m)
        }
    };
    let phone_home = match (intent, mac, st.provision.as_ref()) {
        (Some(Intent::Install), Some(m), Some(_)) if !from_the_node(m) => {
            st.stats.bump("http_boot_token_withheld");
            None
        }
        (Some(Intent::Install), Some(m), Some(p)) => match crate::http::api::boot_token(p, m).await {
            Ok(t) => Some(format!("http://{}:{}/api/v1/nodes/{m}/events?token={t}", st.server, view.port)),
            Err(e) => {
                tracing::warn!(%m, "boot script: cannot store the boot token: {e:#}");
                return store_unavailable(&st, Some(m));
            }
        },
        _ => None,
    };
    let plan = plan(&st, &view, mac, leased.as_ref().map(|l| l.ip));
    let hostname = host.and_then(|h| h.hostname.clone()).or(leased.and_then(|l| l.hostname));
    let ctx = template_context(&st, &plan, hostname, &q, intent, phone_home);
    let resp = match render(&view, &plan.script, ctx) {
        Ok(s) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s).into_response(),
        Err(msg) => {
            st.stats.bump("http_template_errors");
            (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response()
        }
    };
    if let Some(mac) = mac {
        let known = plan.facts.known || plan.facts.ip.is_some();
        st.timelines.record(mac, Milestone::Script { status: resp.status().as_u16(), known });
    }
    resp
}

fn store_unavailable(st: &HttpState, mac: Option<MacAddr>) -> Response {
    st.stats.bump("http_store_unavailable");
    if let Some(mac) = mac {
        st.timelines.record(mac, Milestone::Script { status: 503, known: false });
    }
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "2")], "lease store unavailable\n").into_response()
}

/// What serves a node: what is known of it, the profile chosen, the template and its variables.
#[derive(Debug, serde::Serialize)]
pub struct Plan {
    pub facts: Facts,
    pub choice: Choice,
    /// Relative to `http.root`.
    pub script: std::path::PathBuf,
    /// The profile's vars with the host's over them.
    pub vars: BTreeMap<String, String>,
    /// What intent `local` serves.
    pub local_boot: String,
    /// The profile's GRUB config template (Secure Boot chain), relative to `http.root`.
    pub grub: Option<std::path::PathBuf>,
}

/// The plan for `mac` (its address from the lease store: `leased_ip`).
pub fn plan(st: &HttpState, view: &View, mac: Option<MacAddr>, leased_ip: Option<Ipv4Addr>) -> Plan {
    let host = mac.and_then(|m| view.hosts.get(&m));
    let seen = mac.zip(st.discovery.as_ref()).and_then(|(m, d)| d.facts(m));
    let facts = Facts {
        mac,
        known: host.is_some(),
        ip: host.map(|h| h.ip).or(leased_ip),
        arch: seen.as_ref().and_then(|s| s.arch),
        vendor_class: seen.as_ref().and_then(|s| s.vendor_class.clone()),
        relay: seen.as_ref().and_then(|s| s.relay),
        vars: host.map(|h| h.vars.clone()).unwrap_or_default(),
    };
    let choice = choose(&view.profiles, host.and_then(|h| h.profile.as_deref()), &facts);
    let profile = choice.index.map(|i| &view.profiles[i]);
    let mut vars = profile.map(|p| p.vars.clone()).unwrap_or_default();
    vars.extend(facts.vars.clone());
    let local_boot = match profile.and_then(|p| p.local_boot.as_deref()) {
        Some(cmds) => format!("#!ipxe\necho netboot-xdp: intent local, booting the local disk\n{}\n", cmds.trim_end()),
        None => LOCAL_BOOT_SCRIPT.to_string(),
    };
    Plan {
        script: profile.and_then(|p| p.script.clone()).unwrap_or_else(|| view.script.clone()),
        grub: profile.and_then(|p| p.grub.clone()),
        vars,
        local_boot,
        facts,
        choice,
    }
}

/// The variables a script template gets (docs/DESIGN.md §5), every one made iPXE-safe.
pub(crate) fn template_context(
    st: &HttpState,
    plan: &Plan,
    hostname: Option<String>,
    q: &BTreeMap<String, String>,
    intent: Option<Intent>,
    phone_home: Option<String>,
) -> minijinja::Value {
    let vars: BTreeMap<String, String> = plan.vars.iter().map(|(k, v)| (ipxe_safe(k), ipxe_safe(v))).collect();
    minijinja::context! {
        mac => plan.facts.mac.map(|m| m.to_string()),
        ip => plan.facts.ip.map(|i| i.to_string()),
        hostname => hostname.map(|h| ipxe_safe(&h)),
        class => q.get("class").map(|c| ipxe_safe(c)),
        arch => q.get("arch").map(|a| ipxe_safe(a)),
        vars => vars,
        server => st.server.to_string(),
        known => plan.facts.known || plan.facts.ip.is_some(),
        profile => plan.choice.profile.as_deref().map(ipxe_safe),
        intent => intent.map(Intent::name),
        phone_home => phone_home,
    }
}

/// Renders the template `script` (relative to `http.root`); the error says file and line.
pub(crate) fn render(view: &View, script: &std::path::Path, ctx: minijinja::Value) -> Result<String, String> {
    let path = view.root.join(script);
    let source = std::fs::read_to_string(&path).map_err(|e| format!("cannot read template {}: {e}\n", path.display()))?;
    let mut env = minijinja::Environment::new();
    // Every value printed is made iPXE-safe, whatever the template does with it.
    env.set_formatter(|out, _state, value| {
        let s = if value.is_none() || value.is_undefined() { String::new() } else { value.to_string() };
        out.write_str(&ipxe_safe(&s)).map_err(minijinja::Error::from)
    });
    let name = script.display().to_string();
    env.add_template(&name, &source).and_then(|_| env.get_template(&name)?.render(ctx)).map_err(|e| {
        let line = e.line().map(|l| format!(":{l}")).unwrap_or_default();
        format!("template {}{line}: {e}\n", path.display())
    })
}

/// `GET /api/v1/nodes/{mac}/explain`: which profile serves the node and why, the variables
/// its template gets, and the script it would be served now (no boot token is made).
pub async fn explain(st: &HttpState, mac: MacAddr) -> Response {
    let view = st.view();
    let host = view.hosts.get(&mac);
    let leased = match st.leases.latest_for_mac(mac).await {
        Ok(l) => l,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("lease store unreadable: {e:#}\n")).into_response(),
    };
    let intent = st.provision.as_ref().and_then(|p| p.intent(mac));
    let plan = plan(st, &view, Some(mac), leased.as_ref().map(|l| l.ip));
    let hostname = host.and_then(|h| h.hostname.clone()).or(leased.and_then(|l| l.hostname));
    let phone_home = matches!(intent.as_ref().map(|i| i.intent), Some(Intent::Install)).then(|| "(a per-boot URL, made when the script is served)".to_string());
    let ctx = template_context(st, &plan, hostname, &BTreeMap::new(), intent.as_ref().map(|i| i.intent), phone_home);
    let script = match intent.as_ref().map(|i| i.intent) {
        Some(Intent::Local) => Ok(plan.local_boot.clone()),
        _ => render(&view, &plan.script, ctx.clone()),
    };
    axum::Json(serde_json::json!({
        "mac": mac.to_string(),
        "known": plan.facts.known,
        "facts": plan.facts,
        "intent": intent.map(|i| i.intent.name()),
        "profile": plan.choice.profile,
        "by": plan.choice.by,
        "reason": plan.choice.reason,
        "candidates": plan.choice.candidates,
        "template": plan.script,
        "variables": ctx,
        "script": script.as_ref().ok(),
        "error": script.as_ref().err(),
    }))
    .into_response()
}

async fn leases(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let now = crate::timeline::unix_ms() / 1000;
    match st.leases.all().await {
        Ok(mut leases) => {
            st.renewals.overlay(&mut leases);
            leases.sort_by_key(|l| l.ip);
            match crate::http::page::select("/api/v1/leases", &q, leases, |l| l.ip) {
                Ok(page) => page.respond(|l| l.to_json(now)),
                Err(bad) => bad.into_response(),
            }
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
    }
}

/// The DHCPv6 bindings of the store (issue 16), by address.
async fn leases6(State(st): State<Arc<HttpState>>) -> Response {
    let Some(p) = &st.provision else {
        return axum::Json(Vec::<crate::dhcp6::Lease6>::new()).into_response();
    };
    match crate::store::leases6::load(&p.db, crate::timeline::unix_ms() / 1000).await {
        Ok(mut leases) => {
            leases.sort_by_key(|l| l.ip);
            axum::Json(leases).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
    }
}

/// Every node's timeline; `?stage=S` keeps the nodes whose latest stage is S, `?idle=SECS`
/// those whose latest event is at least SECS old (the stuck ones, in a storm).
async fn nodes(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let idle_ms = match q.get("idle").map(|v| v.parse::<f64>()) {
        Some(Ok(s)) if s >= 0.0 => Some((s * 1000.0) as u64),
        Some(_) => return (StatusCode::BAD_REQUEST, "idle: seconds expected\n").into_response(),
        None => None,
    };
    let now = crate::timeline::unix_ms();
    let nodes: Vec<_> = st
        .timelines
        .nodes()
        .into_iter()
        .filter(|n| q.get("stage").is_none_or(|s| s == n.stage))
        .filter(|n| idle_ms.is_none_or(|i| now.saturating_sub(n.last_ms) >= i))
        .collect();
    crate::http::page::page("/api/v1/nodes", &q, nodes, |n| n.mac)
}

async fn node(State(st): State<Arc<HttpState>>, axum::extract::Path(mac): axum::extract::Path<String>) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return (StatusCode::BAD_REQUEST, format!("not a MAC address: {}\n", ipxe_safe(&mac))).into_response();
    };
    match st.timelines.node(mac) {
        Some(n) => axum::Json(n).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no timeline for {mac}\n")).into_response(),
    }
}

async fn status(State(st): State<Arc<HttpState>>) -> Response {
    axum::Json(st.status()).into_response()
}

async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let xdp = Counters::from_pin(&pins::iface_dir(&st.agent.iface)).ok();
    let text = crate::metrics::render(&st.agent.iface, xdp.as_ref(), &st.stats, st.timelines.len(), st.cluster.as_deref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::{AgentRecord, HttpState, StatusCode, header, ipxe_safe, router};

    /// Issue 13: with the lease store unreadable a node got the "unknown node" script; iPXE
    /// retries a 503.
    #[tokio::test]
    async fn the_script_is_503_when_the_lease_store_cannot_be_read() {
        use std::sync::Arc;
        use tower::ServiceExt;
        let dir = crate::scratch::ScratchDir::new("http-503");
        std::fs::create_dir_all(dir.join("http")).unwrap();
        std::fs::write(dir.join("http/boot.ipxe.j2"), "#!ipxe\necho {{ hostname }}\n").unwrap();
        let text = format!(
            "[server]\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.0.0.0/24\"\n[[dhcp.host]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.5\"\nhostname = \"n1\"\n[http]\nroot = \"{}\"\n",
            dir.join("no-such-state").display(),
            dir.join("http").display()
        );
        let cfg = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let agent = AgentRecord { pid: 1, iface: "nbxtest0".into(), xdp_mode: "skb".into(), config: "t.toml".into(), state_dir: dir.join("no-such-state") };
        let state = HttpState::new(&cfg, "10.0.0.1".parse().unwrap(), agent, Arc::default(), Arc::new(crate::timeline::Timelines::new("nbxtest0"))).expect("state");
        let app = router(Arc::new(state));
        let get = |uri: &str| axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
        let r = app.clone().oneshot(get("/boot.ipxe?mac=52:54:00:00:00:09")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        // A reserved node needs no lease: its script is served.
        let r = app.oneshot(get("/boot.ipxe?mac=52:54:00:00:00:01")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    /// The percent-encoding crate decodes bytes, not characters: what the file lookup gets.
    fn percent_decode(s: &str) -> String {
        percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
    }

    #[test]
    fn percent_decoding_never_splits_a_character() {
        assert_eq!(percent_decode("a%41b"), "aAb");
        assert_eq!(percent_decode("%2e%2E/x"), "../x");
        // A '%' before a multi-byte character, at the end, or with bad hex stays as it is.
        assert_eq!(percent_decode("%é1"), "%é1");
        assert_eq!(percent_decode("%\u{1F600}"), "%\u{1F600}");
        assert_eq!(percent_decode("x%4"), "x%4");
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert_eq!(percent_decode("%ff"), "\u{FFFD}");
    }

    #[test]
    fn values_cannot_inject_ipxe_commands() {
        assert_eq!(ipxe_safe("node-01.lab"), "node-01.lab");
        assert_eq!(ipxe_safe("x\nshell"), "x_shell");
        assert_eq!(ipxe_safe("a ${b}; chain http://evil"), "a___b___chain_http://evil");
        assert_eq!(ipxe_safe("\"q\" 'r'"), "_q___r_");
    }
}
