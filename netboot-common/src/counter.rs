//! Per-CPU counters of the XDP program: every in-kernel decision is one of these (invariant 5).

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, )*) => {
        /// Index into the `COUNTERS` per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $( $(#[doc = $doc])* $variant, )* }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];
            /// Stable snake_case name, used by `status --json` and `/metrics`.
            pub const fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name, )* }
            }
        }
    };
}

counters! {
    /// Every frame the program saw.
    Packets = "packets",
    /// Not IPv4/UDP to port 67: passed untouched.
    NotDhcp = "not_dhcp",
    /// Frames with one 802.1Q tag (counted in addition to their outcome).
    VlanTagged = "vlan_tagged",
    /// Shorter than a header or length field says.
    Truncated = "truncated",
    /// IPv4 header invalid (version, IHL, total length) or a fragment.
    MalformedIp = "malformed_ip",
    /// A BOOTREPLY to port 67 (a server answering a relay): not a client request.
    BootReply = "bootreply",
    /// BOOTP header invalid: htype, hlen, UDP length or magic cookie.
    MalformedBootp = "malformed_bootp",
    /// Option area invalid: overrun, no END, no or bad message type.
    MalformedOptions = "malformed_options",
    /// Valid but beyond what the program parses (option overload, too many options): passed.
    Unsupported = "unsupported",
    /// Classified requests with giaddr set: relayed by a DHCP relay agent.
    Relayed = "relayed",
    MsgDiscover = "msg_discover",
    MsgRequest = "msg_request",
    MsgDecline = "msg_decline",
    MsgRelease = "msg_release",
    MsgInform = "msg_inform",
    /// Any other message type in a BOOTREQUEST.
    MsgOther = "msg_other",
    ClassIpxe = "class_ipxe",
    ClassHttp = "class_http",
    ClassPxe = "class_pxe",
    ClassPlain = "class_plain",
    /// Option 93 = 0.
    ArchBios = "arch_bios",
    /// Option 93 = 6.
    ArchEfiIa32 = "arch_efi_ia32",
    /// Option 93 = 7 or 9.
    ArchEfiX64 = "arch_efi_x64",
    /// Option 93 = 11.
    ArchEfiArm64 = "arch_efi_arm64",
    /// Option 93 = 16.
    ArchHttpX64 = "arch_http_x64",
    /// Option 93 = 19.
    ArchHttpArm64 = "arch_http_arm64",
    /// Option 93 with another value.
    ArchOther = "arch_other",
    /// No option 93.
    ArchNone = "arch_none",
    /// OFFERs answered in the kernel from the reply cache.
    FastOffer = "fast_offer",
    /// ACKs answered in the kernel from the reply cache.
    FastAck = "fast_ack",
    /// DISCOVER/REQUEST with no cache entry for its client, class and kind: to the agent.
    CacheMiss = "cache_miss",
    /// Not eligible for the fast path: relayed, VLAN-tagged, ciaddr set, option 82: to the agent.
    FastIneligible = "fast_ineligible",
    /// An entry exists but the request differs from it (client id, requested address, server
    /// id): to the agent.
    FastMismatch = "fast_mismatch",
    /// An IPv4 header or UDP checksum is wrong: passed (the kernel drops it), never answered.
    BadChecksum = "bad_checksum",
    /// The event ring buffer was full: the ACK went to the agent instead.
    RingbufFull = "ringbuf_full",
    /// Resizing or writing the frame failed: passed.
    FastError = "fast_error",
    /// Frames handed to the kernel stack.
    XdpPass = "xdp_pass",
    /// Frames answered with XDP_TX.
    XdpTx = "xdp_tx",
    /// Replies sent from the cache, by kind and class (each also counts in fast_offer/fast_ack).
    FastOfferIpxe = "fast_offer_ipxe",
    FastOfferHttp = "fast_offer_http",
    FastOfferPxe = "fast_offer_pxe",
    FastOfferPlain = "fast_offer_plain",
    FastAckIpxe = "fast_ack_ipxe",
    FastAckHttp = "fast_ack_http",
    FastAckPxe = "fast_ack_pxe",
    FastAckPlain = "fast_ack_plain",
    /// A UDP frame to our TFTP port or a TFTP transfer port of the AF_XDP engine (an outcome).
    TftpSteered = "tftp_steered",
    /// Steered, but no AF_XDP socket on this RX queue: passed to the kernel.
    TftpNoSocket = "tftp_no_socket",
    XdpRedirect = "xdp_redirect",
    /// Frames dropped (an outcome): a client over `dhcp.per_client_pps`.
    XdpDrop = "xdp_drop",
    /// DHCP requests from a client over `dhcp.per_client_pps` this second: dropped.
    RateLimited = "rate_limited",
    /// UDP checksums in the CHECKSUM_PARTIAL form of a local sender with TX offload (a veth, a
    /// VM's tap): the pseudo-header sum, accepted as the kernel stack accepts it.
    ChecksumPartial = "checksum_partial",
    /// A cache entry past its deadline (no agent renewed it): to the agent.
    FastExpired = "fast_expired",
    /// Addressed to another host (destination MAC or IP neither ours nor broadcast): to the
    /// kernel, never answered here.
    FastNotForUs = "fast_not_for_us",
    /// DISCOVER or REQUEST of a client in a bucket another server of the cluster owns: dropped.
    NotOwner = "not_owner",
    /// DISCOVER or REQUEST while this cluster member's agent has not renewed its liveness for
    /// `cluster.takeover` (the others own its buckets by then): dropped.
    MemberStalled = "member_stalled",
    /// DHCPv6 (IPv6/UDP to port 547) by message type: SOLICIT, REQUEST, anything else.
    Msg6Solicit = "msg6_solicit",
    Msg6Request = "msg6_request",
    Msg6Other = "msg6_other",
    /// ADVERTISEs and REPLYs answered in the kernel from the DHCPv6 reply cache.
    Fast6Advertise = "fast6_advertise",
    Fast6Reply = "fast6_reply",
}

