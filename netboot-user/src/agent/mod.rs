//! The agent: everything `netboot-xdp attach` runs on one interface, until a signal or a
//! service that fails ([`services`]).

mod services;

use crate::config::{Config, DhcpMode, TftpEngine};
use crate::tftp;
use crate::serve::dhcp::FastPathLink;
use crate::fastpath::cache::ReplyCache;
use crate::fastpath::sync::CacheSync;
use aya::maps::RingBuf;
use netboot_common::maps;
use crate::store::{LeaseStore, SqliteStore};
use crate::dhcp::{DhcpServer, ServerParams};
use crate::fastpath::{Loaded, StartError, XdpModeArg};
use crate::iface::Interface;
use crate::runtime::AgentRecord;
use crate::timeline::Timelines;
use crate::stats::Stats;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs the agent on `iface` in the foreground until SIGINT or SIGTERM, then detaches.
///
/// Start order: the config (a bad one stops everything), root, the interface, the lease store,
/// the DHCP and TFTP sockets, the HTTP listener and control socket, then the XDP program;
/// anything that fails undoes what came before. Then the config is watched (SIGHUP, file
/// changes) and reloaded in place (see [`crate::published`]).
pub async fn run(iface_name: &str, config_path: &Path, mode: XdpModeArg) -> anyhow::Result<()> {
    let file_config = Config::load(config_path)?;
    if unsafe { libc::geteuid() } != 0 {
        return Err(StartError::NotRoot.into());
    }
    let iface = Interface::lookup(iface_name).map_err(|_| StartError::NoSuchInterface(iface_name.into()))?;
    if let Some(rec) = AgentRecord::read(iface_name).filter(AgentRecord::is_running) {
        anyhow::bail!("{iface_name} is already served by netboot-xdp pid {} (netboot-xdp detach {iface_name})", rec.pid);
    }
    let server_ip = iface.server_ip(file_config.server.address)?;

    let stats = Arc::new(Stats::default());
    let (store, mut cluster) = open_store(&file_config, ServerParams::lease_secs(&file_config), &stats).await?;
    // The hosts of the API are reservations like the config's: laid over it before anything
    // serves ([`crate::provision`]); from here on `config` is the effective config.
    let provision_db = match &cluster {
        Some(member) => crate::store::db::ProvisionDb::Postgres(member.pool()),
        None => crate::store::db::ProvisionDb::sqlite(&file_config.server.state_dir)?,
    };
    let discovery = Arc::new(crate::provision::discovery::Discovery::new(provision_db.clone()).with_stats(stats.clone()));
    let (provision, configs) = crate::provision::Provision::open(provision_db.clone(), file_config)
        .await
        .map_err(|e| e.context("cannot read the provisioning tables of the lease store"))?;
    let config = (*configs.borrow()).clone();
    let params = ServerParams::from_config(&config, server_ip);
    let (store, stored) = tokio::task::spawn_blocking(move || {
        let mut store = store;
        let stored = store.load();
        (store, stored)
    })
    .await?;
    let stored = stored?;
    let pools = config.dhcp.pools.iter().map(|p| *p.get_ref()).collect();
    let mut server = DhcpServer::new(params, pools, stored);
    if let Some(c) = &mut cluster {
        server.set_buckets(c.state.buckets.clone());
        // The members known now (this one included): allocation starts at this one's share.
        c.beat().await.map_err(|e| e.context("first cluster heartbeat"))?;
        let members = c.state.members();
        let rank = members.iter().position(|m| *m == c.state.server_id).unwrap_or(0);
        server.spread_allocation(rank, members.len());
    }
    let timelines = Arc::new(Timelines::new(iface_name));
    let dhcp = crate::serve::dhcp::Service::bind(&iface, server, store, stats.clone(), timelines.clone())?.with_discovery(discovery.clone());

    let server_ip6 = match config.dhcp6.enabled {
        true => Some(iface.server_ip6(config.server.address6.as_ref().map(|a| *a.get_ref()), config.dhcp6.prefix())?),
        false => None,
    };
    let tftp = tftp_service(&config, &iface, server_ip, server_ip6, stats.clone(), timelines.clone())?;
    let dhcp6 = match server_ip6 {
        Some(ip6) => Some(crate::serve::dhcp6::Service6::bind(&iface, &config, ip6, provision_db.clone(), stats.clone(), timelines.clone()).await?.with_discovery(discovery.clone())),
        None => None,
    };
    let http_listener = crate::http::bind(config.http.listen).await?;
    if server_ip6.is_some() && config.http.listen.is_ipv4() {
        tracing::warn!(listen = %config.http.listen, "[dhcp6] is on but http.listen is IPv4: IPv6 clients cannot fetch scripts and files (listen = \"[::]:8080\" serves both)");
    }
    let control = crate::control::bind_control(iface_name)?;
    let clients = config.dhcp.reservations().count() as u64 + config.dhcp.pools.iter().map(|p| u64::from(p.get_ref().len())).sum::<u64>();
    let cache_entries = crate::fastpath::cache_entries(clients);
    tracing::info!(entries = cache_entries, clients, "reply cache sized for the reservations and pools");
    let mut fastpath = Loaded::pinned(iface_name, cache_entries)
        .and_then(|l| l.attach(iface_name, mode))
        .inspect_err(|_| AgentRecord::remove(iface_name))?;
    let mut limits = crate::fastpath::limits::LimitsMap::new(
        fastpath.take_map(maps::LIMITS).ok_or_else(|| anyhow::anyhow!("the XDP object has no LIMITS map"))?,
    )?;
    limits.apply(&config)?;
    // A cluster member answers only its buckets, in the kernel as in the agent: the owner map
    // is written before the first request can reach the program's cache.
    let (dhcp, cluster) = match cluster {
        Some(mut member) => {
            limits.member_liveness(member.state.takeover)?;
            let owners = fastpath.take_map(maps::BUCKET_OWNER).ok_or_else(|| anyhow::anyhow!("the XDP object has no BUCKET_OWNER map"))?;
            member.set_owner_map(crate::cluster::OwnerMap::new(owners)?)?;
            let (remote_tx, remote_rx) = tokio::sync::mpsc::unbounded_channel();
            (dhcp.with_remote_leases(remote_rx), Some((member, remote_tx)))
        }
        None => (dhcp, None),
    };
    let renewals = Arc::new(crate::dhcp::UnwrittenRenewals::default());
    let dhcp = match (fastpath.take_map(maps::REPLY_CACHE), fastpath.take_map(maps::EVENTS)) {
        (Some(cache), Some(events)) if config.dhcp.mode == DhcpMode::Authoritative => dhcp.with_fast_path(FastPathLink {
            sync: CacheSync::new(ReplyCache::new(cache)?, iface.mac),
            events: RingBuf::try_from(events)?,
            renewals: renewals.clone(),
        }),
        _ => dhcp,
    };
    let record = AgentRecord {
        pid: std::process::id(),
        iface: iface_name.to_string(),
        xdp_mode: fastpath.mode().to_string(),
        config: config_path.canonicalize().unwrap_or_else(|_| config_path.to_path_buf()),
        state_dir: config.server.state_dir.clone(),
    };
    if !config.http.root.is_dir() {
        tracing::warn!(root = %config.http.root.display(), "http.root is not a directory: scripts and files will not be found");
    }
    let http_timelines = timelines.clone();
    let mut http_state = crate::http::HttpState::new(&config, server_ip, record.clone(), stats.clone(), timelines)?;
    http_state.renewals = renewals;
    http_state.cluster = cluster.as_ref().map(|(m, _)| m.state.clone());
    http_state.provision = Some(provision.clone());
    http_state.discovery = Some(discovery.clone());
    let http_state = Arc::new(http_state);
    if let Some((_, source)) = &tftp {
        // The signed GRUB's per-node config is rendered by the HTTP layer, served over TFTP.
        let _ = source.generated.set(Arc::new(crate::http::grub::GrubConfigs(http_state.clone())));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let config_engine = config.tftp.engine;
    // Every service that applies the config confirms it: a host write or a reload is done
    // once they all have.
    let follow = || provision.follow(configs.clone());
    let (dhcp_follows, dhcp6_follows, tftp_follows, limits_follows, http_follows) = (follow(), follow(), follow(), follow(), follow());
    let afxdp_follows = (config_engine == TftpEngine::Afxdp).then(follow);
    let mut services = services::Services::default();
    services.spawn("config reload", crate::provision::reload::run(config_path.to_path_buf(), provision.clone(), stats.clone(), stop_rx.clone()));
    services.spawn("provisioning", provision.run(stop_rx.clone()));
    services.spawn("discovery", discovery.run(stop_rx.clone()));
    services.spawn_fallible("DHCP", dhcp.with_reload(dhcp_follows).run(stop_rx.clone()));
    if let Some((member, remote_tx)) = cluster {
        services.spawn("cluster", member.run(remote_tx, stop_rx.clone()));
    }
    let afxdp = match (&tftp, afxdp_follows) {
        (Some((_, source)), Some(follows)) => afxdp_engine(&mut fastpath, &iface, (server_ip, server_ip6), source.clone(), &stats, &http_timelines, follows),
        _ => None,
    };
    if let Some((t, _)) = tftp {
        services.spawn_fallible("TFTP", t.run(tftp_follows, stop_rx.clone()));
    }
    services.spawn("XDP limits", limits.follow(limits_follows, stop_rx.clone()));
    match fastpath.logger(log::logger()) {
        Ok(logger) => services.spawn("XDP log", crate::fastpath::log::forward(logger, stop_rx.clone())),
        Err(e) => tracing::warn!("the XDP program's log cannot be read ([server] xdp_log): {e}"),
    }
    services.spawn_fallible("HTTP", crate::http::serve(http_listener, control, http_state, http_follows, stop_rx.clone()));
    match crate::serve::ra::Responder::open(&iface, stats.clone()) {
        Ok(r) => services.spawn("IPv6 router advertisements", r.run(configs.clone(), stop_rx.clone())),
        Err(e) => tracing::warn!("IPv6 router advertisements off (dhcp.ipv6_ra): {e}"),
    }
    let dhcp6 = dhcp6.map(|d| match dhcp6_fast_path(&mut fastpath, &iface) {
        Ok((link, events)) => d.with_fast_path(link, events),
        Err(e) => {
            tracing::warn!(iface = iface_name, "DHCPv6 in the kernel off, the agent answers it all: {e:#}");
            d
        }
    });
    if let Some(d) = dhcp6 {
        services.spawn("DHCPv6", d.run(dhcp6_follows, stop_rx.clone()));
    }
    // The record last: once it says we run, the control socket answers.
    record.write()?;
    tracing::info!(iface = iface_name, mode = fastpath.mode(), server = %server_ip, "XDP attached; serving until SIGINT/SIGTERM (SIGHUP reloads the config)");

    let outcome = tokio::select! {
        signal = wait_for_shutdown() => { tracing::info!(iface = iface_name, "{signal}: detaching"); Ok(()) }
        _ = interface_gone(iface_name) => Err(anyhow::anyhow!("{iface_name} disappeared; stopping")),
        (service, why) = services.first_to_end() => {
            stats.bump("agent_service_failures");
            tracing::error!(iface = iface_name, service, "service stopped: {why:#}; the agent stops (exit status 1) to be restarted whole");
            Err(why.context(format!("the {service} service stopped")))
        }
    };
    let _ = stop_tx.send(true);
    if let Some(engine) = afxdp {
        engine.stop();
    }
    // The DHCP service flushes its committed replies on the way out.
    services.stopped().await;
    let counters = fastpath.counters().ok();
    if let Err(e) = fastpath.detach() {
        tracing::warn!(iface = iface_name, "detach: {e:#}");
    }
    AgentRecord::remove(iface_name);
    if let Some(c) = counters {
        tracing::info!(iface = iface_name, "final XDP counters: {:?}", c.nonzero());
    }
    tracing::info!(iface = iface_name, "final agent counters: {:?}", stats.snapshot());
    outcome
}

/// The lease store `config` names: SQLite in `state_dir`, or the cluster's PostgreSQL (with
/// this server's membership, not yet started).
async fn open_store(config: &Config, lease_secs: u32, stats: &Arc<Stats>) -> anyhow::Result<(Box<dyn LeaseStore>, Option<crate::cluster::Member>)> {
    use crate::store::postgres;
    let Some(url) = config.cluster.store_url() else {
        return Ok((Box::new(SqliteStore::open(&config.server.state_dir)?), None));
    };
    let server_id = config.cluster.server_id().expect("validated: a store has a server_id");
    let target = postgres::parse_url(url)?.for_member(server_id);
    let slack = crate::dhcp::server::renewal_slack(lease_secs);
    let store = {
        let target = target.clone();
        let id = server_id.to_string();
        tokio::task::spawn_blocking(move || postgres::PgStore::open(target, &id, slack))
            .await?
            .map_err(|e| e.context(format!("lease store {}", redact(url))))?
    };
    let pool = postgres::pool(&target, 4)?;
    // Before the leases are loaded: what is committed meanwhile comes through the change log.
    let seq = crate::cluster::current_seq(&pool).await?;
    let state = Arc::new(crate::cluster::ClusterState::new(server_id, config.cluster.takeover.0, seq));
    tracing::info!(server_id, store = %redact(url), "cluster member: shared PostgreSQL lease store");
    Ok((Box::new(store), Some(crate::cluster::Member::new(state, pool, target, None, stats.clone())?)))
}

/// A store URL as logs may show it: without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// The TFTP socket service (and what its transfers start with, for the AF_XDP engine), if `tftp.root`
/// exists (a boot server without TFTP files is possible, e.g. HTTP boot only: a warning, not an
/// error).
fn tftp_service(
    config: &Config,
    iface: &Interface,
    server_ip: std::net::Ipv4Addr,
    server_ip6: Option<std::net::Ipv6Addr>,
    stats: Arc<Stats>,
    timelines: Arc<Timelines>,
) -> anyhow::Result<Option<(crate::serve::tftp::socket::Service, tftp::session::Source)>> {
    let t = &config.tftp;
    let files = match tftp::FileCache::new(&t.root) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(root = %t.root.display(), "TFTP disabled: tftp.root: {e}");
            return Ok(None);
        }
    };
    let limits = tftp::Limits {
        max_blksize: *t.max_blksize.get_ref(),
        max_windowsize: *t.max_windowsize.get_ref(),
        max_payload: (iface.mtu.saturating_sub(28)).clamp(512, 65_507) as u16,
        max_transfers: t.max_transfers,
        max_transfers_per_client: t.max_transfers_per_client,
    };
    let source = tftp::session::Source { files: Arc::new(files), limits, admission: Arc::default(), generated: Arc::default() };
    Ok(Some((crate::serve::tftp::socket::Service::bind(iface, server_ip, server_ip6, source.clone(), stats, timelines)?, source)))
}

