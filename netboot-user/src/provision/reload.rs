//! Live reload (DESIGN.md invariant 7): on SIGHUP, and when the config file or its hosts file
//! changes on disk, the config is loaded again. An invalid config changes nothing: the exact
//! error is logged and counted and the running config stays. A valid one is given to
//! [`Provision`], which lays the API's hosts over it and publishes it ([`crate::published`]);
//! DHCP, DHCPv6, the reply caches, the XDP limits, TFTP and HTTP apply it without dropping
//! leases or live transfers, each confirming it: a reload is counted once they all have. Keys
//! that only a restart can apply are named in a warning.

use super::Provision;
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

/// Watches `path` until `stop` changes; gives every valid new config to `provision`, which
/// publishes it. `config_reloads` counts a reload once the services have applied it.
pub async fn run(path: PathBuf, provision: Arc<Provision>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no SIGHUP handler ({e}); reloading on file changes only");
            None
        }
    };
    let mut seen = Fingerprint::of(&files_of(&path, &provision.file_config()));
    let mut tick = tokio::time::interval(POLL);
    loop {
        let why = tokio::select! {
            _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => "SIGHUP",
            _ = tick.tick() => {
                let now = Fingerprint::of(&files_of(&path, &provision.file_config()));
                if now == seen { continue; }
                // A file is being written: wait until it has stayed the same for one poll.
                tokio::time::sleep(POLL).await;
                if Fingerprint::of(&files_of(&path, &provision.file_config())) != now { continue; }
                "file change"
            },
            _ = stop.changed() => return,
        };
        seen = Fingerprint::of(&files_of(&path, &provision.file_config()));
        match Config::load(&path) {
            Err(e) => {
                stats.bump("config_reload_errors");
                tracing::error!("config reload ({why}) rejected, still serving the previous config: {e}");
            }
            // Written again while it was read (a hosts file being copied in): what was parsed
            // may be half of it. The next poll takes it once it has settled.
            Ok(_) if Fingerprint::of(&files_of(&path, &provision.file_config())) != seen => {
                stats.bump("config_reload_unsettled");
                tracing::info!("config reload ({why}) postponed: a file changed while it was read");
            }
            Ok(new) => {
                for key in restart_only_changes(&provision.file_config(), &new) {
                    tracing::warn!("config reload: {key} changed; it takes effect at the next attach");
                }
                let (before, after) = (provision.file_config().dhcp.reservations().count(), new.dhcp.reservations().count());
                if after < before / 2 {
                    tracing::warn!(before, after, "config reload drops more than half of the hosts: check the config and its hosts_file");
                }
                seen = Fingerprint::of(&files_of(&path, &new));
                let reservations = new.dhcp.reservations().count();
                provision.reload_file(new).await;
                stats.bump("config_reloads");
                tracing::info!(reservations, "config reloaded ({why})");
            }
        }
    }
}
