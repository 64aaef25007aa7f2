//! Several netboot-xdp servers on one segment sharing one PostgreSQL (issue 14), with real
//! PostgreSQL servers started by the tests: storms through two and three members (the
//! storm's own checks: every machine booted, no address twice, every booted machine's lease
//! in the store), a member killed or stopped mid-storm, the store stopped mid-run, the change
//! listener cut.

use netboot_lab::postgres::Postgres;
use netboot_lab::Agent;
use std::time::Instant;
use tests::probe::Dora;
use tests::{bench_json, require_root};

/// A storm through a cluster; the run's JSON after the checks every cluster run must pass.
/// Machines whose server dies under them start over after their own timeouts (TFTP 20 s idle,
/// HTTP 30 s, REQUEST retries about 60 s), several in a row at worst: 240 s bounds a run whose
/// machines booted in 60 to 85 s when measured, with room for those chains.
fn storm(args: &[&str], name: &str) -> serde_json::Value {
    let v = bench_json(&[&["storm", "--deadline", "240", "--pool", "--store", "postgres"], args].concat(), name);
    let run = v["servers"][0].clone();
    let nodes = v["nodes"].as_u64().unwrap();
    assert_eq!(run["violations"], 0, "{run:#}");
    assert_eq!(run["duplicate_addresses"], 0, "{run:#}");
    assert_eq!(run["booted"], nodes, "{run:#}");
    assert_eq!(run["faults"]["lost_leases"], 0, "{run:#}");
    run
}

/// Each member answered only its own clients: every machine asks twice (ROM, iPXE), so the
/// OFFERs of all members together are 2 per machine plus at most the DISCOVERs retransmitted;
/// two members answering one client would double them. Every member saw the others' leases.
/// A member killed mid-run takes its counters with it: the OFFERs it made before dying are
/// unknown, so only the upper bound holds for the survivors (every machine booting is the
/// storm's own check).
fn check_members(run: &serde_json::Value, nodes: u64, live: usize) {
    let members = run["faults"]["members"].as_array().unwrap();
    let up: Vec<&serde_json::Value> = members.iter().filter(|m| m["running"] == true).collect();
    assert_eq!(up.len(), live, "{run:#}");
    let offers: u64 = up.iter().map(|m| m["offers"].as_u64().unwrap()).sum();
    let retransmits = run["dhcp_retransmits"].as_u64().unwrap() + 2 * run["reboots"].as_u64().unwrap();
    assert!(offers <= 2 * nodes + retransmits, "{offers} OFFERs for {nodes} machines: {run:#}");
    if live == members.len() {
        assert!(offers >= 2 * nodes, "{offers} OFFERs for {nodes} machines: {run:#}");
    }
    for m in &up {
        assert!(m["offers"].as_u64().unwrap() > 0 && m["not_owner"].as_u64().unwrap() > 0, "a member answered all or nothing: {m:#}");
        assert_eq!(m["leases_bound"], nodes, "leases visible from every server: {m:#}");
    }
    let buckets: u64 = up.iter().map(|m| m["cluster"]["owned_buckets"].as_u64().unwrap()).sum();
    assert_eq!(buckets, 256, "{run:#}");
}

#[test]
fn two_servers_sharing_postgresql_boot_a_storm_each_client_answered_once() {
    if !require_root("two_servers_sharing_postgresql_boot_a_storm_each_client_answered_once") {
        return;
    }
    let _serial = tests::serial();
    let run = storm(&["--nodes", "1000", "--servers", "2"], "cluster2");
    check_members(&run, 1000, 2);
}

/// Three members; the last is killed (-9) once half the machines have an address: its
/// database sessions end with it, so its buckets move at the others' next beat (half a second),
/// well before its silence (takeover, 3 s) would move them; every machine boots (those whose chain broke with
/// the dead server start over, as firmware retrying network boot does; those caught between
/// OFFER and ACK wait out their REQUEST retries first, about 60 s with PXE ROM timeouts).
#[test]
fn kill_9_of_one_of_three_servers_mid_storm_every_machine_boots() {
    if !require_root("kill_9_of_one_of_three_servers_mid_storm_every_machine_boots") {
        return;
    }
    let _serial = tests::serial();
    let run = storm(&["--nodes", "1000", "--servers", "3", "--member-fault", "kill"], "cluster3kill");
    let failover = run["faults"]["failover_s"].as_f64().expect("the buckets never moved");
    assert!(failover <= 2.0, "buckets moved after {failover:.2} s: the crash was not seen, only the silence");
    check_members(&run, 1000, 2);
}

