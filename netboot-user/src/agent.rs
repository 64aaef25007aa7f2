//! The agent: everything `netboot-xdp attach` runs on one interface, until a signal.

use crate::config::Config;
use crate::fastpath::{Loaded, XdpModeArg};
use crate::runtime::AgentRecord;
use std::path::Path;

/// Runs the agent on `iface` in the foreground until SIGINT or SIGTERM, then detaches.
pub async fn run(iface: &str, config_path: &Path, mode: XdpModeArg) -> anyhow::Result<()> {
    let _config = Config::load(config_path)?;
    if let Some(rec) = AgentRecord::read(iface).filter(AgentRecord::is_running) {
        anyhow::bail!("{iface} is already served by netboot-xdp pid {} (netboot-xdp detach {iface})", rec.pid);
    }
    let fastpath = Loaded::new()?.attach(iface, mode)?;
    let record = AgentRecord {
        pid: std::process::id(),
        iface: iface.to_string(),
        xdp_mode: fastpath.mode().to_string(),
        config: config_path.to_path_buf(),
    };
    record.write()?;
    tracing::info!(iface, mode = fastpath.mode(), "XDP attached; serving until SIGINT/SIGTERM");

    let signal = wait_for_shutdown().await;
    tracing::info!(iface, "{signal}: detaching");
    let counters = fastpath.counters().ok();
    fastpath.detach()?;
    AgentRecord::remove(iface);
    if let Some(c) = counters {
        tracing::info!(iface, "final counters: {:?}", c.nonzero());
    }
    Ok(())
}

async fn wait_for_shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without handlers the default action (exit) applies; wait forever.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
