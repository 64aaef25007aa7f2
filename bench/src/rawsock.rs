//! An AF_PACKET socket on one interface of the lab: whole Ethernet frames in and out, for the
//! storm's machines, which need their own MAC addresses; and the frame of a DHCP broadcast
//! (the DHCP generator's too).

use netboot::frame::UdpEnvelope;
use netboot::mac::MacAddr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A DHCP message from a client without an address, as firmware sends it: 0.0.0.0:68 →
/// 255.255.255.255:67 from `mac`, padded to the 300 bytes of RFC 1542.
pub fn dhcp_broadcast(mac: MacAddr, payload: &[u8]) -> Vec<u8> {
    let mut p = payload.to_vec();
    p.resize(p.len().max(300), 0);
    UdpEnvelope {
        src_mac: mac,
        dst_mac: MacAddr([0xff; 6]),
        vlan: None,
        src_ip: Ipv4Addr::UNSPECIFIED,
        dst_ip: Ipv4Addr::BROADCAST,
        src_port: 68,
        dst_port: 67,
        ttl: 64,
    }
    .build(&p)
}

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// A socket on `dev` (call inside its namespace) receiving every frame that arrives there,
    /// or only those `filter` (classic BPF) accepts. ETH_P_ALL, not ETH_P_IP: `dev` is a bridge
    /// port, and the bridge consumes frames before the protocol-specific taps run. Large
    /// buffers (a storm's burst), and a 50 ms receive timeout so that a reader can stop.
    pub fn open(dev: &str, filter: Option<&[libc::sock_filter]>) -> anyhow::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        anyhow::ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(f) = filter {
            let mut f = f.to_vec();
            let prog = libc::sock_fprog { len: f.len() as u16, filter: f.as_mut_ptr() };
            let rc = unsafe {
                libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&prog as *const libc::sock_fprog).cast(), std::mem::size_of::<libc::sock_fprog>() as u32)
            };
            anyhow::ensure!(rc == 0, "SO_ATTACH_FILTER: {}", std::io::Error::last_os_error());
        }
        let c = std::ffi::CString::new(dev)?;
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
        anyhow::ensure!(ifindex > 0, "no interface {dev}");
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
        anyhow::ensure!(rc == 0, "bind to {dev}: {}", std::io::Error::last_os_error());
        let big: libc::c_int = 64 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&big as *const libc::c_int).cast(), 4) };
        }
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends a whole frame (its destination MAC is its first six bytes).
    pub fn send(&self, frame: &[u8]) -> bool {
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let rc = unsafe {
            libc::sendto(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32)
        };
        rc >= 0
    }

    /// The next frame, or `None` after the receive timeout.
    pub fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then_some(n as usize)
    }
}
