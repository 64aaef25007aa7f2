//! The XDP program's limits (`LIMITS`), set from the config at start and on every reload; for
//! a cluster member also its liveness, renewed while the agent runs; and whether the program
//! logs its rare exits ([`super::log`]).

use crate::published::Follower;
use crate::config::Config;
use aya::maps::{Array, Map, MapData};
use netboot_common::cache::FastLimits;
use std::time::Duration;
use tokio::sync::watch;

pub struct LimitsMap {
    map: Array<MapData, FastLimits>,
    value: FastLimits,
    /// For a cluster member: how long the kernel answers after the agent's last renewal.
    /// `None` alone.
    liveness: Option<Duration>,
}

/// How long a member's kernel answers after its agent last renewed its liveness. Shorter
/// than the default takeover: a crashed member is replaced within half a second (its
/// database sessions end with it), and its kernel must not keep sending clients to its dead
/// TFTP and HTTP meanwhile. A renewal four times a second is far from a second late even
/// on a loaded agent; if it were, the cost is a client's retransmission.
const KERNEL_LIVENESS: Duration = Duration::from_secs(1);

/// `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl LimitsMap {
    pub fn new(map: Map) -> anyhow::Result<LimitsMap> {
        Ok(LimitsMap { map: Array::try_from(map)?, value: FastLimits::default(), liveness: None })
    }

    /// Makes the kernel stop answering DISCOVER and REQUEST [`KERNEL_LIVENESS`] (or `takeover`,
    /// if shorter) after the agent's last renewal ([`LimitsMap::follow`] renews it four times
    /// as often): a killed, stopped or hung member falls silent before the others take its
    /// buckets, so that no client is sent to a server that cannot serve its TFTP or script.
    pub fn member_liveness(&mut self, takeover: Duration) -> anyhow::Result<()> {
        self.liveness = Some(takeover.min(KERNEL_LIVENESS));
        self.write()
    }

    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        self.value.per_client_pps = config.dhcp.per_client_pps;
        self.value.log = u32::from(config.server.xdp_log);
        self.write()
    }

    fn write(&mut self) -> anyhow::Result<()> {
        if let Some(t) = self.liveness {
            self.value.alive_until_ns = monotonic_ns() + t.as_nanos() as u64;
        }
        self.map.set(0, self.value, 0)?;
        Ok(())
    }

    /// Applies each config `configs` follows, and renews a member's liveness, until
    /// `shutdown` changes.
    pub async fn follow(mut self, mut configs: Follower, mut shutdown: watch::Receiver<bool>) {
        let every = self.liveness.map_or(Duration::from_secs(3600), |t| (t / 4).max(Duration::from_millis(100)));
        let mut renew = tokio::time::interval(every);
        loop {
            tokio::select! {
                r = configs.changed() => {
                    let Some(config) = r else { return };
                    if let Err(e) = self.apply(&config) {
                        tracing::error!("reload: cannot set the XDP limits: {e:#}");
                    }
                    configs.applied();
                }
                _ = renew.tick(), if self.liveness.is_some() => {
                    if let Err(e) = self.write() {
                        tracing::error!("cannot renew the member's liveness in the XDP program: {e:#}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
