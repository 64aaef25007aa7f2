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

pub(super) async fn leases(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
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
pub(super) async fn leases6(State(st): State<Arc<HttpState>>) -> Response {
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
pub(super) async fn nodes(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
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

pub(super) async fn node(State(st): State<Arc<HttpState>>, axum::extract::Path(mac): axum::extract::Path<String>) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return (StatusCode::BAD_REQUEST, format!("not a MAC address: {}\n", ipxe_safe(&mac))).into_response();
    };
    match st.timelines.node(mac) {
        Some(n) => axum::Json(n).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no timeline for {mac}\n")).into_response(),
    }
}

pub(super) async fn status(State(st): State<Arc<HttpState>>) -> Response {
    axum::Json(st.status()).into_response()
}

pub(super) async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let xdp = Counters::from_pin(&pins::iface_dir(&st.agent.iface)).ok();
    let text = crate::metrics::render(&st.agent.iface, xdp.as_ref(), &st.stats, st.timelines.len(), st.cluster.as_deref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
