//! The shared PostgreSQL lease store against a real PostgreSQL started by the test (issue 14),
//! without namespaces: stores of two "servers" claiming from one pool at once, the rules of the
//! claim, the schema's migrations, `netboot-xdp db migrate`, the change log; the provisioning
//! tables' bounds on both backends.

use netboot::dhcp::{ClientKey, Lease, LeaseState};
use netboot::mac::MacAddr;
use netboot::store::LeaseStore;
use netboot::store::postgres::{PgStore, parse_url};
use netboot_lab::postgres::Postgres;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use tests::require_root;

const FAR: u64 = 4_000_000_000;

fn lease(ip: u32, client: u32, state: LeaseState, expires: u64) -> Lease {
    let mac = MacAddr([2, 0x14, 0, (client >> 16) as u8, (client >> 8) as u8, client as u8]);
    Lease { ip: Ipv4Addr::from(0x0a50_0000 + ip), client: ClientKey::new(mac, None), mac, hostname: None, state, expires }
}

fn store(pg: &Postgres, id: &str) -> PgStore {
    PgStore::open(parse_url(&pg.url()).unwrap(), id, 0).unwrap()
}

/// Two servers, 400 clients each, one pool of 300 addresses, every client trying addresses
/// in an order that collides with the other server's: each address is won by one client, no
/// client holds two, and what each server was told it won is what the database holds.
#[test]
fn two_stores_claiming_one_pool_at_once_never_give_an_address_twice() {
    if !require_root("two_stores_claiming_one_pool_at_once_never_give_an_address_twice") {
        return;
    }
    let pg = Postgres::start("claims").unwrap();
    // Both servers send each round of claims together: their claims race in the database.
    let round = std::sync::Barrier::new(2);
    let run = |id: &'static str, first_client: u32| {
        let mut s = store(&pg, id);
        let mut won: Vec<Lease> = Vec::new();
        // Batches of 20 clients, as the group commit makes them; each client asks for the
        // next address in the pool by its own cursor, and moves on when refused.
        let mut cursor = 0u32;
        for batch in 0..20 {
            let mut pending: Vec<u32> = (0..20).map(|i| first_client + batch * 20 + i).collect();
            for _attempt in 0..300 {
                round.wait();
                if pending.is_empty() || cursor >= 300 {
                    continue;
                }
                let ls: Vec<Lease> = pending.iter().enumerate().map(|(k, c)| lease((cursor + k as u32) % 300, *c, LeaseState::Bound, FAR)).collect();
                let refs: Vec<&Lease> = ls.iter().collect();
                let refused: HashSet<usize> = s.commit(&refs).unwrap().into_iter().map(|r| r.index).collect();
                let mut still = Vec::new();
                for (k, l) in ls.iter().enumerate() {
                    if refused.contains(&k) {
                        still.push(pending[k]);
                    } else {
                        won.push(l.clone());
                    }
                }
                cursor += pending.len() as u32;
                pending = still;
            }
        }
        won
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| run("boot-a", 0));
        let b = sc.spawn(|| run("boot-b", 10_000));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(!a.is_empty() && !b.is_empty(), "both servers won some: {} and {}", a.len(), b.len());
    let mut holder: HashMap<Ipv4Addr, &Lease> = HashMap::new();
    for l in a.iter().chain(&b) {
        if let Some(other) = holder.insert(l.ip, l) {
            panic!("{} was given to {} and to {}", l.ip, other.mac, l.mac);
        }
    }
    assert_eq!(holder.len(), 300, "the pool is used up, every address once");
    let rows = pg.sql("SELECT count(*), count(DISTINCT client), count(DISTINCT ip) FROM netboot_leases WHERE state = 'bound'").unwrap();
    assert_eq!(rows, "300|300|300");
    // What each server was told it won is what the database holds.
    let mut s = store(&pg, "reader");
    let stored: HashMap<Ipv4Addr, Lease> = s.load().unwrap().into_iter().map(|l| (l.ip, l)).collect();
    for l in a.iter().chain(&b) {
        assert_eq!(stored[&l.ip].client, l.client, "{}", l.ip);
    }
}

