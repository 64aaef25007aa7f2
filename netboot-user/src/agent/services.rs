//! The agent's service tasks, supervised. Every service (DHCP, DHCPv6, TFTP, HTTP, the
//! reload watcher, ...) runs until the agent stops it; one that ends before that — an error,
//! a panic, a return — is a service the operator believes runs and does not. The agent then
//! stops as a whole and exits non-zero, so that systemd (`Restart=on-failure`) starts it
//! again with every service; the pinned XDP program answers known clients meanwhile. A
//! silently dead service is what this prevents.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::task::{Id, JoinError, JoinSet};

/// How long the services have to end once told to stop, before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Services {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Services {
    /// Runs a service that only returns when told to stop.
    pub fn spawn(&mut self, name: &'static str, service: impl Future<Output = ()> + Send + 'static) {
        self.spawn_fallible(name, async move {
            service.await;
            Ok(())
        });
    }

    /// Runs a service that returns an error when it cannot go on.
    pub fn spawn_fallible(&mut self, name: &'static str, service: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let handle = self.tasks.spawn(service);
        self.names.insert(handle.id(), name);
    }

    /// The first service to end, and why (never resolves while all run).
    pub async fn first_to_end(&mut self) -> (&'static str, anyhow::Error) {
        let Some(ended) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        match ended {
            Ok((id, Ok(()))) => (self.name(id), anyhow::anyhow!("ended unexpectedly")),
            Ok((id, Err(e))) => (self.name(id), e),
            Err(e) => {
                let service = self.name(e.id());
                (service, anyhow::anyhow!("panicked: {}", panic_message(e)))
            }
        }
    }

    /// Waits for every service to end after the stop signal (each for at most
    /// [`STOP_GRACE`] in all), logging those that failed; the rest are aborted.
    pub async fn stopped(mut self) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(None) => return,
                Ok(Some(Ok((_, Ok(()))))) => {}
                Ok(Some(Ok((id, Err(e))))) => tracing::error!(service = self.name(id), "{e:#}"),
                Ok(Some(Err(e))) if e.is_cancelled() => {}
                Ok(Some(Err(e))) => {
                    let service = self.name(e.id());
                    tracing::error!(service, "panicked: {}", panic_message(e));
                }
                Err(_) => {
                    let left: Vec<_> = self.names.values().copied().collect();
                    tracing::warn!(?left, "services still running {STOP_GRACE:?} after the stop: aborted");
                    self.tasks.abort_all();
                    return;
                }
            }
        }
    }

    fn name(&mut self, id: Id) -> &'static str {
        self.names.remove(&id).unwrap_or("unnamed")
    }
}

fn panic_message(e: JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a non-text panic".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_service_that_panics_or_returns_is_named_and_reported() {
        let mut s = Services::default();
        s.spawn("quiet", std::future::pending());
        s.spawn("dhcp6", async { panic!("option under 64 KiB") });
        let (name, why) = s.first_to_end().await;
        assert_eq!((name, why.to_string()), ("dhcp6", "panicked: option under 64 KiB".to_string()));
        s.spawn("tftp", async {});
        let (name, why) = s.first_to_end().await;
        assert_eq!((name, why.to_string()), ("tftp", "ended unexpectedly".to_string()));
        s.spawn_fallible("http", async { Err(anyhow::anyhow!("listener closed")) });
        assert_eq!(s.first_to_end().await.0, "http");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_ignores_the_stop_is_aborted_after_the_grace() {
        let mut s = Services::default();
        s.spawn("stuck", std::future::pending());
        let started = tokio::time::Instant::now();
        s.stopped().await;
        assert_eq!(started.elapsed(), STOP_GRACE);
    }
}
