//! A DHCP load generator for the lab: many simulated clients in one process (a thread per RX
//! queue of the lab's client end), raw frames through AF_XDP sockets there (perfdhcp relays
//! everything and cannot push fast enough for the kernel path; a packet socket costs an skb,
//! the bridge and a copy per reply).
//!
//! Each client runs DORA like a PXE ROM without the broadcast flag: DISCOVER broadcast, OFFER
//! (link unicast to its MAC), REQUEST broadcast for the offered address, ACK. DISCOVERs are
//! prebuilt; each REQUEST is a prebuilt frame with the offered address and the server
//! identifier patched in. The loop paces DISCOVERs (all at once, or a window of outstanding
//! exchanges), matches replies by xid and MAC, and retransmits after `retry`.

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode};
use dhcproto::Encodable;
use netboot::dhcp::classify::raw_option;
use netboot::frame::{parse_udp, udp_checksum};
use netboot_lab::Lab;
use netboot::mac::MacAddr;
use netboot::xsk::{IdleWait, Xsk, XskSizes};
use netboot_common::wire::{DHCP_CLIENT_PORT, DHCP_SERVER_PORT, ETH_HLEN, bootp, msg, opt};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the simulated clients present themselves as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Persona {
    /// No vendor class: an installed OS.
    Plain,
    /// A BIOS PXE ROM (option 60 PXEClient, option 93 = 0).
    Pxe,
    /// iPXE (user class "iPXE", client id 01:mac).
    Ipxe,
}

pub struct Config {
    pub clients: u32,
    /// MAC of client i: 02:b0:<i as 4 bytes>; `base` is added to i.
    pub base: u32,
    pub persona: Persona,
    /// Most exchanges in flight (0 = all at once).
    pub window: u32,
    pub retry: Duration,
    pub deadline: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub clients: u32,
    pub leased: u32,
    pub wall: Duration,
    pub retransmits: u64,
    /// DISCOVER to ACK, per leased client, sorted.
    pub latencies: Vec<Duration>,
    pub addresses: Vec<Ipv4Addr>,
    /// Client CPU (this process), user + system.
    pub client_cpu: Duration,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.leased as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

fn mac_of(cfg: &Config, i: u32) -> MacAddr {
    let b = (cfg.base + i).to_be_bytes();
    MacAddr([0x02, 0xb0, b[0], b[1], b[2], b[3]])
}

fn message(cfg: &Config, mac: MacAddr, xid: u32, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth).set_xid(xid).set_flags(Flags::default()).set_chaddr(&mac.0);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::MaxMessageSize(1472));
    match cfg.persona {
        Persona::Plain => {}
        Persona::Pxe => {
            o.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
            o.insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
        }
        Persona::Ipxe => {
            let mut id = vec![1];
            id.extend_from_slice(&mac.0);
            o.insert(DhcpOption::ClientIdentifier(id));
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            o.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
            o.insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
        }
    }
    m
}

fn frame(mac: MacAddr, m: &Message) -> Vec<u8> {
    crate::rawsock::dhcp_broadcast(mac, &m.to_vec().expect("encode"))
}

/// Offset of the IPv4 header, of the UDP header and of the DHCP message in the generator's
/// frames (untagged, no IP options).
const IP: usize = ETH_HLEN;
const UDP: usize = IP + 20;
const DHCP: usize = UDP + 8;

/// A client's REQUEST, prebuilt with zero requested address and server identifier, and where
/// those two go.
struct RequestTemplate {
    frame: Vec<u8>,
    requested_at: usize,
    server_at: usize,
}

impl RequestTemplate {
    fn new(cfg: &Config, mac: MacAddr, xid: u32) -> RequestTemplate {
        let mut m = message(cfg, mac, xid, MessageType::Request);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::UNSPECIFIED));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::UNSPECIFIED));
        let frame = frame(mac, &m);
        let at = |code| {
            let payload = &frame[DHCP..];
            let value = raw_option(payload, code).expect("option in the template");
            DHCP + (value.as_ptr() as usize - payload.as_ptr() as usize)
        };
        RequestTemplate { requested_at: at(opt::REQUESTED_IP), server_at: at(opt::SERVER_ID), frame }
    }

    /// Writes the REQUEST for `offered` from `server` into `buf`; returns its length.
    fn write(&self, buf: &mut [u8], offered: Ipv4Addr, server: Ipv4Addr) -> usize {
        let f = &mut buf[..self.frame.len()];
        f.copy_from_slice(&self.frame);
        f[self.requested_at..self.requested_at + 4].copy_from_slice(&offered.octets());
        f[self.server_at..self.server_at + 4].copy_from_slice(&server.octets());
        f[UDP + 6..UDP + 8].fill(0);
        let csum = udp_checksum(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, &f[UDP..]);
        f[UDP + 6..UDP + 8].copy_from_slice(&csum.to_be_bytes());
        f.len()
    }
}

