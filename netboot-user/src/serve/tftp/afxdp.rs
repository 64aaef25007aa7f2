//! The AF_XDP engine (`tftp.engine = "afxdp"`): the XDP program redirects frames for our TFTP
//! port and for the engine's transfer ports (`TFTP_STEER`) to an AF_XDP socket per RX queue;
//! one thread answers them all. A request opens a transfer (the same sans-IO [`session`] and
//! [`Transfer`] as the socket engine); each ACK is answered with the next DATA frames, built
//! whole (Ethernet, IPv4, UDP with its checksum) straight from the cached file, and sent on the
//! queue the client's frames arrive on. Timers live in one heap; no socket, no task, no syscall
//! per transfer.
//!
//! What the XDP program does not steer (VLAN-tagged, IP options, fragments) reaches the socket
//! engine, which keeps port 69 open beside this one.
//!
//! Every running transfer is recorded in the pinned `TFTP_TRANSFERS` map: an agent restarted
//! after a crash takes a transfer over when the client's next ACK comes to its TID (the XDP
//! program drops frames to transfer ports while no socket is there, so the client just
//! retransmits), and a boot in progress goes on (invariant 4).

use crate::tftp::session::{self, Opened, Session, Source};
use crate::tftp::transfer::Step;
use crate::published::Follower;
use crate::config::Config;
use crate::frame::{Udp6Envelope, UdpEnvelope, parse_udp, parse_udp6, udp_checksum_ok};
use crate::iface::Interface;
use crate::mac::MacAddr;
use crate::stats::Stats;
use crate::timeline::Timelines;
use crate::xsk::{Xsk, XskSizes};
use anyhow::Context;
use aya::maps::{Array, MapData, XskMap};
use aya::maps::HashMap as BpfHashMap;
use netboot_common::{TftpSteer, TransferKey, TransferRecord};
use netboot_common::wire::TFTP_PORT;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A running transfer.
struct Live {
    session: Session,
    client_mac: MacAddr,
    tid: u16,
    queue: usize,
    /// When this transfer's entry in the timer heap fires (one live entry per transfer; a
    /// deadline that moved later is found when the entry fires, and rescheduled then).
    timer_at: Option<Instant>,
}

/// Ports the engine's transfers use (their TIDs): above the kernel's ephemeral range, so that
/// no kernel socket of this host is starved by the redirect.
fn transfer_ports() -> (u16, u16) {
    let hi_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u16>().ok())
        .unwrap_or(60999);
    (hi_ephemeral.saturating_add(1).max(1024), 65535)
}

/// The engine's thread; stops (and its sockets close, emptying the XSKMAP) on [`Engine::stop`].
pub struct Engine {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    steer: Array<MapData, TftpSteer>,
}

