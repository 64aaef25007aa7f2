//! What every route reads: the config's view for HTTP (replaced whole on reload) and the
//! agent's shared state (lease reader, timelines, stats, provisioning, open files).

use crate::config::{Config, Host};
use crate::store::LeaseReader;
use crate::cluster::ClusterStatus;
use crate::fastpath::{Counters, pins};
use crate::mac::MacAddr;
use crate::stats::Stats;
use std::collections::{BTreeMap, HashMap};
use crate::runtime::AgentRecord;
use crate::timeline::Timelines;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// What the HTTP layer takes from the config; replaced as a whole on reload.
pub struct View {
    pub root: PathBuf,
    pub script: PathBuf,
    pub hosts: HashMap<MacAddr, Host>,
    /// `[api] tokens_file`'s tokens.
    pub tokens: crate::http::auth::Tokens,
    pub public_read: bool,
    /// `http.listen`'s port, for the URLs scripts get.
    pub port: u16,
    pub profiles: Vec<crate::config::profile::Profile>,
    /// `http.listen` also speaks TLS (`[api] tls_cert`): tokens are refused over plain HTTP.
    pub tls: bool,
    /// `http.max_downloads` (0 = unlimited).
    pub max_downloads: u32,
}

impl View {
    pub fn new(config: &Config) -> View {
        View {
            root: config.http.root.clone(),
            script: config.http.script.clone(),
            hosts: config.dhcp.reservations().map(|h| (h.mac, h.clone())).collect(),
            tokens: crate::http::auth::Tokens::new(config.api.tokens_path.clone()),
            public_read: config.api.public_read,
            port: config.http.listen.port(),
            profiles: config.profiles.clone(),
            tls: config.api.tls_cert.is_some(),
            max_downloads: config.http.max_downloads,
        }
    }
}

pub struct HttpState {
    pub(super) view: RwLock<Arc<View>>,
    pub server: Ipv4Addr,
    /// Where scripts and `/api/v1/leases` read leases.
    pub leases: LeaseReader,
    pub agent: AgentRecord,
    pub stats: Arc<Stats>,
    pub timelines: Arc<Timelines>,
    /// Kernel renewals not in the store yet, shown in `/api/v1/leases`.
    pub renewals: Arc<crate::dhcp::UnwrittenRenewals>,
    /// This server's view of its cluster (shared store only).
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    /// `cluster.server_id` without a shared store.
    server_id: Option<String>,
    /// Hosts of the API, node intents, the audit log (absent in unit tests).
    pub provision: Option<Arc<crate::provision::Provision>>,
    /// The machines that asked (absent in unit tests).
    pub discovery: Option<Arc<crate::provision::discovery::Discovery>>,
    /// Files of `http.root` kept open.
    pub files: crate::http::files::OpenFiles,
    /// Files being sent now, for `http.max_downloads`.
    downloads: Arc<std::sync::atomic::AtomicU32>,
}

/// A place among the files being sent, held by the response (its extensions live until the
/// connection wrote the last byte) and given back on drop.
#[derive(Clone)]
pub(super) struct Download {
    _slot: Arc<DownloadSlot>,
}

struct DownloadSlot(Arc<std::sync::atomic::AtomicU32>);

impl Drop for DownloadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl HttpState {
    /// A place among `max` concurrent downloads (0 = unlimited), or `None` when all are taken.
    pub(super) fn admit_download(&self, max: u32) -> Option<Download> {
        use std::sync::atomic::Ordering;
        let taken = self.downloads.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1));
        taken.ok().map(|_| Download { _slot: Arc::new(DownloadSlot(self.downloads.clone())) })
    }
}

impl HttpState {
    /// Fails only on a `cluster.store` URL that does not parse (validated with the config).
    pub fn new(config: &Config, server: Ipv4Addr, agent: AgentRecord, stats: Arc<Stats>, timelines: Arc<Timelines>) -> anyhow::Result<HttpState> {
        Ok(HttpState {
            view: RwLock::new(Arc::new(View::new(config))),
            server,
            leases: LeaseReader::new(config)?,
            agent,
            stats,
            timelines,
            renewals: Arc::default(),
            cluster: None,
            server_id: config.cluster.server_id().map(str::to_string),
            provision: None,
            discovery: None,
            files: Default::default(),
            downloads: Arc::default(),
        })
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status of the agent: what `netboot-xdp status --json` prints.
    pub fn status(&self) -> Status {
        let counters = Counters::from_pin(&pins::iface_dir(&self.agent.iface)).ok();
        Status {
            agent: self.stats.snapshot(),
            agent_pid: self.agent.pid,
            agent_running: true,
            cluster: match &self.cluster {
                Some(c) => c.status(),
                None => ClusterStatus {
                    backend: "sqlite",
                    change_seq: None,
                    members: self.server_id.iter().cloned().collect(),
                    owned_buckets: netboot_common::cluster::BUCKETS,
                    server_id: self.server_id.clone(),
                    store: "ok",
                },
            },
            config: self.agent.config.clone(),
            counters: counters.map(|c| c.named()),
            iface: self.agent.iface.clone(),
            nodes: self.timelines.len(),
            nodes_evicted: self.timelines.nodes_dropped(),
            xdp_mode: self.agent.xdp_mode.clone(),
        }
    }
}

/// The address of the peer (absent on the control socket).
#[derive(Clone, Copy)]
pub struct Peer(pub Option<std::net::IpAddr>);

/// `GET /api/v1/status`, `netboot-xdp status --json`: the agent, its counters and its cluster
/// (the fields in the order they have always been written).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    /// The agent's counters by name (`/metrics` has them too, with latencies).
    pub agent: BTreeMap<String, u64>,
    pub agent_pid: u32,
    pub agent_running: bool,
    pub cluster: ClusterStatus,
    /// The config file the agent runs.
    #[schema(value_type = String)]
    pub config: std::path::PathBuf,
    /// The XDP program's per-CPU counters summed, by name; null if its maps cannot be read.
    pub counters: Option<BTreeMap<&'static str, u64>>,
    pub iface: String,
    /// Nodes with a timeline.
    pub nodes: usize,
    /// Timelines dropped to stay within the bound.
    pub nodes_evicted: u64,
    /// `native` or `skb`.
    pub xdp_mode: String,
}
