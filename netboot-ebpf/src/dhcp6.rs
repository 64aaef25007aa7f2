//! DHCPv6 requests: parse and classify (the reply is `reply6`'s).
//!
//! Only what a client sends straight to the link is parsed: untagged or tagged Ethernet, an
//! IPv6 header whose next header is UDP (DHCPv6 clients send no extension headers), port 547.
//! The options are walked one per `bpf_loop` iteration, as in v4, and what the reply depends
//! on is recorded in per-CPU scratch ([`Facts6`]).

use crate::{Frame, SCRATCH, Scratch, be16, bump, byte, bytes_at, load_options};

use core::ffi::c_void;
use aya_ebpf::{helpers::generated::bpf_loop, programs::XdpContext};
use netboot_common::{
    Counter, SCRATCH_LEN,
    cache6::{self, opt6},
    wire::{self, ClientClass, IPPROTO_UDP, UDP_HLEN, VendorClass},
};

pub const IPV6_HLEN: usize = 40;
/// Message type and transaction id.
const DHCP6_HLEN: usize = 4;
/// Most options walked before giving up as `unsupported`.
const MAX_OPTIONS6: u32 = 64;

/// What the option walk found.
#[repr(C)]
pub struct Facts6 {
    pub client_id_off: u16,
    pub client_id_len: u16,
    pub server_id_off: u16,
    pub server_id_len: u16,
    pub arch: u16,
    pub has_client_id: u8,
    pub has_server_id: u8,
    pub has_arch: u8,
    /// IA_NA options seen (counted up to 2).
    pub ia_na: u8,
    /// IA_TA or IA_PD seen: the core's answer may depend on them one day; not cached.
    pub other_ia: u8,
    pub rapid: u8,
    pub ipxe: u8,
    /// `VendorClass` as u8, from the one vendor class item.
    pub vendor: u8,
    /// A user or vendor class option with other than one item: its meaning is the core's.
    pub odd_class: u8,
    pub duplicate: u8,
    pub iaid: [u8; 4],
    pub enterprise: [u8; 4],
    /// Bit per option of [`TRACKED6`] seen so far.
    pub seen: u32,
}

/// Options whose repetition makes a request ineligible.
const TRACKED6: [u16; 6] = [opt6::CLIENT_ID, opt6::SERVER_ID, opt6::RAPID_COMMIT, opt6::USER_CLASS, opt6::VENDOR_CLASS, opt6::CLIENT_ARCH];

/// A parsed DHCPv6 request: what the cache lookup and the checks need (in scratch).
#[repr(C)]
pub struct Classified6 {
    pub class: ClientClass,
    pub msg_type: u8,
    pub has_arch: u8,
    pub vlan: u8,
    pub arch: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub xid: [u8; 3],
    pub _pad: u8,
    pub src_ip: [u8; 16],
    pub dst_ip: [u8; 16],
    pub udp_len: u16,
    pub udp_csum: u16,
}

impl Classified6 {
    pub fn arch(&self) -> Option<u16> {
        if self.has_arch != 0 { Some(self.arch) } else { None }
    }
}

