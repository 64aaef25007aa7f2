//! `cluster.store`, the libpq URL of the shared lease store, parsed and checked at load: the
//! PostgreSQL server, how to reach it and the TLS it asks for (rustls; libpq's `sslrootcert`,
//! `sslcert` and `sslkey` read here, since tokio-postgres does not). The connections are
//! made by `store::postgres`.

use anyhow::Context;
use std::time::Duration;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long connecting may take before the store counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL server of `cluster.store` and how to reach it: the parsed URL and the TLS
/// connector (rustls) its connections use when the URL asks for TLS.
#[derive(Clone)]
pub struct Target {
    pub cfg: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
}

/// A connection to the store; it must be polled (spawned) for its client to work.
pub type Connection = tokio_postgres::Connection<tokio_postgres::Socket, <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream>;

impl Target {
    /// The same server, every session named for cluster member `server_id`
    /// ([`member_application_name`]): the others can then find the sessions of a member that
    /// hung and end them.
    pub fn for_member(mut self, server_id: &str) -> Target {
        self.cfg.application_name(member_application_name(server_id));
        self
    }

    /// Opens a connection (TLS when the URL asks for it).
    pub async fn connect(&self) -> Result<(Client, Connection), tokio_postgres::Error> {
        self.cfg.connect(self.tls.clone()).await
    }
}

/// The `application_name` of member `server_id`'s sessions, as PostgreSQL keeps it (at most 63
/// bytes; server ids are ASCII). The cluster computes the same name in SQL.
pub fn member_application_name(server_id: &str) -> String {
    let mut name = format!("netboot-xdp {server_id}");
    name.truncate(63);
    name
}

/// libpq's TLS parameters that tokio-postgres does not read; taken out of the URL here.
const TLS_FILES: [&str; 3] = ["sslrootcert", "sslcert", "sslkey"];

/// Parses `cluster.store` (a libpq URL). Without a user, the user this process runs as
/// (libpq's default); a connect timeout if none is given.
///
/// TLS, as libpq spells it: `sslmode=require` (or `verify-ca`, `verify-full`) with
/// `sslrootcert=FILE`, the CA that signed the server's certificate; the certificate is always
/// verified, its name against the URL's host. `sslcert=FILE&sslkey=FILE` add a client
/// certificate. Without `sslrootcert` the connection is plain (an unverified TLS connection
/// is not offered: it would only look safe). Over a Unix socket there is no TLS.
pub fn parse_url(url: &str) -> anyhow::Result<Target> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut files: [Option<String>; 3] = Default::default();
    let mut mode = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
        if let Some(i) = TLS_FILES.iter().position(|f| *f == k) {
            files[i] = Some(v);
        } else if k == "sslmode" {
            mode = Some(v);
        } else {
            kept.push(pair);
        }
    }
    let [root, cert, key] = files;
    let tls_mode = match (mode.as_deref(), &root) {
        (None | Some("disable") | Some("allow") | Some("prefer"), None) => "disable",
        (Some("require" | "verify-ca" | "verify-full"), None) => {
            anyhow::bail!("sslmode={} needs sslrootcert=FILE (the CA that signed the server's certificate): netboot-xdp does not use TLS it cannot verify", mode.unwrap_or_default())
        }
        (None | Some("require" | "verify-ca" | "verify-full"), Some(_)) => "require",
        (Some(m), Some(_)) if ["disable", "allow", "prefer"].contains(&m) => anyhow::bail!("sslrootcert is given but sslmode={m}: use sslmode=verify-full"),
        (Some(m), _) => anyhow::bail!("sslmode={m}: use disable, require, verify-ca or verify-full"),
    };
    kept.push(if tls_mode == "require" { "sslmode=require" } else { "sslmode=disable" });
    let url = format!("{base}?{}", kept.join("&"));
    let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| anyhow::anyhow!("not a PostgreSQL URL ({e})"))?;
    if cfg.get_user().is_none() {
        cfg.user(os_user());
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("netboot-xdp");
    }
    let tls = tls_config(root.as_deref(), cert.as_deref(), key.as_deref())?;
    Ok(Target { cfg, tls: MakeRustlsConnect::new(tls) })
}

/// The rustls client config: the CA of `root` (none: no server can be verified, and none is
/// asked, see [`parse_url`]), and a client certificate if both `cert` and `key` are given.
fn tls_config(root: Option<&str>, cert: Option<&str>, key: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(root) = root {
        for ca in super::tls::certificates(std::path::Path::new(root)).context("sslrootcert")? {
            roots.add(ca).with_context(|| format!("sslrootcert {root}: not a CA certificate"))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots);
    Ok(match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = super::tls::certificates(std::path::Path::new(cert)).context("sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("sslkey {key}: no PEM private key"))?;
            builder.with_client_auth_cert(chain, key).context("sslcert and sslkey do not go together")?
        }
        _ => anyhow::bail!("sslcert and sslkey go together"),
    })
}

fn os_user() -> String {
    let pw = unsafe { libc::getpwuid(libc::geteuid()) };
    if pw.is_null() {
        return "root".into();
    }
    unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }.to_string_lossy().into_owned()
}
