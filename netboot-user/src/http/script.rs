//! The per-node boot script (`GET /boot.ipxe`): the plan for a node (its facts, the profile
//! chosen and why, the template and its variables), the template rendered with every value made
//! iPXE-safe, intent `local`'s script, the install's phone-home token, and `explain`.

use crate::mac::MacAddr;
use axum::extract::{Query, State};
use axum::Extension;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use crate::store::records::Intent;
use crate::config::profile::{Choice, Facts, choose};
use crate::timeline::Milestone;
use std::net::Ipv4Addr;
use std::sync::Arc;
use super::state::{HttpState, Peer, View};
use crate::provision::{Provision, Refused};
use crate::store::db::Change;

/// What a node with intent `local` gets: back to the firmware's next boot device, explicitly
/// (a BIOS boots the first disk through `sanboot`; UEFI's boot manager takes `exit` as "next").
const LOCAL_BOOT_SCRIPT: &str = "#!ipxe\necho netboot-xdp: intent local, booting the local disk\n\
iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\nexit\n";

/// Keeps only characters that cannot change the meaning of an iPXE script line.
pub fn ipxe_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._:-/=+,@?".contains(c) { c } else { '_' }).collect()
}

/// The node's iPXE script, rendered from its profile's template.
#[utoipa::path(get, path = "/boot.ipxe",
    params(("mac" = Option<String>, Query, description = "the node (iPXE's `${mac}`); without it, the node that has the requesting address"),
        ("class" = Option<String>, Query, description = "passed to the template"), ("arch" = Option<String>, Query, description = "passed to the template")),
    responses((status = 200, content_type = "text/plain", body = String, description = "the script"),
        (status = 503, description = "the lease store cannot be read: retry (Retry-After)")))]
pub(crate) async fn boot_script(
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
        (Some(Intent::Install), Some(m), Some(p)) => match boot_token(p, m).await {
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
    let (script, error) = match script {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    axum::Json(Explain {
        by: plan.choice.by,
        candidates: plan.choice.candidates,
        error,
        known: plan.facts.known,
        facts: plan.facts,
        intent: intent.map(|i| i.intent),
        mac,
        profile: plan.choice.profile,
        reason: plan.choice.reason,
        script,
        template: plan.script,
        variables: ctx,
    })
    .into_response()
}

/// `GET /api/v1/nodes/{mac}/explain` (the fields in the order they have always been written).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Explain {
    /// What chose the profile: `host`, `discover`, `selector` or `default`.
    pub by: &'static str,
    /// Every profile's verdict, in the config's order.
    pub candidates: Vec<crate::config::profile::Verdict>,
    /// Why the script cannot be rendered (file and line), if it cannot.
    pub error: Option<String>,
    pub facts: Facts,
    pub intent: Option<Intent>,
    pub known: bool,
    pub mac: MacAddr,
    pub profile: Option<String>,
    pub reason: String,
    /// The script the node would get now.
    pub script: Option<String>,
    /// The template, relative to `http.root`.
    #[schema(value_type = String)]
    pub template: std::path::PathBuf,
    /// The template's variables by name, as it gets them (iPXE-safe).
    #[schema(value_type = BTreeMap<String, serde_json::Value>)]
    pub variables: minijinja::Value,
}

/// The token of `mac`'s install for its phone-home: made when its first install script is
/// served and kept until its intent changes (an `installed` report, an operator), so that
/// scripts fetched again (a retried boot, anyone asking for that MAC) cost no store write and
/// never invalidate the URL an installer already has.
pub async fn boot_token(p: &Provision, mac: MacAddr) -> anyhow::Result<String> {
    if let Some(t) = p.intent(mac).and_then(|i| i.boot_token) {
        return Ok(t);
    }
    let token = super::auth::boot_token();
    let unset = |p: &Provision| match p.intent(mac).and_then(|i| i.boot_token) {
        Some(_) => Err(Refused::Conflict("made meanwhile".into())),
        None => Ok(()),
    };
    match p.write(vec![Change::BootToken { mac, token: token.clone() }], None, unset).await {
        Ok(()) => Ok(token),
        // Another request for this node made one first: that one stands.
        Err(Refused::Conflict(_)) => p.intent(mac).and_then(|i| i.boot_token).ok_or_else(|| anyhow::anyhow!("boot token of {mac} vanished")),
        Err(r) => Err(anyhow::anyhow!("{r:?}")),
    }
}
