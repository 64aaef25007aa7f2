//! What both engines do around a transfer, sans-IO: turn a read request into a transfer or a
//! refusal, and account for a transfer's end (counters, latency, the node's timeline).

use super::files::{Content, FileCache, Mode, Refusal};
use super::packet::{ErrorCode, Packet};
use super::transfer::{DEFAULT_MAX_RTO, Limits, Params, SIZE_PROBE, Step, Transfer, negotiate};
use crate::stats::{Stage, Stats};
use crate::timeline::{Milestone, TftpOutcome, Timelines};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
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
    place: Place,
}

/// The reason of [`Step::Abort`] for a pending transfer that gave its place to a newer one.
pub const EVICTED: &str = "never acknowledged, and the pending transfers were full";

/// Where a session stands in [`Admission`]. A request's source address may be forged: the
/// transfer is *pending* (its OACK or first DATA sent, nothing acknowledged) until the
/// client's first ACK shows the address is real, and only then takes one of the
/// `max_transfers` places. Forged requests never hold those.
enum Place {
    Pending { ticket: Pending, limits: Limits },
    Running { _slot: Slot },
}

/// How many transfers run, in total and per client address, across both engines: a request
/// beyond `max_transfers` or `max_transfers_per_client` is refused with an ERROR (the client
/// retries), so that a flood of requests cannot hold every buffer and timer. Transfers not
/// yet acknowledged are counted apart, at most [`MAX_PENDING`]: beyond, the oldest of them
/// gives its place (a real client acknowledges within a round trip; one that a flood of
/// forged requests pushed out retries its request).
#[derive(Default)]
pub struct Admission {
    running: Mutex<Running>,
    pending: Mutex<PendingQueue>,
}

/// Transfers not yet acknowledged, at most (per agent, both engines). At 16384, a flood must
/// send 16384 forged requests within a real client's round trip to push it out.
pub const MAX_PENDING: usize = 16384;

/// The pending transfers, oldest first (with some that left already: skipped lazily).
#[derive(Default)]
struct PendingQueue {
    live: usize,
    order: VecDeque<Arc<AtomicU8>>,
}

/// A pending transfer's state: pending, left (acknowledged or ended), or evicted.
const PENDING: u8 = 0;
const LEFT: u8 = 1;
const EVICTED_STATE: u8 = 2;

/// One pending transfer; dropping it (or its promotion) frees its place.
pub struct Pending {
    admission: Arc<Admission>,
    state: Arc<AtomicU8>,
}

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

impl Busy {
    fn message(self) -> &'static str {
        match self {
            Busy::Server => "server busy, retry",
            Busy::Client => "too many transfers from this client",
        }
    }

    fn counter(self) -> &'static str {
        match self {
            Busy::Server => "tftp_refused_busy",
            Busy::Client => "tftp_refused_client_limit",
        }
    }
}

impl Admission {
    pub fn admit(self: &Arc<Self>, client: IpAddr, limits: &Limits) -> Result<Slot, Busy> {
        let mut r = self.running.lock().unwrap_or_else(|e| e.into_inner());
        r.room(client, limits)?;
        r.total += 1;
        *r.per_client.entry(client).or_default() += 1;
        Ok(Slot { admission: self.clone(), client })
    }

    /// Whether a transfer of `client` would be admitted now (nothing is taken).
    pub fn has_room(&self, client: IpAddr, limits: &Limits) -> Result<(), Busy> {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).room(client, limits)
    }

    /// A place among the pending transfers; the oldest pending one is evicted if they are full
    /// (it learns so from [`Pending::evicted`]); `true` with it when one was.
    pub fn admit_pending(self: &Arc<Self>) -> (Pending, bool) {
        let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = false;
        if q.live >= MAX_PENDING {
            while let Some(old) = q.order.pop_front() {
                if old.compare_exchange(PENDING, EVICTED_STATE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    q.live -= 1;
                    evicted = true;
                    break;
                }
            }
        }
        if q.order.len() >= 2 * MAX_PENDING {
            q.order.retain(|s| s.load(Ordering::Acquire) == PENDING);
        }
        let state = Arc::new(AtomicU8::new(PENDING));
        q.order.push_back(state.clone());
        q.live += 1;
        (Pending { admission: self.clone(), state }, evicted)
    }

    /// Transfers running now.
    pub fn running(&self) -> u32 {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Transfers pending now.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).live
    }
}

