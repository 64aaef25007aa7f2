//! The XDP program's aya-log records (its rare exits, when `[server] xdp_log` is on) forwarded
//! to the agent's log: the `log` crate's records, which the agent's tracing subscriber takes
//! in (target `netboot`, the program's crate).

use aya_log::EbpfLogger;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Reads the records as they come until `stop` changes. The log is a help, not a service the
/// agent needs: if the ring cannot be watched, that is said once and the agent goes on.
pub async fn forward<T: log::Log + Send + 'static>(logger: EbpfLogger<T>, mut stop: watch::Receiver<bool>) {
    if let Err(e) = follow(logger, &mut stop).await {
        tracing::warn!("the XDP program's log is no longer read ([server] xdp_log): {e}");
        let _ = stop.changed().await;
    }
}

async fn follow<T: log::Log + Send + 'static>(logger: EbpfLogger<T>, stop: &mut watch::Receiver<bool>) -> std::io::Result<()> {
    // Safety (tokio's contract for registering a descriptor): the ring's fd stays open while
    // `AsyncFd` holds the logger, and is read only through it.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }?;
    loop {
        tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = ready?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
