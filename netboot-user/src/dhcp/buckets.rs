//! Which buckets this server answers, derived by every member alike from the live members.
//!
//! Rendezvous (highest random weight) hashing: bucket b goes to the member whose
//! `weight(server_id, b)` is highest. Every member computes the same owners from the same
//! member list with no coordination, and when a member leaves only its own buckets move.

use crate::mac::MacAddr;
use netboot_common::cluster::{BUCKETS, bucket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The buckets this server answers, shared by the DHCP core (read per request) and the
/// cluster task (which rewrites it and the XDP program's `BUCKET_OWNER`). All owned until the
/// cluster says otherwise: one server alone answers everyone.
pub struct Buckets {
    owned: [AtomicBool; BUCKETS as usize],
    count: AtomicU32,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets { owned: std::array::from_fn(|_| AtomicBool::new(true)), count: AtomicU32::new(BUCKETS) }
    }
}

impl Buckets {
    /// Whether this server answers the client with hardware address `mac`.
    pub fn owns(&self, mac: MacAddr) -> bool {
        self.owned[bucket(&mac.0) as usize].load(Ordering::Relaxed)
    }

    pub fn set(&self, owned: &[bool; BUCKETS as usize]) {
        for (slot, v) in self.owned.iter().zip(owned) {
            slot.store(*v, Ordering::Relaxed);
        }
        self.count.store(owned.iter().filter(|o| **o).count() as u32, Ordering::Relaxed);
    }

    pub fn owned_count(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> [bool; BUCKETS as usize] {
        std::array::from_fn(|i| self.owned[i].load(Ordering::Relaxed))
    }
}

/// The weight of `server_id` for bucket `b`: FNV-1a over the id and the bucket, finished by
/// SplitMix64's mixer (FNV alone differs little between ids that differ in their last byte).
fn weight(server_id: &str, b: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in server_id.bytes().chain([0, b]) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The buckets `me` owns among `members` (which should contain `me`; if it does not, `me`
/// owns none). Ties go to the smaller id.
pub fn owned_by(me: &str, members: &[String]) -> [bool; BUCKETS as usize] {
    std::array::from_fn(|b| {
        let winner = members.iter().max_by(|x, y| weight(x, b as u8).cmp(&weight(y, b as u8)).then(y.cmp(x)));
        winner.is_some_and(|w| w == me)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_bucket_has_exactly_one_owner_and_the_split_is_even() {
        let members = ids(&["boot-a", "boot-b", "boot-c"]);
        let owned: Vec<_> = members.iter().map(|m| owned_by(m, &members)).collect();
        for b in 0..256 {
            assert_eq!(owned.iter().filter(|o| o[b]).count(), 1, "bucket {b}");
        }
        for (m, o) in members.iter().zip(&owned) {
            let n = o.iter().filter(|x| **x).count();
            assert!((50..=120).contains(&n), "{m} owns {n} of 256");
        }
    }

    #[test]
    fn when_a_member_leaves_only_its_buckets_move() {
        let three = ids(&["boot-a", "boot-b", "boot-c"]);
        let two = ids(&["boot-a", "boot-b"]);
        for me in ["boot-a", "boot-b"] {
            let before = owned_by(me, &three);
            let after = owned_by(me, &two);
            assert!((0..256).all(|b| !before[b] || after[b]), "{me} lost a bucket it had");
        }
        let c = owned_by("boot-c", &three);
        let a = owned_by("boot-a", &two);
        let b = owned_by("boot-b", &two);
        assert!((0..256).all(|i| !c[i] || a[i] || b[i]));
    }

    #[test]
    fn alone_a_server_owns_everything_and_a_stranger_nothing() {
        assert!(owned_by("boot-a", &ids(&["boot-a"])).iter().all(|o| *o));
        assert!(owned_by("boot-x", &ids(&["boot-a"])).iter().all(|o| !*o));
        let b = Buckets::default();
        assert_eq!(b.owned_count(), 256);
        assert!(b.owns(MacAddr([2, 0, 0, 0, 0, 1])));
    }
}
