//! `/api/v1` routes of provisioning (DESIGN.md §9, normative): hosts, node intents and
//! events, the audit log; and the bearer-token check in front of every `/api/v1` route.
//!
//! Who may do what: the control socket (root's) anything, without a token. Over `http.listen`
//! with `[api] tokens_file`: a token of scope read for reads (none if `public_read`), write for
//! writes, admin for the audit log; 401 without a valid token, 403 with one too small. Without
//! a tokens file reads are public and writes need the control socket. An installer's
//! phone-home may use its boot's token (`?token=`, from the script's `phone_home` URL) instead.
//!
//! Helpers return `Result<_, Response>`: the error is the answer, sent once per request.
#![allow(clippy::result_large_err)]

use super::auth::Scope;
use crate::store::db::Change;
use crate::store::records::{AuditEntry, EventDoc, EventKind, HostDoc, HostView, Intent, NodeEvent};
use crate::provision::{Provision, Refused};
use crate::http::HttpState;
use crate::http::listener::PeerAddr;
use crate::mac::MacAddr;
use crate::timeline::Milestone;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who is asking, for the audit log.
#[derive(Clone)]
pub struct Who(pub String);

/// `{mac}` of a route.
const MAC: (&str, &str) = ("mac", "the node's MAC address, `52:54:00:12:34:56`");

/// `POST /api/v1/hosts:import`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Imported {
    /// Hosts added or replaced.
    imported: usize,
}

/// `PUT /api/v1/nodes/{mac}/intent`'s answer: the intent now stored.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct IntentSet {
    mac: MacAddr,
    intent: Intent,
    intent_once: bool,
}

/// `POST /api/v1/nodes/{mac}/events`'s answer: the event recorded and the node's intent after it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EventRecorded {
    mac: MacAddr,
    /// `installed` or `failed`.
    event: &'static str,
    intent: Option<Intent>,
}

/// A machine of `/api/v1/discovered`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Discovered {
    #[serde(flatten)]
    seen: crate::store::discovered::Seen,
    /// A host (config or API) describes it (listed only with `?all=true`).
    known: bool,
}

#[utoipa::path(get, path = "/api/v1/nodes/{mac}/explain", params(("mac" = String, Path, description = MAC.1)),
    responses((status = 200, body = crate::http::script::Explain), (status = 404, description = "not a MAC address")),
    description = "Which profile serves the node and why, its template's variables and the script it would get now")]
pub(crate) async fn explain(State(st): State<Arc<HttpState>>, Path(mac): Path<String>) -> Response {
    match target(&st, &mac) {
        Ok((_, mac)) => crate::http::explain(&st, mac).await,
        Err(r) => r,
    }
}

/// Machines seen that no host describes, most recently seen first; `?all=true` lists the
/// known ones too (with `"known": true`).
#[utoipa::path(get, path = "/api/v1/discovered",
    params(("all" = Option<bool>, Query, description = "list the known machines too"), crate::http::page::Paging),
    responses((status = 200, body = Vec<Discovered>, description = "Link: rel=next when more follow")))]
pub(crate) async fn discovered(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let Some(d) = st.discovery.as_ref() else { return text(StatusCode::SERVICE_UNAVAILABLE, "discovery is not running") };
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    let hosts = &st.view().hosts;
    match d.list().await {
        Ok(seen) => {
            let listed: Vec<(bool, crate::store::discovered::Seen)> = seen.into_iter().map(|s| (hosts.contains_key(&s.mac), s)).filter(|(known, _)| all || !known).collect();
            match crate::http::page::select("/api/v1/discovered", &q, listed, |(_, s)| s.mac) {
                Ok(page) => page.respond(|(known, seen)| Discovered { seen, known }),
                Err(bad) => bad.into_response(),
            }
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("the store cannot be read: {e:#}")),
    }
}

pub fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    (code, m).into_response()
}

fn refused(r: Refused) -> Response {
    match r {
        Refused::Conflict(m) => text(StatusCode::CONFLICT, m),
        Refused::Invalid(m) => text(StatusCode::UNPROCESSABLE_ENTITY, m),
        Refused::Store(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("the store cannot be written: {e:#}")),
    }
}

