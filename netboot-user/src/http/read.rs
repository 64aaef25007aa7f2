//! The read-only routes: leases (v4 and v6), node timelines, status and metrics.

use crate::fastpath::{Counters, pins};
use crate::mac::MacAddr;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use super::script::ipxe_safe;
use super::state::HttpState;

/// Every lease of the store, with the kernel's renewals not written yet.
#[utoipa::path(get, path = "/api/v1/leases", params(crate::http::page::Paging),
    responses((status = 200, body = Vec<crate::dhcp::leases::LeaseView>, description = "by address; Link: rel=next when more follow")))]
pub(crate) async fn leases(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
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
#[utoipa::path(get, path = "/api/v1/leases6", responses((status = 200, body = Vec<crate::dhcp6::Lease6>)))]
pub(crate) async fn leases6(State(st): State<Arc<HttpState>>) -> Response {
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
#[utoipa::path(get, path = "/api/v1/nodes",
    params(("stage" = Option<String>, Query, description = "only nodes whose latest stage is this"),
        ("idle" = Option<f64>, Query, description = "only nodes whose latest event is at least this many seconds old"), crate::http::page::Paging),
    responses((status = 200, body = Vec<crate::timeline::Node>, description = "by MAC; Link: rel=next when more follow")))]
pub(crate) async fn nodes(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
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

/// One node's boot timeline.
#[utoipa::path(get, path = "/api/v1/nodes/{mac}", params(("mac" = String, Path, description = "the node's MAC address")),
    responses((status = 200, body = crate::timeline::Node), (status = 404, description = "no timeline for it")))]
pub(crate) async fn node(State(st): State<Arc<HttpState>>, axum::extract::Path(mac): axum::extract::Path<String>) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return (StatusCode::BAD_REQUEST, format!("not a MAC address: {}\n", ipxe_safe(&mac))).into_response();
    };
    match st.timelines.node(mac) {
        Some(n) => axum::Json(n).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no timeline for {mac}\n")).into_response(),
    }
}

/// The agent's status, counters and cluster (as `netboot-xdp status --json`).
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = crate::http::state::Status)))]
pub(crate) async fn status(State(st): State<Arc<HttpState>>) -> Response {
    axum::Json(st.status()).into_response()
}

/// Prometheus text: the kernel's and the agent's counters, latencies, cluster.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub(crate) async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let xdp = Counters::from_pin(&pins::iface_dir(&st.agent.iface)).ok();
    let text = crate::metrics::render(&st.agent.iface, xdp.as_ref(), &st.stats, st.timelines.len(), st.cluster.as_deref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
