//! The socket engine: a listening socket on port 69 bound to the interface, and one task with
//! its own UDP socket (its TID) per transfer.

use super::session::{self, Opened, Source};
use super::transfer::Step;
use crate::config::Config;
use crate::timeline::Timelines;
use crate::iface::{Interface, udp_socket};
use crate::stats::Stats;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use netboot_common::wire::TFTP_PORT;

pub struct Service {
    listen: UdpSocket,
    /// What each new transfer starts with (a reload replaces its files and limits).
    ctx: TransferCtx,
}

impl Service {
    pub fn bind(
        iface: &Interface,
        server_ip: Ipv4Addr,
        source: Source,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
    ) -> anyhow::Result<Service> {
        // Many clients: every machine of a storm sends its RRQ at about the same moment.
        let listen = udp_socket(&iface.name, SocketAddr::from((Ipv4Addr::UNSPECIFIED, TFTP_PORT)), true)?;
        Ok(Service { listen, ctx: TransferCtx { source, iface: iface.name.clone(), server_ip, stats, timelines } })
    }

    /// Serves until `shutdown` changes. Each config published on `configs` applies to new
    /// transfers (root, limits); running transfers keep the file and limits they started with.
    pub async fn run(mut self, mut configs: watch::Receiver<Arc<Config>>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        tracing::info!(root = %self.ctx.source.files.root().display(), "TFTP service up (socket engine)");
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
                        session::reconfigure(&mut self.ctx.source, &config);
                    }
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
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
}

impl TransferCtx {
    async fn serve(self, request: &[u8], client: SocketAddr) -> anyhow::Result<()> {
        let SocketAddr::V4(client4) = client else { return Ok(()) };
        let sock = udp_socket(&self.iface, SocketAddr::from((self.server_ip, 0)), false)?;
        sock.connect(client).await?;
        let (mut s, first) = match session::open(&self.source, request, client4, &self.stats, Instant::now()) {
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
            let t = &mut s.transfer;
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
                    s.finish(client4, None, &self.stats, &self.timelines);
                    return Ok(());
                }
                Step::Abort(err, why) => {
                    if let Some(e) = err {
                        let _ = sock.send(&e).await;
                    }
                    s.finish(client4, Some(why), &self.stats, &self.timelines);
                    anyhow::bail!("{}: {why}", s.file);
                }
            }
        }
    }
}
