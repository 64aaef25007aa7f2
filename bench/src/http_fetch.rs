//! A file fetched as iPXE fetches it: on a kept-alive HTTP/1.1 connection, read as fast as it
//! comes, checked for its length and its first and last 64 bytes (what the bench's files are
//! made of is known: [`netboot_lab::pattern`]), never held whole (a storm of thousands of
//! machines fetching 40 MiB each would not fit in memory).

use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a file must be.
#[derive(Debug, Clone)]
pub struct Expect {
    pub size: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Expect {
    pub fn of(content: &[u8]) -> Expect {
        let edge = content.len().min(64);
        Expect { size: content.len() as u64, head: content[..edge].to_vec(), tail: content[content.len() - edge..].to_vec() }
    }
}

/// iPXE's largest TCP receive window.
const IPXE_WINDOW: u32 = 256 * 1024;

/// An HTTP/1.1 connection to `authority` ("10.77.0.1:8080").
pub struct Connection {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    authority: String,
}

impl Connection {
    /// Connects with iPXE's receive window: iPXE advertises at most 256 KiB
    /// (`TCP_MAX_WINDOW_SIZE`, src/include/ipxe/tcp.h), where the lab's kernel would autotune
    /// up to megabytes per connection — for thousands of machines in one process, more than
    /// the kernel's TCP memory, whose pressure then drops segments of every flow.
    pub async fn open(authority: &str) -> Result<Connection, String> {
        let err = |e: std::io::Error| format!("connect {authority}: {e}");
        let addr: std::net::SocketAddr = tokio::net::lookup_host(authority).await.map_err(err)?.next().ok_or_else(|| format!("{authority}: no address"))?;
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.map_err(err)?;
        // The kernel doubles it for its bookkeeping and advertises about half: ~IPXE_WINDOW.
        socket.set_recv_buffer_size(IPXE_WINDOW).map_err(err)?;
        let stream = socket.connect(addr).await.map_err(err)?;
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Connection { send, authority: authority.to_string() })
    }

    /// GETs `path` and checks it against `expect`; `bytes` counts what arrives as it arrives.
    /// A 503 with `Retry-After` (a server over its download limit) is [`Fetched::ComeBack`].
    pub async fn fetch(&mut self, path: &str, expect: &Expect, bytes: &AtomicU64) -> Result<Fetched, String> {
        let req = hyper::Request::get(path)
            .header("host", &self.authority)
            .header("user-agent", "iPXE/1.21.1 (netboot-bench)")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = self.send.send_request(req).await.map_err(|e| format!("{path}: {e}"))?;
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if let (hyper::StatusCode::SERVICE_UNAVAILABLE, Some(secs)) = (resp.status(), retry_after) {
            return Ok(Fetched::ComeBack(std::time::Duration::from_secs(secs)));
        }
        if resp.status() != 200 {
            return Err(format!("{path}: HTTP {}", resp.status()));
        }
        let tail_at = expect.size - expect.tail.len() as u64;
        let (mut got, mut head, mut tail) = (0u64, Vec::with_capacity(64), vec![0u8; expect.tail.len()]);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("{path}: {e}"))?;
            let Ok(data) = frame.into_data() else { continue };
            if head.len() < expect.head.len() {
                head.extend_from_slice(&data[..data.len().min(expect.head.len() - head.len())]);
            }
            // The last bytes, wherever they fall.
            let (start, end) = (got, got + data.len() as u64);
            if end > tail_at && end <= expect.size {
                let from = tail_at.max(start);
                tail[(from - tail_at) as usize..(end - tail_at) as usize].copy_from_slice(&data[(from - start) as usize..]);
            }
            got = end;
            bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if got != expect.size || head != expect.head || tail != expect.tail {
            return Err(format!("{path}: {got} bytes of {}, or wrong bytes", expect.size));
        }
        Ok(Fetched::Done)
    }
}

/// How a fetch ended, short of an error.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// Every byte, checked.
    Done,
    /// `503 Service Unavailable` with `Retry-After`: iPXE waits that long and asks again (on a
    /// new connection), within the same `imgfetch` (docs/BENCHMARKS.md, "Admission").
    ComeBack(std::time::Duration),
}