#[test]
fn a_claim_loses_to_a_live_holder_and_to_the_clients_lease_from_another_server() {
    if !require_root("a_claim_loses_to_a_live_holder_and_to_the_clients_lease_from_another_server") {
        return;
    }
    let pg = Postgres::start("rules").unwrap();
    let (mut a, mut b) = (store(&pg, "boot-a"), store(&pg, "boot-b"));
    let now = pg.sql("SELECT extract(epoch FROM now())::bigint").unwrap().parse::<u64>().unwrap();
    // Client 1 holds .1 from A.
    assert!(a.commit(&[&lease(1, 1, LeaseState::Bound, now + 600)]).unwrap().is_empty());
    // B cannot give .1 to client 2: the winner is client 1's row.
    let r = b.commit(&[&lease(1, 2, LeaseState::Offered, now + 30)]).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].winner.as_ref().map(|w| (w.ip, w.client.clone())), Some((lease(1, 1, LeaseState::Bound, 0).ip, lease(1, 1, LeaseState::Bound, 0).client)));
    // B cannot give client 1 another address while A's lease is live: the answer is A's lease.
    let r = b.commit(&[&lease(2, 1, LeaseState::Offered, now + 30)]).unwrap();
    assert_eq!(r[0].winner.as_ref().map(|w| w.ip), Some(lease(1, 1, LeaseState::Bound, 0).ip));
    // A renews its own client; A moving its client to .3 supersedes .1 (one live lease each).
    assert!(a.commit(&[&lease(1, 1, LeaseState::Bound, now + 900)]).unwrap().is_empty());
    assert!(a.commit(&[&lease(3, 1, LeaseState::Bound, now + 900)]).unwrap().is_empty());
    assert_eq!(pg.sql("SELECT host(ip), state FROM netboot_leases WHERE client = (SELECT client FROM netboot_leases WHERE host(ip) = '10.80.0.3') ORDER BY ip").unwrap(), "10.80.0.1|released\n10.80.0.3|bound");
    // An expired lease is free for anyone; a released one too.
    assert!(a.commit(&[&lease(4, 4, LeaseState::Bound, now - 10)]).unwrap().is_empty());
    assert!(b.commit(&[&lease(4, 5, LeaseState::Offered, now + 30)]).unwrap().is_empty());
    assert!(b.commit(&[&lease(1, 6, LeaseState::Offered, now + 30)]).unwrap().is_empty());
    // Every change is in the log, in order, with the server that made it.
    let log = pg.sql("SELECT server_id FROM netboot_lease_changes ORDER BY seq").unwrap();
    assert!(log.lines().count() >= 6 && log.contains("boot-a") && log.contains("boot-b"), "{log}");
}

/// The slack of kernel renewals: an address whose stored expiry passed less than the slack
/// ago may still be renewed in the kernel, so no other client may take it yet.
#[test]
fn an_address_is_free_for_another_client_only_after_the_renewal_slack() {
    if !require_root("an_address_is_free_for_another_client_only_after_the_renewal_slack") {
        return;
    }
    let pg = Postgres::start("slack").unwrap();
    let mut a = PgStore::open(parse_url(&pg.url()).unwrap(), "boot-a", 900).unwrap();
    let now = pg.sql("SELECT extract(epoch FROM now())::bigint").unwrap().parse::<u64>().unwrap();
    assert!(a.commit(&[&lease(7, 1, LeaseState::Bound, now - 60)]).unwrap().is_empty());
    assert_eq!(a.commit(&[&lease(7, 2, LeaseState::Offered, now + 30)]).unwrap().len(), 1, "taken within the slack");
    assert!(a.commit(&[&lease(8, 3, LeaseState::Bound, now - 1000)]).unwrap().is_empty());
    assert!(a.commit(&[&lease(8, 4, LeaseState::Offered, now + 30)]).unwrap().is_empty(), "free after the slack");
}

