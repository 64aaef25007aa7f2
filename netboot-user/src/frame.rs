//! Ethernet / IPv4 / UDP frames: the wire envelope of DHCP and TFTP replies that leave through a
//! packet socket, an AF_XDP ring or the XDP reply cache. Building and parsing are symmetric and
//! the checksums are always computed (never left zero or to offload).
//!
//! Hand-written because the XDP program must produce the same bytes (invariant 2): the reply
//! cache stores frames this module builds, the eBPF side rewrites their fields at the offsets
//! fixed here, and the AF_XDP engine parses every TFTP frame in place on its hot path.

use crate::mac::MacAddr;
use netboot_common::wire::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, UDP_HLEN, VLAN_HLEN};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;

/// The addressing of one UDP datagram on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpEnvelope {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// 802.1Q VLAN id, if the frame is tagged.
    pub vlan: Option<u16>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IPv4 TTL; 64 unless a protocol says otherwise.
    pub ttl: u8,
}

impl UdpEnvelope {
    /// Length of the headers in front of the payload of an untagged frame.
    pub const UNTAGGED_HEADER_LEN: usize = ETH_HLEN + IPV4_HLEN + UDP_HLEN;

    /// Length of the headers in front of the payload.
    pub fn header_len(&self) -> usize {
        Self::UNTAGGED_HEADER_LEN + self.vlan.map_or(0, |_| VLAN_HLEN)
    }

    /// Builds the whole frame around `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; self.header_len() + payload.len()];
        self.write(&mut f, payload);
        f
    }

    /// Writes the whole frame around `payload` at the start of `buf` (a UMEM frame, say);
    /// returns its length, or 0 when it does not fit.
    pub fn write(&self, buf: &mut [u8], payload: &[u8]) -> usize {
        let len = self.header_len() + payload.len();
        let Some(f) = buf.get_mut(..len) else { return 0 };
        f[0..6].copy_from_slice(&self.dst_mac.octets());
        f[6..12].copy_from_slice(&self.src_mac.octets());
        let mut at = 12;
        if let Some(vid) = self.vlan {
            f[at..at + 2].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
            f[at + 2..at + 4].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
            at += VLAN_HLEN;
        }
        f[at..at + 2].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip_at = at + 2;
        let udp_at = ip_at + IPV4_HLEN;
        let total = (IPV4_HLEN + UDP_HLEN + payload.len()) as u16;
        let ip = &mut f[ip_at..udp_at];
        ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, self.ttl, IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[12..16].copy_from_slice(&self.src_ip.octets());
        ip[16..20].copy_from_slice(&self.dst_ip.octets());
        let ip_csum = checksum(&[ip]);
        ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());

        let udp = &mut f[udp_at..];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((UDP_HLEN + payload.len()) as u16).to_be_bytes());
        udp[6..8].fill(0);
        udp[UDP_HLEN..].copy_from_slice(payload);
        let csum = udp_checksum(self.src_ip, self.dst_ip, udp);
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        len
    }
}

/// The addressing of one UDP datagram over IPv6 (untagged, no extension headers): the
/// DHCPv6 replies of the XDP reply cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp6Envelope {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub hop_limit: u8,
}

impl Udp6Envelope {
    pub const HEADER_LEN: usize = ETH_HLEN + IPV6_HLEN + UDP_HLEN;

    /// Builds the whole frame around `payload`, with its UDP checksum.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; Self::HEADER_LEN + payload.len()];
        self.write(&mut f, payload);
        f
    }

    /// Writes the whole frame around `payload` at the start of `buf`; returns its length, or
    /// 0 when it does not fit.
    pub fn write(&self, buf: &mut [u8], payload: &[u8]) -> usize {
        let len = Self::HEADER_LEN + payload.len();
        let Some(f) = buf.get_mut(..len) else { return 0 };
        f[0..6].copy_from_slice(&self.dst_mac.octets());
        f[6..12].copy_from_slice(&self.src_mac.octets());
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let udp_len = (UDP_HLEN + payload.len()) as u16;
        let ip = &mut f[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
        ip.fill(0);
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
        ip[6] = IPPROTO_UDP;
        ip[7] = self.hop_limit;
        ip[8..24].copy_from_slice(&self.src_ip.octets());
        ip[24..40].copy_from_slice(&self.dst_ip.octets());
        let udp = &mut f[ETH_HLEN + IPV6_HLEN..];
        udp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[6..8].fill(0);
        udp[UDP_HLEN..].copy_from_slice(payload);
        let csum = udp6_checksum(self.src_ip, self.dst_ip, udp);
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        len
    }
}

