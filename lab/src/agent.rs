//! A `netboot-xdp attach` process running in a lab's server namespace (or another server of
//! the lab, [`Lab::add_server`]), as tests, the demo and the bench drive it: through the
//! normative CLI only.

use super::{Lab, NetNs};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    child: Option<Child>,
    ns: NetNs,
    bin: PathBuf,
    config: PathBuf,
    extra: Vec<String>,
    pub iface: String,
    /// The agent's stderr.
    pub log: PathBuf,
}

impl Agent {
    /// Starts `netboot-xdp attach <server_if> -c <config> <extra>` and waits (at most 20 s) until
    /// its maps are pinned, i.e. until `status` can read it.
    pub fn start(lab: &Lab, bin: &Path, config: &Path, extra: &[&str]) -> anyhow::Result<Agent> {
        Agent::start_on(&lab.server, &lab.server_if, bin, config, extra)
    }

    /// The same on `iface` in namespace `ns` (a server added with [`Lab::add_server`]).
    pub fn start_on(ns: &NetNs, iface: &str, bin: &Path, config: &Path, extra: &[&str]) -> anyhow::Result<Agent> {
        let log = std::env::temp_dir().join(format!("netboot-agent-{iface}.log"));
        std::fs::File::create(&log)?;
        let mut agent = Agent {
            child: None,
            ns: ns.clone(),
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            iface: iface.to_string(),
            log,
        };
        agent.spawn()?;
        Ok(agent)
    }

    /// kill -9 of the running agent (nothing of it runs after this: no detach, pins stay),
    /// then a new one with the same config, which adopts the pinned program and maps. Its log
    /// goes on in the same file.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.crash()?;
        self.spawn()
    }

    /// kill -9 of the running agent, and nothing else (see [`Agent::restart`]).
    pub fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the agent again after [`Agent::crash`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// How the agent ended, if it ended on its own (not by [`Agent::crash`] or a stop): a
    /// server that dies during a run is a finding, not a detail to read from a missing socket.
    pub fn died(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGSTOP or SIGCONT of the running agent: a server that hangs, then wakes up.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, if paused { libc::SIGSTOP } else { libc::SIGCONT }) };
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_file = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let (bin, config, log) = (&self.bin, &self.config, &self.log);
        let child = self
            .ns
            .command(&bin.to_string_lossy())
            .args(["attach", &self.iface, "-c"])
            .arg(config)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(log);
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("agent exited ({st}) during start: {}", self.log_text().trim());
            }
            if self.status().is_ok_and(|s| s["agent_running"] == true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent did not come up within 20 s: {}", self.log_text().trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `netboot-xdp status IFACE --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.bin).args(["status", &self.iface, "--json"]).output()?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The counters from `status --json`, by name.
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let s = self.status()?;
        let obj = s["counters"].as_object().context("status has no counters")?;
        Ok(obj.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
    }

    /// SIGTERM, then wait at most 10 s (SIGKILL after that).
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("agent already stopped") };
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait()?;
                bail!("agent ignored SIGTERM for 10 s; killed ({st})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A clean exit (a test's `netboot-xdp detach`) is not a death.
        let died = self.died().filter(|st| !st.success());
        if self.child.is_some() {
            let _ = self.terminate();
        }
        // An agent killed (by a test, or by a fault) leaves its run-time record and control
        // socket behind; they name this lab's interface, so they are ours to remove.
        netboot::runtime::AgentRecord::remove(&self.iface);
        // The log stays for a failing test to be read, or when the agent died on its own;
        // otherwise it goes with the agent.
        if let Some(st) = died {
            eprintln!("agent on {} had died ({st}); its log kept: {}", self.iface, self.log.display());
        } else if std::thread::panicking() {
            eprintln!("agent log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