/// What the generator reads from a server's reply.
struct Reply {
    xid: u32,
    chaddr: [u8; 6],
    yiaddr: Ipv4Addr,
    kind: u8,
    server: Ipv4Addr,
}

impl Reply {
    /// The facts of a DHCP reply frame, read in place (a full dhcproto decode per reply would
    /// cost more than the kernel's whole answer).
    fn parse(frame: &[u8]) -> Option<Reply> {
        let p = parse_udp(frame)?;
        if p.envelope.src_port != DHCP_SERVER_PORT || p.envelope.dst_port != DHCP_CLIENT_PORT {
            return None;
        }
        let b = p.payload;
        if b.len() < netboot_common::wire::BOOTP_OPTIONS_OFF || b[bootp::OP] != 2 {
            return None;
        }
        let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
        let kind = *raw_option(b, opt::MESSAGE_TYPE)?.first()?;
        let server = raw_option(b, opt::SERVER_ID).filter(|v| v.len() == 4).map_or(Ipv4Addr::UNSPECIFIED, ip_of);
        Some(Reply {
            xid: u32::from_be_bytes(b[bootp::XID..bootp::XID + 4].try_into().ok()?),
            chaddr: b[bootp::CHADDR..bootp::CHADDR + 6].try_into().ok()?,
            yiaddr: ip(bootp::YIADDR),
            kind,
            server,
        })
    }
}

fn ip_of(v: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(v[0], v[1], v[2], v[3])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Discovering,
    Requesting,
    Bound,
}

struct Client {
    phase: Phase,
    started: Option<Instant>,
    last_sent: Option<Instant>,
    offered: Ipv4Addr,
    done: Option<Instant>,
}

/// DISCOVERs sent per turn of the loop before replies are read again.
const SEND_BURST: usize = 256;

/// The frames of every client, built before the clock starts.
struct Frames {
    macs: Vec<MacAddr>,
    discovers: Vec<Vec<u8>>,
    requests: Vec<RequestTemplate>,
}

