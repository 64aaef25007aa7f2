//! Loading the XDP object, attaching it to an interface and pinning its maps.

use super::{Counters, OBJECT, pins};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
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

/// The maps that live in bpffs, so that they outlive an agent that dies (invariant 4).
const PINNED_MAPS: [&str; 4] = [maps::COUNTERS, maps::REPLY_CACHE, maps::EVENTS, maps::TFTP_TRANSFERS];

/// Key size, value size and (where the object fixes it) entries of each pinned map as this
/// build defines them.
fn pinned_layout(name: &str) -> (u32, u32, Option<u32>) {
    use netboot_common::cache::{CacheEntry, CacheKey, EVENTS_BYTES};
    use netboot_common::counter::NUM_COUNTERS;
    let size = |n: usize| n as u32;
    match name {
        maps::COUNTERS => (4, 8, Some(NUM_COUNTERS)),
        maps::REPLY_CACHE => (size(std::mem::size_of::<CacheKey>()), size(std::mem::size_of::<CacheEntry>()), None),
        maps::TFTP_TRANSFERS => (
            size(std::mem::size_of::<netboot_common::TransferKey>()),
            size(std::mem::size_of::<netboot_common::TransferRecord>()),
            Some(netboot_common::TRANSFERS_ENTRIES),
        ),
        _ => (0, 0, Some(EVENTS_BYTES)), // the ring buffer
    }
}

/// Why the maps pinned in `dir` cannot be adopted by this build, if they cannot.
pub fn incompatible_pins(dir: &std::path::Path) -> Option<String> {
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(i) => i,
            Err(e) => return Some(format!("{name}: {e}")),
        };
        let (key, value, entries) = pinned_layout(name);
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found.0 != key || found.1 != value || entries.is_some_and(|n| n != found.2) {
            return Some(format!("{name}: key/value/entries {found:?}, this build needs ({key}, {value}, {entries:?})"));
        }
    }
    None
}
/// Loads the log program and puts it where the main one tail-calls it (`LOG_PROG`).
fn install_log_program(ebpf: &mut Ebpf) -> Result<(), StartError> {
    let unavailable = |what: String| StartError::BpfUnavailable(format!("the log program: {what}"));
    let prog: &mut Xdp = ebpf
        .program_mut(netboot_common::LOG_PROGRAM_NAME)
        .ok_or_else(|| unavailable("not in the object".into()))?
        .try_into()
        .map_err(|e| unavailable(format!("{e}")))?;
    prog.load().map_err(|e| unavailable(root_cause(&e)))?;
    let fd = prog.fd().map_err(|e| unavailable(format!("{e}")))?.try_clone().map_err(|e| unavailable(format!("{e}")))?;
    let map = ebpf.map_mut(maps::LOG_PROG).ok_or_else(|| unavailable("no LOG_PROG map".into()))?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|e| unavailable(format!("{e}")))?;
    array.set(0, &fd, 0).map_err(|e| unavailable(format!("{e}")))
}

/// The pinned XDP link in an interface's pin directory.
const LINK_PIN: &str = "link";

