//! Servers under test, as the bench runs them: netboot-xdp through its CLI, peers as child
//! processes in the lab's server namespace; and the peers' binaries.

use anyhow::bail;
use netboot::lab::Agent;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running server (one or more processes); stopped on drop.
pub enum Running {
    Agent(Agent),
    Children(Vec<Child>),
}

impl Running {
    /// The processes whose CPU is the server's.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Running::Agent(a) => a.status().ok().and_then(|s| s["agent_pid"].as_u64()).map(|p| vec![p as u32]).unwrap_or_default(),
            Running::Children(c) => c.iter().map(Child::id).collect(),
        }
    }

    /// Fails if a child process has already exited (a peer that rejected its config).
    pub fn check_alive(&mut self, what: &str) -> anyhow::Result<()> {
        if let Running::Children(children) = self {
            for c in children.iter_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("{what}: a server process exited at start ({st})");
                }
            }
        }
        Ok(())
    }

    /// CPU of all its processes so far.
    pub fn cpu(&self) -> std::time::Duration {
        self.pids().into_iter().map(crate::proc::cpu_of).sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Children(children) = self {
            for c in children.iter_mut() {
                // The whole group: tftpd-hpa forks a child per transfer.
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Makes `cmd` the leader of a new process group, so that [`Running`] can stop it with every
/// process it forks.
pub fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// A peer's binary from its Debian package, unpacked under target/peers (downloaded once):
/// tftpd-hpa and atftpd conflict as installed packages (PEERS.md).
pub fn peer_binary(package: &str, path: &str) -> anyhow::Result<PathBuf> {
    // One tree per package: atftpd also ships a /usr/sbin/in.tftpd.
    let base = crate::bin_dir().join("../peers");
    let tree = base.join(package);
    let bin = tree.join(path);
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&base)?;
    let st = Command::new("apt-get").arg("download").arg(package).current_dir(&base).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !st.success() {
        bail!("apt-get download {package} failed");
    }
    for e in std::fs::read_dir(&base)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(package)) {
            Command::new("dpkg").arg("-x").arg(&p).arg(&tree).status()?;
        }
    }
    anyhow::ensure!(bin.exists(), "{} not in package {package}", bin.display());
    Ok(bin)
}