/// Number of counters; the size of the `COUNTERS` map.
pub const NUM_COUNTERS: u32 = Counter::ALL.len() as u32;

impl Counter {
    /// The counter of a parsed architecture (option 93, first entry), `None` if absent.
    pub const fn for_arch(arch: Option<u16>) -> Counter {
        use crate::wire::arch;
        match arch {
            None => Counter::ArchNone,
            Some(arch::BIOS) => Counter::ArchBios,
            Some(arch::EFI_IA32) => Counter::ArchEfiIa32,
            Some(arch::EFI_X64) | Some(arch::EFI_BC) => Counter::ArchEfiX64,
            Some(arch::EFI_ARM64) => Counter::ArchEfiArm64,
            Some(arch::HTTP_X64) => Counter::ArchHttpX64,
            Some(arch::HTTP_ARM64) => Counter::ArchHttpArm64,
            Some(_) => Counter::ArchOther,
        }
    }

    pub const fn for_class(class: crate::wire::ClientClass) -> Counter {
        use crate::wire::ClientClass;
        match class {
            ClientClass::Ipxe => Counter::ClassIpxe,
            ClientClass::Http => Counter::ClassHttp,
            ClientClass::Pxe => Counter::ClassPxe,
            ClientClass::Plain => Counter::ClassPlain,
        }
    }

    /// The per-class counter of a reply sent from the cache.
    pub const fn for_fast_reply(ack: bool, class: crate::wire::ClientClass) -> Counter {
        use crate::wire::ClientClass;
        match (ack, class) {
            (false, ClientClass::Ipxe) => Counter::FastOfferIpxe,
            (false, ClientClass::Http) => Counter::FastOfferHttp,
            (false, ClientClass::Pxe) => Counter::FastOfferPxe,
            (false, ClientClass::Plain) => Counter::FastOfferPlain,
            (true, ClientClass::Ipxe) => Counter::FastAckIpxe,
            (true, ClientClass::Http) => Counter::FastAckHttp,
            (true, ClientClass::Pxe) => Counter::FastAckPxe,
            (true, ClientClass::Plain) => Counter::FastAckPlain,
        }
    }

    pub const fn for_message_type(t: u8) -> Counter {
        use crate::wire::msg;
        match t {
            msg::DISCOVER => Counter::MsgDiscover,
            msg::REQUEST => Counter::MsgRequest,
            msg::DECLINE => Counter::MsgDecline,
            msg::RELEASE => Counter::MsgRelease,
            msg::INFORM => Counter::MsgInform,
            _ => Counter::MsgOther,
        }
    }
}

/// The counters of which exactly one counts each frame: where parsing stopped, or
/// success: one of the `msg_*` counters.
pub const OUTCOMES: &[Counter] = &[
    Counter::NotDhcp,
    Counter::TftpSteered,
    Counter::Truncated,
    Counter::MalformedIp,
    Counter::BootReply,
    Counter::MalformedBootp,
    Counter::MalformedOptions,
    Counter::Unsupported,
    Counter::MsgDiscover,
    Counter::MsgRequest,
    Counter::MsgDecline,
    Counter::MsgRelease,
    Counter::MsgInform,
    Counter::MsgOther,
    Counter::Msg6Solicit,
    Counter::Msg6Request,
    Counter::Msg6Other,
];