/// A parsed IPv6 frame: the envelope and the UDP payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUdp6<'a> {
    pub envelope: Udp6Envelope,
    pub payload: &'a [u8],
    /// The UDP checksum is right, or in the CHECKSUM_PARTIAL form of a local sender with TX
    /// offload (the pseudo-header sum alone).
    pub checksum_ok: bool,
}

/// Parses an untagged Ethernet / IPv6 / UDP frame (no extension headers); checks lengths.
pub fn parse_udp6(frame: &[u8]) -> Option<ParsedUdp6<'_>> {
    if u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?) != ETH_P_IPV6 {
        return None;
    }
    let ip = frame.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let udp = frame.get(ETH_HLEN + IPV6_HLEN..ETH_HLEN + IPV6_HLEN + payload_len)?;
    let udp_len = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    if udp_len < UDP_HLEN || udp_len != udp.len() {
        return None;
    }
    let addr = |r: std::ops::Range<usize>| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[r]).expect("16 bytes"));
    let (src_ip, dst_ip) = (addr(8..24), addr(24..40));
    let stored = u16::from_be_bytes([udp[6], udp[7]]);
    let len = (udp.len() as u32).to_be_bytes();
    let partial = !checksum(&[&src_ip.octets(), &dst_ip.octets(), &len, &[0, 0, 0, IPPROTO_UDP]]);
    let sum_ok = checksum(&[&src_ip.octets(), &dst_ip.octets(), &len, &[0, 0, 0, IPPROTO_UDP], udp]) == 0;
    let mac = |r: std::ops::Range<usize>| MacAddr(frame[r].try_into().expect("6 bytes"));
    Some(ParsedUdp6 {
        envelope: Udp6Envelope {
            dst_mac: mac(0..6),
            src_mac: mac(6..12),
            src_ip,
            dst_ip,
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            hop_limit: ip[7],
        },
        payload: &udp[UDP_HLEN..],
        checksum_ok: stored != 0 && (sum_ok || stored == partial),
    })
}

/// The UDP checksum over IPv6 of `udp` (header with a zero checksum field, then payload);
/// never zero (RFC 8200 §8.1).
pub fn udp6_checksum(src: Ipv6Addr, dst: Ipv6Addr, udp: &[u8]) -> u16 {
    let len = (udp.len() as u32).to_be_bytes();
    match checksum(&[&src.octets(), &dst.octets(), &len, &[0, 0, 0, IPPROTO_UDP], udp]) {
        0 => 0xffff,
        c => c,
    }
}

/// A parsed frame: the envelope and where the payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUdp<'a> {
    pub envelope: UdpEnvelope,
    /// Offset of the UDP header in the frame.
    pub udp_offset: usize,
    pub payload: &'a [u8],
}

/// Parses an Ethernet (optionally 802.1Q) / IPv4 / UDP frame. Checks lengths and the IPv4
/// header checksum; IP options are skipped.
pub fn parse_udp(frame: &[u8]) -> Option<ParsedUdp<'_>> {
    let mut at = ETH_HLEN;
    let mut ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    let mut vlan = None;
    if ethertype == ETH_P_8021Q {
        let tag = frame.get(14..18)?;
        vlan = Some(u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff);
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        at += VLAN_HLEN;
    }
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = frame.get(at..at + IPV4_HLEN)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HLEN || ip[9] != IPPROTO_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ip_all = frame.get(at..at + total)?;
    // A total length below the header length is a hostile or broken frame, not a short read.
    if checksum(&[ip_all.get(..ihl)?]) != 0 {
        return None;
    }
    let udp = ip_all.get(ihl..)?;
    let udp_len = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    if udp_len < UDP_HLEN || udp_len > udp.len() {
        return None;
    }
    let mac = |r: std::ops::Range<usize>| MacAddr(frame[r].try_into().expect("6 bytes"));
    Some(ParsedUdp {
        envelope: UdpEnvelope {
            dst_mac: mac(0..6),
            src_mac: mac(6..12),
            vlan,
            src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst_ip: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            src_port: u16::from_be_bytes([udp[0], udp[1]]),
            dst_port: u16::from_be_bytes([udp[2], udp[3]]),
            ttl: ip[8],
        },
        udp_offset: at + ihl,
        payload: &udp[UDP_HLEN..udp_len],
    })
}

