//! The DHCP service of the agent: sockets around the sans-IO core.
//!
//! Receive: a UDP socket on port 67 (and 4011 in proxy mode) bound to the interface gets what
//! the XDP program passes. Reply: relayed and unicast-to-ciaddr replies through the UDP socket
//! (the kernel routes and resolves), broadcast and link-unicast replies as whole frames through
//! an AF_PACKET socket (a client without an address cannot be reached through IP). Replies that
//! carry a lease go out only after the committer made it durable (invariant 1).

use crate::dhcp::classify::raw_option;
use crate::dhcp::server::{Destination, DhcpServer, Outcome, Reply, Request, ServerParams, Sighting};
use crate::metrics::reply_counter;
use crate::published::Follower;
use crate::stats::Stage;
use crate::timeline::{Milestone, Path, Timelines};
use netboot_common::wire::ClientClass;
use std::time::Instant;
use crate::fastpath::cache::Presentation;
use crate::fastpath::sync::{CacheSync, Pending};
use aya::maps::{MapData, RingBuf};
use netboot_common::cache::AckEvent;
use std::sync::Mutex;
use tokio::io::unix::AsyncFd;
use crate::store::{Committer, Job, LeaseStore, Refused};
use crate::dhcp::leases::Lease;
use crate::iface::{Interface, NeighborCache, udp_socket};
use crate::mac::MacAddr;
use crate::stats::Stats;
use anyhow::Context;
use dhcproto::v4::MessageType;
use netboot_common::wire::{DHCP_SERVER_PORT, PXE_PROXY_PORT};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// A DHCP port on `iface`.
fn dhcp_socket(iface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    udp_socket(iface, SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), true)
        .with_context(|| format!("DHCP port {port} (another DHCP server running?)"))
}

/// A send-only AF_PACKET socket on one interface: whole Ethernet frames out.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> anyhow::Result<PacketSocket> {
        // Protocol 0: this socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            anyhow::bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        Ok(PacketSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex: ifindex as i32 })
    }

    pub fn send(&self, dst: MacAddr, frame: &[u8]) -> std::io::Result<()> {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&dst.0);
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// Everything needed to put a reply on the wire.
struct Transmitter {
    sock67: Arc<UdpSocket>,
    sock4011: Option<Arc<UdpSocket>>,
    l2: PacketSocket,
    mac: MacAddr,
    server_ip: Ipv4Addr,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
    iface: String,
    relays: Arc<NeighborCache>,
}

