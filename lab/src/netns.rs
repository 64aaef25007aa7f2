//! Named network namespaces (`ip netns`), and running commands and closures inside one.
//!
//! Commands enter only the network namespace (setns before exec), not a new mount namespace as
//! `ip netns exec` does, so bpffs at /sys/fs/bpf stays the host's: pins made by an agent in
//! the lab are visible to `netboot-xdp status` run from anywhere.

use anyhow::{Context, bail};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};

#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn named(name: &str) -> NetNs {
        NetNs { name: name.to_string() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn add(&self) -> anyhow::Result<()> {
        run_checked(Command::new("ip").args(["netns", "add", &self.name]))?;
        Ok(())
    }

    /// Deletes the namespace; a namespace that does not exist is not an error.
    pub fn delete(&self) -> anyhow::Result<()> {
        if !self.path().exists() {
            return Ok(());
        }
        run_checked(Command::new("ip").args(["netns", "delete", &self.name]))?;
        Ok(())
    }

    fn open(&self) -> anyhow::Result<File> {
        File::open(self.path()).with_context(|| format!("network namespace {} not found", self.name))
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        match self.open() {
            Ok(ns) => unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            },
            Err(_) => {
                // Make the spawn fail with a clear error instead of running in the wrong place.
                let name = self.name.clone();
                unsafe {
                    cmd.pre_exec(move || {
                        let _ = &name;
                        Err(std::io::Error::new(std::io::ErrorKind::NotFound, "network namespace not found"))
                    });
                }
            }
        }
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets and XDP attachments made
    /// inside `f` belong to the namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let ns = self.open()?;
        std::thread::scope(|s| {
            s.spawn(move || {
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
        })
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        bail!(
            "`{} {}` failed: {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
