//! Keeps the reply cache in step with the lease store.
//!
//! Entries are compiled by the DHCP service from its core and installed only after the lease
//! they answer with is durable (invariant 1): at start for reservations and bound leases, and
//! after each commit for the client just served. They are removed when the address may change
//! hands: release, decline, expiry (swept), or another client getting the address.
//!
//! Entries are compiled when a request is handled and installed when its commit is durable;
//! whatever happened to the client in between (a release, a NAK, its address given to another,
//! a reload) makes them stale. Each change bumps the client's generation (a reload bumps every
//! client's), and an install whose generation moved is dropped: the client's next request goes
//! to the agent, which answers from what is true now.

use super::cache::{Presentation, ReplyCache, compile};
use crate::dhcp::DhcpServer;
use crate::dhcp::leases::LeaseState;
use crate::mac::MacAddr;
use netboot_common::cache::{CacheEntry, CacheKey};
use netboot_common::wire::{ClientClass, arch};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// Compiled entries waiting for their lease's commit.
#[derive(Default)]
pub struct Pending {
    pub mac: Option<MacAddr>,
    pub ip: Option<Ipv4Addr>,
    /// Lease expiry (Unix seconds); `None` for a reservation.
    pub expires: Option<u64>,
    pub entries: Vec<(CacheKey, CacheEntry)>,
    /// The client's generation and the reload epoch when the entries were compiled.
    generation: (u64, u64),
}

pub struct CacheSync {
    cache: ReplyCache,
    src_mac: MacAddr,
    /// Per cached client: its address and when its entries stop being valid.
    clients: HashMap<MacAddr, (Ipv4Addr, Option<u64>)>,
    owner: HashMap<Ipv4Addr, MacAddr>,
    /// Per client with compiled entries waiting for a commit: its generation, bumped when its
    /// entries are removed (a compile from before is stale), and how many compiles wait.
    generations: HashMap<MacAddr, (u64, u32)>,
    /// Bumped by every resync (a reload): every compile from before is stale.
    epoch: u64,
    /// Installs dropped because the client changed since its entries were compiled.
    pub stale_installs: u64,
}

impl CacheSync {
    pub fn new(cache: ReplyCache, src_mac: MacAddr) -> CacheSync {
        CacheSync {
            cache,
            src_mac,
            clients: HashMap::new(),
            owner: HashMap::new(),
            generations: HashMap::new(),
            epoch: 0,
            stale_installs: 0,
        }
    }

    /// The presentations worth caching for a client: the one just seen, and the next steps of
    /// a boot chain (iPXE with client id 01:mac; the PXE ROM of a BIOS or UEFI x64 machine).
    /// Behind a relay, the next steps come through the same relay.
    pub fn presentations(mac: MacAddr, seen: Option<Presentation>) -> Vec<Presentation> {
        let mut hw_id = vec![1];
        hw_id.extend_from_slice(&mac.0);
        let relay = seen.as_ref().and_then(|s| s.relay);
        let mut v = vec![
            Presentation { mac, class: ClientClass::Ipxe, arch: None, client_id: Some(hw_id), relay },
            Presentation { mac, class: ClientClass::Pxe, arch: Some(arch::BIOS), client_id: None, relay },
            Presentation { mac, class: ClientClass::Pxe, arch: Some(arch::EFI_X64), client_id: None, relay },
        ];
        if let Some(s) = seen && !v.contains(&s) {
            v.insert(0, s);
        }
        v
    }

    /// Compiles (without installing) the entries of `mac` for `presentations`.
    pub fn prepare(&mut self, server: &DhcpServer, mac: MacAddr, presentations: &[Presentation], now: u64) -> Pending {
        let mut p = Pending { mac: Some(mac), generation: (0, self.epoch), ..Default::default() };
        for who in presentations {
            p.entries.extend(compile(server, who, self.src_mac, now));
        }
        if let Some((_, e)) = p.entries.first() {
            let g = self.generations.entry(mac).or_default();
            g.1 += 1;
            p.generation.0 = g.0;
            let ip = Ipv4Addr::from(e.yiaddr);
            p.ip = Some(ip);
            p.expires = if server.is_reserved(mac) {
                None
            } else {
                server.leases().get(ip).map(|l| l.expires)
            };
        }
        p
    }