impl Running {
    fn room(&self, client: IpAddr, limits: &Limits) -> Result<(), Busy> {
        if limits.max_transfers != 0 && self.total >= limits.max_transfers {
            return Err(Busy::Server);
        }
        if limits.max_transfers_per_client != 0 && self.per_client.get(&client).copied().unwrap_or(0) >= limits.max_transfers_per_client {
            return Err(Busy::Client);
        }
        Ok(())
    }
}

impl Pending {
    /// Whether a newer pending transfer took this one's place.
    pub fn evicted(&self) -> bool {
        self.state.load(Ordering::Acquire) == EVICTED_STATE
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.state.compare_exchange(PENDING, LEFT, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.admission.pending.lock().unwrap_or_else(|e| e.into_inner()).live -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut r = self.admission.running.lock().unwrap_or_else(|e| e.into_inner());
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
    if let Err(busy) = admission.has_room(client.ip(), &limits) {
        return refuse(ErrorCode::NotDefined, busy.message(), busy.counter());
    }
    let made = generated.get().filter(|_| mode == Mode::Octet).and_then(|g| g.generate(&file, client.ip()));
    let found = match made {
        Some(bytes) => Ok(Content::Bytes(Arc::from(bytes))),
        None => files.get(&file, mode),
    };
    let data = match found {
        Ok(b) => b,
        Err(Refusal::NotFound) => return refuse(ErrorCode::FileNotFound, "file not found", "tftp_not_found"),
        Err(Refusal::OutsideRoot) => {
            tracing::warn!(%client, file, "TFTP request outside the root refused");
            return refuse(ErrorCode::AccessViolation, "access violation", "tftp_refused_path");
        }
        Err(Refusal::TooLarge) => return refuse(ErrorCode::NotDefined, "file too large for netascii", "tftp_refused_too_large"),
    };
    let (params, oack) = negotiate(&options, data.len(), limits);
    stats.bump("tftp_transfers_started");
    let (ticket, evicted) = admission.admit_pending();
    if evicted {
        stats.bump("tftp_pending_evicted");
    }
    let mut transfer = Transfer::new(data.clone(), params, oack, now);
    let first = transfer.start(now);
    let place = Place::Pending { ticket, limits };
    Opened::Transfer(Session { file, mode, bytes: data.len(), params, transfer, started: now, place }, first)
}

/// Takes over a transfer a stopped engine recorded (`rec`), to go on from the client's next
/// ACK; `None` (counted) when the file is not the same any more, or there is no place for it.
pub fn resume(src: &Source, rec: &netboot_common::TransferRecord, client: SocketAddr, stats: &Stats, now: Instant) -> Option<Session> {
    let name = std::str::from_utf8(rec.name.get(..usize::from(rec.name_len))?).ok()?.to_string();
    let mode = if rec.netascii == 1 { Mode::Netascii } else { Mode::Octet };
    let slot = src.admission.admit(client.ip(), &src.limits).ok()?;
    let data = src.files.get(&name, mode).ok().filter(|d| d.len() == rec.len);
    let Some(data) = data else {
        stats.bump("tftp_resume_file_changed");
        return None;
    };
    let params = Params { blksize: usize::from(rec.blksize).max(8), windowsize: u64::from(rec.windowsize).max(1), max_rto: DEFAULT_MAX_RTO };
    stats.bump("tftp_transfers_resumed");
    let transfer = Transfer::resumed(data.clone(), params, now);
    Some(Session { file: name, mode, bytes: data.len(), params, transfer, started: now, place: Place::Running { _slot: slot } })
}

impl Session {
    /// A packet from the client to the transfer. Its first ACK makes a pending transfer a
    /// running one, if there is a place (else it ends with "server busy": the client retries).
    pub fn on_packet(&mut self, bytes: &[u8], client: IpAddr, now: Instant, stats: &Stats) -> Step {
        let step = self.transfer.on_packet(bytes, now);
        if let Place::Pending { ticket, limits } = &self.place
            && self.transfer.confirmed()
        {
            match ticket.admission.admit(client, limits) {
                Ok(slot) => self.place = Place::Running { _slot: slot },
                Err(busy) => {
                    stats.bump(busy.counter());
                    return Step::Abort(Some(Packet::error(ErrorCode::NotDefined, busy.message())), busy.message());
                }
            }
        }
        step
    }

    /// The retransmission timer fired: resend, or end (a pending transfer that was evicted
    /// ends silently).
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if let Place::Pending { ticket, .. } = &self.place
            && ticket.evicted()
        {
            return Step::Abort(None, EVICTED);
        }
        self.transfer.on_timeout(now)
    }

    /// Whether the client has acknowledged something and holds one of the running places.
    pub fn is_running(&self) -> bool {
        matches!(self.place, Place::Running { .. })
    }

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

    fn source(dir: &std::path::Path, l: Limits) -> Source {
        std::fs::write(dir.join("ipxe.efi"), vec![7u8; 5000]).unwrap();
        Source { files: Arc::new(FileCache::new(dir).unwrap()), limits: l, admission: Arc::default(), generated: Arc::default() }
    }

    fn rrq(options: &[(&str, &str)]) -> Vec<u8> {
        let options = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Packet::Request { write: false, file: "ipxe.efi".into(), mode: "octet".into(), options }.to_vec()
    }

    fn opened(src: &Source, request: &[u8], client: SocketAddr, stats: &Stats) -> Session {
        match open(src, request, client, stats, Instant::now()) {
            Opened::Transfer(s, _) => s,
            _ => panic!("not opened"),
        }
    }

    #[test]
    fn forged_requests_never_hold_a_running_place_and_the_first_ack_takes_one() {
        // Issue 26: an RRQ whose OACK is never acknowledged held one of max_transfers for
        // ~48 s, so forged RRQs from many addresses kept every place and real clients got
        // "server busy".
        let dir = crate::scratch::ScratchDir::new("tftp-pending");
        let src = source(&dir, limits(2, 0));
        let stats = Stats::default();
        let forged: Vec<Session> = (0..100u16).map(|i| opened(&src, &rrq(&[("blksize", "1400")]), SocketAddr::from(([10, 9, (i >> 8) as u8, i as u8], 1000)), &stats)).collect();
        assert_eq!((src.admission.running(), src.admission.pending()), (0, 100));
        // A real client is answered, and its ACK of the OACK takes a place.
        let real = SocketAddr::from(([10, 0, 0, 5], 2000));
        let mut s = opened(&src, &rrq(&[("blksize", "1400")]), real, &stats);
        assert!(!s.is_running());
        let step = s.on_packet(&Packet::Ack { block: 0 }.to_vec(), real.ip(), Instant::now(), &stats);
        assert!(matches!(step, Step::Send(_)), "{step:?}");
        assert!(s.is_running());
        assert_eq!((src.admission.running(), src.admission.pending()), (1, 100));
        let third = SocketAddr::from(([10, 0, 0, 7], 2000));
        let mut u = opened(&src, &rrq(&[("tsize", "0")]), third, &stats);
        // Without options, the ACK of DATA 1 takes it.
        let other = SocketAddr::from(([10, 0, 0, 6], 2000));
        let mut t = opened(&src, &rrq(&[]), other, &stats);
        t.on_packet(&Packet::Ack { block: 1 }.to_vec(), other.ip(), Instant::now(), &stats);
        assert!(t.is_running());
        // Both places taken: a new request is refused at once; one already pending is told
        // so at its first ACK.
        assert!(matches!(open(&src, &rrq(&[]), SocketAddr::from(([10, 0, 0, 8], 1)), &stats, Instant::now()), Opened::Refused(_)));
        let step = u.on_packet(&Packet::Ack { block: 0 }.to_vec(), third.ip(), Instant::now(), &stats);
        assert!(matches!(step, Step::Abort(Some(_), _)), "{step:?}");
        drop((s, t, u, forged));
        assert_eq!((src.admission.running(), src.admission.pending()), (0, 0));
    }

    #[test]
    fn a_full_pending_pool_evicts_its_oldest_which_ends_at_its_next_timer() {
        let a = Arc::new(Admission::default());
        let (oldest, _) = a.admit_pending();
        let rest: Vec<Pending> = (1..MAX_PENDING).map(|_| a.admit_pending().0).collect();
        assert!(!oldest.evicted());
        let (_newest, evicted) = a.admit_pending();
        assert!(evicted && oldest.evicted() && !rest[0].evicted());
        assert_eq!(a.pending(), MAX_PENDING);
        drop(oldest);
        assert_eq!(a.pending(), MAX_PENDING, "an evicted one is not counted twice");
        // A session evicted ends silently at its timer.
        let dir = crate::scratch::ScratchDir::new("tftp-evicted");
        let src = source(&dir, limits(0, 0));
        let stats = Stats::default();
        let client = SocketAddr::from(([10, 0, 0, 5], 2000));
        let mut s = opened(&src, &rrq(&[("blksize", "1400")]), client, &stats);
        let _flood: Vec<Pending> = (0..MAX_PENDING).map(|_| src.admission.admit_pending().0).collect();
        assert_eq!(s.on_timeout(Instant::now()), Step::Abort(None, EVICTED));
    }
}