/// A member that hangs (SIGSTOP): the others take its buckets, and its kernel stops
/// answering (its liveness lapsed), so no machine is sent to its stopped TFTP.
#[test]
fn sigstop_of_one_of_two_servers_mid_storm_every_machine_boots() {
    if !require_root("sigstop_of_one_of_two_servers_mid_storm_every_machine_boots") {
        return;
    }
    let _serial = tests::serial();
    let run = storm(&["--nodes", "1000", "--servers", "2", "--member-fault", "stop"], "cluster2stop");
    let failover = run["faults"]["failover_s"].as_f64().expect("the buckets never moved");
    assert!(failover <= 4.0, "buckets moved after {failover:.2} s");
    // The survivor ended the stopped member's database sessions (its presence, pool and
    // committer sessions were all opened before its last heartbeat).
    let counter = |k: &str| -> u64 { run["faults"]["members"].as_array().unwrap().iter().map(|m| m["agent_counters"][k].as_u64().unwrap_or(0)).sum() };
    eprintln!("fenced sessions {}, failed commits {}", counter("cluster_fenced_sessions"), counter("lease_commit_failures"));
    assert!(counter("cluster_fenced_sessions") >= 1, "{run:#}");
}

/// The config of member `id` at `address` (10.77.0.1 the lab's server end), sharing `pg`.
fn member_config(dir: &std::path::Path, id: &str, address: &str, pg: &Postgres) -> std::path::PathBuf {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "[server]\naddress = \"{address}\"\nstate_dir = \"{state}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\nlease_time = \"1h\"\n\
             [cluster]\nserver_id = \"{id}\"\nstore = \"{url}\"\n",
            state = dir.join(format!("state-{id}")).display(),
            url = pg.url()
        ),
    )
    .unwrap();
    path
}

/// The first MAC of the form 02:0e:00:00:xx:yy from `from` on that `agent` owns.
fn mac_owned_by(agent: &Agent, members: &[String], from: u16) -> [u8; 6] {
    let id = agent.status().unwrap()["cluster"]["server_id"].as_str().unwrap().to_string();
    let owned = netboot::dhcp::buckets::owned_by(&id, members);
    (from..).map(|n| [2, 0x0e, 0, 0, (n >> 8) as u8, n as u8]).find(|m| owned[netboot_common::cluster::bucket(m) as usize]).unwrap()
}

/// Two members on one segment sharing a PostgreSQL of their own: boot-a at 10.77.0.1 (the
/// lab's server end), boot-b at 10.77.0.3 on a host of its own; both see each other. (Bind
/// its fields in the order `pg, s, host_b, b, a`: they are dropped in reverse, the database
/// last.)
struct TwoMembers {
    a: Agent,
    b: Agent,
    host_b: netboot_lab::Segment,
    s: tests::kit::Setup,
    pg: Postgres,
    members: Vec<String>,
}

impl TwoMembers {
    fn start(name: &str) -> TwoMembers {
        let pg = Postgres::start(name).unwrap();
        let s = tests::kit::Setup::new(&format!("pg{name}"), |_| String::new());
        let host_b = s.lab.add_server("srvb", 'q', "10.77.0.3/16".parse().unwrap()).unwrap();
        let bin = tests::bin("netboot-xdp");
        let a = Agent::start(&s.lab, &bin, &member_config(&s.dir, "boot-a", "10.77.0.1", &pg), &[]).expect("agent a");
        let b = Agent::start_on(&host_b.ns, &host_b.iface, &bin, &member_config(&s.dir, "boot-b", "10.77.0.3", &pg), &[]).expect("agent b");
        assert!(tests::eventually(10, || members_seen(&a) == 2 && members_seen(&b) == 2), "the members do not see each other");
        TwoMembers { a, b, host_b, s, pg, members: vec!["boot-a".to_string(), "boot-b".to_string()] }
    }
}

