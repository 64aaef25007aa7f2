//! The DHCPv6 service of the agent: UDP port 547 on the boot interface (ff02::1:2 joined),
//! each request through the [`Dhcp6Server`] core, its bindings written to the lease store,
//! then the reply to the client's link-local address (port 546) or to the relay (port 547).
//! Group commit: the datagrams already queued when one arrives (up to [`BATCH`]) are answered
//! together, their bindings written in one transaction before any reply of the batch leaves.

use crate::dhcp6::identity::server_duid;
use crate::dhcp6::server::{Dhcp6Server, Params6, Reply6, Request6, SERVER_PORT};
use crate::config::Config;
use crate::published::Follower;
use crate::store::db::ProvisionDb;
use crate::iface::{Interface, udp_socket};
use crate::stats::Stats;
use crate::fastpath::cache6::{ReplyCache6, compile6};
use crate::mac::MacAddr;
use crate::timeline::{Milestone, Path, Timelines};
use crate::dhcp6::leases::Lease6;
use aya::maps::{MapData, RingBuf};
use netboot_common::cache6::{REQUEST, Reply6Event, SOLICIT};
use tokio::io::unix::AsyncFd;
use anyhow::Context;
use dhcproto::v6::MessageType;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Datagrams answered with one store transaction, at most.
const BATCH: usize = 256;

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
    /// The reply cache this service fills (the kernel's half of DHCPv6).
    cache: Option<CacheLink>,
    /// The REPLYs the program sent from it (taken by [`Service6::run`]).
    events: Option<RingBuf<MapData>>,
}

