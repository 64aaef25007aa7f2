//! A DHCP load generator for the lab: many simulated clients in one process, raw frames through
//! an AF_PACKET socket on the client side of the lab (perfdhcp relays everything and cannot
//! push fast enough for the kernel path).
//!
//! Each client runs DORA like a PXE ROM without the broadcast flag: DISCOVER broadcast, OFFER
//! (link unicast to its MAC), REQUEST broadcast for the offered address, ACK. Frames are
//! prebuilt; a sender thread paces DISCOVERs (all at once, or a window of outstanding
//! exchanges) and retransmits after `retry`; the receiver matches replies by xid.

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use netboot::frame::parse_udp;
use netboot::lab::Lab;
use netboot::mac::MacAddr;
use std::net::Ipv4Addr;
use crate::rawsock::PacketSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    server: Ipv4Addr,
    done: Option<Instant>,
}

fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs the clients from the lab's client side; returns when all are bound or at the deadline.
pub fn run(lab: &Lab, cfg: &Config) -> anyhow::Result<Report> {
    let dev = lab.link_if.clone();
    let sock = Arc::new(lab.client.run(move || PacketSocket::open(&dev, None))??);
    let n = cfg.clients as usize;
    let macs: Vec<MacAddr> = (0..cfg.clients).map(|i| mac_of(cfg, i)).collect();
    let discovers: Vec<Vec<u8>> = (0..n).map(|i| frame(macs[i], &message(cfg, macs[i], i as u32 + 1, MessageType::Discover))).collect();
    let clients: Arc<Mutex<Vec<Client>>> = Arc::new(Mutex::new(
        (0..n).map(|_| Client { phase: Phase::Idle, started: None, last_sent: None, offered: Ipv4Addr::UNSPECIFIED, server: Ipv4Addr::UNSPECIFIED, done: None }).collect(),
    ));
    let bound = Arc::new(AtomicU64::new(0));
    let retransmits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu_time();
    let t0 = Instant::now();

    // Receiver: OFFER → REQUEST, ACK → bound.
    let rx = {
        let (sock, clients, bound, stop) = (sock.clone(), clients.clone(), bound.clone(), stop.clone());
        let persona_cfg = Config { clients: cfg.clients, base: cfg.base, persona: cfg.persona, window: cfg.window, retry: cfg.retry, deadline: cfg.deadline };
        let macs = macs.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Some(len) = sock.recv(&mut buf) else { continue };
                let Some(p) = parse_udp(&buf[..len]) else { continue };
                if p.envelope.src_port != 67 || p.envelope.dst_port != 68 {
                    continue;
                }
                let Ok(m) = Message::decode(&mut Decoder::new(p.payload)) else { continue };
                let i = m.xid() as usize;
                if i == 0 || i > macs.len() || m.chaddr() != macs[i - 1].0 {
                    continue;
                }
                let i = i - 1;
                let mut cl = clients.lock().unwrap();
                let c = &mut cl[i];
                match (m.opts().msg_type(), c.phase) {
                    (Some(MessageType::Offer), Phase::Discovering) => {
                        let sid = match m.opts().get(OptionCode::ServerIdentifier) {
                            Some(DhcpOption::ServerIdentifier(s)) => *s,
                            _ => continue,
                        };
                        c.offered = m.yiaddr();
                        c.server = sid;
                        c.phase = Phase::Requesting;
                        c.last_sent = Some(Instant::now());
                        drop(cl);
                        let mut req = message(&persona_cfg, macs[i], i as u32 + 1, MessageType::Request);
                        req.opts_mut().insert(DhcpOption::RequestedIpAddress(m.yiaddr()));
                        req.opts_mut().insert(DhcpOption::ServerIdentifier(sid));
                        sock.send(&frame(macs[i], &req));
                    }
                    (Some(MessageType::Ack), Phase::Requesting) if m.yiaddr() == c.offered => {
                        c.phase = Phase::Bound;
                        c.done = Some(Instant::now());
                        bound.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };

    // Sender: DISCOVERs within the window, then retransmissions, until all bound.
    let window = if cfg.window == 0 { n } else { cfg.window as usize };
    let mut next = 0usize;
    let mut last_scan = Instant::now();
    while (bound.load(Ordering::Relaxed) as usize) < n && t0.elapsed() < cfg.deadline {
        let in_flight = next - bound.load(Ordering::Relaxed) as usize;
        if next < n && in_flight < window {
            let burst = (window - in_flight).min(n - next).min(256);
            for _ in 0..burst {
                {
                    let mut cl = clients.lock().unwrap();
                    cl[next].phase = Phase::Discovering;
                    cl[next].started = Some(Instant::now());
                    cl[next].last_sent = cl[next].started;
                }
                sock.send(&discovers[next]);
                next += 1;
            }
            continue;
        }
        if last_scan.elapsed() >= Duration::from_millis(50) {
            last_scan = Instant::now();
            let now = Instant::now();
            let mut resend = Vec::new();
            {
                let mut cl = clients.lock().unwrap();
                for (i, c) in cl.iter_mut().enumerate().take(next) {
                    if matches!(c.phase, Phase::Discovering | Phase::Requesting) && c.last_sent.is_some_and(|t| now - t >= cfg.retry) {
                        c.last_sent = Some(now);
                        if c.phase == Phase::Requesting {
                            // Start over, as a client whose REQUEST went unanswered would.
                            c.phase = Phase::Discovering;
                        }
                        resend.push(i);
                    }
                }
            }
            retransmits.fetch_add(resend.len() as u64, Ordering::Relaxed);
            for i in resend {
                sock.send(&discovers[i]);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let wall = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let cl = clients.lock().unwrap();
    let mut latencies: Vec<Duration> = cl.iter().filter_map(|c| Some(c.done? - c.started?)).collect();
    latencies.sort();
    Ok(Report {
        clients: cfg.clients,
        leased: bound.load(Ordering::Relaxed) as u32,
        wall,
        retransmits: retransmits.load(Ordering::Relaxed),
        latencies,
        addresses: cl.iter().filter(|c| c.phase == Phase::Bound).map(|c| c.offered).collect(),
        client_cpu: cpu_time() - cpu0,
    })
}

/// The DISCOVER frame of client `i` (for single-packet measurements).
pub fn discover_frame(cfg: &Config, i: u32) -> Vec<u8> {
    let mac = mac_of(cfg, i);
    frame(mac, &message(cfg, mac, i + 1, MessageType::Discover))
}
