//! The netboot-xdp XDP program.
//!
//! parse → classify → count → act. A fully validated DISCOVER or REQUEST that hits the reply
//! cache is answered in place (`reply`, XDP_TX); everything else is passed to the agent. The
//! program is strict: anything it does not fully understand is counted and passed (DESIGN.md
//! invariant 3), never answered.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use netboot_common::{
    Counter, SCRATCH_LEN, TRANSFERS_ENTRIES, TftpSteer, TransferKey, TransferRecord,
    cache::{CLIENT_RATE_ENTRIES, ClientRate, FastLimits, RateKey, REQUEST_MAX, TEMPLATE_MAX},
    counter::NUM_COUNTERS,
    wire::{
        self, BOOTP_OPTIONS_OFF, ClientClass, DHCP_MAGIC, DHCP_SERVER_PORT, ETH_HLEN, ETH_P_8021AD,
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, UDP_HLEN, VLAN_HLEN, VendorClass, bootp, msg, opt,
    },
};

mod dhcp6;
mod log;
mod reply;
mod reply6;

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(NUM_COUNTERS, 0);

/// The TFTP engine's AF_XDP sockets, by RX queue.
#[map]
static XSKS: XskMap = XskMap::with_max_entries(64, 0);

/// Which frames are the TFTP engine's (set by the agent when its AF_XDP engine runs).
#[map]
static TFTP_STEER: Array<TftpSteer> = Array::with_max_entries(1, 0);

/// The AF_XDP TFTP engine's running transfers, pinned so that a restarted agent goes on with
/// them. Only the agent reads and writes it; it is here so that it is created and pinned with
/// the program's other maps.
#[map]
static TFTP_TRANSFERS: aya_ebpf::maps::HashMap<TransferKey, TransferRecord> =
    aya_ebpf::maps::HashMap::with_max_entries(TRANSFERS_ENTRIES, 0);

/// Limits the agent sets from the config.
#[map]
pub(crate) static LIMITS: Array<FastLimits> = Array::with_max_entries(1, 0);

/// Requests per client (chaddr) in the current one-second window. An LRU list per CPU
/// (BPF_F_NO_COMMON_LRU): a storm inserts thousands of new clients at once from every queue,
/// and one common list would serialise them on its lock.
#[map]
static CLIENT_RATE: LruHashMap<RateKey, ClientRate> = LruHashMap::with_max_entries(CLIENT_RATE_ENTRIES, BPF_F_NO_COMMON_LRU);

/// Per load-balancing bucket, whether this server answers it (`netboot_common::cluster`).
#[map]
static BUCKET_OWNER: Array<u8> = Array::with_max_entries(netboot_common::cluster::BUCKETS, 0);

/// `BPF_F_NO_COMMON_LRU` (include/uapi/linux/bpf.h).
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Per-CPU working memory: the option area is copied here so that it can be walked with masked
/// indices, and the facts found are kept here (not in registers) so that the verifier does not
/// have to explore every combination of them at every loop iteration.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct Scratch {
    opts: [u8; SCRATCH_LEN],
    facts: Facts,
    pub(crate) walk: Walk,
    /// The reply being finished.
    pub(crate) reply: [u8; TEMPLATE_MAX],
    /// The UDP pseudo-header of the reply, for its checksum.
    pseudo: [u8; 12],
    _pad: [u8; 4],
    /// A copy of the request's UDP segment, to verify its checksum.
    pub(crate) request: [u8; REQUEST_MAX],
    /// What the DHCPv6 option walk found.
    pub(crate) facts6: dhcp6::Facts6,
    /// The IPv6 UDP pseudo-header.
    pub(crate) pseudo6: [u8; 40],
    /// The DHCPv6 request being answered.
    pub(crate) req6: dhcp6::Classified6,
    /// The rate count's key and a new count: here, not on the stack, which `netboot` nearly
    /// fills (the verifier allows 512 bytes for a call chain).
    rate_key: RateKey,
    rate_new: ClientRate,
}

/// Position of the option walk.
#[repr(C)]
struct Walk {
    pub(crate) pos: u32,
    pub(crate) len: u32,
    pub(crate) status: u32,
    _pad: u32,
}