/// Whether the UDP checksum of a frame parsed by [`parse_udp`] is right (0 = not computed),
/// or in the CHECKSUM_PARTIAL form a local sender with TX offload leaves (a veth, a VM's tap):
/// the sum of the pseudo-header alone, which the kernel stack accepts from such a sender.
pub fn udp_checksum_ok(frame: &[u8]) -> bool {
    let Some(p) = parse_udp(frame) else { return false };
    let udp = &frame[p.udp_offset..p.udp_offset + UDP_HLEN + p.payload.len()];
    let stored = u16::from_be_bytes([udp[6], udp[7]]);
    let (src, dst) = (p.envelope.src_ip, p.envelope.dst_ip);
    stored == 0 || pseudo_sum(src, dst, udp) == 0xffff || stored == partial_checksum(src, dst, udp.len())
}

/// The UDP checksum field as a sender with checksum offload leaves it: the folded sum of the
/// pseudo-header only (not complemented), for the hardware to finish.
pub fn partial_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> u16 {
    let len = (udp_len as u16).to_be_bytes();
    !checksum(&[&src.octets(), &dst.octets(), &[0, IPPROTO_UDP], &len])
}

/// The UDP checksum of `udp` (header with a zero checksum field, then payload).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    match !pseudo_sum(src, dst, udp) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        c => c,
    }
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let len = (udp.len() as u16).to_be_bytes();
    !checksum(&[&src.octets(), &dst.octets(), &[0, IPPROTO_UDP], &len, udp])
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each even-length except
/// possibly the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let sum: u32 = parts.iter().map(|p| ones_sum(p)).sum();
    !fold(u64::from(sum))
}

