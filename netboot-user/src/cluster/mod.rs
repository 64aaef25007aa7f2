//! Several servers, one truth: membership, bucket ownership and the change log of a shared
//! PostgreSQL lease store (docs/CLUSTER.md).
//!
//! Every member heartbeats into the database (the database's clock: no two servers' clocks are
//! compared) and reads the live members each beat; each derives the same owner of each of the
//! 256 load-balancing buckets from that list ([`buckets::owned_by`]) and writes its share to
//! the XDP program's `BUCKET_OWNER` and the DHCP core. A member silent for `cluster.takeover`
//! drops out of every list, and its buckets move. A member that stops cleanly leaves at once.
//! A member that crashes leaves at the others' next beat: each member holds a presence session
//! open and heartbeats its backend pid; when the process dies its sessions end with it, and a
//! member whose presence backend is gone is no longer listed. A hung member (its sockets still
//! open) and a lost host (no FIN reaches the database) are only seen by their silence; then the
//! others end its sessions ([`Member::fence`]), whose locks would otherwise stand in the way of
//! the claims on its clients.
//!
//! Leases other servers commit reach this server through the change log: a LISTEN wakes the
//! follower, and it polls every second anyway (a lost listener connection costs a second).


use crate::dhcp::leases::Lease;
use crate::stats::Stats;
use crate::store::members::{self, CHANGES_PER_READ};
use aya::maps::{Array, MapData};
use crate::dhcp::buckets::{self, Buckets};
use netboot_common::cluster::{BUCKETS, OWNER_OTHER, OWNER_SELF};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// What `status` and `/metrics` show of the cluster; shared with the HTTP layer.
pub struct ClusterState {
    pub server_id: String,
    pub takeover: Duration,
    pub buckets: Arc<Buckets>,
    members: Mutex<Vec<String>>,
    reachable: AtomicBool,
    /// The last change-log sequence applied.
    seq: AtomicI64,
}

impl ClusterState {
    pub fn new(server_id: &str, takeover: Duration, start_seq: i64) -> ClusterState {
        ClusterState {
            server_id: server_id.to_string(),
            takeover,
            buckets: Arc::default(),
            members: Mutex::new(vec![server_id.to_string()]),
            reachable: AtomicBool::new(true),
            seq: AtomicI64::new(start_seq),
        }
    }

    pub fn members(&self) -> Vec<String> {
        self.members.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// `status --json`'s `cluster` object.
    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            backend: "postgresql",
            change_seq: Some(self.seq.load(Ordering::Relaxed)),
            members: self.members(),
            owned_buckets: self.buckets.owned_count(),
            server_id: Some(self.server_id.clone()),
            store: if self.reachable() { "ok" } else { "unreachable" },
        }
    }
}

/// This server's view of its cluster, in `status`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// `sqlite` (one server) or `postgresql` (a cluster).
    pub backend: &'static str,
    /// The store's change log position this member has applied (PostgreSQL only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_seq: Option<i64>,
    /// Live members' server ids.
    pub members: Vec<String>,
    /// Buckets of the MAC space (of 256) this member answers.
    pub owned_buckets: u32,
    pub server_id: Option<String>,
    /// `ok` or `unreachable`.
    pub store: &'static str,
}

/// The XDP program's `BUCKET_OWNER` map.
pub struct OwnerMap(Array<MapData, u8>);

impl OwnerMap {
    pub fn new(map: aya::maps::Map) -> anyhow::Result<OwnerMap> {
        Ok(OwnerMap(Array::try_from(map)?))
    }

    fn write(&mut self, owned: &[bool; BUCKETS as usize]) -> anyhow::Result<()> {
        for (b, o) in owned.iter().enumerate() {
            self.0.set(b as u32, if *o { OWNER_SELF } else { OWNER_OTHER }, 0)?;
        }
        Ok(())
    }
}

/// The latest change-log sequence: read before the leases are loaded, so that nothing
/// committed in between is missed (a change seen twice is harmless).
pub async fn current_seq(pool: &deadpool_postgres::Pool) -> anyhow::Result<i64> {
    members::current_seq(&*pool.get().await?).await
}