/// Where compiled replies go, and what their frames leave from.
pub struct CacheLink {
    pub cache: ReplyCache6,
    pub server_mac: MacAddr,
    /// Our link-local address: the source of replies on the link.
    pub server_ll: Ipv6Addr,
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
        let stored = crate::store::leases6::load(&store, crate::serve::dhcp::unix_now()).await.context("cannot read the DHCPv6 bindings of the lease store")?;
        stats.add("dhcp6_leases_loaded", stored.len() as u64);
        server.restore(stored);
        tracing::info!(server = %server_ip, prefix = ?config.dhcp6.prefix(), leases = server.leases().len(), "DHCPv6 service up");
        Ok(Service6 { sock, server, ifindex: iface.index, duid, store, stats, timelines, discovery: None, cache: None, events: None })
    }

    /// Records every machine that asks (see [`crate::provision::discovery`]).
    pub fn with_discovery(mut self, discovery: Arc<crate::provision::discovery::Discovery>) -> Service6 {
        self.discovery = Some(discovery);
        self
    }

    /// Lets the XDP program answer known clients from the replies this service sends them
    /// (compiled into `link`), and reads the REPLYs it sent from `events`.
    pub fn with_fast_path(mut self, link: CacheLink, events: RingBuf<MapData>) -> Service6 {
        self.cache = Some(link);
        self.events = Some(events);
        self
    }

    /// Answers until `shutdown` changes; a reload brings new pools, hosts and boot files
    /// (`[dhcp6] enabled = false` silences it).
    pub async fn run(mut self, mut configs: Follower, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65536];
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let mut enabled = configs.current().dhcp6.enabled;
        // Safety: the ring's fd lives as long as the AsyncFd that owns the RingBuf.
        #[allow(clippy::result_large_err)] // the error gives the ring back; dropped at once
        let mut events = match self.events.take().map(|ring| unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }) {
            Some(Ok(events)) => Some(events),
            Some(Err(e)) => {
                tracing::warn!("DHCPv6 fast path off: its event ring cannot be polled: {e}");
                self.cache = None;
                None
            }
            None => None,
        };
        loop {
            tokio::select! {
                r = async { events.as_mut().expect("guarded").readable_mut().await }, if events.is_some() => {
                    let Ok(mut guard) = r else { continue };
                    let replies: Vec<Reply6Event> = crate::fastpath::drain(guard.get_inner_mut());
                    guard.clear_ready();
                    self.record_kernel_replies(replies).await;
                }
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        // This one, and whatever else is queued (BATCH datagrams at most,
                        // answered or not: a flood of silent ones must not hold the loop): one
                        // commit for them all.
                        let (mut replies, mut read) = (Vec::new(), 0);
                        let mut got = Some((n, from));
                        while let Some((n, from)) = got {
                            if let SocketAddr::V6(from) = from && let Some(r) = self.answer(&buf[..n], *from.ip(), enabled) {
                                replies.push(r);
                            }
                            read += 1;
                            got = if read < BATCH { self.sock.try_recv_from(&mut buf).ok() } else { None };
                        }
                        self.commit_and_send(replies).await;
                    }
                    Err(e) => tracing::debug!("DHCPv6 recv: {e}"),
                },
                r = configs.changed() => {
                    let Some(cfg) = r else { return };
                    enabled = cfg.dhcp6.enabled;
                    // Hosts, boot files or lifetimes may have changed: every cached reply may.
                    if let Some(link) = &mut self.cache {
                        link.cache.clear();
                    }
                    let ip = self.server.params().server_ip;
                    self.server.set_params(Params6::from_config(&cfg, cfg.server.address6.as_ref().map_or(ip, |a| *a.get_ref()), self.duid.clone()));
                    configs.applied();
                }
                _ = sweep.tick() => {
                    let now = crate::serve::dhcp::unix_now();
                    self.server.sweep(now);
                    if let Err(e) = crate::store::leases6::forget_expired(&self.store, now).await {
                        tracing::warn!("DHCPv6: expired bindings not deleted from the store: {e:#}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The core's answer to one datagram (counted, its sightings reported), if it gets one.
    fn answer(&mut self, payload: &[u8], src: Ipv6Addr, enabled: bool) -> Option<(Reply6, Option<u8>)> {
        self.stats.bump("dhcp6_received");
        if !enabled {
            self.stats.bump("dhcp6_silent_disabled");
            return None;
        }
        let outcome = self.server.handle(&Request6 { payload, src, now: crate::serve::dhcp::unix_now() });
        let seen = self.server.take_sightings();
        if let Some(d) = &self.discovery {
            d.observe(seen);
        }
        match outcome {
            Ok(r) => Some((r, payload.first().copied())),
            Err(why) => {
                self.stats.bump(why.counter());
                None
            }
        }
    }

    /// Writes the bindings of a batch of replies in one transaction, then sends them (each
    /// with the request's message type, for the reply cache).
    async fn commit_and_send(&mut self, replies: Vec<(Reply6, Option<u8>)>) {
        // Invariant 1: nothing leaves that the store does not hold — but an ADVERTISE binds
        // nothing (RFC 8415 §18.3.1: the REQUEST that follows commits), so its hold stays in
        // memory: a flood of invented DUIDs costs no disk write per datagram.
        // Each reply with whether it needed a binding stored, in arrival order.
        let mut durable = Vec::new();
        let replies: Vec<(Reply6, Option<u8>, bool)> = replies
            .into_iter()
            .map(|(r, kind)| {
                let leases = r.durable_leases();
                let binds = !leases.is_empty();
                durable.extend(leases);
                (r, kind, binds)
            })
            .collect();
        let mut stored = true;
        if !durable.is_empty() {
            self.stats.bump("dhcp6_commits");
            if let Err(e) = crate::store::leases6::commit(&self.store, durable).await {
                let dropped = replies.iter().filter(|(_, _, binds)| *binds).count();
                self.stats.add("dhcp6_dropped_commit_failed", dropped as u64);
                tracing::warn!(dropped, "DHCPv6 replies dropped: their bindings could not be stored: {e:#}");
                stored = false; // those that needed nothing stored still go
            }
        }
        for (r, kind, binds) in replies {
            if stored || !binds {
                self.send_and_cache(r, kind).await;
            }
        }
    }

    async fn send_and_cache(&mut self, reply: Reply6, kind: Option<u8>) {
        self.send(&reply, Path::Agent).await;
        if let (Some(link), Some(mac)) = (&mut self.cache, reply.mac) {
            match &reply.cacheable {
                // The next such request of this client can be the kernel's.
                Some(c) => match compile6(&reply, c, link.server_mac, link.server_ll, &self.duid) {
                    Some((key, entry)) => {
                        if let Err(e) = link.cache.install(key, &entry) {
                            tracing::warn!(%mac, "DHCPv6 reply cache: {e:#}");
                        }
                    }
                    None => self.stats.bump("dhcp6_not_cached_too_large"),
                },
                // Another message of the client (RENEW, RELEASE, DECLINE...) may change what
                // it should be told: its cached replies go.
                None if !matches!(kind, Some(SOLICIT | REQUEST)) => link.cache.forget(mac),
                None => {}
            }
        }
    }

    /// The REPLYs the kernel sent from the cache: their bindings written as the agent's own.
    async fn record_kernel_replies(&mut self, replies: Vec<Reply6Event>) {
        if replies.is_empty() {
            return;
        }
        let now = crate::serve::dhcp::unix_now();
        self.stats.add("dhcp6_kernel_replies_recorded", replies.len() as u64);
        let leases: Vec<Lease6> = replies
            .iter()
            .map(|ev| {
                let duid = ev.client_id[..usize::from(ev.client_id_len).min(ev.client_id.len())].to_vec();
                self.server.bound_by_kernel(Ipv6Addr::from(ev.ip), duid, u32::from_be_bytes(ev.iaid), MacAddr(ev.mac), now)
            })
            .collect();
        if let Err(e) = crate::store::leases6::commit(&self.store, leases).await {
            // The address is the host's fixed one: nobody else can be given it meanwhile.
            self.stats.bump("dhcp6_kernel_replies_not_stored");
            tracing::warn!("DHCPv6: bindings of kernel REPLYs not stored: {e:#}");
        }
        for ev in replies {
            let class = netboot_common::wire::ClientClass::from_u8(ev.class);
            let arch = ev.arch1.checked_sub(1).map(u16::from);
            self.timelines.record(MacAddr(ev.mac), Milestone::Dhcp6 { kind: "reply", class: class.name(), arch, ip: Some(Ipv6Addr::from(ev.ip)), path: Path::Kernel });
        }
    }

    async fn send(&self, r: &Reply6, path: Path) {
        // A link-local destination needs the interface as its scope.
        let scope = if r.to.is_unicast_link_local() { self.ifindex } else { 0 };
        let kind = if r.kind == MessageType::Advertise { "advertise" } else { "reply" };
        match self.sock.send_to(&r.payload, SocketAddrV6::new(r.to, r.port, 0, scope)).await {
            Ok(_) => {
                self.stats.bump(&format!("dhcp6_sent_{kind}"));
                if let Some(mac) = r.mac {
                    self.timelines.record(mac, Milestone::Dhcp6 { kind, class: r.class.name(), arch: r.arch, ip: r.address(), path });
                }
            }
            Err(e) => {
                self.stats.bump("dhcp6_send_errors");
                tracing::warn!(to = %r.to, "sending DHCPv6 {kind}: {e}");
            }
        }
    }
}