/// The 16-bit one's-complement sum of `b` as big-endian words (a trailing odd byte padded with
/// zero), folded. Eight bytes at a time in native order with end-around carry: RFC 1071's
/// sum is independent of byte order up to one swap at the end.
fn ones_sum(b: &[u8]) -> u32 {
    let mut words = b.chunks_exact(8);
    let mut acc: u64 = 0;
    for w in &mut words {
        let (s, carry) = acc.overflowing_add(u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        acc = s + u64::from(carry);
    }
    let native = fold(acc);
    let mut sum = u32::from(u16::from_be(native));
    let mut halves = words.remainder().chunks_exact(2);
    for h in &mut halves {
        sum += u32::from(u16::from_be_bytes([h[0], h[1]]));
    }
    if let [last] = halves.remainder() {
        sum += u32::from(*last) << 8;
    }
    u32::from(fold(u64::from(sum)))
}

/// Folds a one's-complement accumulator to 16 bits.
fn fold(mut x: u64) -> u16 {
    while x >> 16 != 0 {
        x = (x & 0xffff) + (x >> 16);
    }
    x as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vlan: Option<u16>) -> UdpEnvelope {
        UdpEnvelope {
            src_mac: "02:00:00:00:00:01".parse().unwrap(),
            dst_mac: MacAddr([0xff; 6]),
            vlan,
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 67,
            dst_port: 68,
            ttl: 64,
        }
    }

    #[test]
    fn build_then_parse_is_identity_with_valid_checksums() {
        for vlan in [None, Some(42)] {
            let payload: Vec<u8> = (0..301u32).map(|i| i as u8).collect();
            let f = env(vlan).build(&payload);
            assert_eq!(f.len(), env(vlan).header_len() + payload.len());
            let p = parse_udp(&f).unwrap();
            assert_eq!(p.envelope, env(vlan));
            assert_eq!(p.payload, &payload[..]);
            assert!(udp_checksum_ok(&f));
        }
    }

    #[test]
    fn ipv6_build_then_parse_is_identity_and_a_corrupted_or_partial_checksum_is_told() {
        let e = Udp6Envelope {
            src_mac: "02:00:00:00:00:01".parse().unwrap(),
            dst_mac: "02:00:00:00:00:02".parse().unwrap(),
            src_ip: "fd00:77::1".parse().unwrap(),
            dst_ip: "fe80::5054:ff:fe00:9".parse().unwrap(),
            src_port: 61000,
            dst_port: 1024,
            hop_limit: 64,
        };
        let payload: Vec<u8> = (0..517u32).map(|i| i as u8).collect();
        let f = e.build(&payload);
        assert_eq!(f.len(), Udp6Envelope::HEADER_LEN + payload.len());
        let p = parse_udp6(&f).unwrap();
        assert_eq!((p.envelope, p.payload, p.checksum_ok), (e, &payload[..], true));
        let mut bad = f.clone();
        bad[Udp6Envelope::HEADER_LEN + 3] ^= 1;
        assert!(!parse_udp6(&bad).unwrap().checksum_ok);
        // What a sender with TX offload leaves: the pseudo-header sum alone.
        let mut partial = f.clone();
        let len = ((UDP_HLEN + payload.len()) as u32).to_be_bytes();
        let field = !checksum(&[&e.src_ip.octets(), &e.dst_ip.octets(), &len, &[0, 0, 0, IPPROTO_UDP]]);
        partial[ETH_HLEN + IPV6_HLEN + 6..ETH_HLEN + IPV6_HLEN + 8].copy_from_slice(&field.to_be_bytes());
        assert!(parse_udp6(&partial).unwrap().checksum_ok);
        assert!(parse_udp6(&f[..f.len() - 1]).is_none(), "truncated");
    }

    #[test]
    fn checksum_is_the_16_bit_ones_complement_sum_however_the_parts_are_split() {
        let naive = |b: &[u8]| {
            let mut sum: u32 = 0;
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            !(sum as u16)
        };
        let data: Vec<u8> = (0..1501u32).map(|i| (i * 151 + i / 7) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 20, 301, 1500, 1501] {
            let d = &data[..len];
            assert_eq!(checksum(&[d]), naive(d), "len {len}");
            // Split at every even offset (what callers do: pseudo-header, then segment).
            for cut in (0..=len).step_by(2).take(40) {
                assert_eq!(checksum(&[&d[..cut], &d[cut..]]), naive(d), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn corrupted_frames_are_rejected() {
        let mut f = env(None).build(b"hello");
        f[ETH_HLEN + 8] ^= 1; // TTL: the IPv4 header checksum catches it
        assert!(parse_udp(&f).is_none());
        let mut f = env(None).build(b"hello");
        let n = f.len();
        f[n - 1] ^= 1;
        assert!(!udp_checksum_ok(&f));
        assert!(parse_udp(&f[..30]).is_none());
    }

    #[test]
    fn any_total_length_and_header_length_is_parsed_without_panic() {
        // Issue 13: a total length below the header length once panicked the AF_XDP thread.
        let good = env(None).build(b"hello");
        for ihl in 0..16u8 {
            for total in 0..=good.len() as u16 + 4 {
                let mut f = good.clone();
                f[ETH_HLEN] = 0x40 | ihl;
                f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
                let _ = parse_udp(&f);
                let _ = udp_checksum_ok(&f);
                for cut in [0, 13, 14, 33, 34, 41, f.len() - 1] {
                    let _ = parse_udp(&f[..cut]);
                }
            }
        }
    }

    #[test]
    fn the_checksum_partial_form_is_accepted_and_nothing_else_wrong() {
        let mut f = env(None).build(b"hello, offload");
        let udp_at = env(None).header_len() - UDP_HLEN;
        let udp_len = f.len() - udp_at;
        let partial = partial_checksum(env(None).src_ip, env(None).dst_ip, udp_len);
        f[udp_at + 6..udp_at + 8].copy_from_slice(&partial.to_be_bytes());
        assert!(udp_checksum_ok(&f));
        f[udp_at + 7] ^= 1;
        assert!(!udp_checksum_ok(&f));
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (checksum = !ddf2).
        assert_eq!(checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
    }
}