/// The bearer-token check of every `/api/v1` route (see the module's comment).
pub async fn authorize(State(st): State<Arc<HttpState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let Some(need) = Scope::needed(req.method(), &path) else {
        return next.run(req).await;
    };
    let Some(peer) = req.extensions().get::<ConnectInfo<PeerAddr>>().map(|c| c.0) else {
        req.extensions_mut().insert(Who("control-socket".into()));
        return next.run(req).await;
    };
    let view = st.view();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let deny = |code: StatusCode, msg: &str| {
        st.stats.bump(if code == StatusCode::UNAUTHORIZED { "api_unauthorized" } else { "api_forbidden" });
        (code, [(header::WWW_AUTHENTICATE, "Bearer")], format!("{msg}\n")).into_response()
    };
    if bearer.is_some() && view.tls && !peer.tls {
        // The token crossed the network in clear once; it must not be accepted that way.
        st.stats.bump("api_token_over_plain_http");
        return (StatusCode::FORBIDDEN, "tokens are accepted over TLS only ([api] tls_cert): use https:// on the same port\n").into_response();
    }
    match bearer.as_deref().map(|t| view.tokens.check(t)) {
        Some(Some((name, scope))) if scope >= need => {
            req.extensions_mut().insert(Who(name));
            next.run(req).await
        }
        Some(Some((name, scope))) => deny(StatusCode::FORBIDDEN, &format!("token {name} has scope {}; this needs {}", scope.name(), need.name())),
        Some(None) => deny(StatusCode::UNAUTHORIZED, "invalid token"),
        None if need == Scope::Read && (view.public_read || !view.tokens.configured()) => {
            req.extensions_mut().insert(Who("anonymous".into()));
            next.run(req).await
        }
        // An installer's phone-home with its boot token: checked by the handler.
        None if req.method() == Method::POST && path.ends_with("/events") && req.uri().query().is_some_and(|q| q.contains("token=")) => next.run(req).await,
        None if !view.tokens.configured() => deny(StatusCode::UNAUTHORIZED, "writes need the control socket or [api] tokens_file and a token"),
        None => deny(StatusCode::UNAUTHORIZED, "a bearer token is needed (netboot-xdp token add)"),
    }
}

fn provision(st: &HttpState) -> Result<&Arc<Provision>, Response> {
    st.provision.as_ref().ok_or_else(|| text(StatusCode::SERVICE_UNAVAILABLE, "provisioning is not running"))
}

/// The provisioning state and the MAC of a `/{mac}` route.
fn target<'a>(st: &'a HttpState, mac: &str) -> Result<(&'a Arc<Provision>, MacAddr), Response> {
    let p = provision(st)?;
    let mac = mac.parse().map_err(|_| text(StatusCode::BAD_REQUEST, format!("not a MAC address: {}", crate::http::ipxe_safe(mac))))?;
    Ok((p, mac))
}

fn audit_entry(who: &Who, method: &str, path: &str, target: String, body: &[u8]) -> AuditEntry {
    let mut detail = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
    if body.len() > 2048 {
        detail.push_str("...");
    }
    AuditEntry { at: (crate::timeline::unix_ms() / 1000) as i64, who: who.0.clone(), action: format!("{method} {path}"), target, detail }
}

/// Every host: the config's (`source: "config"`, read-only here) and the API's.
fn all_hosts(p: &Provision) -> Vec<HostView> {
    let config = p.config();
    let contents = p.contents();
    let mut v: Vec<HostView> = config
        .dhcp
        .file_reservations()
        .map(|h| HostView::of(h, contents.intents.get(&h.mac), "config"))
        .chain(config.dhcp.api_hosts.iter().map(|h| HostView::of(h, contents.intents.get(&h.mac), "api")))
        .collect();
    v.sort_by_key(|h| h.doc.mac);
    v
}

/// One host, as [`all_hosts`] lists it.
fn find_host(p: &Provision, mac: MacAddr) -> Option<HostView> {
    let config = p.config();
    let intent = p.intent(mac);
    if let Some(h) = config.dhcp.file_reservations().find(|h| h.mac == mac) {
        return Some(HostView::of(h, intent.as_ref(), "config"));
    }
    config.dhcp.api_hosts.iter().find(|h| h.mac == mac).map(|h| HostView::of(h, intent.as_ref(), "api"))
}

