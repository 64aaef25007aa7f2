//! The machines seen asking (`netboot_discovered`, in the lease store: every member of a
//! cluster lists every machine): what a sighting records, and its rows written and read on
//! either backend.

use super::db::{ProvisionDb, with_sqlite};
use super::stmt::Stmt;
use crate::dhcp::server::Sighting;
use crate::mac::MacAddr;
use serde::Serialize;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Seen {
    pub mac: MacAddr,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    /// `pxe`, `ipxe`, `http` or `plain`, at the last sighting.
    pub class: String,
    pub arch: Option<u16>,
    pub uuid: Option<String>,
    pub vendor_class: Option<String>,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub relay: Option<Ipv4Addr>,
}

impl Seen {
    pub fn of(s: &Sighting) -> Seen {
        let at = s.at as i64;
        Seen {
            mac: s.mac,
            first_seen: at,
            last_seen: at,
            class: s.class.name().to_string(),
            arch: s.arch,
            uuid: s.uuid.clone(),
            vendor_class: s.vendor_class.clone(),
            relay: s.relay,
        }
    }

    /// `s` laid over what was known; whether anything but `last_seen` changed.
    pub fn update(&mut self, s: &Sighting) -> bool {
        let before = self.clone();
        self.last_seen = self.last_seen.max(s.at as i64);
        self.class = s.class.name().to_string();
        self.arch = s.arch.or(self.arch);
        self.uuid = s.uuid.clone().or(self.uuid.take());
        self.vendor_class = s.vendor_class.clone().or(self.vendor_class.take());
        self.relay = s.relay.or(self.relay);
        Seen { last_seen: before.last_seen, ..self.clone() } != before
    }
}

const UPSERT: &str = "INSERT INTO netboot_discovered (mac, first_seen, last_seen, class, arch, uuid, vendor_class, relay)
     VALUES ({p}1, {p}2, {p}3, {p}4, {p}5, {p}6, {p}7, {p}8)
     ON CONFLICT (mac) DO UPDATE SET last_seen = excluded.last_seen, class = excluded.class, arch = excluded.arch,
        uuid = excluded.uuid, vendor_class = excluded.vendor_class, relay = excluded.relay";
const TRIM: &str = "DELETE FROM netboot_discovered WHERE last_seen < (SELECT last_seen FROM netboot_discovered ORDER BY last_seen DESC LIMIT 1 OFFSET {n})";
const LIST: &str = "SELECT mac, first_seen, last_seen, class, arch, uuid, vendor_class, relay FROM netboot_discovered ORDER BY last_seen DESC, mac";

type Row = (String, i64, i64, String, Option<i32>, Option<String>, Option<String>, Option<String>);

fn from_row(r: Row) -> Option<Seen> {
    Some(Seen {
        mac: r.0.parse().ok()?,
        first_seen: r.1,
        last_seen: r.2,
        class: r.3,
        arch: r.4.and_then(|a| u16::try_from(a).ok()),
        uuid: r.5,
        vendor_class: r.6,
        relay: r.7.and_then(|a| a.parse().ok()),
    })
}

/// Writes `rows` (new or changed sightings) and keeps the `kept` most recently seen, in one
/// transaction.
pub async fn write(db: &ProvisionDb, rows: Vec<Seen>, kept: usize) -> anyhow::Result<()> {
    let mut stmts: Vec<Stmt> = rows
        .into_iter()
        .map(|r| {
            let params = vec![
                r.mac.to_string().into(),
                r.first_seen.into(),
                r.last_seen.into(),
                r.class.into(),
                r.arch.map(i32::from).into(),
                r.uuid.into(),
                r.vendor_class.into(),
                r.relay.map(|a| a.to_string()).into(),
            ];
            Stmt::new(UPSERT, params)
        })
        .collect();
    stmts.push(Stmt::new(TRIM.replace("{n}", &kept.to_string()), vec![]));
    db.transact(stmts).await
}

/// Every machine of the table, most recently seen first.
pub async fn list(db: &ProvisionDb) -> anyhow::Result<Vec<Seen>> {
    let rows: Vec<Row> = match db {
        ProvisionDb::Sqlite(db) => {
            with_sqlite(db, |store| {
                let mut st = store.conn().prepare(LIST)?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?
        }
        ProvisionDb::Postgres(pool) => pool
            .get()
            .await?
            .query(LIST, &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
            .collect(),
    };
    Ok(rows.into_iter().filter_map(from_row).collect())
}
