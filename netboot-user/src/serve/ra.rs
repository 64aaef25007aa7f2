//! IPv6 router advertisements that end a booting client's IPv6 wait (`dhcp.ipv6_ra`).
//!
//! iPXE configures IPv6 beside DHCPv4 and waits for a router advertisement before it goes on
//! (about 13 s in Debian's build when none comes). We answer each router solicitation on the
//! boot interface with an advertisement that says nothing: router lifetime 0 (not a default
//! router, RFC 4861 §4.2), no prefix information (no addresses), M and O clear (no DHCPv6).
//! iPXE then finishes its IPv6 configuration at once; an OS learns nothing from it. With
//! `[dhcp6] enabled` the advertisement sets M and O and carries the boot prefix as on-link:
//! firmware and iPXE then run stateful DHCPv6 and reach the server at once.
//!
//! The answer is unicast to the soliciting address (RFC 4861 §6.2.6 allows it), so that a
//! thousand nodes booting at once do not each receive a thousand multicast advertisements; a
//! solicitation from the unspecified address is answered by multicast to all nodes, at most
//! once per [`MIN_MULTICAST_GAP`] (RFC 4861 §6.2.6 MIN_DELAY_BETWEEN_RAS).

use crate::config::Config;
use crate::iface::Interface;
use crate::mac::MacAddr;
use crate::stats::Stats;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

pub const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
pub const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const NDP_OPT_SOURCE_LL: u8 = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
pub const MIN_MULTICAST_GAP: Duration = Duration::from_secs(3);

/// Whether `msg` (an ICMPv6 message, from its type byte) received with `hop_limit` is a valid
/// router solicitation (RFC 4861 §6.1.1; the kernel has verified the checksum).
pub fn is_router_solicitation(msg: &[u8], hop_limit: Option<u8>) -> bool {
    if msg.len() < 8 || msg[0] != ICMPV6_ROUTER_SOLICITATION || msg[1] != 0 || hop_limit != Some(255) {
        return false;
    }
    // Options: each at least 8 bytes (length in units of 8, never 0), none past the end.
    let mut i = 8;
    while i < msg.len() {
        let Some(&units) = msg.get(i + 1) else { return false };
        if units == 0 {
            return false;
        }
        i += usize::from(units) * 8;
    }
    i == msg.len()
}

const NDP_OPT_PREFIX_INFO: u8 = 3;
const RA_FLAG_MANAGED: u8 = 0x80;
const RA_FLAG_OTHER: u8 = 0x40;
const PREFIX_FLAG_ON_LINK: u8 = 0x80;

/// The advertisement: router lifetime 0, our link-layer address; with `managed` (`[dhcp6]` on)
/// M and O set and that prefix as on-link (L=1, A=0: addresses come from DHCPv6, not SLAAC),
/// so that firmware starts DHCPv6 and reaches the server without waiting for a route.
pub fn router_advertisement(mac: MacAddr, managed: Option<ipnet::Ipv6Net>, prefix_lifetime: u32) -> Vec<u8> {
    let mut m = vec![0u8; 24];
    m[0] = ICMPV6_ROUTER_ADVERTISEMENT;
    // [1] code 0, [2..4] checksum (the kernel computes it), [4] cur hop limit 0 (unspecified),
    // [5] flags, [6..8] router lifetime 0, [8..12] reachable 0, [12..16] retrans 0.
    m[16] = NDP_OPT_SOURCE_LL;
    m[17] = 1;
    m[18..24].copy_from_slice(&mac.0);
    if let Some(p) = managed {
        m[5] = RA_FLAG_MANAGED | RA_FLAG_OTHER;
        // RFC 4861 §4.6.2: type, length 4 (32 bytes), prefix length, flags, valid and
        // preferred lifetimes, reserved, prefix.
        let mut opt = [0u8; 32];
        opt[0] = NDP_OPT_PREFIX_INFO;
        opt[1] = 4;
        opt[2] = p.prefix_len();
        opt[3] = PREFIX_FLAG_ON_LINK;
        opt[4..8].copy_from_slice(&prefix_lifetime.to_be_bytes());
        opt[8..12].copy_from_slice(&prefix_lifetime.to_be_bytes());
        opt[16..32].copy_from_slice(&p.network().octets());
        m.extend_from_slice(&opt);
    }
    m
}

/// A raw ICMPv6 socket on one interface that sees router solicitations only.
pub struct Responder {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
    mac: MacAddr,
    stats: Arc<Stats>,
    last_multicast: Option<Instant>,
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T, what: &str) -> std::io::Result<()> {
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), std::mem::size_of::<T>() as libc::socklen_t)
    };
    check(rc, what)
}

