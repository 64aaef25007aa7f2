//! The durable lease store: its backends and its group-commit pipeline.
//!
//! Invariant 1: an OFFER or ACK leaves only after its lease is durable. Committing each lease
//! alone would cost an fsync per reply (dnsmasq's and dhcpd's storm problem), so a committer
//! thread takes every job that arrived while the previous transaction was syncing and commits
//! them in one transaction: one fsync per batch, however many leases.
//!
//! Two backends behind one trait: SQLite in `state_dir` (one server, the default) and
//! PostgreSQL (`[cluster] store`: several servers, one truth; the database settles every
//! conflict, see [`postgres`]). The schema of each is versioned ([`schema`]).

pub mod db;
pub mod discovered;
pub mod leases6;
pub mod members;
pub mod postgres;
pub mod reader;
pub mod records;
pub mod schema;
pub mod sqlite;
pub mod stmt;

pub use reader::LeaseReader;
pub use sqlite::{DB_FILE, SqliteStore, db_path};

use crate::dhcp::leases::Lease;
use crate::stats::{Stage, Stats};
use std::sync::{Arc, mpsc};
use std::time::Instant;

/// Where leases are kept.
pub trait LeaseStore: Send {
    /// Every stored lease.
    fn load(&mut self) -> anyhow::Result<Vec<Lease>>;
    /// Stores `batch` atomically; durable when this returns `Ok`. A lease the store refuses
    /// (a shared store where another server's client holds the address, or where this client
    /// holds another live address another server gave it) is not stored and comes back as a
    /// [`Refusal`]; the others are stored.
    fn commit(&mut self, batch: &[&Lease]) -> anyhow::Result<Vec<Refusal>>;
    /// Whether other servers write the same store (then `commit` may refuse leases).
    fn shared(&self) -> bool;
}

/// A lease of a batch the store refused, and what the store holds instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index of the refused lease in the batch.
    pub index: usize,
    /// The row that won: the address's holder, or the client's other live lease.
    pub winner: Option<Lease>,
}

/// A refused lease of one job, and the winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub lease: Lease,
    pub winner: Option<Lease>,
}

/// One unit of work: leases to make durable, then `then` to release.
pub struct Job<T> {
    pub leases: Vec<Lease>,
    pub then: T,
}

