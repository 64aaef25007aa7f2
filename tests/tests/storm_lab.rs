//! The boot-storm bench on a small storm against each server: it must boot every machine and
//! its correctness checks (reserved address, file per arch, byte-exact files, script URL,
//! script) must hold, so that its figures for peers compare the same work.

use std::process::Command;
use tests::{bin, require_root};

fn storm(server: &str, nodes: u32, extra: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("nbx-storm-{}-{}.json", server.replace('+', "-"), std::process::id()));
    let plot = json.with_extension("svg");
    let out = Command::new(bin("netboot-bench"))
        .args(["storm", "--nodes", &nodes.to_string(), "--server", server, "--arch", "mix", "--deadline", "90", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "storm against {server} failed:\n{text}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"), "a plot");
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(plot);
    eprintln!("{text}");
    v["servers"][0].clone()
}

#[test]
fn a_small_storm_boots_every_machine_correctly_on_every_server() {
    if !require_root("a_small_storm_boots_every_machine_correctly_on_every_server") {
        return;
    }
    let _serial = tests::serial();
    let r = storm("netboot-xdp", 50, &["--files", "--uefi-windowsize", "4"]);
    assert_eq!((r["booted"].as_u64(), r["violations"].as_u64()), (Some(50), Some(0)), "{r:#}");
    assert_eq!(r["stages"]["files"]["done"], 50);
    for peer in ["dnsmasq", "kea+tftpd-hpa"] {
        let r = storm(peer, 20, &[]);
        assert_eq!((r["booted"].as_u64(), r["violations"].as_u64()), (Some(20), Some(0)), "{peer}: {r:#}");
    }
}