/// The cluster's tasks of one agent.
pub struct Member {
    pub state: Arc<ClusterState>,
    pool: deadpool_postgres::Pool,
    /// The heartbeat's own connection: a pool the provisioning tables, discovery and the
    /// change log share can be exhausted by a flood of writes, and a member whose heartbeat
    /// waits for a connection is taken for dead and loses its buckets.
    beats: deadpool_postgres::Pool,
    target: crate::store::postgres::Target,
    owner_map: Option<OwnerMap>,
    stats: Arc<Stats>,
    /// The presence session and its backend pid (None while it cannot be opened: the others
    /// then judge this member by its heartbeats alone).
    presence: Option<(tokio_postgres::Client, i32)>,
}

impl Member {
    pub fn new(state: Arc<ClusterState>, pool: deadpool_postgres::Pool, target: crate::store::postgres::Target, owner_map: Option<OwnerMap>, stats: Arc<Stats>) -> anyhow::Result<Member> {
        let beats = crate::store::postgres::pool(&target, 1)?;
        Ok(Member { state, pool, beats, target, owner_map, stats, presence: None })
    }

    /// The member's connection pool (the provisioning tables share it).
    pub fn pool(&self) -> deadpool_postgres::Pool {
        self.pool.clone()
    }

    /// Writes bucket ownership to the XDP program too: the buckets known now at once, every
    /// change from now on.
    pub fn set_owner_map(&mut self, mut map: OwnerMap) -> anyhow::Result<()> {
        map.write(&self.state.buckets.snapshot())?;
        self.owner_map = Some(map);
        Ok(())
    }

    /// One heartbeat and a new owner map from the live members. At start, before serving,
    /// so that a joining server never answers its neighbours' buckets.
    pub async fn beat(&mut self) -> anyhow::Result<()> {
        let pid = self.presence_pid().await;
        let c = self.beats.get().await?;
        members::heartbeat(&c, &self.state.server_id, pid).await?;
        let mut live = members::live(&c, self.state.takeover.as_secs_f64()).await?;
        if !live.contains(&self.state.server_id) {
            live.push(self.state.server_id.clone());
            live.sort();
        }
        let owned = buckets::owned_by(&self.state.server_id, &live);
        if owned != self.state.buckets.snapshot() {
            if let Some(m) = &mut self.owner_map {
                m.write(&owned)?;
            }
            self.state.buckets.set(&owned);
            self.stats.bump("cluster_rebalances");
            tracing::info!(members = ?live, owned = self.state.buckets.owned_count(), "cluster: bucket owners changed");
        }
        *self.state.members.lock().unwrap_or_else(|e| e.into_inner()) = live;
        Ok(())
    }

    /// Ends the database sessions of the members that fell silent (heartbeat `takeover` old)
    /// and that they opened before their last heartbeat. A hung member's committer may hold
    /// the advisory locks of its clients in a backend blocked writing answers its process no
    /// longer reads: not idle, so `idle_in_transaction_session_timeout` never ends it, and every
    /// claim of this member's on those clients would fail its `lock_timeout` for as long as
    /// the member hangs (the likely cause of 26 failed batches in a 1000-machine SIGSTOP storm
    /// in CI). A member that wakes
    /// up finds its sessions gone, connects again and heartbeats back in; what it had not
    /// committed was never acknowledged. Sessions are found by their `application_name`
    /// ([`crate::store::postgres::member_application_name`]); ending them needs the same
    /// database role for every member (or `pg_signal_backend`).
    async fn fence(&self) {
        let fenced = async { members::fence(&*self.pool.get().await?, self.state.takeover.as_secs_f64(), &self.state.server_id).await };
        match fenced.await {
            Ok(mut ended) if !ended.is_empty() => {
                self.stats.add("cluster_fenced_sessions", ended.len() as u64);
                let sessions = ended.len();
                ended.sort();
                ended.dedup();
                tracing::warn!(sessions, members = ?ended, "cluster: ended the database sessions of members that fell silent");
            }
            Ok(_) => {}
            Err(e) => {
                self.stats.bump("cluster_fence_errors");
                tracing::warn!("cluster: ending a silent member's sessions: {e:#}");
            }
        }
    }