impl Transmitter {
    /// Sends `r`, a reply to a request received at `received`. A full transmit queue
    /// (ENOBUFS: the qdisc, or a veth peer's backlog, in a payload storm) is transient and a lost
    /// reply costs the client a 4 s retransmission: try again a few times, 63 ms in all (replies
    /// leave in order from one task, so a longer wait would hold back the replies behind it).
    async fn send(&self, r: &Reply, received: Instant) {
        let mut backoff = std::time::Duration::from_millis(1);
        let mut result = self.transmit(r).await;
        for _ in 0..6 {
            match &result {
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.bump("dhcp_send_retries");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    result = self.transmit(r).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(()) => {
                self.stats.bump(&format!("dhcp_sent_{}", kind_name(r.kind)));
                self.stats.bump(&reply_counter(kind_name(r.kind), r.class));
                self.stats.observe(Stage::DhcpReply, received.elapsed());
                let yiaddr = r.payload.get(16..20).map_or(Ipv4Addr::UNSPECIFIED, |b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                self.timelines.record(r.mac, Milestone::dhcp(kind_name(r.kind), r.class, r.arch, yiaddr, Path::Agent));
            }
            Err(e) => {
                self.stats.bump("dhcp_send_errors");
                tracing::warn!(mac = %r.mac, "sending {}: {e}", kind_name(r.kind));
            }
        }
    }

    /// One attempt to put `r` on the wire.
    async fn transmit(&self, r: &Reply) -> std::io::Result<()> {
        match r.dest {
            Destination::Relay(giaddr) => match self.relays.get(&self.iface, giaddr) {
                // As the XDP program would send it; until the relay's MAC is known, the kernel
                // routes and resolves it.
                Some(relay_mac) => {
                    let frame = r.frame(self.mac, self.server_ip, Some(relay_mac)).expect("relay frame");
                    self.l2.send(relay_mac, &frame)
                }
                None => self.sock67.send_to(&r.payload, SocketAddrV4::new(giaddr, DHCP_SERVER_PORT)).await.map(|_| ()),
            },
            Destination::Unicast { ip, port } => {
                // Answer from the port the request came to (4011 for ProxyDHCP requests).
                let sock = match &self.sock4011 {
                    Some(s) if r.local_port == PXE_PROXY_PORT => s,
                    _ => &self.sock67,
                };
                sock.send_to(&r.payload, SocketAddrV4::new(ip, port)).await.map(|_| ())
            }
            Destination::Broadcast | Destination::LinkUnicast { .. } => {
                let frame = r.frame(self.mac, self.server_ip, None).expect("link-layer destination");
                let dst = MacAddr(frame[..6].try_into().expect("6 bytes"));
                self.l2.send(dst, &frame)
            }
        }
    }
}

fn kind_name(k: MessageType) -> &'static str {
    match k {
        MessageType::Offer => "offer",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        _ => "other",
    }
}

/// The XDP side the DHCP service keeps in step: the reply cache and the kernel's ACK events.
pub struct FastPathLink {
    pub sync: CacheSync,
    pub events: RingBuf<MapData>,
    /// Where kernel renewals kept in memory are published (for `/api/v1/leases`).
    pub renewals: Arc<crate::dhcp::UnwrittenRenewals>,
}

/// What to do once a commit is durable.
struct AfterCommit {
    /// The reply, and when its request was received.
    reply: Option<(Reply, Instant)>,
    cache: Option<Pending>,
    /// The addresses and clients of the leases committed (what a failure makes unsure).
    leases: Vec<(Ipv4Addr, MacAddr)>,
    /// The request again, if a shared store may refuse its lease: it is then answered at once
    /// from the store's truth instead of at the client's retransmission.
    retry: Option<Retry>,
}

impl AfterCommit {
    fn new(leases: &[crate::dhcp::leases::Lease], reply: Option<(Reply, Instant)>, cache: Option<Pending>) -> AfterCommit {
        AfterCommit { reply, cache, leases: leases.iter().map(|l| (l.ip, l.mac)).collect(), retry: None }
    }
}

/// A request whose lease a shared store refused, to be handled again.
struct Retry {
    payload: Vec<u8>,
    from: SocketAddr,
    port: u16,
    /// Times it was handled already.
    attempt: u8,
}

/// Handled at most this many times: a store that keeps refusing (a full pool another member
/// fills as fast) is left to the client's retransmissions.
const MAX_ATTEMPTS: u8 = 3;

/// The bound sockets and the core, ready to run.
pub struct Service {
    server: DhcpServer,
    store: Box<dyn LeaseStore>,
    stats: Arc<Stats>,
    sock67: Arc<UdpSocket>,
    sock4011: Option<Arc<UdpSocket>>,
    tx: Arc<Transmitter>,
    fast: Option<FastPathLink>,
    reload: Option<Follower>,
    /// Leases other servers of a cluster committed, from the shared store's change log.
    remote: Option<mpsc::UnboundedReceiver<Vec<Lease>>>,
    /// Where the machines that asked are recorded.
    discovery: Option<Arc<crate::provision::discovery::Discovery>>,
}

impl Service {
    /// Binds the sockets (67, and 4011 in proxy mode). Must run inside a tokio runtime.
    pub fn bind(
        iface: &Interface,
        server: DhcpServer,
        store: Box<dyn LeaseStore>,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
    ) -> anyhow::Result<Service> {
        let proxy = server.params().mode == crate::config::DhcpMode::Proxy;
        let sock67 = Arc::new(dhcp_socket(&iface.name, DHCP_SERVER_PORT)?);
        let sock4011 = if proxy { Some(Arc::new(dhcp_socket(&iface.name, PXE_PROXY_PORT)?)) } else { None };
        let tx = Arc::new(Transmitter {
            sock67: sock67.clone(),
            sock4011: sock4011.clone(),
            l2: PacketSocket::open(iface.index)?,
            mac: iface.mac,
            server_ip: server.params().server_ip,
            stats: stats.clone(),
            timelines,
            iface: iface.name.clone(),
            relays: Arc::new(NeighborCache::default()),
        });
        stats.add("dhcp_leases_loaded", server.leases().len() as u64);
        Ok(Service { server, store, stats, sock67, sock4011, tx, fast: None, reload: None, remote: None, discovery: None })
    }

