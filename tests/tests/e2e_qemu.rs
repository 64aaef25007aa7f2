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
    let body = netboot::control::control_get(&s.lab.server_if, &format!("/api/v1/nodes/{mac}")).ok()?;
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

/// UEFI HTTP boot with real firmware, configured as a fleet does it: PXE switched off in the
/// firmware, its HTTP boot client asks as `HTTPClient` and gets the URL of ipxe.efi over HTTP.
/// Issue 16's goal: VM start to script under 30 s (without the switches OVMF first waits out
/// PXEv4 and PXEv6: 136.8 s).
#[test]
fn ovmf_http_boot_fetches_ipxe_over_http() {
    if !require_root("ovmf_http_boot_fetches_ipxe_over_http") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-http", 1);
    let agent = s.start();
    let mut vms = vec![Vm::start(&s.lab, 0, Firmware::OvmfHttp, mac(0), &s.dir).expect("VM")];
    let nodes = wait_booted(&s, &mut vms);
    let node = &nodes[0];
    let http = node["events"].as_array().unwrap().iter().position(|e| e["stage"] == "dhcp" && e["class"] == "http" && e["kind"] == "ack");
    let efi = node["events"].as_array().unwrap().iter().position(|e| e["stage"] == "file" && e["path"] == "/ipxe.efi" && e["status"] == 200);
    let script = find(node, "script", None).map(|(i, _)| i);
    assert!(http.is_some() && efi.is_some() && script.is_some() && http < efi && efi < script, "{node:#}");
    assert!(node["events"].as_array().unwrap().iter().all(|e| e["class"] != "pxe"), "no PXE attempt: {node:#}");
    let secs = (find(node, "script", None).unwrap().1["at_ms"].as_u64().unwrap() - vms[0].started_ms) as f64 / 1000.0;
    eprintln!("e2e: OVMF HTTP boot -> ipxe.efi over HTTP: VM start to script {secs:.1} s");
    drop(agent);
}

/// Issue 16's IPv6 chains with real firmware, two VMs at once. DHCPv4 is ProxyDHCP only here,
/// so no step can quietly fall back to IPv4.
/// - OVMF with IPv4 PXE off solicits a router (managed RA, boot prefix on-link), runs DHCPv6 as
///   PXEClient arch 7, gets `tftp://[fd00:77::1]/ipxe.efi` and fetches it over TFTPv6;
/// - OVMF with both PXE off boots UEFI HTTP over IPv6 (HTTPv4 finds no address): DHCPv6 as
///   HTTPClient, `http://[fd00:77::1]:8080/ipxe.efi` with "HTTPClient" echoed;
///
/// then in both iPXE configures IPv6 from the same RA, gets the script URL by DHCPv6 and
/// fetches the script and the final file over HTTPv6.
#[test]
fn ovmf_boots_over_ipv6_by_pxe_and_by_http() {
    if !require_root("ovmf_boots_over_ipv6_by_pxe_and_by_http") {
        return;
    }
    let _serial = tests::serial();
    let s = setup_with("e2e-v6", 2, "uefi_x64 = \"ipxe.efi\"");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let text = text
        .replace("[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\nrouter = \"10.77.0.1\"\n", "[dhcp]\nmode = \"proxy\"\n")
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"[::]:8080\"")
        + "[dhcp6]\nenabled = true\nprefix = \"fd00:77::/64\"\npools = [\"fd00:77::1000-fd00:77::1fff\"]\n";
    std::fs::write(&s.config, text).unwrap();
    std::fs::write(s.dir.join("http").join("boot.ipxe.j2"), SCRIPT.replace("http://{{ server }}:8080/", "http://[fd00:77::1]:8080/")).unwrap();
    let add = ["-6", "addr", "add", "fd00:77::1/64", "dev", &s.lab.server_if, "nodad"];
    assert!(s.lab.server.command("ip").args(add).status().unwrap().success());
    let agent = s.start();
    let mut vms = vec![
        Vm::start(&s.lab, 0, Firmware::OvmfPxe6, mac(0), &s.dir).expect("VM"),
        Vm::start(&s.lab, 1, Firmware::OvmfHttp, mac(1), &s.dir).expect("VM"),
    ];
    let nodes = wait_booted(&s, &mut vms);
    for (vm, node) in vms.iter().zip(&nodes) {
        let events = node["events"].as_array().unwrap();
        let at = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(f);
        let (firmware, fetched) = match vm.firmware {
            Firmware::OvmfPxe6 => (
                at(&|e| e["stage"] == "dhcp6" && e["kind"] == "reply" && e["class"] == "pxe" && e["arch"] == 7),
                at(&|e| e["stage"] == "tftp" && e["file"] == "ipxe.efi" && e["outcome"] == "complete"),
            ),
            _ => (
                at(&|e| e["stage"] == "dhcp6" && e["kind"] == "reply" && e["class"] == "http" && e["arch"] == 16),
                at(&|e| e["stage"] == "file" && e["path"] == "/ipxe.efi" && e["status"] == 200),
            ),
        };
        let ipxe = at(&|e| e["stage"] == "dhcp6" && e["kind"] == "reply" && e["class"] == "ipxe");
        let script = at(&|e| e["stage"] == "script" && e["known"] == true);
        assert!(firmware.is_some() && firmware < fetched && fetched < ipxe && ipxe < script, "{}: {node:#}", vm.firmware.name());
        assert!(node["ip6"].as_str().is_some_and(|ip| ip.starts_with("fd00:77::")), "{node:#}");
        // ProxyDHCPv4 offers (no address in them) are all IPv4 gave.
        assert!(events.iter().all(|e| !(e["stage"] == "dhcp" || e["stage"] == "ipxe_dhcp") || e["kind"] == "offer"), "no DHCPv4 binding: {node:#}");
        assert!(node["ip"].is_null(), "{node:#}");
        let secs = (events[script.unwrap()]["at_ms"].as_u64().unwrap() - vm.started_ms) as f64 / 1000.0;
        eprintln!("e2e: {} over IPv6 -> ipxe.efi -> iPXE DHCPv6 -> script over HTTPv6: VM start to script {secs:.1} s", vm.firmware.name());
    }
    drop(agent);
}

