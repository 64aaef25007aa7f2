//! The DHCPv6 reply compiler and the `REPLY_CACHE6` map (`netboot_common::cache6`).
//!
//! An entry is the frame the agent just sent for a client's SOLICIT or REQUEST, with
//! transaction id 0, and what the program must check before it answers that client's next
//! one with it. Compiled only from replies the core marks [`Cacheable6`] (a host's fixed
//! address, whose binding is durable before the reply leaves: invariant 1).

use crate::dhcp6::server::{CLIENT_PORT, Cacheable6, Reply6, SERVER_PORT};
use crate::frame::Udp6Envelope;
use crate::mac::MacAddr;
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use netboot_common::cache::NEVER;
use netboot_common::cache6::{Cache6Entry, Cache6Key, DUID_MAX, TEMPLATE6_MAX};
use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;

/// Hop limit of the replies (what Linux sends to a link-local unicast address).
pub const HOP_LIMIT: u8 = 64;

/// The frame a reply goes out in from `server_mac`/`server_ll` to its client on the link.
pub fn reply_frame(r: &Reply6, client_mac: MacAddr, server_mac: MacAddr, server_ll: Ipv6Addr) -> Vec<u8> {
    Udp6Envelope { src_mac: server_mac, dst_mac: client_mac, src_ip: server_ll, dst_ip: r.to, src_port: SERVER_PORT, dst_port: CLIENT_PORT, hop_limit: HOP_LIMIT }
        .build(&r.payload)
}

/// The entry for the reply `r` (marked `c` by the core), or `None` if it does not fit one.
pub fn compile6(r: &Reply6, c: &Cacheable6, server_mac: MacAddr, server_ll: Ipv6Addr, server_duid: &[u8]) -> Option<(Cache6Key, Cache6Entry)> {
    let mac = r.mac?;
    if r.port != CLIENT_PORT || r.payload.len() < 4 || c.client_id.len() > DUID_MAX || server_duid.len() > DUID_MAX {
        return None;
    }
    let mut template = r.clone();
    template.payload[1..4].fill(0); // the transaction id is the request's
    let frame = reply_frame(&template, mac, server_mac, server_ll);
    if frame.len() > TEMPLATE6_MAX {
        return None;
    }
    let mut e = Cache6Entry {
        not_after_ns: NEVER,
        len: frame.len() as u16,
        client_id_len: c.client_id.len() as u8,
        server_id_len: server_duid.len() as u8,
        iaid: c.iaid.to_be_bytes(),
        enterprise: c.enterprise.to_be_bytes(),
        _pad: [0; 4],
        peer: r.to.octets(),
        ip: c.ip.octets(),
        client_id: [0; DUID_MAX],
        server_id: [0; DUID_MAX],
        frame: [0; TEMPLATE6_MAX],
    };
    e.client_id[..c.client_id.len()].copy_from_slice(&c.client_id);
    e.server_id[..server_duid.len()].copy_from_slice(server_duid);
    e.frame[..frame.len()].copy_from_slice(&frame);
    Some((Cache6Key::new(mac.0, r.class, c.kind, r.arch), e))
}

/// The `REPLY_CACHE6` map, with the keys installed per client.
pub struct ReplyCache6 {
    map: BpfHashMap<MapData, Cache6Key, Cache6Entry>,
    by_mac: HashMap<MacAddr, HashSet<Cache6Key>>,
}

impl ReplyCache6 {
    pub fn new(map: Map) -> anyhow::Result<ReplyCache6> {
        Ok(ReplyCache6 { map: BpfHashMap::try_from(map)?, by_mac: HashMap::new() })
    }

    pub fn install(&mut self, key: Cache6Key, entry: &Cache6Entry) -> anyhow::Result<()> {
        self.map.insert(key, entry, 0)?;
        self.by_mac.entry(MacAddr(key.mac)).or_default().insert(key);
        Ok(())
    }

    /// Removes every entry of `mac` (its bindings changed by a message the agent answered).
    pub fn forget(&mut self, mac: MacAddr) {
        for k in self.by_mac.remove(&mac).unwrap_or_default() {
            let _ = self.map.remove(&k);
        }
    }

    /// Removes every entry (a reload may have changed any reply).
    pub fn clear(&mut self) {
        let keys: Vec<Cache6Key> = self.map.keys().filter_map(Result::ok).collect();
        for k in &keys {
            let _ = self.map.remove(k);
        }
        self.by_mac.clear();
    }

    pub fn clients(&self) -> usize {
        self.by_mac.len()
    }
}
