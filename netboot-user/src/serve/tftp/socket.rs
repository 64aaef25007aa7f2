//! The socket engine: a listening socket on port 69 bound to the interface, and one task with
//! its own UDP socket (its TID) per transfer.

use crate::tftp::session::{self, Opened, Source};
use crate::tftp::transfer::Step;
use crate::published::Follower;
use crate::timeline::Timelines;
use crate::iface::{Interface, udp_socket};
use crate::stats::Stats;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use netboot_common::wire::TFTP_PORT;

pub struct Service {
    listen: UdpSocket,
    /// Port 69 over IPv6, when the agent serves DHCPv6.
    listen6: Option<UdpSocket>,
    /// What each new transfer starts with (a reload replaces its files and limits).
    ctx: TransferCtx,
}

impl Service {
    pub fn bind(
        iface: &Interface,
        server_ip: Ipv4Addr,
        server_ip6: Option<Ipv6Addr>,
        source: Source,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
    ) -> anyhow::Result<Service> {
        // Many clients: every machine of a storm sends its RRQ at about the same moment.
        let listen = udp_socket(&iface.name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, TFTP_PORT)), true)?;
        let listen6 = match server_ip6 {
            Some(_) => Some(udp_socket(&iface.name, SocketAddr::from((Ipv6Addr::UNSPECIFIED, TFTP_PORT)), true)?),
            None => None,
        };
        Ok(Service { listen, listen6, ctx: TransferCtx { source, iface: iface.name.clone(), server_ip, server_ip6, stats, timelines } })
    }

    /// Serves until `shutdown` changes. Each config published on `configs` applies to new
    /// transfers (root, limits); running transfers keep the file and limits they started with.
    pub async fn run(mut self, mut configs: Follower, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(root = %self.ctx.source.files.root().display(), "TFTP service up (socket engine)");
        let mut buf = vec![0u8; 2048];
        let mut buf6 = vec![0u8; 2048];
        loop {
            let (n, from, buf) = tokio::select! {
                r = self.listen.recv_from(&mut buf) => match r {
                    Ok((n, from)) => (n, from, &buf),
                    Err(e) => { tracing::warn!("tftp recv: {e}"); continue; }
                },
                r = async { self.listen6.as_ref().expect("guarded").recv_from(&mut buf6).await }, if self.listen6.is_some() => match r {
                    Ok((n, from)) => (n, from, &buf6),
                    Err(e) => { tracing::warn!("tftp recv: {e}"); continue; }
                },
                Some(config) = configs.changed() => {
                    session::reconfigure(&mut self.ctx.source, &config);
                    configs.applied();
                    continue;
                },
                _ = shutdown.changed() => return Ok(()),
            };
            let request = buf[..n].to_vec();
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = ctx.serve(&request, from).await {
                    tracing::debug!(%from, "tftp transfer: {e:#}");
                }
            });
        }
    }
}

#[derive(Clone)]
struct TransferCtx {
    source: Source,
    iface: String,
    server_ip: Ipv4Addr,
    server_ip6: Option<Ipv6Addr>,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
}

impl TransferCtx {
    async fn serve(self, request: &[u8], client: SocketAddr) -> anyhow::Result<()> {
        let local: IpAddr = match (client, self.server_ip6) {
            (SocketAddr::V4(_), _) => self.server_ip.into(),
            (SocketAddr::V6(_), Some(ip6)) => ip6.into(),
            (SocketAddr::V6(_), None) => return Ok(()),
        };
        // A link-local client is answered from our link-local address (the kernel picks it).
        let local = match client {
            SocketAddr::V6(c) if c.ip().is_unicast_link_local() => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => local,
        };
        let sock = udp_socket(&self.iface, SocketAddr::new(local, 0), false)?;
        sock.connect(client).await?;
        let (mut s, first) = match session::open(&self.source, request, client, &self.stats, Instant::now()) {
            Opened::Transfer(s, first) => (s, first),
            Opened::Refused(error) => {
                sock.send(&error).await?;
                return Ok(());
            }
            Opened::Ignored => return Ok(()),
        };
        for p in first {
            sock.send(&p).await?;
        }
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = s.transfer.deadline();
            let step = tokio::select! {
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => s.on_packet(&buf[..n], client.ip(), Instant::now(), &self.stats),
                    Err(_) => Step::Wait, // ICMP unreachable from an earlier send: keep the timer
                },
                _ = tokio::time::sleep_until(deadline.into()) => s.on_timeout(Instant::now()),
            };
            match step {
                Step::Send(pkts) => {
                    for p in pkts {
                        sock.send(&p).await?;
                    }
                }
                Step::Wait => {}
                Step::Done => {
                    s.finish(client, None, &self.stats, &self.timelines);
                    return Ok(());
                }
                Step::Abort(err, why) => {
                    if let Some(e) = err {
                        let _ = sock.send(&e).await;
                    }
                    s.finish(client, Some(why), &self.stats, &self.timelines);
                    anyhow::bail!("{}: {why}", s.file);
                }
            }
        }
    }
}
