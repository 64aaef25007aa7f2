//! A directory of a unit test's own (tests only): empty when the test starts, removed when it
//! ends, failed or not, so a failing test leaves nothing in the temporary directory.

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `$TMPDIR/nbx-TAG-PID`, empty.
    pub fn new(tag: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("nbx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ScratchDir(dir)
    }
}

impl Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