#[utoipa::path(get, path = "/api/v1/hosts", responses((status = 200, body = Vec<HostView>)),
    description = "Every host: the config's (read-only here) and the API's")]
pub(crate) async fn list_hosts(State(st): State<Arc<HttpState>>) -> Response {
    match provision(&st) {
        Ok(p) => axum::Json(all_hosts(p)).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/hosts/{mac}", params(("mac" = String, Path, description = MAC.1)),
    responses((status = 200, body = HostView), (status = 404, description = "no such host")))]
pub(crate) async fn get_host(State(st): State<Arc<HttpState>>, Path(mac): Path<String>) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match find_host(p, mac) {
        Some(h) => axum::Json(h).into_response(),
        None => text(StatusCode::NOT_FOUND, format!("no host {mac}")),
    }
}

/// The changes that store `doc`: its host, and its intent (none if it names none).
fn host_changes(doc: &HostDoc) -> Vec<Change> {
    let intent = match doc.node_intent() {
        Some((intent, once)) => Change::SetIntent { mac: doc.mac, intent, once },
        None => Change::ClearIntent(doc.mac),
    };
    vec![Change::PutHost(doc.host()), intent]
}

/// A JSON body as a host document, the MAC taken from the path.
fn host_doc(mac: MacAddr, mut v: serde_json::Value) -> Result<HostDoc, Response> {
    let obj = v.as_object_mut().ok_or_else(|| text(StatusCode::UNPROCESSABLE_ENTITY, "a JSON object expected"))?;
    obj.remove("source");
    match obj.get("mac").and_then(|m| m.as_str()).map(str::parse::<MacAddr>) {
        Some(Ok(m)) if m != mac => return Err(text(StatusCode::UNPROCESSABLE_ENTITY, format!("the body's mac {m} is not the path's {mac}"))),
        Some(Err(_)) => return Err(text(StatusCode::UNPROCESSABLE_ENTITY, "mac: not a MAC address")),
        _ => {}
    }
    obj.insert("mac".into(), serde_json::Value::String(mac.to_string()));
    serde_json::from_value(v).map_err(|e| text(StatusCode::UNPROCESSABLE_ENTITY, format!("host: {e}")))
}

fn json_body(body: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(body).map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")))
}

/// Creates or replaces a host of the API (201 created, 200 replaced).
#[utoipa::path(put, path = "/api/v1/hosts/{mac}", params(("mac" = String, Path, description = MAC.1)), request_body = HostDoc,
    responses((status = 200, body = HostView, description = "replaced"), (status = 201, body = HostView, description = "created"),
        (status = 409, description = "a host of the config"), (status = 422, description = "not a valid host")))]
pub(crate) async fn put_host(State(st): State<Arc<HttpState>>, axum::Extension(who): axum::Extension<Who>, Path(mac): Path<String>, body: axum::body::Bytes) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let doc = match json_body(&body).and_then(|v| host_doc(mac, v)) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let existed = p.contents().hosts.iter().any(|h| h.mac == mac);
    let audit = audit_entry(&who, "PUT", &format!("/api/v1/hosts/{mac}"), mac.to_string(), &body);
    let host = doc.host();
    match p.write(host_changes(&doc), Some(audit), |p| p.validate(std::slice::from_ref(&host), &[])).await {
        Ok(()) => {
            let code = if existed { StatusCode::OK } else { StatusCode::CREATED };
            (code, axum::Json(find_host(p, mac))).into_response()
        }
        Err(r) => refused(r),
    }
}

/// RFC 7386 JSON merge patch of `patch` into `target`.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Changes a host of the API: an RFC 7386 merge patch of its document.
#[utoipa::path(patch, path = "/api/v1/hosts/{mac}", params(("mac" = String, Path, description = MAC.1)),
    request_body(content = Object, content_type = "application/merge-patch+json", description = "the fields of Host to change; null removes"),
    responses((status = 200, body = HostView), (status = 404, description = "no such host"), (status = 422, description = "the result is not a valid host")))]