/// Parses the IPv6 frame whose network header is at `l3`.
#[inline(always)]
pub fn classify6(ctx: &XdpContext, l3: usize) -> Result<Frame, Counter> {
    // Read in place: a copy of the headers would not fit on the program's stack.
    let hdrs = unsafe { &*bytes_at::<{ IPV6_HLEN + UDP_HLEN }>(ctx, l3)? };
    if hdrs[0] >> 4 != 6 {
        return Err(Counter::MalformedIp);
    }
    if hdrs[6] != IPPROTO_UDP {
        return Err(Counter::NotDhcp);
    }
    let frame_len = ctx.data_end() - ctx.data();
    let payload_len = be16([hdrs[4], hdrs[5]]) as usize;
    let dport = be16([hdrs[42], hdrs[43]]);
    if dport != cache6::SERVER_PORT {
        // The TFTP engine's, if the lengths are whole (its parser checks them again).
        if l3 == wire::ETH_HLEN && l3 + IPV6_HLEN + payload_len <= frame_len && payload_len >= UDP_HLEN {
            if let Some(transfer_port) = crate::tftp_steered6(&hdrs[24..40], dport) {
                return Ok(Frame::Tftp { transfer_port });
            }
        }
        return Err(Counter::NotDhcp);
    }
    if l3 + IPV6_HLEN + payload_len > frame_len {
        return Err(Counter::Truncated);
    }
    let udp_len = be16([hdrs[44], hdrs[45]]) as usize;
    if udp_len != payload_len || udp_len < UDP_HLEN + DHCP6_HLEN {
        return Err(Counter::MalformedIp);
    }
    let dhcp = l3 + IPV6_HLEN + UDP_HLEN;
    let head = unsafe { &*bytes_at::<DHCP6_HLEN>(ctx, dhcp)? };
    let eth = unsafe { &*bytes_at::<12>(ctx, 0)? };
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::Unsupported)?;
    let s = unsafe { &mut *scratch };
    // Kept in scratch, not on the stack: the v4 path's stack leaves no room for it.
    let r = &mut s.req6;
    r.class = ClientClass::Plain;
    r.msg_type = head[0];
    r.has_arch = 0;
    r.arch = 0;
    r.vlan = (l3 != wire::ETH_HLEN) as u8;
    r.dst_mac.copy_from_slice(&eth[0..6]);
    r.src_mac.copy_from_slice(&eth[6..12]);
    r.xid = [head[1], head[2], head[3]];
    r.src_ip.copy_from_slice(&hdrs[8..24]);
    r.dst_ip.copy_from_slice(&hdrs[24..40]);
    r.udp_len = udp_len as u16;
    r.udp_csum = be16([hdrs[46], hdrs[47]]);
    if r.msg_type != cache6::SOLICIT && r.msg_type != cache6::REQUEST {
        // Relay messages, RENEW, RELEASE and the rest: the agent's, unparsed.
        bump(Counter::Msg6Other);
        return Ok(Frame::Dhcp6);
    }
    let solicit = r.msg_type == cache6::SOLICIT;
    let opts_len = udp_len - UDP_HLEN - DHCP6_HLEN;
    if opts_len == 0 {
        return Err(Counter::MalformedOptions); // no client identifier
    }
    if opts_len > SCRATCH_LEN {
        return Err(Counter::Unsupported);
    }
    load_options(ctx, dhcp + DHCP6_HLEN, opts_len, s)?;
    walk_options6(s, opts_len)?;
    let f = &s.facts6;
    let vendor = match f.vendor {
        1 => VendorClass::PxeClient,
        2 => VendorClass::HttpClient,
        _ => VendorClass::None,
    };
    let class = ClientClass::classify(f.ipxe != 0, false, vendor, f.has_arch != 0);
    let (has_arch, arch) = (f.has_arch, f.arch);
    s.req6.class = class;
    s.req6.has_arch = has_arch;
    s.req6.arch = arch;
    bump(if solicit { Counter::Msg6Solicit } else { Counter::Msg6Request });
    bump(Counter::for_class(class));
    bump(Counter::for_arch(if has_arch != 0 { Some(arch) } else { None }));
    Ok(Frame::Dhcp6)
}

const WALK_RUNNING: u32 = 0;
const WALK_END: u32 = 1;
const WALK_MALFORMED: u32 = 2;

#[inline(always)]
fn walk_options6(s: &mut Scratch, len: usize) -> Result<(), Counter> {
    s.facts6 = Facts6 {
        client_id_off: 0,
        client_id_len: 0,
        server_id_off: 0,
        server_id_len: 0,
        arch: 0,
        has_client_id: 0,
        has_server_id: 0,
        has_arch: 0,
        ia_na: 0,
        other_ia: 0,
        rapid: 0,
        ipxe: 0,
        vendor: 0,
        odd_class: 0,
        duplicate: 0,
        iaid: [0; 4],
        enterprise: [0; 4],
        seen: 0,
    };
    s.walk.pos = 0;
    s.walk.len = len as u32;
    s.walk.status = WALK_RUNNING;
    let step: extern "C" fn(u32, *mut c_void) -> i64 = walk_step6;
    unsafe { bpf_loop(MAX_OPTIONS6, step as *mut c_void, core::ptr::null_mut(), 0) };
    match s.walk.status {
        WALK_END => Ok(()),
        WALK_RUNNING => Err(Counter::Unsupported),
        _ => Err(Counter::MalformedOptions),
    }
}