    /// Installs entries whose lease is now durable, unless the client changed since they were
    /// compiled.
    pub fn install(&mut self, p: Pending) {
        let (Some(mac), Some(ip)) = (p.mac, p.ip) else { return };
        let generation = self.settle(mac);
        if p.generation != (generation, self.epoch) {
            self.stale_installs += 1;
            return;
        }
        if let Some(prev) = self.owner.get(&ip).copied().filter(|m| *m != mac) {
            self.forget(prev);
        }
        if let Err(e) = self.cache.install(mac, &p.entries) {
            tracing::warn!(%mac, "reply cache install failed: {e}");
            self.forget(mac);
            return;
        }
        self.clients.insert(mac, (ip, p.expires));
        self.owner.insert(ip, mac);
    }

    /// Entries compiled for a commit that failed: never installed.
    pub fn abandon(&mut self, p: Pending) {
        if let (Some(mac), Some(_)) = (p.mac, p.ip) {
            self.settle(mac);
        }
    }

    /// One compile of `mac` is done with; returns the client's generation.
    fn settle(&mut self, mac: MacAddr) -> u64 {
        let Some(g) = self.generations.get_mut(&mac) else { return 0 };
        let generation = g.0;
        g.1 = g.1.saturating_sub(1);
        if g.1 == 0 {
            self.generations.remove(&mac);
        }
        generation
    }

    /// Removes every entry of `mac`; entries compiled for it and not installed yet are stale.
    pub fn forget(&mut self, mac: MacAddr) {
        if let Some(g) = self.generations.get_mut(&mac) {
            g.0 += 1;
        }
        self.cache.forget(mac);
        if let Some((ip, _)) = self.clients.remove(&mac) && self.owner.get(&ip) == Some(&mac) {
            self.owner.remove(&ip);
        }
    }

    /// Before `ip` is given to `mac`: whoever else is cached with it loses its entries.
    pub fn displace(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        if let Some(prev) = self.owner.get(&ip).copied().filter(|m| *m != mac) {
            self.forget(prev);
        }
    }

    /// A kernel ACK renewed `mac`'s lease until `expires`.
    pub fn renewed(&mut self, mac: MacAddr, expires: u64) {
        if let Some((_, e)) = self.clients.get_mut(&mac) && e.is_some() {
            *e = Some(expires);
        }
    }

    /// Removes the entries of leases that expired by `now` (a little early, to be safe).
    pub fn sweep(&mut self, now: u64) -> usize {
        let stale: Vec<MacAddr> =
            self.clients.iter().filter(|(_, (_, e))| e.is_some_and(|t| t <= now + 5)).map(|(m, _)| *m).collect();
        for m in &stale {
            self.forget(*m);
        }
        stale.len()
    }

    /// Compiles and installs the entries of every client whose answer is durable
    /// (reservations and bound leases), and removes the entries of every other client: at
    /// start (then also what an earlier agent left in an adopted map) and after a reload.
    /// Returns how many entries of unknown clients were removed.
    pub fn resync(&mut self, server: &DhcpServer, now: u64) -> usize {
        self.epoch += 1;
        let mut macs: HashSet<MacAddr> = server.params().reservations.keys().copied().collect();
        macs.extend(server.leases().iter().filter(|l| l.state == LeaseState::Bound && l.expires > now).map(|l| l.mac));
        let gone: Vec<MacAddr> = self.clients.keys().filter(|m| !macs.contains(m)).copied().collect();
        for m in gone {
            self.forget(m);
        }
        let mut sorted: Vec<MacAddr> = macs.into_iter().collect();
        sorted.sort();
        for mac in sorted {
            let p = self.prepare(server, mac, &CacheSync::presentations(mac, None), now);
            if p.entries.is_empty() {
                self.forget(mac);
            } else {
                self.install(p);
            }
        }
        self.cache.prune_unknown()
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}