#[test]
fn db_migrate_brings_the_schema_up_once_and_refuses_a_newer_one() {
    if !require_root("db_migrate_brings_the_schema_up_once_and_refuses_a_newer_one") {
        return;
    }
    let pg = Postgres::start("migrate").unwrap();
    let dir = std::env::temp_dir().join(format!("nbx-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.80.0.0/16\"\n[cluster]\nserver_id = \"boot-a\"\nstore = \"{}\"\n", dir.join("state").display(), pg.url()),
    )
    .unwrap();
    let migrate = || std::process::Command::new(tests::bin("netboot-xdp")).args(["db", "migrate", "-c"]).arg(&cfg).output().unwrap();
    let first = migrate();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let all = |m: &[netboot::store::schema::Migration]| format!("applied migrations {:?}", m.iter().map(|m| m.version).collect::<Vec<_>>());
    let pg_all = all(netboot::store::schema::POSTGRES);
    assert!(String::from_utf8_lossy(&first.stdout).contains(&pg_all), "{pg_all}: {}", String::from_utf8_lossy(&first.stdout));
    let second = migrate();
    assert!(String::from_utf8_lossy(&second.stdout).contains("nothing to do"), "{}", String::from_utf8_lossy(&second.stdout));
    pg.sql("INSERT INTO netboot_schema (version, what) VALUES (99, 'from the future')").unwrap();
    let newer = migrate();
    assert!(!newer.status.success());
    assert!(String::from_utf8_lossy(&newer.stderr).contains("newer than this netboot-xdp knows"), "{}", String::from_utf8_lossy(&newer.stderr));
    // SQLite: the same command on a config without a store.
    std::fs::write(&cfg, format!("[server]\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.80.0.0/16\"\n", dir.join("state").display())).unwrap();
    let sqlite = migrate();
    let sqlite_all = format!("SQLite lease store: {}", all(netboot::store::schema::SQLITE));
    assert!(String::from_utf8_lossy(&sqlite.stdout).contains(&sqlite_all), "{sqlite_all}: {}", String::from_utf8_lossy(&sqlite.stdout));
    // A broken store URL is a config error with its position.
    std::fs::write(&cfg, "[dhcp]\nsubnet = \"10.80.0.0/16\"\n[cluster]\nserver_id = \"a\"\nstore = \"mysql://x\"\n").unwrap();
    let bad = migrate();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("c.toml:5:9"), "{}", String::from_utf8_lossy(&bad.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the network can write into the provisioning tables is bounded, in SQLite and in
/// PostgreSQL alike: a node reporting without end keeps its newest events, and another
/// node's stay.
#[test]
fn a_node_reporting_without_end_keeps_only_its_newest_events_on_both_backends() {
    if !require_root("a_node_reporting_without_end_keeps_only_its_newest_events_on_both_backends") {
        return;
    }
    use netboot::store::db::{Change, EVENTS_PER_NODE, ProvisionDb};
    let pg = Postgres::start("events").unwrap();
    PgStore::open(parse_url(&pg.url()).unwrap(), "boot-a", 0).unwrap(); // migrates
    let dir = std::env::temp_dir().join(format!("nbx-prov-events-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let backends = [
        ProvisionDb::sqlite(&dir).unwrap(),
        ProvisionDb::Postgres(netboot::store::postgres::pool(&parse_url(&pg.url()).unwrap(), 2).unwrap()),
    ];
    for db in backends {
        rt.block_on(async {
            let (a, b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
            let event = |mac, m: String| vec![Change::Event { mac, event: "failed".into(), message: m }];
            db.apply(event(b, "b".into()), None).await.unwrap();
            for i in 0..EVENTS_PER_NODE + 5 {
                db.apply(event(a, i.to_string()), None).await.unwrap();
            }
            let kept = db.events(a).await.unwrap();
            assert_eq!(kept.len() as i64, EVENTS_PER_NODE);
            assert_eq!(kept.last().unwrap().message, (EVENTS_PER_NODE + 4).to_string(), "the newest went");
            assert_eq!(kept[0].message, "5", "not the oldest that went");
            assert_eq!(db.events(b).await.unwrap().len(), 1);
            // DHCPv6 bindings (issue 16) go to the same store: written, rewritten, read back.
            use netboot::dhcp6::{Lease6, Lease6State};
            use netboot::store::leases6 as store;
            let l = Lease6 { ip: "fd00::10".parse().unwrap(), duid: vec![0, 4, 0xab], iaid: u32::MAX, mac: Some(a), state: Lease6State::Advertised, expires: 2_000_000_000 };
            store::commit(&db, vec![l.clone()]).await.unwrap();
            store::commit(&db, vec![Lease6 { state: Lease6State::Bound, ..l.clone() }]).await.unwrap();
            assert_eq!(store::load(&db, 1_900_000_000).await.unwrap(), vec![Lease6 { state: Lease6State::Bound, ..l }]);
            assert!(store::load(&db, 2_000_000_000).await.unwrap().is_empty(), "expired");
            assert_eq!(store::forget_expired(&db, 2_000_000_000).await.unwrap(), 1, "and deleted");
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cluster.store` over TLS (libpq's `sslmode` and `sslrootcert`): with the CA that signed the
/// server's certificate, leases are committed over a verified TLS session; a server whose
/// certificate another CA signed is refused, a plain connection is not attempted, and TLS
/// that could not be verified (`require` without a CA) is a config error.
#[test]
fn the_store_over_tls_verifies_the_server_and_never_falls_back_to_plain() {
    if !require_root("the_store_over_tls_verifies_the_server_and_never_falls_back_to_plain") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("nbx-pgtls-{}", std::process::id()));
    let pki = netboot_lab::pki::Pki::make(&dir.join("good"), "127.0.0.1", "good").unwrap();
    let other = netboot_lab::pki::Pki::make(&dir.join("other"), "127.0.0.1", "other").unwrap();
    let pg = Postgres::start_tls("tls", &pki).unwrap();
    let port = pg.tls_port().unwrap();
    let url = |query: &str| format!("postgresql://netboot@127.0.0.1:{port}/netboot?{query}");

    // Verified TLS: leases committed, and the server sees a TLS session from netboot-xdp.
    let mut s = PgStore::open(parse_url(&url(&format!("sslmode=verify-full&sslrootcert={}", pki.ca.display()))).unwrap(), "boot-a", 0).unwrap();
    let l = lease(1, 1, LeaseState::Bound, FAR);
    assert!(s.commit(&[&l]).unwrap().is_empty());
    assert_eq!(pg.sql("SELECT count(*) FROM netboot_leases").unwrap(), "1");
    let tls = pg.sql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = 'netboot-xdp'").unwrap();
    assert_eq!(tls, "1", "the store's connection is not TLS");
    // With a client certificate too.
    let with_cert = format!("sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}", pki.ca.display(), pki.client_cert.display(), pki.client_key.display());
    assert!(PgStore::open(parse_url(&url(&with_cert)).unwrap(), "boot-b", 0).is_ok());

    // Another CA: the handshake fails, nothing is written, the reason is named.
    let err = PgStore::open(parse_url(&url(&format!("sslmode=verify-full&sslrootcert={}", other.ca.display()))).unwrap(), "boot-c", 0).err().expect("a server signed by an unknown CA was accepted");
    assert!(format!("{err:#}").to_lowercase().contains("certificate"), "{err:#}");
    // No sslmode: plain, which this server refuses (hostssl only) — never a silent downgrade
    // the other way either: a TLS URL does not fall back to plain.
    let err = PgStore::open(parse_url(&url("")).unwrap(), "boot-d", 0).err().expect("a plain connection was accepted");
    assert!(format!("{err:#}").contains("no encryption") || format!("{err:#}").contains("pg_hba"), "{err:#}");
    // TLS that cannot be verified is refused before any connection, as are unknown modes.
    for (query, why) in [("sslmode=require", "needs sslrootcert"), ("sslmode=maybe&sslrootcert=/x", "sslmode=maybe"), (&format!("sslmode=require&sslrootcert={}", dir.join("none.pem").display()), "cannot read")] {
        let e = parse_url(&url(query)).err().unwrap_or_else(|| panic!("{query} was accepted"));
        assert!(format!("{e:#}").contains(why), "{query}: {e:#}");
    }
    assert_eq!(pg.sql("SELECT count(*) FROM netboot_leases").unwrap(), "1");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
