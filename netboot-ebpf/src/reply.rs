//! The fast path: answer a classified DISCOVER or REQUEST from the reply cache.
//!
//! look up → check the request against the entry → finish the reply in per-CPU scratch (xid,
//! flags, destination, both checksums) → report an ACK to the agent → resize the frame, write the
//! reply over it → XDP_TX. Anything that does not match exactly goes to the agent.

use crate::{Classified, SCRATCH, Scratch, bump, byte};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    macros::map,
    maps::{LruHashMap, RingBuf},
    programs::XdpContext,
};
use netboot_common::{
    Counter,
    cache::{
        AckEvent, CACHE_ENTRIES, CLIENT_ID_MAX, CacheEntry, CacheKey, EVENTS_BYTES, KIND_ACK,
        KIND_OFFER, NEVER, REQUEST_MAX, TEMPLATE_MAX, off,
    },
    wire::msg,
};

#[map]
static REPLY_CACHE: LruHashMap<CacheKey, CacheEntry> = LruHashMap::with_max_entries(CACHE_ENTRIES, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

const TMASK: usize = TEMPLATE_MAX - 1;
/// The smallest reply frame: headers and a 300-byte BOOTP message.
const MIN_FRAME: usize = off::BOOTP + 300;

/// The cache key of a request (the agent's compiler builds the same with `CacheKey::new`).
#[inline(always)]
fn key(req: &Classified, kind: u8) -> CacheKey {
    CacheKey::new(req.chaddr, req.class, kind, req.arch, req.giaddr)
}

pub fn answer(ctx: &XdpContext, req: &Classified) -> Result<u32, Counter> {
    let kind = match req.msg_type {
        msg::DISCOVER => KIND_OFFER,
        msg::REQUEST => KIND_ACK,
        _ => return Ok(xdp_action::XDP_PASS),
    };
    let s = unsafe { &mut *SCRATCH.get_ptr_mut(0).ok_or(Counter::FastError)? };
    // The cached reply is for an untagged client in INIT/SELECTING/INIT-REBOOT, on the link or
    // behind a relay that adds no option 82 (82 is echoed per request).
    if req.vlan || req.ciaddr != [0; 4] || s.facts.relay_info != 0 || s.facts.duplicate != 0 {
        return Err(Counter::FastIneligible);
    }
    let entry = unsafe { REPLY_CACHE.get(&key(req, kind)) }.ok_or(Counter::CacheMiss)?;
    if entry.not_after_ns != NEVER && unsafe { bpf_ktime_get_ns() } > entry.not_after_ns {
        return Err(Counter::FastExpired);
    }
    // To us or to everyone: the entry's frame leaves from our MAC, and names our address.
    let ip_dst = [req.ip_hdr[16], req.ip_hdr[17], req.ip_hdr[18], req.ip_hdr[19]];
    let dst_mac = unsafe { *crate::bytes_at::<6>(ctx, 0)? };
    let ours_mac = dst_mac == [0xff; 6] || dst_mac == [entry.frame[6], entry.frame[7], entry.frame[8], entry.frame[9], entry.frame[10], entry.frame[11]];
    if !ours_mac || (ip_dst != [0xff; 4] && ip_dst != entry.server_ip) {
        return Err(Counter::FastNotForUs);
    }
    // The kernel would drop a request with a bad checksum: so must we, or we would answer what
    // the agent never sees.
    if !checksums_ok(ctx, s, req) {
        return Err(Counter::BadChecksum);
    }
    if !client_id_matches(s, entry) {
        return Err(Counter::FastMismatch);
    }
    if kind == KIND_ACK {
        // Only an ACK the agent would give: for the entry's address, to us or to nobody named.
        let f = &s.facts;
        if f.has_requested_ip == 0 || f.requested_ip != entry.yiaddr {
            return Err(Counter::FastMismatch);
        }
        if f.has_server_id != 0 && f.server_id != entry.server_ip {
            return Err(Counter::FastMismatch);
        }
    }
    let len = entry.len as usize;
    if len < MIN_FRAME || len > TEMPLATE_MAX {
        return Err(Counter::FastError);
    }
    // A relayed reply goes back to the frame's sender (the relay, or the router before it),
    // whatever MAC it had when the entry was compiled.
    let src_mac = unsafe { *crate::bytes_at::<6>(ctx, 6)? };
    finish(s, entry, req, len, src_mac);

    if kind == KIND_ACK {
        let ev = AckEvent { mac: req.chaddr, class: req.class as u8, arch1: AckEvent::encode_arch(req.arch), ip: entry.yiaddr, xid: u32::from_be_bytes(req.xid) };
        if EVENTS.output::<AckEvent>(&ev, 0).is_err() {
            return Err(Counter::RingbufFull);
        }
    }
    write_frame(ctx, s, len)?;
    bump(if kind == KIND_ACK { Counter::FastAck } else { Counter::FastOffer });
    bump(Counter::for_fast_reply(kind == KIND_ACK, req.class));
    Ok(xdp_action::XDP_TX)
}

/// Verifies the request's IPv4 header checksum and (unless zero) its UDP checksum.
#[inline(always)]
fn checksums_ok(ctx: &XdpContext, s: &mut Scratch, req: &Classified) -> bool {
    let mut ip = req.ip_hdr;
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr().cast(), 20, 0) };
    if fold(sum as u64) != 0 {
        return false;
    }
    if req.udp_csum == 0 {
        return true; // no checksum (RFC 768)
    }
    let p = &mut s.pseudo;
    p[0..8].copy_from_slice(&req.ip_hdr[12..20]);
    p[8] = 0;
    p[9] = 17;
    p[10..12].copy_from_slice(&req.udp_len.to_be_bytes());
    let pseudo = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.pseudo.as_mut_ptr().cast(), 12, 0) };
    udp_checksum_ok::<{ off::UDP }>(ctx, s, req.udp_len as usize, pseudo)
}