/// The DHCPv6 reply cache and its event ring, and where cached replies leave from.
fn dhcp6_fast_path(fastpath: &mut crate::fastpath::FastPath, iface: &Interface) -> anyhow::Result<(crate::serve::dhcp6::CacheLink, RingBuf<aya::maps::MapData>)> {
    let cache = fastpath.take_map(maps::REPLY_CACHE6).ok_or_else(|| anyhow::anyhow!("the XDP object has no REPLY_CACHE6 map"))?;
    let events = fastpath.take_map(maps::EVENTS6).ok_or_else(|| anyhow::anyhow!("the XDP object has no EVENTS6 map"))?;
    let server_ll = iface.link_local6().ok_or_else(|| anyhow::anyhow!("{} has no link-local address", iface.name))?;
    let cache = crate::fastpath::cache6::ReplyCache6::new(cache)?;
    Ok((crate::serve::dhcp6::CacheLink { cache, server_mac: iface.mac, server_ll }, RingBuf::try_from(events)?))
}

/// The AF_XDP TFTP engine beside the socket engine, or `None` (with the reason logged) when
/// AF_XDP is unavailable: the socket engine then serves everything.
#[allow(clippy::too_many_arguments)]
fn afxdp_engine(
    fastpath: &mut crate::fastpath::FastPath,
    iface: &Interface,
    (server_ip, server_ip6): (std::net::Ipv4Addr, Option<std::net::Ipv6Addr>),
    source: tftp::session::Source,
    stats: &Arc<Stats>,
    timelines: &Arc<Timelines>,
    configs: crate::published::Follower,
) -> Option<crate::serve::tftp::afxdp::Engine> {
    let started = (|| -> anyhow::Result<crate::serve::tftp::afxdp::Engine> {
        let xsks = aya::maps::XskMap::try_from(fastpath.take_map(maps::XSKS).ok_or_else(|| anyhow::anyhow!("no XSKS map"))?)?;
        let steer = aya::maps::Array::try_from(fastpath.take_map(maps::TFTP_STEER).ok_or_else(|| anyhow::anyhow!("no TFTP_STEER map"))?)?;
        let records = fastpath.take_map(maps::TFTP_TRANSFERS).map(aya::maps::HashMap::try_from).transpose()?;
        crate::serve::tftp::afxdp::Engine::start(iface, server_ip, server_ip6, source, xsks, steer, records, stats.clone(), timelines.clone(), configs)
    })();
    match started {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!("tftp.engine = \"afxdp\": AF_XDP unavailable ({e:#}); the socket engine serves TFTP");
            None
        }
    }
}

/// Resolves when the interface no longer exists (deleted, or its namespace removed).
async fn interface_gone(iface: &str) {
    let Ok(name) = std::ffi::CString::new(iface) else { return };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
            return;
        }
    }
}

async fn wait_for_shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        // Without handlers the default action (exit) applies; wait forever.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