    /// The backend pid of this member's presence session, opened again when it was lost.
    async fn presence_pid(&mut self) -> Option<i32> {
        if self.presence.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.presence = None;
        }
        if self.presence.is_none() {
            let open = async {
                let (client, conn) = self.target.connect().await?;
                tokio::spawn(conn);
                let pid = members::backend_pid(&client).await?;
                anyhow::Ok((client, pid))
            };
            match open.await {
                Ok(p) => self.presence = Some(p),
                Err(e) => tracing::debug!("cluster: presence session: {e:#}"),
            }
        }
        self.presence.as_ref().map(|(_, pid)| *pid)
    }

    /// Heartbeats, follows the change log and garbage-collects it until `shutdown`; then
    /// leaves the member list. `remote` receives the leases other servers committed.
    pub async fn run(mut self, remote: mpsc::UnboundedSender<Vec<Lease>>, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(self.target.clone(), wake.clone(), shutdown.clone()));
        // Six beats per takeover: a crashed member is seen within one beat (half a second
        // at the default), a silent one within takeover and one beat.
        let mut beat = tokio::time::interval((self.state.takeover / 6).max(Duration::from_millis(250)));
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        let mut gc = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let r = self.beat().await;
                    let live = r.is_ok();
                    self.set_reachable(r);
                    if live {
                        self.fence().await;
                    }
                }
                _ = poll.tick() => self.follow(&remote).await,
                _ = wake.notified() => self.follow(&remote).await,
                _ = gc.tick() => {
                    if let Ok(c) = self.pool.get().await {
                        let _ = members::trim_changes(&c).await;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        listener.abort();
        if let Ok(c) = self.pool.get().await {
            let _ = members::leave(&c, &self.state.server_id).await;
            tracing::info!(server_id = %self.state.server_id, "cluster: left the member list");
        }
    }

    fn set_reachable<T>(&self, r: anyhow::Result<T>) {
        match r {
            Ok(_) => {
                if !self.state.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!("cluster: lease store reachable again");
                }
            }
            Err(e) => {
                self.stats.bump("cluster_store_errors");
                if self.state.reachable.swap(false, Ordering::Relaxed) {
                    tracing::error!("cluster: lease store unreachable: {e:#}");
                }
            }
        }
    }

    /// Reads the changes after the last one applied and hands over other servers' leases.
    async fn follow(&self, remote: &mpsc::UnboundedSender<Vec<Lease>>) {
        loop {
            let from = self.state.seq.load(Ordering::Relaxed);
            let rows = async { members::changes_since(&*self.pool.get().await?, from).await }.await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    self.set_reachable::<()>(Err(e));
                    return;
                }
            };
            let Some(last) = rows.last() else { return };
            self.state.seq.store(last.seq, Ordering::Relaxed);
            let count = rows.len() as i64;
            let theirs: Vec<Lease> = rows.into_iter().filter(|r| r.server_id != self.state.server_id).filter_map(|r| r.lease).collect();
            self.stats.add("cluster_remote_changes", theirs.len() as u64);
            if !theirs.is_empty() && remote.send(theirs).is_err() {
                return;
            }
            if count < CHANGES_PER_READ {
                return;
            }
        }
    }
}

/// LISTENs on the change channel and wakes the follower; reconnects every second after a
/// failure (the follower polls meanwhile).
async fn listen(target: crate::store::postgres::Target, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    use futures_util::StreamExt;
    loop {
        let session = async {
            let (client, mut conn) = target.connect().await?;
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            let listen = client.batch_execute(members::LISTEN_CHANGES);
            tokio::pin!(listen);
            // The LISTEN completes only while the connection is driven.
            loop {
                tokio::select! {
                    r = &mut listen => { r?; break; }
                    m = messages.next() => match m {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(anyhow::Error::from(e)),
                        None => anyhow::bail!("listener connection closed"),
                    }
                }
            }
            while let Some(m) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m? {
                    wake.notify_one();
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    tracing::debug!("cluster: change listener: {e:#}");
                }
            }
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
