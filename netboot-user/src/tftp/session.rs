//! What both engines do around a transfer, sans-IO: turn a read request into a transfer or a
//! refusal, and account for a transfer's end (counters, latency, the node's timeline).

use super::files::{FileCache, Mode, Refusal};
use super::packet::{ErrorCode, Packet};
use super::transfer::{DEFAULT_MAX_RTO, Limits, Params, SIZE_PROBE, Transfer, negotiate};
use crate::stats::{Stage, Stats};
use crate::timeline::{Milestone, TftpOutcome, Timelines};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A read request, accepted.
pub struct Session {
    pub file: String,
    pub mode: Mode,
    pub bytes: u64,
    pub params: Params,
    pub transfer: Transfer,
    pub started: Instant,
    /// Its place in [`Admission`], given back when the session is dropped.
    _slot: Slot,
}

/// How many transfers run, in total and per client address, across both engines: a request
/// beyond `max_transfers` or `max_transfers_per_client` is refused with an ERROR (the client
/// retries), so that a flood of requests cannot hold every buffer and timer.
#[derive(Default)]
pub struct Admission(Mutex<Running>);

#[derive(Default)]
struct Running {
    total: u32,
    per_client: HashMap<IpAddr, u32>,
}

/// One admitted transfer; dropping it frees its place.
pub struct Slot {
    admission: Arc<Admission>,
    client: IpAddr,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Server,
    Client,
}

impl Admission {
    pub fn admit(self: &Arc<Self>, client: IpAddr, limits: &Limits) -> Result<Slot, Busy> {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mine = r.per_client.get(&client).copied().unwrap_or(0);
        if limits.max_transfers != 0 && r.total >= limits.max_transfers {
            return Err(Busy::Server);
        }
        if limits.max_transfers_per_client != 0 && mine >= limits.max_transfers_per_client {
            return Err(Busy::Client);
        }
        r.total += 1;
        r.per_client.insert(client, mine + 1);
        Ok(Slot { admission: self.clone(), client })
    }

    /// Transfers running now.
    pub fn running(&self) -> u32 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = self.admission.0.lock().unwrap_or_else(|e| e.into_inner());
        r.total -= 1;
        if let Some(n) = r.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                r.per_client.remove(&self.client);
            }
        }
    }
}

/// What a packet sent to port 69 turns into (short-lived: the size of a session is moot).
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    /// A transfer, and its first packets (OACK, or the first window of DATA).
    Transfer(Session, Vec<Vec<u8>>),
    /// An ERROR to send from a new TID (write requests, missing files, paths outside the root).
    Refused(Vec<u8>),
    /// Not a request: no answer.
    Ignored,
}

/// What each new transfer starts with, in both engines: the files, the limits, and the
/// admission count they share. A reload replaces files and limits for new transfers.
#[derive(Clone)]
pub struct Source {
    pub files: Arc<FileCache>,
    pub limits: Limits,
    pub admission: Arc<Admission>,
    /// Files made for the client that asks (set once the HTTP layer, which renders them, is up).
    pub generated: Arc<OnceLock<Arc<dyn Generated>>>,
}

/// Files made per client instead of read from the root: a node's GRUB config.
pub trait Generated: Send + Sync {
    /// The file `name` made for `client`; `None` when `name` is not made for it (the root
    /// serves it, if it has it).
    fn generate(&self, name: &str, client: IpAddr) -> Option<Vec<u8>>;
}

/// Opens a read request from `client`; counts refusals.
pub fn open(src: &Source, request: &[u8], client: SocketAddr, stats: &Stats, now: Instant) -> Opened {
    let Source { files, limits, admission, generated } = src;
    let limits = limits.for_client(client);
    let refuse = |code: ErrorCode, msg: &str, counter: &str| {
        stats.bump(counter);
        Opened::Refused(Packet::error(code, msg))
    };
    let (file, mode, options) = match Packet::parse(request) {
        Ok(Packet::Request { write: false, file, mode, options }) => (file, mode, options),
        Ok(Packet::Request { write: true, .. }) => return refuse(ErrorCode::AccessViolation, "read-only server", "tftp_refused_write"),
        _ => {
            stats.bump("tftp_malformed");
            return Opened::Ignored;
        }
    };
    let mode = match mode.as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => return refuse(ErrorCode::IllegalOperation, "unknown mode", "tftp_bad_mode"),
    };
    let slot = match admission.admit(client.ip(), &limits) {
        Ok(s) => s,
        Err(Busy::Server) => return refuse(ErrorCode::NotDefined, "server busy, retry", "tftp_refused_busy"),
        Err(Busy::Client) => return refuse(ErrorCode::NotDefined, "too many transfers from this client", "tftp_refused_client_limit"),
    };
    let made = generated.get().filter(|_| mode == Mode::Octet).and_then(|g| g.generate(&file, client.ip()));
    let found = match made {
        Some(bytes) => Ok(Arc::<[u8]>::from(bytes)),
        None => files.get(&file, mode),
    };
    let data = match found {
        Ok(b) => b,
        Err(Refusal::NotFound) => return refuse(ErrorCode::FileNotFound, "file not found", "tftp_not_found"),
        Err(Refusal::OutsideRoot) => {
            tracing::warn!(%client, file, "TFTP request outside the root refused");
            return refuse(ErrorCode::AccessViolation, "access violation", "tftp_refused_path");
        }
    };
    let (params, oack) = negotiate(&options, data.len() as u64, limits);
    stats.bump("tftp_transfers_started");
    let mut transfer = Transfer::new(data.clone(), params, oack, now);
    let first = transfer.start(now);
    Opened::Transfer(Session { file, mode, bytes: data.len() as u64, params, transfer, started: now, _slot: slot }, first)
}

