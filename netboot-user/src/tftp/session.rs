//! What both engines do around a transfer, sans-IO: turn a read request into a transfer or a
//! refusal, and account for a transfer's end (counters, latency, the node's timeline).

use super::files::{FileCache, Refusal};
use super::packet::{ErrorCode, Packet};
use super::transfer::{Limits, Params, SIZE_PROBE, Transfer, negotiate};
use crate::stats::{Stage, Stats};
use crate::timeline::{Milestone, TftpOutcome, Timelines};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A read request, accepted.
pub struct Session {
    pub file: String,
    pub bytes: u64,
    pub params: Params,
    pub transfer: Transfer,
    pub started: Instant,
}

/// What a packet sent to port 69 turns into.
pub enum Opened {
    /// A transfer, and its first packets (OACK, or the first window of DATA).
    Transfer(Session, Vec<Vec<u8>>),
    /// An ERROR to send from a new TID (write requests, missing files, paths outside the root).
    Refused(Vec<u8>),
    /// Not a request: no answer.
    Ignored,
}

/// Opens a read request from `client`; counts refusals.
pub fn open(files: &FileCache, limits: Limits, request: &[u8], client: SocketAddrV4, stats: &Stats, now: Instant) -> Opened {
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
    let bytes = match files.get(&file) {
        Ok(b) => b,
        Err(Refusal::NotFound) => return refuse(ErrorCode::FileNotFound, "file not found", "tftp_not_found"),
        Err(Refusal::OutsideRoot) => {
            tracing::warn!(%client, file, "TFTP request outside the root refused");
            return refuse(ErrorCode::AccessViolation, "access violation", "tftp_refused_path");
        }
    };
    let data: Arc<[u8]> = match mode.as_str() {
        "octet" => bytes,
        "netascii" => netascii(&bytes).into(),
        _ => return refuse(ErrorCode::IllegalOperation, "unknown mode", "tftp_bad_mode"),
    };
    let (params, oack) = negotiate(&options, data.len() as u64, limits);
    stats.bump("tftp_transfers_started");
    let mut transfer = Transfer::new(data.clone(), params, oack, now);
    let first = transfer.start(now);
    Opened::Transfer(Session { file, bytes: data.len() as u64, params, transfer, started: now }, first)
}

impl Session {
    /// Counts the end of the transfer (`why`: the abort reason, `None` when complete) and
    /// records it on the node's timeline.
    pub fn finish(&self, client: SocketAddrV4, why: Option<&str>, stats: &Stats, timelines: &Timelines) {
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
        let what = Milestone::Tftp {
            file: self.file.clone(),
            blksize: self.params.blksize.min(usize::from(u16::MAX)) as u16,
            windowsize: self.params.windowsize.min(u64::from(u16::MAX)) as u16,
            bytes: self.bytes,
            ms: took.as_millis() as u64,
            retransmits: self.transfer.retransmits,
            outcome,
        };
        if !timelines.record_by_ip(*client.ip(), what) {
            tracing::debug!(%client, file = self.file, ?outcome, "TFTP transfer of a client without a timeline");
        }
    }
}

/// Applies a reloaded config to an engine: a new `tftp.root` and new limits serve new
/// transfers; running ones keep the file and limits they started with.
pub fn reconfigure(files: &mut Arc<FileCache>, limits: &mut Limits, config: &crate::config::Config) {
    let t = &config.tftp;
    if t.root != files.root() {
        match FileCache::new(&t.root) {
            Ok(f) => *files = Arc::new(f),
            Err(e) => tracing::error!(root = %t.root.display(), "reload: tftp.root unusable, keeping {}: {e}", files.root().display()),
        }
    }
    limits.max_blksize = *t.max_blksize.get_ref();
    limits.max_windowsize = *t.max_windowsize.get_ref();
}

/// RFC 764 netascii: LF → CR LF, CR → CR NUL.
fn netascii(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 16);
    for &c in b {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            c => out.push(c),
        }
    }
    out
}
