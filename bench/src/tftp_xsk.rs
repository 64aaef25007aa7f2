//! The bench's TFTP client over AF_XDP: many reads at once from one thread, each from its own
//! UDP port of the lab's client address, frames read from and written into the UMEM. The same
//! sans-IO client core as `lab::tftp_fetch` (which uses a kernel socket per transfer and tops
//! out near 200 MiB/s on this machine kind: the kernel's UDP receive path per block, not the
//! server, was the ceiling).
//!
//! The lab's client end hands frames to the transfers' ports to the AF_XDP sockets
//! (`Lab::client_xsk`); everything else (ARP for the client address, which the bridge answers;
//! DHCP; HTTP) passes. Frames leave with the bridge's MAC and address, as the kernel's would.
//!
//! [`XskClient`] runs reads in slots (a slot is a port); [`XskClient::fetch_many`] runs a batch
//! to the end on the calling thread, [`XskService`] runs the client on a thread of its own and
//! takes reads from async tasks (the storm's machines).

use netboot::frame::{UdpEnvelope, parse_udp};
use netboot::iface::Interface;
use netboot_lab::Lab;
use netboot_lab::tftp_fetch::Fetched;
use netboot::mac::MacAddr;
use netboot::tftp::client::{ClientStep, ClientTransfer, Request};
use netboot::xsk::{IdleWait, XskSizes};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The transfers' ports: `FIRST_PORT + slot`, below the kernel's ephemeral range.
const FIRST_PORT: u16 = 10_000;
const MAX_SLOTS: usize = 20_000;
/// The client's retry timer (the servers' are shorter, so it rarely fires).
const RETRY: Duration = Duration::from_millis(1000);

/// Where a read's result goes.
type Done = Box<dyn FnOnce(Fetched) + Send>;

struct Read {
    core: ClientTransfer,
    server: SocketAddrV4,
    /// The server's port for this transfer (its TID), from its first reply.
    server_port: Option<u16>,
    rrq: Vec<u8>,
    started: Instant,
    give_up: Duration,
    done: Option<Done>,
}

/// A server on a host of its own on the lab's segment ([`netboot_lab::Lab::add_server`]).
#[derive(Debug, Clone, Copy)]
pub struct ServerHost {
    pub tag: char,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// The client's end of the lab: AF_XDP sockets for the ports of `slots` reads at once, on the
/// link to the lab's server end and on the link to each server host given.
pub struct XskClient {
    /// Every link's sockets (closed before the links' programs are restored).
    socks: Vec<netboot::xsk::Xsk>,
    _links: Vec<netboot_lab::ClientXsk>,
    mac: MacAddr,
    ip: Ipv4Addr,
    /// Per server address: the socket its frames leave by (one of its link's) and its MAC.
    servers: HashMap<Ipv4Addr, (usize, MacAddr)>,
    reads: Vec<Option<Read>>,
    /// Free slots, the longest free first: a port is reused as late as possible, so that a
    /// server's late duplicate for the last read on it is not taken for the new read's first
    /// reply.
    free: VecDeque<usize>,
    /// Packets to send: from the slot's port, to the server's address for that read.
    out: Vec<(usize, SocketAddrV4, Vec<u8>)>,
    last_scan: Instant,
    wait: IdleWait,
}

impl XskClient {
    pub fn open(lab: &Lab, slots: usize, hosts: &[ServerHost]) -> anyhow::Result<XskClient> {
        anyhow::ensure!((1..=MAX_SLOTS).contains(&slots), "at most {MAX_SLOTS} transfers at once");
        let bridge = lab.client_if.clone();
        let me = lab.client.run(move || Interface::lookup(&bridge))??;
        let ip = me.ipv4.first().map(|n| n.addr()).ok_or_else(|| anyhow::anyhow!("the lab's client end has no address"))?;
        let server_if = lab.server_if.clone();
        let server_mac = lab.server.run(move || Interface::lookup(&server_if))??.mac;
        let last = FIRST_PORT + slots as u16 - 1;
        let ring = (slots as u32).next_power_of_two().clamp(8192, 16384);
        let sizes = XskSizes { frames: 2 * ring, fill: ring, ring };
        let mut links = vec![lab.client_xsk(FIRST_PORT..=last, sizes)?];
        let mut socks = std::mem::take(&mut links[0].socks);
        let mut servers = HashMap::from([(lab.server_ip(), (0, server_mac))]);
        for h in hosts {
            let mut link = lab.server_host_xsk(h.tag, FIRST_PORT..=last, sizes)?;
            servers.insert(h.ip, (socks.len(), h.mac));
            socks.append(&mut link.socks);
            links.push(link);
        }
        Ok(XskClient {
            socks,
            _links: links,
            mac: me.mac,
            ip,
            servers,
            reads: (0..slots).map(|_| None).collect(),
            free: (0..slots).collect(),
            out: Vec::new(),
            last_scan: Instant::now(),
            wait: IdleWait::default(),
        })
    }

