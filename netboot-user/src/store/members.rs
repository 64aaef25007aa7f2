//! The cluster's tables in the shared PostgreSQL store: the members and their heartbeats
//! (`netboot_members`), and the change log every member follows (`netboot_lease_changes`,
//! announced on the `netboot_leases` channel). The cluster module decides when; this says how.

use super::postgres::{lease_columns, lease_from_row};
use crate::dhcp::leases::Lease;
use tokio_postgres::Client;

/// Changes read at once.
pub const CHANGES_PER_READ: i64 = 5000;
/// How long changes are kept: a member that was away longer loads the leases again.
const CHANGES_KEPT: &str = "10 minutes";
/// Subscribes a session to the channel every lease commit notifies (`schema.rs`'s trigger).
pub const LISTEN_CHANGES: &str = "LISTEN netboot_leases";

/// The latest change-log sequence.
pub async fn current_seq(c: &Client) -> anyhow::Result<i64> {
    Ok(c.query_one("SELECT coalesce(max(seq), 0) FROM netboot_lease_changes", &[]).await?.get(0))
}

/// Records a heartbeat of `server_id`, whose presence session has backend `pid`.
pub async fn heartbeat(c: &Client, server_id: &str, pid: Option<i32>) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO netboot_members (server_id, presence_pid, presence_at) VALUES ($1, $2, now())
         ON CONFLICT (server_id) DO UPDATE SET heartbeat = now(), presence_pid = $2, presence_at = now()",
        &[&server_id, &pid],
    )
    .await?;
    Ok(())
}

/// The live members, by server id: a heartbeat within `takeover_secs`, and the presence
/// backend still there (unless it has none, or registered it before the database last started).
pub async fn live(c: &Client, takeover_secs: f64) -> anyhow::Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT server_id FROM netboot_members m
              WHERE heartbeat > now() - make_interval(secs => $1)
                AND (presence_pid IS NULL OR presence_at < pg_postmaster_start_time()
                     OR EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = m.presence_pid))
              ORDER BY server_id",
            &[&takeover_secs],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Ends the sessions of the members silent for `takeover_secs` that they opened before their
/// last heartbeat (found by `application_name`, see `postgres::member_application_name`),
/// `me` excepted; the server id of each session ended.
pub async fn fence(c: &Client, takeover_secs: f64, me: &str) -> anyhow::Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT m.server_id, pg_terminate_backend(a.pid) FROM netboot_members m
               JOIN pg_stat_activity a ON a.application_name = left('netboot-xdp ' || m.server_id, 63)
              WHERE m.heartbeat <= now() - make_interval(secs => $1) AND m.server_id <> $2
                AND a.backend_start < m.heartbeat AND a.pid <> pg_backend_pid()",
            &[&takeover_secs, &me],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// The backend pid of this session.
pub async fn backend_pid(c: &Client) -> anyhow::Result<i32> {
    Ok(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0))
}

/// Forgets changes older than [`CHANGES_KEPT`].
pub async fn trim_changes(c: &Client) -> anyhow::Result<()> {
    let q = format!("DELETE FROM netboot_lease_changes WHERE at < now() - interval '{CHANGES_KEPT}'");
    c.execute(q.as_str(), &[]).await?;
    Ok(())
}

/// Removes `server_id` from the member list.
pub async fn leave(c: &Client, server_id: &str) -> anyhow::Result<()> {
    c.execute("DELETE FROM netboot_members WHERE server_id = $1", &[&server_id]).await?;
    Ok(())
}

/// One change of the log: its sequence, the server that committed it and the lease as it is
/// now (`None` if its row cannot be read as a lease).
pub struct Change {
    pub seq: i64,
    pub server_id: String,
    pub lease: Option<Lease>,
}

/// The changes after `from`, oldest first, at most [`CHANGES_PER_READ`].
pub async fn changes_since(c: &Client, from: i64) -> anyhow::Result<Vec<Change>> {
    let q = format!(
        "SELECT c.seq, l.server_id, {} FROM netboot_lease_changes c JOIN netboot_leases l ON l.ip = c.ip
         WHERE c.seq > $1 ORDER BY c.seq LIMIT {CHANGES_PER_READ}",
        lease_columns("l."),
    );
    let rows = c.query(q.as_str(), &[&from]).await?;
    Ok(rows.iter().map(|r| Change { seq: r.get(0), server_id: r.get(1), lease: lease_from_row(r, 2) }).collect())
}
