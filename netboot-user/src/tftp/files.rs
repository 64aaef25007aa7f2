//! The TFTP file cache: boot files read once and served as shared slices; a file changed on
//! disk is read again for new transfers (running ones keep the bytes they started with).
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
}

struct Cached {
    bytes: Arc<[u8]>,
    len: u64,
    mtime: Option<SystemTime>,
}

pub struct FileCache {
    root: PathBuf,
    files: Mutex<HashMap<PathBuf, Cached>>,
}

impl FileCache {
    /// `root` must exist; it is canonicalized once.
    pub fn new(root: &Path) -> std::io::Result<FileCache> {
        Ok(FileCache { root: root.canonicalize()?, files: Mutex::new(HashMap::new()) })
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
                Component::CurDir => {}
                // TFTP names are relative to the root: `/x`, `../x`, `C:\x` are refused.
                Component::RootDir | Component::ParentDir | Component::Prefix(_) => return Err(Refusal::OutsideRoot),
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

    /// The bytes of `name`, from the cache when the file has not changed on disk.
    pub fn get(&self, name: &str) -> Result<Arc<[u8]>, Refusal> {
        let path = self.resolve(name)?;
        let meta = std::fs::metadata(&path).map_err(|_| Refusal::NotFound)?;
        if !meta.is_file() {
            return Err(Refusal::NotFound);
        }
        let mtime = meta.modified().ok();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = files.get(&path) {
            if c.len == meta.len() && c.mtime == mtime {
                return Ok(c.bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(&path).map_err(|_| Refusal::NotFound)?.into();
        files.insert(path, Cached { bytes: bytes.clone(), len: meta.len(), mtime });
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let base = std::env::temp_dir().join(format!("nbx-tftp-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.bin"), b"hello").unwrap();
        std::fs::write(base.join("secret"), b"no").unwrap();
        std::os::unix::fs::symlink(base.join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("sub/a.bin", root.join("inside")).unwrap();
        let c = FileCache::new(&root).unwrap();
        assert_eq!(&*c.get("sub/a.bin").unwrap(), b"hello");
        assert_eq!(&*c.get("./sub/a.bin").unwrap(), b"hello");
        assert_eq!(&*c.get("inside").unwrap(), b"hello");
        assert_eq!(c.get("../secret"), Err(Refusal::OutsideRoot));
        assert_eq!(c.get("sub/../../secret"), Err(Refusal::OutsideRoot));
        assert_eq!(c.get("/etc/passwd"), Err(Refusal::OutsideRoot));
        assert_eq!(c.get("escape"), Err(Refusal::OutsideRoot));
        assert_eq!(c.get("missing"), Err(Refusal::NotFound));
        assert_eq!(c.get("sub"), Err(Refusal::NotFound));
        // A changed file is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(root.join("sub/a.bin"), b"hello, again").unwrap();
        assert_eq!(&*c.get("sub/a.bin").unwrap(), b"hello, again");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