/// One option: 2 bytes of code, 2 of length, the data; the options end exactly at the end.
#[inline(never)]
extern "C" fn walk_step6(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else { return 1 };
    let s = unsafe { &mut *s };
    let (i, len) = (s.walk.pos as usize, s.walk.len as usize);
    if i == len {
        s.walk.status = WALK_END;
        return 1;
    }
    if i + 4 > len {
        s.walk.status = WALK_MALFORMED;
        return 1;
    }
    let code = be16([byte(s, i), byte(s, i + 1)]);
    let olen = be16([byte(s, i + 2), byte(s, i + 3)]) as usize;
    let data = i + 4;
    if data + olen > len || !record_option6(s, code, data, olen) {
        s.walk.status = WALK_MALFORMED;
        return 1;
    }
    s.walk.pos = (data + olen) as u32;
    0
}

/// Records one option; false if it is malformed.
#[inline(always)]
fn record_option6(s: &mut Scratch, code: u16, data: usize, olen: usize) -> bool {
    let mut k = 0;
    while k < TRACKED6.len() {
        if TRACKED6[k] == code {
            if s.facts6.seen & (1 << k) != 0 {
                s.facts6.duplicate = 1;
            }
            s.facts6.seen |= 1 << k;
        }
        k += 1;
    }
    let f = &mut s.facts6;
    match code {
        opt6::CLIENT_ID => {
            f.has_client_id = 1;
            f.client_id_off = data as u16;
            f.client_id_len = olen as u16;
        }
        opt6::SERVER_ID => {
            f.has_server_id = 1;
            f.server_id_off = data as u16;
            f.server_id_len = olen as u16;
        }
        opt6::IA_NA => {
            if olen < 12 {
                return false;
            }
            if f.ia_na < 2 {
                f.ia_na += 1;
            }
            let iaid = [byte(s, data), byte(s, data + 1), byte(s, data + 2), byte(s, data + 3)];
            s.facts6.iaid = iaid;
        }
        opt6::IA_TA | opt6::IA_PD => f.other_ia = 1,
        opt6::RAPID_COMMIT => f.rapid = 1,
        opt6::USER_CLASS => {
            // One item, "iPXE" (what iPXE sends); any other content is the core's to judge.
            let one = olen >= 2 && be16([byte(s, data), byte(s, data + 1)]) as usize == olen - 2;
            let ipxe = olen == 6
                && one
                && byte(s, data + 2) == b'i'
                && byte(s, data + 3) == b'P'
                && byte(s, data + 4) == b'X'
                && byte(s, data + 5) == b'E';
            let f = &mut s.facts6;
            if ipxe {
                f.ipxe = 1;
            } else {
                f.odd_class = 1;
            }
        }
        opt6::VENDOR_CLASS => {
            // Enterprise number, then one item: its prefix says PXEClient or HTTPClient.
            if olen < 6 || be16([byte(s, data + 4), byte(s, data + 5)]) as usize != olen - 6 {
                s.facts6.odd_class = 1;
                return true;
            }
            let enterprise = [byte(s, data), byte(s, data + 1), byte(s, data + 2), byte(s, data + 3)];
            let vendor = crate::vendor_kind(s, data + 6, olen - 6);
            s.facts6.enterprise = enterprise;
            s.facts6.vendor = vendor;
        }
        opt6::CLIENT_ARCH => {
            if olen < 2 || olen % 2 != 0 {
                return false;
            }
            let arch = be16([byte(s, data), byte(s, data + 1)]);
            s.facts6.has_arch = 1;
            s.facts6.arch = arch;
        }
        _ => {}
    }
    true
}