/// The per-node GRUB config of the Secure Boot test: who it is (the proof it was rendered for
/// this node), then the signed kernel over TFTP, its messages on the serial console.
const GRUB_CFG: &str = "set timeout=0\necho netboot-xdp e2e: {{ hostname }} {{ mac }} profile {{ profile }}\n\
linux /vmlinuz console=ttyS0 nbx_host={{ hostname }}\nboot\n";

/// Issue 16's Secure Boot chain with real firmware: OVMF enforcing Secure Boot with Microsoft's
/// keys PXE-boots as a machine of a `secure_boot` profile; it gets Debian's Microsoft-signed
/// shim (not iPXE, which it would refuse), shim fetches the Debian-signed network GRUB beside
/// it, GRUB reads its config (`/grub/grub.cfg`, rendered for this node by the agent) and the
/// Debian-signed kernel, all over TFTP, and the kernel starts with Secure Boot on.
#[test]
fn ovmf_secure_boot_boots_the_signed_chain_to_the_kernel() {
    if !require_root("ovmf_secure_boot_boots_the_signed_chain_to_the_kernel") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-sb", 1);
    add_secure_boot(&s, &[mac(0)]);
    let agent = s.start();
    let mut vm = Vm::start(&s.lab, 0, Firmware::OvmfSecureBoot, mac(0), &s.dir).expect("VM");
    wait_kernel(&s, &mut vm, Instant::now() + BOOT_TIMEOUT);
    let console = vm.console_text();
    assert!(console.contains("nbx_host=vm-00"), "the kernel got this node's command line: {console}");
    let node = timeline(&s, mac(0)).unwrap();
    let events = node["events"].as_array().unwrap();
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(f);
    let fetched = |file: &'static str| move |e: &serde_json::Value| e["stage"] == "tftp" && e["outcome"] == "complete" && e["file"].as_str().map(|f| f.trim_start_matches('/')) == Some(file);
    let pxe = at(&|e| e["stage"] == "dhcp" && e["kind"] == "ack" && e["class"] == "pxe");
    let (shim, grub, cfg, kernel) = (at(&fetched("shimx64.efi")), at(&fetched("grubx64.efi")), at(&fetched("grub/grub.cfg")), at(&fetched("vmlinuz")));
    let script = at(&|e| e["stage"] == "script" && e["status"] == 200);
    assert!(pxe.is_some() && pxe < shim && shim < grub && grub < script && script < cfg && cfg < kernel, "{node:#}");
    assert!(events.iter().all(|e| e["stage"] != "ipxe_dhcp" && e["file"] != "ipxe.efi"), "no iPXE in a Secure Boot chain: {node:#}");
    let secs = |i: Option<usize>| (events[i.unwrap()]["at_ms"].as_u64().unwrap() - vm.started_ms) as f64 / 1000.0;
    eprintln!(
        "e2e: OVMF Secure Boot -> shim -> GRUB -> signed kernel: VM start to shim {:.1} s, GRUB config {:.1} s, kernel fetched {:.1} s, kernel running {:.1} s",
        secs(shim),
        secs(cfg),
        secs(kernel),
        vm.started.elapsed().as_secs_f64()
    );
    drop(agent);
}

