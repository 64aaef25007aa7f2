//! What the provisioning API reads and writes: hosts with their boot intent, node events,
//! audit entries.

use crate::config::Host;
use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// What a node's next boot does (its script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    /// Boot the profile's installer.
    Install,
    /// Boot the local disk: an explicit iPXE `exit` back to the firmware's next boot device.
    Local,
    /// Boot the profile's script with `intent = "rescue"` (the template picks the rescue image).
    Rescue,
    /// Boot the profile's script with `intent = "discover"` (inventory, then power off).
    Discover,
}

impl Intent {
    pub fn name(self) -> &'static str {
        match self {
            Intent::Install => "install",
            Intent::Local => "local",
            Intent::Rescue => "rescue",
            Intent::Discover => "discover",
        }
    }

    pub fn parse(s: &str) -> Option<Intent> {
        [Intent::Install, Intent::Local, Intent::Rescue, Intent::Discover].into_iter().find(|i| i.name() == s)
    }
}

/// A node's intent as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIntent {
    pub intent: Intent,
    /// Back to `local` after the installer reports `installed`.
    pub once: bool,
    /// The token of the node's current install boot, for its phone-home.
    pub boot_token: Option<String>,
}

/// A host as the API takes it (`PUT`, an import): the reservation and the node's intent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = HostWrite)]
pub struct HostDoc {
    pub mac: MacAddr,
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// Its DHCPv6 address (inside `[dhcp6] prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv6)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub intent: Option<Intent>,
    /// Default true: an install happens once, then the node boots its disk (no boot loop).
    #[serde(default)]
    pub intent_once: Option<bool>,
}

/// A host as the API shows it: its document and where it comes from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Host)]
pub struct HostView {
    #[serde(flatten)]
    pub doc: HostDoc,
    /// `config` (the config file or its hosts file: read-only here) or `api`; ignored on input.
    #[schema(pattern = "^(config|api)$")]
    pub source: &'static str,
}

impl HostView {
    pub fn of(host: &Host, intent: Option<&NodeIntent>, source: &'static str) -> HostView {
        HostView { doc: HostDoc::of(host, intent), source }
    }
}

impl HostDoc {
    pub fn of(host: &Host, intent: Option<&NodeIntent>) -> HostDoc {
        HostDoc {
            mac: host.mac,
            ip: host.ip,
            ip6: host.ip6,
            hostname: host.hostname.clone(),
            profile: host.profile.clone(),
            vars: host.vars.clone(),
            intent: intent.map(|i| i.intent),
            intent_once: intent.map(|i| i.once),
        }
    }


    pub fn host(&self) -> Host {
        Host { mac: self.mac, ip: self.ip, ip6: self.ip6, hostname: self.hostname.clone(), vars: self.vars.clone(), profile: self.profile.clone() }
    }

    /// The intent this document sets, if any.
    pub fn node_intent(&self) -> Option<(Intent, bool)> {
        self.intent.map(|i| (i, self.intent_once.unwrap_or(true)))
    }
}

/// What a node's installer reports (`POST /api/v1/nodes/{mac}/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Installed,
    Failed,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventDoc {
    pub event: EventKind,
    #[serde(default)]
    pub message: String,
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// The token's name, `control-socket`, or `node-token` (an installer's phone-home).
    pub who: String,
    /// `METHOD /path`.
    pub action: String,
    /// The MAC (or `*` for an import).
    pub target: String,
    /// The request's body, cut at 2 KiB.
    pub detail: String,
}

/// One node event as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeEvent {
    pub at: i64,
    pub event: String,
    pub message: String,
}

/// JSON lines or CSV (`mac,ip,hostname[,vars]`, as `dhcp.hosts_file`) of an import.
pub fn parse_import(text: &str, json_lines: bool) -> Result<Vec<HostDoc>, String> {
    if json_lines {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str::<HostDoc>(l).map_err(|e| format!("import:{}:{}: {e}", i + 1, e.column())))
            .collect();
    }
    let rows = crate::config::hosts::parse(std::path::Path::new("import"), text).map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|(_, h)| HostDoc::of(&h, None)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_read_csv_and_json_lines_and_point_at_the_bad_line() {
        let csv = "mac,ip,hostname,vars\n52:54:00:00:00:01,10.0.0.5,n1,rack=r1\n";
        let v = parse_import(csv, false).unwrap();
        assert_eq!((v.len(), v[0].vars["rack"].as_str()), (1, "r1"));
        let bad = parse_import("52:54:00:00:00:01,10.0.0.5,n1\n52:54:00:00:00:0z,10.0.0.6,n2\n", false).unwrap_err();
        assert!(bad.starts_with("import:2:"), "{bad}");
        let jl = "{\"mac\":\"52:54:00:00:00:02\",\"ip\":\"10.0.0.7\",\"intent\":\"install\"}\n\n";
        let v = parse_import(jl, true).unwrap();
        assert_eq!(v[0].node_intent(), Some((Intent::Install, true)));
        let bad = parse_import("{\"mac\":\"52:54:00:00:00:02\",\"ip\":\"10.0.0.7\",\"intent\":\"reboot\"}", true).unwrap_err();
        assert!(bad.starts_with("import:1:") && bad.contains("reboot"), "{bad}");
    }
}
