//! The TOML configuration of DESIGN.md §5: types, loading and validation.
//!
//! Loading is all-or-nothing (invariant 7): [`Config::load`] returns a fully validated config or
//! a [`ConfigError`] that names file, line and column. Unknown keys are errors. Values that can
//! be checked alone (addresses, durations, MACs) are checked while deserializing, so the TOML
//! parser reports their position; cross-field rules (a pool inside the subnet, no duplicate
//! reservation) are checked afterwards against `Spanned` positions.

mod error;
pub mod hosts;
pub mod profile;
pub mod store_url;
pub mod tls;
mod types;

pub use error::ConfigError;
pub use types::{Duration, Pool, Pool6};

use crate::mac::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub dhcp: DhcpConfig,
    #[serde(default)]
    pub dhcp6: Dhcp6Config,
    #[serde(default)]
    pub boot: BootConfig,
    #[serde(default)]
    pub tftp: TftpConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default, rename = "profile")]
    pub profiles: Vec<profile::Profile>,
}

/// `[api]`: who may use `/api/v1` over `http.listen` (the control socket is root's and needs
/// no token).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens, stored hashed (`netboot-xdp token add`); relative to the config's
    /// directory. Absent: reads are public and writes go through the control socket only.
    pub tokens_file: Option<Spanned<PathBuf>>,
    /// Reads without a token even with `tokens_file`.
    #[serde(default)]
    pub public_read: bool,
    /// `tokens_file` resolved against the config's directory.
    #[serde(skip)]
    pub tokens_path: Option<PathBuf>,
    /// PEM certificate chain and key: `http.listen` then also speaks TLS (the API's tokens
    /// then travel only over TLS). Relative to the config's directory.
    pub tls_cert: Option<Spanned<PathBuf>>,
    pub tls_key: Option<Spanned<PathBuf>>,
    /// PEM CA certificates: TLS clients must present a certificate it signed.
    pub client_ca: Option<Spanned<PathBuf>>,
    #[serde(skip)]
    pub tls_cert_path: Option<PathBuf>,
    #[serde(skip)]
    pub tls_key_path: Option<PathBuf>,
    #[serde(skip)]
    pub client_ca_path: Option<PathBuf>,
}

/// `[cluster]`: several servers sharing one PostgreSQL lease store (docs/CLUSTER.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique per server; names this server's heartbeats and lease writes.
    pub server_id: Option<Spanned<String>>,
    /// A libpq URL of the shared store; absent = SQLite in `server.state_dir`.
    pub store: Option<Spanned<String>>,
    /// How long a member may miss heartbeats before its buckets move to the others.
    #[serde(default = "default_takeover")]
    pub takeover: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { server_id: None, store: None, takeover: default_takeover() }
    }
}

impl ClusterConfig {
    pub fn store_url(&self) -> Option<&str> {
        self.store.as_ref().map(|s| s.get_ref().as_str())
    }

    pub fn server_id(&self) -> Option<&str> {
        self.server_id.as_ref().map(|s| s.get_ref().as_str())
    }
}

fn default_takeover() -> Duration {
    Duration(std::time::Duration::from_secs(3))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Our IPv4 address on the interface; `None` = the interface's first address.
    pub address: Option<Ipv4Addr>,
    /// Our IPv6 address on the interface (boot URLs of DHCPv6 clients name it); `None` = the
    /// interface's first global address inside `[dhcp6] prefix`.
    pub address6: Option<Spanned<Ipv6Addr>>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { address: None, address6: None, state_dir: default_state_dir() }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/netboot-xdp")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// We own the addresses of the subnet.
    #[default]
    Authoritative,
    /// Another server owns addresses; we answer PXE/iPXE clients with boot information only.
    Proxy,
}

