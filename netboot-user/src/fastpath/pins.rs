//! Where the fast path of an interface lives in bpffs: `/sys/fs/bpf/netboot-xdp/<iface>/`.
//!
//! Pins make the kernel state reachable from other processes (`netboot-xdp status`, a restarted
//! agent). The agent mounts bpffs at /sys/fs/bpf when nothing is mounted there.

use std::path::{Path, PathBuf};

/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const BPFFS: &str = "/sys/fs/bpf";

/// The directory holding all netboot-xdp pins.
pub fn root() -> PathBuf {
    Path::new(BPFFS).join("netboot-xdp")
}

/// The pin directory of one interface.
pub fn iface_dir(iface: &str) -> PathBuf {
    root().join(iface)
}

/// Interfaces that have pins, sorted.
pub fn pinned_ifaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root())
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure bpffs is mounted at /sys/fs/bpf.
pub fn ensure_bpffs() -> std::io::Result<()> {
    let p = Path::new(BPFFS);
    if is_bpffs(p) {
        return Ok(());
    }
    std::fs::create_dir_all(p)?;
    let src = c"bpffs";
    let target = c"/sys/fs/bpf";
    let fstype = c"bpf";
    let rc = unsafe {
        libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, c"mode=0700".as_ptr().cast())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes an interface's pin directory and everything in it (pins are plain unlinkable files).
pub fn remove_iface_dir(iface: &str) -> std::io::Result<()> {
    let dir = iface_dir(iface);
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd.flatten() {
                std::fs::remove_file(e.path())?;
            }
            std::fs::remove_dir(&dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
