//! The HTTP listener with limits: at most `http.max_connections` connections open (more wait
//! in the listen backlog, where the kernel holds them without costing the agent anything), at
//! most `http.max_connections_per_client` of them from one address (more are closed at once:
//! one host cannot take every place), and a connection that moves no byte in either direction
//! for [`IDLE_TIMEOUT`] is closed (a client that opens connections and sends nothing, or stops
//! reading, does not keep a place).
//!
//! With TLS for the API (`[api] tls_cert`), the same port speaks both: a connection whose first
//! byte opens a TLS handshake record is TLS, any other is plain HTTP (boot clients). Each
//! connection is told apart and its handshake done in a task of its own, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow handshake holds no other connection back.

use crate::stats::Stats;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection may move no byte before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a file being sent may make no progress before the connection is closed: longer,
/// because TCP's own retransmission backoff in a congested storm passes 30 s (1+2+4+8+16 s);
/// nginx's `send_timeout` is the same.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection may take to send its first byte and, if TLS, finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake (RFC 8446 §5.1: ContentType 22).
const TLS_HANDSHAKE: u8 = 22;

pub struct LimitedListener {
    inner: TcpListener,
    /// `None`: unlimited.
    places: Option<Arc<Semaphore>>,
    /// `None`: unlimited.
    per_client: Option<Arc<PerClient>>,
    stats: Arc<Stats>,
    tls: Option<Tls>,
}

/// Connections open per client address, and how many one may have.
struct PerClient {
    limit: u32,
    open: std::sync::Mutex<HashMap<IpAddr, u32>>,
}

/// One connection of a client, counted until it is dropped.
struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let ip = ip.to_canonical(); // an IPv4 client of a dual-stack socket is one client
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot { table: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection holds while open: its place, and its count against its client's limit.
struct Place {
    _place: Option<OwnedSemaphorePermit>,
    _client: Option<ClientSlot>,
}

/// TLS beside plain HTTP: connections told apart (and handshaken) by tasks, handed back here.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    ready_tx: tokio::sync::mpsc::Sender<(LimitedStream, SocketAddr)>,
    ready_rx: tokio::sync::mpsc::Receiver<(LimitedStream, SocketAddr)>,
}

impl LimitedListener {
    /// `max_connections` = 0: unlimited.
    pub fn new(inner: TcpListener, max_connections: u32, stats: Arc<Stats>) -> LimitedListener {
        let places = (max_connections != 0).then(|| Arc::new(Semaphore::new(max_connections as usize)));
        LimitedListener { inner, places, per_client: None, stats, tls: None }
    }

    /// At most `limit` connections open from one address (0 = unlimited).
    pub fn per_client(mut self, limit: u32) -> LimitedListener {
        self.per_client = (limit != 0).then(|| Arc::new(PerClient { limit, open: Default::default() }));
        self
    }

    /// Also speaks TLS with `config` on the same port.
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> LimitedListener {
        let (ready_tx, ready_rx) = tokio::sync::mpsc::channel(1024);
        self.tls = Some(Tls { acceptor: tokio_rustls::TlsAcceptor::from(config), ready_tx, ready_rx });
        self
    }
}

/// A TCP connection with its place.
async fn accept_tcp(inner: &TcpListener, places: &Option<Arc<Semaphore>>, per_client: &Option<Arc<PerClient>>, stats: &Stats) -> (TcpStream, SocketAddr, Place) {
    loop {
        let place = match places {
            Some(p) => {
                if p.available_permits() == 0 {
                    stats.bump("http_connections_waiting_for_a_place");
                }
                Some(p.clone().acquire_owned().await.expect("the semaphore is never closed"))
            }
            None => None,
        };
        match inner.accept().await {
            Ok((stream, addr)) => {
                stats.bump("http_connections");
                let client = match per_client {
                    Some(table) => match table.take(addr.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            // Closed at once; its place goes back with it.
                            stats.bump("http_refused_client_limit");
                            continue;
                        }
                    },
                    None => None,
                };
                let _ = stream.set_nodelay(true);
                return (stream, addr, Place { _place: place, _client: client });
            }
            // Out of descriptors and the like: wait, as axum's own listener does.
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl LimitedStream {
    fn new(stream: Io, stats: Arc<Stats>, place: Place) -> LimitedStream {
        LimitedStream { stream, idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)), stats, _place: place }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Io::Tls(_))
    }
}

