//! The in-memory lease table: who has which address until when, and address allocation from
//! the dynamic pools. The durable copy lives in a [`super::store::LeaseStore`]; this table is
//! rebuilt from it at start.

use crate::config::Pool;
use crate::mac::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The identity a lease is bound to: the client identifier (option 61) when it is not just the
/// hardware address, else the MAC. Canonicalizing `61 = 01:<chaddr>` to the MAC keeps one
/// address across the boot chain (EDK2 PXE sends no 61, iPXE and udhcpc send 01:<mac>).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientKey(pub Vec<u8>);

impl ClientKey {
    pub fn new(mac: MacAddr, client_id: Option<&[u8]>) -> ClientKey {
        match client_id {
            Some(id) if !(id.is_empty() || id.len() == 7 && id[0] == 1 && id[1..] == mac.0) => {
                let mut k = vec![0xff];
                k.extend_from_slice(id);
                ClientKey(k)
            }
            _ => ClientKey(mac.0.to_vec()),
        }
    }

    /// Hex form for storage and display: the MAC, or `id:` and the client identifier.
    pub fn to_text(&self) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
        match self.0.first() {
            Some(0xff) => format!("id:{}", hex(&self.0[1..])),
            _ => hex(&self.0),
        }
    }

    pub fn from_text(s: &str) -> Option<ClientKey> {
        let (prefix, hex) = match s.strip_prefix("id:") {
            Some(h) => (Some(0xffu8), h),
            None => (None, s),
        };
        let mut v: Vec<u8> = prefix.into_iter().collect();
        if !hex.is_empty() {
            for p in hex.split(':') {
                v.push(u8::from_str_radix(p, 16).ok()?);
            }
        }
        Some(ClientKey(v))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered, held for the client until `expires` (a short hold).
    Offered,
    /// Acknowledged.
    Bound,
    /// Given back by DHCPRELEASE: free.
    Released,
    /// Reported in use by someone else (DHCPDECLINE): quarantined until `expires`.
    Declined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseState> {
        Some(match s {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            _ => return None,
        })
    }
}

/// One address's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub client: ClientKey,
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub state: LeaseState,
    /// Unix seconds.
    pub expires: u64,
}

impl Lease {
    /// Whether the lease keeps its address from being given to another client at `now`.
    pub fn holds(&self, now: u64) -> bool {
        self.state != LeaseState::Released && self.expires > now
    }

    /// The lease as `/api/v1/leases` and `netboot-xdp leases --json` show it.
    /// The lease as the API shows it at `now`.
    pub fn view(&self, now: u64) -> LeaseView {
        LeaseView {
            active: self.holds(now),
            client: self.client.to_text(),
            expires: self.expires,
            hostname: self.hostname.clone(),
            ip: self.ip,
            mac: self.mac,
            state: self.state.as_str(),
        }
    }

    pub fn to_json(&self, now: u64) -> serde_json::Value {
        serde_json::to_value(self.view(now)).unwrap_or_default()
    }
}

/// A lease as the API shows it (`/api/v1/leases`, `netboot-xdp leases --json`); the fields in
/// the order they have always been written.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Lease)]
pub struct LeaseView {
    /// It holds its address now (not expired).
    pub active: bool,
    /// The client identifier (option 61) in hex, or the MAC.
    pub client: String,
    /// Unix seconds.
    pub expires: u64,
    pub hostname: Option<String>,
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// `offered`, `bound`, `released` or `declined`.
    pub state: &'static str,
}

/// Renewals the kernel answered that the store does not have yet (they end within the renewal
/// slack of the stored expiry; `DhcpServer::record_kernel_ack`), shared with the HTTP API so
/// that `/api/v1/leases` shows the expiry the client was given.
#[derive(Debug, Default)]
pub struct UnwrittenRenewals(std::sync::Mutex<HashMap<Ipv4Addr, (MacAddr, u64)>>);