/// What the option walk found.
#[repr(C)]
pub struct Facts {
    msg_type: u8,
    ipxe_user_class: u8,
    ipxe_encap: u8,
    vendor: u8,
    has_arch: u8,
    overload: u8,
    arch: u16,
    /// Option 61: offset in `opts` and length (valid when `has_client_id`).
    client_id_off: u16,
    client_id_len: u8,
    relay_info: u8,
    /// Option 50 and 54 (`has_*` = 1 when present).
    requested_ip: [u8; 4],
    server_id: [u8; 4],
    has_requested_ip: u8,
    has_server_id: u8,
    /// An option the fast path depends on appeared twice (RFC 3396 concatenation is the
    /// agent's business).
    duplicate: u8,
    /// Option 61 present (its length alone cannot say: 255 is a valid length).
    has_client_id: u8,
    /// Bit per option of [`TRACKED`] seen so far.
    seen: u32,
}

/// Options whose repetition makes a request ineligible for the fast path.
const TRACKED: [u8; 11] = [
    opt::MESSAGE_TYPE,
    opt::REQUESTED_IP,
    opt::SERVER_ID,
    opt::VENDOR_CLASS,
    opt::CLIENT_ID,
    opt::USER_CLASS,
    opt::CLIENT_ARCH,
    opt::IPXE_ENCAP,
    opt::RELAY_INFO,
    opt::OVERLOAD,
    opt::MAX_MESSAGE_SIZE,
];

const MASK: usize = SCRATCH_LEN - 1;
/// Most option entries (PAD included) walked before giving up as `unsupported`.
const MAX_OPTIONS: u32 = 256;
const IPV4_HLEN: usize = 20;

#[inline(always)]
pub fn bump(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *p += 1 }
    }
}

/// A pointer to `LEN` bytes at `off`, bounds-checked against the end of the frame.
#[inline(always)]
pub fn bytes_at<const LEN: usize>(ctx: &XdpContext, off: usize) -> Result<*const [u8; LEN], Counter> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + LEN > end {
        return Err(Counter::Truncated);
    }
    Ok((start + off) as *const [u8; LEN])
}

#[inline(always)]
pub(crate) fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[xdp]
pub fn netboot(ctx: XdpContext) -> u32 {
    bump(Counter::Packets);
    let action = match classify(&ctx) {
        Ok(Frame::Dhcp(req)) if over_rate(&ctx, &req) => {
            bump(Counter::RateLimited);
            xdp_action::XDP_DROP
        }
        Ok(Frame::Dhcp(req)) if is_request(&req) && member_stalled() => {
            bump(Counter::MemberStalled);
            xdp_action::XDP_DROP
        }
        Ok(Frame::Dhcp(req)) if is_request(&req) && !owned(&req.chaddr) => {
            bump(Counter::NotOwner);
            xdp_action::XDP_DROP
        }
        Ok(Frame::Dhcp(req)) => match reply::answer(&ctx, &req) {
            Ok(action) => action,
            Err(c) => {
                bump(c);
                log::rare(&ctx, c);
                xdp_action::XDP_PASS
            }
        },
        Ok(Frame::Dhcp6) => match reply6::answer(&ctx) {
            Ok(action) => action,
            Err(c) => {
                bump(c);
                log::rare(&ctx, c);
                xdp_action::XDP_PASS
            }
        },
        Ok(Frame::Tftp { transfer_port }) => {
            bump(Counter::TftpSteered);
            // The lower bits of the flags: the action when the queue has no socket.
            let queue = unsafe { (*ctx.ctx).rx_queue_index };
            match XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)) {
                Ok(a) if a == xdp_action::XDP_REDIRECT => a,
                _ => {
                    bump(Counter::TftpNoSocket);
                    // Port 69: the socket engine listens. A transfer port has no kernel socket
                    // (an engine restarting): the kernel would answer "port unreachable", which
                    // ends the client's transfer; dropped, the client retransmits.
                    if transfer_port { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
                }
            }
        }
        Err(c) => {
            bump(c);
            log::rare(&ctx, c);
            xdp_action::XDP_PASS
        }
    };
    bump(match action {
        xdp_action::XDP_TX => Counter::XdpTx,
        xdp_action::XDP_REDIRECT => Counter::XdpRedirect,
        xdp_action::XDP_DROP => Counter::XdpDrop,
        _ => Counter::XdpPass,
    });
    action
}

