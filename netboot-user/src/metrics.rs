//! `/metrics`: the XDP counters and the agent's counters and latency histograms in the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Written here, not with the `prometheus-client` crate: that crate writes OpenMetrics text
//! (every counter renamed `*_total`, `# EOF`, another content type), which would rename every
//! series operators scrape and alert on; version 0.0.4 is a line per sample.

use crate::fastpath::Counters;
use crate::stats::{Stage, Stats};
use netboot_common::Counter;
use netboot_common::wire::ClientClass;
use std::collections::BTreeMap;
use std::fmt::Write;

const CLASSES: [ClientClass; 4] = [ClientClass::Pxe, ClientClass::Ipxe, ClientClass::Http, ClientClass::Plain];
/// DHCP reply kinds the agent counts per class (`dhcp_sent_{kind}_{class}`).
pub const REPLY_KINDS: [&str; 3] = ["offer", "ack", "nak"];

/// The agent counter of a reply of `kind` to a client of `class`.
pub fn reply_counter(kind: &str, class: ClientClass) -> String {
    format!("dhcp_sent_{kind}_{}", class.name())
}

struct Text {
    out: String,
    iface: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` are added after `iface`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{name}{{iface=\"{}\"", escape(&self.iface));
        for (k, v) in labels {
            let _ = write!(self.out, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.out, "}} {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The whole exposition for one interface.
pub fn render(iface: &str, xdp: Option<&Counters>, stats: &Stats, timeline_nodes: usize, cluster: Option<&crate::cluster::ClusterState>) -> String {
    let agent = stats.snapshot();
    let get = |k: &str| agent.get(k).copied().unwrap_or(0);
    let mut t = Text { out: String::new(), iface: iface.to_string() };

    t.family("netboot_xdp_decisions_total", "counter", "Frames seen by the XDP program, by decision (see README: counters).");
    if let Some(c) = xdp {
        for (name, v) in c.named() {
            t.sample("netboot_xdp_decisions_total", &[("decision", name)], v);
        }
    }

    t.family("netboot_dhcp_replies_total", "counter", "DHCP replies sent, by path (kernel fast path or agent), kind and client class.");
    for class in CLASSES {
        for kind in REPLY_KINDS {
            t.sample("netboot_dhcp_replies_total", &[("path", "agent"), ("kind", kind), ("class", class.name())], get(&reply_counter(kind, class)));
        }
        if let Some(c) = xdp {
            for (kind, ack) in [("offer", false), ("ack", true)] {
                let v = c.get(Counter::for_fast_reply(ack, class));
                t.sample("netboot_dhcp_replies_total", &[("path", "kernel"), ("kind", kind), ("class", class.name())], v);
            }
        }
    }
    t.family("netboot_dhcp_requests_total", "counter", "DHCP requests that reached the agent.");
    t.sample("netboot_dhcp_requests_total", &[], get("dhcp_received"));

    t.family("netboot_lease_commits_total", "counter", "Lease store commits (group commits of one or more leases), by result.");
    t.sample("netboot_lease_commits_total", &[("result", "ok")], get("lease_commits"));
    t.sample("netboot_lease_commits_total", &[("result", "failed")], get("lease_commit_failures"));

    t.family("netboot_tftp_transfers_total", "counter", "TFTP read transfers, by outcome.");
    for (outcome, key) in [("started", "tftp_transfers_started"), ("completed", "tftp_transfers_completed"), ("size_probe", "tftp_size_probes"), ("failed", "tftp_transfers_failed")] {
        t.sample("netboot_tftp_transfers_total", &[("outcome", outcome)], get(key));
    }
    t.family("netboot_tftp_refused_total", "counter", "TFTP requests refused, by reason.");
    for (reason, key) in [
        ("write", "tftp_refused_write"),
        ("path", "tftp_refused_path"),
        ("not_found", "tftp_not_found"),
        ("mode", "tftp_bad_mode"),
        ("busy", "tftp_refused_busy"),
        ("client_limit", "tftp_refused_client_limit"),
    ] {
        t.sample("netboot_tftp_refused_total", &[("reason", reason)], get(key));
    }
    t.family("netboot_tftp_bytes_total", "counter", "File bytes delivered by completed TFTP transfers.");
    t.sample("netboot_tftp_bytes_total", &[], get("tftp_bytes"));
    t.family("netboot_tftp_retransmits_total", "counter", "TFTP DATA blocks sent again after a timeout.");
    t.sample("netboot_tftp_retransmits_total", &[], get("tftp_retransmits"));

    t.family("netboot_http_requests_total", "counter", "HTTP requests, by kind.");
    for (kind, key) in [
        ("all", "http_requests"),
        ("script", "http_scripts"),
        ("refused", "http_refused_path"),
        ("template_error", "http_template_errors"),
        ("deferred", "http_downloads_deferred"),
    ] {
        t.sample("netboot_http_requests_total", &[("kind", kind)], get(key));
    }

    t.family("netboot_http_file_bytes_total", "counter", "File bytes sent with sendfile (rate: the payload's bytes per second).");
    t.sample("netboot_http_file_bytes_total", &[], get("http_file_bytes"));
    t.family("netboot_http_downloads_active", "gauge", "Files being sent now.");
    t.sample("netboot_http_downloads_active", &[], get("http_downloads_active"));

    t.family("netboot_config_reloads_total", "counter", "Configuration reloads (SIGHUP or file change), by result.");
    t.sample("netboot_config_reloads_total", &[("result", "ok")], get("config_reloads"));
    t.sample("netboot_config_reloads_total", &[("result", "invalid")], get("config_reload_errors"));

    t.family("netboot_nodes", "gauge", "Nodes with a boot timeline.");
    t.sample("netboot_nodes", &[], timeline_nodes);

    let latency = stats.latency();
    t.family("netboot_stage_seconds", "histogram", "Latency per stage: dhcp_reply (agent path, request to reply, commit included), lease_commit, tftp_transfer, http_request.");
    for stage in Stage::ALL {
        let h = latency.get(&stage).cloned().unwrap_or_default();
        for (le, n) in h.cumulative() {
            let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
            t.sample("netboot_stage_seconds_bucket", &[("stage", stage.name()), ("le", &le)], n);
        }
        t.sample("netboot_stage_seconds_sum", &[("stage", stage.name())], h.sum);
        t.sample("netboot_stage_seconds_count", &[("stage", stage.name())], h.count());
    }

    // Everything the agent counts, under its own name, so nothing is hidden.
    t.family("netboot_agent_events_total", "counter", "Every agent counter by name (see `netboot-xdp status`).");
    let all: BTreeMap<&String, &u64> = agent.iter().collect();
    for (name, v) in all {
        t.sample("netboot_agent_events_total", &[("event", name)], v);
    }
    if let Some(c) = cluster {
        t.family("netboot_cluster_members", "gauge", "Live members of the cluster, this server included.");
        t.sample("netboot_cluster_members", &[("server_id", &c.server_id)], c.members().len());
        t.family("netboot_cluster_owned_buckets", "gauge", "Load-balancing buckets (of 256) this server answers.");
        t.sample("netboot_cluster_owned_buckets", &[("server_id", &c.server_id)], c.buckets.owned_count());
        t.family("netboot_cluster_store_up", "gauge", "1 while the shared lease store answers, else 0.");
        t.sample("netboot_cluster_store_up", &[("server_id", &c.server_id)], u8::from(c.reachable()));
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_escapes_labels() {
        let stats = Stats::default();
        stats.bump(&reply_counter("ack", ClientClass::Pxe));
        stats.bump("odd\"name");
        stats.observe(Stage::TftpTransfer, std::time::Duration::from_millis(40));
        let text = render("eth1", None, &stats, 3, None);
        assert!(text.contains("netboot_dhcp_replies_total{iface=\"eth1\",path=\"agent\",kind=\"ack\",class=\"pxe\"} 1\n"));
        assert!(text.contains("netboot_stage_seconds_bucket{iface=\"eth1\",stage=\"tftp_transfer\",le=\"0.05\"} 1\n"));
        assert!(text.contains("netboot_stage_seconds_bucket{iface=\"eth1\",stage=\"tftp_transfer\",le=\"0.025\"} 0\n"));
        assert!(text.contains("netboot_stage_seconds_count{iface=\"eth1\",stage=\"tftp_transfer\"} 1\n"));
        assert!(text.contains("event=\"odd\\\"name\"} 1\n"));
        assert!(text.contains("netboot_nodes{iface=\"eth1\"} 3\n"));
    }
}