impl UnwrittenRenewals {
    pub fn record(&self, lease: &Lease) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(lease.ip, (lease.mac, lease.expires));
    }

    /// Moves the expiry of each stored bound lease to its later unwritten renewal (same MAC).
    pub fn overlay(&self, leases: &mut [Lease]) {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for l in leases.iter_mut().filter(|l| l.state == LeaseState::Bound) {
            if let Some(&(mac, expires)) = m.get(&l.ip) && mac == l.mac && expires > l.expires {
                l.expires = expires;
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    pools: Vec<Pool>,
    /// Addresses never handed out dynamically: reservations, our own, the router's.
    excluded: HashSet<Ipv4Addr>,
    /// Next-fit allocation cursor: (pool index, offset in pool).
    cursor: (usize, u32),
    /// Set by a scan that found the pools full: the earliest time a held address expires.
    /// Until then (or until an address is released) allocation answers at once, not with
    /// another scan of every address per DISCOVER.
    full_until: Option<u64>,
}

impl LeaseTable {
    pub fn new(pools: Vec<Pool>, excluded: HashSet<Ipv4Addr>) -> LeaseTable {
        LeaseTable { pools, excluded, ..Default::default() }
    }

    /// Loads stored leases (the last record per address wins).
    pub fn load(&mut self, leases: impl IntoIterator<Item = Lease>) {
        for l in leases {
            self.upsert(l);
        }
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// The client's current record, whatever its state.
    pub fn for_client(&self, client: &ClientKey) -> Option<&Lease> {
        self.by_client.get(client).and_then(|ip| self.by_ip.get(ip)).filter(|l| l.client == *client)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.contains(ip))
    }

    /// Whether `ip` can be given to `client` now: a pool address, not excluded, not held by
    /// another client.
    pub fn available_to(&self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        self.in_pool(ip)
            && !self.excluded.contains(&ip)
            && self.by_ip.get(&ip).is_none_or(|l| l.client == *client && l.state != LeaseState::Declined || !l.holds(now))
    }

    /// Whether `ip` is held by a client other than `client` (or quarantined).
    pub fn held_by_other(&self, ip: Ipv4Addr, client: &ClientKey, now: u64) -> bool {
        self.by_ip.get(&ip).is_some_and(|l| l.holds(now) && (l.client != *client || l.state == LeaseState::Declined))
    }

    /// Finds a free pool address (next fit from the last allocation).
    pub fn allocate(&mut self, client: &ClientKey, now: u64) -> Option<Ipv4Addr> {
        if self.full_until.is_some_and(|t| now < t) {
            return None;
        }
        let total: u64 = self.pools.iter().map(|p| u64::from(p.len())).sum();
        let mut frees_at = u64::MAX;
        let (mut pi, mut off) = self.cursor;
        for _ in 0..total {
            if pi >= self.pools.len() {
                pi = 0;
                off = 0;
            }
            let pool = self.pools[pi];
            if off >= pool.len() {
                pi += 1;
                off = 0;
                continue;
            }
            let ip = Ipv4Addr::from(u32::from(pool.start) + off);
            off += 1;
            if self.available_to(ip, client, now) {
                self.cursor = (pi, off);
                self.full_until = None;
                return Some(ip);
            }
            if let Some(l) = self.by_ip.get(&ip) {
                frees_at = frees_at.min(l.expires);
            }
        }
        self.full_until = Some(frees_at);
        None
    }

    /// Starts the next-fit search at `part`/`parts` of the pools (member `part` of `parts` of a
    /// cluster): members allocating from one pool start far apart, so their claims rarely
    /// collide in the shared store.
    pub fn start_at(&mut self, part: usize, parts: usize) {
        let total: u64 = self.pools.iter().map(|p| u64::from(p.len())).sum();
        let mut at = total * part as u64 / parts.max(1) as u64;
        for (i, p) in self.pools.iter().enumerate() {
            if at < u64::from(p.len()) {
                self.cursor = (i, at as u32);
                return;
            }
            at -= u64::from(p.len());
        }
    }

    /// Removes the record of `ip` if it is `client`'s.
    pub fn remove_if(&mut self, ip: Ipv4Addr, client: &ClientKey) {
        if self.by_ip.get(&ip).is_some_and(|l| l.client == *client) {
            self.by_ip.remove(&ip);
            if self.by_client.get(client) == Some(&ip) {
                self.by_client.remove(client);
            }
            self.full_until = None;
        }
    }

    /// Inserts or replaces the record of `lease.ip`; the client's record of another address
    /// (if any) is dropped from the client index.
    pub fn upsert(&mut self, lease: Lease) {
        if let Some(old_ip) = self.by_client.get(&lease.client).copied()
            && old_ip != lease.ip
            && let Some(old) = self.by_ip.get(&old_ip)
            && old.client == lease.client && old.state != LeaseState::Declined
        {
            self.by_ip.remove(&old_ip);
        }
        if let Some(prev) = self.by_ip.get(&lease.ip) && prev.client != lease.client && self.by_client.get(&prev.client) == Some(&lease.ip) {
            self.by_client.remove(&prev.client.clone());
        }
        if lease.state != LeaseState::Declined {
            self.by_client.insert(lease.client.clone(), lease.ip);
        }
        if lease.state == LeaseState::Released {
            self.full_until = None;
        }
        self.by_ip.insert(lease.ip, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClientKey {
        ClientKey(vec![2, 0, 0, 0, 0, n])
    }

    fn lease(ip: [u8; 4], n: u8, state: LeaseState, expires: u64) -> Lease {
        Lease { ip: ip.into(), client: key(n), mac: MacAddr([2, 0, 0, 0, 0, n]), hostname: None, state, expires }
    }

    #[test]
    fn client_key_canonicalizes_hardware_client_ids() {
        let mac: MacAddr = "52:54:00:00:00:11".parse().unwrap();
        let hw = [1, 0x52, 0x54, 0, 0, 0, 0x11];
        assert_eq!(ClientKey::new(mac, Some(&hw)), ClientKey::new(mac, None));
        let duid = [0xff, 1, 2, 3];
        let k = ClientKey::new(mac, Some(&duid));
        assert_ne!(k, ClientKey::new(mac, None));
        assert_eq!(ClientKey::from_text(&k.to_text()), Some(k));
        let m = ClientKey::new(mac, None);
        assert_eq!(m.to_text(), "52:54:00:00:00:11");
        assert_eq!(ClientKey::from_text(&m.to_text()), Some(m));
    }

    #[test]
    fn allocation_skips_held_excluded_and_quarantined_addresses() {
        let pool: Pool = "10.0.0.10-10.0.0.14".parse().unwrap();
        let mut t = LeaseTable::new(vec![pool], [Ipv4Addr::new(10, 0, 0, 11)].into());
        t.upsert(lease([10, 0, 0, 10], 1, LeaseState::Bound, 100));
        t.upsert(lease([10, 0, 0, 12], 2, LeaseState::Declined, 100));
        assert_eq!(t.allocate(&key(9), 50), Some(Ipv4Addr::new(10, 0, 0, 13)));
        assert_eq!(t.allocate(&key(9), 50), Some(Ipv4Addr::new(10, 0, 0, 14)));
        // Wraps, and still finds nothing held: .10 bound, .11 excluded, .12 quarantined.
        t.upsert(lease([10, 0, 0, 13], 3, LeaseState::Bound, 100));
        t.upsert(lease([10, 0, 0, 14], 4, LeaseState::Offered, 100));
        assert_eq!(t.allocate(&key(9), 50), None);
        // After expiry everything but the excluded address is free again.
        assert_eq!(t.allocate(&key(9), 100), Some(Ipv4Addr::new(10, 0, 0, 10)));
    }

    #[test]
    fn a_full_pool_is_scanned_once_until_an_address_can_be_free() {
        let pool: Pool = "10.0.0.10-10.0.0.11".parse().unwrap();
        let mut t = LeaseTable::new(vec![pool], HashSet::new());
        t.upsert(lease([10, 0, 0, 10], 1, LeaseState::Bound, 100));
        t.upsert(lease([10, 0, 0, 11], 2, LeaseState::Offered, 60));
        assert_eq!(t.allocate(&key(9), 50), None);
        assert_eq!(t.full_until, Some(60), "the earliest expiry of a held address");
        // Memoized: a lease that would free up is not looked at before then...
        t.by_ip.get_mut(&Ipv4Addr::new(10, 0, 0, 11)).unwrap().expires = 0;
        assert_eq!(t.allocate(&key(9), 55), None);
        // ...but at that time, or after a release, the pool is scanned again.
        assert_eq!(t.allocate(&key(9), 60), Some(Ipv4Addr::new(10, 0, 0, 11)));
        t.upsert(lease([10, 0, 0, 11], 9, LeaseState::Bound, 200));
        assert_eq!(t.allocate(&key(8), 70), None);
        t.upsert(lease([10, 0, 0, 10], 1, LeaseState::Released, 70));
        assert_eq!(t.allocate(&key(8), 71), Some(Ipv4Addr::new(10, 0, 0, 10)));
    }

    #[test]
    fn a_client_has_one_address() {
        let pool: Pool = "10.0.0.10-10.0.0.14".parse().unwrap();
        let mut t = LeaseTable::new(vec![pool], HashSet::new());
        t.upsert(lease([10, 0, 0, 10], 1, LeaseState::Offered, 100));
        t.upsert(lease([10, 0, 0, 11], 1, LeaseState::Bound, 100));
        assert_eq!(t.for_client(&key(1)).unwrap().ip, Ipv4Addr::new(10, 0, 0, 11));
        assert!(t.get(Ipv4Addr::new(10, 0, 0, 10)).is_none());
        assert!(t.available_to(Ipv4Addr::new(10, 0, 0, 11), &key(1), 50));
        assert!(!t.available_to(Ipv4Addr::new(10, 0, 0, 11), &key(2), 50));
        assert!(t.held_by_other(Ipv4Addr::new(10, 0, 0, 11), &key(2), 50));
    }

    #[test]
    fn unwritten_renewals_move_only_the_same_clients_bound_lease_later() {
        let r = UnwrittenRenewals::default();
        r.record(&lease([10, 0, 0, 1], 1, LeaseState::Bound, 2000));
        r.record(&lease([10, 0, 0, 2], 2, LeaseState::Bound, 2000));
        r.record(&lease([10, 0, 0, 3], 3, LeaseState::Bound, 500));
        let mut stored = vec![
            lease([10, 0, 0, 1], 1, LeaseState::Bound, 1000),    // renewed: moves
            lease([10, 0, 0, 2], 9, LeaseState::Bound, 1000),    // another client now: stays
            lease([10, 0, 0, 3], 3, LeaseState::Bound, 1000),    // stored is later: stays
            lease([10, 0, 0, 4], 4, LeaseState::Released, 1000), // no renewal: stays
        ];
        r.overlay(&mut stored);
        assert_eq!(stored.iter().map(|l| l.expires).collect::<Vec<_>>(), [2000, 1000, 1000, 1000]);
        let mut released = vec![lease([10, 0, 0, 1], 1, LeaseState::Released, 1000)];
        r.overlay(&mut released);
        assert_eq!(released[0].expires, 1000, "a released lease is not revived");
    }
}
