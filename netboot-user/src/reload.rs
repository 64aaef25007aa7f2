//! Live reload (DESIGN.md invariant 7): on SIGHUP, and when the config file or its hosts file
//! changes on disk, the config is loaded again. An invalid config changes nothing: the exact
//! error is logged and counted and the running config stays. A valid one is published (the
//! API's hosts laid over it, [`crate::provision`]); DHCP, DHCPv6, the reply caches, the XDP
//! limits, TFTP and HTTP apply it without dropping leases or live transfers, each confirming
//! it ([`Follower`]): a reload is counted once they all have. Keys that only a restart can
//! apply are named in a warning.

use crate::config::Config;
use crate::provision::Provision;
use crate::stats::Stats;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

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

/// A service's view of the published config that can also confirm it has applied what is
/// published: a writer ([`crate::provision`]) returns only once the services that answer from
/// the config answer with its change, so a script that PUTs a host and then boots the machine
/// does not race the reload.
pub struct Follower {
    configs: watch::Receiver<Arc<Config>>,
    asks: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    /// Confirmations owed once the config being applied is applied.
    owed: Vec<oneshot::Sender<()>>,
}

impl Follower {
    /// The config published now.
    pub fn current(&self) -> Arc<Config> {
        self.configs.borrow().clone()
    }

    /// The next config to apply: a new one was published, or a writer asks about one not yet
    /// seen. `None` when the publisher is gone. Call [`Follower::applied`] once it is applied.
    pub async fn changed(&mut self) -> Option<Arc<Config>> {
        loop {
            tokio::select! {
                r = self.configs.changed() => {
                    r.ok()?;
                    return Some(self.configs.borrow_and_update().clone());
                }
                Some(ask) = self.asks.recv() => {
                    self.owed.push(ask);
                    if let Some(c) = self.unseen() {
                        return Some(c);
                    }
                }
            }
        }
    }

    /// As [`Follower::changed`] without waiting, for a thread that polls: the config to apply,
    /// if one is published that this service has not seen.
    pub fn try_changed(&mut self) -> Option<Arc<Config>> {
        while let Ok(ask) = self.asks.try_recv() {
            self.owed.push(ask);
        }
        self.unseen()
    }

    /// The published config if this service has not seen it; else confirms what is owed
    /// (what is published is what this service runs).
    fn unseen(&mut self) -> Option<Arc<Config>> {
        if self.configs.has_changed().unwrap_or(false) {
            return Some(self.configs.borrow_and_update().clone());
        }
        self.applied();
        None
    }

    /// Confirms to every writer waiting that the config last returned is applied.
    pub fn applied(&mut self) {
        for ask in self.owed.drain(..) {
            let _ = ask.send(());
        }
    }
}

/// The followers of one published config, for its writer to wait on.
#[derive(Default)]
pub struct Followers(std::sync::Mutex<Vec<mpsc::UnboundedSender<oneshot::Sender<()>>>>);

impl Followers {
    /// A follower of `configs` that `wait` will wait for.
    pub fn follow(&self, configs: watch::Receiver<Arc<Config>>) -> Follower {
        let (tx, asks) = mpsc::unbounded_channel();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        Follower { configs, asks, owed: Vec::new() }
    }

    /// Waits until every live follower has applied what is published now, for at most
    /// `within`; false if one did not in time (it still will: the config is published).
    pub async fn wait(&self, within: Duration) -> bool {
        let confirmations: Vec<_> = {
            let mut followers = self.0.lock().unwrap_or_else(|e| e.into_inner());
            followers.retain(|f| !f.is_closed());
            followers
                .iter()
                .filter_map(|f| {
                    let (ask, confirmed) = oneshot::channel();
                    f.send(ask).ok().map(|_| confirmed)
                })
                .collect()
        };
        tokio::time::timeout(within, async {
            for c in confirmations {
                let _ = c.await; // a follower that stopped owes nothing
            }
        })
        .await
        .is_ok()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config told apart by its `tftp.max_transfers`.
    fn config(max_transfers: u32) -> Arc<Config> {
        let text = format!("[dhcp]\nmode = \"proxy\"\n[tftp]\nmax_transfers = {max_transfers}\n");
        Arc::new(Config::parse(Path::new("netboot.toml"), &text).unwrap())
    }

    /// A writer's wait ends when the follower has applied what was published before it asked,
    /// not before.
    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_until_the_follower_has_applied_the_published_config() {
        let (tx, rx) = watch::channel(config(1));
        let followers = Followers::default();
        let mut follower = followers.follow(rx);
        let (applied_tx, mut applied) = mpsc::unbounded_channel();
        let service = tokio::spawn(async move {
            while let Some(c) = follower.changed().await {
                tokio::time::sleep(Duration::from_millis(300)).await; // applying takes a while
                applied_tx.send(c.tftp.max_transfers).unwrap();
                follower.applied();
            }
        });
        tx.send_replace(config(2));
        assert!(followers.wait(Duration::from_secs(5)).await);
        assert_eq!(applied.try_recv(), Ok(2), "the wait ended before the config was applied");
        // Nothing new published: the wait ends at once, nothing applied again.
        assert!(followers.wait(Duration::from_secs(5)).await);
        assert!(applied.try_recv().is_err());
        drop(tx);
        service.await.unwrap();
        // A follower that stopped owes nothing.
        assert!(followers.wait(Duration::from_secs(5)).await);
    }

    /// A follower that does not apply in time makes the wait say so, after `within`.
    #[tokio::test(start_paused = true)]
    async fn a_wait_gives_up_on_a_follower_that_does_not_apply() {
        let (tx, rx) = watch::channel(config(1));
        let followers = Followers::default();
        let _stuck = followers.follow(rx);
        tx.send_replace(config(2));
        let started = tokio::time::Instant::now();
        assert!(!followers.wait(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