/// `[dhcp] unknown`: what a machine no host describes gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// A lease from the pools and the `discover` profile's script (or `http.script`); it is
    /// listed at `/api/v1/discovered` until a host is made for it.
    #[default]
    Discover,
    /// No answer at all (it is still listed at `/api/v1/discovered`).
    Ignore,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    #[serde(default)]
    pub mode: DhcpMode,
    pub subnet: Option<Spanned<Ipv4Net>>,
    /// As written; parsed into `pools` by [`Config::parse`] so that an error points at the
    /// element, not at the array.
    #[serde(default, rename = "pools")]
    pools_raw: Vec<Spanned<String>>,
    #[serde(skip)]
    pub pools: Vec<Spanned<Pool>>,
    #[serde(default = "default_lease_time")]
    pub lease_time: Duration,
    #[serde(default = "yes")]
    pub ipv6_ra: bool,
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hosts_file: Option<Spanned<PathBuf>>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Spanned<Host>>,
    /// Reservations from `hosts_file`, filled in by [`Config::load`].
    #[serde(skip)]
    pub file_hosts: Vec<Host>,
    /// Reservations added at run time through the hosts API (kept in the lease store), laid
    /// over the file's by the provisioning API: what the DHCP core and the reply cache serve.
    #[serde(skip)]
    pub api_hosts: Vec<Host>,
    /// `hosts_file` resolved against the config's directory.
    #[serde(skip)]
    pub hosts_path: Option<PathBuf>,
    /// Requests per second one client (chaddr) may send; beyond it the XDP program drops them
    /// (0 = unlimited). A booting machine sends a few per second at most.
    #[serde(default = "default_per_client_pps")]
    pub per_client_pps: u32,
    /// Addresses allocated to new clients per second, at most (0 = unlimited).
    #[serde(default)]
    pub new_clients_per_s: u32,
    #[serde(default)]
    pub unknown: UnknownPolicy,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            mode: DhcpMode::default(),
            subnet: None,
            pools_raw: Vec::new(),
            pools: Vec::new(),
            lease_time: default_lease_time(),
            ipv6_ra: true,
            router: None,
            dns: Vec::new(),
            domain: None,
            hosts_file: None,
            hosts: Vec::new(),
            file_hosts: Vec::new(),
            api_hosts: Vec::new(),
            hosts_path: None,
            per_client_pps: default_per_client_pps(),
            new_clients_per_s: 0,
            unknown: UnknownPolicy::default(),
        }
    }
}

impl DhcpConfig {
    /// All reservations: inline ones first, then the hosts file's, then the API's.
    pub fn reservations(&self) -> impl Iterator<Item = &Host> {
        self.file_reservations().chain(self.api_hosts.iter())
    }

    /// The reservations the config and its hosts file make (the API cannot change these).
    pub fn file_reservations(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().map(|h| h.get_ref()).chain(self.file_hosts.iter())
    }
}

/// `[dhcp6]`: stateful DHCPv6 on the boot segment (RFC 8415; docs/DESIGN.md §IPv6). With it on,
/// router advertisements set M and announce `prefix` as on-link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp6Config {
    #[serde(default)]
    pub enabled: bool,
    /// The boot segment's prefix: pools and reservations lie inside it.
    pub prefix: Option<Spanned<Ipv6Net>>,
    #[serde(default, rename = "pools")]
    pools_raw: Vec<Spanned<String>>,
    #[serde(skip)]
    pub pools: Vec<Spanned<Pool6>>,
    #[serde(default = "default_lease_time")]
    pub lease_time: Duration,
    #[serde(default)]
    pub dns: Vec<Ipv6Addr>,
}

impl Default for Dhcp6Config {
    fn default() -> Self {
        Dhcp6Config { enabled: false, prefix: None, pools_raw: Vec::new(), pools: Vec::new(), lease_time: default_lease_time(), dns: Vec::new() }
    }
}

impl Dhcp6Config {
    pub fn prefix(&self) -> Option<Ipv6Net> {
        self.prefix.as_ref().map(|p| *p.get_ref())
    }
}

fn default_lease_time() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}

fn default_per_client_pps() -> u32 {
    20
}

fn yes() -> bool {
    true
}

