//! What the agent needs to know about its interface: index, MAC and IPv4 addresses. Read
//! through the kernel (ioctl, getifaddrs), not /sys, so it is right inside any network
//! namespace.

use crate::mac::MacAddr;
use anyhow::bail;
use ipnet::Ipv4Net;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    pub ipv4: Vec<Ipv4Net>,
    pub mtu: u32,
}

impl Interface {
    pub fn lookup(name: &str) -> anyhow::Result<Interface> {
        let c = CString::new(name)?;
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            bail!("no such interface: {name}");
        }
        Ok(Interface { name: name.into(), index, mac: hw_addr(name)?, ipv4: ipv4_addrs(name), mtu: mtu(name).unwrap_or(1500) })
    }

    /// The IPv6 address to serve DHCPv6 clients from: `configured`, or the interface's first
    /// global address inside `prefix`.
    pub fn server_ip6(&self, configured: Option<Ipv6Addr>, prefix: Option<ipnet::Ipv6Net>) -> anyhow::Result<Ipv6Addr> {
        if let Some(ip) = configured {
            return Ok(ip);
        }
        let found = ipv6_addrs(self.index).into_iter().find(|a| prefix.is_some_and(|p| p.contains(a)));
        found.ok_or_else(|| anyhow::anyhow!("{} has no IPv6 address inside [dhcp6] prefix: add one or set [server] address6", self.name))
    }

    /// The interface's link-local IPv6 address: the source of DHCPv6 replies to clients on
    /// the link.
    pub fn link_local6(&self) -> Option<Ipv6Addr> {
        ipv6_addrs(self.index).into_iter().find(|a| a.is_unicast_link_local())
    }

    /// The address to serve from: `configured`, or the interface's first IPv4 address.
    pub fn server_ip(&self, configured: Option<Ipv4Addr>) -> anyhow::Result<Ipv4Addr> {
        match (configured, self.ipv4.first()) {
            (Some(ip), _) => Ok(ip),
            (None, Some(net)) => Ok(net.addr()),
            (None, None) => bail!("{} has no IPv4 address: add one or set [server] address", self.name),
        }
    }
}

/// A UDP socket on `addr` bound to the interface `dev` (SO_BINDTODEVICE), non-blocking, for
/// tokio. `many_clients`: it also accepts broadcasts and gets a 16 MiB receive buffer for
/// bursts (the DHCP ports, TFTP port 69).
pub fn udp_socket(dev: &str, addr: std::net::SocketAddr, many_clients: bool) -> anyhow::Result<tokio::net::UdpSocket> {
    use anyhow::Context;
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if many_clients {
        if addr.is_ipv4() {
            s.set_broadcast(true)?;
        }
        // A storm's requests arrive at once: 16 MiB holds ~20,000 of them. FORCE (root) so
        // that net.core.rmem_max does not cap it; the plain option otherwise.
        let size: libc::c_int = 16 << 20;
        let forced = unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const libc::c_int).cast(), 4)
        };
        if forced != 0 {
            s.set_recv_buffer_size(size as usize).ok();
        }
    }
    s.bind_device(Some(dev.as_bytes())).with_context(|| format!("SO_BINDTODEVICE {dev}"))?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into()).with_context(|| format!("cannot bind UDP {addr} on {dev}"))?;
    Ok(tokio::net::UdpSocket::from_std(s.into())?)
}

/// The IPv6 addresses of interface `index` (from /proc/net/if_inet6, which is per network
/// namespace): `ADDR(32 hex) INDEX PREFIXLEN SCOPE FLAGS NAME` per line.
pub fn ipv6_addrs(index: u32) -> Vec<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let addr = u128::from_str_radix(f.next()?, 16).ok()?;
            let idx = u32::from_str_radix(f.next()?, 16).ok()?;
            (idx == index).then(|| Ipv6Addr::from(addr))
        })
        .collect()
}

/// The interface ioctl `request` on `name` (`fill` sets what the request needs besides the
/// name); the filled request.
fn ifreq_ioctl(name: &str, request: libc::c_ulong, fill: impl FnOnce(&mut libc::ifreq)) -> std::io::Result<libc::ifreq> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    fill(&mut req);
    let rc = unsafe { libc::ioctl(fd, request, &mut req) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc != 0 { Err(err) } else { Ok(req) }
}

