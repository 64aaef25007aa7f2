//! The run-time files of an attached agent under `/run/netboot-xdp`: its record `<iface>.json`
//! (written by `attach`, read by `status`, `leases` and `detach`) and its control socket
//! `<iface>.sock`, on which the CLI asks the running agent. (bpffs holds only BPF objects, so
//! these live in /run.)

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

pub(crate) fn dir() -> PathBuf {
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
        let _ = std::fs::remove_file(control_path(iface));
    }

    /// Records of every attached interface.
    pub fn all() -> Vec<AgentRecord> {
        let mut v: Vec<AgentRecord> = std::fs::read_dir(dir())
            .map(|rd| {
                rd.filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    let iface = name.strip_suffix(".json").filter(|n| !n.starts_with('.'))?;
                    AgentRecord::read(iface)
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.iface.cmp(&b.iface));
        v
    }

    /// Whether the recorded process is still alive (a zombie that has exited but not been
    /// reaped by its parent is not) and is the agent of this interface: a record left by an
    /// agent that died names a pid some other process may have by now, which `detach` must
    /// never signal.
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        // Format: "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else { return false };
        is_agent_cmdline(&cmdline, &self.iface)
    }
}

/// Whether a NUL-separated command line is `... attach IFACE ...`.
fn is_agent_cmdline(cmdline: &[u8], iface: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"attach" && w[1] == iface.as_bytes())
}

/// The agent's control socket: where the CLI asks the agent.
pub fn control_path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.sock"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_agent_of_the_interface_is_recognised() {
        use super::is_agent_cmdline;
        assert!(is_agent_cmdline(b"/usr/bin/netboot-xdp\0attach\0eth1\0-c\0/etc/n.toml\0", "eth1"));
        assert!(!is_agent_cmdline(b"/usr/bin/netboot-xdp\0attach\0eth2\0", "eth1"));
        assert!(!is_agent_cmdline(b"/usr/sbin/sshd\0-D\0", "eth1"));
        assert!(!is_agent_cmdline(b"", "eth1"));
    }
}
