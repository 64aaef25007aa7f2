//! Provisioning (issue 15): hosts added and changed at run time, each node's boot intent, the
//! installer's phone-home, and who changed what.
//!
//! Hosts of the API live in the lease store ([`db`]), so every member of a cluster serves the
//! same ones; the config's hosts stay the seed and cannot be changed here. The agent keeps the
//! tables in memory ([`db::Contents`]) and lays the API's hosts over the file config: the
//! *effective* config, published on the channel the DHCP core, the reply cache, TFTP and HTTP
//! already follow for reloads, so a host written through the API reaches the kernel's reply
//! cache the way a reload does (no second path). A write is committed first, then published,
//! and returns once this agent's services have applied it ([`crate::published::Follower`]); other
//! members apply it within a second (they poll the store's revision), and list it once applied.

pub mod discovery;
pub mod reload;

use crate::config::{Config, Host};
use crate::mac::MacAddr;
use crate::published::{Follower, Followers};
use crate::store::db::{Change, Contents, ProvisionDb};
use crate::store::records::{AuditEntry, NodeIntent};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often a member checks the store for other members' writes.
const POLL: Duration = Duration::from_secs(1);

/// How long a write waits for the services to apply its hosts before it returns anyway (it
/// is committed and published: they apply it when they can).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Why a write was refused, for the API's status code.
#[derive(Debug)]
pub enum Refused {
    /// 409: the host is the config's, or an address is someone else's.
    Conflict(String),
    /// 422: the document is wrong.
    Invalid(String),
    /// 503: the store cannot be written.
    Store(anyhow::Error),
}

pub struct Provision {
    pub db: ProvisionDb,
    contents: RwLock<Arc<Contents>>,
    /// The config as the files say ([`Provision::reload_file`] replaces it).
    file: RwLock<Arc<Config>>,
    /// The effective config: the files' with the API's hosts.
    effective: watch::Sender<Arc<Config>>,
    /// One write at a time: validate, commit, publish.
    writing: tokio::sync::Mutex<()>,
    /// The services a write or a reload waits for.
    followers: Followers,
}

/// The file config with the API's hosts laid over it. A host of the API whose MAC or address
/// the files now reserve (a reload added it) yields to the file and is logged.
pub fn effective(file: &Config, contents: &Contents) -> Config {
    let macs: HashSet<MacAddr> = file.dhcp.file_reservations().map(|h| h.mac).collect();
    let ips: HashSet<_> = file.dhcp.file_reservations().map(|h| h.ip).collect();
    let mut c = file.clone();
    c.dhcp.api_hosts = contents
        .hosts
        .iter()
        .filter(|h| {
            let clash = macs.contains(&h.mac) || ips.contains(&h.ip);
            if clash {
                tracing::warn!(mac = %h.mac, ip = %h.ip, "provisioning: the config reserves this host's MAC or address; the config's entry serves");
            }
            !clash
        })
        .cloned()
        .collect();
    c
}

impl Provision {
    /// The provisioning state read from `db`, over the config of the files `file`. Returns it
    /// and the effective config's channel.
    pub async fn open(db: ProvisionDb, file: Config) -> anyhow::Result<(Arc<Provision>, watch::Receiver<Arc<Config>>)> {
        let contents = db.load().await?;
        let first = effective(&file, &contents);
        let (effective, rx) = watch::channel(Arc::new(first));
        let p = Provision { db, contents: RwLock::new(Arc::new(contents)), file: RwLock::new(Arc::new(file)), effective, writing: tokio::sync::Mutex::new(()), followers: Followers::default() };
        Ok((Arc::new(p), rx))
    }

    pub fn contents(&self) -> Arc<Contents> {
        self.contents.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.effective.borrow().clone()
    }

