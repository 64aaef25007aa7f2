//! The DHCPv6 reply cache: ADVERTISEs and REPLYs the agent sent a client, kept to answer the
//! same client's next SOLICIT or REQUEST in the kernel.
//!
//! A DHCPv6 reply echoes what only the client's own message says (its DUID, the IAID of its
//! IA_NA, its link-local source), so unlike the DHCPv4 cache nothing can be compiled before
//! the client has asked once: the agent compiles an entry from each reply it sends to a host
//! with a fixed `ip6`, and the program answers a later request that matches it in every
//! respect the reply depends on (DUID, IAID, source, server DUID, class, architecture).

/// Largest reply frame an entry holds (a power of two: lengths are bounded by masking).
pub const TEMPLATE6_MAX: usize = 512;
/// Longest DUID (client or server) an entry can require (EDK2's DUID-UUID is 18 bytes).
pub const DUID_MAX: usize = 32;
/// Entries of the LRU cache.
pub const CACHE6_ENTRIES: u32 = 16384;
/// Bytes of the ring buffer for in-kernel REPLY events.
pub const EVENTS6_BYTES: u32 = 1 << 18;

/// The message type of the request an entry answers (RFC 8415 §7.3).
pub const SOLICIT: u8 = 1;
pub const REQUEST: u8 = 3;
/// Relay-forward: never answered from the cache.
pub const RELAY_FORW: u8 = 12;

/// The UDP port DHCPv6 servers and relays listen on.
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers, ff02::1:2, and its Ethernet multicast address.
pub const ALL_DHCP_AGENTS: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
pub const ALL_DHCP_AGENTS_MAC: [u8; 6] = [0x33, 0x33, 0, 1, 0, 2];

/// Option codes the program looks at (RFC 8415 §21, RFC 5970).
pub mod opt6 {
    pub const CLIENT_ID: u16 = 1;
    pub const SERVER_ID: u16 = 2;
    pub const IA_NA: u16 = 3;
    pub const IA_TA: u16 = 4;
    pub const RAPID_COMMIT: u16 = 14;
    pub const USER_CLASS: u16 = 15;
    pub const VENDOR_CLASS: u16 = 16;
    pub const IA_PD: u16 = 25;
    pub const CLIENT_ARCH: u16 = 61;
}

/// Key of an entry: the client's MAC (the request's Ethernet source), its class and
/// architecture as [`crate::cache::CacheKey`] has them, and the request's message type.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cache6Key {
    pub mac: [u8; 6],
    pub class: u8,
    /// [`SOLICIT`] or [`REQUEST`].
    pub kind: u8,
    /// Option 61 for PXE clients, 0 without it; 0xffff for other classes.
    pub arch: u16,
    pub _pad: [u8; 2],
}

impl Cache6Key {
    #[inline(always)]
    pub const fn new(mac: [u8; 6], class: crate::wire::ClientClass, kind: u8, arch: Option<u16>) -> Cache6Key {
        let k = crate::cache::CacheKey::new(mac, class, kind, arch, [0; 4]);
        Cache6Key { mac, class: k.class, kind, arch: k.arch, _pad: [0; 2] }
    }
}

/// A reply as the agent sent it, as a whole frame with transaction id 0; the program copies
/// it, writes the request's transaction id and recomputes the UDP checksum.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Cache6Entry {
    /// `bpf_ktime_get_ns` time after which the entry is not used; `crate::cache::NEVER`.
    pub not_after_ns: u64,
    /// Frame length.
    pub len: u16,
    pub client_id_len: u8,
    pub server_id_len: u8,
    /// The IAID of the request's one IA_NA.
    pub iaid: [u8; 4],
    /// The enterprise number of the request's vendor class (UEFI HTTP boot echoes it).
    pub enterprise: [u8; 4],
    pub _pad: [u8; 4],
    /// The request's source: the client's link-local address, the reply's destination.
    pub peer: [u8; 16],
    /// The address the reply gives.
    pub ip: [u8; 16],
    pub client_id: [u8; DUID_MAX],
    /// Ours: a REQUEST must name it.
    pub server_id: [u8; DUID_MAX],
    pub frame: [u8; TEMPLATE6_MAX],
}

/// Sent to the agent for each REPLY to a REQUEST the kernel answers: the binding is written
/// to the lease store as the agent's own would be.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply6Event {
    pub mac: [u8; 6],
    pub class: u8,
    /// As [`crate::cache::AckEvent::arch1`].
    pub arch1: u8,
    pub iaid: [u8; 4],
    pub ip: [u8; 16],
    pub client_id_len: u8,
    pub _pad: [u8; 3],
    pub client_id: [u8; DUID_MAX],
}

/// Offsets in an untagged reply frame (Ethernet, IPv6 without extension headers, UDP, DHCPv6).
pub mod off6 {
    pub const ETH_DST: usize = 0;
    pub const IP: usize = 14;
    pub const IP_SRC: usize = IP + 8;
    pub const IP_DST: usize = IP + 24;
    pub const UDP: usize = 54;
    pub const UDP_CSUM: usize = UDP + 6;
    pub const DHCP: usize = 62;
    pub const XID: usize = DHCP + 1;
    pub const OPTIONS: usize = DHCP + 4;
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Cache6Key {}
    unsafe impl aya::Pod for super::Cache6Entry {}
    unsafe impl aya::Pod for super::Reply6Event {}
}