/// The signed chain in `tftp` and the `signed` profile for `macs` in the config of `s`.
fn add_secure_boot(s: &Setup, macs: &[MacAddr]) {
    let chain = netboot_lab::vm::SignedChain::fetch(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/peers/secure-boot")).expect("Debian's signed boot chain");
    let tftp = s.dir.join("tftp");
    std::fs::copy(&chain.shim, tftp.join("shimx64.efi")).unwrap();
    std::fs::copy(&chain.grub, tftp.join("grubx64.efi")).unwrap();
    std::fs::copy(&chain.kernel, tftp.join("vmlinuz")).unwrap();
    std::fs::write(s.dir.join("http/grub.cfg.j2"), GRUB_CFG).unwrap();
    let prefixes: Vec<String> = macs.iter().map(|m| format!("\"{m}\"")).collect();
    let text = std::fs::read_to_string(&s.config).unwrap()
        + &format!("[[profile]]\nname = \"signed\"\nsecure_boot = true\ngrub = \"grub.cfg.j2\"\nselector = {{ mac_prefix = [{}] }}\n", prefixes.join(", "));
    std::fs::write(&s.config, text).unwrap();
}

/// Waits until the signed kernel of `vm` runs (its console says so).
fn wait_kernel(s: &Setup, vm: &mut Vm, deadline: Instant) {
    while !vm.console_text().contains("Secure boot enabled") {
        assert!(vm.running(), "VM exited: {}", vm.console_text());
        assert!(Instant::now() < deadline, "the signed kernel did not start: {:#?}\n--- console ---\n{}", timeline(s, vm.mac), vm.console_text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 16's mixed batch: ten machines at once, each path of the product: four SeaBIOS with
/// the iPXE ROM and two OVMF PXE over IPv4, one UEFI HTTP boot, two OVMF over IPv6 (PXEv6 to
/// TFTPv6, their hosts with a fixed `ip6`), one with Secure Boot (shim, GRUB, the signed
/// kernel). Every one boots; the IPv4 machines' ACKs all come from the kernel.
#[test]
fn ten_vms_of_every_firmware_path_at_once_all_boot() {
    if !require_root("ten_vms_of_every_firmware_path_at_once_all_boot") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-ten", 10);
    let firmware = |n: u32| match n {
        0..=3 => Firmware::SeaBiosIpxeRom,
        4 | 5 => Firmware::OvmfPxe,
        6 => Firmware::OvmfHttp,
        7 | 8 => Firmware::OvmfPxe6,
        _ => Firmware::OvmfSecureBoot,
    };
    let mut text = std::fs::read_to_string(&s.config).unwrap().replace("listen = \"0.0.0.0:8080\"", "listen = \"[::]:8080\"");
    for n in [7, 8] {
        let ip = format!("ip = \"10.77.2.{}\"\n", 10 + n);
        text = text.replace(&ip, &format!("{ip}ip6 = \"fd00:77::{}\"\n", 10 + n));
    }
    text.push_str("[dhcp6]\nenabled = true\nprefix = \"fd00:77::/64\"\npools = [\"fd00:77::1000-fd00:77::1fff\"]\n");
    std::fs::write(&s.config, text).unwrap();
    add_secure_boot(&s, &[mac(9)]);
    let add = ["-6", "addr", "add", "fd00:77::1/64", "dev", &s.lab.server_if, "nodad"];
    assert!(s.lab.server.command("ip").args(add).status().unwrap().success());
    let agent = s.start();
    let t0 = Instant::now();
    let mut vms: Vec<Vm> = (0..10).map(|n| Vm::start(&s.lab, n, firmware(n), mac(n), &s.dir).expect("VM")).collect();
    let mut signed = vms.pop().unwrap();
    let nodes = wait_booted(&s, &mut vms);
    wait_kernel(&s, &mut signed, t0 + BOOT_TIMEOUT);
    let wall = t0.elapsed().as_secs_f64();
    let mut secs = Vec::new();
    for (vm, node) in vms.iter().zip(&nodes) {
        let events = node["events"].as_array().unwrap();
        let script = find(node, "script", None).unwrap_or_else(|| panic!("no script: {node:#}"));
        secs.push((vm.firmware.name(), (script.1["at_ms"].as_u64().unwrap() - vm.started_ms) as f64 / 1000.0));
        match vm.firmware {
            Firmware::OvmfPxe6 => {
                let v6 = events.iter().position(|e| e["stage"] == "dhcp6" && e["kind"] == "reply" && e["class"] == "pxe");
                let tftp = events.iter().position(|e| e["stage"] == "tftp" && e["file"] == "ipxe.efi" && e["outcome"] == "complete");
                assert!(v6.is_some() && v6 < tftp && tftp < Some(script.0), "{node:#}");
                assert_eq!(node["ip6"].as_str(), Some(format!("fd00:77::{}", 10 + (vm.mac.0[5] as u32)).as_str()), "the reserved ip6: {node:#}");
            }
            Firmware::OvmfHttp => {
                let http = events.iter().position(|e| e["stage"] == "dhcp" && e["class"] == "http" && e["kind"] == "ack");
                let efi = events.iter().position(|e| e["stage"] == "file" && e["path"] == "/ipxe.efi" && e["status"] == 200);
                assert!(http.is_some() && http < efi && efi < Some(script.0), "{node:#}");
            }
            _ => {
                check_chain(vm, node);
                // Reserved machines are answered in the kernel, whatever the tap's offload does
                // to their checksums: every ACK of every stage (firmware PXE, iPXE) took the
                // XDP path.
                let acks: Vec<&serde_json::Value> = events.iter().filter(|e| (e["stage"] == "dhcp" || e["stage"] == "ipxe_dhcp") && e["kind"] == "ack").collect();
                assert!(!acks.is_empty() && acks.iter().all(|e| e["path"] == "kernel"), "{} {}: ACKs not all from the kernel: {node:#}", vm.mac, vm.firmware.name());
            }
        }
    }
    let node = timeline(&s, signed.mac).unwrap();
    let fetched = |file: &str| node["events"].as_array().unwrap().iter().any(|e| e["stage"] == "tftp" && e["outcome"] == "complete" && e["file"].as_str().map(|f| f.trim_start_matches('/')) == Some(file));
    assert!(["shimx64.efi", "grubx64.efi", "grub/grub.cfg", "vmlinuz"].iter().all(|f| fetched(f)), "the signed chain: {node:#}");
    assert_eq!(agent.counters().unwrap()["bad_checksum"], 0, "no VM frame counted as corrupt");
    eprintln!("e2e: 10 VMs at once (4 SeaBIOS+iPXE ROM, 2 OVMF PXE, 1 UEFI HTTP, 2 OVMF PXEv6, 1 Secure Boot): all booted in {wall:.1} s; to script {secs:?}");
    drop(agent);
}

/// What this test's machine does: with intent `install`, the "installer" (the script) fetches
/// its payload, then waits for the test to have phoned home for it and reboots; with intent
/// `local` the agent serves the local-disk script instead of this template.
const INSTALL_SCRIPT: &str = "#!ipxe\necho netboot-xdp e2e: intent {{ intent }}, reports to {{ phone_home }}\nimgfetch http://{{ server }}:8080/final.txt\n\
:wait\nsleep 1\nimgfetch http://{{ server }}:8080/done/{{ mac }} || goto wait\nreboot\n";

/// A boot sector that writes a marker to the first serial port and halts: proof that the
/// machine booted its local disk.
fn local_disk(path: &Path) {
    let mut mbr = vec![
        0xfa, // cli
        0x31, 0xc0, // xor ax, ax
        0x8e, 0xd8, // mov ds, ax
        0xbe, 0x16, 0x7c, // mov si, 0x7c16 (the message)
        0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xf4, // done: hlt
        0xeb, 0xfd, // jmp done
    ];
    mbr.extend_from_slice(b"NBX-LOCAL-DISK\r\n\0");
    mbr.resize(510, 0);
    mbr.extend_from_slice(&[0x55, 0xaa]);
    mbr.resize(1 << 20, 0);
    std::fs::write(path, mbr).unwrap();
}

/// Issue 15 with a real machine: a node with intent `install` boots its installer, the install
/// phones home `installed` with the URL its script got, and on its next boot (the machine
/// reboots, network first) it gets the local-disk script and boots its disk.
#[test]
fn installed_node_boots_its_local_disk_next_time() {
    if !require_root("installed_node_boots_its_local_disk_next_time") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-install", 1);
    std::fs::write(s.dir.join("http/boot.ipxe.j2"), INSTALL_SCRIPT).unwrap();
    std::fs::create_dir_all(s.dir.join("http/done")).unwrap();
    let disk = s.dir.join("disk.img");
    local_disk(&disk);
    let agent = s.start();
    let m = mac(0);
    let cli = std::process::Command::new(tests::bin("netboot-xdp"))
        .args(["node", &m.to_string(), "intent", "install", "--iface", &s.lab.server_if])
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let mut vms = vec![Vm::start_with_disk(&s.lab, 0, Firmware::SeaBiosIpxeRom, m, &s.dir, &disk).expect("VM")];
    let node = wait_booted(&s, &mut vms).remove(0);
    let to_script = check_chain(&vms[0], &node);

    // The installer's phone-home, with the URL its script got (the same URL on a fetch again).
    let script = netboot::control::control_get(&s.lab.server_if, &format!("/boot.ipxe?mac={m}")).unwrap();
    let script = String::from_utf8(script).unwrap();
    assert!(script.contains("intent install"), "{script}");
    let phone_home = script.split("reports to ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default().to_string();
    assert!(phone_home.starts_with(&format!("http://10.77.0.1:8080/api/v1/nodes/{m}/events?token=")), "{script}");
    let (code, body) = s.curl(&["-X", "POST", "-d", r#"{"event":"installed","message":"e2e"}"#, &phone_home]);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    std::fs::write(s.dir.join(format!("http/done/{m}")), b"ok\n").unwrap();

    // It reboots: network first, the local-disk script, its disk.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !vms[0].console_text().contains("NBX-LOCAL-DISK") {
        assert!(vms[0].running(), "VM exited: {}", vms[0].console_text());
        assert!(Instant::now() < deadline, "the local disk did not boot: {:?}\n{}", timeline(&s, m), vms[0].console_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    let local = agent.status().unwrap()["agent"]["http_scripts_local"].as_u64().unwrap_or(0);
    assert!(local >= 1, "no local-disk script was served");
    let node = timeline(&s, m).unwrap();
    let events = node["events"].as_array().unwrap();
    let installed = events.iter().position(|e| e["stage"] == "event" && e["event"] == "installed").expect("installed on the timeline");
    assert!(events[installed..].iter().any(|e| e["stage"] == "script"), "no script after the install: {node:#}");
    eprintln!("e2e: install then local boot (SeaBIOS): VM start to script {to_script:.1} s, to the local disk {:.1} s", vms[0].started.elapsed().as_secs_f64());
}

/// Issue 17's admission question, measured with real iPXE (SeaBIOS ROM): what does iPXE do
/// with `503 Service Unavailable` and `Retry-After`? A responder on the boot network answers
/// the first two requests for a payload 503 with `Retry-After: 1`, then 200. iPXE waits the
/// delay and asks again: the fetch succeeds. (The agent's script answers 503 + Retry-After
/// when its lease store is unreachable, counting on exactly this.)
#[test]
fn ipxe_waits_out_a_503_with_retry_after_and_asks_again() {
    use std::io::{Read, Write};
    if !require_root("ipxe_waits_out_a_503_with_retry_after_and_asks_again") {
        return;
    }
    let _serial = tests::serial();
    let s = setup("e2e-503", 1);
    std::fs::write(
        s.dir.join("http/boot.ipxe.j2"),
        "#!ipxe\nimgfetch http://{{ server }}:8081/payload && echo nbx-payload-ok || echo nbx-payload-failed\nimgfetch http://{{ server }}:8080/final.txt\nsleep 600\n",
    )
    .unwrap();
    let listener = s.lab.server.run(|| std::net::TcpListener::bind("10.77.0.1:8081")).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, u16)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let responder = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + BOOT_TIMEOUT;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match c.read(&mut b) {
                        Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                        _ => break,
                    }
                }
                let mut seen = seen.lock().unwrap();
                let busy = seen.len() < 2;
                let reply: &[u8] = if busy {
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\npayload\n"
                };
                seen.push((Instant::now(), if busy { 503 } else { 200 }));
                let _ = c.write_all(reply);
            }
        })
    };
    let agent = s.start();
    boot_one(&s, 0, Firmware::SeaBiosIpxeRom);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    responder.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let statuses: Vec<u16> = seen.iter().map(|(_, st)| *st).collect();
    let gaps: Vec<f64> = seen.windows(2).map(|w| (w[1].0 - w[0].0).as_secs_f64()).collect();
    eprintln!("e2e: iPXE and 503 + Retry-After: 1: requests {statuses:?}, seconds between them {gaps:.2?}");
    // (The SeaBIOS ROM prints to the screen, not the serial console: the requests tell.)
    assert_eq!(statuses, [503, 503, 200], "iPXE asked again after each 503 and stopped at the 200");
    assert!(gaps.iter().all(|g| *g >= 0.9), "it waited the Retry-After delay: {gaps:?}");
    drop(agent);
}
