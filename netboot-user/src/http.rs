//! The HTTP handoff: per-node iPXE scripts, static boot files, leases and metrics.
//!
//! - `GET /boot.ipxe?mac=MAC`: `http.script` (a minijinja template under `http.root`) rendered
//!   for the node: `mac`, `ip`, `hostname`, `class`, `arch`, `vars`, `server`. Every value is
//!   reduced to characters that cannot change an iPXE script's meaning (no newline, `$`, `;`,
//!   quotes, spaces), so a hostname or a variable cannot inject commands.
//! - Static files under `http.root` with HEAD, Range, Last-Modified (tower-http's ServeDir) and
//!   ETag/If-None-Match (here), confined to the root: `..` and symlinks leaving it are refused.
//! - `GET /api/v1/leases`: the lease store as JSON; `GET /metrics`: Prometheus text.

use crate::config::{Config, Host};
use crate::dhcp::store::{LeaseStore, SqliteStore};
use crate::fastpath::{Counters, pins};
use crate::mac::MacAddr;
use crate::stats::Stats;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

pub struct HttpState {
    pub root: PathBuf,
    pub script: PathBuf,
    pub server: Ipv4Addr,
    pub hosts: HashMap<MacAddr, Host>,
    pub state_dir: PathBuf,
    pub iface: String,
    pub stats: Arc<Stats>,
}

impl HttpState {
    pub fn new(config: &Config, server: Ipv4Addr, iface: &str, stats: Arc<Stats>) -> HttpState {
        HttpState {
            root: config.http.root.clone(),
            script: config.http.script.clone(),
            server,
            hosts: config.dhcp.reservations().map(|h| (h.mac, h.clone())).collect(),
            state_dir: config.server.state_dir.clone(),
            iface: iface.to_string(),
            stats,
        }
    }
}

/// Binds `http.listen` (at start, so that a busy port stops the agent with a clear error).
pub async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {listen} (http.listen): {e}"))
}

/// Serves until `shutdown` changes.
pub async fn serve(listener: tokio::net::TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let app = router(Arc::new(state));
    tracing::info!(listen = %listener.local_addr()?, "HTTP service up");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await?;
    Ok(())
}

pub fn router(state: Arc<HttpState>) -> axum::Router {
    let files = tower_http::services::ServeDir::new(&state.root);
    axum::Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route("/api/v1/leases", get(leases))
        .route("/metrics", get(metrics))
        .fallback_service(files)
        .layer(middleware::from_fn_with_state(state.clone(), confine_and_count))
        .with_state(state)
}

/// Counts requests and refuses paths that resolve (through symlinks) outside the root.
async fn confine_and_count(State(st): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    st.stats.bump("http_requests");
    let path = req.uri().path().trim_start_matches('/').to_string();
    if !path.is_empty() && !matches!(path.as_str(), "boot.ipxe" | "metrics") && !path.starts_with("api/") {
        let decoded = percent_decode(&path);
        if decoded.split('/').any(|c| c == "..") {
            st.stats.bump("http_refused_path");
            return StatusCode::FORBIDDEN.into_response();
        }
        if let (Ok(root), Ok(real)) = (st.root.canonicalize(), st.root.join(&decoded).canonicalize()) {
            if !real.starts_with(&root) {
                st.stats.bump("http_refused_path");
                return StatusCode::FORBIDDEN.into_response();
            }
            // ETag from size and modification time (ServeDir gives Last-Modified only).
            if let Some(tag) = std::fs::metadata(&real).ok().filter(|m| m.is_file()).map(|m| etag(&m)) {
                let matches = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                    v.split(',').any(|t| t.trim() == tag || t.trim() == "*")
                });
                if matches {
                    return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
                }
                let mut resp = next.run(req).await;
                if let Ok(v) = header::HeaderValue::from_str(&tag) {
                    resp.headers_mut().insert(header::ETAG, v);
                }
                return resp;
            }
        }
    }
    next.run(req).await
}

