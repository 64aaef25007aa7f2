//! The reply cache: replies the agent compiled, keyed by client, answered by the XDP program.

/// Largest reply frame a cache entry holds (a power of two: lengths are bounded by masking).
pub const TEMPLATE_MAX: usize = 512;
/// Longest UDP segment of a request the fast path answers (its checksum is verified in a
/// per-CPU copy of this size).
pub const REQUEST_MAX: usize = 1024;
/// Longest client identifier (option 61) an entry can require.
pub const CLIENT_ID_MAX: usize = 32;
/// Entries of the LRU reply cache (each about 600 bytes).
pub const CACHE_ENTRIES: u32 = 65536;
/// Bytes of the ring buffer for in-kernel ACK events.
pub const EVENTS_BYTES: u32 = 1 << 20;

/// [`CacheEntry::not_after_ns`] of an entry that does not expire.
pub const NEVER: u64 = u64::MAX;

/// Which reply: the message type of the request it answers.
pub const KIND_OFFER: u8 = 1;
pub const KIND_ACK: u8 = 5;

/// Key of a cache entry: who asks, as what, for what.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CacheKey {
    pub mac: [u8; 6],
    /// [`crate::wire::ClientClass`] as u8.
    pub class: u8,
    /// [`KIND_OFFER`] or [`KIND_ACK`].
    pub kind: u8,
    /// Option 93 for PXE clients (it picks the file); 0xffff for other classes.
    pub arch: u16,
    pub _pad: [u8; 2],
    /// giaddr of a relayed request (0.0.0.0 for clients on the link): a relayed reply goes to
    /// that relay, so it is a different entry.
    pub relay: [u8; 4],
}

impl CacheKey {
    /// The one definition of a key, used by the XDP program for a request and by the agent's
    /// compiler for a client: the PXE architecture counts (it picks the file), other classes'
    /// do not; `relay` is the giaddr (zero on the link).
    #[inline(always)]
    pub const fn new(mac: [u8; 6], class: crate::wire::ClientClass, kind: u8, arch: Option<u16>, relay: [u8; 4]) -> CacheKey {
        let arch = match class {
            crate::wire::ClientClass::Pxe => match arch {
                Some(a) => a,
                None => 0,
            },
            _ => 0xffff,
        };
        CacheKey { mac, class: class as u8, kind, arch, _pad: [0; 2], relay }
    }
}

/// A compiled reply: the whole frame as the agent would send it (to `chaddr`/`yiaddr`, or to the
/// relay) for a request with xid 0 and flags 0. The XDP program copies it, patches xid, flags and (for the
/// broadcast flag) the destination, recomputes both checksums and transmits it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CacheEntry {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`) after which the entry is not used:
    /// a reply cache whose agent is gone stops answering when the lease's durable record
    /// would no longer cover the reply. [`NEVER`] for reservations.
    pub not_after_ns: u64,
    /// Frame length.
    pub len: u16,
    /// Length of the client identifier the request must carry (0: it must carry none).
    pub client_id_len: u8,
    pub _pad: u8,
    /// The address the reply gives (a REQUEST must ask for it).
    pub yiaddr: [u8; 4],
    /// Our address (a REQUEST's option 54, if present, must be it).
    pub server_ip: [u8; 4],
    pub client_id: [u8; CLIENT_ID_MAX],
    pub frame: [u8; TEMPLATE_MAX],
}

/// The XDP program's limits (one entry of `LIMITS`); all zero = no limits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastLimits {
    /// DHCP requests per second per chaddr; 0 = unlimited.
    pub per_client_pps: u32,
    /// 1: the program's rare exits are logged through aya-log (`[server] xdp_log`).
    pub log: u32,
    /// A cluster member's liveness (`bpf_ktime_get_ns` time): after it the program answers and
    /// passes no DISCOVER or REQUEST (counter `member_stalled`), because the agent stopped
    /// renewing it (killed, stopped, hung) and the other members take its buckets over after
    /// the same `cluster.takeover`. 0 = not a cluster member: no such limit.
    pub alive_until_ns: u64,
}

/// Who a request's rate is counted against (`CLIENT_RATE`'s key): the chaddr it carries and
/// where it came from, the Ethernet source when direct, the giaddr when relayed. Keyed by
/// chaddr alone, frames forged with a victim's chaddr from another host silenced the victim.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub chaddr: [u8; 6],
    /// The Ethernet source (direct), or the giaddr in the first four bytes (relayed).
    pub from: [u8; 6],
    /// 1 when relayed.
    pub relayed: u8,
    pub _pad: [u8; 3],
}

impl RateKey {
    pub fn new(chaddr: [u8; 6], src_mac: [u8; 6], giaddr: [u8; 4]) -> RateKey {
        match giaddr {
            [0, 0, 0, 0] => RateKey { chaddr, from: src_mac, relayed: 0, _pad: [0; 3] },
            [a, b, c, d] => RateKey { chaddr, from: [a, b, c, d, 0, 0], relayed: 1, _pad: [0; 3] },
        }
    }
}

/// A client's request count in the current one-second window (`CLIENT_RATE`, LRU by
/// [`RateKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRate {
    pub window_start_ns: u64,
    pub count: u32,
    pub _pad: u32,
}

/// Entries of the per-client rate map (least recently seen clients fall out first).
pub const CLIENT_RATE_ENTRIES: u32 = 65536;

/// Sent to the agent for each ACK the kernel answers, so that the lease is renewed on disk.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AckEvent {
    pub mac: [u8; 6],
    pub class: u8,
    /// Option 93 plus one when below 255, else 0 (absent or too large): see [`AckEvent::arch`].
    pub arch1: u8,
    pub ip: [u8; 4],
    pub xid: u32,
}

impl AckEvent {
    /// `arch1` for an option 93 value.
    pub fn encode_arch(arch: Option<u16>) -> u8 {
        match arch {
            Some(a) if a < 255 => a as u8 + 1,
            _ => 0,
        }
    }

    /// The client's option 93, as far as the event carries it.
    pub fn arch(&self) -> Option<u16> {
        self.arch1.checked_sub(1).map(u16::from)
    }
}

/// Offsets in an untagged reply frame (Ethernet, IPv4 without options, UDP, BOOTP).
pub mod off {
    pub const ETH_DST: usize = 0;
    pub const IP: usize = 14;
    pub const IP_CSUM: usize = IP + 10;
    pub const IP_DST: usize = IP + 16;
    pub const UDP: usize = 34;
    pub const UDP_CSUM: usize = UDP + 6;
    pub const BOOTP: usize = 42;
    pub const XID: usize = BOOTP + 4;
    pub const FLAGS: usize = BOOTP + 10;
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::CacheKey {}
    unsafe impl aya::Pod for super::CacheEntry {}
    unsafe impl aya::Pod for super::AckEvent {}
    unsafe impl aya::Pod for super::FastLimits {}
    unsafe impl aya::Pod for super::ClientRate {}
    unsafe impl aya::Pod for super::RateKey {}
}