/// How many members `agent` sees.
fn members_seen(agent: &Agent) -> usize {
    agent.status().unwrap()["cluster"]["members"].as_array().map(Vec::len).unwrap_or(0)
}

/// `pg_ctl stop -m immediate` while a member serves: the kernel keeps answering the clients it
/// knows (their leases are committed), new clients get nothing (no lease can be stored), status
/// says the store is unreachable; when PostgreSQL is back, new clients are served again.
#[test]
fn postgresql_down_known_clients_answered_by_the_kernel_new_ones_not_then_recovery() {
    if !require_root("postgresql_down_known_clients_answered_by_the_kernel_new_ones_not_then_recovery") {
        return;
    }
    let _serial = tests::serial();
    let mut pg = Postgres::start("down").unwrap();
    let s = tests::kit::Setup::new("pgdown", |_| String::new());
    let config = member_config(&s.dir, "boot-a", "10.77.0.1", &pg);
    let agent = Agent::start(&s.lab, &tests::bin("netboot-xdp"), &config, &[]).expect("agent");
    let dora = Dora::open(&s.lab);
    let server = "10.77.0.1".parse().unwrap();
    let known = dora.bind([2, 0x0e, 0, 0, 0, 1], server).expect("a client bound while PostgreSQL runs");
    let cluster = |k: &str| agent.status().unwrap()["cluster"][k].clone();
    assert_eq!(cluster("store"), "ok");

    pg.stop_immediate().unwrap();
    let fast = agent.counters().unwrap()["fast_offer"];
    assert_eq!(dora.offers([2, 0x0e, 0, 0, 0, 1]), vec![known], "the known client is not answered with PostgreSQL down");
    assert_eq!(agent.counters().unwrap()["fast_offer"], fast + 1, "answered by the kernel");
    assert!(dora.offers([2, 0x0e, 0, 0, 0, 2]).is_empty(), "an OFFER for a lease that could not be stored");
    assert!(tests::eventually(5, || cluster("store") == "unreachable"), "status: {}", cluster("store"));
    let dropped = agent.status().unwrap()["agent"]["dhcp_dropped_commit_failed"].as_u64().unwrap_or(0);
    assert!(dropped >= 1, "the failed commit is not counted");

    pg.start_again().unwrap();
    assert!(tests::eventually(10, || !dora.offers([2, 0x0e, 0, 0, 0, 3]).is_empty()), "no recovery: {}", agent.log_text());
    assert!(tests::eventually(5, || cluster("store") == "ok"));
    assert!(dora.bind([2, 0x0e, 0, 0, 0, 4], server).is_some());
    drop(agent);
}

