//! Reading the lease store from outside the DHCP path: the HTTP handoff (one indexed query per
//! script), `/api/v1/leases` and `netboot-xdp leases`. Never takes the DHCP service's lock.

use super::{LeaseStore, SqliteStore, postgres};
use crate::config::Config;
use crate::dhcp::leases::Lease;
use crate::mac::MacAddr;
use std::path::PathBuf;

#[derive(Clone)]
pub enum LeaseReader {
    /// `<state_dir>/leases.sqlite`, opened read-only per read (it is only a file open).
    Sqlite(PathBuf),
    /// The cluster's shared store.
    Postgres(deadpool_postgres::Pool),
}

impl std::fmt::Debug for LeaseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseReader::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            LeaseReader::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

impl LeaseReader {
    /// The store `config` names. Building a PostgreSQL reader connects lazily: it never fails
    /// on an unreachable server, its reads do.
    pub fn new(config: &Config) -> anyhow::Result<LeaseReader> {
        match config.cluster.store_url() {
            Some(url) => Ok(LeaseReader::Postgres(postgres::pool(&postgres::parse_url(url)?, 4)?)),
            None => Ok(LeaseReader::Sqlite(config.server.state_dir.clone())),
        }
    }

    /// One indexed row (per script in a storm): read in place, cheaper than a hand-off to
    /// the blocking pool.
    pub async fn latest_for_mac(&self, mac: MacAddr) -> anyhow::Result<Option<Lease>> {
        match self {
            LeaseReader::Sqlite(dir) => SqliteStore::read_only(dir)?.latest_for_mac(mac),
            LeaseReader::Postgres(pool) => postgres::latest_for_mac(&*pool.get().await?, mac).await,
        }
    }

    /// Every lease (hundreds of thousands, on a large site): read on the blocking pool, so
    /// that a list request does not hold an async worker that DHCP and HTTP need.
    pub async fn all(&self) -> anyhow::Result<Vec<Lease>> {
        match self {
            LeaseReader::Sqlite(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || SqliteStore::read_only(&dir)?.load()).await?
            }
            LeaseReader::Postgres(pool) => postgres::load(&*pool.get().await?).await,
        }
    }
}