    /// The config as the files say.
    pub fn file_config(&self) -> Arc<Config> {
        self.file.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn intent(&self, mac: MacAddr) -> Option<NodeIntent> {
        self.contents().intents.get(&mac).cloned()
    }

    /// Whether the config's files reserve `mac` (such a host is read-only here).
    pub fn file_managed(&self, mac: MacAddr) -> bool {
        self.file_config().dhcp.file_reservations().any(|h| h.mac == mac)
    }

    /// Checks `hosts` (replacing the API hosts of the same MACs, `removed` gone) against the
    /// config's subnet and every other reservation.
    pub fn validate(&self, hosts: &[Host], removed: &[MacAddr]) -> Result<(), Refused> {
        let file = self.file_config();
        let contents = self.contents();
        let replaced: HashSet<MacAddr> = hosts.iter().map(|h| h.mac).chain(removed.iter().copied()).collect();
        // Every address a host reserves: its IPv4 one, and its DHCPv6 one if it has one.
        let addrs = |h: &Host| std::iter::once(std::net::IpAddr::V4(h.ip)).chain(h.ip6.map(std::net::IpAddr::V6)).collect::<Vec<_>>();
        let mut owner: HashMap<std::net::IpAddr, (MacAddr, &'static str)> = HashMap::new();
        let mut file_macs = HashSet::new();
        for h in file.dhcp.file_reservations() {
            owner.extend(addrs(h).into_iter().map(|a| (a, (h.mac, "the config"))));
            file_macs.insert(h.mac);
        }
        for h in contents.hosts.iter().filter(|h| !replaced.contains(&h.mac)) {
            owner.extend(addrs(h).into_iter().map(|a| (a, (h.mac, "the API"))));
        }
        let mut seen = HashSet::new();
        for h in hosts {
            if !seen.insert(h.mac) {
                return Err(Refused::Invalid(format!("host {} appears twice", h.mac)));
            }
            file.check_profile(h.profile.as_deref()).map_err(|m| Refused::Invalid(format!("{}: {m}", h.mac)))?;
            if file_macs.contains(&h.mac) {
                return Err(Refused::Conflict(format!("host {} is managed by the config file ({}); change it there", h.mac, file_names(&file))));
            }
            if let Some(net) = file.dhcp.subnet.as_ref().map(|s| *s.get_ref()) && !net.contains(&h.ip) {
                return Err(Refused::Invalid(format!("{}: address {} is not inside subnet {net}", h.mac, h.ip)));
            }
            match (h.ip6, file.dhcp6.prefix()) {
                (Some(ip6), Some(p)) if !p.contains(&ip6) => return Err(Refused::Invalid(format!("{}: ip6 {ip6} is not inside [dhcp6] prefix {p}", h.mac))),
                (Some(_), None) => return Err(Refused::Invalid(format!("{}: ip6 needs [dhcp6] prefix in the config", h.mac))),
                _ => {}
            }
            for a in addrs(h) {
                if let Some((other, by)) = owner.insert(a, (h.mac, "this request")) && other != h.mac {
                    return Err(Refused::Conflict(format!("{}: address {a} is reserved for {other} by {by}", h.mac)));
                }
            }
        }
        Ok(())
    }

    /// Commits `changes` with `audit`, then reads the tables again, publishes the effective
    /// config and waits until the services answer with it. `check` runs under the write lock,
    /// before the commit.
    pub async fn write(&self, changes: Vec<Change>, audit: Option<AuditEntry>, check: impl FnOnce(&Provision) -> Result<(), Refused>) -> Result<(), Refused> {
        let _one = self.writing.lock().await;
        check(self)?;
        self.db.apply(changes, audit).await.map_err(Refused::Store)?;
        self.refresh().await.map_err(Refused::Store)
    }

    /// A service's follower of `configs` (a receiver of the channel [`Provision::open`]
    /// returned): writes wait until it has applied them.
    pub fn follow(&self, configs: watch::Receiver<Arc<Config>>) -> Follower {
        self.followers.follow(configs)
    }

    /// Reads the tables again. If their hosts changed, publishes the effective config and
    /// waits for the services to apply it before the new tables are shown (`contents`): a host
    /// the API lists, here or on another member, is a host DHCP answers with.
    async fn refresh(&self) -> anyhow::Result<()> {
        let contents = Arc::new(self.db.load().await?);
        if self.contents().hosts != contents.hosts {
            self.publish(&contents).await;
        }
        *self.contents.write().unwrap_or_else(|e| e.into_inner()) = contents;
        Ok(())
    }

    /// Publishes the files' config with `contents`' hosts and waits until the services have
    /// applied it, for at most [`APPLY_WAIT`].
    async fn publish(&self, contents: &Contents) {
        let c = effective(&self.file_config(), contents);
        tracing::info!(api_hosts = c.dhcp.api_hosts.len(), "provisioning: hosts published");
        self.effective.send_replace(Arc::new(c));
        if !self.followers.wait(APPLY_WAIT).await {
            tracing::warn!("provisioning: a service did not apply the config within {APPLY_WAIT:?}; it will");
        }
    }

    /// Replaces the config of the files (a reload), publishes the effective config and waits
    /// until the services have applied it.
    pub async fn reload_file(&self, file: Config) {
        let _one = self.writing.lock().await;
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(file);
        self.publish(&self.contents()).await;
    }

    /// Follows the other members' writes until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let rev = self.contents().rev;
                    match self.db.rev().await {
                        Ok(now) if now != rev => {
                            let _one = self.writing.lock().await;
                            if let Err(e) = self.refresh().await {
                                tracing::warn!("provisioning: cannot read the store: {e:#}");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("provisioning: cannot read the store's revision: {e:#}"),
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn file_names(c: &Config) -> String {
    match &c.dhcp.hosts_path {
        Some(p) => format!("[[dhcp.host]] or {}", p.display()),
        None => "[[dhcp.host]]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host write returns once a service following the config has applied the host, however
    /// long that takes (within APPLY_WAIT), and the host is listed only then: the API's 200, or
    /// the host in its list, means DHCP answers with it.
    #[test]
    fn a_host_write_returns_once_the_services_have_applied_it() {
        let dir = crate::scratch::ScratchDir::new("provision");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let file = Config::parse(std::path::Path::new("netboot.toml"), "[dhcp]\nsubnet = \"10.1.0.0/24\"\n").unwrap();
            let (p, configs) = Provision::open(ProvisionDb::sqlite(&dir).unwrap(), file).await.unwrap();
            let mut follower = p.follow(configs);
            let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
            let listed = { let p = p.clone(); move || p.contents().hosts.len() };
            tokio::spawn(async move {
                while let Some(c) = follower.changed().await {
                    tokio::time::sleep(Duration::from_millis(200)).await; // a busy service
                    // (hosts the service applies, hosts the API lists while it applies them)
                    seen_tx.send((c.dhcp.api_hosts.len(), listed())).unwrap();
                    follower.applied();
                }
            });
            let host = Host { mac: "52:54:00:00:00:07".parse().unwrap(), ip: "10.1.0.7".parse().unwrap(), ip6: None, hostname: None, vars: Default::default(), profile: None };
            p.write(vec![Change::PutHost(host)], None, |_| Ok(())).await.unwrap();
            assert_eq!(seen.try_recv(), Ok((1, 0)), "the write returned before the host was applied, or it was listed before");
            assert_eq!(p.contents().hosts.len(), 1);
            // A write that changes no host (an intent) publishes nothing and does not wait.
            let mac = "52:54:00:00:00:07".parse().unwrap();
            p.write(vec![Change::SetIntent { mac, intent: crate::store::records::Intent::Local, once: false }], None, |_| Ok(())).await.unwrap();
            assert!(seen.try_recv().is_err());
        });
    }
}