/// A reservation: one row of `hosts_file`, one `[[dhcp.host]]` table, or a host of the API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// The DHCPv6 address of the node (`[[dhcp.host]]` only; inside `[dhcp6] prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// The `[[profile]]` whose script the node boots (none: `http.script`).
    #[serde(default)]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    #[serde(default = "default_bios")]
    pub bios: String,
    #[serde(default = "default_uefi_x64")]
    pub uefi_x64: String,
    #[serde(default = "default_uefi_ia32")]
    pub uefi_ia32: String,
    #[serde(default = "default_uefi_arm64")]
    pub uefi_arm64: String,
    /// The signed first stage for machines whose profile says `secure_boot` (Debian's
    /// `shimx64.efi.signed`, which then fetches `grubx64.efi` from the same directory).
    #[serde(default = "default_secure_x64")]
    pub secure_x64: String,
    #[serde(default = "default_secure_arm64")]
    pub secure_arm64: String,
    #[serde(default = "default_http_client")]
    pub http_client: String,
    #[serde(default = "default_ipxe_script")]
    pub ipxe_script: String,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            bios: default_bios(),
            uefi_x64: default_uefi_x64(),
            uefi_ia32: default_uefi_ia32(),
            uefi_arm64: default_uefi_arm64(),
            secure_x64: default_secure_x64(),
            secure_arm64: default_secure_arm64(),
            http_client: default_http_client(),
            ipxe_script: default_ipxe_script(),
        }
    }
}

fn default_bios() -> String {
    "undionly.kpxe".into()
}
fn default_uefi_x64() -> String {
    "ipxe.efi".into()
}
fn default_uefi_ia32() -> String {
    "ipxe-ia32.efi".into()
}
fn default_uefi_arm64() -> String {
    "ipxe-arm64.efi".into()
}
fn default_secure_x64() -> String {
    "shimx64.efi".into()
}
fn default_secure_arm64() -> String {
    "shimaa64.efi".into()
}
fn default_http_client() -> String {
    "http://{server}:8080/ipxe.efi".into()
}
fn default_ipxe_script() -> String {
    "http://{server}:8080/boot.ipxe".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TftpEngine {
    #[default]
    Afxdp,
    Socket,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    #[serde(default = "default_tftp_root")]
    pub root: PathBuf,
    #[serde(default = "default_max_blksize")]
    pub max_blksize: Spanned<u16>,
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: Spanned<u16>,
    #[serde(default)]
    pub engine: TftpEngine,
    /// Concurrent transfers, at most (0 = unlimited); a request beyond it gets an ERROR.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: u32,
    /// Concurrent transfers per client address, at most (0 = unlimited).
    #[serde(default = "default_max_transfers_per_client")]
    pub max_transfers_per_client: u32,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            root: default_tftp_root(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
            engine: TftpEngine::default(),
            max_transfers: default_max_transfers(),
            max_transfers_per_client: default_max_transfers_per_client(),
        }
    }
}

fn default_tftp_root() -> PathBuf {
    PathBuf::from("/srv/tftp")
}
fn default_max_blksize() -> Spanned<u16> {
    Spanned::new(0..0, 1468)
}
fn default_max_windowsize() -> Spanned<u16> {
    Spanned::new(0..0, 32)
}
fn default_max_transfers() -> u32 {
    16384
}
fn default_max_transfers_per_client() -> u32 {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_http_root")]
    pub root: PathBuf,
    #[serde(default = "default_script")]
    pub script: PathBuf,
    /// Open connections, at most (0 = unlimited); more wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Open connections per client address, at most (0 = unlimited): one host cannot hold
    /// every place. More are closed at once (`http_refused_client_limit`).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: u32,
    /// Files being sent at once, at most (0 = unlimited): beyond, a file request gets 503 with
    /// `Retry-After: 1`, which iPXE waits out and asks again (measured, docs/BENCHMARKS.md).
    #[serde(default)]
    pub max_downloads: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            root: default_http_root(),
            script: default_script(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_downloads: 0,
        }
    }
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8080".parse().expect("valid literal")
}
fn default_http_root() -> PathBuf {
    PathBuf::from("/srv/http")
}
fn default_script() -> PathBuf {
    PathBuf::from("boot.ipxe.j2")
}
fn default_max_connections() -> u32 {
    16384
}