/// Runs the clients from the lab's client side; returns when all are bound or at the deadline.
///
/// One thread per RX queue of the lab's client end, each pinned to its own CPU with its own
/// AF_XDP socket and its share of the clients (client i belongs to thread i mod threads). A
/// veth delivers a reply on the queue of the CPU that sent the request, so each thread gets its
/// own clients' replies; one that lands elsewhere is handed to its owner.
pub fn run(lab: &Lab, cfg: &Config) -> anyhow::Result<Report> {
    let n = cfg.clients as usize;
    // Room for a whole all-at-once burst of replies in the RX rings.
    let ring = (n as u32).next_power_of_two().clamp(4096, 16384);
    let mut port = lab.client_xsk(DHCP_CLIENT_PORT..=DHCP_CLIENT_PORT, XskSizes { frames: 2 * ring, fill: ring, ring })?;
    let macs: Vec<MacAddr> = (0..cfg.clients).map(|i| mac_of(cfg, i)).collect();
    let frames = Frames {
        discovers: (0..n).map(|i| frame(macs[i], &message(cfg, macs[i], i as u32 + 1, MessageType::Discover))).collect(),
        requests: (0..n).map(|i| RequestTemplate::new(cfg, macs[i], i as u32 + 1)).collect(),
        macs,
    };
    let socks = &mut port.socks;
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    socks.truncate(cpus.max(1));
    let threads = socks.len();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads).map(|_| std::sync::mpsc::channel::<Reply>()).unzip();
    let all_bound = AtomicUsize::new(0);
    let cpu0 = crate::proc::self_cpu();
    let t0 = Instant::now();
    let results: Vec<Shard> = std::thread::scope(|s| {
        let handles: Vec<_> = socks
            .iter_mut()
            .zip(receivers)
            .enumerate()
            .map(|(t, (sock, inbox))| {
                let (frames, senders, all_bound) = (&frames, senders.clone(), &all_bound);
                let window = if cfg.window == 0 { n } else { (cfg.window as usize).div_ceil(threads) };
                s.spawn(move || {
                    pin_to_cpu(t);
                    let mut shard = Shard::new(t, threads, n);
                    shard.run(sock, frames, all_bound, &inbox, &senders, window, cfg, t0);
                    shard
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("generator thread")).collect()
    });
    let wall = results.iter().map(|r| r.finished.unwrap_or(t0.elapsed())).max().unwrap_or_default().min(t0.elapsed());
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.clients.iter().filter_map(|c| Some(c.done? - c.started?))).collect();
    latencies.sort();
    Ok(Report {
        clients: cfg.clients,
        leased: results.iter().map(|r| r.bound).sum::<usize>() as u32,
        wall,
        retransmits: results.iter().map(|r| r.retransmits).sum(),
        latencies,
        addresses: results.iter().flat_map(|r| r.clients.iter().filter(|c| c.phase == Phase::Bound).map(|c| c.offered)).collect(),
        client_cpu: crate::proc::self_cpu() - cpu0,
    })
}

fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One thread's clients: `t`, `t + threads`, `t + 2 threads`, …
struct Shard {
    t: usize,
    threads: usize,
    clients: Vec<Client>,
    bound: usize,
    retransmits: u64,
    /// When the last of these clients was bound (from the common start).
    finished: Option<Duration>,
}

impl Shard {
    fn new(t: usize, threads: usize, n: usize) -> Shard {
        let mine = (t..n).step_by(threads).count();
        let clients = (0..mine).map(|_| Client { phase: Phase::Idle, started: None, last_sent: None, offered: Ipv4Addr::UNSPECIFIED, done: None }).collect();
        Shard { t, threads, clients, bound: 0, retransmits: 0, finished: None }
    }

    /// Global index of local client `k`.
    fn global(&self, k: usize) -> usize {
        k * self.threads + self.t
    }

    #[allow(clippy::too_many_arguments)]
    fn run(&mut self, sock: &mut Xsk, frames: &Frames, all_bound: &AtomicUsize, inbox: &std::sync::mpsc::Receiver<Reply>, owners: &[std::sync::mpsc::Sender<Reply>], window: usize, cfg: &Config, t0: Instant) {
        let mine = self.clients.len();
        let mut next = 0usize;
        let mut replies: Vec<Reply> = Vec::with_capacity(Xsk::rx_batch());
        let mut last_scan = Instant::now();
        let mut wait = IdleWait::default();
        // Until every thread is done: a thread whose clients are all bound still hands on the
        // replies that land on its queue.
        while all_bound.load(Ordering::Relaxed) < frames.macs.len() && t0.elapsed() < cfg.deadline {
            // New exchanges, within the window.
            let mut sent = 0;
            while next < mine && next - self.bound < window && sent < SEND_BURST {
                let now = Instant::now();
                let c = &mut self.clients[next];
                c.phase = Phase::Discovering;
                c.started = Some(now);
                c.last_sent = Some(now);
                let d = &frames.discovers[self.global(next)];
                sock.push(|buf| copy_frame(buf, d));
                next += 1;
                sent += 1;
            }
            sock.flush();

            // Replies: OFFER → REQUEST, ACK → bound.
            let mut received = 0;
            loop {
                let k = sock.recv(|f| replies.extend(Reply::parse(f)));
                received += k;
                replies.extend(inbox.try_iter());
                let now = Instant::now();
                for r in replies.drain(..) {
                    let i = r.xid as usize;
                    if i == 0 || i > frames.macs.len() || r.chaddr != frames.macs[i - 1].0 {
                        continue;
                    }
                    let i = i - 1;
                    if i % self.threads != self.t {
                        let _ = owners[i % self.threads].send(r);
                        continue;
                    }
                    let c = &mut self.clients[i / self.threads];
                    match (r.kind, c.phase) {
                        (msg::OFFER, Phase::Discovering) if !r.server.is_unspecified() => {
                            c.offered = r.yiaddr;
                            c.phase = Phase::Requesting;
                            c.last_sent = Some(now);
                            let t = &frames.requests[i];
                            sock.push(|buf| t.write(buf, r.yiaddr, r.server));
                        }
                        (msg::ACK, Phase::Requesting) if r.yiaddr == c.offered => {
                            c.phase = Phase::Bound;
                            c.done = Some(now);
                            self.bound += 1;
                            all_bound.fetch_add(1, Ordering::Relaxed);
                            if self.bound == mine {
                                self.finished = Some(t0.elapsed());
                            }
                        }
                        _ => {}
                    }
                }
                if k < Xsk::rx_batch() {
                    break;
                }
            }
            sock.flush();

            // Retransmissions: a client without an answer after `retry` starts over.
            if last_scan.elapsed() >= Duration::from_millis(50) {
                last_scan = Instant::now();
                let now = last_scan;
                for k in 0..next {
                    let c = &mut self.clients[k];
                    if matches!(c.phase, Phase::Discovering | Phase::Requesting) && c.last_sent.is_some_and(|t| now - t >= cfg.retry) {
                        c.last_sent = Some(now);
                        c.phase = Phase::Discovering;
                        self.retransmits += 1;
                        let d = &frames.discovers[k * self.threads + self.t];
                        sock.push(|buf| copy_frame(buf, d));
                    }
                }
                sock.flush();
            }
            wait.after_turn(sent > 0 || received > 0, std::slice::from_ref(sock));
        }
    }
}

fn copy_frame(buf: &mut [u8], frame: &[u8]) -> usize {
    buf[..frame.len()].copy_from_slice(frame);
    frame.len()
}

/// The DISCOVER frame of client `i` (for single-packet measurements).
pub fn discover_frame(cfg: &Config, i: u32) -> Vec<u8> {
    let mac = mac_of(cfg, i);
    frame(mac, &message(cfg, mac, i + 1, MessageType::Discover))
}
