//! The SQLite backend: one server, `<state_dir>/leases.sqlite`.

use super::{LeaseStore, Refusal, schema};
use crate::dhcp::leases::{ClientKey, Lease, LeaseState};
use crate::mac::MacAddr;
use anyhow::Context;
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};

/// SQLite in WAL mode with `synchronous = FULL`: a commit survives a crash of the agent and of
/// the machine. The file (`<state_dir>/leases.sqlite`) can be read with the `sqlite3` tool.
pub struct SqliteStore {
    conn: Connection,
    /// The migrations [`SqliteStore::open`] applied.
    pub migrated: Vec<u32>,
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
        // The provisioning API writes the same file as the committer: wait for its lock.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = SqliteStore { conn, migrated: Vec::new() };
        store.migrated = store.migrate().with_context(|| format!("cannot bring the schema of {} up to date", path.display()))?;
        Ok(store)
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Applies the migrations this file has not had (its version is `PRAGMA user_version`);
    /// the versions applied.
    pub fn migrate(&mut self) -> anyhow::Result<Vec<u32>> {
        let tx = self.conn.transaction()?;
        let current: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let mut applied = Vec::new();
        for m in schema::SQLITE.iter().filter(|m| m.version > current) {
            tx.execute_batch(m.sql).with_context(|| format!("migration {} ({})", m.version, m.what))?;
            tx.pragma_update(None, "user_version", m.version)?;
            applied.push(m.version);
        }
        if let Some(newest) = schema::SQLITE.last() && current > newest.version {
            anyhow::bail!("schema version {current} is newer than this netboot-xdp knows ({}): run the newer netboot-xdp", newest.version);
        }
        tx.commit()?;
        Ok(applied)
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
        Ok(SqliteStore { conn, migrated: Vec::new() })
    }
}

impl LeaseStore for SqliteStore {
    fn load(&mut self) -> anyhow::Result<Vec<Lease>> {
        // Oldest first: a client with rows for two addresses ends up with its latest.
        self.select("ORDER BY expires, rowid", [])
    }

    fn shared(&self) -> bool {
        false
    }

    /// One server owns the file: nothing is ever refused.
    fn commit(&mut self, batch: &[&Lease]) -> anyhow::Result<Vec<Refusal>> {
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
        Ok(Vec::new())
    }
}

/// The lease store file of a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