fn default_max_connections_per_client() -> u32 {
    64
}

impl Config {
    /// Reads, parses and validates `path` (and the hosts file it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::io(path, format!("cannot read config: {e}")))?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is used for messages and to resolve the hosts
    /// file relative to the config's directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, msg: String| ConfigError::at(path, text, span.start, msg);
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|s| s.start).unwrap_or(0);
            ConfigError::at(path, text, start, e.message().trim().to_string())
        })?;

        cfg.dhcp.pools = parse_pools(&cfg.dhcp.pools_raw, &at)?;
        cfg.dhcp6.pools = parse_pools(&cfg.dhcp6.pools_raw, &at)?;
        let d = &cfg.dhcp;
        if d.mode == DhcpMode::Authoritative && d.subnet.is_none() {
            return Err(ConfigError::at(path, text, 0, "[dhcp] subnet is required in authoritative mode".into()));
        }
        if let Some(subnet) = &d.subnet {
            let net = *subnet.get_ref();
            if net.network() != net.addr() {
                return Err(at(subnet.span(), format!("subnet {net} has host bits set; did you mean {}?", net.trunc())));
            }
            for pool in &d.pools {
                let p = pool.get_ref();
                if !net.contains(&p.start) || !net.contains(&p.end) {
                    return Err(at(pool.span(), format!("pool {p} is not inside subnet {net}")));
                }
            }
            for h in &d.hosts {
                if !net.contains(&h.get_ref().ip) {
                    return Err(at(h.span(), format!("reservation {} is not inside subnet {net}", h.get_ref().ip)));
                }
            }
        }
        for (i, a) in d.pools.iter().enumerate() {
            if let Some(b) = d.pools[..i].iter().find(|b| a.get_ref().overlaps(b.get_ref())) {
                return Err(at(a.span(), format!("pool {} overlaps pool {}", a.get_ref(), b.get_ref())));
            }
        }
        cfg.check_dhcp6(path, text)?;
        if d.lease_time.0.as_secs() < 60 {
            return Err(ConfigError::at(path, text, find_key(text, "lease_time"), "lease_time must be at least 1m".into()));
        }
        let bs = &cfg.tftp.max_blksize;
        if !(512..=65464).contains(bs.get_ref()) {
            return Err(at(bs.span(), format!("max_blksize {} out of range 512..=65464 (RFC 2348)", bs.get_ref())));
        }
        let ws = &cfg.tftp.max_windowsize;
        if !(1..=MAX_WINDOWSIZE).contains(ws.get_ref()) {
            return Err(at(ws.span(), format!("max_windowsize {} out of range 1..={MAX_WINDOWSIZE} (RFC 7440)", ws.get_ref())));
        }

        let c = &cfg.cluster;
        if let Some(id) = &c.server_id {
            let ok = !id.get_ref().is_empty()
                && id.get_ref().len() <= 64
                && id.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(at(id.span(), format!("server_id {:?}: use 1 to 64 characters of A-Z a-z 0-9 . _ -", id.get_ref())));
            }
        }
        if let Some(store) = &c.store {
            if !store.get_ref().starts_with("postgresql://") && !store.get_ref().starts_with("postgres://") {
                return Err(at(store.span(), "store must be a PostgreSQL URL (postgresql://...); leave it out for SQLite in state_dir".into()));
            }
            store_url::parse_url(store.get_ref()).map_err(|e| at(store.span(), format!("store: {e:#}")))?;
            if c.server_id.is_none() {
                return Err(at(store.span(), "a shared store needs [cluster] server_id (unique per server)".into()));
            }
            // DHCPv6 is not coordinated between members (no buckets, no claims): two members
            // would give one address to two clients, and a dead member's kernel would go on
            // answering. Refused until it is (docs/CLUSTER.md).
            if cfg.dhcp6.enabled {
                let enabled = text.find("[dhcp6]").map_or(0, |i| i + text[i..].find("enabled").unwrap_or(0));
                return Err(ConfigError::at(path, text, enabled, "[dhcp6] cannot be enabled with a [cluster] store: DHCPv6 is not coordinated between members yet; serve IPv6 boot from one server outside the cluster".into()));
            }
        }
        if c.takeover.0 < std::time::Duration::from_secs(1) {
            return Err(ConfigError::at(path, text, find_key(text, "takeover"), "takeover must be at least 1s".into()));
        }

        let mut names = HashSet::new();
        for p in &cfg.profiles {
            let n = &p.name;
            if n.get_ref().is_empty() || !n.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(at(n.span(), format!("profile name {:?}: use A-Z a-z 0-9 . _ -", n.get_ref())));
            }
            if !names.insert(n.get_ref().as_str()) {
                return Err(at(n.span(), format!("profile {} is defined twice", n.get_ref())));
            }
        }
        for h in &cfg.dhcp.hosts {
            if let Err(m) = cfg.check_profile(h.get_ref().profile.as_deref()) {
                return Err(at(h.span(), m));
            }
        }

        // Reservations: inline ones, then the hosts file; a MAC or IP may be reserved once.
        let mut seen_mac: HashMap<MacAddr, String> = HashMap::new();
        let mut seen_ip: HashMap<Ipv4Addr, String> = HashMap::new();
        let mut claim = |h: &Host, here: String| -> Result<(), String> {
            if let Some(first) = seen_mac.insert(h.mac, here.clone()) {
                return Err(format!("MAC {} is reserved twice (first at {first})", h.mac));
            }
            if let Some(first) = seen_ip.insert(h.ip, here) {
                return Err(format!("IP {} is reserved twice (first at {first})", h.ip));
            }
            Ok(())
        };
        for h in &cfg.dhcp.hosts {
            let here = ConfigError::at(path, text, h.span().start, String::new()).location();
            claim(h.get_ref(), here).map_err(|m| at(h.span(), m))?;
        }
        if let Some(hf) = &cfg.dhcp.hosts_file {
            let file = path.parent().unwrap_or(Path::new(".")).join(hf.get_ref());
            let rows = hosts::load(&file).map_err(|e| match e {
                hosts::Error::Io(msg) => at(hf.span(), msg),
                hosts::Error::Row(err) => err,
            })?;
            let subnet = cfg.dhcp.subnet.as_ref().map(|s| *s.get_ref());
            for (row_pos, host) in rows {
                if let Some(net) = subnet && !net.contains(&host.ip) {
                    return Err(row_pos.error(format!("reservation {} is not inside subnet {net}", host.ip)));
                }
                claim(&host, row_pos.location()).map_err(|m| row_pos.error(m))?;
                cfg.dhcp.file_hosts.push(host);
            }
            cfg.dhcp.hosts_path = Some(file);
        }
        let beside = |p: &Spanned<PathBuf>| path.parent().unwrap_or(Path::new(".")).join(p.get_ref());
        let api = &mut cfg.api;
        api.tokens_path = api.tokens_file.as_ref().map(beside);
        api.tls_cert_path = api.tls_cert.as_ref().map(beside);
        api.tls_key_path = api.tls_key.as_ref().map(beside);
        api.client_ca_path = api.client_ca.as_ref().map(beside);
        match (&api.tls_cert, &api.tls_key, &api.client_ca) {
            (Some(c), None, _) => return Err(at(c.span(), "tls_cert needs tls_key".into())),
            (None, Some(k), _) => return Err(at(k.span(), "tls_key needs tls_cert".into())),
            (None, None, Some(ca)) => return Err(at(ca.span(), "client_ca needs tls_cert and tls_key".into())),
            (Some(c), Some(_), _) => {
                crate::config::tls::server_config(api).map_err(|e| at(c.span(), format!("[api] TLS: {e:#}")))?;
            }
            (None, None, None) => {}
        }
        Ok(cfg)
    }

    /// With `[[profile]]` tables, a host may only name one of them (without, `profile` is a
    /// free template variable).
    pub fn check_profile(&self, name: Option<&str>) -> Result<(), String> {
        match name {
            Some(n) if !self.profiles.is_empty() && !self.profiles.iter().any(|p| p.name.get_ref() == n) => {
                let known: Vec<&str> = self.profiles.iter().map(|p| p.name.get_ref().as_str()).collect();
                Err(format!("profile {n:?} is not defined (profiles: {})", known.join(", ")))
            }
            _ => Ok(()),
        }
    }

    /// Substitutes `{server}` in a boot URL with our address (an IPv6 one in brackets).
    pub fn expand(template: &str, server: impl Into<IpAddr>) -> String {
        let host = match server.into() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        template.replace("{server}", &host)
    }

    /// `[dhcp6]` and `server.address6`: a prefix without host bits when enabled, pools and
    /// reservations inside it, pools apart.
    fn check_dhcp6(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let at = |span: std::ops::Range<usize>, msg: String| ConfigError::at(path, text, span.start, msg);
        let d = &self.dhcp6;
        let Some(prefix) = &d.prefix else {
            if d.enabled {
                return Err(ConfigError::at(path, text, find_key(text, "enabled"), "[dhcp6] enabled needs prefix (the boot segment's, e.g. \"fd00:77::/64\")".into()));
            }
            if let Some(p) = d.pools.first() {
                return Err(at(p.span(), "[dhcp6] pools need prefix".into()));
            }
            return Ok(());
        };
        let net = *prefix.get_ref();
        if net.network() != net.addr() {
            return Err(at(prefix.span(), format!("prefix {net} has host bits set; did you mean {}?", net.trunc())));
        }
        for (i, pool) in d.pools.iter().enumerate() {
            let p = pool.get_ref();
            if !net.contains(&p.start) || !net.contains(&p.end) {
                return Err(at(pool.span(), format!("pool {p} is not inside prefix {net}")));
            }
            if let Some(b) = d.pools[..i].iter().find(|b| p.overlaps(b.get_ref())) {
                return Err(at(pool.span(), format!("pool {p} overlaps pool {}", b.get_ref())));
            }
        }
        let mut seen = HashSet::new();
        for h in &self.dhcp.hosts {
            if let Some(ip6) = h.get_ref().ip6 {
                if !net.contains(&ip6) {
                    return Err(at(h.span(), format!("reservation {ip6} is not inside prefix {net}")));
                }
                if !seen.insert(ip6) {
                    return Err(at(h.span(), format!("IP {ip6} is reserved twice")));
                }
            }
        }
        if let Some(a) = &self.server.address6 && !net.contains(a.get_ref()) {
            return Err(at(a.span(), format!("address6 {} is not inside [dhcp6] prefix {net}", a.get_ref())));
        }
        if d.lease_time.0.as_secs() < 60 {
            return Err(ConfigError::at(path, text, text.find("[dhcp6]").unwrap_or(0), "[dhcp6] lease_time must be at least 1m".into()));
        }
        Ok(())
    }
}

/// Pools as written, parsed so that an error points at the element, not at the array.
fn parse_pools<P: std::str::FromStr<Err = String>>(
    raw: &[Spanned<String>],
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<Vec<Spanned<P>>, ConfigError> {
    raw.iter()
        // +1: the span includes the opening quote.
        .map(|r| r.get_ref().parse().map(|p| Spanned::new(r.span(), p)).map_err(|m| at(r.span().start + 1..r.span().end, m)))
        .collect()
}

/// The largest `max_windowsize`: blocks in flight per transfer are buffered and timed; beyond
/// this a window only makes loss bursts longer.
pub const MAX_WINDOWSIZE: u16 = 64;

/// Byte offset of the first `key =` in `text`, for errors about defaulted-or-given keys.
fn find_key(text: &str, key: &str) -> usize {
    text.find(&format!("{key} ")).or_else(|| text.find(&format!("{key}="))).unwrap_or(0)
}

#[cfg(test)]
mod tests;