/// Verifies the UDP checksum of the `n`-byte segment at `UDP` in the frame, given the sum of
/// its pseudo-header (IPv4 or IPv6).
#[inline(always)]
pub(crate) fn udp_checksum_ok<const UDP: usize>(ctx: &XdpContext, s: &mut Scratch, n: usize, pseudo: i64) -> bool {
    if n < 8 || n > REQUEST_MAX - 4 {
        return false;
    }
    let len = opaque(n as u32) & (REQUEST_MAX as u32 - 1);
    if len == 0 {
        return false;
    }
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, UDP as u32, s.request.as_mut_ptr().cast(), len) } != 0 {
        return false;
    }
    // Zero the bytes up to the next multiple of 4: they are summed too.
    let rmask = REQUEST_MAX - 1;
    s.request[n & rmask] = 0;
    s.request[(n + 1) & rmask] = 0;
    s.request[(n + 2) & rmask] = 0;
    // CHECKSUM_PARTIAL: a local sender with TX offload (a veth, a VM's virtio tap) leaves the
    // pseudo-header sum in the field for hardware that never comes. The kernel stack accepts
    // such a frame; so do we, in exactly that form (any other value is checked in full).
    let partial = (!fold(pseudo as u64)).to_ne_bytes();
    if s.request[6] == partial[0] && s.request[7] == partial[1] {
        bump(Counter::ChecksumPartial);
        return true;
    }
    let mut sum = pseudo;
    let words = (n + 3) & !3;
    let first = opaque(if words > 512 { 512 } else { words as u32 }) & 1023;
    if first > 512 {
        return false;
    }
    sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.request.as_mut_ptr().cast(), first, sum as u32) };
    if words > 512 {
        let rest = opaque((words - 512) as u32) & 511;
        if rest > 0 {
            sum = unsafe {
                bpf_csum_diff(core::ptr::null_mut(), 0, s.request.as_mut_ptr().add(512).cast(), rest as u32, sum as u32)
            };
        }
    }
    fold(sum as u64) == 0
}

