//! The XDP fast path as the agent sees it: the embedded program object, loading and attaching it,
//! its pinned maps, its counters, and a `BPF_PROG_TEST_RUN` harness.

pub mod cache;
pub mod cache6;
pub mod counters;
pub mod limits;
pub mod loader;
pub mod log;
pub mod pins;
pub mod sync;
pub mod testrun;

pub use counters::Counters;
pub use loader::{FastPath, Loaded, StartError, XdpModeArg};

/// Reply-cache entries one client can use: OFFER and ACK for each presentation the compiler
/// prepares (iPXE, BIOS PXE, UEFI PXE, and the one just seen; `sync::CacheSync::presentations`).
pub const ENTRIES_PER_CLIENT: u64 = 8;
/// The largest reply cache the agent creates (about 330 MiB of kernel memory, 65536 clients).
pub const MAX_CACHE_ENTRIES: u32 = 1 << 19;

/// Size of the reply cache for `clients` possible clients (reservations and pool addresses):
/// room for all of them, at least the object's default. The cache is an LRU map; one smaller
/// than the clients of a storm evicts in the order the clients boot, so that nearly every
/// request misses and the agent answers the whole storm.
pub fn cache_entries(clients: u64) -> u32 {
    let want = clients.saturating_mul(ENTRIES_PER_CLIENT).next_power_of_two();
    want.clamp(u64::from(netboot_common::cache::CACHE_ENTRIES), u64::from(MAX_CACHE_ENTRIES)) as u32
}

/// Takes every event of type `T` (a `repr(C)` struct the program writes) waiting in `ring`.
pub fn drain<T: Copy>(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<T> {
    let mut v = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<T>() {
            // Safety: the program wrote a whole T there; the ring's items are not aligned.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
    }
    v
}

/// The XDP object built from `netboot-ebpf` by build.rs (aya-build, nightly, BTF on).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netboot"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_cache_holds_every_client_within_bounds() {
        use super::*;
        assert_eq!(cache_entries(0), netboot_common::cache::CACHE_ENTRIES);
        assert_eq!(cache_entries(10_000), 131_072);
        assert_eq!(cache_entries(64_000), MAX_CACHE_ENTRIES);
        assert_eq!(cache_entries(10_000_000), MAX_CACHE_ENTRIES);
    }
}
