//! The socket engine: a listening socket on port 69 bound to the interface, and one task with
//! its own UDP socket (its TID) per transfer.

use super::files::{FileCache, Refusal};
use super::packet::{ErrorCode, Packet};
use super::transfer::{Limits, Params, SIZE_PROBE, Step, Transfer, negotiate};
use crate::config::Config;
use crate::stats::Stage;
use crate::timeline::{Milestone, TftpOutcome, Timelines};
use crate::iface::{Interface, udp_socket};
use crate::stats::Stats;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub const TFTP_PORT: u16 = 69;

pub struct Service {
    listen: UdpSocket,
    files: Arc<FileCache>,
    limits: Limits,
    iface: String,
    server_ip: Ipv4Addr,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
}

impl Service {
    pub fn bind(
        iface: &Interface,
        server_ip: Ipv4Addr,
        files: FileCache,
        limits: Limits,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
    ) -> anyhow::Result<Service> {
        let listen = udp_socket(&iface.name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, TFTP_PORT)), false)?;
        Ok(Service { listen, files: Arc::new(files), limits, iface: iface.name.clone(), server_ip, stats, timelines })
    }

    /// Serves until `shutdown` changes. Each config published on `configs` applies to new
    /// transfers (root, limits); running transfers keep the file and limits they started with.
    pub async fn run(mut self, mut configs: watch::Receiver<Arc<Config>>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(root = %self.files.root().display(), "TFTP service up (socket engine)");
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = tokio::select! {
                r = self.listen.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("tftp recv: {e}"); continue; }
                },
                r = configs.changed() => {
                    if r.is_ok() {
                        let config = configs.borrow_and_update().clone();
                        self.reconfigure(&config);
                    }
                    continue;
                },
                _ = shutdown.changed() => return Ok(()),
            };
            let request = buf[..n].to_vec();
            let ctx = TransferCtx {
                files: self.files.clone(),
                limits: self.limits,
                iface: self.iface.clone(),
                server_ip: self.server_ip,
                stats: self.stats.clone(),
                timelines: self.timelines.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = ctx.serve(&request, from).await {
                    tracing::debug!(%from, "tftp transfer: {e:#}");
                }
            });
        }
    }

    fn reconfigure(&mut self, config: &Config) {
        let t = &config.tftp;
        if t.root != self.files.root() {
            match FileCache::new(&t.root) {
                Ok(f) => self.files = Arc::new(f),
                Err(e) => tracing::error!(root = %t.root.display(), "reload: tftp.root unusable, keeping {}: {e}", self.files.root().display()),
            }
        }
        self.limits.max_blksize = *t.max_blksize.get_ref();
        self.limits.max_windowsize = *t.max_windowsize.get_ref();
    }
}

struct TransferCtx {
    files: Arc<FileCache>,
    limits: Limits,
    iface: String,
    server_ip: Ipv4Addr,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
}

impl TransferCtx {
    /// Counts and records the end of a transfer on the node's timeline.
    fn finished(&self, client: SocketAddr, file: &str, params: &Params, t: &Transfer, took: Duration, bytes: u64, outcome: TftpOutcome) {
        self.stats.add("tftp_retransmits", t.retransmits);
        match outcome {
            TftpOutcome::Complete => {
                self.stats.bump("tftp_transfers_completed");
                self.stats.add("tftp_bytes", bytes);
                self.stats.observe(Stage::TftpTransfer, took);
            }
            TftpOutcome::SizeProbe => self.stats.bump("tftp_size_probes"),
            TftpOutcome::Failed => self.stats.bump("tftp_transfers_failed"),
        }
        let what = Milestone::Tftp {
            file: file.to_string(),
            blksize: params.blksize.min(usize::from(u16::MAX)) as u16,
            windowsize: params.windowsize.min(u64::from(u16::MAX)) as u16,
            bytes,
            ms: took.as_millis() as u64,
            retransmits: t.retransmits,
            outcome,
        };
        if let SocketAddr::V4(c) = client {
            if !self.timelines.record_by_ip(*c.ip(), what) {
                tracing::debug!(%client, file, ?outcome, "TFTP transfer of a client without a timeline");
            }
        }
    }

    async fn serve(self, request: &[u8], client: SocketAddr) -> anyhow::Result<()> {
        let sock = udp_socket(&self.iface, SocketAddr::from((self.server_ip, 0)), false)?;
        sock.connect(client).await?;
        let fail = |code: ErrorCode, msg: &str, counter: &str| {
            self.stats.bump(counter);
            Packet::error(code, msg)
        };
        let (file, mode, options) = match Packet::parse(request) {
            Ok(Packet::Request { write: false, file, mode, options }) => (file, mode, options),
            Ok(Packet::Request { write: true, .. }) => {
                sock.send(&fail(ErrorCode::AccessViolation, "read-only server", "tftp_refused_write")).await?;
                return Ok(());
            }
            _ => {
                self.stats.bump("tftp_malformed");
                return Ok(()); // not a request: no answer
            }
        };
        let bytes = match self.files.get(&file) {
            Ok(b) => b,
            Err(Refusal::NotFound) => {
                sock.send(&fail(ErrorCode::FileNotFound, "file not found", "tftp_not_found")).await?;
                return Ok(());
            }
            Err(Refusal::OutsideRoot) => {
                tracing::warn!(%client, file, "TFTP request outside the root refused");
                sock.send(&fail(ErrorCode::AccessViolation, "access violation", "tftp_refused_path")).await?;
                return Ok(());
            }
        };
        let data: Arc<[u8]> = match mode.as_str() {
            "octet" => bytes,
            "netascii" => netascii(&bytes).into(),
            _ => {
                sock.send(&fail(ErrorCode::IllegalOperation, "unknown mode", "tftp_bad_mode")).await?;
                return Ok(());
            }
        };
        let (params, oack) = negotiate(&options, data.len() as u64, self.limits);
        self.stats.bump("tftp_transfers_started");
        let t0 = Instant::now();
        let mut t = Transfer::new(data.clone(), params, oack, t0);
        for p in t.start(t0) {
            sock.send(&p).await?;
        }
        let mut buf = vec![0u8; 2048];
        loop {
            let step = tokio::select! {
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => t.on_packet(&buf[..n], Instant::now()),
                    Err(_) => Step::Wait, // ICMP unreachable from an earlier send: keep the timer
                },
                _ = tokio::time::sleep_until(t.deadline().into()) => t.on_timeout(Instant::now()),
            };
            match step {
                Step::Send(pkts) => {
                    for p in pkts {
                        sock.send(&p).await?;
                    }
                }
                Step::Wait => {}
                Step::Done => {
                    self.finished(client, &file, &params, &t, t0.elapsed(), data.len() as u64, TftpOutcome::Complete);
                    return Ok(());
                }
                Step::Abort(err, why) => {
                    if let Some(e) = err {
                        let _ = sock.send(&e).await;
                    }
                    let outcome = if why == SIZE_PROBE { TftpOutcome::SizeProbe } else { TftpOutcome::Failed };
                    self.finished(client, &file, &params, &t, t0.elapsed(), data.len() as u64, outcome);
                    anyhow::bail!("{file}: {why}");
                }
            }
        }
    }
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