/// Two members; the change listeners' connections are terminated (`pg_terminate_backend`):
/// a lease one member commits still reaches the other (its poll), and a client whose server
/// changed (its member stopped cleanly: its buckets move at once) keeps its address.
#[test]
fn change_log_reaches_the_other_member_without_its_listener_and_a_moved_client_keeps_its_address() {
    if !require_root("change_log_reaches_the_other_member_without_its_listener_and_a_moved_client_keeps_its_address") {
        return;
    }
    let _serial = tests::serial();
    let TwoMembers { pg, s, host_b, b, a, members } = TwoMembers::start("listen");

    let listeners = pg.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'").unwrap();
    assert_eq!(listeners, "2", "one listener per member");
    let remote = |x: &Agent| x.status().unwrap()["agent"]["cluster_remote_changes"].as_u64().unwrap_or(0);
    let before = remote(&b);
    let dora = Dora::open(&s.lab);
    let mac = mac_owned_by(&a, &members, 1);
    let ip = dora.bind(mac, "10.77.0.1".parse().unwrap()).expect("A binds its client");
    let t = Instant::now();
    assert!(tests::eventually(5, || remote(&b) > before), "B never heard of A's lease");
    eprintln!("B followed A's lease {:.2} s after the ACK, with its listener cut", t.elapsed().as_secs_f64());

    // A host written through A's API is B's too (the provisioning tables are in PostgreSQL):
    // B lists it and answers its client, in B's bucket, with its address.
    let hmac = mac_owned_by(&b, &members, 100);
    let path = format!("/api/v1/hosts/{}", netboot::mac::MacAddr(hmac));
    let doc = br#"{"ip":"10.77.0.77","hostname":"shared-077"}"#.to_vec();
    netboot::control::control_request(&a.iface, hyper::Method::PUT, &path, Some(("application/json", doc))).expect("PUT on A");
    let on_b = || String::from_utf8_lossy(&netboot::control::control_get(&b.iface, &path).unwrap_or_default()).contains("10.77.0.77");
    assert!(tests::eventually(5, on_b), "B never saw the host written on A");
    assert_eq!(dora.offers_to(&dora.discover_pxe(hmac)), vec!["10.77.0.77".parse::<std::net::Ipv4Addr>().unwrap()]);

    // A leaves (SIGTERM: it deletes its membership): B owns every bucket at once and answers
    // A's client with the address A gave it, from the shared store.
    a.stop().unwrap();
    let owned = || b.status().unwrap()["cluster"]["owned_buckets"].as_u64().unwrap_or(0);
    assert!(tests::eventually(5, || owned() == 256), "B did not take A's buckets");
    assert_eq!(dora.bind(mac, "10.77.0.3".parse().unwrap()), Some(ip), "the moved client lost its address");
    drop(b);
    drop(host_b);
}

/// A member hangs holding the lock of one of its clients in a backend that is not idle (as its
/// committer's backend blocked writing the answers of a pipelined batch its frozen process no
/// longer reads; here a session named as the member's, busy in `pg_sleep`), so neither
/// `idle_in_transaction_session_timeout` nor anything else of PostgreSQL's ends it: the member
/// that takes the buckets ends the hung member's sessions, and the client is then served. Woken
/// up, the hung member connects again and is a member again.
#[test]
fn a_hung_members_sessions_are_ended_so_its_locks_do_not_outlive_its_buckets() {
    if !require_root("a_hung_members_sessions_are_ended_so_its_locks_do_not_outlive_its_buckets") {
        return;
    }
    let _serial = tests::serial();
    let TwoMembers { pg, s, host_b, b, a, members } = TwoMembers::start("fence");

    let mac = mac_owned_by(&b, &members, 200);
    let client = netboot::mac::MacAddr(mac).to_string();
    let mut held = pg.psql(&format!("SELECT pg_advisory_lock(hashtext('{client}')), pg_sleep(300)"));
    let name_of_b = netboot::store::postgres::member_application_name("boot-b");
    held.env("PGAPPNAME", &name_of_b).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut held = held.spawn().expect("psql");
    let locked = || pg.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").unwrap_or_default() == "1";
    // B's sessions are the ones it opened before its last heartbeat: wait for one after this one.
    let beat_after = || {
        pg.sql(
            "SELECT count(*) FROM netboot_members m, pg_stat_activity a
              WHERE m.server_id = 'boot-b' AND a.query LIKE '%pg_sleep(300)%' AND a.state = 'active' AND m.heartbeat > a.backend_start",
        )
        .unwrap_or_default()
            == "1"
    };
    assert!(tests::eventually(10, || locked() && beat_after()), "the lock is not held: {}", pg.log_text());

    b.pause(true);
    let counter = |k: &str| a.status().unwrap()["agent"][k].as_u64().unwrap_or(0);
    assert!(tests::eventually(10, || counter("cluster_fenced_sessions") >= 1), "A never ended B's sessions: {}", a.log_text());
    assert_eq!(a.status().unwrap()["cluster"]["owned_buckets"], 256, "A ended B's sessions without owning its buckets");
    let of_b = || pg.sql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name_of_b}'")).unwrap();
    assert_eq!(of_b(), "0", "sessions of B left");
    let status = held.wait().unwrap();
    assert!(!status.success(), "the held session was not ended");
    assert!(dora_bind(&s, mac, "10.77.0.1").is_some(), "A did not serve B's client after ending B's sessions: {}", a.log_text());
    assert_eq!(counter("cluster_fence_errors"), 0);

    b.pause(false);
    assert!(tests::eventually(10, || members_seen(&a) == 2 && members_seen(&b) == 2), "B did not come back: {}", b.log_text());
    let mac_b = mac_owned_by(&b, &members, 300);
    assert!(dora_bind(&s, mac_b, "10.77.0.3").is_some(), "B does not serve its clients after it came back: {}", b.log_text());
    // Its committer's connection had been ended: the batch went again on a new one.
    assert_eq!(b.status().unwrap()["agent"]["lease_commit_failures"].as_u64().unwrap_or(0), 0, "{}", b.log_text());
    drop(b);
    drop(host_b);
}

