//! `netboot-xdp attach` in a lab, driven through the normative CLI, with real DHCP clients
//! (udhcpc, dhclient, perfdhcp) in the client namespace.

use netboot_lab::{Agent, Lab, clients};
use tests::kit::Setup;
use std::process::Command;
use tests::{bin, require_root};

/// The lab and a config with a state directory of its own (both removed when dropped).
fn setup() -> Setup {
    Setup::new("attach", |dir| {
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.9.254\"]\n",
            dir.join("state").display()
        )
    })
}

const CONFIG: &str = "[server]\naddress = \"10.77.0.1\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.9.254\"]\n";

fn xdp_on(lab: &Lab) -> String {
    let out = lab.server.command("ip").args(["-d", "link", "show", "dev", &lab.server_if]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn attach_counts_real_clients_and_detaches_on_sigterm() {
    if !require_root("attach_counts_real_clients_and_detaches_on_sigterm") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    let (lab, cfg) = (&s.lab, &s.config);
    let agent = Agent::start(lab, &bin("netboot-xdp"), cfg, &[]).unwrap();
    let st = agent.status().unwrap();
    assert_eq!(st["xdp_mode"], "native", "{st}");
    assert!(xdp_on(lab).contains("prog/xdp"), "no XDP program on {}", lab.server_if);

    clients::udhcpc(lab, 2).unwrap();
    clients::dhclient(lab).unwrap();
    let plain = clients::perfdhcp(lab, 20, 200, &["-i"]).unwrap();
    let ipxe = clients::perfdhcp(lab, 30, 200, &["-i", "-o", "77,69505845"]).unwrap();
    assert!(!plain.stdout.is_empty() && !ipxe.stdout.is_empty(), "perfdhcp did not run");

    let c = agent.counters().unwrap();
    let msg = format!("{c:?}\nagent log:\n{}", agent.log_text());
    assert_eq!(c["class_ipxe"], 30, "{msg}");
    assert_eq!(c["relayed"], 50, "{msg}");
    // udhcpc and dhclient each sent at least one DISCOVER; perfdhcp 20 more.
    assert!(c["class_plain"] >= 22, "{msg}");
    // Now that the agent answers, udhcpc and dhclient go on to REQUEST.
    assert_eq!(c["msg_discover"] + c["msg_request"], c["class_plain"] + c["class_ipxe"], "{msg}");
    assert_eq!(c["arch_none"], c["class_plain"] + c["class_ipxe"], "{msg}");
    for bad in ["truncated", "malformed_ip", "malformed_bootp", "malformed_options", "unsupported"] {
        assert_eq!(c[bad], 0, "{bad}: {msg}");
    }
    assert_eq!(c["packets"], c["xdp_pass"], "{msg}");

    let exit = agent.stop().unwrap();
    assert!(exit.success(), "agent exit {exit}");
    assert!(!xdp_on(lab).contains("prog/xdp"), "XDP program left attached after SIGTERM");
    let out = Command::new(bin("netboot-xdp")).args(["status", &lab.server_if]).output().unwrap();
    assert!(!out.status.success(), "status after detach should fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not attached"));
}

#[test]
fn skb_mode_and_detach_command() {
    if !require_root("skb_mode_and_detach_command") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    let (lab, cfg) = (&s.lab, &s.config);
    let agent = Agent::start(lab, &bin("netboot-xdp"), cfg, &["--xdp-mode", "skb"]).unwrap();
    assert_eq!(agent.status().unwrap()["xdp_mode"], "skb");
    assert!(xdp_on(lab).contains(" xdpgeneric "), "{}", xdp_on(lab));
    clients::udhcpc(lab, 1).unwrap();
    assert!(agent.counters().unwrap()["msg_discover"] >= 1);

    let out = Command::new(bin("netboot-xdp")).args(["detach", &lab.server_if]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!xdp_on(lab).contains("prog/xdp"), "still attached after detach");
    let out = Command::new(bin("netboot-xdp")).args(["detach", &lab.server_if]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not attached"));
    drop(agent);
}

/// Runs the CLI and returns (success, stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("netboot-xdp")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn last_line(s: &str) -> &str {
    s.trim_end().lines().last().unwrap_or_default()
}

#[test]
fn cannot_start_errors_are_one_clear_line() {
    if !require_root("cannot_start_errors_are_one_clear_line") {
        return;
    }
    let _serial = tests::serial();
    let dir = std::env::temp_dir().join(format!("nbx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, CONFIG).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[dhcp]\nsubnet = \"10.77.0.0/16\"\nlease_time = \"forever\"\n").unwrap();
    let good_s = good.to_str().unwrap();
    let bad_s = bad.to_str().unwrap();

    let (ok, err) = cli(&["check", "-c", good_s]);
    assert!(ok, "{err}");
    let (ok, err) = cli(&["check", "-c", bad_s]);
    assert!(!ok);
    assert!(last_line(&err).starts_with(&format!("netboot-xdp: {bad_s}:3:14: invalid duration")), "{err}");

    let (ok, err) = cli(&["attach", "nbx-no-such0", "-c", bad_s]);
    assert!(!ok);
    assert!(last_line(&err).contains(&format!("{bad_s}:3:14")), "bad config must be reported before anything else: {err}");

    let (ok, err) = cli(&["attach", "nbx-no-such0", "-c", good_s]);
    assert!(!ok);
    assert_eq!(last_line(&err), "netboot-xdp: no such interface: nbx-no-such0");

    // Not root: drop to nobody with setpriv (util-linux).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(bin("netboot-xdp"))
        .args(["attach", "lo", "-c", good_s])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(last_line(&err).starts_with("netboot-xdp: must run as root"), "{err}");

    let (ok, err) = cli(&["status", "nbx-no-such0"]);
    assert!(!ok);
    assert!(last_line(&err).contains("nbx-no-such0: not attached"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue 13: a pinned map an older build left with another layout (here COUNTERS with fewer
/// entries, as before new counters were added) made every start fail; now it is replaced.
#[test]
fn pinned_maps_of_another_layout_are_replaced_at_attach() {
    if !require_root("pinned_maps_of_another_layout_are_replaced_at_attach") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    netboot::fastpath::pins::ensure_bpffs().unwrap();
    let dir = netboot::fastpath::pins::iface_dir(&s.lab.server_if);
    std::fs::create_dir_all(&dir).unwrap();
    let pin = dir.join("COUNTERS");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args(["type", "percpu_array", "key", "4", "value", "8", "entries", "7", "name", "COUNTERS"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let agent = s.start();
    assert!(agent.log_text().contains("pinned maps of another build"), "{}", agent.log_text());
    let c = agent.counters().unwrap();
    assert_eq!(c.len(), netboot_common::Counter::ALL.len(), "every counter readable: {c:?}");
    clients::udhcpc(&s.lab, 1).unwrap();
    assert!(agent.counters().unwrap()["msg_discover"] >= 1);
    drop(agent);
}
