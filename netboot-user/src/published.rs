//! The config as published to the services, and their confirmations: the agent publishes
//! each new config (a reload, or the API's hosts laid over the file, see
//! `provision::reload`) on one watch channel; every service that answers from it holds a
//! [`Follower`] and confirms once it has applied it, so a writer that waits on [`Followers`]
//! returns only when the change is live.

use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// A service's view of the published config that can also confirm it has applied what is
/// published: a writer (the provisioning API) returns only once the services that answer from
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
