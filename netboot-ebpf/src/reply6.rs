//! The DHCPv6 fast path: answer a SOLICIT or REQUEST from the DHCPv6 reply cache.
//!
//! eligible → look up → check the request against the entry (source, DUIDs, IAID, vendor
//! enterprise) → copy the template, write the transaction id, recompute the UDP checksum →
//! report a REPLY to the agent → XDP_TX. Anything that does not match exactly goes to the agent.

use crate::reply::{set_udp_checksum, udp_checksum_ok, write_frame};
use crate::{SCRATCH, Scratch, bump, byte};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_ns},
    macros::map,
    maps::{LruHashMap, RingBuf},
    programs::XdpContext,
};
use netboot_common::{
    Counter,
    cache::{AckEvent, NEVER},
    cache6::{self, CACHE6_ENTRIES, Cache6Entry, Cache6Key, DUID_MAX, EVENTS6_BYTES, Reply6Event, TEMPLATE6_MAX, off6},
    wire::ClientClass,
};

#[map]
static REPLY_CACHE6: LruHashMap<Cache6Key, Cache6Entry> = LruHashMap::with_max_entries(CACHE6_ENTRIES, 0);

#[map]
static EVENTS6: RingBuf = RingBuf::with_byte_size(EVENTS6_BYTES, 0);

/// The smallest reply frame: headers, message type, transaction id and a server identifier.
const MIN_FRAME6: usize = off6::OPTIONS + 4;

/// Answers the request `dhcp6::classify6` left in scratch, if the cache can.
pub fn answer(ctx: &XdpContext) -> Result<u32, Counter> {
    let s = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Counter::FastError)? };
    let req = &s.req6;
    let kind = req.msg_type;
    if kind != cache6::SOLICIT && kind != cache6::REQUEST {
        return Ok(xdp_action::XDP_PASS);
    }
    let f = &s.facts6;
    // What the cache holds: one IA_NA, no Rapid Commit, a SOLICIT naming no server and a
    // REQUEST naming one, from a link-local source on the link (relays send RELAY-FORW).
    let link_local = req.src_ip[0] == 0xfe && req.src_ip[1] & 0xc0 == 0x80;
    if req.vlan != 0
        || f.duplicate != 0
        || f.ia_na != 1
        || f.other_ia != 0
        || f.rapid != 0
        || f.odd_class != 0
        || f.has_client_id == 0
        || (f.has_server_id != 0) != (kind == cache6::REQUEST)
        || !link_local
    {
        return Err(Counter::FastIneligible);
    }
    if req.dst_ip != cache6::ALL_DHCP_AGENTS || req.dst_mac != cache6::ALL_DHCP_AGENTS_MAC {
        return Err(Counter::FastNotForUs);
    }
    let key = Cache6Key::new(req.src_mac, req.class, kind, req.arch());
    let entry = unsafe { REPLY_CACHE6.get(&key) }.ok_or(Counter::CacheMiss)?;
    if entry.not_after_ns != NEVER && unsafe { bpf_ktime_get_ns() } > entry.not_after_ns {
        return Err(Counter::FastExpired);
    }
    if !checksum_ok(ctx, s) {
        return Err(Counter::BadChecksum);
    }
    if !matches(s, entry, kind) {
        return Err(Counter::FastMismatch);
    }
    let len = entry.len as usize;
    if len < MIN_FRAME6 || len > TEMPLATE6_MAX {
        return Err(Counter::FastError);
    }
    finish(s, entry, len);
    if kind == cache6::REQUEST && !report(s, entry) {
        return Err(Counter::RingbufFull);
    }
    write_frame(ctx, s, len)?;
    bump(if kind == cache6::REQUEST { Counter::Fast6Reply } else { Counter::Fast6Advertise });
    Ok(xdp_action::XDP_TX)
}