pub(crate) async fn patch_host(State(st): State<Arc<HttpState>>, axum::Extension(who): axum::Extension<Who>, Path(mac): Path<String>, body: axum::body::Bytes) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let patch = match json_body(&body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(current) = find_host(p, mac) else {
        return text(StatusCode::NOT_FOUND, format!("no host {mac}"));
    };
    let audit = audit_entry(&who, "PATCH", &format!("/api/v1/hosts/{mac}"), mac.to_string(), &body);
    // A host of the config takes a change of its intent only.
    let intent_only = patch.as_object().is_some_and(|o| o.keys().all(|k| k == "intent" || k == "intent_once"));
    let mut merged = serde_json::to_value(&current).unwrap_or_default();
    merge_patch(&mut merged, &patch);
    let doc = match host_doc(mac, merged) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let result = if current.source == "config" && intent_only {
        let change = match doc.node_intent() {
            Some((intent, once)) => Change::SetIntent { mac, intent, once },
            None => Change::ClearIntent(mac),
        };
        p.write(vec![change], Some(audit), |_| Ok(())).await
    } else {
        let host = doc.host();
        p.write(host_changes(&doc), Some(audit), |p| p.validate(std::slice::from_ref(&host), &[])).await
    };
    match result {
        Ok(()) => axum::Json(find_host(p, mac)).into_response(),
        Err(r) => refused(r),
    }
}

/// Removes a host of the API and its intent.
#[utoipa::path(delete, path = "/api/v1/hosts/{mac}", params(("mac" = String, Path, description = MAC.1)),
    responses((status = 204, description = "removed"), (status = 404, description = "no such host"), (status = 409, description = "a host of the config")))]
pub(crate) async fn delete_host(State(st): State<Arc<HttpState>>, axum::Extension(who): axum::Extension<Who>, Path(mac): Path<String>) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if !p.contents().hosts.iter().any(|h| h.mac == mac) {
        if p.file_managed(mac) {
            return refused(Refused::Conflict(format!("host {mac} is managed by the config file; remove it there")));
        }
        return text(StatusCode::NOT_FOUND, format!("no host {mac}"));
    }
    let audit = audit_entry(&who, "DELETE", &format!("/api/v1/hosts/{mac}"), mac.to_string(), b"");
    match p.write(vec![Change::DeleteHost(mac)], Some(audit), |_| Ok(())).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refused(r),
    }
}

/// `POST /api/v1/hosts:import`: CSV (as `dhcp.hosts_file`) or JSON lines
/// (`Content-Type: application/x-ndjson` or `application/jsonl`); all rows or none.
#[utoipa::path(post, path = "/api/v1/hosts:import",
    request_body(content = String, content_type = "text/csv", description = "CSV `mac,ip,hostname[,k=v;...]` as `dhcp.hosts_file`, or JSON lines of Host (`application/x-ndjson`)"),
    responses((status = 200, body = Imported), (status = 422, description = "a row is not a valid host: nothing is imported")))]
pub(crate) async fn import_hosts(State(st): State<Arc<HttpState>>, axum::Extension(who): axum::Extension<Who>, headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Response {
    let p = match provision(&st) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json_lines = kind.contains("ndjson") || kind.contains("jsonl") || kind.contains("json");
    let Ok(text_body) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "the import is not UTF-8");
    };
    let docs = match crate::store::records::parse_import(text_body, json_lines) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let hosts: Vec<_> = docs.iter().map(HostDoc::host).collect();
    let changes: Vec<Change> = docs.iter().flat_map(host_changes).collect();
    let audit = audit_entry(&who, "POST", "/api/v1/hosts:import", "*".into(), &body);
    match p.write(changes, Some(audit), |p| p.validate(&hosts, &[])).await {
        Ok(()) => axum::Json(Imported { imported: hosts.len() }).into_response(),
        Err(r) => refused(r),
    }
}

/// `PUT /api/v1/nodes/{mac}/intent`'s body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntentDoc {
    intent: Intent,
    #[serde(default)]
    intent_once: Option<bool>,
}

/// `PUT /api/v1/nodes/{mac}/intent` `{intent, intent_once}`: any node, a host or not.
#[utoipa::path(put, path = "/api/v1/nodes/{mac}/intent", params(("mac" = String, Path, description = MAC.1)), request_body = IntentDoc,
    responses((status = 200, body = IntentSet), (status = 422, description = "not an intent")))]
