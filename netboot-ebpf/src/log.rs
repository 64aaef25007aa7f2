//! aya-log records of the program's rare exits, for an operator chasing a frame the kernel
//! would not answer: malformed frames, and reply-cache entries that exist but cannot be used.
//! Off unless `[server] xdp_log` is on (the agent sets `FastLimits::log` at start and on
//! reload, and forwards the records to its log).
//!
//! The record is written by a program of its own, [`netboot_log`], that the main program
//! tail-calls: formatting a record needs stack the main program's frame leaves no room for
//! (the verifier counts a call's frame on top of its caller's; a tail call replaces it). The
//! common exits (not DHCP, a cache miss, an answer) never get here; when off, a rare exit
//! costs one match on its counter and one array lookup.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use netboot_common::Counter;

/// The log program, at 0 once the agent has installed it.
#[map]
static LOG_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The exit being logged, handed to the log program (per CPU: written just before the call).
#[map]
static LOG_EXIT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Passes the frame through the log program if `exit` is a rare kind and logging is on: the
/// call does not return then (the log program ends the frame's run with XDP_PASS, counted).
#[inline(always)]
pub fn rare(ctx: &XdpContext, exit: Counter) {
    let rare = matches!(
        exit,
        Counter::Truncated
            | Counter::MalformedIp
            | Counter::MalformedBootp
            | Counter::MalformedOptions
            | Counter::Unsupported
            | Counter::BadChecksum
            | Counter::FastExpired
            | Counter::FastMismatch
            | Counter::FastError
            | Counter::RingbufFull
    );
    if !rare || !crate::LIMITS.get(0).is_some_and(|l| l.log != 0) {
        return;
    }
    let Some(slot) = LOG_EXIT.get_ptr_mut(0) else { return };
    unsafe {
        *slot = exit as u32;
        // Without a log program installed the call fails and the frame goes on as usual.
        let _ = LOG_PROG.tail_call(ctx, 0);
    }
}

/// Logs the exit [`rare`] handed over, with the frame's length and Ethernet source, and
/// passes the frame, as the main program would have.
#[xdp]
pub fn netboot_log(ctx: XdpContext) -> u32 {
    let exit = LOG_EXIT.get(0).copied().unwrap_or(0);
    let name = Counter::ALL.get(exit as usize).map_or("unknown", |c| c.name());
    let len = ctx.data_end() - ctx.data();
    match crate::bytes_at::<6>(&ctx, 6) {
        Ok(src) => {
            let src = unsafe { *src };
            warn!(&ctx, "passed: {} (counter {}), {} bytes from {:mac}", name, exit, len, src)
        }
        Err(_) => warn!(&ctx, "passed: {} (counter {}), {} bytes", name, exit, len),
    }
    crate::bump(Counter::XdpPass);
    xdp_action::XDP_PASS
}