/// Tells the agent of a REPLY to a REQUEST (the binding to write); false if the ring is full.
/// Written in place in the ring: the program's stack has no room for it.
#[inline(always)]
fn report(s: &Scratch, entry: &Cache6Entry) -> bool {
    let Some(mut slot) = EVENTS6.reserve::<Reply6Event>(0) else { return false };
    let ev = slot.as_mut_ptr();
    let req = &s.req6;
    unsafe {
        (*ev).mac = req.src_mac;
        (*ev).class = req.class as u8;
        (*ev).arch1 = AckEvent::encode_arch(req.arch());
        (*ev).iaid = entry.iaid;
        (*ev).ip = entry.ip;
        (*ev).client_id_len = entry.client_id_len;
        (*ev)._pad = [0; 3];
        (*ev).client_id = entry.client_id;
    }
    slot.submit(0);
    true
}

/// The UDP checksum, which IPv6 makes mandatory (RFC 8200 §8.1: zero is invalid).
#[inline(always)]
fn checksum_ok(ctx: &XdpContext, s: &mut Scratch) -> bool {
    let r = &s.req6;
    if r.udp_csum == 0 || r.vlan != 0 {
        return false;
    }
    let udp_len = r.udp_len;
    let p = &mut s.pseudo6;
    p[0..16].copy_from_slice(&s.req6.src_ip);
    p[16..32].copy_from_slice(&s.req6.dst_ip);
    pseudo6_tail(s, udp_len);
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.pseudo6.as_mut_ptr().cast(), 40, 0) };
    udp_checksum_ok::<{ off6::UDP }>(ctx, s, udp_len as usize, sum)
}

/// The IPv6 pseudo-header (RFC 8200 §8.1) after its addresses, in scratch.
#[inline(always)]
fn pseudo6_tail(s: &mut Scratch, udp_len: u16) {
    let p = &mut s.pseudo6;
    p[32..36].copy_from_slice(&u32::from(udp_len).to_be_bytes());
    p[36..39].copy_from_slice(&[0, 0, 0]);
    p[39] = 17;
}

/// Whether the request is the one the entry answers in everything the reply depends on.
#[inline(always)]
fn matches(s: &Scratch, e: &Cache6Entry, kind: u8) -> bool {
    let (f, req) = (&s.facts6, &s.req6);
    if req.src_ip != e.peer || f.iaid != e.iaid {
        return false;
    }
    if req.class == ClientClass::Http && f.enterprise != e.enterprise {
        return false; // the reply echoes it
    }
    if !duid_eq(s, f.client_id_off, f.client_id_len, &e.client_id, e.client_id_len) {
        return false;
    }
    kind != cache6::REQUEST || duid_eq(s, f.server_id_off, f.server_id_len, &e.server_id, e.server_id_len)
}

/// The option data at `off` (`len` bytes) in the scratch copy equals `want[..want_len]`.
#[inline(always)]
fn duid_eq(s: &Scratch, off: u16, len: u16, want: &[u8; DUID_MAX], want_len: u8) -> bool {
    if len != u16::from(want_len) || want_len as usize > DUID_MAX || want_len == 0 {
        return false;
    }
    let base = off as usize;
    let mut k = 0;
    while k < DUID_MAX {
        if k < want_len as usize && byte(s, base + k) != want[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Copies the template into scratch, writes the transaction id, recomputes the UDP checksum.
#[inline(always)]
fn finish(s: &mut Scratch, e: &Cache6Entry, len: usize) {
    s.reply = e.frame;
    let xid = s.req6.xid;
    s.reply[off6::XID..off6::XID + 3].copy_from_slice(&xid);
    let udp_len = len - off6::UDP;
    // Source and destination of the reply: the template's (the destination is the request's
    // source, checked equal).
    let p = &mut s.pseudo6;
    p[0..16].copy_from_slice(&e.frame[off6::IP_SRC..off6::IP_SRC + 16]);
    p[16..32].copy_from_slice(&e.frame[off6::IP_DST..off6::IP_DST + 16]);
    pseudo6_tail(s, udp_len as u16);
    let seed = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.pseudo6.as_mut_ptr().cast(), 40, 0) };
    set_udp_checksum::<{ off6::UDP }>(s, udp_len, seed);
}
