//! The kernel/user ABI of netboot-xdp and nothing else.
//!
//! Both the XDP program (`netboot-ebpf`, `no_std`) and the agent (`netboot-user`) depend on this
//! crate, so every number that crosses the kernel/user boundary is defined exactly once here:
//! map names, counter indices, client classes, wire constants the classifier matches on.
#![no_std]

pub mod cache;
pub mod cache6;
pub mod cluster;
pub mod counter;
pub mod wire;

pub use counter::Counter;

/// Names of the maps in the XDP object; the agent pins them under
/// `<bpffs>/netboot-xdp/<iface>/<NAME>`.
pub mod maps {
    /// `PerCpuArray<u64>` indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<[u8; SCRATCH_LEN]>`: per-CPU copy of the DHCP options being parsed.
    pub const SCRATCH: &str = "SCRATCH";
    /// `LruHashMap<CacheKey, CacheEntry>`: the reply cache.
    pub const REPLY_CACHE: &str = "REPLY_CACHE";
    /// `RingBuf` of `AckEvent`s.
    pub const EVENTS: &str = "EVENTS";
    /// `XskMap`: the TFTP engine's AF_XDP socket per RX queue (not pinned: it lives with them).
    pub const XSKS: &str = "XSKS";
    /// `Array<TftpSteer>` (one entry): which frames go to the AF_XDP sockets.
    pub const TFTP_STEER: &str = "TFTP_STEER";
    /// `Array<FastLimits>` (one entry): limits set by the agent from the config.
    pub const LIMITS: &str = "LIMITS";
    /// `LruHashMap<RateKey, ClientRate>`: requests per client in the current second.
    pub const CLIENT_RATE: &str = "CLIENT_RATE";
    /// `HashMap<TransferKey, TransferRecord>` (pinned): the AF_XDP TFTP engine's running
    /// transfers, so that an agent restarted after a crash goes on with them.
    pub const TFTP_TRANSFERS: &str = "TFTP_TRANSFERS";
    /// `Array<u8>` of [`crate::cluster::BUCKETS`]: per load-balancing bucket,
    /// [`crate::cluster::OWNER_SELF`] (answer) or [`crate::cluster::OWNER_OTHER`] (drop
    /// DISCOVER and REQUEST: another server of the cluster answers them).
    pub const BUCKET_OWNER: &str = "BUCKET_OWNER";
    /// `LruHashMap<Cache6Key, Cache6Entry>`: the DHCPv6 reply cache (not pinned: entries are
    /// compiled from clients' requests again).
    pub const REPLY_CACHE6: &str = "REPLY_CACHE6";
    /// `RingBuf` of `Reply6Event`s.
    pub const EVENTS6: &str = "EVENTS6";
    /// `ProgramArray` of one: the log program ([`crate::LOG_PROGRAM_NAME`]), which the main
    /// program tail-calls to log a rare exit (a call would not fit the main program's stack).
    pub const LOG_PROG: &str = "LOG_PROG";
}

/// A running transfer of the AF_XDP TFTP engine: the client's address and port and our TID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TransferKey {
    /// IPv6, or IPv4-mapped (`::ffff:a.b.c.d`).
    pub client_ip: [u8; 16],
    pub client_port: u16,
    pub tid: u16,
}

/// Longest file name a [`TransferRecord`] holds (longer names are not resumable).
pub const TRANSFER_NAME_MAX: usize = 128;
/// Transfers recorded at most (more run, unrecorded: not resumable).
pub const TRANSFERS_ENTRIES: u32 = 65536;

/// What a restarted engine needs to go on with a transfer when the client's next ACK comes:
/// the file (checked by length) and the negotiated parameters. Written when a transfer starts,
/// removed when it ends; the XDP program never reads it (it only lives in bpffs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// Length of the bytes sent (after any netascii conversion).
    pub len: u64,
    pub blksize: u16,
    pub windowsize: u16,
    /// 1: netascii.
    pub netascii: u8,
    pub name_len: u8,
    pub _pad: [u8; 2],
    pub name: [u8; TRANSFER_NAME_MAX],
}

/// Which UDP frames the XDP program redirects to the TFTP engine's AF_XDP sockets: to
/// `server_ip` (or `server_ip6`), port 69 or a transfer port in `port_lo..=port_hi`, untagged,
/// no IP options or extension headers, not fragmented. All zero (the default) steers nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TftpSteer {
    pub server_ip: [u8; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub enabled: u8,
    /// IPv6/UDP frames (no extension headers) to `server_ip6` are steered too.
    pub enabled6: u8,
    pub _pad: [u8; 2],
    pub server_ip6: [u8; 16],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TftpSteer {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TransferKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for TransferRecord {}

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "netboot";
/// The program that logs a rare exit through aya-log, tail-called by the main one.
pub const LOG_PROGRAM_NAME: &str = "netboot_log";
/// The pass-through program the lab puts on the client side of a veth pair, so that native-mode
/// `XDP_TX` frames are received there (TOOLCHAIN.md P3).
pub const PASS_PROGRAM_NAME: &str = "xdp_pass";

/// The lab's lossy-link program and its map (share of frames dropped, in 1/65536).
pub const LAB_LOSS_PROGRAM_NAME: &str = "lab_loss";
pub const LAB_LOSS_MAP: &str = "LAB_LOSS";

/// The bench's client end (AF_XDP sockets for a load generator) and its maps.
pub const LAB_CLIENT_PROGRAM_NAME: &str = "lab_client_xsk";
pub const LAB_CLIENT_PORTS_MAP: &str = "LAB_CLIENT_PORTS";
pub const LAB_CLIENT_XSKS_MAP: &str = "LAB_CLIENT_XSKS";

/// Length of the per-CPU scratch buffer the DHCP options are copied into. A power of two, so that
/// an index can be bounded with a mask the verifier understands. 2048 covers every option area
/// that fits in a 1500-byte frame.
pub const SCRATCH_LEN: usize = 2048;