    /// Applies every config `configs` follows (see [`crate::published`]).
    pub fn with_reload(mut self, configs: Follower) -> Service {
        self.reload = Some(configs);
        self
    }

    /// Follows the leases other cluster members commit (see [`crate::cluster`]).
    pub fn with_remote_leases(mut self, remote: mpsc::UnboundedReceiver<Vec<Lease>>) -> Service {
        self.remote = Some(remote);
        self
    }

    /// Records every machine that asks (see [`crate::provision::discovery`]).
    pub fn with_discovery(mut self, discovery: Arc<crate::provision::discovery::Discovery>) -> Service {
        self.discovery = Some(discovery);
        self
    }

    /// Keeps the XDP reply cache in step from now on.
    pub fn with_fast_path(mut self, fast: FastPathLink) -> Service {
        self.fast = Some(fast);
        self
    }

    /// Serves until `shutdown` changes; then lets queued commits finish and their replies go.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Service { mut server, store, stats, sock67, sock4011, tx, fast, mut reload, mut remote, discovery } = self;
        let (relays, iface, timelines) = (tx.relays.clone(), tx.iface.clone(), tx.timelines.clone());
        let (sync, events, renewals) = match fast {
            Some(f) => {
                let events = unsafe { AsyncFd::register_with_interest(f.events, tokio::io::Interest::READABLE) }
                    .map_err(|e| anyhow::anyhow!("event ring buffer: {e}"))?;
                (Some(Arc::new(Mutex::new(f.sync))), Some(events), f.renewals)
            }
            None => (None, None, Arc::default()),
        };
        let mut events = events;
        let now = unix_now();
        if let Some(sync) = &sync {
            // Reservations and bound leases are durable already: cache them now.
            let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
            let pruned = sync.resync(&server, now);
            stats.add("fast_cached_clients_at_start", sync.clients() as u64);
            tracing::info!(clients = sync.clients(), pruned, "reply cache compiled");
        }

        // Replies leave from one task, in order: directly, or after their commit.
        let (send_tx, mut send_rx) = mpsc::unbounded_channel::<(Reply, Instant)>();
        let sender = tokio::spawn(async move {
            while let Some((r, received)) = send_rx.recv().await {
                tx.send(&r, received).await;
            }
        });
        let committed = send_tx.clone();
        let commit_stats = stats.clone();
        let commit_sync = sync.clone();
        // Leases whose commit failed: the core must not count them as stored.
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<Vec<(Ipv4Addr, MacAddr)>>();
        // Leases a shared store refused: their reply is not sent; the request is handled again
        // from the store's truth (see MAX_ATTEMPTS).
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<(Vec<Refused>, Option<Retry>)>();
        // Only a shared store refuses a lease: then requests are kept to be handled again.
        let shared_store = store.shared();
        let committer = Committer::start(store, stats.clone(), move |after: AfterCommit, result| match result {
            Ok(refused) if !refused.is_empty() => {
                if let (Some(p), Some(sync)) = (after.cache, &commit_sync) {
                    sync.lock().unwrap_or_else(|e| e.into_inner()).abandon(p);
                }
                let _ = lost_tx.send((refused, after.retry));
            }
            Ok(_) => {
                if let (Some(p), Some(sync)) = (after.cache, &commit_sync) {
                    sync.lock().unwrap_or_else(|e| e.into_inner()).install(p);
                }
                if let Some(r) = after.reply {
                    let _ = committed.send(r);
                }
            }
            Err(_) => {
                if after.reply.is_some() {
                    commit_stats.bump("dhcp_dropped_commit_failed");
                }
                if let (Some(p), Some(sync)) = (after.cache, &commit_sync) {
                    sync.lock().unwrap_or_else(|e| e.into_inner()).abandon(p);
                }
                let _ = failed_tx.send(after.leases);
            }
        });
        tracing::info!(server = %server.params().server_ip, mode = ?server.params().mode, leases = server.leases().len(), "DHCP service up");

