//! Real machines: QEMU VMs with real firmware network-boot from `netboot-xdp attach` in the lab
//! (TCG; `cargo xtask e2e` runs this file alone). Success is observed, not assumed: the boot
//! script makes iPXE fetch a final URL from the agent, and every stage is asserted from the
//! node's timeline (`/api/v1/nodes/MAC` on the agent's control socket).
//!
//! Each test prints its figures (seconds from VM start to script) on stderr.

use netboot_lab::vm::{Firmware, Vm};
use netboot::mac::MacAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::kit::Setup;
use tests::require_root;

/// What the VM's script does: say who it is, fetch the final URL (the proof), stay.
const SCRIPT: &str = "#!ipxe\necho netboot-xdp e2e: {{ hostname }} {{ mac }} {{ ip }}\nimgfetch http://{{ server }}:8080/final.txt\necho booted\nsleep 600\n";
/// Per VM: TCG firmware is slow, more so with ten at once on two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

fn mac(n: u32) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0xe2, 0x00, n as u8])
}

fn setup(tag: &str, vms: u32) -> Setup {
    setup_with(tag, vms, "uefi_x64 = \"ipxe.efi\"")
}

/// `boot` replaces the `[boot]` table's UEFI x64 line.
fn setup_with(tag: &str, vms: u32, boot: &str) -> Setup {
    let s = Setup::new(tag, |dir| {
        let mut c = format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{state}\"\n\
             [dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\nrouter = \"10.77.0.1\"\n\
             [boot]\nbios = \"undionly.kpxe\"\n{boot}\nhttp_client = \"http://{{server}}:8080/ipxe.efi\"\nipxe_script = \"http://{{server}}:8080/boot.ipxe\"\n\
             [tftp]\nroot = \"{tftp}\"\n[http]\nlisten = \"0.0.0.0:8080\"\nroot = \"{http}\"\n",
            state = dir.join("state").display(),
            tftp = dir.join("tftp").display(),
            http = dir.join("http").display(),
        );
        for n in 0..vms {
            c.push_str(&format!("[[dhcp.host]]\nmac = \"{}\"\nip = \"10.77.2.{}\"\nhostname = \"vm-{n:02}\"\n", mac(n), 10 + n));
        }
        c
    });
    let (tftp, http) = (s.dir.join("tftp"), s.dir.join("http"));
    std::fs::create_dir_all(&tftp).unwrap();
    std::fs::create_dir_all(&http).unwrap();
    for f in ["ipxe.efi", "undionly.kpxe"] {
        std::fs::copy(Path::new("/usr/lib/ipxe").join(f), tftp.join(f)).unwrap_or_else(|e| panic!("/usr/lib/ipxe/{f} (package ipxe): {e}"));
    }
    std::fs::copy("/usr/lib/ipxe/ipxe.efi", http.join("ipxe.efi")).unwrap();
    std::fs::write(http.join("boot.ipxe.j2"), SCRIPT).unwrap();
    std::fs::write(http.join("final.txt"), b"netboot-xdp e2e final\n").unwrap();
    s
}

/// Switches the RA responder by rewriting the config (the agent reloads it).
fn set_ra(s: &Setup, agent: &netboot_lab::Agent, on: bool) {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let before = agent.status().unwrap()["agent"]["config_reloads"].as_u64().unwrap_or(0);
    let text = text.replace("[dhcp]\n", &format!("[dhcp]\nipv6_ra = {on}\n"));
    std::fs::write(&s.config, text).unwrap();
    assert!(tests::eventually(10, || agent.status().unwrap()["agent"]["config_reloads"].as_u64().unwrap_or(0) > before), "reload");
}

fn timeline(s: &Setup, mac: MacAddr) -> Option<serde_json::Value> {
    let body = netboot::runtime::control_get(&s.lab.server_if, &format!("/api/v1/nodes/{mac}")).ok()?;
    serde_json::from_slice(&body).ok()
}

/// The event of `stage` (and `kind`, if given) in a node's timeline.
fn find<'a>(node: &'a serde_json::Value, stage: &str, kind: Option<&str>) -> Option<(usize, &'a serde_json::Value)> {
    node["events"].as_array()?.iter().enumerate().find(|(_, e)| e["stage"] == stage && kind.is_none_or(|k| e["kind"] == k))
}

