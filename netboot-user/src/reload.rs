//! Live reload (DESIGN.md invariant 7): on SIGHUP, and when the config file or its hosts file
//! changes on disk, the config is loaded again. An invalid config changes nothing: the exact
//! error is logged and counted and the running config stays. A valid one is published on a
//! watch channel; the DHCP service, the reply cache, TFTP and HTTP apply it without dropping
//! leases or live transfers. Keys that only a restart can apply are named in a warning.

use crate::config::Config;
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the files are checked for changes.
pub const POLL: Duration = Duration::from_millis(500);

/// Size and modification time of the files a config is made of: it changes when any of them
/// is written, replaced or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<(u64, SystemTime)>>);

impl Fingerprint {
    fn of(files: &[PathBuf]) -> Fingerprint {
        Fingerprint(files.iter().map(|f| std::fs::metadata(f).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))).collect())
    }
}

fn files_of(path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut v = vec![path.to_path_buf()];
    v.extend(config.dhcp.hosts_path.clone());
    v
}

/// The keys whose change needs a restart (sockets, identity, storage), as `section.key`.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.server.address != new.server.address {
        v.push("server.address");
    }
    if old.server.state_dir != new.server.state_dir {
        v.push("server.state_dir");
    }
    if old.dhcp.mode != new.dhcp.mode {
        v.push("dhcp.mode");
    }
    if old.http.listen != new.http.listen {
        v.push("http.listen");
    }
    if old.tftp.engine != new.tftp.engine {
        v.push("tftp.engine");
    }
    if old.cluster.server_id() != new.cluster.server_id() {
        v.push("cluster.server_id");
    }
    if old.cluster.store_url() != new.cluster.store_url() {
        v.push("cluster.store");
    }
    if old.cluster.takeover.0 != new.cluster.takeover.0 {
        v.push("cluster.takeover");
    }
    v
}

/// Watches `path` until `stop` changes; publishes every valid new config on `tx`.
pub async fn run(path: PathBuf, tx: watch::Sender<Arc<Config>>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no SIGHUP handler ({e}); reloading on file changes only");
            None
        }
    };
    let mut seen = Fingerprint::of(&files_of(&path, &tx.borrow()));
    let mut tick = tokio::time::interval(POLL);
    loop {
        let why = tokio::select! {
            _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => "SIGHUP",
            _ = tick.tick() => {
                let now = Fingerprint::of(&files_of(&path, &tx.borrow()));
                if now == seen { continue; }
                // A file is being written: wait until it has stayed the same for one poll.
                tokio::time::sleep(POLL).await;
                if Fingerprint::of(&files_of(&path, &tx.borrow())) != now { continue; }
                "file change"
            },
            _ = stop.changed() => return,
        };
        seen = Fingerprint::of(&files_of(&path, &tx.borrow()));
        match Config::load(&path) {
            Err(e) => {
                stats.bump("config_reload_errors");
                tracing::error!("config reload ({why}) rejected, still serving the previous config: {e}");
            }
            Ok(new) => {
                for key in restart_only_changes(&tx.borrow(), &new) {
                    tracing::warn!("config reload: {key} changed; it takes effect at the next attach");
                }
                seen = Fingerprint::of(&files_of(&path, &new));
                stats.bump("config_reloads");
                tracing::info!(reservations = new.dhcp.reservations().count(), "config reloaded ({why})");
                tx.send_replace(Arc::new(new));
            }
        }
    }
}
