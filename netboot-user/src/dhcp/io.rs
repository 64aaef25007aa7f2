//! The DHCP service of the agent: sockets around the sans-IO core.
//!
//! Receive: a UDP socket on port 67 (and 4011 in proxy mode) bound to the interface gets what
//! the XDP program passes. Reply: relayed and unicast-to-ciaddr replies through the UDP socket
//! (the kernel routes and resolves), broadcast and link-unicast replies as whole frames through
//! an AF_PACKET socket (a client without an address cannot be reached through IP). Replies that
//! carry a lease go out only after the committer made it durable (invariant 1).

use super::server::{Destination, DhcpServer, Outcome, Reply, Request};
use super::store::{Committer, Job, LeaseStore};
use crate::iface::Interface;
use crate::mac::MacAddr;
use crate::stats::Stats;
use anyhow::Context;
use dhcproto::v4::MessageType;
use netboot_common::wire::{DHCP_SERVER_PORT, PXE_PROXY_PORT};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// A UDP socket on `port` bound to `iface`, receiving broadcasts.
fn udp_socket(iface: &str, port: u16) -> anyhow::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| format!("SO_BINDTODEVICE {iface}"))?;
    s.set_nonblocking(true)?;
    s.set_recv_buffer_size(4 << 20).ok();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| format!("cannot bind UDP port {port} on {iface} (another DHCP server running?)"))?;
    Ok(UdpSocket::from_std(s.into())?)
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
}

impl Transmitter {
    async fn send(&self, r: &Reply) {
        let result = match r.dest {
            Destination::Relay(giaddr) => {
                self.sock67.send_to(&r.payload, SocketAddrV4::new(giaddr, DHCP_SERVER_PORT)).await.map(|_| ())
            }
            Destination::Unicast { ip, port } => {
                // Answer from the port the request came to (4011 for ProxyDHCP requests).
                let sock = match &self.sock4011 {
                    Some(s) if r.local_port == PXE_PROXY_PORT => s,
                    _ => &self.sock67,
                };
                sock.send_to(&r.payload, SocketAddrV4::new(ip, port)).await.map(|_| ())
            }
            Destination::Broadcast | Destination::LinkUnicast { .. } => {
                let frame = r.frame(self.mac, self.server_ip).expect("link-layer destination");
                let dst = MacAddr(frame[..6].try_into().expect("6 bytes"));
                self.l2.send(dst, &frame)
            }
        };
        match result {
            Ok(()) => {
                self.stats.bump(&format!("dhcp_sent_{}", kind_name(r.kind)));
                self.stats.bump(&format!("dhcp_sent_class_{}", r.class.name()));
            }
            Err(e) => {
                self.stats.bump("dhcp_send_errors");
                tracing::warn!(mac = %r.mac, "sending {}: {e}", kind_name(r.kind));
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

/// The bound sockets and the core, ready to run.
pub struct Service {
    server: DhcpServer,
    store: Box<dyn LeaseStore>,
    stats: Arc<Stats>,
    sock67: Arc<UdpSocket>,
    sock4011: Option<Arc<UdpSocket>>,
    tx: Arc<Transmitter>,
}

impl Service {
    /// Binds the sockets (67, and 4011 in proxy mode). Must run inside a tokio runtime.
    pub fn bind(iface: &Interface, server: DhcpServer, store: Box<dyn LeaseStore>, stats: Arc<Stats>) -> anyhow::Result<Service> {
        let proxy = server.params().mode == crate::config::DhcpMode::Proxy;
        let sock67 = Arc::new(udp_socket(&iface.name, DHCP_SERVER_PORT)?);
        let sock4011 = if proxy { Some(Arc::new(udp_socket(&iface.name, PXE_PROXY_PORT)?)) } else { None };
        let tx = Arc::new(Transmitter {
            sock67: sock67.clone(),
            sock4011: sock4011.clone(),
            l2: PacketSocket::open(iface.index)?,
            mac: iface.mac,
            server_ip: server.params().server_ip,
            stats: stats.clone(),
        });
        stats.add("dhcp_leases_loaded", server.leases().len() as u64);
        Ok(Service { server, store, stats, sock67, sock4011, tx })
    }

    /// Serves until `shutdown` changes; then lets queued commits finish and their replies go.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Service { mut server, store, stats, sock67, sock4011, tx } = self;
        // Replies leave from one task, in order: directly, or after their commit.
        let (send_tx, mut send_rx) = mpsc::unbounded_channel::<Reply>();
        let sender = tokio::spawn(async move {
            while let Some(r) = send_rx.recv().await {
                tx.send(&r).await;
            }
        });
        let committed = send_tx.clone();
        let commit_stats = stats.clone();
        let committer = Committer::start(store, move |reply: Option<Reply>, result| match (reply, result) {
            (Some(r), Ok(())) => {
                let _ = committed.send(r);
            }
            (Some(_), Err(_)) => commit_stats.bump("dhcp_dropped_commit_failed"),
            (None, _) => {}
        });
        tracing::info!(server = %server.params().server_ip, mode = ?server.params().mode, leases = server.leases().len(), "DHCP service up");

        let mut buf67 = vec![0u8; 4096];
        let mut buf4011 = vec![0u8; 4096];
        loop {
            let (n, from, port) = tokio::select! {
                r = sock67.recv_from(&mut buf67) => match r {
                    Ok((n, from)) => (n, from, DHCP_SERVER_PORT),
                    Err(e) => { tracing::warn!("recv on port 67: {e}"); continue; }
                },
                r = async { sock4011.as_ref().expect("guarded").recv_from(&mut buf4011).await }, if sock4011.is_some() => match r {
                    Ok((n, from)) => (n, from, PXE_PROXY_PORT),
                    Err(e) => { tracing::warn!("recv on port 4011: {e}"); continue; }
                },
                _ = shutdown.changed() => break,
            };
            let payload = if port == DHCP_SERVER_PORT { &buf67[..n] } else { &buf4011[..n] };
            let SocketAddr::V4(from) = from else { continue };
            stats.bump("dhcp_received");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let outcome = server.handle(Request { payload, local_port: port, src_ip: *from.ip(), src_port: from.port(), now });
            match outcome {
                Outcome::Reply(r) => {
                    tracing::debug!(mac = %r.mac, class = r.class.name(), kind = kind_name(r.kind), dest = ?r.dest, "reply");
                    if r.commit.is_empty() {
                        let _ = send_tx.send(r);
                    } else {
                        committer.submit(Job { leases: r.commit.clone(), then: Some(r) })?;
                    }
                }
                Outcome::Silent { why, commit } => {
                    stats.bump(&format!("dhcp_silent_{}", why.name()));
                    tracing::debug!(from = %from, "no reply: {}", why.name());
                    if !commit.is_empty() {
                        committer.submit(Job { leases: commit, then: None })?;
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