/// Counts a request in its client's one-second window ([`RateKey`]: chaddr and where it came
/// from); true when the client is over `per_client_pps` (the request is dropped: neither the
/// kernel nor the agent answers a client that floods). Counting is per map entry, not atomic
/// across CPUs: a client may get a few more through, never fewer.
#[inline(never)]
fn over_rate(ctx: &XdpContext, req: &Classified) -> bool {
    let limit = match LIMITS.get(0) {
        Some(l) if l.per_client_pps != 0 => l.per_client_pps,
        _ => return false,
    };
    let (Ok(src), Some(s)) = (bytes_at::<6>(ctx, 6), SCRATCH.get_ptr_mut(0)) else { return false };
    let s = unsafe { &mut *s };
    s.rate_key = RateKey::new(req.chaddr, unsafe { *src }, req.giaddr);
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    if let Some(r) = CLIENT_RATE.get_ptr_mut(&s.rate_key) {
        let r = unsafe { &mut *r };
        if now.wrapping_sub(r.window_start_ns) < 1_000_000_000 {
            r.count += 1;
            return r.count > limit;
        }
        r.window_start_ns = now;
        r.count = 1;
        return false;
    }
    s.rate_new = ClientRate { window_start_ns: now, count: 1, _pad: 0 };
    let _ = CLIENT_RATE.insert(&s.rate_key, &s.rate_new, 0);
    false
}

/// DISCOVER and REQUEST: what one server of a cluster answers and the others leave alone.
/// Every other message (RELEASE, DECLINE, INFORM) goes on to whichever agent receives it.
#[inline(always)]
fn is_request(req: &Classified) -> bool {
    req.msg_type == msg::DISCOVER || req.msg_type == msg::REQUEST
}

/// Whether the client with hardware address `chaddr` is in a bucket this server owns.
#[inline(always)]
fn owned(chaddr: &[u8; 6]) -> bool {
    let b = u32::from(netboot_common::cluster::bucket(chaddr));
    BUCKET_OWNER.get(b).is_none_or(|o| *o == netboot_common::cluster::OWNER_SELF)
}

/// Whether this cluster member's agent let its liveness lapse (see `FastLimits`).
#[inline(always)]
fn member_stalled() -> bool {
    match LIMITS.get(0) {
        Some(l) if l.alive_until_ns != 0 => (unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() }) > l.alive_until_ns,
        _ => false,
    }
}

/// What a frame is, for the program's purposes.
pub enum Frame {
    Dhcp(Classified),
    /// A DHCPv6 message to port 547 (parsed into `Scratch::req6`).
    Dhcp6,
    /// For the TFTP engine's AF_XDP socket: to port 69, or to one of its transfer ports.
    Tftp { transfer_port: bool },
}

/// Whether an untagged, unfragmented IPv4/UDP frame (headers without options in `hdrs`) is the
/// TFTP engine's: `Some(to a transfer port)`.
#[inline(always)]
fn tftp_steered(hdrs: &[u8; IPV4_HLEN + UDP_HLEN]) -> Option<bool> {
    let steer = TFTP_STEER.get(0)?;
    if steer.enabled == 0 || hdrs[16..20] != steer.server_ip {
        return None;
    }
    tftp_port(steer, be16([hdrs[22], hdrs[23]]))
}

/// `Some(a transfer port)` if `dport` is port 69 or one of the engine's transfer ports.
#[inline(always)]
pub(crate) fn tftp_port(steer: &TftpSteer, dport: u16) -> Option<bool> {
    let transfer_port = steer.port_lo <= dport && dport <= steer.port_hi;
    (dport == wire::TFTP_PORT || transfer_port).then_some(transfer_port)
}

/// As [`tftp_steered`], for an untagged IPv6 frame to `dst` (no extension headers).
#[inline(always)]
pub(crate) fn tftp_steered6(dst: &[u8], dport: u16) -> Option<bool> {
    let steer = TFTP_STEER.get(0)?;
    if steer.enabled6 == 0 || dst != steer.server_ip6 {
        return None;
    }
    tftp_port(steer, dport)
}

