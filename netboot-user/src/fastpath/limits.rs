//! The XDP program's limits (`LIMITS`), set from the config at start and on every reload.

use crate::config::Config;
use aya::maps::{Array, Map, MapData};
use netboot_common::cache::FastLimits;
use std::sync::Arc;
use tokio::sync::watch;

pub struct LimitsMap(Array<MapData, FastLimits>);

impl LimitsMap {
    pub fn new(map: Map) -> anyhow::Result<LimitsMap> {
        Ok(LimitsMap(Array::try_from(map)?))
    }

    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let limits = FastLimits { per_client_pps: config.dhcp.per_client_pps, _pad: 0 };
        self.0.set(0, limits, 0)?;
        Ok(())
    }

    /// Applies each config published on `configs` until `shutdown` changes.
    pub async fn follow(mut self, mut configs: watch::Receiver<Arc<Config>>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                r = configs.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let config = configs.borrow_and_update().clone();
                    if let Err(e) = self.apply(&config) {
                        tracing::error!("reload: cannot set the XDP limits: {e:#}");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