/// Tells a connection's protocol by its first byte, does the TLS handshake, hands it back.
async fn sort(tcp: TcpStream, addr: SocketAddr, place: Place, acceptor: tokio_rustls::TlsAcceptor, stats: Arc<Stats>, ready: tokio::sync::mpsc::Sender<(LimitedStream, SocketAddr)>) {
    let mut first = [0u8; 1];
    let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                stats.bump("http_tls_connections");
                Io::Tls(Box::new(tls))
            }
            Ok(Err(e)) => {
                stats.bump("http_tls_handshake_failed");
                tracing::debug!(%addr, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                stats.bump("http_tls_handshake_failed");
                return;
            }
        },
        Ok(Ok(1)) => Io::Plain(tcp),
        // Closed, failed, or silent for the whole timeout.
        _ => {
            stats.bump("http_idle_closed");
            return;
        }
    };
    let _ = ready.send((LimitedStream::new(io, stats, place), addr)).await;
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        let LimitedListener { inner, places, per_client, stats, tls } = self;
        let Some(tls) = tls else {
            let (tcp, addr, place) = accept_tcp(inner, places, per_client, stats).await;
            return (LimitedStream::new(Io::Plain(tcp), stats.clone(), place), addr);
        };
        loop {
            // Both branches are cancel-safe (a place not yet taken, or a connection not yet
            // accepted, stays where it was).
            tokio::select! {
                Some(ready) = tls.ready_rx.recv() => return ready,
                (tcp, addr, place) = accept_tcp(inner, places, per_client, stats) => {
                    tokio::spawn(sort(tcp, addr, place, tls.acceptor.clone(), stats.clone(), tls.ready_tx.clone()));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address and whether it speaks TLS, as `ConnectInfo` of a [`LimitedListener`]
/// connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Connected<IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr { addr: *stream.remote_addr(), tls: stream.io().is_tls() }
    }
}

/// A connection's bytes: plain, or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection holding its place; idle for [`IDLE_TIMEOUT`], it fails with `TimedOut`.
pub struct LimitedStream {
    stream: Io,
    idle: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<Stats>,
    _place: Place,
}

impl LimitedStream {
    fn progressed(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.bump("http_idle_closed");
                Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection"))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// At most this much per turn of a connection: connections take turns at least this often.
/// nginx's `sendfile_max_chunk` default; a socket that takes less ends the turn earlier anyway.
/// Measured against 256 KiB (docs/BENCHMARKS.md): half the sendfile calls, CPU per GiB 0.164
/// against 0.181 s (5 interleaved runs each), fairness unchanged.
const SENDFILE_CHUNK: u64 = 2 * 1024 * 1024;

impl LimitedStream {
    /// Holds partial segments back while on (TCP_CORK), as nginx's `tcp_nopush`: a file's head
    /// and body leave in full segments, and the last one when it is turned off.
    pub fn cork(&self, on: bool) {
        use std::os::fd::AsRawFd;
        if let Io::Plain(tcp) = &self.stream {
            let v: libc::c_int = on.into();
            // SAFETY: a valid socket and an int option of the right size.
            unsafe { libc::setsockopt(tcp.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_CORK, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) };
        }
    }

    /// Sends `len` bytes of `file` from `offset` with sendfile(2), from the page cache to the
    /// socket without a copy through this process; `sent` is told of every step. Plain
    /// connections only (TLS bodies are written as bytes).
    pub async fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64, sent: &(dyn Fn(u64) + Sync)) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let LimitedStream { stream, idle, stats, .. } = self;
        let Io::Plain(tcp) = stream else {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "sendfile on a TLS connection"));
        };
        let (sock, src) = (tcp.as_raw_fd(), file.as_raw_fd());
        let (mut at, end) = (offset, offset + len);
        // The idle deadline moves lazily: progress is noted here, and the timer re-armed only
        // when it fires (re-arming it per call costs a timer-wheel update per chunk). A peer
        // still acknowledging bytes is progress too: a connection whose congestion control
        // slowed it to a crawl (BBR's policer mode after losses does) is slow, not dead.
        let mut progress_at = tokio::time::Instant::now();
        let mut acked = peer_acked(sock);
        idle.as_mut().reset(progress_at + SEND_TIMEOUT);
        while at < end {
            tokio::select! {
                r = tcp.writable() => r?,
                () = idle.as_mut() => {
                    let now_acked = peer_acked(sock);
                    if now_acked > acked {
                        (acked, progress_at) = (now_acked, tokio::time::Instant::now());
                    }
                    if progress_at.elapsed() < SEND_TIMEOUT {
                        idle.as_mut().reset(progress_at + SEND_TIMEOUT);
                        continue;
                    }
                    stats.bump("http_idle_closed");
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection"));
                }
            }
            // Writes until the socket is full or this turn's chunk is sent. A full socket is
            // reported as WouldBlock even after progress, so tokio clears the readiness and the
            // task sleeps at once. A short count is a full socket: asking again would only
            // return EAGAIN (one wasted call per turn, a third of all calls in a storm). The
            // bytes just queued are in flight, so their ACKs wake the task again.
            let mut moved = 0u64;
            let turn = (end - at).min(SENDFILE_CHUNK);
            let step = tcp.try_io(tokio::io::Interest::WRITABLE, || {
                while moved < turn {
                    let mut off = (at + moved) as libc::off_t;
                    let want = turn - moved;
                    // SAFETY: both descriptors are open for the call; `off` is ours.
                    let n = unsafe { libc::sendfile(sock, src, &mut off, want as usize) };
                    match n {
                        0 => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file is shorter than it was")),
                        n if n > 0 => {
                            moved += n as u64;
                            if (n as u64) < want {
                                return Err(std::io::ErrorKind::WouldBlock.into());
                            }
                        }
                        _ => return Err(std::io::Error::last_os_error()),
                    }
                }
                Ok(())
            });
            if moved > 0 {
                at += moved;
                progress_at = tokio::time::Instant::now();
                sent(moved);
            }
            match step {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        idle.as_mut().reset(tokio::time::Instant::now() + SEND_TIMEOUT);
        Ok(())
    }
}

/// Bytes the peer of TCP socket `fd` has acknowledged (TCP_INFO), 0 if it cannot be read.
fn peer_acked(fd: std::os::fd::RawFd) -> u64 {
    // SAFETY: tcp_info is plain data; the kernel writes at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len) };
    if r == 0 { info.tcpi_bytes_acked } else { 0 }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// On loopback, with tokio's clock paused: the idle timeout fires only when nothing else
    /// can happen, whatever this machine's speed.
    #[tokio::test(start_paused = true)]
    async fn one_place_and_an_idle_connection_gives_it_back() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let mut listener = LimitedListener::new(inner, 1, stats.clone());
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut a, _) = listener.accept().await;
        // Bytes move: the connection stays.
        first.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        a.read_exact(&mut buf).await.unwrap();
        // The second waits for the place, in the backlog; the first goes idle and is closed.
        let waiting = tokio::spawn(async move { listener.accept().await });
        let idle = a.read(&mut buf).await;
        assert_eq!(idle.map_err(|e| e.kind()), Err(std::io::ErrorKind::TimedOut));
        assert!(!waiting.is_finished(), "a second connection got a place while the first held it");
        drop(a);
        let (_b, _) = waiting.await.unwrap();
        assert_eq!(stats.snapshot()["http_idle_closed"], 1);
        assert_eq!(stats.snapshot()["http_connections"], 2);
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_connections() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let mut listener = LimitedListener::new(inner, 100, stats.clone()).per_client(2);
        // Two from 127.0.0.1 are accepted; the third is closed at once; another address
        // (127.0.0.2) still gets in.
        let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let _other = other.connect(addr).await.unwrap();
        let (a, _) = listener.accept().await;
        let (_b, _) = listener.accept().await;
        let (_, from) = listener.accept().await;
        assert_eq!(from.ip(), "127.0.0.2".parse::<IpAddr>().unwrap(), "the third of 127.0.0.1 got a connection");
        let mut buf = [0u8; 1];
        assert_eq!(third.read(&mut buf).await.map_err(|e| e.kind()).unwrap_or(0), 0, "the third is closed");
        assert_eq!(stats.snapshot()["http_refused_client_limit"], 1);
        // One closed gives its place back to its client.
        drop(a);
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, from) = listener.accept().await;
        assert_eq!(from.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
