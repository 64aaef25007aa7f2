//! Many TFTP reads at once from one process in the lab's client namespace: the efficient
//! client of the tests and the bench (one process per transfer, as with tftp-hpa or curl,
//! makes the client the bottleneck). Each transfer has its own UDP socket (its TID), driven by
//! the sans-IO client core.

use super::Lab;
use netboot::tftp::client::{ClientStep, ClientTransfer, Request};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Fetched {
    pub data: Vec<u8>,
    pub elapsed: Duration,
    pub retransmits: u64,
    pub error: Option<String>,
}

/// Runs `n` reads of `req` against `server` (port 69) concurrently; each gives up after
/// `give_up` without progress.
pub fn fetch_many(lab: &Lab, server: SocketAddr, req: &Request, n: usize, give_up: Duration) -> anyhow::Result<Vec<Fetched>> {
    raise_fd_limit(n as u64 + 256);
    let sockets: Vec<UdpSocket> = lab.client.run(move || -> std::io::Result<Vec<UdpSocket>> {
        (0..n)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect()
    })??;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for s in sockets {
            let req = req.clone();
            tasks.push(tokio::spawn(async move { fetch(tokio::net::UdpSocket::from_std(s)?, server, &req, give_up).await }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await??);
        }
        Ok(out)
    })
}

/// One read of `req` from `server` on `sock` (a fresh socket: its port is the transfer's TID).
pub async fn fetch(sock: tokio::net::UdpSocket, server: SocketAddr, req: &Request, give_up: Duration) -> anyhow::Result<Fetched> {
    let t0 = Instant::now();
    let rrq = req.rrq();
    sock.send_to(&rrq, server).await?;
    let mut c = ClientTransfer::new(t0);
    let mut peer: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65536];
    // A client's own retry timer: the server's is shorter, so this rarely fires.
    let retry = Duration::from_millis(1000);
    let fail = |c: &ClientTransfer, e: String| Fetched { data: Vec::new(), elapsed: t0.elapsed(), retransmits: c.retransmits, error: Some(e) };
    loop {
        let r = tokio::time::timeout(retry, sock.recv_from(&mut buf)).await;
        let now = Instant::now();
        let step = match r {
            Ok(Ok((len, from))) => {
                if *peer.get_or_insert(from) != from {
                    continue; // another TID
                }
                c.on_packet(&buf[..len], now)
            }
            Ok(Err(e)) => return Ok(fail(&c, e.to_string())),
            Err(_) => {
                if c.idle_for(now) >= give_up || t0.elapsed() >= give_up * 4 {
                    return Ok(fail(&c, "timed out".into()));
                }
                c.on_timeout(&rrq, now)
            }
        };
        let to = peer.unwrap_or(server);
        match step {
            ClientStep::Send(p) => {
                sock.send_to(&p, to).await?;
            }
            ClientStep::Done(p) => {
                sock.send_to(&p, to).await?;
                let retransmits = c.retransmits;
                return Ok(Fetched { data: std::mem::take(&mut c.data), elapsed: t0.elapsed(), retransmits, error: None });
            }
            ClientStep::Failed(e) => return Ok(fail(&c, e)),
            ClientStep::Wait => {}
        }
    }
}

/// One socket per transfer: lift the soft open-file limit (often 1024) towards the hard one.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}
