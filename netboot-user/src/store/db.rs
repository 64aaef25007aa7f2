//! The provisioning tables of the lease store (SQLite in `state_dir`, or the cluster's
//! PostgreSQL, so that every member sees the same hosts and intents): hosts of the API, node
//! intents, node events and the audit log. Every write is one transaction that also bumps
//! `netboot_provision_rev`, which the members poll.

use super::records::{AuditEntry, Intent, NodeEvent, NodeIntent};
use super::stmt::Stmt;
use crate::config::Host;
use crate::mac::MacAddr;
use crate::store::SqliteStore;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One write; a request's writes are applied together or not at all.
#[derive(Debug, Clone)]
pub enum Change {
    PutHost(Host),
    DeleteHost(MacAddr),
    SetIntent { mac: MacAddr, intent: Intent, once: bool },
    ClearIntent(MacAddr),
    BootToken { mac: MacAddr, token: String },
    Event { mac: MacAddr, event: String, message: String },
}

/// Everything the agent keeps in memory of the tables, at revision `rev`.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub rev: i64,
    pub hosts: Vec<Host>,
    pub intents: HashMap<MacAddr, NodeIntent>,
}

#[derive(Clone)]
pub enum ProvisionDb {
    /// A connection of its own to `<state_dir>/leases.sqlite` (opened, and migrated, once).
    Sqlite(Arc<Mutex<SqliteStore>>),
    Postgres(deadpool_postgres::Pool),
}

/// Events kept per node, and audit entries kept in all: what the network can make these
/// tables hold (a node's installer may report as often as it likes; the oldest go).
pub const EVENTS_PER_NODE: i64 = 100;
pub const AUDIT_KEPT: i64 = 100_000;

/// The deletions that keep the bounds above, after an event of `$1`/`?1` and an audit entry.
const TRIM_EVENTS: &str = "DELETE FROM netboot_events WHERE mac = {p}1 AND id <= (SELECT id FROM netboot_events WHERE mac = {p}1 ORDER BY id DESC LIMIT 1 OFFSET {n})";
const TRIM_AUDIT: &str = "DELETE FROM netboot_audit WHERE id <= (SELECT max(id) FROM netboot_audit) - {n}";

fn trim_events() -> String {
    TRIM_EVENTS.replace("{n}", &EVENTS_PER_NODE.to_string())
}

fn trim_audit() -> String {
    TRIM_AUDIT.replace("{n}", &AUDIT_KEPT.to_string())
}

fn now() -> i64 {
    (crate::timeline::unix_ms() / 1000) as i64
}

impl ProvisionDb {
    pub fn sqlite(state_dir: &Path) -> anyhow::Result<ProvisionDb> {
        Ok(ProvisionDb::Sqlite(Arc::new(Mutex::new(SqliteStore::open(state_dir)?))))
    }

    pub async fn rev(&self) -> anyhow::Result<i64> {
        match self {
            ProvisionDb::Sqlite(db) => {
                with_sqlite(db, |store| Ok(store.conn().query_row("SELECT rev FROM netboot_provision_rev", [], |r| r.get(0))?)).await
            }
            ProvisionDb::Postgres(pool) => Ok(pool.get().await?.query_one("SELECT rev FROM netboot_provision_rev", &[]).await?.get(0)),
        }
    }

