//! The agent's own metrics: named counters and latency histograms (the XDP program's counters
//! are in `fastpath::Counters`). Shared between tasks; read by `/metrics` and `status`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 100 µs to 30 s, so that both an in-memory
/// reply and a TFTP transfer with retransmissions land in a bucket that says something.
pub const BUCKETS: [f64; 16] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0];

/// A cumulative-on-read latency histogram (Prometheus semantics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is `+Inf`.
    pub counts: [u64; BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (upper bound, cumulative count) per bucket, ending with `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        BUCKETS.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().scan(0, |acc, c| {
            *acc += c;
            Some(*acc)
        }))
    }
}

/// The stages whose latency the agent measures (the `stage` label of `netboot_stage_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// DHCP request received → reply sent by the agent (includes the lease commit).
    DhcpReply,
    /// Lease records handed to the committer → durable.
    LeaseCommit,
    /// TFTP read request → last ACK.
    TftpTransfer,
    /// HTTP request → response headers.
    HttpRequest,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::DhcpReply, Stage::LeaseCommit, Stage::TftpTransfer, Stage::HttpRequest];

    pub fn name(self) -> &'static str {
        match self {
            Stage::DhcpReply => "dhcp_reply",
            Stage::LeaseCommit => "lease_commit",
            Stage::TftpTransfer => "tftp_transfer",
            Stage::HttpRequest => "http_request",
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    counters: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<BTreeMap<Stage, Histogram>>,
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

    /// Lowers a gauge (never below 0).
    pub fn sub(&self, name: &str, n: u64) {
        if let Some(v) = self.counters.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            *v = v.saturating_sub(n);
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

    pub fn observe(&self, stage: Stage, took: Duration) {
        self.latency.lock().unwrap_or_else(|e| e.into_inner()).entry(stage).or_default().observe(took.as_secs_f64());
    }

    pub fn latency(&self) -> BTreeMap<Stage, Histogram> {
        self.latency.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::default();
        for s in [0.00005, 0.0003, 0.0003, 2.0, 100.0] {
            h.observe(s);
        }
        let c: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (0.0001, 1));
        assert_eq!(c[2], (0.0005, 3));
        assert_eq!(c[BUCKETS.len() - 1], (30.0, 4));
        assert_eq!(c[BUCKETS.len()], (f64::INFINITY, 5));
        assert_eq!(h.count(), 5);
        assert!((h.sum - 102.00065).abs() < 1e-9);
    }
}
