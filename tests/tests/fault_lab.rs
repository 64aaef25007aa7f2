//! Boot storms through faults (issues 13 and 26), each bounded by the storm's deadline: kill -9
//! of the agent in the middle, 5 % loss on the link, a random-MAC DISCOVER flood, a flood of
//! the machines' own chaddrs from another host, forged TFTP requests. Every machine must
//! boot, no address may go to two machines, and (pool storms) every booted machine's lease must
//! be in the store. The storm's own checks count each broken rule as a violation and fail the
//! run; these tests read its JSON for the rest.

use tests::{bench_json, require_root};

fn storm(args: &[&str], name: &str) -> serde_json::Value {
    let v = bench_json(&[&["storm", "--deadline", "120"], args].concat(), name);
    let run = v["servers"][0].clone();
    assert_eq!(run["violations"], 0, "{run:#}");
    assert_eq!(run["duplicate_addresses"], 0, "{run:#}");
    run
}

#[test]
fn kill_9_of_the_agent_mid_storm_loses_no_boot_and_no_lease() {
    if !require_root("kill_9_of_the_agent_mid_storm_loses_no_boot_and_no_lease") {
        return;
    }
    let _serial = tests::serial();
    // Addresses from the pool: what a crash could lose or give twice.
    let run = storm(&["--nodes", "2000", "--pool", "--kill-agent-at", "0.5"], "kill9");
    assert_eq!(run["booted"], 2000, "{run:#}");
    assert_eq!(run["faults"]["restarts"], 1, "the agent was not killed: {run:#}");
    assert_eq!(run["faults"]["lost_leases"], 0, "{run:#}");
}

#[test]
fn five_percent_loss_on_the_link_every_machine_boots() {
    if !require_root("five_percent_loss_on_the_link_every_machine_boots") {
        return;
    }
    let _serial = tests::serial();
    let run = storm(&["--nodes", "1000", "--loss", "5"], "loss");
    assert_eq!(run["booted"], 1000, "{run:#}");
    assert!(run["dhcp_retransmits"].as_u64().unwrap() + run["tftp_retransmits"].as_u64().unwrap() > 0, "no loss happened: {run:#}");
}

#[test]
fn a_random_mac_discover_flood_does_not_stop_a_storm() {
    if !require_root("a_random_mac_discover_flood_does_not_stop_a_storm") {
        return;
    }
    let _serial = tests::serial();
    let calm = storm(&["--nodes", "1000"], "calm");
    let flooded = storm(&["--nodes", "1000", "--flood", "20000"], "flood");
    assert_eq!((calm["booted"].as_u64(), flooded["booted"].as_u64()), (Some(1000), Some(1000)), "{flooded:#}");
    assert!(flooded["faults"]["flood_sent"].as_u64().unwrap() > 0, "{flooded:#}");
    eprintln!(
        "1000 machines: all booted in {:.2} s without a flood, {:.2} s during 20000 random-MAC DISCOVERs/s ({} sent)",
        calm["all_booted_s"].as_f64().unwrap_or(f64::NAN),
        flooded["all_booted_s"].as_f64().unwrap_or(f64::NAN),
        flooded["faults"]["flood_sent"]
    );
}

#[test]
fn a_flood_of_the_machines_own_chaddrs_from_another_host_does_not_stop_them_booting() {
    if !require_root("a_flood_of_the_machines_own_chaddrs_from_another_host_does_not_stop_them_booting") {
        return;
    }
    let _serial = tests::serial();
    // 20000 DISCOVERs/s spread over 100 machines' chaddrs, from a second before they power
    // on: 200 a second each, ten times per_client_pps (20). Counted per chaddr alone, each
    // machine's own requests passed only in the first tenth of every second, and a boot takes
    // four of them in turn.
    let run = storm(&["--nodes", "100", "--flood", "20000", "--flood-kind", "victims", "--flood-lead", "1"], "victims");
    assert_eq!(run["booted"].as_u64(), Some(100), "{run:#}");
    let member = &run["faults"]["members"][0];
    assert!(member["xdp_counters"]["rate_limited"].as_u64().unwrap_or(0) > 0, "the flooder was not limited: {member:#}");
    eprintln!("100 machines: all booted in {:.2} s while another host sent their chaddrs at 20000 frames/s ({} sent, {} dropped as over the limit)", run["all_booted_s"].as_f64().unwrap_or(f64::NAN), run["faults"]["flood_sent"], member["xdp_counters"]["rate_limited"]);
}

