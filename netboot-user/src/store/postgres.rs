//! The PostgreSQL backend: several servers, one database, and the database decides.
//!
//! Every lease write of every server is a call of `netboot_claim` (see [`super::schema`]): the
//! address is the primary key, a client has at most one live lease (a unique index), and a
//! claim either writes the row or returns the row that stands in the way. The batch of a
//! group commit is one transaction whose claims are pipelined on one connection: one round
//! trip and one WAL flush per batch, as SQLite's one fsync.
//!
//! The committer thread owns a [`PgStore`] and drives it with a runtime of its own; the
//! cluster tasks and the HTTP readers use a pool ([`pool`]) on the agent's runtime.

use super::{LeaseStore, Refusal, schema};
use crate::dhcp::leases::{ClientKey, Lease, LeaseState};
use crate::mac::MacAddr;
use anyhow::Context;
use std::time::Duration;
use tokio_postgres::{Client, Row};

/// How long a member's transaction may sit idle, and a claim may wait for a lock, before
/// PostgreSQL gives up on it: below the default `cluster.takeover`, so that a frozen member's
/// locks are gone by the time the others own its buckets. A frozen member's backend that is
/// not idle (blocked writing the answers of a pipelined batch its client no longer reads) is
/// not ended by this: the member that takes the buckets ends it.
pub const LOCK_BOUND: Duration = Duration::from_secs(2);

pub use crate::config::store_url::{CONNECT_TIMEOUT, Connection, Target, member_application_name, parse_url};