fn mtu(name: &str) -> Option<u32> {
    let req = ifreq_ioctl(name, libc::SIOCGIFMTU, |_| {}).ok()?;
    Some(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// RX queues of `name` (ETHTOOL_GCHANNELS: combined plus rx-only channels; 1 if it cannot say).
pub fn rx_queues(name: &str) -> u32 {
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx: u32,
        tx: u32,
        other: u32,
        combined: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    let mut ch = Channels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    match ifreq_ioctl(name, libc::SIOCETHTOOL, |r| r.ifr_ifru.ifru_data = (&mut ch as *mut Channels).cast()) {
        Ok(_) => (ch.combined + ch.rx).clamp(1, 64),
        Err(_) => 1,
    }
}

fn hw_addr(name: &str) -> anyhow::Result<MacAddr> {
    let req = ifreq_ioctl(name, libc::SIOCGIFHWADDR, |_| {}).map_err(|e| anyhow::anyhow!("cannot read the MAC address of {name}: {e}"))?;
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(MacAddr(mac))
}

fn ipv4_addrs(name: &str) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || unsafe { CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes() {
            continue;
        }
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        let addr = unsafe { *(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            let m = unsafe { *(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        if let Ok(net) = Ipv4Net::new(ip, prefix) {
            out.push(net);
        }
    }
    unsafe { libc::freeifaddrs(head) };
    out
}

/// IPv4 → MAC of neighbours on an interface, from the kernel's neighbour table (`/proc/net/arp`
/// of this network namespace), re-read at most every 100 ms on a miss and at least every
/// [`NEIGHBOR_REFRESH`] on a hit: the MAC of a DHCP relay (so that replies to it leave as frames
/// identical to the XDP program's), or of a booting node seen only by its address. A relay
/// replaced by another box (a new MAC for its address) is followed within the refresh.
#[derive(Debug, Default)]
pub struct NeighborCache {
    known: std::sync::Mutex<(std::collections::HashMap<Ipv4Addr, MacAddr>, Option<std::time::Instant>)>,
}

/// How long a neighbour's MAC is used before the table is read again.
pub const NEIGHBOR_REFRESH: std::time::Duration = std::time::Duration::from_secs(30);

impl NeighborCache {
    pub fn get(&self, iface: &str, ip: Ipv4Addr) -> Option<MacAddr> {
        self.lookup(ip, std::time::Instant::now(), || read_arp(iface))
    }

    fn lookup(
        &self,
        ip: Ipv4Addr,
        now: std::time::Instant,
        read: impl FnOnce() -> std::collections::HashMap<Ipv4Addr, MacAddr>,
    ) -> Option<MacAddr> {
        let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let age = k.1.map(|t| now.saturating_duration_since(t));
        if let Some(m) = k.0.get(&ip).filter(|_| age.is_some_and(|a| a < NEIGHBOR_REFRESH)) {
            return Some(*m);
        }
        if !k.0.contains_key(&ip) && age.is_some_and(|a| a < std::time::Duration::from_millis(100)) {
            return None;
        }
        k.1 = Some(now);
        k.0 = read();
        k.0.get(&ip).copied()
    }
}

/// Complete entries of `/proc/net/arp` on `iface`.
fn read_arp(iface: &str) -> std::collections::HashMap<Ipv4Addr, MacAddr> {
    let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP address, HW type, Flags, HW address, Mask, Device; flag 0x2 = complete.
            let complete = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()? & 0x2 != 0;
            (complete && *f.get(5)? == iface).then_some(())?;
            Some((f[0].parse().ok()?, f[3].parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod neighbor_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_neighbours_mac_is_read_again_after_the_refresh() {
        let c = NeighborCache::default();
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 0xa]), MacAddr([2, 0, 0, 0, 0, 0xb]));
        let t0 = Instant::now();
        assert_eq!(c.lookup(ip, t0, || [(ip, a)].into()), Some(a));
        // A hit within the refresh does not read the table.
        assert_eq!(c.lookup(ip, t0 + Duration::from_secs(29), || panic!("read on a fresh hit")), Some(a));
        // The relay was replaced: its new MAC after the refresh.
        assert_eq!(c.lookup(ip, t0 + NEIGHBOR_REFRESH, || [(ip, b)].into()), Some(b));
        // A miss reads at most every 100 ms.
        let other = Ipv4Addr::new(10, 0, 0, 3);
        let t1 = t0 + NEIGHBOR_REFRESH + Duration::from_millis(50);
        assert_eq!(c.lookup(other, t1, || panic!("read again within 100 ms")), None);
    }
}