#[test]
fn forged_tftp_requests_from_8192_sources_do_not_take_the_transfer_places() {
    if !require_root("forged_tftp_requests_from_8192_sources_do_not_take_the_transfer_places") {
        return;
    }
    let _serial = tests::serial();
    // 2000 forged RRQs/s with options (an OACK each, never acknowledged) from 8192 addresses,
    // for 10 s before the machines come: 20000 of them, more than max_transfers (16384).
    // Counted as transfers, they held every place and the machines got "server busy".
    let run = storm(&["--nodes", "200", "--flood", "2000", "--flood-kind", "rrq", "--flood-lead", "10"], "rrq");
    assert_eq!(run["booted"].as_u64(), Some(200), "{run:#}");
    assert!(run["faults"]["flood_sent"].as_u64().unwrap() >= 20_000, "{run:#}");
    let member = &run["faults"]["members"][0];
    assert!(member["agent_counters"]["tftp_pending_evicted"].as_u64().unwrap_or(0) > 0, "the forged requests did not fill the pending transfers: {member:#}");
    eprintln!("200 machines: all booted in {:.2} s after and during 2000 forged RRQs/s ({} sent)", run["all_booted_s"].as_f64().unwrap_or(f64::NAN), run["faults"]["flood_sent"]);
}

/// A full `state_dir` (a small tmpfs): no OFFER or ACK for a lease that cannot be made durable,
/// known clients keep being answered (by the kernel), and new ones are served again once there
/// is space.
#[test]
fn a_full_state_dir_gives_no_address_it_cannot_store_and_recovers() {
    use tests::probe::Dora;
    if !require_root("a_full_state_dir_gives_no_address_it_cannot_store_and_recovers") {
        return;
    }
    let _serial = tests::serial();
    let s = tests::kit::Setup::new("full", |dir| {
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\nlease_time = \"1h\"\n",
            dir.join("state").display()
        )
    });
    let state = s.dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _tmpfs = Tmpfs::mount(&state, "2m");
    let agent = s.start();
    let stat = |k: &str| agent.status().unwrap()["agent"][k].as_u64().unwrap_or(0);
    let dora = Dora::open(&s.lab);
    let offers = |mac: u8| dora.offers([2, 0, 0, 0x0f, 0, mac]).len();
    // A client bound before the disk fills.
    assert!(dora.bind([2, 0, 0, 0x0f, 0, 1], "10.77.0.1".parse().unwrap()).is_some(), "a first client is not served");
    // Fill the file system (bounded by its size).
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let before = stat("dhcp_dropped_commit_failed");
    assert_eq!(offers(2), 0, "an OFFER for a lease that could not be stored");
    assert!(tests::eventually(3, || stat("dhcp_dropped_commit_failed") > before), "the failed commit is counted");
    // The known client is answered still: its lease is durable already.
    let fast = agent.counters().unwrap()["fast_offer"];
    assert_eq!(offers(1), 1, "the bound client is not answered with the disk full");
    assert_eq!(agent.counters().unwrap()["fast_offer"], fast + 1, "answered by the kernel");
    // Space again: new clients are served.
    std::fs::remove_file(&filler).unwrap();
    assert!(tests::eventually(5, || offers(3) == 1), "no recovery once space returned: {}", agent.log_text());
    drop(agent);
}

/// A tmpfs mounted on a directory of the test's own, unmounted on every exit path.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(at).status().unwrap();
        assert!(st.success(), "mount tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
