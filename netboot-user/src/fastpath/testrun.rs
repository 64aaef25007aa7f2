//! `BPF_PROG_TEST_RUN` on an XDP program: feed a frame, get the action and the output frame.
//! aya 0.14 has no wrapper for it, so this calls the bpf syscall directly.

use std::os::fd::RawFd;

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub output: Vec<u8>,
    /// Average run time in nanoseconds over `repeat` runs.
    pub duration_ns: u32,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// Runs the program `repeat` times (at least once) on `frame`.
pub fn run(prog_fd: RawFd, frame: &[u8], repeat: u32) -> std::io::Result<TestRun> {
    // Room for a reply longer than the request (bpf_xdp_adjust_tail can grow the frame).
    let mut out = vec![0u8; 4096.max(frame.len() * 2)];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun { action: attr.retval, output: out, duration_ns: attr.duration })
}
