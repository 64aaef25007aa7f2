//! HTTP/1.1 connections of `http.listen`, served here rather than by hyper so that a file's
//! bytes go from the page cache to the socket with sendfile(2) (hyper can only write bytes it
//! holds). Each request head is parsed with httparse, the request answered by the same axum
//! router as the control socket, and the response written back: keep-alive (iPXE fetches its
//! script, kernel and initrd over one connection), HEAD, `Expect: 100-continue`, bodies of
//! known length as they are, others chunked.

use crate::http::files::{SendFile, SendFileOk};
use crate::http::listener::{LimitedListener, LimitedStream, PeerAddr};
use crate::stats::Stats;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio::sync::watch;
use tower::ServiceExt;

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 64;
/// A request body larger than this is refused (413): axum's own default body limit, which the
/// handlers' extractors apply anyway.
const MAX_BODY: u64 = 2 * 1024 * 1024;
/// A request head must be complete this long after its first byte (nginx's
/// `client_header_timeout`): a client sending a byte now and then (slowloris) keeps no place.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A body must arrive at this rate at least, after [`HEAD_TIMEOUT`] of grace.
const MIN_BODY_RATE: u64 = 32 * 1024;

/// Accepts connections until `shutdown`; each is served by a task of its own.
pub async fn serve(mut listener: LimitedListener, app: Router, stats: Arc<Stats>, mut shutdown: watch::Receiver<bool>) {
    use axum::serve::Listener;
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => {
                let peer = PeerAddr { addr, tls: io.is_tls() };
                tokio::spawn(connection(io, peer, app.clone(), stats.clone()));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// A connection's byte stream; a socket of `http.listen` can also send a file itself.
pub trait Socket: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// Whether [`Socket::send_file`] works here (plain TCP: sendfile(2)).
    fn can_send_file(&self) -> bool {
        false
    }

    fn send_file(&mut self, _file: &std::fs::File, _offset: u64, _len: u64, _sent: &(dyn Fn(u64) + Sync)) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        async { Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "this connection cannot send a file itself")) }
    }

    /// Holds partial segments back while on (see [`LimitedStream::cork`]).
    fn cork(&self, _on: bool) {}
}

impl Socket for LimitedStream {
    fn can_send_file(&self) -> bool {
        !self.is_tls()
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64, sent: &(dyn Fn(u64) + Sync)) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        LimitedStream::send_file(self, file, offset, len, sent)
    }

    fn cork(&self, on: bool) {
        LimitedStream::cork(self, on)
    }
}

/// In-memory connections (the fuzz suite drives [`connection`] with them).
impl Socket for tokio::io::DuplexStream {}