impl Engine {
    /// Opens a socket per RX queue of `iface`, registers them in `xsks` and steers TFTP to
    /// them through `steer`. Fails (and changes nothing) when AF_XDP is unavailable.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        iface: &Interface,
        server_ip: Ipv4Addr,
        server_ip6: Option<Ipv6Addr>,
        source: Source,
        mut xsks: XskMap<MapData>,
        mut steer: Array<MapData, TftpSteer>,
        records: Option<BpfHashMap<MapData, TransferKey, TransferRecord>>,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
        configs: Follower,
    ) -> anyhow::Result<Engine> {
        let queues = crate::iface::rx_queues(&iface.name);
        let mut socks = Vec::new();
        for q in 0..queues {
            let x = Xsk::open(&iface.name, q, XskSizes::DEFAULT)?;
            xsks.set(q, x.raw_fd(), 0).with_context(|| format!("XSKMAP entry for queue {q}"))?;
            socks.push(x);
        }
        // Jumbo frames and a large blksize: DATA must fit a UMEM frame (Ethernet, IPv4, UDP).
        let mut source = source;
        let fits = (crate::xsk::MAX_FRAME - crate::frame::UdpEnvelope::UNTAGGED_HEADER_LEN) as u16;
        source.limits.max_payload = source.limits.max_payload.min(fits);
        let (port_lo, port_hi) = transfer_ports();
        let steer6 = TftpSteer {
            server_ip: server_ip.octets(),
            port_lo,
            port_hi,
            enabled: 1,
            enabled6: u8::from(server_ip6.is_some()),
            _pad: [0; 2],
            server_ip6: server_ip6.unwrap_or(Ipv6Addr::UNSPECIFIED).octets(),
        };
        steer.set(0, steer6, 0)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = Worker {
            socks,
            xsks,
            mac: iface.mac,
            server_ip,
            server_ip6,
            source,
            records,
            stats,
            timelines,
            configs,
            transfers: HashMap::new(),
            timers: BinaryHeap::new(),
            ports: (port_lo, port_hi),
            tid_keys: std::collections::hash_map::RandomState::new(),
            tids_drawn: 0,
            out: Vec::new(),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tftp-afxdp".into()).spawn(move || worker.run(&flag))?;
        tracing::info!(queues, ports = %format!("{port_lo}-{port_hi}"), "TFTP AF_XDP engine up");
        Ok(Engine { stop, thread: Some(thread), steer })
    }

    pub fn stop(mut self) {
        let _ = self.steer.set(0, TftpSteer::default(), 0);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    socks: Vec<Xsk>,
    /// Kept open: the sockets' entries live as long as the map.
    #[allow(dead_code)]
    xsks: XskMap<MapData>,
    mac: MacAddr,
    server_ip: Ipv4Addr,
    server_ip6: Option<Ipv6Addr>,
    source: Source,
    /// The pinned record of running transfers (`None`: not resumable after a crash).
    records: Option<BpfHashMap<MapData, TransferKey, TransferRecord>>,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
    configs: Follower,
    /// By client address and port: a TID pair is unique per client, so ports can repeat across
    /// clients.
    transfers: HashMap<SocketAddr, Live>,
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    ports: (u16, u16),
    /// Keys of the transfer-port draw, and how many were drawn.
    tid_keys: std::collections::hash_map::RandomState,
    tids_drawn: u64,
    /// Frames to send, written into the queue's UMEM at the next flush.
    out: Vec<Outgoing>,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let mut published = Instant::now();
        // Records an engine before this one left: those no client came back for are removed
        // once every client would have given up.
        let started = Instant::now();
        let mut inherited: Vec<TransferKey> = self.records.as_ref().map(|m| m.keys().filter_map(Result::ok).collect()).unwrap_or_default();
        if !inherited.is_empty() {
            tracing::info!(transfers = inherited.len(), "TFTP transfers of the previous agent recorded: resumable");
        }
        while !stop.load(Ordering::Relaxed) {
            if !inherited.is_empty() && started.elapsed() > RESUME_WINDOW {
                for k in std::mem::take(&mut inherited) {
                    let client = SocketAddr::new(Ipv6Addr::from(k.client_ip).to_canonical(), k.client_port);
                    if self.transfers.get(&client).is_none_or(|l| l.tid != k.tid) {
                        self.forget_record(client, k.tid);
                    }
                }
            }
            if published.elapsed() >= Duration::from_secs(1) {
                published = Instant::now();
                self.publish_socket_stats();
            }
            if let Some(config) = self.configs.try_changed() {
                self.reconfigure(&config);
                self.configs.applied();
            }
            let now = Instant::now();
            self.expire(now);
            self.flush();
            let wait = self.timers.peek().map_or(Duration::from_millis(100), |Reverse((t, _))| t.saturating_duration_since(now)).min(Duration::from_millis(100));
            crate::xsk::poll(&self.socks, wait.as_micros().div_ceil(1000) as i32);
            // The sockets leave `self` while their frames are handled (which needs `&mut self`).
            let mut socks = std::mem::take(&mut self.socks);
            for (q, x) in socks.iter_mut().enumerate() {
                let now = Instant::now();
                x.recv_all(|frame| self.on_frame(q, frame, now));
            }
            self.socks = socks;
            self.flush();
        }
        tracing::info!(live = self.transfers.len(), "TFTP AF_XDP engine stopped");
    }

    /// The kernel's drop counters of the sockets, summed (`tftp_xsk_rx_*`).
    fn publish_socket_stats(&self) {
        let mut sum = crate::xsk::XskDrops::default();
        for d in self.socks.iter().map(Xsk::drops) {
            sum.rx_dropped += d.rx_dropped;
            sum.rx_ring_full += d.rx_ring_full;
            sum.rx_fill_empty += d.rx_fill_empty;
        }
        self.stats.set("tftp_xsk_rx_dropped", sum.rx_dropped);
        self.stats.set("tftp_xsk_rx_ring_full", sum.rx_ring_full);
        self.stats.set("tftp_xsk_rx_fill_empty", sum.rx_fill_empty);
        self.stats.set("tftp_xsk_live_transfers", self.transfers.len() as u64);
    }

    fn reconfigure(&mut self, config: &Config) {
        session::reconfigure(&mut self.source, config);
    }

    fn on_frame(&mut self, queue: usize, frame: &[u8], now: Instant) {
        // (client, its MAC, our port, the TFTP packet), over IPv4 or IPv6.
        let parsed = match parse_udp(frame) {
            Some(p) => Some((udp_checksum_ok(frame), SocketAddr::new(p.envelope.src_ip.into(), p.envelope.src_port), p.envelope.src_mac, p.envelope.dst_port, p.payload)),
            None => parse_udp6(frame).map(|p| (p.checksum_ok, SocketAddr::new(p.envelope.src_ip.into(), p.envelope.src_port), p.envelope.src_mac, p.envelope.dst_port, p.payload)),
        };
        let Some((checksum_ok, client, src_mac, dst_port, payload)) = parsed else {
            self.stats.bump("tftp_xsk_malformed");
            return;
        };
        if !checksum_ok {
            self.stats.bump("tftp_xsk_bad_checksum");
            return;
        }
        if dst_port == TFTP_PORT {
            self.on_request(queue, client, src_mac, payload, now);
            return;
        }
        if self.transfers.get(&client).is_none_or(|l| l.tid != dst_port) && !self.resume(queue, client, src_mac, dst_port, now) {
            // Not a transfer of ours (an old TID after the end): RFC 1350 says answer with an
            // error to that TID; a quiet drop costs the client nothing it would not retry.
            self.stats.bump("tftp_xsk_unknown_tid");
            return;
        }
        let live = self.transfers.get_mut(&client).expect("present or resumed");
        live.queue = queue;
        let step = live.session.on_packet(payload, client.ip(), now, &self.stats);
        self.on_step(client, step);
    }

    fn on_request(&mut self, queue: usize, client: SocketAddr, client_mac: MacAddr, request: &[u8], now: Instant) {
        if let Some(live) = self.transfers.get(&client) {
            if !live.session.transfer.awaiting_final_ack() {
                // The client sent its request again: the transfer's own timer covers it.
                self.stats.bump("tftp_duplicate_requests");
                return;
            }
            // The last block is out and its ACK was lost: that client is done and has closed
            // its port; a new client reuses it.
            let old = self.transfers.remove(&client).expect("present");
            self.forget_record(client, old.tid);
            old.session.finish(client, Some("replaced by a new request from the same port"), &self.stats, &self.timelines);
        }
        let tid = self.allocate_tid();
        match session::open(&self.source, request, client, &self.stats, now) {
            Opened::Transfer(session, first) => {
                for p in first {
                    self.out.push(self.outgoing(queue, client, client_mac, tid, p));
                }
                self.record(client, tid, &session);
                self.transfers.insert(client, Live { session, client_mac, tid, queue, timer_at: None });
                self.schedule(client);
            }
            Opened::Refused(error) => self.out.push(self.outgoing(queue, client, client_mac, tid, error)),
            Opened::Ignored => {}
        }
    }

    /// Takes over the transfer an engine before this one recorded for `client` and `tid`.
    fn resume(&mut self, queue: usize, client: SocketAddr, client_mac: MacAddr, tid: u16, now: Instant) -> bool {
        let key = transfer_key(client, tid);
        let Some(rec) = self.records.as_ref().and_then(|m| m.get(&key, 0).ok()) else { return false };
        let Some(session) = session::resume(&self.source, &rec, client, &self.stats, now) else {
            self.forget_record(client, tid);
            return false;
        };
        if let Some(old) = self.transfers.remove(&client) {
            self.forget_record(client, old.tid);
            old.session.finish(client, Some("replaced by a resumed transfer"), &self.stats, &self.timelines);
        }
        self.transfers.insert(client, Live { session, client_mac, tid, queue, timer_at: None });
        true
    }

    fn record(&mut self, client: SocketAddr, tid: u16, session: &Session) {
        let (Some(map), Some(rec)) = (self.records.as_mut(), session.record()) else { return };
        if map.insert(transfer_key(client, tid), rec, 0).is_err() {
            self.stats.bump("tftp_xsk_unrecorded_transfers"); // the map is full
        }
    }

    fn forget_record(&mut self, client: SocketAddr, tid: u16) {
        if let Some(map) = self.records.as_mut() {
            let _ = map.remove(&transfer_key(client, tid));
        }
    }

    /// A transfer port drawn at random from the engine's range (RFC 1350 §4 asks for random
    /// TIDs): a sequential one let any host on the segment guess another client's port and
    /// drive or abort its transfer with forged ACKs and ERRORs. SipHash with keys drawn from
    /// the OS at start, over a counter: not guessable from the ports a client is given.
    fn allocate_tid(&mut self) -> u16 {
        use std::hash::BuildHasher;
        self.tids_drawn += 1;
        let span = u64::from(self.ports.1 - self.ports.0) + 1;
        self.ports.0 + (self.tid_keys.hash_one(self.tids_drawn) % span) as u16
    }

    fn on_step(&mut self, client: SocketAddr, step: Step) {
        let Some(live) = self.transfers.get(&client) else { return };
        let (queue, mac, tid) = (live.queue, live.client_mac, live.tid);
        match step {
            Step::Send(pkts) => {
                for p in pkts {
                    self.out.push(self.outgoing(queue, client, mac, tid, p));
                }
                self.schedule(client);
            }
            Step::Wait => {}
            Step::Done => {
                let live = self.transfers.remove(&client).expect("present");
                self.forget_record(client, tid);
                live.session.finish(client, None, &self.stats, &self.timelines);
            }
            Step::Abort(error, why) => {
                if let Some(e) = error {
                    self.out.push(self.outgoing(queue, client, mac, tid, e));
                }
                let live = self.transfers.remove(&client).expect("present");
                self.forget_record(client, tid);
                live.session.finish(client, Some(why), &self.stats, &self.timelines);
            }
        }
    }

    /// Puts the transfer's deadline in the timer heap, unless an entry that fires no later
    /// is there already.
    fn schedule(&mut self, client: SocketAddr) {
        let Some(live) = self.transfers.get_mut(&client) else { return };
        let due = live.session.transfer.deadline();
        if live.timer_at.is_none_or(|t| due < t) {
            live.timer_at = Some(due);
            self.timers.push(Reverse((due, client)));
        }
    }

    /// Runs the timers that are due.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((t, client))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(live) = self.transfers.get_mut(&client) else { continue };
            if live.timer_at != Some(t) {
                continue; // replaced by an earlier entry
            }
            live.timer_at = None;
            if live.session.transfer.deadline() > now {
                self.schedule(client); // the transfer made progress since
                continue;
            }
            let step = live.session.on_timeout(now);
            let wait = matches!(step, Step::Wait);
            self.on_step(client, step);
            if wait {
                self.schedule(client);
            }
        }
    }

    fn outgoing(&self, queue: usize, client: SocketAddr, client_mac: MacAddr, tid: u16, payload: Vec<u8>) -> Outgoing {
        let envelope = match client.ip() {
            IpAddr::V4(dst_ip) => Envelope::V4(UdpEnvelope {
                src_mac: self.mac,
                dst_mac: client_mac,
                vlan: None,
                src_ip: self.server_ip,
                dst_ip,
                src_port: tid,
                dst_port: client.port(),
                ttl: 64,
            }),
            IpAddr::V6(dst_ip) => Envelope::V6(Udp6Envelope {
                src_mac: self.mac,
                dst_mac: client_mac,
                // Only frames to this address are steered here.
                src_ip: self.server_ip6.unwrap_or(Ipv6Addr::UNSPECIFIED),
                dst_ip,
                src_port: tid,
                dst_port: client.port(),
                hop_limit: 64,
            }),
        };
        Outgoing { queue, envelope, payload }
    }

    /// Writes the queued frames into their queues' UMEM and sends them; what does not fit (no
    /// free frame, a full ring) is dropped and left to the transfers' timers.
    fn flush(&mut self) {
        for o in self.out.drain(..) {
            if !self.socks[o.queue].push(|buf| o.envelope.write(buf, &o.payload)) {
                self.stats.bump("tftp_xsk_tx_dropped");
            }
        }
        for x in &mut self.socks {
            let dropped = x.flush();
            if dropped > 0 {
                self.stats.add("tftp_xsk_tx_dropped", dropped as u64);
            }
        }
    }
}

/// How long after a restart an inherited transfer can be resumed: longer than any client waits.
const RESUME_WINDOW: Duration = Duration::from_secs(120);

fn transfer_key(client: SocketAddr, tid: u16) -> TransferKey {
    let ip = match client.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    TransferKey { client_ip: ip.octets(), client_port: client.port(), tid }
}

/// A frame to send: its addressing and its UDP payload.
struct Outgoing {
    queue: usize,
    envelope: Envelope,
    payload: Vec<u8>,
}

enum Envelope {
    V4(UdpEnvelope),
    V6(Udp6Envelope),
}

impl Envelope {
    fn write(&self, buf: &mut [u8], payload: &[u8]) -> usize {
        match self {
            Envelope::V4(e) => e.write(buf, payload),
            Envelope::V6(e) => e.write(buf, payload),
        }
    }
}
