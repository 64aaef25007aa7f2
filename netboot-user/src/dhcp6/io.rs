//! The DHCPv6 service of the agent: UDP port 547 on the boot interface (ff02::1:2 joined),
//! each request through the [`Dhcp6Server`] core, its bindings written to the lease store,
//! then the reply to the client's link-local address (port 546) or to the relay (port 547).
//! Requests are handled one at a time, each commit awaited: firmware asks a few times per
//! boot, not at the rate of a DHCPv4 storm (no group commit here yet).

use super::identity::server_duid;
use super::server::{Dhcp6Server, Params6, Reply6, Request6, SERVER_PORT};
use crate::config::Config;
use crate::provision::db::ProvisionDb;
use crate::iface::{Interface, udp_socket};
use crate::stats::Stats;
use crate::timeline::{Milestone, Timelines};
use anyhow::Context;
use dhcproto::v6::MessageType;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_AGENTS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

pub struct Service6 {
    sock: UdpSocket,
    server: Dhcp6Server,
    ifindex: u32,
    duid: Vec<u8>,
    store: ProvisionDb,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
    discovery: Option<Arc<crate::provision::discovery::Discovery>>,
}

impl Service6 {
    /// Port 547 on `iface`, serving from `server_ip` with the config's `[dhcp6]`.
    /// The bindings in `store` that have not expired are taken over.
    pub async fn bind(
        iface: &Interface,
        config: &Config,
        server_ip: Ipv6Addr,
        store: ProvisionDb,
        stats: Arc<Stats>,
        timelines: Arc<Timelines>,
    ) -> anyhow::Result<Service6> {
        let sock = udp_socket(&iface.name, SocketAddr::from((Ipv6Addr::UNSPECIFIED, SERVER_PORT)), true)
            .context("DHCPv6 port 547 (another DHCPv6 server running?)")?;
        socket2::SockRef::from(&sock).join_multicast_v6(&ALL_DHCP_AGENTS, iface.index).context("joining ff02::1:2")?;
        let duid = server_duid(iface.mac);
        let mut server = Dhcp6Server::new(Params6::from_config(config, server_ip, duid.clone()));
        let stored = super::store::load(&store, crate::dhcp::io::unix_now()).await.context("cannot read the DHCPv6 bindings of the lease store")?;
        stats.add("dhcp6_leases_loaded", stored.len() as u64);
        server.restore(stored);
        tracing::info!(server = %server_ip, prefix = ?config.dhcp6.prefix(), leases = server.leases().len(), "DHCPv6 service up");
        Ok(Service6 { sock, server, ifindex: iface.index, duid, store, stats, timelines, discovery: None })
    }

    /// Records every machine that asks (see [`crate::provision::discovery`]).
    pub fn with_discovery(mut self, discovery: Arc<crate::provision::discovery::Discovery>) -> Service6 {
        self.discovery = Some(discovery);
        self
    }

    /// Answers until `shutdown` changes; a reload brings new pools, hosts and boot files
    /// (`[dhcp6] enabled = false` silences it).
    pub async fn run(mut self, mut configs: watch::Receiver<Arc<Config>>, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65536];
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let mut enabled = configs.borrow().dhcp6.enabled;
        loop {
            tokio::select! {
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, SocketAddr::V6(from))) => self.answer(&buf[..n], *from.ip(), enabled).await,
                    Ok(_) => {}
                    Err(e) => tracing::debug!("DHCPv6 recv: {e}"),
                },
                r = configs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let cfg = configs.borrow_and_update().clone();
                    enabled = cfg.dhcp6.enabled;
                    let ip = self.server.params().server_ip;
                    self.server.set_params(Params6::from_config(&cfg, cfg.server.address6.as_ref().map_or(ip, |a| *a.get_ref()), self.duid.clone()));
                }
                _ = sweep.tick() => {
                    let now = crate::dhcp::io::unix_now();
                    self.server.sweep(now);
                    if let Err(e) = super::store::forget_expired(&self.store, now).await {
                        tracing::warn!("DHCPv6: expired bindings not deleted from the store: {e:#}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn answer(&mut self, payload: &[u8], src: Ipv6Addr, enabled: bool) {
        self.stats.bump("dhcp6_received");
        if !enabled {
            self.stats.bump("dhcp6_silent_disabled");
            return;
        }
        let outcome = self.server.handle(&Request6 { payload, src, now: crate::dhcp::io::unix_now() });
        let seen = self.server.take_sightings();
        if let Some(d) = &self.discovery {
            d.observe(seen);
        }
        let reply = match outcome {
            Ok(r) => r,
            Err(why) => {
                self.stats.bump(why.counter());
                return;
            }
        };
        // Invariant 1: nothing leaves that the store does not hold.
        if !reply.leases.is_empty() {
            if let Err(e) = super::store::commit(&self.store, reply.leases.clone()).await {
                self.stats.bump("dhcp6_dropped_commit_failed");
                tracing::warn!(mac = ?reply.mac, "DHCPv6 reply dropped: its bindings could not be stored: {e:#}");
                return;
            }
        }
        self.send(&reply).await;
    }

    async fn send(&self, r: &Reply6) {
        // A link-local destination needs the interface as its scope.
        let scope = if r.to.is_unicast_link_local() { self.ifindex } else { 0 };
        let kind = if r.kind == MessageType::Advertise { "advertise" } else { "reply" };
        match self.sock.send_to(&r.payload, SocketAddrV6::new(r.to, r.port, 0, scope)).await {
            Ok(_) => {
                self.stats.bump(&format!("dhcp6_sent_{kind}"));
                if let Some(mac) = r.mac {
                    self.timelines.record(mac, Milestone::Dhcp6 { kind, class: r.class.name(), arch: r.arch, ip: r.address() });
                }
            }
            Err(e) => {
                self.stats.bump("dhcp6_send_errors");
                tracing::warn!(to = %r.to, "sending DHCPv6 {kind}: {e}");
            }
        }
    }
}
