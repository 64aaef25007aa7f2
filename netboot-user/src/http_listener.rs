//! The HTTP listener with limits: at most `http.max_connections` connections open (more wait
//! in the listen backlog, where the kernel holds them without costing the agent anything), and
//! a connection that moves no byte in either direction for [`IDLE_TIMEOUT`] is closed (a
//! client that opens connections and sends nothing, or stops reading, does not keep a place).

use crate::stats::Stats;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection may move no byte before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LimitedListener {
    inner: TcpListener,
    /// `None`: unlimited.
    places: Option<Arc<Semaphore>>,
    stats: Arc<Stats>,
}

impl LimitedListener {
    /// `max_connections` = 0: unlimited.
    pub fn new(inner: TcpListener, max_connections: u32, stats: Arc<Stats>) -> LimitedListener {
        let places = (max_connections != 0).then(|| Arc::new(Semaphore::new(max_connections as usize)));
        LimitedListener { inner, places, stats }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        let place = match &self.places {
            Some(p) => {
                if p.available_permits() == 0 {
                    self.stats.bump("http_connections_waiting_for_a_place");
                }
                Some(p.clone().acquire_owned().await.expect("the semaphore is never closed"))
            }
            None => None,
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    self.stats.bump("http_connections");
                    let idle = Box::pin(tokio::time::sleep(IDLE_TIMEOUT));
                    return (LimitedStream { stream, idle, stats: self.stats.clone(), _place: place }, addr);
                }
                // Out of descriptors and the like: wait, as axum's own listener does.
                Err(e) => {
                    tracing::warn!("http accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The peer's address, as `ConnectInfo` of a [`LimitedListener`] connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection holding its place; idle for [`IDLE_TIMEOUT`], it fails with `TimedOut`.
pub struct LimitedStream {
    stream: TcpStream,
    idle: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<Stats>,
    _place: Option<OwnedSemaphorePermit>,
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
}