    pub async fn load(&self) -> anyhow::Result<Contents> {
        let mut c = Contents::default();
        let rows: Vec<Row>;
        match self {
            ProvisionDb::Sqlite(db) => {
                (c.rev, rows) = with_sqlite(db, |store| {
                    let tx = store.conn_mut().transaction()?;
                    let rev = tx.query_row("SELECT rev FROM netboot_provision_rev", [], |r| r.get(0))?;
                    let rows = load_rows_sqlite(&tx)?;
                    Ok((rev, rows))
                })
                .await?;
            }
            ProvisionDb::Postgres(pool) => {
                let mut client = pool.get().await?;
                let tx = client.build_transaction().read_only(true).isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await?;
                c.rev = tx.query_one("SELECT rev FROM netboot_provision_rev", &[]).await?.get(0);
                rows = tx
                    .query(
                        "SELECT coalesce(h.mac, n.mac), n.intent, n.intent_once, n.boot_token, h.doc
                           FROM netboot_hosts h FULL JOIN netboot_nodes n ON n.mac = h.mac",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|r| {
                        let intent: Option<String> = r.get(1);
                        (r.get(0), intent.map(|i| (i, r.get::<_, bool>(2), r.get(3))), r.get(4))
                    })
                    .collect();
                tx.commit().await?;
            }
        }
        for (mac, intent, doc) in rows {
            let Ok(mac) = mac.parse::<MacAddr>() else { continue };
            if let Some((i, once, boot_token)) = intent && let Some(intent) = Intent::parse(&i) {
                c.intents.insert(mac, NodeIntent { intent, once, boot_token });
            }
            if let Some(doc) = doc {
                match serde_json::from_str::<Host>(&doc) {
                    Ok(h) => c.hosts.push(h),
                    Err(e) => tracing::error!(%mac, "provisioning: unreadable host row skipped: {e}"),
                }
            }
        }
        c.hosts.sort_by_key(|h| h.mac);
        Ok(c)
    }

    /// Applies `changes` and `audit` in one transaction.
    pub async fn apply(&self, changes: Vec<Change>, audit: Option<AuditEntry>) -> anyhow::Result<()> {
        let mut stmts = Vec::new();
        for c in &changes {
            stmts.extend(statements(c)?);
        }
        if let Some(a) = audit {
            stmts.push(Stmt::new(
                "INSERT INTO netboot_audit (at, who, action, target, detail) VALUES ({p}1, {p}2, {p}3, {p}4, {p}5)",
                vec![a.at.into(), a.who.into(), a.action.into(), a.target.into(), a.detail.into()],
            ));
            stmts.push(Stmt::new(trim_audit(), vec![]));
        }
        stmts.push(Stmt::new("UPDATE netboot_provision_rev SET rev = rev + 1", vec![]));
        self.transact(stmts).await
    }

    /// Runs `stmts` in order in one transaction, on either backend; durable when this
    /// returns `Ok`.
    pub async fn transact(&self, stmts: Vec<Stmt>) -> anyhow::Result<()> {
        match self {
            ProvisionDb::Sqlite(db) => {
                with_sqlite(db, move |store| {
                    let tx = store.conn_mut().transaction()?;
                    for s in &stmts {
                        tx.prepare_cached(&s.sql("?"))?.execute(rusqlite::params_from_iter(&s.params))?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            ProvisionDb::Postgres(pool) => {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                for s in &stmts {
                    let prepared = tx.prepare_cached(&s.sql("$")).await?;
                    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = s.params.iter().map(|p| p as _).collect();
                    tx.execute(&prepared, &params).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit(&self, limit: i64) -> anyhow::Result<Vec<AuditEntry>> {
        const Q: &str = "SELECT at, who, action, target, detail FROM netboot_audit ORDER BY id DESC LIMIT ";
        match self {
            ProvisionDb::Sqlite(db) => {
                with_sqlite(db, move |store| {
                    let mut st = store.conn().prepare(&format!("{Q}?1"))?;
                    let rows = st.query_map([limit], |r| {
                        Ok(AuditEntry { at: r.get(0)?, who: r.get(1)?, action: r.get(2)?, target: r.get(3)?, detail: r.get(4)? })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await
            }
            ProvisionDb::Postgres(pool) => Ok(pool
                .get()
                .await?
                .query(&format!("{Q}$1"), &[&limit])
                .await?
                .iter()
                .map(|r| AuditEntry { at: r.get(0), who: r.get(1), action: r.get(2), target: r.get(3), detail: r.get(4) })
                .collect()),
        }
    }

    /// The events of `mac`, oldest first.
    pub async fn events(&self, mac: MacAddr) -> anyhow::Result<Vec<NodeEvent>> {
        const Q: &str = "SELECT at, event, message FROM netboot_events WHERE mac = ";
        let mac = mac.to_string();
        match self {
            ProvisionDb::Sqlite(db) => {
                with_sqlite(db, move |store| {
                    let mut st = store.conn().prepare(&format!("{Q}?1 ORDER BY id"))?;
                    let rows = st.query_map([mac], |r| Ok(NodeEvent { at: r.get(0)?, event: r.get(1)?, message: r.get(2)? }))?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await
            }
            ProvisionDb::Postgres(pool) => Ok(pool
                .get()
                .await?
                .query(&format!("{Q}$1 ORDER BY id"), &[&mac])
                .await?
                .iter()
                .map(|r| NodeEvent { at: r.get(0), event: r.get(1), message: r.get(2) })
                .collect()),
        }
    }
}

/// A node's row of the provisioning tables: its MAC, its intent (intent, once, boot token) if
/// it has one, its host document if it is a host.
type Row = (String, Option<(String, bool, Option<String>)>, Option<String>);

fn load_rows_sqlite(tx: &rusqlite::Transaction) -> anyhow::Result<Vec<Row>> {
    // No FULL JOIN before SQLite 3.39 everywhere: hosts, then intents of nodes without a host.
    let mut st = tx.prepare(
        "SELECT h.mac, n.intent, n.intent_once, n.boot_token, h.doc FROM netboot_hosts h LEFT JOIN netboot_nodes n ON n.mac = h.mac
         UNION ALL
         SELECT n.mac, n.intent, n.intent_once, n.boot_token, NULL FROM netboot_nodes n
          WHERE NOT EXISTS (SELECT 1 FROM netboot_hosts h WHERE h.mac = n.mac)",
    )?;
    let rows = st.query_map([], |r| {
        let intent: Option<String> = r.get(1)?;
        let once: Option<bool> = r.get(2)?;
        Ok((r.get(0)?, intent.map(|i| (i, once.unwrap_or(true), r.get(3).ok().flatten())), r.get(4)?))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// What `c` writes.
fn statements(c: &Change) -> anyhow::Result<Vec<Stmt>> {
    Ok(match c {
        Change::PutHost(h) => vec![Stmt::new(
            "INSERT INTO netboot_hosts (mac, doc) VALUES ({p}1, {p}2) ON CONFLICT (mac) DO UPDATE SET doc = EXCLUDED.doc",
            vec![h.mac.to_string().into(), serde_json::to_string(h)?.into()],
        )],
        Change::DeleteHost(mac) => vec![
            Stmt::new("DELETE FROM netboot_hosts WHERE mac = {p}1", vec![mac.to_string().into()]),
            Stmt::new("DELETE FROM netboot_nodes WHERE mac = {p}1", vec![mac.to_string().into()]),
        ],
        Change::SetIntent { mac, intent, once } => vec![Stmt::new(
            "INSERT INTO netboot_nodes (mac, intent, intent_once, updated) VALUES ({p}1, {p}2, {p}3, {p}4)
             ON CONFLICT (mac) DO UPDATE SET intent = EXCLUDED.intent, intent_once = EXCLUDED.intent_once, updated = EXCLUDED.updated,
                boot_token = CASE WHEN netboot_nodes.intent = EXCLUDED.intent THEN netboot_nodes.boot_token END",
            vec![mac.to_string().into(), intent.name().into(), (*once).into(), now().into()],
        )],
        Change::ClearIntent(mac) => vec![Stmt::new("DELETE FROM netboot_nodes WHERE mac = {p}1", vec![mac.to_string().into()])],
        Change::BootToken { mac, token } => {
            vec![Stmt::new("UPDATE netboot_nodes SET boot_token = {p}2 WHERE mac = {p}1", vec![mac.to_string().into(), token.clone().into()])]
        }
        Change::Event { mac, event, message } => vec![
            Stmt::new(
                "INSERT INTO netboot_events (mac, at, event, message) VALUES ({p}1, {p}2, {p}3, {p}4)",
                vec![mac.to_string().into(), now().into(), event.clone().into(), message.clone().into()],
            ),
            Stmt::new(trim_events(), vec![mac.to_string().into()]),
        ],
    })
}

/// Runs `f` on the SQLite connection off the runtime's threads (a commit waits for the disk).
pub(crate) async fn with_sqlite<T: Send + 'static>(
    db: &Arc<Mutex<SqliteStore>>,
    f: impl FnOnce(&mut SqliteStore) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&mut db.lock().unwrap_or_else(|e| e.into_inner()))).await?
}

