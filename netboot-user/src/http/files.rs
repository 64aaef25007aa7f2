//! Static files under `http.root` (kernels, initrds, iPXE binaries): GET and HEAD, one byte
//! range, ETag / If-None-Match, Last-Modified, confined to the root through symlinks.
//!
//! A storm fetches the same few files thousands of times: they are opened once and kept
//! ([`OpenFiles`]: the descriptor and what `stat` said), checked again with one `stat` at most
//! once per [`RECHECK`], reopened when they changed. On a plain connection of `http.listen`
//! the response carries the open file as a [`SendFile`] and the connection sends it from the
//! page cache with sendfile(2) (the connection, `conn`); elsewhere (TLS, the control socket) the
//! body is read from the same descriptor.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long an open file is served without a `stat` to see whether it changed.
pub const RECHECK: Duration = Duration::from_secs(1);
/// Open files kept, at most (the longest unused are closed first).
const KEPT: usize = 1024;

/// One open file and its identity when opened.
#[derive(Debug)]
pub struct OpenFile {
    pub file: File,
    pub len: u64,
    ino: (u64, u64),
    mtime: SystemTime,
    pub etag: String,
    pub last_modified: String,
}

impl OpenFile {
    fn open(real: &Path) -> std::io::Result<OpenFile> {
        let file = File::open(real)?;
        let m = file.metadata()?;
        if !m.is_file() {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "not a regular file"));
        }
        let mtime = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let nanos = mtime.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Ok(OpenFile {
            len: m.len(),
            ino: (m.dev(), m.ino()),
            etag: format!("\"{:x}-{nanos:x}\"", m.len()),
            last_modified: httpdate::fmt_http_date(mtime),
            mtime,
            file,
        })
    }

    /// Whether `m` (a fresh `stat` of the path) is still this file as opened.
    fn same(&self, m: &std::fs::Metadata) -> bool {
        (m.dev(), m.ino()) == self.ino && m.len() == self.len && m.modified().ok() == Some(self.mtime)
    }
}

struct Kept {
    open: Arc<OpenFile>,
    /// The path it was opened from (confined to the root when opened).
    real: PathBuf,
    checked: Instant,
    used: Instant,
}

/// The open files, by path under the root as requested.
#[derive(Default)]
pub struct OpenFiles {
    kept: Mutex<HashMap<PathBuf, Kept>>,
}

/// Why a path is not served.
pub enum Refusal {
    /// 404.
    NotFound,
    /// 403: outside the root (`..`, or a symlink leading out).
    Outside,
}

impl OpenFiles {
    /// The open file for `rel` (percent-decoded, relative to `root`).
    pub fn get(&self, root: &Path, rel: &str) -> Result<Arc<OpenFile>, Refusal> {
        if rel.split('/').any(|c| c == "..") {
            return Err(Refusal::Outside);
        }
        let key = PathBuf::from(rel);
        let now = Instant::now();
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = kept.get_mut(&key) {
                let recent = now.duration_since(k.checked) < RECHECK;
                if recent || std::fs::metadata(&k.real).is_ok_and(|m| k.open.same(&m)) {
                    if !recent {
                        k.checked = now;
                    }
                    k.used = now;
                    return Ok(k.open.clone());
                }
                kept.remove(&key);
            }
        }
        // Opened outside the lock: a slow disk holds no other request.
        let (Ok(root_real), Ok(real)) = (root.canonicalize(), root.join(rel).canonicalize()) else { return Err(Refusal::NotFound) };
        if !real.starts_with(&root_real) {
            return Err(Refusal::Outside);
        }
        let open = Arc::new(OpenFile::open(&real).map_err(|_| Refusal::NotFound)?);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= KEPT && let Some(oldest) = kept.iter().min_by_key(|(_, k)| k.used).map(|(p, _)| p.clone()) {
            kept.remove(&oldest);
        }
        kept.insert(key, Kept { open: open.clone(), real, checked: now, used: now });
        Ok(open)
    }

    /// Closes every file (a reload may have changed the root).
    pub fn clear(&self) {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The body of a response that the connection sends itself: `len` bytes of `file` from
/// `offset`, with sendfile(2). Present only when the request carried [`SendFileOk`].
#[derive(Clone)]
pub struct SendFile {
    pub file: Arc<OpenFile>,
    pub offset: u64,
    pub len: u64,
    /// Told when the last byte is sent (`true`) or the connection failed first.
    pub done: Option<Arc<dyn Fn(bool) + Send + Sync>>,
}

/// Put on a request by a connection that can send a [`SendFile`] body.
#[derive(Clone, Copy)]
pub struct SendFileOk;

/// `Range: bytes=...` against a file of `len` bytes: `Some(Ok((start, len)))` for one
/// satisfiable range, `Some(Err(()))` for an unsatisfiable one, `None` to send it all (no
/// header, several ranges, or a form not understood: RFC 9110 §14.2 lets a server ignore it).
fn range(headers: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (false, _) => {
            let start: u64 = a.parse().ok()?;
            let end = if b.is_empty() { len.saturating_sub(1) } else { b.parse::<u64>().ok()?.min(len.saturating_sub(1)) };
            if start >= len || end < start {
                return Some(Err(()));
            }
            (start, end)
        }
        (true, true) => return None,
    };
    Some(Ok((start, end - start + 1)))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt" | "ipxe" | "cfg" | "conf" | "sh") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("efi") => "application/efi",
        Some("iso") => "application/x-iso9660-image",
        _ => "application/octet-stream",
    }
}