/// A fully validated, classified client request: what the reply cache lookup needs.
pub struct Classified {
    pub class: ClientClass,
    pub msg_type: u8,
    /// Option 93, or `None`.
    pub arch: Option<u16>,
    pub vlan: bool,
    pub chaddr: [u8; 6],
    pub xid: [u8; 4],
    pub flags: [u8; 2],
    pub ciaddr: [u8; 4],
    pub giaddr: [u8; 4],
    /// The IPv4 header (no options) and the UDP length, for checksum verification.
    pub ip_hdr: [u8; 20],
    pub udp_len: u16,
    pub udp_csum: u16,
}

/// Parses one frame and counts what it is. `Err` carries the counter of the reason it stopped.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Frame, Counter> {
    // Ethernet, with at most one 802.1Q / 802.1ad tag.
    let eth = unsafe { *bytes_at::<ETH_HLEN>(ctx, 0).map_err(|_| Counter::NotDhcp)? };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = unsafe { *bytes_at::<VLAN_HLEN>(ctx, ETH_HLEN)? };
        ethertype = be16([tag[2], tag[3]]);
        l3 = ETH_HLEN + VLAN_HLEN;
        bump(Counter::VlanTagged);
    }
    if ethertype == ETH_P_IPV6 {
        return dhcp6::classify6(ctx, l3);
    }
    if ethertype != ETH_P_IP {
        return Err(Counter::NotDhcp);
    }

    // IPv4 + UDP. Read both at once: DHCP clients send no IP options.
    let hdrs = unsafe { *bytes_at::<{ IPV4_HLEN + UDP_HLEN }>(ctx, l3)? };
    if hdrs[0] >> 4 != 4 {
        return Err(Counter::MalformedIp);
    }
    if hdrs[9] != IPPROTO_UDP {
        return Err(Counter::NotDhcp);
    }
    if hdrs[0] != 0x45 {
        // IP options: legal, never sent by DHCP clients; not parsed here.
        let ihl_ok = hdrs[0] & 0x0f > 5;
        return Err(if ihl_ok { Counter::Unsupported } else { Counter::MalformedIp });
    }
    // Lengths first, for every frame we act on: the TFTP engine gets only frames whose IPv4
    // total length covers the headers and lies inside the frame.
    let frame_len = ctx.data_end() - ctx.data();
    let ip_len = be16([hdrs[2], hdrs[3]]) as usize;
    let dport = be16([hdrs[22], hdrs[23]]);
    if ip_len < IPV4_HLEN + UDP_HLEN {
        return Err(Counter::MalformedIp);
    }
    if l3 + ip_len > frame_len {
        return Err(Counter::Truncated);
    }
    if dport != DHCP_SERVER_PORT {
        let whole = be16([hdrs[6], hdrs[7]]) & 0x3fff == 0;
        if l3 == ETH_HLEN && whole {
            if let Some(transfer_port) = tftp_steered(&hdrs) {
                return Ok(Frame::Tftp { transfer_port });
            }
        }
        return Err(Counter::NotDhcp);
    }
    let frag = be16([hdrs[6], hdrs[7]]);
    if frag & 0x3fff != 0 {
        // More-fragments set or a non-zero offset: a fragment cannot be classified alone.
        return Err(Counter::MalformedIp);
    }
    let udp_len = be16([hdrs[24], hdrs[25]]) as usize;
    if udp_len > ip_len - IPV4_HLEN {
        return Err(Counter::Truncated);
    }
    if udp_len < UDP_HLEN + BOOTP_OPTIONS_OFF + 1 {
        return Err(Counter::MalformedBootp);
    }

    // BOOTP fixed header: only requests from Ethernet clients, with the DHCP cookie.
    let bootp_off = l3 + IPV4_HLEN + UDP_HLEN;
    let head = unsafe { *bytes_at::<4>(ctx, bootp_off)? };
    if head[bootp::OP] != wire::BOOTREQUEST {
        return Err(Counter::BootReply);
    }
    if head[bootp::HTYPE] != wire::HTYPE_ETHER || head[bootp::HLEN] != 6 {
        return Err(Counter::MalformedBootp);
    }
    let fixed = unsafe { *bytes_at::<{ bootp::CHADDR + 6 }>(ctx, bootp_off)? };
    let giaddr = [fixed[bootp::GIADDR], fixed[bootp::GIADDR + 1], fixed[bootp::GIADDR + 2], fixed[bootp::GIADDR + 3]];
    let magic = unsafe { *bytes_at::<4>(ctx, bootp_off + bootp::MAGIC)? };
    if magic != DHCP_MAGIC {
        return Err(Counter::MalformedBootp);
    }

    let opts_len = udp_len - UDP_HLEN - BOOTP_OPTIONS_OFF;
    if opts_len > SCRATCH_LEN {
        return Err(Counter::Unsupported);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::Unsupported)?;
    let scratch = unsafe { &mut *scratch };
    load_options(ctx, bootp_off + BOOTP_OPTIONS_OFF, opts_len, scratch)?;
    walk_options(scratch, opts_len)?;

    let f = &scratch.facts;
    if f.overload != 0 {
        // Options continue in sname/file (option 52): not walked here.
        return Err(Counter::Unsupported);
    }
    if f.msg_type == 0 {
        return Err(Counter::MalformedOptions);
    }
    let vendor = match f.vendor {
        1 => VendorClass::PxeClient,
        2 => VendorClass::HttpClient,
        _ => VendorClass::None,
    };
    let class =
        ClientClass::classify(f.ipxe_user_class != 0, f.ipxe_encap != 0, vendor, f.has_arch != 0);
    bump(Counter::for_message_type(f.msg_type));
    if giaddr != [0; 4] {
        bump(Counter::Relayed);
    }
    bump(Counter::for_class(class));
    let arch = if f.has_arch != 0 { Some(f.arch) } else { None };
    bump(Counter::for_arch(arch));
    let at4 = |o: usize| [fixed[o], fixed[o + 1], fixed[o + 2], fixed[o + 3]];
    Ok(Frame::Dhcp(Classified {
        class,
        msg_type: f.msg_type,
        arch,
        vlan: l3 != ETH_HLEN,
        chaddr: [
            fixed[bootp::CHADDR],
            fixed[bootp::CHADDR + 1],
            fixed[bootp::CHADDR + 2],
            fixed[bootp::CHADDR + 3],
            fixed[bootp::CHADDR + 4],
            fixed[bootp::CHADDR + 5],
        ],
        xid: at4(bootp::XID),
        flags: [fixed[bootp::FLAGS], fixed[bootp::FLAGS + 1]],
        ciaddr: at4(bootp::CIADDR),
        giaddr,
        ip_hdr: [
            hdrs[0], hdrs[1], hdrs[2], hdrs[3], hdrs[4], hdrs[5], hdrs[6], hdrs[7], hdrs[8], hdrs[9],
            hdrs[10], hdrs[11], hdrs[12], hdrs[13], hdrs[14], hdrs[15], hdrs[16], hdrs[17], hdrs[18], hdrs[19],
        ],
        udp_len: udp_len as u16,
        udp_csum: be16([hdrs[26], hdrs[27]]),
    }))
}