fn etag(m: &std::fs::Metadata) -> String {
    let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    format!("\"{:x}-{:x}\"", m.len(), mtime.as_nanos())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps only characters that cannot change the meaning of an iPXE script line.
pub fn ipxe_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._:-/=+,@".contains(c) { c } else { '_' }).collect()
}

async fn boot_script(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    st.stats.bump("http_scripts");
    let path = st.root.join(&st.script);
    let source = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read template {}: {e}\n", path.display())).into_response(),
    };
    let mac: Option<MacAddr> = q.get("mac").and_then(|m| m.parse().ok());
    let host = mac.and_then(|m| st.hosts.get(&m));
    let leased = mac.and_then(|m| SqliteStore::read_only(&st.state_dir).ok()?.latest_for_mac(m).ok().flatten());
    let ip = host.map(|h| h.ip).or(leased.as_ref().map(|l| l.ip));
    let hostname = host.and_then(|h| h.hostname.clone()).or(leased.and_then(|l| l.hostname));
    let vars: BTreeMap<String, String> =
        host.map(|h| h.vars.iter().map(|(k, v)| (ipxe_safe(k), ipxe_safe(v))).collect()).unwrap_or_default();
    let ctx = minijinja::context! {
        mac => mac.map(|m| m.to_string()),
        ip => ip.map(|i| i.to_string()),
        hostname => hostname.map(|h| ipxe_safe(&h)),
        class => q.get("class").map(|c| ipxe_safe(c)),
        arch => q.get("arch").map(|a| ipxe_safe(a)),
        vars => vars,
        server => st.server.to_string(),
        known => host.is_some() || ip.is_some(),
    };
    let mut env = minijinja::Environment::new();
    // Every value printed is made iPXE-safe, whatever the template does with it.
    env.set_formatter(|out, _state, value| {
        let s = if value.is_none() || value.is_undefined() { String::new() } else { value.to_string() };
        out.write_str(&ipxe_safe(&s)).map_err(minijinja::Error::from)
    });
    let name = st.script.display().to_string();
    let rendered = env.add_template(&name, &source).and_then(|_| env.get_template(&name)?.render(ctx));
    match rendered {
        Ok(s) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s).into_response(),
        Err(e) => {
            st.stats.bump("http_template_errors");
            let line = e.line().map(|l| format!(":{l}")).unwrap_or_default();
            (StatusCode::INTERNAL_SERVER_ERROR, format!("template {}{line}: {e}\n", path.display())).into_response()
        }
    }
}

async fn leases(State(st): State<Arc<HttpState>>) -> Response {
    match SqliteStore::read_only(&st.state_dir).and_then(|mut s| s.load()) {
        Ok(leases) => axum::Json(leases).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")).into_response(),
    }
}

async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP netboot_xdp_decisions_total In-kernel decisions of the XDP program, by kind.\n");
    out.push_str("# TYPE netboot_xdp_decisions_total counter\n");
    if let Ok(c) = Counters::from_pin(&pins::iface_dir(&st.iface)) {
        for (name, v) in c.named() {
            out.push_str(&format!("netboot_xdp_decisions_total{{iface=\"{}\",decision=\"{name}\"}} {v}\n", st.iface));
        }
    }
    out.push_str("# HELP netboot_agent_events_total Events counted by the agent, by kind.\n");
    out.push_str("# TYPE netboot_agent_events_total counter\n");
    for (name, v) in st.stats.snapshot() {
        out.push_str(&format!("netboot_agent_events_total{{iface=\"{}\",event=\"{}\"}} {v}\n", st.iface, ipxe_safe(&name)));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::ipxe_safe;

    #[test]
    fn values_cannot_inject_ipxe_commands() {
        assert_eq!(ipxe_safe("node-01.lab"), "node-01.lab");
        assert_eq!(ipxe_safe("x\nshell"), "x_shell");
        assert_eq!(ipxe_safe("a ${b}; chain http://evil"), "a___b___chain_http://evil");
        assert_eq!(ipxe_safe("\"q\" 'r'"), "_q___r_");
    }
}