/// The object loaded into the kernel (maps created, program verified) but not attached.
pub struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    /// Loads the embedded object and verifies the XDP program.
    pub fn new() -> Result<Loaded, StartError> {
        Loaded::load(None, None)
    }

    /// Loads with the maps pinned in `iface`'s pin directory: maps pinned there by an agent
    /// that died are adopted with their contents (counters, reply cache, pending events). A new
    /// reply cache gets `cache_entries` entries (an adopted one keeps its size).
    pub fn pinned(iface: &str, cache_entries: u32) -> Result<Loaded, StartError> {
        let dir = pins::iface_dir(iface);
        let pin_err = |reason: String| StartError::Pin { path: dir.display().to_string(), reason };
        pins::ensure_bpffs().map_err(|e| pin_err(format!("mounting bpffs: {e}")))?;
        std::fs::create_dir_all(&dir).map_err(|e| pin_err(e.to_string()))?;
        if let Some(why) = incompatible_pins(&dir) {
            // An upgrade changed a map's layout: the old maps cannot serve the new program
            // (loading it against them would fail on every start).
            tracing::warn!(iface, "pinned maps of another build ({why}); replacing them");
            pins::remove_iface_dir(iface).map_err(|e| pin_err(e.to_string()))?;
            std::fs::create_dir_all(&dir).map_err(|e| pin_err(e.to_string()))?;
        }
        match Loaded::load(Some(&dir), Some(cache_entries)) {
            Err(StartError::BpfUnavailable(why)) if dir.join(maps::COUNTERS).exists() => {
                // Pins of an incompatible older build: start clean.
                tracing::warn!(iface, "cannot adopt the pinned maps ({why}); replacing them");
                pins::remove_iface_dir(iface).map_err(|e| pin_err(e.to_string()))?;
                std::fs::create_dir_all(&dir).map_err(|e| pin_err(e.to_string()))?;
                Loaded::load(Some(&dir), Some(cache_entries))
            }
            r => r,
        }
    }

    fn load(pin_dir: Option<&std::path::Path>, cache_entries: Option<u32>) -> Result<Loaded, StartError> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(StartError::NotRoot);
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, std::path::PathBuf)> = match pin_dir {
            Some(d) => PINNED_MAPS.iter().map(|m| (*m, d.join(m))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(n) = cache_entries {
            loader.map_max_entries(maps::REPLY_CACHE, n);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| {
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
        install_log_program(&mut ebpf)?;
        Ok(Loaded { ebpf })
    }

    fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked in new")
            .try_into()
            .expect("checked in new")
    }

    /// The reader of the program's aya-log records, writing them to `to` (once: it takes the
    /// record ring).
    pub fn logger<T: log::Log>(&mut self, to: T) -> Result<aya_log::EbpfLogger<T>, aya_log::Error> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, to)
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

    /// Attaches to `iface`. With a link pinned by an agent that died, the new program replaces
    /// the old one inside that link: the interface is never without its program. Otherwise a
    /// new link is created and pinned, so that the program outlives this process if it dies.
    pub fn attach(mut self, iface: &str, mode: XdpModeArg) -> Result<FastPath, StartError> {
        let c = std::ffi::CString::new(iface).map_err(|_| StartError::NoSuchInterface(iface.into()))?;
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(StartError::NoSuchInterface(iface.into()));
        }
        let attach_err = |e: aya::programs::ProgramError| StartError::Attach {
            iface: iface.into(),
            reason: format!("{e} ({})", root_cause(&e)),
        };
        let dir = pins::iface_dir(iface);
        let pin_err = |reason: String| StartError::Pin { path: dir.display().to_string(), reason };
        pins::ensure_bpffs().map_err(|e| pin_err(format!("mounting bpffs: {e}")))?;
        std::fs::create_dir_all(&dir).map_err(|e| pin_err(e.to_string()))?;
        let link_pin = dir.join(LINK_PIN);

        let adopted = match PinnedLink::from_pin(&link_pin) {
            Ok(pinned) => {
                let fd_link: FdLink = pinned.into();
                let link = XdpLink::try_from(fd_link).map_err(|e| pin_err(format!("pinned link: {e}")))?;
                match self.program().attach_to_link(link) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::warn!(iface, "cannot replace the program in the pinned link ({e}); attaching anew");
                        let _ = std::fs::remove_file(&link_pin);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let (link, mode_name) = match adopted {
            Some(id) => {
                tracing::info!(iface, "adopted the XDP link pinned by a previous agent");
                (id, recorded_mode(iface))
            }
            None => {
                let (id, mode_name) = match mode {
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
                // Pin the link: the program then stays attached if this process dies.
                let taken = self.program().take_link(id).map_err(attach_err)?;
                let fd_link = FdLink::try_from(taken).map_err(|e| pin_err(format!("link is not a bpf_link: {e}")))?;
                let pinned = fd_link.pin(&link_pin).map_err(|e| pin_err(format!("pinning the link: {e}")))?;
                let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| pin_err(e.to_string()))?;
                let id = self.program().attach_to_link(link).map_err(attach_err)?;
                (id, mode_name)
            }
        };
        Ok(FastPath { loaded: self, iface: iface.into(), mode: mode_name, link: Some(link) })
    }
}

/// The mode a previous agent recorded for `iface` (the adopted link keeps it).
fn recorded_mode(iface: &str) -> &'static str {
    match crate::runtime::AgentRecord::read(iface).map(|r| r.xdp_mode) {
        Some(m) if m == "skb" => "skb",
        Some(_) => "native",
        None => "adopted",
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

    /// See [`Loaded::logger`].
    pub fn logger<T: log::Log>(&mut self, to: T) -> Result<aya_log::EbpfLogger<T>, aya_log::Error> {
        self.loaded.logger(to)
    }

    /// Detaches the program and removes the pins.
    pub fn detach(mut self) -> anyhow::Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> anyhow::Result<()> {
        // Unpin first: the link then lives only through our fd, and detaching destroys it.
        pins::remove_iface_dir(&self.iface)?;
        if let Some(link) = self.link.take() {
            self.loaded.program().detach(link)?;
        }
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