/// Copies `len` (1..=SCRATCH_LEN) option bytes from the frame into the scratch buffer.
#[inline(always)]
pub(crate) fn load_options(ctx: &XdpContext, off: usize, len: usize, s: &mut Scratch) -> Result<(), Counter> {
    // Re-derive the bound in a form the verifier tracks on the register passed to the helper.
    let len = (len as u32) & (SCRATCH_LEN as u32 * 2 - 1);
    if len == 0 || len > SCRATCH_LEN as u32 {
        return Err(Counter::MalformedBootp);
    }
    let rc = unsafe {
        bpf_xdp_load_bytes(ctx.ctx, off as u32, s.opts.as_mut_ptr() as *mut _, len)
    };
    if rc != 0 { Err(Counter::Truncated) } else { Ok(()) }
}

#[inline(always)]
pub fn byte(s: &Scratch, i: usize) -> u8 {
    s.opts[i & MASK]
}

/// Walk status kept in [`Scratch::walk`].
const WALK_RUNNING: u32 = 0;
const WALK_END: u32 = 1;

/// Walks the option area: records message type, the iPXE markers, option 60's kind and option
/// 93's first architecture. Every entry must lie inside the area and the area must end in END.
///
/// One option per `bpf_loop` iteration: the verifier checks the callback once instead of every
/// iteration of an open-coded loop, and the walk's state lives in map memory, which it does not
/// track, so no combination of facts multiplies its work.
#[inline(always)]
fn walk_options(s: &mut Scratch, len: usize) -> Result<(), Counter> {
    s.facts = Facts {
        msg_type: 0,
        ipxe_user_class: 0,
        ipxe_encap: 0,
        vendor: 0,
        has_arch: 0,
        overload: 0,
        arch: 0,
        client_id_off: 0,
        client_id_len: 0,
        relay_info: 0,
        requested_ip: [0; 4],
        server_id: [0; 4],
        has_requested_ip: 0,
        has_server_id: 0,
        duplicate: 0,
        has_client_id: 0,
        seen: 0,
    };
    s.walk = Walk { pos: 0, len: len as u32, status: WALK_RUNNING, _pad: 0 };
    let step: extern "C" fn(u32, *mut c_void) -> i64 = walk_step;
    unsafe { bpf_loop(MAX_OPTIONS, step as *mut c_void, core::ptr::null_mut(), 0) };
    match s.walk.status {
        WALK_END => Ok(()),
        WALK_RUNNING => Err(Counter::Unsupported), // more than MAX_OPTIONS entries
        _ => Err(Counter::MalformedOptions),
    }
}

