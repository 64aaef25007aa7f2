//! The bench's TFTP client over AF_XDP: many reads at once from one thread, each from its own
//! UDP port of the lab's client address, frames read from and written into the UMEM. The same
//! sans-IO client core as `lab::tftp_fetch` (which uses a kernel socket per transfer and tops
//! out near 200 MiB/s on this machine kind: the kernel's UDP receive path per block, not the
//! server, was the ceiling).
//!
//! The lab's client end hands frames to the transfers' ports to the AF_XDP sockets
//! (`Lab::client_xsk`); everything else (ARP for the client address, which the bridge answers)
//! passes. Frames leave with the bridge's MAC and address, as the kernel's would.

use netboot::frame::{UdpEnvelope, parse_udp};
use netboot::iface::Interface;
use netboot::lab::Lab;
use netboot::lab::tftp_fetch::Fetched;
use netboot::tftp::client::{ClientStep, ClientTransfer, Request};
use netboot::xsk::{Xsk, XskSizes};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// The transfers' ports: `FIRST_PORT + i`, below the kernel's ephemeral range.
const FIRST_PORT: u16 = 10_000;
const MAX_TRANSFERS: usize = 20_000;
/// The client's retry timer (the servers' are shorter, so it rarely fires).
const RETRY: Duration = Duration::from_millis(1000);

struct Read {
    core: ClientTransfer,
    /// The server's port for this transfer (its TID), from its first reply.
    server_port: Option<u16>,
    started: Instant,
    result: Option<Fetched>,
}

/// The client's end of the lab: AF_XDP sockets for the ports of up to `max` transfers.
pub struct XskClient {
    port: netboot::lab::ClientXsk,
    mac: netboot::mac::MacAddr,
    ip: std::net::Ipv4Addr,
    server_mac: netboot::mac::MacAddr,
    max: usize,
}

impl XskClient {
    pub fn open(lab: &Lab, max: usize) -> anyhow::Result<XskClient> {
        anyhow::ensure!((1..=MAX_TRANSFERS).contains(&max), "at most {MAX_TRANSFERS} transfers at once");
        let bridge = lab.client_if.clone();
        let me = lab.client.run(move || Interface::lookup(&bridge))??;
        let ip = me.ipv4.first().map(|n| n.addr()).ok_or_else(|| anyhow::anyhow!("the lab's client end has no address"))?;
        let server_if = lab.server_if.clone();
        let server_mac = lab.server.run(move || Interface::lookup(&server_if))??.mac;
        let last = FIRST_PORT + max as u16 - 1;
        let port = lab.client_xsk(FIRST_PORT..=last, XskSizes { frames: 16384, fill: 8192, ring: 8192 })?;
        Ok(XskClient { port, mac: me.mac, ip, server_mac, max })
    }

    /// Runs `n` reads of `req` from `server` at once; each gives up after `give_up` without
    /// progress.
    pub fn fetch_many(&mut self, server: SocketAddrV4, req: &Request, n: usize, give_up: Duration) -> anyhow::Result<Vec<Fetched>> {
        anyhow::ensure!((1..=self.max).contains(&n), "at most {} transfers at once", self.max);
        let (mac, client_ip, server_mac) = (self.mac, self.ip, self.server_mac);
        let last_port = FIRST_PORT + n as u16 - 1;
        let socks = &mut self.port.socks;
        let envelope = |local: u16, remote: u16| UdpEnvelope {
            src_mac: mac,
            dst_mac: server_mac,
            vlan: None,
            src_ip: client_ip,
            dst_ip: *server.ip(),
            src_port: local,
            dst_port: remote,
            ttl: 64,
        };
        let rrq = req.rrq();
        let t0 = Instant::now();
        let mut reads: Vec<Read> = (0..n).map(|_| Read { core: ClientTransfer::new(t0), server_port: None, started: t0, result: None }).collect();
        for i in 0..n {
            let e = envelope(FIRST_PORT + i as u16, server.port());
            socks[0].push(|buf| e.write(buf, &rrq));
        }
        socks[0].flush();

        let mut left = n;
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let mut out: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut last_scan = Instant::now();
        let mut idle = 0u32;
        while left > 0 {
            let mut received = 0;
            for x in socks.iter_mut() {
                loop {
                    let k = x.recv(|f| frames.push(f.to_vec()));
                    received += k;
                    if k < Xsk::rx_batch() {
                        break;
                    }
                }
            }
            let now = Instant::now();
            for f in frames.drain(..) {
                let Some(p) = parse_udp(&f) else { continue };
                let e = p.envelope;
                if e.src_ip != *server.ip() || e.dst_ip != client_ip || !(FIRST_PORT..=last_port).contains(&e.dst_port) {
                    continue;
                }
                let i = usize::from(e.dst_port - FIRST_PORT);
                let r = &mut reads[i];
                if r.result.is_some() || *r.server_port.get_or_insert(e.src_port) != e.src_port {
                    continue; // done already, or another TID
                }
                let step = r.core.on_packet(p.payload, now);
                if step_of(r, i, step, now, &mut out) {
                    left -= 1;
                }
            }
            // Timers: resend the last ACK (or the RRQ) after RETRY of silence; give up after give_up.
            if last_scan.elapsed() >= Duration::from_millis(20) {
                last_scan = Instant::now();
                for (i, r) in reads.iter_mut().enumerate() {
                    if r.result.is_some() || r.core.idle_for(last_scan) < RETRY {
                        continue;
                    }
                    if r.core.idle_for(last_scan) >= give_up || r.started.elapsed() >= give_up * 4 {
                        r.result = Some(failed(r, "timed out".into()));
                        left -= 1;
                        continue;
                    }
                    let step = r.core.on_timeout(&rrq, last_scan);
                    step_of(r, i, step, last_scan, &mut out);
                }
            }
            for (i, payload) in out.drain(..) {
                let e = envelope(FIRST_PORT + i as u16, reads[i].server_port.unwrap_or(server.port()));
                socks[0].push(|buf| e.write(buf, &payload));
            }
            socks[0].flush();
            if received == 0 {
                idle += 1;
                if idle < 200 {
                    std::thread::yield_now();
                } else {
                    let mut fds: Vec<libc::pollfd> = socks.iter().map(|x| libc::pollfd { fd: x.raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
                }
            } else {
                idle = 0;
            }
        }
        Ok(reads.into_iter().map(|r| r.result.expect("every read ended")).collect())
    }
}

/// Applies a step of read `i`; true when the read ended.
fn step_of(r: &mut Read, i: usize, step: ClientStep, now: Instant, out: &mut Vec<(usize, Vec<u8>)>) -> bool {
    match step {
        ClientStep::Send(p) => out.push((i, p)),
        ClientStep::Wait => {}
        ClientStep::Done(p) => {
            out.push((i, p));
            r.result = Some(Fetched {
                data: std::mem::take(&mut r.core.data),
                elapsed: now - r.started,
                retransmits: r.core.retransmits,
                error: None,
            });
            return true;
        }
        ClientStep::Failed(e) => {
            r.result = Some(failed(r, e));
            return true;
        }
    }
    false
}

fn failed(r: &Read, why: String) -> Fetched {
    Fetched { data: Vec::new(), elapsed: r.started.elapsed(), retransmits: r.core.retransmits, error: Some(why) }
}