/// Waits until every VM fetched the final URL; their timelines.
fn wait_booted(s: &Setup, vms: &mut [Vm]) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut done: Vec<Option<serde_json::Value>> = vec![None; vms.len()];
    while done.iter().any(Option::is_none) {
        for (i, vm) in vms.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            assert!(vm.running(), "VM {} ({}) exited: {}", vm.mac, vm.firmware.name(), vm.console_text());
            if let Some(node) = timeline(s, vm.mac) {
                let events = node["events"].as_array().cloned().unwrap_or_default();
                if events.iter().any(|e| e["stage"] == "file" && e["path"] == "/final.txt" && e["status"] == 200) {
                    done[i] = Some(node);
                }
            }
        }
        if Instant::now() > deadline {
            let stuck: Vec<String> = vms
                .iter()
                .zip(&done)
                .filter(|(_, d)| d.is_none())
                .map(|(vm, _)| format!("{} {}: {:?}\n--- console ---\n{}", vm.mac, vm.firmware.name(), timeline(s, vm.mac), vm.console_text()))
                .collect();
            panic!("not booted within {BOOT_TIMEOUT:?}:\n{}", stuck.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// Asserts the stages of `firmware`'s chain; seconds from VM start to the script.
fn check_chain(vm: &Vm, node: &serde_json::Value) -> f64 {
    let ipxe = find(node, "ipxe_dhcp", Some("ack")).unwrap_or_else(|| panic!("no iPXE DHCP ACK: {node:#}"));
    let script = find(node, "script", None).unwrap_or_else(|| panic!("no script: {node:#}"));
    let file = node["events"].as_array().unwrap().iter().enumerate().find(|(_, e)| e["stage"] == "file" && e["path"] == "/final.txt").unwrap();
    assert_eq!(script.1["known"], true, "{node:#}");
    assert!(ipxe.0 < script.0 && script.0 < file.0, "{node:#}");
    if vm.firmware == Firmware::OvmfPxe {
        // EDK2's PXE client: PXEClient arch 7, then TFTP of ipxe.efi, then iPXE.
        let pxe = find(node, "dhcp", Some("ack")).unwrap_or_else(|| panic!("no firmware DHCP ACK: {node:#}"));
        assert_eq!(pxe.1["class"], "pxe", "{node:#}");
        // EDK2 asks for the size first (a size probe), then reads.
        let tftp = node["events"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .find(|(_, e)| e["stage"] == "tftp" && e["outcome"] == "complete")
            .unwrap_or_else(|| panic!("no complete TFTP transfer: {node:#}"));
        assert_eq!((tftp.1["file"].as_str(), tftp.1["blksize"].as_u64(), tftp.1["windowsize"].as_u64()), (Some("ipxe.efi"), Some(1468), Some(4)), "{node:#}");
        assert!(pxe.0 < tftp.0 && tftp.0 < ipxe.0, "{node:#}");
    }
    let ip = node["ip"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("10.77.2."), "the reserved address: {node:#}");
    (script.1["at_ms"].as_u64().unwrap() - vm.started_ms) as f64 / 1000.0
}

fn boot_one(s: &Setup, n: u32, firmware: Firmware) -> f64 {
    let mut vms = vec![Vm::start(&s.lab, n, firmware, mac(n), &s.dir).expect("VM")];
    let nodes = wait_booted(s, &mut vms);
    check_chain(&vms[0], &nodes[0])
}

#[test]
fn seabios_ipxe_rom_boots_to_its_script_with_and_without_ra() {
    if !require_root("seabios_ipxe_rom_boots_to_its_script_with_and_without_ra") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-bios", 2);
    let agent = s.start();
    let on = boot_one(&s, 0, Firmware::SeaBiosIpxeRom);
    assert!(agent.status().unwrap()["agent"]["ra_sent"].as_u64().unwrap_or(0) >= 1, "iPXE solicited, we advertised");
    set_ra(&s, &agent, false);
    let off = boot_one(&s, 1, Firmware::SeaBiosIpxeRom);
    eprintln!("e2e: SeaBIOS + iPXE ROM: VM start to script {on:.1} s with RA, {off:.1} s without");
    assert!(off > on + 5.0, "the RA should end iPXE's IPv6 wait: {on:.1} s with, {off:.1} s without");
    drop(agent);
}

#[test]
fn ovmf_pxe_chainloads_ipxe_to_its_script() {
    if !require_root("ovmf_pxe_chainloads_ipxe_to_its_script") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-ovmf", 2);
    let agent = s.start();
    let on = boot_one(&s, 0, Firmware::OvmfPxe);
    set_ra(&s, &agent, false);
    let off = boot_one(&s, 1, Firmware::OvmfPxe);
    eprintln!("e2e: OVMF PXE -> ipxe.efi: VM start to script {on:.1} s with RA, {off:.1} s without");
    drop(agent);
}

/// UEFI HTTP boot with real firmware: with no TFTP file for UEFI x64, OVMF's PXE attempt gets an
/// address but no file and gives up; its HTTP boot client then asks as `HTTPClient` and gets
/// the URL of ipxe.efi.
#[test]
fn ovmf_http_boot_fetches_ipxe_over_http() {
    if !require_root("ovmf_http_boot_fetches_ipxe_over_http") {
        return;
    }
    let _serial = tests::serial();
    let s = setup_with("e2e-http", 1, "uefi_x64 = \"\"");
    let agent = s.start();
    let mut vms = vec![Vm::start(&s.lab, 0, Firmware::OvmfPxe, mac(0), &s.dir).expect("VM")];
    let nodes = wait_booted(&s, &mut vms);
    let node = &nodes[0];
    let http = node["events"].as_array().unwrap().iter().position(|e| e["stage"] == "dhcp" && e["class"] == "http" && e["kind"] == "ack");
    let efi = node["events"].as_array().unwrap().iter().position(|e| e["stage"] == "file" && e["path"] == "/ipxe.efi" && e["status"] == 200);
    let script = find(node, "script", None).map(|(i, _)| i);
    assert!(http.is_some() && efi.is_some() && script.is_some() && http < efi && efi < script, "{node:#}");
    let secs = (find(node, "script", None).unwrap().1["at_ms"].as_u64().unwrap() - vms[0].started_ms) as f64 / 1000.0;
    eprintln!("e2e: OVMF HTTP boot -> ipxe.efi over HTTP: VM start to script {secs:.1} s");
    drop(agent);
}

#[test]
fn ten_vms_at_once_all_boot() {
    if !require_root("ten_vms_at_once_all_boot") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-ten", 10);
    let agent = s.start();
    let t0 = Instant::now();
    let mut vms: Vec<Vm> = (0..10)
        .map(|n| {
            let fw = if n % 3 == 2 { Firmware::OvmfPxe } else { Firmware::SeaBiosIpxeRom };
            Vm::start(&s.lab, n, fw, mac(n), &s.dir).expect("VM")
        })
        .collect();
    let nodes = wait_booted(&s, &mut vms);
    let wall = t0.elapsed().as_secs_f64();
    let secs: Vec<f64> = vms.iter().zip(&nodes).map(|(vm, node)| check_chain(vm, node)).collect();
    let ips: std::collections::HashSet<&str> = nodes.iter().map(|n| n["ip"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 10, "distinct addresses");
    // Reserved machines are answered in the kernel, whatever the tap's offload does to their
    // checksums: every ACK of every stage (firmware PXE, iPXE) took the XDP path.
    for (vm, node) in vms.iter().zip(&nodes) {
        let acks: Vec<&serde_json::Value> =
            node["events"].as_array().unwrap().iter().filter(|e| (e["stage"] == "dhcp" || e["stage"] == "ipxe_dhcp") && e["kind"] == "ack").collect();
        assert!(!acks.is_empty() && acks.iter().all(|e| e["path"] == "kernel"), "{} {}: ACKs not all from the kernel: {node:#}", vm.mac, vm.firmware.name());
    }
    assert_eq!(agent.counters().unwrap()["bad_checksum"], 0, "no VM frame counted as corrupt");
    eprintln!("e2e: 10 VMs at once (7 SeaBIOS+iPXE ROM, 3 OVMF PXE): all booted in {wall:.1} s; per VM {secs:.1?}");
    drop(agent);
}