/// Why a connection ends early.
enum Stop {
    /// The peer closed (between requests: the normal end) or the socket failed.
    Closed,
    /// A request we refuse with this status, then close.
    Refuse(StatusCode, &'static str),
}

impl From<std::io::Error> for Stop {
    fn from(_: std::io::Error) -> Stop {
        Stop::Closed
    }
}

/// Serves one connection until the peer closes it, or a request is refused.
pub async fn connection<S: Socket>(mut io: S, peer: PeerAddr, app: Router, stats: Arc<Stats>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match exchange(&mut io, &mut buf, peer, &app, &stats).await {
            Ok(true) => {}
            Ok(false) | Err(Stop::Closed) => break,
            Err(Stop::Refuse(status, why)) => {
                stats.bump("http_bad_requests");
                let text = format!("{why}\n");
                let head = format!("HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""), text.len());
                let _ = io.write_all(format!("{head}{text}").as_bytes()).await;
                break;
            }
        }
    }
    let _ = io.shutdown().await;
}

/// One request and its response; whether the connection stays open.
async fn exchange<S: Socket>(io: &mut S, buf: &mut BytesMut, peer: PeerAddr, app: &Router, stats: &Stats) -> Result<bool, Stop> {
    // Between requests the connection's idle timeout applies; once a head has begun, it has
    // HEAD_TIMEOUT to be complete.
    let mut head_deadline = None;
    let (mut req, head_len) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() > MAX_HEAD {
            return Err(Stop::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"));
        }
        if !buf.is_empty() && head_deadline.is_none() {
            head_deadline = Some(Instant::now() + HEAD_TIMEOUT);
        }
        let read = match head_deadline {
            Some(at) => tokio::time::timeout_at(at, io.read_buf(buf)).await.map_err(|_| {
                stats.bump("http_head_timeout");
                Stop::Refuse(StatusCode::REQUEST_TIMEOUT, "request head too slow")
            })?,
            None => io.read_buf(buf).await,
        };
        if read? == 0 {
            return Err(Stop::Closed);
        }
    };
    buf.advance(head_len);
    let mut keep_alive = wants_keep_alive(&req);
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        return Err(Stop::Refuse(StatusCode::LENGTH_REQUIRED, "send the body with Content-Length"));
    }
    let body_len: u64 = match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(Stop::Refuse(StatusCode::BAD_REQUEST, "bad Content-Length"))?,
        None => 0,
    };
    if body_len > MAX_BODY {
        return Err(Stop::Refuse(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"));
    }
    let method = req.method().clone();
    let version = req.version();
    req.extensions_mut().insert(ConnectInfo(peer));
    if io.can_send_file() {
        req.extensions_mut().insert(SendFileOk);
    }
    let resp = if body_len == 0 {
        match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    } else {
        let expects = req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (body, feed) = BodyFeed::new(body_len, expects);
        *req.body_mut() = body;
        let (resp, fed) = feed.run(io, buf, app.clone().oneshot(req), stats).await?;
        // A body the handler did not read (a refused token, no such route) is still on the
        // wire: the connection cannot be read from again.
        keep_alive &= fed;
        resp
    };
    respond(io, resp, method == Method::HEAD, version, keep_alive, stats).await
}

/// A request body read from the connection only as the handler asks for it: the router (and
/// its token check) runs first, so an anonymous client cannot make the agent read and hold
/// a body it would refuse; and the body must keep [`MIN_BODY_RATE`].
struct BodyFeed {
    /// Dropped at the body's end: the handler sees the end when the channel closes.
    tx: Option<tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>>,
    left: u64,
    deadline: Instant,
    expects_continue: bool,
}

impl BodyFeed {
    fn new(len: u64, expects_continue: bool) -> (Body, BodyFeed) {
        // One chunk in flight: the feed reads the next only once the handler took this one.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
        let deadline = Instant::now() + HEAD_TIMEOUT + Duration::from_secs(len / MIN_BODY_RATE);
        (Body::from_stream(chunks), BodyFeed { tx: Some(tx), left: len, deadline, expects_continue })
    }

    /// Runs `handler` while feeding it the body from `buf` and `io`; its response, and
    /// whether the whole body was read.
    async fn run<S: Socket>(
        mut self,
        io: &mut S,
        buf: &mut BytesMut,
        handler: impl std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>>,
        stats: &Stats,
    ) -> Result<(Response<Body>, bool), Stop> {
        tokio::pin!(handler);
        let (mut failed, mut unwanted) = (None, false);
        loop {
            if self.left == 0 || failed.is_some() {
                self.tx = None;
            }
            tokio::select! {
                biased;
                r = &mut handler => {
                    let resp = match r { Ok(r) => r, Err(never) => match never {} };
                    return match failed {
                        Some(stop) => Err(stop),
                        None => Ok((resp, self.left == 0)),
                    };
                }
                permit = async { self.tx.as_ref().expect("guarded").reserve().await }, if self.tx.is_some() && !unwanted => {
                    let Ok(permit) = permit else {
                        unwanted = true; // the request was refused or answered without its body
                        continue;
                    };
                    if buf.is_empty() {
                        if std::mem::take(&mut self.expects_continue) {
                            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                        }
                        match tokio::time::timeout_at(self.deadline, io.read_buf(buf)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            Ok(_) => {
                                permit.send(Err(std::io::ErrorKind::UnexpectedEof.into()));
                                failed = Some(Stop::Closed);
                                continue;
                            }
                            Err(_) => {
                                stats.bump("http_body_timeout");
                                permit.send(Err(std::io::ErrorKind::TimedOut.into()));
                                failed = Some(Stop::Refuse(StatusCode::REQUEST_TIMEOUT, "request body too slow"));
                                continue;
                            }
                        }
                    }
                    let take = (buf.len() as u64).min(self.left) as usize;
                    self.left -= take as u64;
                    permit.send(Ok(buf.split_to(take).freeze()));
                }
            }
        }
    }
}

/// A request parsed from the start of `buf`, and the length of its head; `None` if incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Request<Body>, usize)>, Stop> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let n = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Stop::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")),
        Err(_) => return Err(Stop::Refuse(StatusCode::BAD_REQUEST, "not an HTTP/1 request")),
    };
    let bad = || Stop::Refuse(StatusCode::BAD_REQUEST, "bad request line or header");
    let mut req = Request::builder()
        .method(Method::from_bytes(parsed.method.ok_or_else(bad)?.as_bytes()).map_err(|_| bad())?)
        .uri(parsed.path.ok_or_else(bad)?)
        .version(if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 });
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        req = req.header(name, HeaderValue::from_bytes(h.value).map_err(|_| bad())?);
    }
    Ok(Some((req.body(Body::empty()).map_err(|_| bad())?, n)))
}

