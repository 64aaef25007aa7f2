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
mod validate;

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
    /// The XDP program's rare exits (malformed frames, reply-cache entries it cannot use) in
    /// the agent's log, through aya-log; applied on reload.
    #[serde(default)]
    pub xdp_log: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { address: None, address6: None, state_dir: default_state_dir(), xdp_log: false }
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


#[cfg(test)]
mod tests;
