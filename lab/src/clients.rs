//! Real DHCP clients run in a lab's client namespace, each bounded in time with `timeout`.
//! They never touch the host's configuration: scripts are `/bin/true` or a test's recorder, lease and pid files are
//! private temporary files.

use super::Lab;
use std::process::{Command, Output};

fn bounded(lab: &Lab, secs: u32, program: &str) -> Command {
    let mut c = lab.client.command("timeout");
    c.args(["-s", "KILL", &secs.to_string(), program]);
    c
}

/// `udhcpc`: sends DISCOVERs (at most `tries`, one second apart), quits at the first lease.
pub fn udhcpc(lab: &Lab, tries: u32) -> std::io::Result<Output> {
    udhcpc_with_script(lab, tries, "/bin/true")
}

/// `udhcpc` running `script` on its events (`bound` with the lease in the environment).
pub fn udhcpc_with_script(lab: &Lab, tries: u32, script: &str) -> std::io::Result<Output> {
    bounded(lab, tries + 3, "udhcpc")
        .args(["-i", &lab.client_if, "-n", "-q", "-f", "-t", &tries.to_string(), "-T", "1", "-A", "1", "-s", script])
        .output()
}

/// ISC `dhclient` in one-shot mode with a 3 s timeout, private lease/pid files and no script.
pub fn dhclient(lab: &Lab) -> std::io::Result<Output> {
    dhclient_with_script(lab, "/bin/true")
}

/// ISC `dhclient` running `script` (`reason=BOUND` with `new_*` variables in the environment).
pub fn dhclient_with_script(lab: &Lab, script: &str) -> std::io::Result<Output> {
    let dir = std::env::temp_dir().join(format!("nbx-dhclient-{}", lab.id));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("dhclient.conf");
    std::fs::write(&conf, "timeout 3;\nretry 1;\ninitial-interval 1;\n")?;
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let out = bounded(lab, 8, "dhclient")
        .args(["-1", "-d", "-v", "-sf", script, "-cf", &p("dhclient.conf"), "-lf", &p("leases"), "-pf", &p("pid")])
        .arg(&lab.client_if)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// ISC `dhclient -6` (stateful DHCPv6, one address) with its files in `dir` (kept, so that a
/// second call with `-r` releases the lease the first got), running `script`
/// (`reason=BOUND6` with `new_ip6_address` in the environment).
pub fn dhclient6(lab: &Lab, dir: &std::path::Path, script: &str, extra: &[&str]) -> std::io::Result<Output> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("dhclient6.conf"), "timeout 5;\nretry 1;\ninitial-interval 1;\n")?;
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    bounded(lab, 10, "dhclient")
        .args(["-6", "-1", "-d", "-v", "-sf", script, "-cf", &p("dhclient6.conf"), "-lf", &p("leases6"), "-pf", &p("pid6")])
        .args(extra)
        .arg(&lab.client_if)
        .output()
}

/// `perfdhcp` (it always acts as a relay: giaddr = its address, source port 67): `n`
/// exchanges from `n` distinct MACs at `rate` per second, with extra options such as
/// `-o 77,69505845` (user class "iPXE").
pub fn perfdhcp(lab: &Lab, n: u32, rate: u32, extra: &[&str]) -> std::io::Result<Output> {
    let secs = n / rate.max(1) + 5;
    bounded(lab, secs + 2, "perfdhcp")
        .args(["-4", "-l", &lab.client_if, "-r", &rate.to_string(), "-n", &n.to_string(), "-R", &n.to_string()])
        .args(["-p", &secs.to_string(), "-W", "1000000"])
        .args(extra)
        .output()
}
