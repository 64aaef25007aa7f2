//! The run-time record of an attached agent: `/run/netboot-xdp/<iface>.json`, written by
//! `attach`, read by `status` and `detach`. (bpffs holds only BPF objects, so this lives in
//! /run.)

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentRecord {
    pub pid: u32,
    pub iface: String,
    /// `native` or `skb`.
    pub xdp_mode: String,
    pub config: PathBuf,
    /// Where the lease store is (for `netboot-xdp leases`).
    pub state_dir: PathBuf,
}

fn dir() -> PathBuf {
    PathBuf::from("/run/netboot-xdp")
}

fn path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.json"))
}

impl AgentRecord {
    pub fn write(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(dir())?;
        let tmp = dir().join(format!(".{}.json.tmp", self.iface));
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(tmp, path(&self.iface))
    }

    pub fn read(iface: &str) -> Option<AgentRecord> {
        let bytes = std::fs::read(path(iface)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove(iface: &str) {
        let _ = std::fs::remove_file(path(iface));
        let _ = std::fs::remove_file(stats_path(iface));
    }

    /// Records of every attached interface.
    pub fn all() -> Vec<AgentRecord> {
        let mut v: Vec<AgentRecord> = std::fs::read_dir(dir())
            .map(|rd| {
                rd.filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    let iface = name.strip_suffix(".json").filter(|n| !n.ends_with(".stats") && !n.starts_with('.'))?;
                    AgentRecord::read(iface)
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.iface.cmp(&b.iface));
        v
    }

    /// Whether the recorded process is still alive (a zombie that has exited but not been
    /// reaped by its parent is not).
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        // Format: "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, None | Some('Z') | Some('X'))
    }
}

fn stats_path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.stats.json"))
}

/// Writes the agent's counters for `status` (atomically: write then rename).
pub fn write_stats(iface: &str, stats: &std::collections::BTreeMap<String, u64>) {
    let tmp = dir().join(format!(".{iface}.stats.tmp"));
    if let Ok(bytes) = serde_json::to_vec(stats) {
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(tmp, stats_path(iface));
        }
    }
}

/// The agent's counters as last written.
pub fn read_stats(iface: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    serde_json::from_slice(&std::fs::read(stats_path(iface)).ok()?).ok()
}