/// Takes over a transfer a stopped engine recorded (`rec`), to go on from the client's next
/// ACK; `None` (counted) when the file is not the same any more, or there is no place for it.
pub fn resume(src: &Source, rec: &netboot_common::TransferRecord, client: SocketAddr, stats: &Stats, now: Instant) -> Option<Session> {
    let name = std::str::from_utf8(rec.name.get(..usize::from(rec.name_len))?).ok()?.to_string();
    let mode = if rec.netascii == 1 { Mode::Netascii } else { Mode::Octet };
    let slot = src.admission.admit(client.ip(), &src.limits).ok()?;
    let data = src.files.get(&name, mode).ok().filter(|d| d.len() as u64 == rec.len);
    let Some(data) = data else {
        stats.bump("tftp_resume_file_changed");
        return None;
    };
    let params = Params { blksize: usize::from(rec.blksize).max(8), windowsize: u64::from(rec.windowsize).max(1), max_rto: DEFAULT_MAX_RTO };
    stats.bump("tftp_transfers_resumed");
    let transfer = Transfer::resumed(data.clone(), params, now);
    Some(Session { file: name, mode, bytes: data.len() as u64, params, transfer, started: now, _slot: slot })
}

impl Session {
    /// blksize and windowsize as TFTP options carry them (16 bits).
    fn option_values(&self) -> (u16, u16) {
        (self.params.blksize.min(usize::from(u16::MAX)) as u16, self.params.windowsize.min(u64::from(u16::MAX)) as u16)
    }

    /// What a restarted engine needs to go on with this transfer (`None`: a name too long to
    /// record).
    pub fn record(&self) -> Option<netboot_common::TransferRecord> {
        let name = self.file.as_bytes();
        if name.len() > netboot_common::TRANSFER_NAME_MAX {
            return None;
        }
        let (blksize, windowsize) = self.option_values();
        let mut r = netboot_common::TransferRecord {
            len: self.bytes,
            blksize,
            windowsize,
            netascii: u8::from(self.mode == Mode::Netascii),
            name_len: name.len() as u8,
            _pad: [0; 2],
            name: [0; netboot_common::TRANSFER_NAME_MAX],
        };
        r.name[..name.len()].copy_from_slice(name);
        Some(r)
    }

    /// Counts the end of the transfer (`why`: the abort reason, `None` when complete) and
    /// records it on the node's timeline.
    pub fn finish(&self, client: SocketAddr, why: Option<&str>, stats: &Stats, timelines: &Timelines) {
        let outcome = match why {
            None => TftpOutcome::Complete,
            Some(SIZE_PROBE) => TftpOutcome::SizeProbe,
            Some(_) => TftpOutcome::Failed,
        };
        let took: Duration = self.started.elapsed();
        stats.add("tftp_retransmits", self.transfer.retransmits);
        match outcome {
            TftpOutcome::Complete => {
                stats.bump("tftp_transfers_completed");
                stats.add("tftp_bytes", self.bytes);
                stats.observe(Stage::TftpTransfer, took);
            }
            TftpOutcome::SizeProbe => stats.bump("tftp_size_probes"),
            TftpOutcome::Failed => {
                stats.bump("tftp_transfers_failed");
                tracing::debug!(%client, file = self.file, "TFTP transfer failed: {}", why.unwrap_or_default());
            }
        }
        let (blksize, windowsize) = self.option_values();
        let what = Milestone::Tftp {
            file: self.file.clone(),
            blksize,
            windowsize,
            bytes: self.bytes,
            ms: took.as_millis() as u64,
            retransmits: self.transfer.retransmits,
            outcome,
        };
        if !timelines.record_by_ip(client.ip(), what) {
            tracing::debug!(%client, file = self.file, ?outcome, "TFTP transfer of a client without a timeline");
        }
    }
}

/// Applies a reloaded config to an engine: a new `tftp.root` and new limits serve new
/// transfers; running ones keep the file and limits they started with.
pub fn reconfigure(src: &mut Source, config: &crate::config::Config) {
    let Source { files, limits, .. } = src;
    let t = &config.tftp;
    if t.root != files.root() {
        match FileCache::new(&t.root) {
            Ok(f) => *files = Arc::new(f),
            Err(e) => tracing::error!(root = %t.root.display(), "reload: tftp.root unusable, keeping {}: {e}", files.root().display()),
        }
    }
    limits.max_blksize = *t.max_blksize.get_ref();
    limits.max_windowsize = *t.max_windowsize.get_ref();
    limits.max_transfers = t.max_transfers;
    limits.max_transfers_per_client = t.max_transfers_per_client;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_client: u32) -> Limits {
        Limits { max_transfers: total, max_transfers_per_client: per_client, ..crate::tftp::transfer::TEST_LIMITS }
    }

    #[test]
    fn admission_counts_places_per_client_and_in_total_and_frees_them_on_drop() {
        let a = Arc::new(Admission::default());
        let (x, y, z) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), [10, 0, 0, 3].into());
        let l = limits(3, 2);
        let x1 = a.admit(x, &l).unwrap();
        let _x2 = a.admit(x, &l).unwrap();
        assert_eq!(a.admit(x, &l).err(), Some(Busy::Client));
        let _y1 = a.admit(y, &l).unwrap();
        assert_eq!(a.admit(z, &l).err(), Some(Busy::Server));
        assert_eq!(a.running(), 3);
        drop(x1);
        assert_eq!(a.running(), 2);
        let _z1 = a.admit(z, &l).unwrap();
        // 0 = unlimited.
        let free: Vec<Slot> = (0..100).map(|_| a.admit(x, &limits(0, 0)).unwrap()).collect();
        assert_eq!(a.running(), 103);
        drop(free);
        assert_eq!(a.running(), 3);
    }
}