fn wants_keep_alive(req: &Request<Body>) -> bool {
    let has = |token: &str| {
        req.headers().get_all(header::CONNECTION).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    match req.version() {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// Writes `resp`; whether the connection stays open.
async fn respond<S: Socket>(io: &mut S, resp: Response<Body>, head_only: bool, version: Version, mut keep_alive: bool, stats: &Stats) -> Result<bool, Stop> {
    let (mut parts, body) = resp.into_parts();
    let sendfile = parts.extensions.remove::<SendFile>();
    let status = parts.status;
    let bodiless = head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let exact = sendfile.as_ref().map(|s| s.len).or_else(|| http_body::Body::size_hint(&body).exact());
    let chunked = !bodiless && exact.is_none() && version == Version::HTTP_11;
    if !bodiless && exact.is_none() && !chunked {
        keep_alive = false; // HTTP/1.0 and no length: the body ends with the connection
    }
    let h = &mut parts.headers;
    h.remove(header::CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    if let (Some(n), false) = (exact, h.contains_key(header::CONTENT_LENGTH)) && !(head_only && n == 0) && status != StatusCode::NOT_MODIFIED {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if chunked {
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    match (keep_alive, version) {
        (false, _) => h.insert(header::CONNECTION, HeaderValue::from_static("close")),
        (true, Version::HTTP_10) => h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive")),
        (true, _) => None,
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or("")).as_bytes());
    for (name, value) in h.iter() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // A file's head and body leave together in full segments; the last one when it is done.
    let corked = sendfile.is_some() && !bodiless;
    if corked {
        io.cork(true);
    }
    io.write_all(&head).await?;
    if bodiless {
        io.flush().await?;
        return Ok(keep_alive);
    }
    if let Some(sf) = sendfile {
        stats.add("http_downloads_active", 1);
        let sent = io.send_file(&sf.file.file, sf.offset, sf.len, &|n| stats.add("http_file_bytes", n)).await;
        if corked {
            io.cork(false);
        }
        stats.sub("http_downloads_active", 1);
        if let Some(done) = &sf.done {
            done(sent.is_ok());
        }
        sent?;
        return Ok(keep_alive);
    }
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(Stop::Closed) };
        let Ok(data) = frame.into_data() else { continue }; // trailers: none sent
        if data.is_empty() {
            continue;
        }
        if chunked {
            io.write_all(format!("{:x}\r\n", data.len()).as_bytes()).await?;
            io.write_all(&data).await?;
            io.write_all(b"\r\n").await?;
        } else {
            io.write_all(&data).await?;
        }
    }
    if chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.flush().await?;
    Ok(keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use tokio::io::DuplexStream;

    /// A router whose one route needs `Authorization: yes` (refused before the body is read,
    /// as the API's token check is) and echoes the body's length.
    fn app() -> Router {
        let guard = axum::middleware::from_fn(|req: axum::extract::Request, next: axum::middleware::Next| async move {
            if req.headers().get(header::AUTHORIZATION).is_some_and(|v| v == "yes") {
                next.run(req).await
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        });
        Router::new().route("/in", post(|body: bytes::Bytes| async move { body.len().to_string() })).layer(guard)
    }

    fn open() -> (DuplexStream, tokio::task::JoinHandle<()>, Arc<Stats>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let stats = Arc::new(Stats::default());
        let peer = PeerAddr { addr: "10.0.0.9:4000".parse().unwrap(), tls: false };
        let task = tokio::spawn(connection(server, peer, app(), stats.clone()));
        (client, task, stats)
    }

    async fn response(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = client.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_sent_a_byte_at_a_time_is_cut_off_after_its_deadline() {
        let (client, task, stats) = open();
        let (mut rx, mut tx) = tokio::io::split(client);
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for b in b"GET /in HTTP/1.1\r\nHost: x\r\n" {
                if tx.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            std::future::pending::<()>().await;
        });
        let mut out = Vec::new();
        let _ = rx.read_to_end(&mut out).await;
        let r = String::from_utf8_lossy(&out);
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        assert_eq!(started.elapsed(), HEAD_TIMEOUT, "the head's deadline runs from its first byte");
        writer.abort();
        assert_eq!(stats.snapshot()["http_head_timeout"], 1);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_not_read_before_the_route_accepts_it() {
        // Refused: the 401 comes back at once though the 2 MiB body never does.
        let (mut client, task, _) = open();
        client.write_all(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n0123456789").await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(1), response(&mut client)).await.expect("no answer before the body was sent");
        assert!(r.starts_with("HTTP/1.1 401") && r.contains("connection: close"), "{r}");
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_accepted_body_is_read_whole() {
        // Accepted, and sent whole: read and answered, the connection kept.
        let (mut client, task, _) = open();
        let body = vec![b'x'; 100_000];
        client.write_all(format!("POST /in HTTP/1.1\r\nHost: x\r\nAuthorization: yes\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).await.unwrap();
        client.write_all(&body).await.unwrap();
        let mut head = [0u8; 64];
        let n = client.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_behind_its_minimum_rate_is_cut_off() {
        // Accepted, then a trickle: 408 once the body is behind its minimum rate.
        let (mut client, task, stats) = open();
        client.write_all(b"POST /in HTTP/1.1\r\nHost: x\r\nAuthorization: yes\r\nContent-Length: 64000\r\n\r\n0123").await.unwrap();
        let started = Instant::now();
        let r = response(&mut client).await;
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        assert_eq!(started.elapsed(), HEAD_TIMEOUT + Duration::from_secs(64000 / MIN_BODY_RATE));
        assert_eq!(stats.snapshot()["http_body_timeout"], 1);
        task.await.unwrap();
    }
}
