//! The simulated machines' shared DHCP wire: one AF_PACKET socket on the lab's bridge port
//! (each machine has its own MAC, which a kernel socket cannot give it), a classic BPF filter so
//! that only DHCP replies (UDP to port 68) are copied to us, and a receive thread that hands
//! each reply to the machine whose chaddr it carries.

use netboot::frame::parse_udp;
use netboot::mac::MacAddr;
use std::collections::HashMap;
use crate::rawsock::PacketSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// One machine's DHCP replies, as the link routed them to it.
pub type Replies = UnboundedReceiver<Vec<u8>>;

pub struct DhcpLink {
    sock: PacketSocket,
    routes: HashMap<[u8; 6], UnboundedSender<Vec<u8>>>,
    stop: AtomicBool,
}

/// cBPF: IPv4, UDP, not a later fragment, destination port 68.
fn dhcp_reply_filter() -> [libc::sock_filter; 10] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LDH: u16 = 0x28; // ldh [k]
    const LDB: u16 = 0x30; // ldb [k]
    const JEQ: u16 = 0x15; // jeq #k
    const JSET: u16 = 0x45; // jset #k
    const LDXMSH: u16 = 0xb1; // ldx 4*([k]&0xf)
    const LDHX: u16 = 0x48; // ldh [x+k]
    const RET: u16 = 0x06;
    [
        op(LDH, 0, 0, 12),
        op(JEQ, 0, 8, 0x0800),
        op(LDB, 0, 0, 23),
        op(JEQ, 0, 6, 17),
        op(LDH, 0, 0, 20),
        op(JSET, 4, 0, 0x1fff),
        op(LDXMSH, 0, 0, 14),
        op(LDHX, 0, 0, 16),
        op(JEQ, 0, 1, 68),
        op(RET, 0, 0, 0xffff), // accept; the jumps that fail land on the drop after it
    ]
}

impl DhcpLink {
    /// Opens the socket on `dev` (call inside the client namespace); one route per MAC: the
    /// link, and each MAC's receiver of replies, in the order of `macs`.
    pub fn open(dev: &str, macs: &[MacAddr]) -> anyhow::Result<(Arc<DhcpLink>, Vec<Replies>)> {
        let mut filter = dhcp_reply_filter().to_vec();
        filter.push(libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }); // drop
        let sock = PacketSocket::open(dev, Some(&filter))?;
        let mut routes = HashMap::with_capacity(macs.len());
        let mut rxs = Vec::with_capacity(macs.len());
        for m in macs {
            let (tx, rx) = unbounded_channel();
            routes.insert(m.0, tx);
            rxs.push(rx);
        }
        let link = Arc::new(DhcpLink { sock, routes, stop: AtomicBool::new(false) });
        Ok((link, rxs))
    }

    /// Receives and dispatches until [`DhcpLink::stop`] (run on a thread of its own).
    pub fn receive(&self) {
        let mut buf = vec![0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            let Some(n) = self.sock.recv(&mut buf) else { continue };
            let Some(p) = parse_udp(&buf[..n]) else { continue };
            // BOOTP: op 2 (reply); chaddr at 28.
            if p.envelope.src_port != 67 || p.payload.len() < 240 || p.payload[0] != 2 {
                continue;
            }
            let chaddr: [u8; 6] = p.payload[28..34].try_into().expect("6 bytes");
            if let Some(tx) = self.routes.get(&chaddr) {
                let _ = tx.send(p.payload.to_vec());
            }
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Broadcasts a DHCP message from `mac` (0.0.0.0:68 → 255.255.255.255:67), as a client
    /// without an address does.
    pub fn broadcast(&self, mac: MacAddr, payload: &[u8]) {
        let frame = crate::rawsock::dhcp_broadcast(mac, payload);
        // A frame the socket refuses is lost like one dropped on the wire: the machine's
        // retransmission covers it.
        self.sock.send(&frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netboot::frame::UdpEnvelope;
    use std::net::Ipv4Addr;

    /// Runs the filter program over a frame (a tiny cBPF interpreter for the opcodes used).
    fn accepts(frame: &[u8]) -> bool {
        let mut prog = dhcp_reply_filter().to_vec();
        prog.push(libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 });
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |i: usize| frame.get(i).copied().map(u32::from);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                0x28 => a = (byte(i.k as usize).unwrap_or(0) << 8) | byte(i.k as usize + 1).unwrap_or(0),
                0x30 => a = byte(i.k as usize).unwrap_or(0),
                0xb1 => x = 4 * (byte(i.k as usize).unwrap_or(0) & 0xf),
                0x48 => a = (byte((x + i.k) as usize).unwrap_or(0) << 8) | byte((x + i.k) as usize + 1).unwrap_or(0),
                0x15 => pc += if a == i.k { i.jt } else { i.jf } as usize,
                0x45 => pc += if a & i.k != 0 { i.jt } else { i.jf } as usize,
                0x06 => return i.k != 0,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn udp(dst_port: u16) -> Vec<u8> {
        UdpEnvelope {
            src_mac: MacAddr([2; 6]),
            dst_mac: MacAddr([0xff; 6]),
            vlan: None,
            src_ip: Ipv4Addr::new(10, 0, 0, 1),
            dst_ip: Ipv4Addr::BROADCAST,
            src_port: 67,
            dst_port,
            ttl: 64,
        }
        .build(&[0u8; 300])
    }

    #[test]
    fn the_filter_keeps_dhcp_replies_only() {
        assert!(accepts(&udp(68)));
        assert!(!accepts(&udp(69)));
        assert!(!accepts(&udp(67)));
        let mut tcp = udp(68);
        tcp[23] = 6;
        assert!(!accepts(&tcp));
        let mut arp = udp(68);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!accepts(&arp));
        let mut fragment = udp(68);
        fragment[20..22].copy_from_slice(&[0x00, 0x10]);
        assert!(!accepts(&fragment));
    }
}
