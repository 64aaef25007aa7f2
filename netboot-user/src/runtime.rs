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

/// The agent's control socket: the HTTP routes of [`crate::http`], for the CLI.
pub fn control_path(iface: &str) -> PathBuf {
    dir().join(format!("{iface}.sock"))
}

/// Binds the control socket of `iface` (a stale one from a killed agent is replaced), only
/// root may connect.
pub fn bind_control(iface: &str) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = control_path(iface);
    std::fs::create_dir_all(dir())?;
    let _ = std::fs::remove_file(&path);
    let l = tokio::net::UnixListener::bind(&path).map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// `GET path` on the control socket of the agent on `iface`; the body of a 200 answer.
pub fn control_get(iface: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    control_request(iface, hyper::Method::GET, path, None)
}

/// A request to the agent of `iface` over its control socket (root's, no token needed); the
/// body of a 2xx answer, the agent's message otherwise.
pub fn control_request(iface: &str, method: hyper::Method, path: &str, body: Option<(&str, Vec<u8>)>) -> anyhow::Result<Vec<u8>> {
    let sock = control_path(iface);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::UnixStream::connect(&sock))
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within 5 s", sock.display()))?
            .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", sock.display()))?;
        let exchange = crate::http_client::request(stream, method, "localhost", path, "netboot-xdp", body);
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("agent on {iface}: no answer to {path} within 30 s"))??;
        if !status.is_success() {
            anyhow::bail!("agent on {iface}: {path}: {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        Ok(body)
    })
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
