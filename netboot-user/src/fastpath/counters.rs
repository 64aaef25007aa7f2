//! The per-CPU counters of the XDP program, summed over CPUs.

use aya::maps::{Map, MapData, PerCpuArray};
use netboot_common::{Counter, maps};
use std::collections::BTreeMap;
use std::path::Path;

/// One reading of every counter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters(Vec<u64>);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c as usize).copied().unwrap_or(0)
    }

    /// Reads all counters from the `COUNTERS` map.
    pub fn read<T: std::borrow::Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> anyhow::Result<Counters> {
        let mut v = Vec::with_capacity(Counter::ALL.len());
        for c in Counter::ALL {
            let per_cpu = map.get(&(*c as u32), 0)?;
            v.push(per_cpu.iter().sum());
        }
        Ok(Counters(v))
    }

    /// Reads the counters of the fast path pinned for `iface`.
    pub fn from_pin(pin_dir: &Path) -> anyhow::Result<Counters> {
        let path = pin_dir.join(maps::COUNTERS);
        let data = MapData::from_pin(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        let map = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))?;
        Counters::read(&map)
    }

    /// `after - before` for every counter.
    pub fn delta(&self, before: &Counters) -> Counters {
        Counters(self.0.iter().zip(before.0.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a - b).collect())
    }

    /// Name → value, in index order of names.
    pub fn named(&self) -> BTreeMap<&'static str, u64> {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c))).collect()
    }

    /// The non-zero counters, for messages.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c))).filter(|(_, v)| *v != 0).collect()
    }
}