fn dora_bind(s: &tests::kit::Setup, mac: [u8; 6], server: &str) -> Option<std::net::Ipv4Addr> {
    Dora::open(&s.lab).bind(mac, server.parse().unwrap())
}

/// `netboot-xdp leases` reads the shared store: a member's lease, with the member stopped.
#[test]
fn leases_reads_the_shared_store() {
    if !require_root("leases_reads_the_shared_store") {
        return;
    }
    let _serial = tests::serial();
    let pg = Postgres::start("leases").unwrap();
    let s = tests::kit::Setup::new("pgleases", |_| String::new());
    let config = member_config(&s.dir, "boot-a", "10.77.0.1", &pg);
    let agent = Agent::start(&s.lab, &tests::bin("netboot-xdp"), &config, &[]).expect("agent");
    let dora = Dora::open(&s.lab);
    let ip = dora.bind([2, 0x0e, 0, 0, 1, 1], "10.77.0.1".parse().unwrap()).unwrap();
    let rows = pg.sql("SELECT host(ip), state, server_id FROM netboot_leases WHERE state = 'bound'").unwrap();
    assert_eq!(rows, format!("{ip}|bound|boot-a"));
    drop(agent);
    // With no agent running, `leases -c` reads PostgreSQL.
    let out = std::process::Command::new(tests::bin("netboot-xdp")).args(["leases", "--json", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.iter().any(|l| l["ip"] == ip.to_string() && l["state"] == "bound"), "{v:?}");
}

/// A claim lost to another member's lease the member did not know of yet (here: a row
/// written behind the change log's back) is handled again at once with the store's truth: the
/// client gets an OFFER of another address without waiting for its retransmission.
#[test]
fn a_lost_claim_is_answered_at_once_with_another_address() {
    if !require_root("a_lost_claim_is_answered_at_once_with_another_address") {
        return;
    }
    let _serial = tests::serial();
    let pg = Postgres::start("lost").unwrap();
    let s = tests::kit::Setup::new("pglost", |_| String::new());
    let config = member_config(&s.dir, "boot-a", "10.77.0.1", &pg);
    let agent = Agent::start(&s.lab, &tests::bin("netboot-xdp"), &config, &[]).expect("agent");
    // The first pool address, held by another member's client, unknown to boot-a.
    pg.sql(
        "ALTER TABLE netboot_leases DISABLE TRIGGER netboot_lease_changed;
         INSERT INTO netboot_leases (ip, client, mac, state, expires, server_id)
         VALUES ('10.77.1.1', '02:0e:ff:00:00:01', '02:0e:ff:00:00:01', 'bound', 4000000000, 'boot-z');
         ALTER TABLE netboot_leases ENABLE TRIGGER netboot_lease_changed;",
    )
    .unwrap();
    // One DISCOVER, never retransmitted: an OFFER can only come from the request handled again.
    let dora = Dora::open(&s.lab);
    let offers = dora.offers([2, 0x0e, 0, 0, 2, 1]);
    assert_eq!(offers.len(), 1, "no OFFER: {}", agent.log_text());
    assert_ne!(offers[0].to_string(), "10.77.1.1", "offered an address another member's client holds");
    let stat = |k: &str| agent.status().unwrap()["agent"][k].as_u64().unwrap_or(0);
    assert_eq!((stat("lease_claims_lost"), stat("dhcp_claim_retries"), stat("dhcp_dropped_claim_lost")), (1, 1, 0));
}