    /// Whether a read can start now.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Reads in progress.
    pub fn active(&self) -> usize {
        self.reads.len() - self.free.len()
    }

    /// Starts a read of `req` from `server`; `done` gets its result. False when every slot is
    /// taken.
    pub fn start(&mut self, server: SocketAddrV4, req: &Request, give_up: Duration, done: Done) -> bool {
        let Some(slot) = self.free.pop_front() else { return false };
        let now = Instant::now();
        let rrq = req.rrq();
        self.reads[slot] =
            Some(Read { core: ClientTransfer::new(now), server, server_port: None, rrq: rrq.clone(), started: now, give_up, done: Some(done) });
        self.queue(slot, rrq);
        true
    }

    /// One turn: sends what is queued, takes what arrived, runs the timers. Waits up to a
    /// millisecond when nothing happened for a while.
    pub fn turn(&mut self) {
        self.send();
        // The sockets leave `self` while their frames are handled (which needs `&mut self`;
        // handling only queues packets, it sends none).
        let mut socks = std::mem::take(&mut self.socks);
        let now = Instant::now();
        let received: usize = socks.iter_mut().map(|x| x.recv_all(|f| self.on_frame(f, now))).sum();
        self.socks = socks;
        if self.last_scan.elapsed() >= Duration::from_millis(20) {
            self.last_scan = Instant::now();
            self.timers(self.last_scan);
        }
        self.send();
        self.wait.after_turn(received > 0, &self.socks);
    }

    fn on_frame(&mut self, f: &[u8], now: Instant) {
        let Some(p) = parse_udp(f) else { return };
        let e = p.envelope;
        let slots = self.reads.len() as u16;
        if e.dst_ip != self.ip || e.dst_port < FIRST_PORT || e.dst_port - FIRST_PORT >= slots {
            return;
        }
        let slot = usize::from(e.dst_port - FIRST_PORT);
        let Some(r) = self.reads[slot].as_mut() else { return };
        if e.src_ip != *r.server.ip() || *r.server_port.get_or_insert(e.src_port) != e.src_port {
            return; // another host, or another TID
        }
        let step = r.core.on_packet(p.payload, now);
        self.step(slot, step, now);
    }

    /// Resends the last packet of reads silent for `RETRY`; ends those silent for their give-up.
    fn timers(&mut self, now: Instant) {
        for slot in 0..self.reads.len() {
            let Some(r) = self.reads[slot].as_mut() else { continue };
            if r.core.idle_for(now) < RETRY {
                continue;
            }
            if r.core.idle_for(now) >= r.give_up || r.started.elapsed() >= r.give_up * 4 {
                self.end(slot, Err("timed out".into()), now);
                continue;
            }
            let step = r.core.on_timeout(&r.rrq, now);
            self.step(slot, step, now);
        }
    }

    fn step(&mut self, slot: usize, step: ClientStep, now: Instant) {
        match step {
            ClientStep::Send(p) => self.queue(slot, p),
            ClientStep::Wait => {}
            ClientStep::Done(p) => {
                self.queue(slot, p);
                self.end(slot, Ok(()), now);
            }
            ClientStep::Failed(e) => self.end(slot, Err(e), now),
        }
    }

    fn end(&mut self, slot: usize, result: Result<(), String>, now: Instant) {
        let Some(mut r) = self.reads[slot].take() else { return };
        let fetched = match result {
            Ok(()) => Fetched { data: std::mem::take(&mut r.core.data), elapsed: now - r.started, retransmits: r.core.retransmits, error: None },
            Err(e) => Fetched { data: Vec::new(), elapsed: now - r.started, retransmits: r.core.retransmits, error: Some(e) },
        };
        if let Some(done) = r.done.take() {
            done(fetched);
        }
        self.free.push_back(slot);
    }

    /// Queues `payload` from read `slot` to its server: port 69 until the server's first reply
    /// names the transfer's port.
    fn queue(&mut self, slot: usize, payload: Vec<u8>) {
        let Some(r) = &self.reads[slot] else { return };
        let to = SocketAddrV4::new(*r.server.ip(), r.server_port.unwrap_or(r.server.port()));
        self.out.push((slot, to, payload));
    }