/// A connection whose driver runs on the current runtime (it ends when the client is dropped).
pub async fn connect(target: &Target) -> anyhow::Result<Client> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, target.connect())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL timed out after {CONNECT_TIMEOUT:?}"))?
        .context("cannot connect to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// A pool for the agent's tasks (cluster membership, change log, HTTP reads). Connections are
/// made on first use, so building one never fails on an unreachable server.
pub fn pool(target: &Target, size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    let mgr = deadpool_postgres::Manager::from_config(
        target.cfg.clone(),
        target.tls.clone(),
        deadpool_postgres::ManagerConfig { recycling_method: deadpool_postgres::RecyclingMethod::Fast },
    );
    deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .context("PostgreSQL pool")
}

/// Applies the migrations the database has not had, under an advisory lock (servers starting
/// together migrate once); the versions applied.
pub async fn migrate(client: &mut Client) -> anyhow::Result<Vec<u32>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(7233177829)", &[]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS netboot_schema (
            version integer PRIMARY KEY,
            what    text NOT NULL,
            applied timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM netboot_schema", &[]).await?.get(0);
    let current = current as u32;
    if let Some(newest) = schema::POSTGRES.last() && current > newest.version {
        anyhow::bail!("schema version {current} is newer than this netboot-xdp knows ({}): run the newer netboot-xdp", newest.version);
    }
    let mut applied = Vec::new();
    for m in schema::POSTGRES.iter().filter(|m| m.version > current) {
        tx.batch_execute(m.sql).await.with_context(|| format!("migration {} ({})", m.version, m.what))?;
        tx.execute("INSERT INTO netboot_schema (version, what) VALUES ($1, $2)", &[&(m.version as i32), &m.what]).await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The columns every lease query selects, in [`lease_from_row`]'s order; `alias` qualifies
/// them (`"l."`) in a join.
pub fn lease_columns(alias: &str) -> String {
    let a = alias;
    format!("host({a}ip), {a}client, {a}mac, {a}hostname, {a}state, {a}expires")
}

/// A lease from a row of [`lease_columns`] (from column `at`); `None` for an unreadable row.
pub fn lease_from_row(row: &Row, at: usize) -> Option<Lease> {
    let text = |i: usize| row.try_get::<_, Option<String>>(at + i).ok().flatten();
    Some(Lease {
        ip: text(0)?.parse().ok()?,
        client: ClientKey::from_text(&text(1)?)?,
        mac: text(2)?.parse::<MacAddr>().ok()?,
        hostname: text(3),
        state: LeaseState::parse(&text(4)?)?,
        expires: u64::try_from(row.try_get::<_, Option<i64>>(at + 5).ok().flatten()?).ok()?,
    })
}

/// Every stored lease, oldest expiry first (as SQLite's load: a client's latest wins).
pub async fn load(client: &Client) -> anyhow::Result<Vec<Lease>> {
    let rows = client.query(&format!("SELECT {} FROM netboot_leases ORDER BY expires, updated", lease_columns("")), &[]).await?;
    Ok(rows.iter().filter_map(|r| lease_from_row(r, 0)).collect())
}

/// The latest lease recorded for `mac`.
pub async fn latest_for_mac(client: &Client, mac: MacAddr) -> anyhow::Result<Option<Lease>> {
    let row = client
        .query_opt(&format!("SELECT {} FROM netboot_leases WHERE mac = $1 ORDER BY expires DESC LIMIT 1", lease_columns("")), &[&mac.to_string()])
        .await?;
    Ok(row.as_ref().and_then(|r| lease_from_row(r, 0)))
}

/// The committer's store: one connection, reconnected after a failure.
pub struct PgStore {
    /// Shut down in the background on drop: a store may be dropped on the agent's runtime
    /// (a failed start), where a runtime cannot block.
    rt: Option<tokio::runtime::Runtime>,
    target: Target,
    /// The connection and its prepared claim.
    client: Option<(Client, tokio_postgres::Statement)>,
    server_id: String,
    /// How far behind the store a lease renewed in the kernel may be
    /// ([`crate::dhcp::DhcpServer::renewal_slack`]): an address counts as free for another
    /// client only that much after its stored expiry.
    slack: i64,
}

/// "Now" for the claim is the database's clock less the slack.
const CLAIM: &str = "SELECT won, ip, client, mac, hostname, state, expires FROM netboot_claim($1::text::inet, $2, $3, $4, $5, $6, $7, extract(epoch FROM now())::bigint - $8)";

impl PgStore {
    /// Connects and brings the schema up to date; an unreachable server is an error here
    /// (the agent does not start without the leases it must know).
    pub fn open(target: Target, server_id: &str, slack: u64) -> anyhow::Result<PgStore> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let slack = i64::try_from(slack).unwrap_or(i64::MAX);
        let mut store = PgStore { rt: Some(rt), target, client: None, server_id: server_id.to_string(), slack };
        store.client()?;
        Ok(store)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("dropped only in Drop")
    }

    /// Connects again (and prepares the claim) if the last connection failed.
    fn client(&mut self) -> anyhow::Result<()> {
        if self.client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            self.client = None;
            let c = self.rt().block_on(async {
                let c = connect(&self.target).await?;
                // The schema first (a claim cannot be prepared before its function exists).
                let mut c = c;
                // A member frozen in the middle of a batch (SIGSTOP, a hang) holds its locks in
                // an open transaction; the others' claims on the same clients would wait behind
                // it for ever. PostgreSQL ends such a session after the slack's bound, and no
                // claim waits longer than that for a lock (the batch fails and is retransmitted).
                c.batch_execute(&format!(
                    "SET idle_in_transaction_session_timeout = {ms}; SET lock_timeout = {ms}",
                    ms = LOCK_BOUND.as_millis()
                ))
                .await?;
                let applied = migrate(&mut c).await?;
                if !applied.is_empty() {
                    tracing::info!(?applied, "PostgreSQL lease store: schema migrated");
                }
                let stmt = c.prepare(CLAIM).await?;
                anyhow::Ok((c, stmt))
            })?;
            self.client = Some(c);
        }
        Ok(())
    }

    /// One batch on the current connection (made first if there is none); the connection is
    /// kept only if the batch went through.
    fn commit_once(&mut self, batch: &[&Lease]) -> anyhow::Result<Vec<Refusal>> {
        self.client()?;
        let (mut c, stmt) = self.client.take().expect("connected above");
        let result = self.rt().block_on(Self::claim_all(&mut c, &stmt, &self.server_id, self.slack, batch));
        if result.is_ok() {
            self.client = Some((c, stmt));
        }
        result
    }

    async fn claim_all(client: &mut Client, stmt: &tokio_postgres::Statement, server_id: &str, slack: i64, batch: &[&Lease]) -> anyhow::Result<Vec<Refusal>> {
        let tx = client.transaction().await?;
        let args: Vec<_> = batch
            .iter()
            .map(|l| {
                (
                    l.ip.to_string(),
                    l.client.to_text(),
                    l.mac.to_string(),
                    l.hostname.clone(),
                    l.state.as_str(),
                    i64::try_from(l.expires).unwrap_or(i64::MAX),
                )
            })
            .collect();
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let params: Vec<[Param<'_>; 8]> = args
            .iter()
            .map(|(ip, client, mac, hostname, state, expires)| [ip as Param<'_>, client, mac, hostname, state, expires, &server_id, &slack])
            .collect();
        // Pipelined: every claim is sent before the first answer is read.
        let calls = params.iter().map(|p| tx.query_one(stmt, p));
        let rows = futures_util::future::try_join_all(calls).await?;
        tx.commit().await?;
        Ok(rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.get::<_, bool>(0))
            .map(|(index, r)| Refusal { index, winner: lease_from_row(r, 1) })
            .collect())
    }
}

impl LeaseStore for PgStore {
    fn load(&mut self) -> anyhow::Result<Vec<Lease>> {
        self.client()?;
        let c = self.client.take().expect("connected above");
        let result = self.rt().block_on(load(&c.0));
        if result.is_ok() {
            self.client = Some(c);
        }
        result
    }

    /// One transaction of pipelined claims. On an error the connection is dropped (the next
    /// batch connects again) and nothing of the batch counts as stored. A connection the server
    /// closed while it was not in use (a restart, the cluster ending this member's sessions
    /// while it hung) is only found closed when the batch is sent: then the batch is sent once
    /// more on a new connection. Claims are idempotent (a client's claim of the address it
    /// holds wins again), so a batch whose commit went through before the close is harmless.
    fn commit(&mut self, batch: &[&Lease]) -> anyhow::Result<Vec<Refusal>> {
        match self.commit_once(batch) {
            Err(e) if e.downcast_ref::<tokio_postgres::Error>().is_some_and(tokio_postgres::Error::is_closed) => {
                tracing::info!("PostgreSQL lease store: the connection was closed; the batch goes again on a new one");
                self.commit_once(batch)
            }
            result => result,
        }
    }

    fn shared(&self) -> bool {
        true
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.client = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