/// One `bpf_loop` iteration: consumes the option at `walk.pos`. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn walk_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return 1 };
    let s = unsafe { &mut *s };
    let (i, len) = (s.walk.pos as usize, s.walk.len as usize);
    let stop = |s: &mut Scratch, status: u32| {
        s.walk.status = status;
        1
    };
    if i >= len {
        return stop(s, WALK_MALFORMED); // ran off the end without END
    }
    let code = byte(s, i);
    if code == opt::END {
        return stop(s, WALK_END);
    }
    if code == opt::PAD {
        s.walk.pos = (i + 1) as u32;
        return 0;
    }
    if i + 2 > len {
        return stop(s, WALK_MALFORMED);
    }
    let olen = byte(s, i + 1) as usize;
    let data = i + 2;
    if data + olen > len || record_option(s, code, data, olen).is_err() {
        return stop(s, WALK_MALFORMED);
    }
    s.walk.pos = (data + olen) as u32;
    0
}

const WALK_MALFORMED: u32 = 2;

#[inline(always)]
fn record_option(s: &mut Scratch, code: u8, data: usize, olen: usize) -> Result<(), Counter> {
    let mut k = 0;
    while k < TRACKED.len() {
        if TRACKED[k] == code {
            if s.facts.seen & (1 << k) != 0 {
                s.facts.duplicate = 1;
            }
            s.facts.seen |= 1 << k;
        }
        k += 1;
    }
    match code {
        opt::MESSAGE_TYPE => {
            if olen != 1 {
                return Err(Counter::MalformedOptions);
            }
            s.facts.msg_type = byte(s, data);
        }
        opt::USER_CLASS => {
            // Raw "iPXE" (what iPXE sends) or the RFC 3004 length-prefixed form "\x04iPXE".
            let skip = if olen == 5 && byte(s, data) == 4 { 1 } else { 0 };
            if olen == 4 + skip
                && byte(s, data + skip) == b'i'
                && byte(s, data + skip + 1) == b'P'
                && byte(s, data + skip + 2) == b'X'
                && byte(s, data + skip + 3) == b'E'
            {
                s.facts.ipxe_user_class = 1;
            }
        }
        opt::IPXE_ENCAP => s.facts.ipxe_encap = 1,
        opt::VENDOR_CLASS => s.facts.vendor = vendor_kind(s, data, olen),
        opt::CLIENT_ARCH => {
            if olen < 2 || olen % 2 != 0 {
                return Err(Counter::MalformedOptions);
            }
            s.facts.has_arch = 1;
            s.facts.arch = be16([byte(s, data), byte(s, data + 1)]);
        }
        opt::OVERLOAD => s.facts.overload = 1,
        opt::CLIENT_ID => {
            s.facts.client_id_off = data as u16;
            s.facts.client_id_len = olen as u8;
            s.facts.has_client_id = 1;
        }
        opt::RELAY_INFO => s.facts.relay_info = 1,
        opt::REQUESTED_IP if olen == 4 => {
            s.facts.requested_ip = [byte(s, data), byte(s, data + 1), byte(s, data + 2), byte(s, data + 3)];
            s.facts.has_requested_ip = 1;
        }
        opt::SERVER_ID if olen == 4 => {
            s.facts.server_id = [byte(s, data), byte(s, data + 1), byte(s, data + 2), byte(s, data + 3)];
            s.facts.has_server_id = 1;
        }
        _ => {}
    }
    Ok(())
}