    /// Sends what is queued (packets of reads that have ended too: their final ACK).
    fn send(&mut self) {
        for (slot, to, payload) in self.out.drain(..) {
            // Reads start only towards servers of `servers` (XskService::fetch).
            let Some(&(sock, dst_mac)) = self.servers.get(to.ip()) else { continue };
            let e = UdpEnvelope {
                src_mac: self.mac,
                dst_mac,
                vlan: None,
                src_ip: self.ip,
                dst_ip: *to.ip(),
                src_port: FIRST_PORT + slot as u16,
                dst_port: to.port(),
                ttl: 64,
            };
            self.socks[sock].push(|buf| e.write(buf, &payload));
        }
        for x in self.socks.iter_mut() {
            x.flush();
        }
    }

    /// Runs `n` reads of `req` from `server` at once to their end; each gives up after
    /// `give_up` without progress.
    pub fn fetch_many(&mut self, server: SocketAddrV4, req: &Request, n: usize, give_up: Duration) -> anyhow::Result<Vec<Fetched>> {
        anyhow::ensure!(n <= self.free.len(), "at most {} transfers at once", self.free.len());
        let results: Arc<Mutex<Vec<Option<Fetched>>>> = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
        for i in 0..n {
            let results = results.clone();
            self.start(server, req, give_up, Box::new(move |f| results.lock().unwrap()[i] = Some(f)));
        }
        while self.active() > 0 {
            self.turn();
        }
        self.send();
        let mut results = results.lock().unwrap();
        Ok(results.iter_mut().map(|r| r.take().expect("every read ended")).collect())
    }
}

struct Job {
    server: SocketAddrV4,
    req: Request,
    give_up: Duration,
    done: tokio::sync::oneshot::Sender<Fetched>,
}

/// An [`XskClient`] on a thread of its own, taking reads from async tasks.
pub struct XskService {
    /// The servers the AF_XDP client reaches (the lab's server end and the hosts given to
    /// [`XskService::start`]); any other is read from over kernel sockets.
    servers: Vec<Ipv4Addr>,
    jobs: Mutex<mpsc::Sender<Job>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl XskService {
    pub fn start(lab: &Lab, slots: usize, hosts: &[ServerHost]) -> anyhow::Result<XskService> {
        let mut client = XskClient::open(lab, slots, hosts)?;
        let servers = client.servers.keys().copied().collect();
        let (jobs, inbox) = mpsc::channel::<Job>();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tftp-xsk-client".into()).spawn(move || {
            let mut waiting: VecDeque<Job> = VecDeque::new();
            loop {
                waiting.extend(inbox.try_iter());
                while client.has_free() {
                    let Some(Job { server, req, give_up, done }) = waiting.pop_front() else { break };
                    client.start(server, &req, give_up, Box::new(move |f| {
                        let _ = done.send(f);
                    }));
                }
                if client.active() == 0 && waiting.is_empty() {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    match inbox.recv_timeout(Duration::from_millis(20)) {
                        Ok(job) => waiting.push_back(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    continue;
                }
                client.turn();
            }
            client.send();
        })?;
        Ok(XskService { servers, jobs: Mutex::new(jobs), stop, thread: Mutex::new(Some(thread)) })
    }

    /// Reads `req` from `server` (call from the client namespace).
    pub async fn fetch(&self, server: SocketAddrV4, req: &Request, give_up: Duration) -> Fetched {
        if !self.servers.contains(server.ip()) {
            let read = async {
                let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
                netboot_lab::tftp_fetch::fetch(sock, server.into(), req, give_up).await
            };
            return read.await.unwrap_or_else(|e| Fetched { data: Vec::new(), elapsed: Duration::ZERO, retransmits: 0, error: Some(format!("{e:#}")) });
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let job = Job { server, req: req.clone(), give_up, done };
        if self.jobs.lock().unwrap().send(job).is_err() {
            return Fetched { data: Vec::new(), elapsed: Duration::ZERO, retransmits: 0, error: Some("the TFTP client thread is gone".into()) };
        }
        result.await.unwrap_or_else(|_| Fetched { data: Vec::new(), elapsed: Duration::ZERO, retransmits: 0, error: Some("the TFTP client thread dropped the read".into()) })
    }

    /// Lets the reads in progress end, then stops the thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}