/// The committer thread's handle. Dropping it stops the thread after the queued jobs.
pub struct Committer<T> {
    tx: mpsc::Sender<Job<T>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Committer<T> {
    /// Starts the thread. After each batch is durable, every job's `then` is passed to `done`
    /// with `Ok` and the job's leases the store refused (none, with one server); if the
    /// transaction failed (full disk, I/O error, database unreachable), with the error, and the
    /// caller must not release what depended on it.
    /// Counts `lease_commits`, `lease_commit_failures` and `lease_commit_leases` in `stats`, and
    /// the time of each transaction as the `lease_commit` stage.
    pub fn start(
        mut store: Box<dyn LeaseStore>,
        stats: Arc<Stats>,
        mut done: impl FnMut(T, Result<Vec<Refused>, Arc<anyhow::Error>>) + Send + 'static,
    ) -> Committer<T> {
        let (tx, rx) = mpsc::channel::<Job<T>>();
        let thread = std::thread::Builder::new()
            .name("lease-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    // Everything that queued up while the last fsync ran joins this batch.
                    while jobs.len() < 4096 {
                        match rx.try_recv() {
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    let batch: Vec<&Lease> = jobs.iter().flat_map(|j| j.leases.iter()).collect();
                    let t = Instant::now();
                    let result = store.commit(&batch).map_err(Arc::new);
                    stats.observe(Stage::LeaseCommit, t.elapsed());
                    match &result {
                        Ok(refused) => {
                            stats.bump("lease_commits");
                            stats.add("lease_commit_leases", (batch.len() - refused.len()) as u64);
                            stats.add("lease_claims_lost", refused.len() as u64);
                        }
                        Err(e) => {
                            stats.bump("lease_commit_failures");
                            tracing::error!("lease store commit of {} leases failed; their replies are dropped: {e:#}", batch.len());
                        }
                    }
                    drop(batch);
                    // Hand each job its own refusals (batch indices run through the jobs in order).
                    let mut refusals = result.as_ref().map(|r| r.iter().cloned().peekable());
                    let mut first = 0;
                    for j in jobs {
                        let end = first + j.leases.len();
                        let outcome = match &mut refusals {
                            Ok(it) => {
                                let mut mine = Vec::new();
                                while let Some(r) = it.next_if(|r| r.index < end) {
                                    mine.push(Refused { lease: j.leases[r.index - first].clone(), winner: r.winner });
                                }
                                Ok(mine)
                            }
                            Err(e) => Err(e.clone()),
                        };
                        first = end;
                        done(j.then, outcome);
                    }
                }
            })
            .expect("spawn lease-commit thread");
        Committer { tx, thread: Some(thread) }
    }

    pub fn submit(&self, job: Job<T>) -> anyhow::Result<()> {
        self.tx.send(job).map_err(|_| anyhow::anyhow!("lease committer stopped"))
    }

    /// Waits until every submitted job is done.
    pub fn shutdown(mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::leases::{ClientKey, LeaseState, LeaseTable};
    use crate::mac::MacAddr;
    use std::net::Ipv4Addr;

    fn lease(i: u8, state: LeaseState) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, i),
            client: ClientKey(vec![2, 0, 0, 0, 0, i]),
            mac: MacAddr([2, 0, 0, 0, 0, i]),
            hostname: Some(format!("n{i}")),
            state,
            expires: 1_800_000_000 + u64::from(i),
        }
    }

    fn tmpdir(tag: &str) -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new(&format!("store-{tag}"))
    }

    #[test]
    fn commit_then_reopen_returns_the_last_state_per_address() {
        let dir = tmpdir("reopen");
        let mut s = SqliteStore::open(&dir).unwrap();
        let (a, b) = (lease(1, LeaseState::Offered), lease(2, LeaseState::Bound));
        s.commit(&[&a, &b]).unwrap();
        let a2 = Lease { state: LeaseState::Bound, ..a.clone() };
        s.commit(&[&a2]).unwrap();
        drop(s);
        let loaded = SqliteStore::read_only(&dir).unwrap().load().unwrap();
        assert_eq!(loaded, vec![a2, b]);
    }

    #[test]
    fn the_latest_row_of_a_client_wins_at_load_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmpdir("order");
        let mut s = SqliteStore::open(&dir).unwrap();
        // One client, two addresses whose text order ("10.0.0.10" < "10.0.0.9") is the
        // opposite of their age: the later lease must be the one loaded last.
        let old = Lease { ip: Ipv4Addr::new(10, 0, 0, 9), expires: 1_800_000_000, ..lease(1, LeaseState::Bound) };
        let new = Lease { ip: Ipv4Addr::new(10, 0, 0, 10), expires: 1_800_003_600, ..lease(1, LeaseState::Bound) };
        s.commit(&[&new]).unwrap();
        s.commit(&[&old]).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.last().unwrap().ip, new.ip);
        let mut table = LeaseTable::default();
        table.load(loaded);
        assert_eq!(table.for_client(&new.client).unwrap().ip, new.ip);
        let mode = std::fs::metadata(dir.join(DB_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn committer_batches_and_releases_after_commit() {
        let dir = tmpdir("batch");
        let store = SqliteStore::open(&dir).unwrap();
        let (out_tx, out_rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let c = Committer::start(Box::new(store), stats.clone(), move |n: u32, r: Result<Vec<Refused>, _>| out_tx.send((n, r.is_ok_and(|r| r.is_empty()))).unwrap());
        for i in 0..200u32 {
            c.submit(Job { leases: vec![lease((i % 250) as u8, LeaseState::Bound)], then: i }).unwrap();
        }
        c.shutdown();
        let done: Vec<(u32, bool)> = out_rx.try_iter().collect();
        assert_eq!(done.len(), 200);
        assert!(done.iter().all(|(_, ok)| *ok));
        let tx = stats.get("lease_commits");
        assert!((1..=200).contains(&tx), "{tx}");
        assert_eq!(stats.get("lease_commit_leases"), 200);
        assert_eq!(stats.latency()[&Stage::LeaseCommit].count(), tx);
    }
}