pub(crate) async fn put_intent(State(st): State<Arc<HttpState>>, axum::Extension(who): axum::Extension<Who>, Path(mac): Path<String>, body: axum::body::Bytes) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let doc: IntentDoc = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, format!("intent: {e}")),
    };
    let audit = audit_entry(&who, "PUT", &format!("/api/v1/nodes/{mac}/intent"), mac.to_string(), &body);
    let change = Change::SetIntent { mac, intent: doc.intent, once: doc.intent_once.unwrap_or(true) };
    match p.write(vec![change], Some(audit), |_| Ok(())).await {
        Ok(()) => axum::Json(IntentSet { mac, intent: doc.intent, intent_once: doc.intent_once.unwrap_or(true) }).into_response(),
        Err(r) => refused(r),
    }
}

/// The installer's phone-home: recorded in the store and on the node's timeline; `installed`
/// of an `intent_once` node turns its intent to `local`.
#[utoipa::path(post, path = "/api/v1/nodes/{mac}/events",
    params(("mac" = String, Path, description = MAC.1), ("token" = Option<String>, Query, description = "the boot's token (the script's `phone_home` URL), instead of a bearer token")),
    request_body = EventDoc, responses((status = 200, body = EventRecorded), (status = 401, description = "not this node's boot token")))]
pub(crate) async fn post_event(
    State(st): State<Arc<HttpState>>,
    who: Option<axum::Extension<Who>>,
    Path(mac): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let intent = p.intent(mac);
    let who = match (who, q.get("token")) {
        (Some(axum::Extension(w)), _) => w,
        (None, Some(t)) if intent.as_ref().and_then(|i| i.boot_token.as_ref()).is_some_and(|b| b == t) => Who("node-token".into()),
        (None, _) => {
            st.stats.bump("api_unauthorized");
            return text(StatusCode::UNAUTHORIZED, "not this node's boot token");
        }
    };
    let doc: EventDoc = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::UNPROCESSABLE_ENTITY, format!("event: {e}")),
    };
    let name = match doc.event {
        EventKind::Installed => "installed",
        EventKind::Failed => "failed",
    };
    let message: String = doc.message.chars().take(1024).collect();
    let mut changes = vec![Change::Event { mac, event: name.into(), message: message.clone() }];
    let back_to_local = doc.event == EventKind::Installed && intent.as_ref().is_some_and(|i| i.intent == Intent::Install && i.once);
    if back_to_local {
        changes.push(Change::SetIntent { mac, intent: Intent::Local, once: true });
    }
    let audit = audit_entry(&who, "POST", &format!("/api/v1/nodes/{mac}/events"), mac.to_string(), &body);
    match p.write(changes, Some(audit), |_| Ok(())).await {
        Ok(()) => {
            st.timelines.record(mac, Milestone::Event { event: name.into(), message });
            let now = p.intent(mac).map(|i| i.intent);
            axum::Json(EventRecorded { mac, event: name, intent: now }).into_response()
        }
        Err(r) => refused(r),
    }
}

/// A node's events, oldest first.
#[utoipa::path(get, path = "/api/v1/nodes/{mac}/events", params(("mac" = String, Path, description = MAC.1)),
    responses((status = 200, body = Vec<NodeEvent>)))]
pub(crate) async fn get_events(State(st): State<Arc<HttpState>>, Path(mac): Path<String>) -> Response {
    let (p, mac) = match target(&st, &mac) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match p.db.events(mac).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

/// Who changed what, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(("limit" = Option<u32>, Query, description = "at most this many (1000)")),
    responses((status = 200, body = Vec<AuditEntry>)))]
pub(crate) async fn audit(State(st): State<Arc<HttpState>>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let p = match provision(&st) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000i64).clamp(1, 100_000);
    match p.db.audit(limit).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::merge_patch;

    #[test]
    fn merge_patch_replaces_adds_and_removes() {
        let mut t = serde_json::json!({"ip": "10.0.0.5", "vars": {"a": "1", "b": "2"}, "hostname": "n1"});
        merge_patch(&mut t, &serde_json::json!({"vars": {"b": null, "c": "3"}, "hostname": null, "ip": "10.0.0.6"}));
        assert_eq!(t, serde_json::json!({"ip": "10.0.0.6", "vars": {"a": "1", "c": "3"}}));
    }
}