/// 1 = `PXEClient…`, 2 = `HTTPClient…`, 0 = anything else (VendorClass as u8).
#[inline(always)]
pub(crate) fn vendor_kind(s: &Scratch, data: usize, olen: usize) -> u8 {
    if olen >= wire::HTTP_VENDOR_PREFIX.len() && prefix_eq(s, data, &wire::HTTP_VENDOR_PREFIX) {
        VendorClass::HttpClient as u8
    } else if olen >= wire::PXE_VENDOR_PREFIX.len() && prefix_eq(s, data, &wire::PXE_VENDOR_PREFIX) {
        VendorClass::PxeClient as u8
    } else {
        VendorClass::None as u8
    }
}

#[inline(always)]
fn prefix_eq<const N: usize>(s: &Scratch, data: usize, prefix: &[u8; N]) -> bool {
    let mut k = 0;
    while k < N {
        if byte(s, data + k) != prefix[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Loss the lab injects on a link, in units of 1/65536 of the frames (`lab_loss`).
#[map]
static LAB_LOSS: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::with_max_entries(1, 0);

/// The lab's lossy link: drops the configured share of the frames arriving on the client end
/// (tests of retransmission; never attached by the agent).
#[xdp]
pub fn lab_loss(_ctx: XdpContext) -> u32 {
    if lab_lost() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

/// Whether the lab's lossy link loses this frame (`LAB_LOSS`).
#[inline(always)]
fn lab_lost() -> bool {
    let share = LAB_LOSS.get(0).copied().unwrap_or(0);
    let r = unsafe { aya_ebpf::helpers::generated::bpf_get_prandom_u32() } & 0xffff;
    r < share
}

/// Which UDP destination ports the lab's client end hands to the bench's AF_XDP sockets
/// (`lab_client_xsk`): `[lo, hi]`, inclusive; `[0, 0]` hands over nothing.
#[map]
static LAB_CLIENT_PORTS: Array<[u16; 2]> = Array::with_max_entries(1, 0);

/// The bench's AF_XDP sockets on the lab's client end, by RX queue.
#[map]
static LAB_CLIENT_XSKS: XskMap = XskMap::with_max_entries(64, 0);

/// The bench's client end: untagged IPv4/UDP frames (no IP options) to a port in
/// `LAB_CLIENT_PORTS` go to the AF_XDP socket of their queue, so that a load generator receives
/// replies without an skb, a bridge or a socket lookup each; everything else passes. Never
/// attached by the agent.
#[xdp]
pub fn lab_client_xsk(ctx: XdpContext) -> u32 {
    const IP: usize = ETH_HLEN;
    // The lossy link, if the lab has one, comes first (`LAB_LOSS` of this program's load).
    if lab_lost() {
        return xdp_action::XDP_DROP;
    }
    const UDP: usize = IP + 20;
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + UDP + UDP_HLEN > end {
        return xdp_action::XDP_PASS;
    }
    let b = start as *const u8;
    // Bounds checked once above; every read below is inside it.
    let (ethertype, ver_ihl, proto, dport) = unsafe {
        (
            be16(*(b.add(12) as *const [u8; 2])),
            *b.add(IP),
            *b.add(IP + 9),
            be16(*(b.add(UDP + 2) as *const [u8; 2])),
        )
    };
    if ethertype != ETH_P_IP || ver_ihl != 0x45 || proto != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let Some(&[lo, hi]) = LAB_CLIENT_PORTS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if dport < lo || dport > hi || lo == 0 {
        return xdp_action::XDP_PASS;
    }
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    LAB_CLIENT_XSKS.redirect(queue, u64::from(xdp_action::XDP_PASS)).unwrap_or(xdp_action::XDP_PASS)
}

/// Installed by the lab on the client end of a veth pair: a receiving veth needs an XDP program
/// for native-mode XDP_TX frames to be delivered (TOOLCHAIN.md P3).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
