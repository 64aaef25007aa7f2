//! DHCPv6 bindings in the lease store (table `netboot_leases6`, SQLite or PostgreSQL, through
//! the same connection the provisioning tables use). A reply leaves only after its bindings are
//! written (invariant 1, as in v4), and the agent reads them back at start.

use crate::dhcp6::leases::{Lease6, Lease6State};
use crate::mac::MacAddr;
use crate::store::db::{ProvisionDb, with_sqlite};
use crate::store::stmt::Stmt;

const UPSERT: &str = "INSERT INTO netboot_leases6 (ip, duid, iaid, mac, state, expires) VALUES ({p}1, {p}2, {p}3, {p}4, {p}5, {p}6)
     ON CONFLICT (ip) DO UPDATE SET duid = EXCLUDED.duid, iaid = EXCLUDED.iaid, mac = EXCLUDED.mac, state = EXCLUDED.state, expires = EXCLUDED.expires";
const FORGET: &str = "DELETE FROM netboot_leases6 WHERE expires <= {p}1";
const LOAD: &str = "SELECT ip, duid, iaid, mac, state, expires FROM netboot_leases6 WHERE expires > {p}1 ORDER BY expires";

/// One row as both backends bind it.
type Row = (String, String, i64, Option<String>, String, i64);

fn row(l: &Lease6) -> Row {
    let duid = l.duid.iter().map(|b| format!("{b:02x}")).collect();
    let state = match l.state {
        Lease6State::Advertised => "advertised",
        Lease6State::Bound => "bound",
        Lease6State::Declined => "declined",
    };
    (l.ip.to_string(), duid, i64::from(l.iaid), l.mac.map(|m| m.to_string()), state.into(), i64::try_from(l.expires).unwrap_or(i64::MAX))
}

fn lease((ip, duid, iaid, mac, state, expires): Row) -> Option<Lease6> {
    let duid = (0..duid.len()).step_by(2).map(|i| u8::from_str_radix(duid.get(i..i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
    let state = match state.as_str() {
        "advertised" => Lease6State::Advertised,
        "bound" => Lease6State::Bound,
        "declined" => Lease6State::Declined,
        _ => return None,
    };
    Some(Lease6 {
        ip: ip.parse().ok()?,
        duid,
        iaid: u32::try_from(iaid).ok()?,
        mac: mac.and_then(|m| m.parse::<MacAddr>().ok()),
        state,
        expires: u64::try_from(expires).ok()?,
    })
}

/// Writes `leases` in one transaction; durable when this returns `Ok`.
pub async fn commit(db: &ProvisionDb, leases: Vec<Lease6>) -> anyhow::Result<()> {
    let stmts = leases
        .iter()
        .map(|l| {
            let (ip, duid, iaid, mac, state, expires) = row(l);
            Stmt::new(UPSERT, vec![ip.into(), duid.into(), iaid.into(), mac.into(), state.into(), expires.into()])
        })
        .collect();
    db.transact(stmts).await
}

/// Deletes the bindings that expired before `now`: a /64 pool's churn would otherwise keep a
/// row per address ever given.
pub async fn forget_expired(db: &ProvisionDb, now: u64) -> anyhow::Result<u64> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match db {
        ProvisionDb::Sqlite(db) => with_sqlite(db, move |store| Ok(store.conn().execute(&FORGET.replace("{p}", "?"), [now])? as u64)).await,
        ProvisionDb::Postgres(pool) => Ok(pool.get().await?.execute(FORGET.replace("{p}", "$").as_str(), &[&now]).await?),
    }
}

/// The bindings that have not expired at `now` (unreadable rows are skipped, with a warning).
pub async fn load(db: &ProvisionDb, now: u64) -> anyhow::Result<Vec<Lease6>> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let rows: Vec<Row> = match db {
        ProvisionDb::Sqlite(db) => {
            with_sqlite(db, move |store| {
                let mut st = store.conn().prepare(&LOAD.replace("{p}", "?"))?;
                let rows = st.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
                Ok(rows.collect::<Result<Vec<Row>, _>>()?)
            })
            .await?
        }
        ProvisionDb::Postgres(pool) => {
            let client = pool.get().await?;
            let rows = client.query(LOAD.replace("{p}", "$").as_str(), &[&now]).await?;
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect()
        }
    };
    let n = rows.len();
    let leases: Vec<Lease6> = rows.into_iter().filter_map(lease).collect();
    if leases.len() < n {
        tracing::warn!(skipped = n - leases.len(), "skipping unreadable DHCPv6 lease rows");
    }
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_survive_a_restart_of_the_store() {
        let dir = crate::scratch::ScratchDir::new("leases6");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let l = Lease6 {
            ip: "fd00::10".parse().unwrap(),
            duid: vec![0, 4, 0xab, 0xcd],
            iaid: u32::MAX,
            mac: Some(MacAddr([0x52, 0x54, 0, 0, 0, 1])),
            state: Lease6State::Bound,
            expires: 2_000_000_000,
        };
        let old = Lease6 { ip: "fd00::11".parse().unwrap(), expires: 100, ..l.clone() };
        rt.block_on(async {
            let db = ProvisionDb::sqlite(&dir).unwrap();
            commit(&db, vec![l.clone(), old]).await.unwrap();
            commit(&db, vec![Lease6 { state: Lease6State::Declined, ..l.clone() }]).await.unwrap();
            drop(db);
            let db = ProvisionDb::sqlite(&dir).unwrap();
            assert_eq!(load(&db, 1000).await.unwrap(), vec![Lease6 { state: Lease6State::Declined, ..l.clone() }]);
            // The expired row is deleted by the sweep, the live one stays.
            assert_eq!(forget_expired(&db, 1000).await.unwrap(), 1);
            assert_eq!(forget_expired(&db, 1000).await.unwrap(), 0);
            assert_eq!(load(&db, 1000).await.unwrap().len(), 1);
        });
    }
}
