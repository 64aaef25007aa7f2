//! The TFTP file cache: boot files read once and served as shared slices, in the form a
//! transfer sends (octet, or converted once to netascii); a file changed on disk is read again
//! for new transfers (running ones keep the bytes they started with). Files are read outside
//! the lock, and the cache holds at most [`CACHE_BYTES`]: the least recently used go first. A
//! file larger than that is never held whole: octet transfers read it a block at a time
//! ([`Content::File`]), netascii ones are refused (its conversion changes every offset).
//! Every path is confined to the root (invariant 6).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not there (or not a regular file).
    NotFound,
    /// `..`, an absolute path, or a symlink that leaves the root.
    OutsideRoot,
    /// Over [`CACHE_BYTES`] and asked for in netascii.
    TooLarge,
}

/// What a transfer sends: bytes held in memory (cached, or made for the client), or a file
/// too large to hold, read where each block is.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<[u8]>),
    File { file: Arc<std::fs::File>, len: u64 },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `start..end` (within the length); `None` if the file cannot be read whole there
    /// (it shrank, or the disk failed): never a short block, which a client takes for the end.
    pub fn read(&self, start: u64, end: u64) -> Option<std::borrow::Cow<'_, [u8]>> {
        let end = end.min(self.len());
        let start = start.min(end);
        match self {
            Content::Bytes(b) => Some(std::borrow::Cow::Borrowed(&b[start as usize..end as usize])),
            Content::File { file, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; (end - start) as usize];
                file.read_exact_at(&mut buf, start).ok()?;
                Some(std::borrow::Cow::Owned(buf))
            }
        }
    }
}

impl From<Arc<[u8]>> for Content {
    fn from(b: Arc<[u8]>) -> Content {
        Content::Bytes(b)
    }
}

impl From<Vec<u8>> for Content {
    fn from(b: Vec<u8>) -> Content {
        Content::Bytes(b.into())
    }
}

impl From<&[u8]> for Content {
    fn from(b: &[u8]) -> Content {
        Content::Bytes(b.into())
    }
}

/// Bytes the cache keeps at most (boot loaders are 70 KiB to a few MiB; kernels go over HTTP).
pub const CACHE_BYTES: usize = 256 << 20;

/// The form a file is sent in (RFC 1350 modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Octet,
    Netascii,
}

struct Cached {
    bytes: Arc<[u8]>,
    len: u64,
    mtime: Option<SystemTime>,
    /// Use stamp of the last hit, for eviction.
    used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<(PathBuf, Mode), Cached>,
    bytes: usize,
    clock: u64,
}

pub struct FileCache {
    root: PathBuf,
    files: Mutex<Entries>,
}

