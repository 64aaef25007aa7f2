//! DHCPv6 bindings: one address per IA_NA of a client (DUID, IAID), at most one binding per
//! address. Allocation hashes the client to a place in the pools and probes from there, so a
//! client gets the same address again and a /64 pool costs no scan.

use crate::config::Pool6;
use crate::mac::MacAddr;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lease6State {
    /// In an ADVERTISE: held for the client a short while.
    Advertised,
    Bound,
    /// DECLINEd by a client (in use by someone else): quarantined until it expires.
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Lease6 {
    #[schema(value_type = String, format = Ipv6)]
    pub ip: Ipv6Addr,
    /// In hex.
    #[serde(serialize_with = "hex")]
    #[schema(value_type = String, pattern = "^([0-9a-f]{2})+$")]
    pub duid: Vec<u8>,
    pub iaid: u32,
    pub mac: Option<MacAddr>,
    pub state: Lease6State,
    /// Unix seconds.
    pub expires: u64,
}

fn hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

impl Lease6 {
    /// Whether the lease still holds its address at `now`.
    pub fn holds(&self, now: u64) -> bool {
        self.expires > now
    }
}

/// Addresses probed for one allocation, at most: a nearly full pool answers "no address" in
/// bounded time.
const MAX_PROBES: u128 = 4096;

#[derive(Debug, Default)]
pub struct Lease6Table {
    by_ip: BTreeMap<Ipv6Addr, Lease6>,
    by_client: HashMap<(Vec<u8>, u32), Ipv6Addr>,
}

impl Lease6Table {
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn get(&self, ip: Ipv6Addr) -> Option<&Lease6> {
        self.by_ip.get(&ip)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease6> {
        self.by_ip.values()
    }

    /// The client's binding for one IA, if it holds one (declined ones are not the client's).
    pub fn of_client(&self, duid: &[u8], iaid: u32, now: u64) -> Option<&Lease6> {
        let ip = self.by_client.get(&(duid.to_vec(), iaid))?;
        self.by_ip.get(ip).filter(|l| l.holds(now) && l.state != Lease6State::Declined && l.duid == duid && l.iaid == iaid)
    }

    /// Whether `ip` may be given to this client: nobody else holds it.
    pub fn is_free_for(&self, ip: Ipv6Addr, duid: &[u8], iaid: u32, now: u64) -> bool {
        self.by_ip.get(&ip).is_none_or(|l| !l.holds(now) || (l.duid == duid && l.iaid == iaid && l.state != Lease6State::Declined))
    }

    /// A free address of `pools` for the client, not one of `reserved`: from the client's hash
    /// place onwards, at most [`MAX_PROBES`] tried.
    pub fn allocate(&self, pools: &[Pool6], duid: &[u8], iaid: u32, now: u64, reserved: impl Fn(Ipv6Addr) -> bool) -> Option<Ipv6Addr> {
        let total: u128 = pools.iter().map(Pool6::len).fold(0, u128::saturating_add);
        if total == 0 {
            return None;
        }
        let start = client_hash(duid, iaid) % total;
        let nth = |mut i: u128| {
            for p in pools {
                if i < p.len() {
                    return Ipv6Addr::from(u128::from(p.start) + i);
                }
                i -= p.len();
            }
            unreachable!("index below the pools' total")
        };
        (0..total.min(MAX_PROBES)).map(|k| nth((start + k) % total)).find(|ip| !reserved(*ip) && self.is_free_for(*ip, duid, iaid, now))
    }

    /// Records `lease`, replacing the client's previous binding for the IA and whatever
    /// expired binding had the address.
    pub fn upsert(&mut self, lease: Lease6) {
        let key = (lease.duid.clone(), lease.iaid);
        if let Some(old) = self.by_client.get(&key).copied()
            && old != lease.ip && self.by_ip.get(&old).is_some_and(|l| l.duid == lease.duid && l.iaid == lease.iaid)
        {
            self.by_ip.remove(&old);
        }
        if let Some(prev) = self.by_ip.get(&lease.ip) && (prev.duid.as_slice(), prev.iaid) != (lease.duid.as_slice(), lease.iaid) {
            self.by_client.remove(&(prev.duid.clone(), prev.iaid));
        }
        self.by_client.insert(key, lease.ip);
        self.by_ip.insert(lease.ip, lease);
    }

    /// Ends the client's binding of `ip` (RELEASE); the released lease, expired at `now`.
    pub fn release(&mut self, ip: Ipv6Addr, duid: &[u8], iaid: u32, now: u64) -> Option<Lease6> {
        let l = self.by_ip.get_mut(&ip).filter(|l| l.duid == duid && l.iaid == iaid && l.state != Lease6State::Declined)?;
        l.expires = now;
        Some(l.clone())
    }

    /// Drops leases that expired before `now`; how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let gone: Vec<Ipv6Addr> = self.by_ip.values().filter(|l| !l.holds(now)).map(|l| l.ip).collect();
        for ip in &gone {
            if let Some(l) = self.by_ip.remove(ip) && self.by_client.get(&(l.duid.clone(), l.iaid)) == Some(ip) {
                self.by_client.remove(&(l.duid, l.iaid));
            }
        }
        gone.len()
    }
}

/// FNV-1a of the DUID and IAID: where in the pools the client's address is looked for first.
fn client_hash(duid: &[u8], iaid: u32) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in duid.iter().chain(&iaid.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool6 {
        s.parse().unwrap()
    }

    fn lease(ip: Ipv6Addr, duid: &[u8], expires: u64) -> Lease6 {
        Lease6 { ip, duid: duid.to_vec(), iaid: 1, mac: None, state: Lease6State::Bound, expires }
    }

    #[test]
    fn allocation_is_stable_probes_past_holders_and_ends_when_full() {
        let pools = [pool("fd00::10-fd00::13")];
        let mut t = Lease6Table::default();
        let reserved = |ip: Ipv6Addr| ip == "fd00::13".parse::<Ipv6Addr>().unwrap();
        let a = t.allocate(&pools, b"client-a", 1, 100, reserved).unwrap();
        assert_eq!(t.allocate(&pools, b"client-a", 1, 100, reserved), Some(a), "same client, same place");
        t.upsert(lease(a, b"client-a", 200));
        for n in 0..2u8 {
            let duid = [b'x', n];
            let ip = t.allocate(&pools, &duid, 1, 100, reserved).unwrap();
            assert!(ip != a && !reserved(ip));
            t.upsert(lease(ip, &duid, 200));
        }
        // Three leased plus one reserved: nothing left for a fifth...
        assert_eq!(t.allocate(&pools, b"late", 1, 100, reserved), None);
        // ...until the leases expire.
        assert!(t.allocate(&pools, b"late", 1, 201, reserved).is_some());
        assert_eq!(t.sweep(201), 3);
        assert!(t.is_empty());
    }

    #[test]
    fn a_new_binding_replaces_the_old_and_release_frees_it() {
        let mut t = Lease6Table::default();
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        t.upsert(lease(a, b"c", 100));
        t.upsert(lease(b, b"c", 100));
        assert!(t.get(a).is_none());
        assert_eq!(t.of_client(b"c", 1, 50).unwrap().ip, b);
        assert!(!t.is_free_for(b, b"other", 1, 50));
        assert!(t.release(b, b"other", 1, 50).is_none(), "only its client releases it");
        assert!(t.release(b, b"c", 1, 50).is_some());
        assert!(t.is_free_for(b, b"other", 1, 50));
        assert!(t.of_client(b"c", 1, 50).is_none());
    }

    #[test]
    fn a_huge_pool_allocates_without_a_scan() {
        let pools = [pool("fd00::-fd00::ffff:ffff:ffff:ffff")];
        let t = Lease6Table::default();
        let ip = t.allocate(&pools, b"c", 7, 0, |_| false).unwrap();
        assert!(pools[0].contains(ip));
    }
}
