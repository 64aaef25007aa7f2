//! The OpenAPI 3.1 description of `/api/v1` (served at `/api/v1/openapi.json`), built from one
//! table of operations; the provision_lab test calls every operation it lists, and checks that
//! every normative route is listed.

use serde_json::{Value, json};

/// One operation: method, path, the scope it needs over `http.listen`, what it does, the
/// schema of its JSON body (if any) and of its 2xx answer.
struct Op {
    method: &'static str,
    path: &'static str,
    scope: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    answer: &'static str,
}

const OPS: &[Op] = &[
    Op { method: "get", path: "/api/v1/status", scope: "read", summary: "The agent's status, counters and cluster (as `netboot-xdp status --json`)", body: None, answer: "Object" },
    Op { method: "get", path: "/api/v1/leases", scope: "read", summary: "Every lease of the store; `?limit=N&after=IP` pages (Link: rel=next)", body: None, answer: "Leases" },
    Op { method: "get", path: "/api/v1/leases6", scope: "read", summary: "Every DHCPv6 binding of the store that has not expired", body: None, answer: "Leases6" },
    Op { method: "get", path: "/api/v1/nodes", scope: "read", summary: "Every node's boot timeline; `?stage=S`, `?idle=SECS`, `?limit=N&after=MAC` pages (Link: rel=next)", body: None, answer: "Nodes" },
    Op { method: "get", path: "/api/v1/nodes/{mac}", scope: "read", summary: "One node's boot timeline", body: None, answer: "Node" },
    Op { method: "get", path: "/api/v1/hosts", scope: "read", summary: "Every host: the config's (read-only here) and the API's", body: None, answer: "Hosts" },
    Op { method: "post", path: "/api/v1/hosts:import", scope: "write", summary: "Adds or replaces hosts, all or none (CSV `mac,ip,hostname[,k=v;...]` or JSON lines)", body: Some("Import"), answer: "Object" },
    Op { method: "get", path: "/api/v1/hosts/{mac}", scope: "read", summary: "One host", body: None, answer: "Host" },
    Op { method: "put", path: "/api/v1/hosts/{mac}", scope: "write", summary: "Creates or replaces a host of the API (201 created, 200 replaced)", body: Some("HostWrite"), answer: "Host" },
    Op { method: "patch", path: "/api/v1/hosts/{mac}", scope: "write", summary: "Changes a host of the API (RFC 7386 merge patch)", body: Some("HostPatch"), answer: "Host" },
    Op { method: "delete", path: "/api/v1/hosts/{mac}", scope: "write", summary: "Removes a host of the API and its intent", body: None, answer: "None" },
    Op { method: "put", path: "/api/v1/nodes/{mac}/intent", scope: "write", summary: "Sets a node's boot intent", body: Some("IntentWrite"), answer: "Object" },
    Op { method: "post", path: "/api/v1/nodes/{mac}/events", scope: "write", summary: "The installer's phone-home (a write token, or `?token=` of the boot)", body: Some("EventWrite"), answer: "Object" },
    Op { method: "get", path: "/api/v1/nodes/{mac}/events", scope: "read", summary: "A node's events, oldest first", body: None, answer: "Events" },
    Op { method: "get", path: "/api/v1/nodes/{mac}/explain", scope: "read", summary: "Which profile serves the node and why, its template's variables and script", body: None, answer: "Explain" },
    Op { method: "get", path: "/api/v1/discovered", scope: "read", summary: "Machines seen that no host describes; `?all=true` adds the known; `?limit=N&after=MAC` pages (Link: rel=next)", body: None, answer: "Discovered" },
    Op { method: "get", path: "/api/v1/audit", scope: "admin", summary: "Who changed what, newest first; `?limit=N`", body: None, answer: "Audit" },
    Op { method: "get", path: "/api/v1/openapi.json", scope: "read", summary: "This description", body: None, answer: "Object" },
];

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let opt = |t: &str| json!({ "type": [t, "null"] });
    let mac = json!({ "type": "string", "pattern": "^([0-9a-f]{2}:){5}[0-9a-f]{2}$" });
    let ipv4 = json!({ "type": "string", "format": "ipv4" });
    let ipv6 = json!({ "type": "string", "format": "ipv6" });
    let vars = json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let intent = json!({ "type": "string", "enum": ["install", "local", "rescue", "discover"] });
    let list = |item: &str| json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } });
    json!({
        "Object": s("object"),
        "None": s("null"),
        "Host": { "type": "object", "required": ["mac", "ip", "source"], "properties": {
            "mac": mac, "ip": ipv4, "ip6": ipv6, "hostname": opt("string"), "profile": opt("string"), "vars": vars,
            "intent": { "oneOf": [intent, s("null")] }, "intent_once": s("boolean"),
            "source": { "type": "string", "enum": ["config", "api"] } } },
        "Hosts": list("Host"),
        "HostWrite": { "type": "object", "required": ["ip"], "properties": {
            "mac": mac, "ip": ipv4, "ip6": ipv6, "hostname": opt("string"), "profile": opt("string"), "vars": vars,
            "intent": intent, "intent_once": s("boolean") } },
        "HostPatch": { "type": "object", "properties": {
            "ip": ipv4, "ip6": opt("string"), "hostname": opt("string"), "profile": opt("string"), "vars": vars, "intent": intent, "intent_once": s("boolean") } },
        "Import": s("string"),
        "IntentWrite": { "type": "object", "required": ["intent"], "properties": { "intent": intent, "intent_once": s("boolean") } },
        "EventWrite": { "type": "object", "required": ["event"], "properties": {
            "event": { "type": "string", "enum": ["installed", "failed"] }, "message": s("string") } },
        "Event": { "type": "object", "properties": { "at": s("integer"), "event": s("string"), "message": s("string") } },
        "Events": list("Event"),
        "AuditEntry": { "type": "object", "properties": {
            "at": s("integer"), "who": s("string"), "action": s("string"), "target": s("string"), "detail": s("string") } },
        "Audit": list("AuditEntry"),
        "Seen": { "type": "object", "required": ["mac", "first_seen", "last_seen", "known"], "properties": {
            "mac": mac, "first_seen": s("integer"), "last_seen": s("integer"), "class": s("string"), "arch": opt("integer"),
            "uuid": opt("string"), "vendor_class": opt("string"), "relay": { "oneOf": [ipv4, s("null")] }, "known": s("boolean") } },
        "Discovered": list("Seen"),
        "Explain": { "type": "object", "required": ["mac", "profile", "by", "reason"], "properties": {
            "mac": mac, "known": s("boolean"), "facts": s("object"), "intent": { "oneOf": [intent, s("null")] },
            "profile": opt("string"), "by": { "type": "string", "enum": ["host", "discover", "selector", "default"] },
            "reason": s("string"), "candidates": s("array"), "template": s("string"), "variables": s("object"),
            "script": opt("string"), "error": opt("string") } },
        "Lease": s("object"),
        "Leases": list("Lease"),
        "Lease6": { "type": "object", "required": ["ip", "duid", "iaid", "state", "expires"], "properties": {
            "ip": ipv6, "duid": s("string"), "iaid": s("integer"), "mac": { "oneOf": [mac, s("null")] },
            "state": { "type": "string", "enum": ["advertised", "bound", "declined"] }, "expires": s("integer") } },
        "Leases6": list("Lease6"),
        "Node": s("object"),
        "Nodes": list("Node"),
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in OPS {
        let mut o = json!({
            "summary": op.summary,
            "operationId": format!("{}{}", op.method, op.path.replace(['/', '{', '}', ':', '.'], "_")),
            "x-scope": op.scope,
            "security": if op.scope == "read" { json!([{}, { "bearer": [] }]) } else { json!([{ "bearer": [] }]) },
            "responses": {
                "2XX": { "description": "done", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{}", op.answer) } } } },
                "401": { "description": "no valid token" },
                "403": { "description": "the token's scope is too small" },
            },
        });
        if op.path.contains("{mac}") {
            o["parameters"] = json!([{ "name": "mac", "in": "path", "required": true, "schema": { "type": "string" } }]);
        }
        if let Some(b) = op.body {
            let media = if b == "Import" { "text/csv" } else { "application/json" };
            o["requestBody"] = json!({ "required": true, "content": { media: { "schema": { "$ref": format!("#/components/schemas/{b}") } } } });
        }
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "netboot-xdp",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Provisioning and observation of a netboot-xdp boot server. Over http.listen a bearer token of \
                            scope read < write < admin is needed ([api] tokens_file; reads are public with public_read \
                            or without a tokens file); the control socket needs none.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
        },
    })
}