impl FileCache {
    /// `root` must exist; it is canonicalized once.
    pub fn new(root: &Path) -> std::io::Result<FileCache> {
        Ok(FileCache { root: root.canonicalize()?, files: Mutex::new(Entries::default()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a requested name inside the root, refusing anything that would leave it.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, Refusal> {
        let rel = Path::new(name);
        let mut clean = PathBuf::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => clean.push(p),
                // `/x` is the root's `x`, as tftpd-hpa (`--secure`) and dnsmasq take it: GRUB
                // and many PXE configs name files so.
                Component::CurDir | Component::RootDir => {}
                // `../x` and `C:\x` are refused.
                Component::ParentDir | Component::Prefix(_) => return Err(Refusal::OutsideRoot),
            }
        }
        if clean.as_os_str().is_empty() || name.contains('\0') {
            return Err(Refusal::NotFound);
        }
        let full = self.root.join(&clean);
        // Symlinks are followed only while they stay inside the root.
        let real = full.canonicalize().map_err(|_| Refusal::NotFound)?;
        if !real.starts_with(&self.root) {
            return Err(Refusal::OutsideRoot);
        }
        Ok(real)
    }

    /// The content of `name` in `mode`, from the cache when the file has not changed on disk.
    pub fn get(&self, name: &str, mode: Mode) -> Result<Content, Refusal> {
        let path = self.resolve(name)?;
        let meta = std::fs::metadata(&path).map_err(|_| Refusal::NotFound)?;
        if !meta.is_file() {
            return Err(Refusal::NotFound);
        }
        if meta.len() > CACHE_BYTES as u64 {
            return match mode {
                Mode::Octet => {
                    let file = std::fs::File::open(&path).map_err(|_| Refusal::NotFound)?;
                    Ok(Content::File { file: Arc::new(file), len: meta.len() })
                }
                Mode::Netascii => Err(Refusal::TooLarge),
            };
        }
        let mtime = meta.modified().ok();
        let key = (path, mode);
        {
            let mut files = self.lock();
            let stamp = files.tick();
            if let Some(c) = files.map.get_mut(&key).filter(|c| c.len == meta.len() && c.mtime == mtime) {
                c.used = stamp;
                return Ok(Content::Bytes(c.bytes.clone()));
            }
        }
        // Read (and convert) without the lock: other transfers go on meanwhile.
        let raw = std::fs::read(&key.0).map_err(|_| Refusal::NotFound)?;
        let bytes: Arc<[u8]> = match mode {
            Mode::Octet => raw.into(),
            Mode::Netascii => netascii(&raw).into(),
        };
        let mut files = self.lock();
        let used = files.tick();
        files.insert(key, Cached { bytes: bytes.clone(), len: meta.len(), mtime, used });
        Ok(Content::Bytes(bytes))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Inserts, then evicts the least recently used entries beyond [`CACHE_BYTES`] (a file
    /// larger than that is served but not kept).
    fn insert(&mut self, key: (PathBuf, Mode), c: Cached) {
        self.bytes += c.bytes.len();
        if let Some(old) = self.map.insert(key, c) {
            self.bytes -= old.bytes.len();
        }
        while self.bytes > CACHE_BYTES {
            let Some(oldest) = self.map.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone()) else { break };
            let gone = self.map.remove(&oldest).expect("present");
            self.bytes -= gone.bytes.len();
        }
    }
}

/// RFC 764 netascii: LF → CR LF, CR → CR NUL.
fn netascii(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 16);
    for &c in b {
        match c {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a small file's content is: its bytes, held.
    fn held(r: Result<Content, Refusal>) -> Result<Arc<[u8]>, Refusal> {
        r.map(|c| match c {
            Content::Bytes(b) => b,
            Content::File { .. } => panic!("a small file is held in memory"),
        })
    }

    #[test]
    fn confinement() {
        let base = crate::scratch::ScratchDir::new("tftp-root");
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"hello").unwrap();
        std::fs::write(base.join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", root.join("inside")).unwrap();
        let c = FileCache::new(&root).unwrap();
        assert_eq!(&*held(c.get("sub/a.bin", Mode::Octet)).unwrap(), b"hello");
        assert_eq!(&*held(c.get("./sub/a.bin", Mode::Octet)).unwrap(), b"hello");
        assert_eq!(&*held(c.get("inside", Mode::Octet)).unwrap(), b"hello");
        assert_eq!(held(c.get("../secret", Mode::Octet)), Err(Refusal::OutsideRoot));
        assert_eq!(held(c.get("sub/../../secret", Mode::Octet)), Err(Refusal::OutsideRoot));
        assert_eq!(&*held(c.get("/sub/a.bin", Mode::Octet)).unwrap(), b"hello");
        assert_eq!(held(c.get("/etc/passwd", Mode::Octet)), Err(Refusal::NotFound));
        assert_eq!(held(c.get("/../secret", Mode::Octet)), Err(Refusal::OutsideRoot));
        assert_eq!(held(c.get("escape", Mode::Octet)), Err(Refusal::OutsideRoot));
        assert_eq!(held(c.get("missing", Mode::Octet)), Err(Refusal::NotFound));
        assert_eq!(held(c.get("sub", Mode::Octet)), Err(Refusal::NotFound));
        // A changed file is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("sub/a.bin"), b"hello, again").unwrap();
        assert_eq!(&*held(c.get("sub/a.bin", Mode::Octet)).unwrap(), b"hello, again");
        // The netascii form is converted once and cached beside the octet form.
        std::fs::write(root.join("text"), b"a\nb\r").unwrap();
        assert_eq!(&*held(c.get("text", Mode::Netascii)).unwrap(), b"a\r\nb\r\0");
        assert_eq!(&*held(c.get("text", Mode::Octet)).unwrap(), b"a\nb\r");
        assert!(Arc::ptr_eq(&held(c.get("text", Mode::Netascii)).unwrap(), &held(c.get("text", Mode::Netascii)).unwrap()));
    }

    #[test]
    fn the_cache_keeps_at_most_its_budget_least_recently_used_first() {
        let mut e = Entries::default();
        let entry = |n: usize, used| Cached { bytes: vec![0u8; n].into(), len: n as u64, mtime: None, used };
        let third = CACHE_BYTES / 3;
        e.insert(("a".into(), Mode::Octet), entry(third, 1));
        e.insert(("b".into(), Mode::Octet), entry(third, 3));
        e.insert(("c".into(), Mode::Octet), entry(third, 2));
        e.insert(("d".into(), Mode::Octet), entry(third, 4));
        assert!(e.bytes <= CACHE_BYTES);
        assert!(!e.map.contains_key(&("a".into(), Mode::Octet)), "the least recently used went first");
        assert!(e.map.contains_key(&("b".into(), Mode::Octet)));
        e.insert(("huge".into(), Mode::Octet), entry(CACHE_BYTES + 1, 5));
        assert_eq!((e.bytes, e.map.len()), (0, 0));
    }

    #[test]
    fn a_file_over_the_budget_is_read_per_block_not_held_and_refused_in_netascii() {
        // Issue 26: such a file was read whole for every transfer.
        let base = crate::scratch::ScratchDir::new("tftp-huge");
        let f = std::fs::File::create(base.join("huge.img")).unwrap();
        f.set_len(CACHE_BYTES as u64 + 4096).unwrap(); // sparse: no disk, no memory
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", CACHE_BYTES as u64 + 4092).unwrap();
        let c = FileCache::new(&base).unwrap();
        let content = c.get("huge.img", Mode::Octet).unwrap();
        assert!(matches!(content, Content::File { .. }), "held whole");
        assert_eq!(content.len(), CACHE_BYTES as u64 + 4096);
        assert_eq!(&*content.read(CACHE_BYTES as u64 + 4092, CACHE_BYTES as u64 + 5000).unwrap(), b"tail");
        assert_eq!(c.get("huge.img", Mode::Netascii).err(), Some(Refusal::TooLarge));
        // A file that shrank under a transfer: no short block is sent, the transfer ends with
        // an error.
        std::fs::write(base.join("small"), vec![1u8; 1000]).unwrap();
        let shrunk = Content::File { file: Arc::new(std::fs::File::open(base.join("small")).unwrap()), len: 5000 };
        assert!(shrunk.read(512, 1024).is_none());
        let p = crate::tftp::transfer::Params { blksize: 512, windowsize: 4, max_rto: std::time::Duration::from_secs(1) };
        let now = std::time::Instant::now();
        let mut t = crate::tftp::transfer::Transfer::new(shrunk, p, Vec::new(), now);
        assert_eq!(t.start(now).len(), 1, "only the block that could be read");
        let step = t.on_packet(&crate::tftp::packet::Packet::Ack { block: 1 }.to_vec(), now);
        assert!(matches!(step, crate::tftp::transfer::Step::Abort(Some(_), _)), "{step:?}");
    }
}