/// The request's option 61 must be exactly the one the entry was compiled for.
#[inline(always)]
fn client_id_matches(s: &Scratch, e: &CacheEntry) -> bool {
    let want = e.client_id_len;
    if want == 0 {
        return s.facts.has_client_id == 0; // compiled for a client that sends no 61
    }
    if s.facts.has_client_id == 0 || s.facts.client_id_len != want || want as usize > CLIENT_ID_MAX {
        return false;
    }
    let base = s.facts.client_id_off as usize;
    let mut k = 0;
    while k < CLIENT_ID_MAX {
        if k < want as usize && byte(s, base + k) != e.client_id[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Copies the template into scratch and patches it for this request.
#[inline(always)]
fn finish(s: &mut Scratch, e: &CacheEntry, req: &Classified, len: usize, src_mac: [u8; 6]) {
    s.reply = e.frame;
    let r = &mut s.reply;
    r[off::XID..off::XID + 4].copy_from_slice(&req.xid);
    r[off::FLAGS..off::FLAGS + 2].copy_from_slice(&req.flags);
    if req.giaddr != [0; 4] {
        r[off::ETH_DST..off::ETH_DST + 6].copy_from_slice(&src_mac);
    }
    if req.flags[0] & 0x80 != 0 && req.giaddr == [0; 4] {
        // The client asked for a broadcast reply (RFC 2131 §4.1); a relay is always unicast.
        r[off::ETH_DST..off::ETH_DST + 6].copy_from_slice(&[0xff; 6]);
        r[off::IP_DST..off::IP_DST + 4].copy_from_slice(&[0xff; 4]);
    }
    // IPv4 header checksum.
    r[off::IP_CSUM] = 0;
    r[off::IP_CSUM + 1] = 0;
    let ip = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, r.as_mut_ptr().add(off::IP).cast(), 20, 0) };
    let c = fold(ip as u64);
    r[off::IP_CSUM..off::IP_CSUM + 2].copy_from_slice(&c.to_ne_bytes());

    let udp_len = len - off::UDP;
    let p = &mut s.pseudo;
    p[0..4].copy_from_slice(&s.reply[off::IP + 12..off::IP + 16]);
    p[4..8].copy_from_slice(&s.reply[off::IP_DST..off::IP_DST + 4]);
    p[8] = 0;
    p[9] = 17;
    p[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let seed = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, s.pseudo.as_mut_ptr().cast(), 12, 0) };
    set_udp_checksum::<{ off::UDP }>(s, udp_len, seed);
}

/// Writes the UDP checksum of the reply in scratch (its segment at `UDP`, `udp_len` bytes)
/// over the pseudo-header sum `seed`. The template is zero past its length, so summing up to
/// the next multiple of 4 adds nothing.
#[inline(always)]
pub(crate) fn set_udp_checksum<const UDP: usize>(s: &mut Scratch, udp_len: usize, seed: i64) {
    let r = &mut s.reply;
    r[UDP + 6] = 0;
    r[UDP + 7] = 0;
    let words = opaque(((udp_len + 3) & !3) as u32) & (TMASK as u32);
    // At most the rest of the reply buffer after the UDP header's offset (a multiple of 4).
    let words = if words > (TEMPLATE_MAX - UDP) as u32 & !3 { (TEMPLATE_MAX - UDP) as u32 & !3 } else { words };
    let sum = unsafe {
        bpf_csum_diff(core::ptr::null_mut(), 0, s.reply.as_mut_ptr().add(UDP).cast(), words, seed as u32)
    };
    let mut c = fold(sum as u64);
    if c == 0 {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    s.reply[UDP + 6..UDP + 8].copy_from_slice(&c.to_ne_bytes());
}

/// Hides a value's known range from the optimizer, so that the bounds check written after it
/// stays in the program where the verifier can see it on the register passed to a helper.
#[inline(always)]
pub(crate) fn opaque(x: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&x) }
}

/// One's complement fold of a checksum accumulator to 16 bits, complemented.
#[inline(always)]
pub(crate) fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Resizes the frame to `len` and writes the finished reply over it.
#[inline(always)]
pub(crate) fn write_frame(ctx: &XdpContext, s: &mut Scratch, len: usize) -> Result<(), Counter> {
    let cur = ctx.data_end() - ctx.data();
    let delta = len as i32 - cur as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        // Growing needs tailroom, which a frame built from a small skb (veth) may lack; the
        // headroom XDP guarantees (256 bytes) serves as well: start the frame earlier.
        if delta < 0 || delta > 256 || unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
            return Err(Counter::FastError);
        }
    }
    let n = opaque(len as u32) & (TEMPLATE_MAX as u32 * 2 - 1);
    if n == 0 || n as usize > TEMPLATE_MAX {
        return Err(Counter::FastError);
    }
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, s.reply.as_mut_ptr().cast(), n) } != 0 {
        return Err(Counter::FastError);
    }
    Ok(())
}