impl Responder {
    /// Opens the socket on `iface` (must run inside a tokio runtime).
    pub fn open(iface: &Interface, stats: Arc<Stats>) -> std::io::Result<Responder> {
        let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMPV6) };
        check(raw, "ICMPv6 socket")?;
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(iface.name.as_str()).map_err(std::io::Error::other)?;
        let rc = unsafe {
            libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, name.as_ptr().cast(), name.as_bytes_with_nul().len() as u32)
        };
        check(rc, "SO_BINDTODEVICE")?;
        // Only router solicitations reach us (a set bit blocks a type).
        let mut filter = [u32::MAX; 8];
        filter[usize::from(ICMPV6_ROUTER_SOLICITATION) >> 5] &= !(1u32 << (ICMPV6_ROUTER_SOLICITATION & 31));
        const ICMP6_FILTER: libc::c_int = 1;
        setsockopt(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter, "ICMP6_FILTER")?;
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &1i32, "IPV6_RECVHOPLIMIT")?;
        // RFC 4861 §6.1.2: advertisements are sent with hop limit 255 (receivers check it).
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &255i32, "IPV6_UNICAST_HOPS")?;
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &255i32, "IPV6_MULTICAST_HOPS")?;
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &0i32, "IPV6_MULTICAST_LOOP")?;
        let join = libc::ipv6_mreq { ipv6mr_multiaddr: libc::in6_addr { s6_addr: ALL_ROUTERS.octets() }, ipv6mr_interface: iface.index };
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &join, "joining ff02::2")?;
        // SAFETY: the fd is owned by the AsyncFd from here on and closed only when it drops.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| std::io::Error::other(format!("ICMPv6 socket: {e}")))?;
        Ok(Responder { fd, ifindex: iface.index, mac: iface.mac, stats, last_multicast: None })
    }

    /// Answers solicitations until `shutdown` changes, while the current config says
    /// `dhcp.ipv6_ra = true` (a reload switches it either way).
    pub async fn run(mut self, configs: watch::Receiver<Arc<Config>>, mut shutdown: watch::Receiver<bool>) {
        let mut buf = [0u8; 1500];
        loop {
            let got = tokio::select! {
                r = self.fd.readable() => match r {
                    Ok(mut guard) => match guard.try_io(|fd| recv_with_hop_limit(fd.get_ref(), &mut buf)) {
                        Ok(r) => r,
                        Err(_would_block) => continue,
                    },
                    Err(e) => { tracing::warn!("IPv6 RA responder stopped: {e}"); return; }
                },
                _ = shutdown.changed() => return,
            };
            let (n, from, hop_limit) = match got {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("ICMPv6 recv: {e}");
                    continue;
                }
            };
            let ra = {
                let cfg = configs.borrow();
                if !cfg.dhcp.ipv6_ra {
                    self.stats.bump("ra_solicitations_ignored");
                    continue;
                }
                let managed = cfg.dhcp6.prefix().filter(|_| cfg.dhcp6.enabled);
                router_advertisement(self.mac, managed, cfg.dhcp6.lease_time.0.as_secs().min(u64::from(u32::MAX)) as u32)
            };
            if !is_router_solicitation(&buf[..n], hop_limit) {
                self.stats.bump("ra_invalid_solicitations");
                continue;
            }
            self.stats.bump("ra_solicitations");
            let to = if from.is_unspecified() {
                if self.last_multicast.is_some_and(|t| t.elapsed() < MIN_MULTICAST_GAP) {
                    self.stats.bump("ra_rate_limited");
                    continue;
                }
                self.last_multicast = Some(Instant::now());
                ALL_NODES
            } else {
                from
            };
            match self.send_to(&ra, to) {
                Ok(()) => {
                    self.stats.bump("ra_sent");
                    tracing::debug!(%to, "router advertisement sent");
                }
                Err(e) => {
                    self.stats.bump("ra_send_errors");
                    tracing::debug!(%to, "router advertisement: {e}");
                }
            }
        }
    }

    fn send_to(&self, ra: &[u8], to: Ipv6Addr) -> std::io::Result<()> {
        let dst = SocketAddrV6::new(to, 0, 0, self.ifindex);
        let sa = libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: dst.ip().octets() },
            sin6_scope_id: dst.scope_id(),
        };
        let rc = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                ra.as_ptr().cast(),
                ra.len(),
                libc::MSG_DONTWAIT,
                (&sa as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// One datagram: its length, source address and the IPv6 hop limit it arrived with.
fn recv_with_hop_limit(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, Ipv6Addr, Option<u8>)> {
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut hop_limit = None;
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_HOPLIMIT {
            let v = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
            hop_limit = u8::try_from(v).ok();
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n as usize, Ipv6Addr::from(from.sin6_addr.s6_addr), hop_limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_nothing_but_our_address() {
        let ra = router_advertisement(MacAddr([2, 0, 0, 0, 0, 9]), None, 3600);
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "M and O clear: no DHCPv6");
        assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 0, "router lifetime 0: not a default router");
        // The only option is the source link-layer address: no prefix information (type 3).
        assert_eq!(&ra[16..], &[1, 1, 2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn with_dhcp6_the_advertisement_is_managed_and_the_prefix_on_link() {
        let ra = router_advertisement(MacAddr([2, 0, 0, 0, 0, 9]), Some("fd00:77::/64".parse().unwrap()), 3600);
        assert_eq!(ra[5], 0xc0, "M and O set");
        assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 0, "still not a default router");
        let p = &ra[24..];
        assert_eq!((p[0], p[1], p[2], p[3]), (3, 4, 64, 0x80), "prefix information, on-link, not autonomous");
        assert_eq!(u32::from_be_bytes(p[4..8].try_into().unwrap()), 3600);
        assert_eq!(&p[16..], &"fd00:77::".parse::<Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn solicitations_are_validated() {
        // iPXE's: header and a source link-layer address option.
        let rs = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 1];
        assert!(is_router_solicitation(&rs, Some(255)));
        assert!(is_router_solicitation(&rs[..8], Some(255)), "no options");
        assert!(!is_router_solicitation(&rs, Some(64)), "forwarded: hop limit below 255");
        assert!(!is_router_solicitation(&rs, None));
        let mut bad = rs;
        bad[9] = 0;
        assert!(!is_router_solicitation(&bad, Some(255)), "option length 0");
        bad[9] = 2;
        assert!(!is_router_solicitation(&bad, Some(255)), "option past the end");
        bad = rs;
        bad[1] = 1;
        assert!(!is_router_solicitation(&bad, Some(255)), "code must be 0");
        assert!(!is_router_solicitation(&rs[..7], Some(255)));
    }
}
