//! Machines seen asking for an address, known or not: first and last seen, architecture, UUID,
//! vendor class and relay. `/api/v1/discovered` lists those no host describes (enrol one with
//! `PUT /api/v1/hosts/{mac}` or `netboot-xdp hosts adopt`); profiles select on the rest.
//!
//! The DHCP core reports sightings; this keeps them in memory and writes them to the lease
//! store once a second, in one transaction (every member of a cluster lists every machine).
//! A sighting that only moves `last_seen` is written when the stored one is a minute old: a
//! storm's renewals do not become a storm of writes. Both tables are bounded: a flood of
//! invented MACs pushes out the longest unseen.

use crate::store::db::ProvisionDb;
use crate::store::discovered::{self, Seen};
use crate::dhcp::server::Sighting;
use crate::mac::MacAddr;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Machines kept, in memory and in the store.
pub const KEPT: usize = 100_000;
/// Machines never seen before recorded per second, at most: a random-MAC flood would otherwise
/// be a write per frame and push every real machine out of the table within seconds. A storm
/// of 10000 machines is recorded over 10 s (each machine asks more than once: DHCP retries,
/// then iPXE's own DHCP).
pub const NEW_PER_SECOND: u32 = 1000;
const FLUSH: Duration = Duration::from_secs(1);
/// A stored `last_seen` this much behind is written again.
const LAST_SEEN_STEP: i64 = 60;

#[derive(Default)]
struct State {
    seen: HashMap<MacAddr, Seen>,
    /// `last_seen` as the store has it.
    stored: HashMap<MacAddr, i64>,
    dirty: HashSet<MacAddr>,
    /// New machines recorded in the current second (of the sightings' clock).
    new_in: (u64, u32),
}

pub struct Discovery {
    db: ProvisionDb,
    state: Mutex<State>,
    stats: Option<std::sync::Arc<crate::stats::Stats>>,
}

impl Discovery {
    pub fn new(db: ProvisionDb) -> Discovery {
        Discovery { db, state: Mutex::new(State::default()), stats: None }
    }