/// The response for a GET or HEAD of `file` (served at `path`).
pub fn respond(method: &Method, headers: &HeaderMap, path: &str, file: Arc<OpenFile>, sendfile: bool) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET, HEAD")]).into_response();
    }
    let tag = HeaderValue::from_str(&file.etag).expect("hex and quotes");
    let modified = HeaderValue::from_str(&file.last_modified).expect("an HTTP date");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == file.etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag), (header::LAST_MODIFIED, modified)]).into_response();
    }
    // If-Range with another validator: the whole file (RFC 9110 §13.1.5).
    let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == file.etag);
    let (status, offset, len) = match range(headers, file.len).filter(|_| if_range_ok) {
        None => (StatusCode::OK, 0, file.len),
        Some(Ok((start, n))) => (StatusCode::PARTIAL_CONTENT, start, n),
        Some(Err(())) => {
            let all = HeaderValue::from_str(&format!("bytes */{}", file.len)).expect("digits");
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, all)]).into_response();
        }
    };
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(path))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, tag)
        .header(header::LAST_MODIFIED, modified)
        .header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(header::CONTENT_RANGE, format!("bytes {offset}-{}/{}", offset + len - 1, file.len));
    }
    if method == Method::HEAD || len == 0 {
        return r.body(Body::empty()).expect("valid parts");
    }
    if sendfile {
        return r.extension(SendFile { file, offset, len, done: None }).body(Body::empty()).expect("valid parts");
    }
    r.body(Body::from_stream(chunks(file, offset, len))).expect("valid parts")
}

/// The bytes of `file` from `offset`, read 256 KiB at a time off the runtime's threads.
fn chunks(file: Arc<OpenFile>, offset: u64, len: u64) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    const CHUNK: u64 = 256 * 1024;
    futures_util::stream::try_unfold((file, offset, offset + len), |(file, at, end)| async move {
        if at >= end {
            return Ok(None);
        }
        let n = CHUNK.min(end - at) as usize;
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            let r = file.file.read_exact_at(&mut buf, at).map(|_| buf);
            (file, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        Ok(Some((bytes::Bytes::from(buf?), (file, at + n as u64, end))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranged(v: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        range(&h, len)
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(ranged("bytes=0-99", 1000), Some(Ok((0, 100))));
        assert_eq!(ranged("bytes=900-", 1000), Some(Ok((900, 100))));
        assert_eq!(ranged("bytes=-100", 1000), Some(Ok((900, 100))));
        assert_eq!(ranged("bytes=-5000", 1000), Some(Ok((0, 1000))));
        assert_eq!(ranged("bytes=990-5000", 1000), Some(Ok((990, 10))));
        assert_eq!(ranged("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(ranged("bytes=-0", 1000), Some(Err(())));
        assert_eq!(ranged("bytes=5-3", 1000), Some(Err(())));
        assert_eq!(ranged("bytes=0-1,5-6", 1000), None);
        assert_eq!(ranged("items=0-1", 1000), None);
        assert_eq!(ranged("bytes=x-1", 1000), None);
    }
}
