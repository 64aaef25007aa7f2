//! The durable lease store and its group-commit pipeline.
//!
//! Invariant 1: an OFFER or ACK leaves only after its lease is durable. Committing each lease
//! alone would cost an fsync per reply (dnsmasq's and dhcpd's storm problem), so a committer
//! thread takes every job that arrived while the previous transaction was syncing and commits
//! them in one transaction: one fsync per batch, however many leases.

use super::leases::{ClientKey, Lease, LeaseState};
use crate::mac::MacAddr;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use crate::stats::{Stage, Stats};
use std::sync::{Arc, mpsc};
use std::time::Instant;

/// Where leases are kept. SQLite today; the schema is plain enough for PostgreSQL later.
pub trait LeaseStore: Send {
    /// Every stored lease.
    fn load(&mut self) -> anyhow::Result<Vec<Lease>>;
    /// Stores `batch` atomically; durable when this returns `Ok`.
    fn commit(&mut self, batch: &[&Lease]) -> anyhow::Result<()>;
}

/// SQLite in WAL mode with `synchronous = FULL`: a commit survives a crash of the agent and of
/// the machine. The file (`<state_dir>/leases.sqlite`) can be read with the `sqlite3` tool.
pub struct SqliteStore {
    conn: Connection,
}

pub const DB_FILE: &str = "leases.sqlite";

impl SqliteStore {
    pub fn open(state_dir: &Path) -> anyhow::Result<SqliteStore> {
        std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open(&path).with_context(|| format!("cannot open lease store {}", path.display()))?;
        // Client MACs and hostnames are nobody else's business; SQLite gives the WAL and shm
        // files the database's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to mode 0600", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS leases (
                ip       TEXT PRIMARY KEY,
                client   TEXT NOT NULL,
                mac      TEXT NOT NULL,
                hostname TEXT,
                state    TEXT NOT NULL,
                expires  INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS leases_client ON leases(client);
            CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);",
        )
        .with_context(|| format!("cannot create the schema in {}", path.display()))?;
        Ok(SqliteStore { conn })
    }

    /// The latest lease recorded for `mac` (for the HTTP handoff: one indexed query, not a load
    /// of the whole store per script).
    pub fn latest_for_mac(&self, mac: MacAddr) -> anyhow::Result<Option<Lease>> {
        Ok(self.select("WHERE mac = ?1 ORDER BY expires DESC LIMIT 1", [mac.to_string()])?.pop())
    }

    /// Leases of the rows `tail` (a WHERE/ORDER clause) selects; unreadable rows are skipped.
    fn select<P: rusqlite::Params>(&self, tail: &str, params: P) -> anyhow::Result<Vec<Lease>> {
        let mut stmt = self.conn.prepare(&format!("SELECT ip, client, mac, hostname, state, expires FROM leases {tail}"))?;
        let rows = stmt.query_map(params, |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, String>(4)?, r.get::<_, i64>(5)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (ip, client, mac, hostname, state, expires) = row?;
            let lease = (|| {
                Some(Lease {
                    ip: ip.parse().ok()?,
                    client: ClientKey::from_text(&client)?,
                    mac: mac.parse::<MacAddr>().ok()?,
                    hostname,
                    state: LeaseState::parse(&state)?,
                    expires: u64::try_from(expires).ok()?,
                })
            })();
            match lease {
                Some(l) => out.push(l),
                None => tracing::warn!(ip, "skipping an unreadable lease row"),
            }
        }
        Ok(out)
    }

    /// Opens the store of `state_dir` read-only (for `netboot-xdp leases` while an agent runs).
    pub fn read_only(state_dir: &Path) -> anyhow::Result<SqliteStore> {
        let path = state_dir.join(DB_FILE);
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("no lease store at {}", path.display()))?;
        Ok(SqliteStore { conn })
    }
}

impl LeaseStore for SqliteStore {
    fn load(&mut self) -> anyhow::Result<Vec<Lease>> {
        // Oldest first: a client with rows for two addresses ends up with its latest.
        self.select("ORDER BY expires, rowid", [])
    }

    fn commit(&mut self, batch: &[&Lease]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO leases (ip, client, mac, hostname, state, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(ip) DO UPDATE SET client = ?2, mac = ?3, hostname = ?4, state = ?5, expires = ?6",
            )?;
            for l in batch {
                stmt.execute(params![
                    l.ip.to_string(),
                    l.client.to_text(),
                    l.mac.to_string(),
                    l.hostname,
                    l.state.as_str(),
                    i64::try_from(l.expires).unwrap_or(i64::MAX)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
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
    /// with `Ok`; if the transaction failed (full disk, I/O error), with the error, and the
    /// caller must not release what depended on it.
    /// Counts `lease_commits`, `lease_commit_failures` and `lease_commit_leases` in `stats`, and
    /// the time of each transaction as the `lease_commit` stage.
    pub fn start(
        mut store: Box<dyn LeaseStore>,
        stats: Arc<Stats>,
        mut done: impl FnMut(T, Result<(), Arc<anyhow::Error>>) + Send + 'static,
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
                        Ok(()) => {
                            stats.bump("lease_commits");
                            stats.add("lease_commit_leases", batch.len() as u64);
                        }
                        Err(e) => {
                            stats.bump("lease_commit_failures");
                            tracing::error!("lease store commit of {} leases failed; their replies are dropped: {e:#}", batch.len());
                        }
                    }
                    drop(batch);
                    for j in jobs {
                        done(j.then, result.clone());
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

/// The lease store file of a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nbx-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
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
        std::fs::remove_dir_all(&dir).unwrap();
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
        let mut table = crate::dhcp::leases::LeaseTable::default();
        table.load(loaded);
        assert_eq!(table.for_client(&new.client).unwrap().ip, new.ip);
        let mode = std::fs::metadata(dir.join(DB_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn committer_batches_and_releases_after_commit() {
        let dir = tmpdir("batch");
        let store = SqliteStore::open(&dir).unwrap();
        let (out_tx, out_rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let c = Committer::start(Box::new(store), stats.clone(), move |n: u32, r| out_tx.send((n, r.is_ok())).unwrap());
        for i in 0..200u32 {
            c.submit(Job { leases: vec![lease((i % 250) as u8, LeaseState::Bound)], then: i }).unwrap();
        }
        c.shutdown();
        let done: Vec<(u32, bool)> = out_rx.try_iter().collect();
        assert_eq!(done.len(), 200);
        assert!(done.iter().all(|(_, ok)| *ok));
        let tx = stats.get("lease_commits");
        assert!(tx >= 1 && tx <= 200, "{tx}");
        assert_eq!(stats.get("lease_commit_leases"), 200);
        assert_eq!(stats.latency()[&Stage::LeaseCommit].count(), tx);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