    /// Counts the sightings over [`NEW_PER_SECOND`] (`discovery_new_limited`).
    pub fn with_stats(mut self, stats: std::sync::Arc<crate::stats::Stats>) -> Discovery {
        self.stats = Some(stats);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn observe(&self, sightings: Vec<Sighting>) {
        if sightings.is_empty() {
            return;
        }
        let mut st = self.state();
        let mut limited = 0u64;
        for s in &sightings {
            let State { seen, stored, dirty, new_in } = &mut *st;
            let changed = match seen.get_mut(&s.mac) {
                Some(known) => known.update(s) || stored.get(&s.mac).is_none_or(|t| known.last_seen - t >= LAST_SEEN_STEP),
                None => {
                    if new_in.0 != s.at {
                        *new_in = (s.at, 0);
                    }
                    if new_in.1 >= NEW_PER_SECOND {
                        limited += 1; // seen again later, when a flood leaves room
                        continue;
                    }
                    new_in.1 += 1;
                    seen.insert(s.mac, Seen::of(s));
                    true
                }
            };
            if changed {
                dirty.insert(s.mac);
            }
        }
        if limited > 0 && let Some(stats) = &self.stats {
            stats.add("discovery_new_limited", limited);
        }
        if st.seen.len() > KEPT {
            // Drop the tenth longest unseen in one go (not one scan per new MAC).
            let mut ages: Vec<(i64, MacAddr)> = st.seen.values().map(|s| (s.last_seen, s.mac)).collect();
            ages.sort_unstable();
            for (_, mac) in ages.into_iter().take(KEPT / 10) {
                st.seen.remove(&mac);
                st.stored.remove(&mac);
                st.dirty.remove(&mac);
            }
        }
    }

    /// What was last seen of `mac` by this server.
    pub fn facts(&self, mac: MacAddr) -> Option<Seen> {
        self.state().seen.get(&mac).cloned()
    }

    /// Writes the sightings not in the store yet; on failure they stay for the next time.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let rows: Vec<Seen> = {
            let mut st = self.state();
            let dirty = std::mem::take(&mut st.dirty);
            dirty.iter().filter_map(|m| st.seen.get(m).cloned()).collect()
        };
        if rows.is_empty() {
            return Ok(());
        }
        let written = self.write(rows.clone()).await;
        let mut st = self.state();
        match &written {
            Ok(()) => st.stored.extend(rows.iter().map(|r| (r.mac, r.last_seen))),
            Err(_) => st.dirty.extend(rows.iter().map(|r| r.mac)),
        }
        written
    }

    async fn write(&self, rows: Vec<Seen>) -> anyhow::Result<()> {
        discovered::write(&self.db, rows, KEPT).await
    }

    /// Every machine seen, by any member, most recently seen first (this server's newer
    /// sightings laid over the store's).
    pub async fn list(&self) -> anyhow::Result<Vec<Seen>> {
        if let Err(e) = self.flush().await {
            tracing::debug!("discovery: flush before listing failed: {e:#}");
        }
        let rows = discovered::list(&self.db).await?;
        let st = self.state();
        Ok(rows
            .into_iter()
            .map(|s| match st.seen.get(&s.mac) {
                Some(mine) if mine.last_seen > s.last_seen => Seen { first_seen: s.first_seen.min(mine.first_seen), ..mine.clone() },
                _ => s,
            })
            .collect())
    }

    /// Writes sightings once a second until `shutdown`, and once more then.
    pub async fn run(self: std::sync::Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!("discovery: cannot write sightings to the store (kept for the next try): {e:#}");
                    }
                }
                _ = shutdown.changed() => {
                    let _ = self.flush().await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netboot_common::wire::ClientClass;

    fn sighting(mac: &str, at: u64, arch: Option<u16>) -> Sighting {
        Sighting { mac: mac.parse().unwrap(), at, class: ClientClass::Pxe, arch, uuid: None, vendor_class: None, relay: None, known: false }
    }

    #[tokio::test]
    async fn sightings_are_merged_stored_and_listed() {
        let dir = crate::scratch::ScratchDir::new("discovery");
        let d = Discovery::new(ProvisionDb::sqlite(&dir).unwrap());
        d.observe(vec![sighting("52:54:00:00:00:01", 100, Some(7))]);
        d.observe(vec![sighting("52:54:00:00:00:01", 130, None), sighting("52:54:00:00:00:02", 120, Some(0))]);
        let all = d.list().await.unwrap();
        assert_eq!(all.len(), 2);
        let one = &all.iter().find(|s| s.mac.to_string() == "52:54:00:00:00:01").unwrap();
        // The arch of the first sighting stays when a later one has none.
        assert_eq!((one.first_seen, one.last_seen, one.arch), (100, 130, Some(7)));
        // A later sighting that moves only last_seen is not written at once, but listed.
        d.observe(vec![sighting("52:54:00:00:00:01", 150, Some(7))]);
        assert!(d.state().dirty.is_empty());
        assert_eq!(d.list().await.unwrap()[0].last_seen, 150);
    }

    #[test]
    fn a_flood_of_new_macs_is_recorded_at_a_bounded_rate_and_known_machines_still_are() {
        // Issue 26: every request of a random-MAC flood was recorded (and written).
        let dir = crate::scratch::ScratchDir::new("discovery-flood");
        let stats = std::sync::Arc::new(crate::stats::Stats::default());
        let d = Discovery::new(ProvisionDb::sqlite(&dir).unwrap()).with_stats(stats.clone());
        d.observe(vec![sighting("52:54:00:00:00:01", 99, Some(7))]);
        let flood: Vec<Sighting> = (0..5000u32).map(|i| sighting(&format!("02:00:00:{:02x}:{:02x}:{:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff), 100, None)).collect();
        d.observe(flood);
        d.observe(vec![sighting("52:54:00:00:00:01", 100, Some(7))]);
        assert_eq!(d.state().seen.len(), 1 + NEW_PER_SECOND as usize);
        assert_eq!(d.facts("52:54:00:00:00:01".parse().unwrap()).unwrap().last_seen, 100, "a known machine is still seen");
        assert_eq!(stats.snapshot()["discovery_new_limited"], 5000 - u64::from(NEW_PER_SECOND));
        // The next second has room again.
        d.observe(vec![sighting("52:54:00:00:00:02", 101, None)]);
        assert!(d.facts("52:54:00:00:00:02".parse().unwrap()).is_some());
    }
}
