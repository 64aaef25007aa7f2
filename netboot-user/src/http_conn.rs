//! HTTP/1.1 connections of `http.listen`, served here rather than by hyper so that a file's
//! bytes go from the page cache to the socket with sendfile(2) (hyper can only write bytes it
//! holds). Each request head is parsed with httparse, the request answered by the same axum
//! router as the control socket, and the response written back: keep-alive (iPXE fetches its
//! script, kernel and initrd over one connection), HEAD, `Expect: 100-continue`, bodies of
//! known length as they are, others chunked.

use crate::http_files::{SendFile, SendFileOk};
use crate::http_listener::{LimitedListener, LimitedStream, PeerAddr};
use crate::stats::Stats;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tower::ServiceExt;

/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 32 * 1024;
const MAX_HEADERS: usize = 64;
/// A request body larger than this is refused (413). It is read before the router (and its
/// token check) runs, so it is what an anonymous client can make a connection hold: axum's own
/// default body limit, which the handlers' extractors apply anyway.
const MAX_BODY: u64 = 2 * 1024 * 1024;

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
    let (mut req, head_len) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if buf.len() > MAX_HEAD {
            return Err(Stop::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"));
        }
        if io.read_buf(buf).await? == 0 {
            return Err(Stop::Closed);
        }
    };
    buf.advance(head_len);
    let keep_alive = wants_keep_alive(&req);
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
    if body_len > 0 {
        let expects = req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects && buf.is_empty() {
            io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        while (buf.len() as u64) < body_len {
            if io.read_buf(buf).await? == 0 {
                return Err(Stop::Closed);
            }
        }
        *req.body_mut() = Body::from(buf.split_to(body_len as usize).freeze());
    }
    let method = req.method().clone();
    let version = req.version();
    req.extensions_mut().insert(ConnectInfo(peer));
    if io.can_send_file() {
        req.extensions_mut().insert(SendFileOk);
    }
    let resp = match app.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    respond(io, resp, method == Method::HEAD, version, keep_alive, stats).await
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