        let mut buf67 = vec![0u8; 4096];
        let mut buf4011 = vec![0u8; 4096];
        // Expiry sweep, and the cached-clients gauge (kept off the per-packet path).
        let mut sweep = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            // A request: received (its bytes in a buffer), or handled again (its own bytes).
            let (again, n, from, port, attempt) = tokio::select! {
                r = sock67.recv_from(&mut buf67) => match r {
                    Ok((n, from)) => (None, n, from, DHCP_SERVER_PORT, 1),
                    Err(e) => { tracing::warn!("recv on port 67: {e}"); continue; }
                },
                r = async { sock4011.as_ref().expect("guarded").recv_from(&mut buf4011).await }, if sock4011.is_some() => match r {
                    Ok((n, from)) => (None, n, from, PXE_PROXY_PORT, 1),
                    Err(e) => { tracing::warn!("recv on port 4011: {e}"); continue; }
                },
                r = async { events.as_mut().expect("guarded").readable_mut().await }, if events.is_some() => {
                    let mut guard = r?;
                    let acks: Vec<AckEvent> = crate::fastpath::drain(guard.get_inner_mut());
                    guard.clear_ready();
                    let now = unix_now();
                    stats.add("fast_acks_recorded", acks.len() as u64);
                    // One commit for the whole drain: the renewals of a storm in few transactions.
                    let mut renewed = Vec::with_capacity(acks.len());
                    let mut kernel_seen = Vec::with_capacity(acks.len());
                    for ev in acks {
                        let (mac, ip) = (MacAddr(ev.mac), Ipv4Addr::from(ev.ip));
                        let class = ClientClass::from_u8(ev.class);
                        timelines.record(mac, Milestone::dhcp("ack", class, ev.arch(), ip, Path::Kernel));
                        kernel_seen.push(Sighting { mac, at: now, class, arch: ev.arch(), uuid: None, vendor_class: None, relay: None, known: server.is_reserved(mac) });
                        renewed.extend(server.record_kernel_ack(mac, ip, now));
                    }
                    if let Some(d) = &discovery {
                        d.observe(kernel_seen);
                    }
                    if let Some(sync) = &sync {
                        let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                        for ack in &renewed {
                            sync.renewed(ack.lease.mac, ack.lease.expires);
                        }
                    }
                    let recorded = renewed.len();
                    for a in renewed.iter().filter(|a| !a.persist) {
                        renewals.record(&a.lease);
                    }
                    let leases: Vec<_> = renewed.into_iter().filter(|a| a.persist).map(|a| a.lease).collect();
                    stats.add("fast_acks_in_memory_only", (recorded - leases.len()) as u64);
                    if !leases.is_empty() {
                        let then = AfterCommit::new(&leases, None, None);
                        committer.submit(Job { leases, then })?;
                    }
                    continue;
                },
                Some((lost, retry)) = lost_rx.recv() => {
                    {
                        let mut sync = sync.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
                        for r in lost {
                            if let Some(sync) = &mut sync {
                                sync.forget(r.lease.mac);
                                if let Some(w) = &r.winner {
                                    sync.displace(w.ip, w.mac);
                                }
                            }
                            server.claim_lost(&r.lease, r.winner);
                        }
                    }
                    match retry {
                        Some(r) if r.attempt < MAX_ATTEMPTS => {
                            stats.bump("dhcp_claim_retries");
                            let n = r.payload.len();
                            (Some(r.payload), n, r.from, r.port, r.attempt + 1)
                        }
                        Some(_) => {
                            stats.bump("dhcp_dropped_claim_lost");
                            continue;
                        }
                        None => continue,
                    }
                },
                Some(leases) = async { remote.as_mut().expect("guarded").recv().await }, if remote.is_some() => {
                    let mut sync = sync.as_ref().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
                    for l in leases {
                        if let Some(sync) = &mut sync {
                            // Another server answered this client and holds this address now:
                            // nothing cached here may answer for either.
                            sync.displace(l.ip, l.mac);
                            sync.forget(l.mac);
                        }
                        server.apply_remote(l);
                    }
                    continue;
                },
                Some(failed) = failed_rx.recv() => {
                    server.commit_failed(failed.iter().map(|(ip, _)| *ip));
                    if let Some(sync) = &sync {
                        let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                        for (_, mac) in &failed {
                            sync.forget(*mac);
                        }
                    }
                    continue;
                },
                _ = sweep.tick() => {
                    if let Some(sync) = &sync {
                        let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                        stats.add("fast_cache_swept", sync.sweep(unix_now()) as u64);
                        stats.set("fast_cache_stale_installs", sync.stale_installs);
                        stats.set("fast_cached_clients", sync.clients() as u64);
                    }
                    continue;
                },
                r = async { reload.as_mut().expect("guarded").changed().await }, if reload.is_some() => {
                    let Some(config) = r else {
                        reload = None; // the publisher is gone: nothing more to apply
                        continue;
                    };
                    let params = ServerParams::from_config(&config, server.params().server_ip);
                    server.reconfigure(params, config.dhcp.pools.iter().map(|p| *p.get_ref()).collect());
                    if let Some(sync) = &sync {
                        let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                        sync.resync(&server, unix_now());
                        stats.set("fast_cached_clients", sync.clients() as u64);
                    }
                    tracing::info!(reservations = server.params().reservations.len(), "DHCP: reloaded config applied");
                    reload.as_mut().expect("guarded").applied();
                    continue;
                },
                _ = shutdown.changed() => break,
            };
            let received = Instant::now();
            let payload = match &again {
                Some(p) => &p[..],
                None if port == DHCP_SERVER_PORT => &buf67[..n],
                None => &buf4011[..n],
            };
            let SocketAddr::V4(from_v4) = from else { continue };
            if again.is_none() {
                stats.bump("dhcp_received");
            }
            let now = unix_now();
            let outcome = server.handle(Request { payload, local_port: port, src_ip: *from_v4.ip(), src_port: from_v4.port(), now });
            let seen = server.take_sightings();
            if let Some(d) = &discovery {
                d.observe(seen);
            }
            match outcome {
                Outcome::Reply(r) => {
                    tracing::debug!(mac = %r.mac, class = r.class.name(), kind = kind_name(r.kind), dest = ?r.dest, "reply");
                    let mut cache = None;
                    if let Some(sync) = &sync {
                        let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                        if r.kind == MessageType::Nak {
                            sync.forget(r.mac);
                        }
                        for l in &r.commit {
                            sync.displace(l.ip, l.mac);
                        }
                        if r.kind == MessageType::Ack || server.is_reserved(r.mac) {
                            let relay = match r.dest {
                                Destination::Relay(g) => relays.get(&iface, g).map(|m| (g, m)),
                                _ => None,
                            };
                            let seen = Presentation {
                                mac: r.mac,
                                class: r.class,
                                arch: r.arch,
                                client_id: raw_option(&r.payload, 61).map(<[u8]>::to_vec),
                                relay,
                            };
                            cache = Some(sync.prepare(&server, r.mac, &CacheSync::presentations(r.mac, Some(seen)), now));
                        }
                    }
                    if r.commit.is_empty() {
                        if let (Some(p), Some(sync)) = (cache, &sync) {
                            sync.lock().unwrap_or_else(|e| e.into_inner()).install(p); // a reservation: durable
                        }
                        let _ = send_tx.send((r, received));
                    } else {
                        let leases = r.commit.clone();
                        let mut then = AfterCommit::new(&leases, Some((r, received)), cache);
                        then.retry = shared_store.then(|| Retry { payload: payload.to_vec(), from, port, attempt });
                        committer.submit(Job { then, leases })?;
                    }
                }
                Outcome::Silent { why, commit } => {
                    stats.bump(&format!("dhcp_silent_{}", why.name()));
                    tracing::debug!(from = %from_v4, "no reply: {}", why.name());
                    if !commit.is_empty() {
                        if let Some(sync) = &sync {
                            let mut sync = sync.lock().unwrap_or_else(|e| e.into_inner());
                            for l in &commit {
                                sync.forget(l.mac); // released, declined, or taken elsewhere
                            }
                        }
                        committer.submit(Job { then: AfterCommit::new(&commit, None, None), leases: commit })?;
                    }
                }
            }
        }
        tokio::task::spawn_blocking(move || committer.shutdown()).await?;
        drop(send_tx);
        let _ = sender.await;
        Ok(())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}
