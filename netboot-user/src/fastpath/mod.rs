//! The XDP fast path as the agent sees it: the embedded program object, loading and attaching it,
//! its pinned maps, its counters, and a `BPF_PROG_TEST_RUN` harness.

pub mod cache;
pub mod counters;
pub mod loader;
pub mod pins;
pub mod sync;
pub mod testrun;

pub use counters::Counters;
pub use loader::{FastPath, Loaded, StartError, XdpModeArg};

/// The XDP object built from `netboot-ebpf` by build.rs (aya-build, nightly, BTF on).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netboot"));
