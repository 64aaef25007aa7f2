//! Loading and validation: a file read, parsed and checked as a whole, every error with its
//! file:line:column (invariant 7); the rules that span fields and sections live here.

use super::*;

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
