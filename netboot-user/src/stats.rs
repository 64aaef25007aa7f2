//! Named counters of the agent (the XDP program's are in [`crate::fastpath::Counters`]).
//! Shared between tasks, snapshotted for `status` and, later, `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn add(&self, name: &str, n: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match c.get_mut(name) {
            Some(v) => *v += n,
            None => {
                c.insert(name.to_string(), n);
            }
        }
    }

    pub fn set(&self, name: &str, v: u64) {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), v);
    }

    pub fn bump(&self, name: &str) {
        self.add(name, 1);
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
