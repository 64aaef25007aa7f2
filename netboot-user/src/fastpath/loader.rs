//! Loading the XDP object, attaching it to an interface and pinning its maps.

use super::{Counters, OBJECT, pins};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use netboot_common::{PROGRAM_NAME, maps};
use std::os::fd::{AsFd, AsRawFd, RawFd};

/// `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum XdpModeArg {
    /// Native (driver) mode, falling back to skb mode with a log line.
    #[default]
    Auto,
    Native,
    Skb,
}

/// Why the fast path cannot start; `Display` is the one-line reason the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("must run as root (CAP_BPF, CAP_NET_ADMIN needed to load and attach XDP)")]
    NotRoot,
    #[error("no such interface: {0}")]
    NoSuchInterface(String),
    #[error("BPF unavailable: {0}")]
    BpfUnavailable(String),
    #[error("XDP program rejected by the kernel verifier (run with RUST_LOG=debug for the log): {0}")]
    Verifier(String),
    #[error("cannot attach XDP to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("cannot pin maps under {path}: {reason}")]
    Pin { path: String, reason: String },
}

/// The object loaded into the kernel (maps created, program verified) but not attached.
pub struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    /// Loads the embedded object and verifies the XDP program.
    pub fn new() -> Result<Loaded, StartError> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(StartError::NotRoot);
        }
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
            StartError::BpfUnavailable(format!("{e} ({})", root_cause(&e)))
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| StartError::BpfUnavailable(format!("object has no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| StartError::BpfUnavailable(format!("{e}")))?;
        prog.load().map_err(|e| {
            let text = e.to_string();
            tracing::debug!("verifier log:\n{text}");
            match &e {
                // EACCES: rejected; E2BIG: too complex. Either way the last lines say why.
                aya::programs::ProgramError::LoadError { io_error, .. }
                    if matches!(io_error.raw_os_error(), Some(libc::EACCES) | Some(libc::E2BIG)) =>
                {
                    let why: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                    StartError::Verifier(why[why.len().saturating_sub(4)..].join(" | "))
                }
                _ => StartError::BpfUnavailable(root_cause(&e)),
            }
        })?;
        Ok(Loaded { ebpf })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked in new")
            .try_into()
            .expect("checked in new")
    }

    /// The program's fd, for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&mut self) -> RawFd {
        self.program().fd().expect("loaded").as_fd().as_raw_fd()
    }

    /// Takes a map out of the object (the reply cache, the event ring buffer) for its owner.
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map = self.ebpf.map(maps::COUNTERS).ok_or_else(|| anyhow::anyhow!("no COUNTERS map"))?;
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Counters::read(&map)
    }

    /// Attaches to `iface` and pins the maps under [`pins::iface_dir`].
    pub fn attach(mut self, iface: &str, mode: XdpModeArg) -> Result<FastPath, StartError> {
        let c = std::ffi::CString::new(iface).map_err(|_| StartError::NoSuchInterface(iface.into()))?;
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(StartError::NoSuchInterface(iface.into()));
        }
        let attach_err = |e: aya::programs::ProgramError| StartError::Attach {
            iface: iface.into(),
            reason: format!("{e} ({})", root_cause(&e)),
        };
        let (link, mode_name) = match mode {
            XdpModeArg::Native => (self.program().attach(iface, XdpMode::Driver).map_err(attach_err)?, "native"),
            XdpModeArg::Skb => (self.program().attach(iface, XdpMode::Skb).map_err(attach_err)?, "skb"),
            XdpModeArg::Auto => match self.program().attach(iface, XdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(e) => {
                    tracing::warn!(iface, "native XDP unavailable ({}); falling back to skb mode", root_cause(&e));
                    (self.program().attach(iface, XdpMode::Skb).map_err(attach_err)?, "skb")
                }
            },
        };
        let mut fp = FastPath { loaded: self, iface: iface.into(), mode: mode_name, link: Some(link) };
        fp.pin()?;
        Ok(fp)
    }
}

/// The fast path attached to one interface. Dropping it detaches the program and removes the
/// pins.
pub struct FastPath {
    loaded: Loaded,
    iface: String,
    mode: &'static str,
    link: Option<XdpLinkId>,
}

impl FastPath {
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// `"native"` or `"skb"`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.loaded.counters()
    }

    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.loaded.take_map(name)
    }

    fn pin(&mut self) -> Result<(), StartError> {
        let dir = pins::iface_dir(&self.iface);
        let pin_err = |reason: String| StartError::Pin { path: dir.display().to_string(), reason };
        pins::ensure_bpffs().map_err(|e| pin_err(format!("mounting bpffs: {e}")))?;
        // Pins left by an agent that died without cleaning up are stale: nothing reads them.
        pins::remove_iface_dir(&self.iface).map_err(|e| pin_err(e.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(|e| pin_err(e.to_string()))?;
        for name in [maps::COUNTERS] {
            let map = self.loaded.ebpf.map(name).ok_or_else(|| pin_err(format!("no map {name}")))?;
            map.pin(dir.join(name)).map_err(|e| pin_err(format!("{name}: {e}")))?;
        }
        Ok(())
    }

    /// Detaches the program and removes the pins.
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.link.take() {
            self.loaded.program().detach(link)?;
        }
        pins::remove_iface_dir(&self.iface)?;
        Ok(())
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(iface = self.iface, "detach: {e}");
        }
    }
}

/// The innermost error message, which is usually the errno that explains the failure.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
