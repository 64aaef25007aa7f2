//! The HTTP service: per-node iPXE scripts, static boot files, the provisioning API, leases,
//! timelines and metrics; the same router on `http.listen` and on the agent's control socket
//! (`/run/netboot-xdp/IFACE.sock`), which the CLI uses whatever `http.listen` is.
//!
//! One room each: [`openapi`] registers every route and derives the API's description;
//! [`script`] renders `/boot.ipxe` (every value made iPXE-safe) and explains it, [`grub`] the
//! Secure Boot chain's GRUB configs; [`api`] the hosts, intents, events and audit log, and the
//! token check ([`auth`]: tokens and scopes); [`read`] leases, nodes, status and `/metrics`;
//! [`files`] the static files under `http.root` (kept open, confined to the root), which
//! [`conn`] sends with sendfile(2) on plain connections; [`listener`] the connection limits and
//! TLS; [`page`] `?limit=&after=`; [`state`] what the routes share; [`client`] one request, for
//! the CLI and the bench. This file: binding, serving, the router, its middleware and the
//! fallback to static files.

pub mod api;
pub mod auth;
pub mod client;
pub mod conn;
pub mod files;
pub mod grub;
pub mod listener;
pub mod openapi;
pub mod page;
pub mod read;
pub mod script;
pub mod state;

pub use script::{Plan, explain, ipxe_safe, plan};
pub use state::{HttpState, Peer, View};

use crate::published::Follower;
use crate::http::listener::PeerAddr;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use crate::stats::Stage;
use crate::timeline::Milestone;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

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
    let (routes, _) = openapi::routes().split_for_parts();
    routes
        .fallback(static_file)
        .layer(middleware::from_fn_with_state(state.clone(), crate::http::api::authorize))
        .layer(middleware::from_fn_with_state(state.clone(), confine_and_count))
        .with_state(state)
}

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

#[cfg(test)]
mod tests {
    use super::{HttpState, StatusCode, header, ipxe_safe, router};
    use crate::runtime::AgentRecord;

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
