//! The reply compiler and the reply-cache map.
//!
//! The compiler asks the DHCP core what it would answer a client (the core's
//! [`DhcpServer::cached_replies`]) and turns the two replies into cache entries: the frame the
//! agent would send for a request with xid 0 and flags 0, plus what the XDP program must check
//! before sending it. Entries are installed only for clients whose address is durable
//! (invariant 1): reservations, and leases after their commit.

use crate::dhcp::{CachedReplies, DhcpServer, Reply};
use crate::mac::MacAddr;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netboot_common::cache::{CLIENT_ID_MAX, CacheEntry, CacheKey, KIND_ACK, KIND_OFFER, NEVER, TEMPLATE_MAX, off};
use netboot_common::wire::ClientClass;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// What identifies the replies of one client as the kernel sees its requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Presentation {
    pub mac: MacAddr,
    pub class: ClientClass,
    /// Option 93 (PXE clients only).
    pub arch: Option<u16>,
    pub client_id: Option<Vec<u8>>,
    /// The relay the requests come through (giaddr and the relay's MAC), if any.
    pub relay: Option<(Ipv4Addr, MacAddr)>,
}

impl Presentation {
    fn key(&self, kind: u8) -> CacheKey {
        CacheKey::new(self.mac.0, self.class, kind, self.arch, self.relay.map_or([0; 4], |(ip, _)| ip.octets()))
    }
}

/// Compiles the OFFER and ACK entries of a client, or nothing when its answer is not fixed or
/// does not fit an entry.
pub fn compile(
    server: &DhcpServer,
    who: &Presentation,
    src_mac: MacAddr,
    now: u64,
) -> Vec<(CacheKey, CacheEntry)> {
    let Some(CachedReplies { ip, offer, ack }) =
        server.cached_replies(who.mac, who.class, who.arch, who.client_id.as_deref(), who.relay.map(|r| r.0), now)
    else {
        return Vec::new();
    };
    let server_ip = server.params().server_ip;
    let not_after_ns = match server.kernel_deadline(who.mac, ip) {
        None => NEVER,
        Some(t) if t > now => monotonic_ns().saturating_add((t - now).saturating_mul(1_000_000_000)),
        Some(_) => return Vec::new(), // the store does not cover a kernel answer now
    };
    [(KIND_OFFER, offer), (KIND_ACK, ack)]
        .into_iter()
        .filter_map(|(kind, reply)| Some((who.key(kind), entry(&reply, who, ip, src_mac, server_ip, not_after_ns)?)))
        .collect()
}

/// CLOCK_MONOTONIC in nanoseconds: the XDP program's clock (`bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn entry(
    reply: &Reply,
    who: &Presentation,
    ip: Ipv4Addr,
    src_mac: MacAddr,
    server_ip: Ipv4Addr,
    not_after_ns: u64,
) -> Option<CacheEntry> {
    let frame = reply.frame(src_mac, server_ip, who.relay.map(|r| r.1))?;
    let cid = who.client_id.as_deref().unwrap_or_default();
    if frame.len() > TEMPLATE_MAX || cid.len() > CLIENT_ID_MAX || frame.len() < off::BOOTP + 300 {
        return None;
    }
    let mut e = CacheEntry {
        not_after_ns,
        len: frame.len() as u16,
        client_id_len: cid.len() as u8,
        _pad: 0,
        yiaddr: ip.octets(),
        server_ip: server_ip.octets(),
        client_id: [0; CLIENT_ID_MAX],
        frame: [0; TEMPLATE_MAX],
    };
    e.client_id[..cid.len()].copy_from_slice(cid);
    e.frame[..frame.len()].copy_from_slice(&frame);
    Some(e)
}

/// The `REPLY_CACHE` map, with the keys installed per client so that a client's entries can be
/// removed when its address changes hands.
pub struct ReplyCache {
    map: BpfHashMap<MapData, CacheKey, CacheEntry>,
    by_mac: HashMap<MacAddr, HashSet<CacheKey>>,
}

impl ReplyCache {
    pub fn new(map: Map) -> anyhow::Result<ReplyCache> {
        Ok(ReplyCache { map: BpfHashMap::try_from(map)?, by_mac: HashMap::new() })
    }

    /// Makes `entries` the entries of `mac`: new ones are written first, then the keys it had
    /// before and no longer has are removed, so that a lookup never misses in between.
    pub fn install(&mut self, mac: MacAddr, entries: &[(CacheKey, CacheEntry)]) -> anyhow::Result<()> {
        let keys = self.by_mac.entry(mac).or_default();
        let before = std::mem::take(keys);
        for (k, e) in entries {
            self.map.insert(k, e, 0)?;
            keys.insert(*k);
        }
        for k in before.difference(keys) {
            let _ = self.map.remove(k);
        }
        Ok(())
    }

    /// Removes every entry of `mac`.
    pub fn forget(&mut self, mac: MacAddr) {
        for k in self.by_mac.remove(&mac).unwrap_or_default() {
            let _ = self.map.remove(&k);
        }
    }

    pub fn clients(&self) -> usize {
        self.by_mac.len()
    }

    /// Removes the entries this process did not install (left in an adopted map by an agent
    /// that died). Returns how many.
    pub fn prune_unknown(&mut self) -> usize {
        let known: HashSet<CacheKey> = self.by_mac.values().flatten().copied().collect();
        let stale: Vec<CacheKey> = self.map.keys().filter_map(Result::ok).filter(|k| !known.contains(k)).collect();
        for k in &stale {
            let _ = self.map.remove(k);
        }
        stale.len()
    }
}
