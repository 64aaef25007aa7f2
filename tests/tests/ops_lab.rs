//! Operations in the lab: a node's boot timeline through the whole chain with real clients
//! (udhcpc as a PXE ROM, tftp-hpa, udhcpc as iPXE, curl), `/metrics` read by a Prometheus
//! parser, the CLI asking the running agent, and live reload (file change, SIGHUP, a broken
//! file) without losing a running transfer.

use netboot_lab::pattern;
use std::path::Path;
use std::process::Command;
use tests::kit::Setup;
use tests::{bin, require_root};

const TFTP_FILE_LEN: usize = 74 * 1024;

fn setup(tag: &str, mac: &str, ip: &str) -> Setup {
    let s = Setup::new(tag, |dir| config_text(dir, mac, ip, "undionly.kpxe"));
    for d in ["tftp", "http"] {
        std::fs::create_dir_all(s.dir.join(d)).unwrap();
    }
    std::fs::write(s.dir.join("tftp/undionly.kpxe"), pattern(TFTP_FILE_LEN, 1)).unwrap();
    std::fs::write(s.dir.join("tftp/big.bin"), pattern(12 << 20, 2)).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/boot.ipxe.j2"), s.dir.join("http/boot.ipxe.j2")).unwrap();
    std::fs::write(s.dir.join("http/vmlinuz"), pattern(300_000, 3)).unwrap();
    s
}

fn config_text(dir: &Path, mac: &str, ip: &str, bios: &str) -> String {
    format!(
        "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{state}\"\n\
         [dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.1.254\"]\n\
         [[dhcp.host]]\nmac = \"{mac}\"\nip = \"{ip}\"\nhostname = \"node-002\"\n\
         [boot]\nbios = \"{bios}\"\nipxe_script = \"http://{{server}}:8080/boot.ipxe\"\n\
         [tftp]\nroot = \"{tftp}\"\n\
         [http]\nlisten = \"0.0.0.0:8080\"\nroot = \"{http}\"\n",
        state = dir.join("state").display(),
        tftp = dir.join("tftp").display(),
        http = dir.join("http").display(),
    )
}

/// tftp-hpa (no options: 512-byte blocks, as old ROMs) in the client namespace; the bytes.
fn tftp_get(s: &Setup, file: &str) -> Vec<u8> {
    let out = s.dir.join(format!("got-{file}"));
    let st = s
        .lab
        .client
        .command("timeout")
        .args(["-s", "KILL", "60", "tftp", "-m", "octet", "10.77.0.1", "-c", "get", file])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "tftp get {file}");
    std::fs::read(&out).unwrap()
}

fn cli_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin("netboot-xdp")).args(args).output().unwrap();
    assert!(out.status.success(), "netboot-xdp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_node_timeline_has_every_stage_of_the_chain() {
    if !require_root("a_node_timeline_has_every_stage_of_the_chain") {
        return;
    }
    let _serial = tests::serial();
    let mac = "52:54:00:aa:00:02";
    let s = setup("ops", mac, "10.77.0.2");
    s.set_client_mac(mac);
    let agent = s.start();
    let base = "http://10.77.0.1:8080";

    // 1. The firmware: a BIOS PXE ROM (option 60 PXEClient, option 93 = 0).
    let pxe = s.udhcpc("pxe", &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    assert_eq!(pxe["ip"], "10.77.0.2");
    assert_eq!(pxe["boot_file"], "undionly.kpxe");
    // 2. TFTP of the iPXE binary, as old ROMs fetch it.
    assert_eq!(tftp_get(&s, "undionly.kpxe"), pattern(TFTP_FILE_LEN, 1));
    // 3. iPXE asks again (user class "iPXE") and gets the script URL.
    let ipxe = s.udhcpc("ipxe", &["-x", "0x4d:69505845"]);
    assert_eq!(ipxe["boot_file"], format!("{base}/boot.ipxe"));
    // 4. The script, then the kernel it names.
    let (code, script) = s.curl(&[&format!("{base}/boot.ipxe?mac={mac}")]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&script).contains("hostname=node-002"), "{}", String::from_utf8_lossy(&script));
    let (code, kernel) = s.curl(&[&format!("{base}/vmlinuz")]);
    assert_eq!((code, kernel.len()), (200, 300_000));

    // The timeline has every stage, in order, with what each stage did.
    let (code, body) = s.curl(&[&format!("{base}/api/v1/nodes/{mac}")]);
    assert_eq!(code, 200);
    let node: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let events = node["events"].as_array().unwrap();
    let stages: Vec<&str> = events.iter().map(|e| e["stage"].as_str().unwrap()).collect();
    let pos = |stage: &str, kind: Option<&str>| {
        events
            .iter()
            .position(|e| e["stage"] == stage && kind.is_none_or(|k| e["kind"] == k))
            .unwrap_or_else(|| panic!("no {stage} {kind:?} in {stages:?}: {node:#}"))
    };
    let (dhcp, tftp, ipxe_dhcp, script_at, file) =
        (pos("dhcp", Some("ack")), pos("tftp", None), pos("ipxe_dhcp", Some("ack")), pos("script", None), pos("file", None));
    assert!(dhcp < tftp && tftp < ipxe_dhcp && ipxe_dhcp < script_at && script_at < file, "{stages:?}");
    assert_eq!(events[dhcp]["class"], "pxe");
    assert_eq!(events[dhcp]["ip"], "10.77.0.2");
    let t = &events[tftp];
    assert_eq!((t["file"].as_str(), t["blksize"].as_u64(), t["bytes"].as_u64(), t["outcome"].as_str()), (Some("undionly.kpxe"), Some(512), Some(TFTP_FILE_LEN as u64), Some("complete")));
    assert_eq!(events[script_at]["known"], true);
    assert_eq!((events[file]["path"].as_str(), events[file]["status"].as_u64()), (Some("/vmlinuz"), Some(200)));
    assert_eq!(node["stage"], "file");
    let times: Vec<u64> = events.iter().map(|e| e["at_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Filters: by latest stage, and by idleness.
    let (_, body) = s.curl(&[&format!("{base}/api/v1/nodes?stage=file")]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 1);
    let (_, body) = s.curl(&[&format!("{base}/api/v1/nodes?stage=tftp")]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 0);
    let (_, body) = s.curl(&[&format!("{base}/api/v1/nodes?idle=3600")]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap().as_array().unwrap().len(), 0);
    assert_eq!(s.curl(&[&format!("{base}/api/v1/nodes/52:54:00:99:99:99")]).0, 404);

    // /metrics, read by a Prometheus text parser.
    let (code, body) = s.curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 200);
    let text = String::from_utf8(body).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(value("netboot_dhcp_replies_total", &[("class", "pxe"), ("kind", "ack")]) >= 1.0, "{text}");
    assert!(value("netboot_dhcp_replies_total", &[("class", "ipxe"), ("kind", "ack")]) >= 1.0, "{text}");
    assert_eq!(value("netboot_tftp_transfers_total", &[("outcome", "completed")]), 1.0);
    assert_eq!(value("netboot_tftp_bytes_total", &[]), TFTP_FILE_LEN as f64);
    assert!(value("netboot_xdp_decisions_total", &[("decision", "packets")]) >= 4.0);
    let histogram_count = |stage: &str| {
        scrape.samples.iter().find(|x| x.metric == "netboot_stage_seconds" && x.labels.get("stage") == Some(stage)).map(|x| match &x.value {
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => -1.0,
        })
    };
    assert_eq!(histogram_count("tftp_transfer"), Some(1.0), "{text}");
    assert!(histogram_count("http_request").unwrap() >= 2.0, "{text}");
    assert!(histogram_count("lease_commit").is_some());

    // The CLI asks the running agent.
    let leases = cli_json(&["leases", "--json"]);
    assert!(leases.as_array().unwrap().iter().any(|l| l["mac"] == mac && l["ip"] == "10.77.0.2"), "{leases:#}");
    let status = cli_json(&["status", &s.lab.server_if, "--json"]);
    assert_eq!(status["agent_running"], true);
    assert_eq!(status["nodes"], 1);
    assert_eq!(status["agent"]["tftp_transfers_completed"], 1);
    drop(agent);
}

#[test]
fn reload_applies_good_configs_keeps_transfers_and_rejects_broken_ones() {
    if !require_root("reload_applies_good_configs_keeps_transfers_and_rejects_broken_ones") {
        return;
    }
    let _serial = tests::serial();
    let mac = "52:54:00:aa:00:03";
    let s = setup("reload", mac, "10.77.0.21");
    s.set_client_mac(mac);
    let agent = s.start();
    let counter = |name: &str| agent.status().unwrap()["agent"][name].as_u64().unwrap_or(0);
    assert_eq!(s.udhcpc("before", &[])["ip"], "10.77.0.21");

    // A 12 MiB transfer at blksize 512 (24576 blocks) runs while the config changes.
    let big = s.dir.join("got-big");
    let mut transfer = s
        .lab
        .client
        .command("timeout")
        .args(["-s", "KILL", "120", "tftp", "-m", "octet", "10.77.0.1", "-c", "get", "big.bin"])
        .arg(&big)
        .spawn()
        .unwrap();
    // The client is paused once its transfer has started, so that the reload happens while it
    // runs whatever the speed of this machine (the server keeps retransmitting meanwhile).
    assert!(tests::eventually(10, || counter("tftp_transfers_started") == 1), "the transfer did not start");
    let tftp_pid = transfer.id() as i32;
    let tftp_child = || std::fs::read_to_string(format!("/proc/{tftp_pid}/task/{tftp_pid}/children")).unwrap_or_default();
    // `timeout` runs tftp as its child: pause both.
    let pause = |sig: i32| {
        for pid in std::iter::once(tftp_pid).chain(tftp_child().split_whitespace().filter_map(|p| p.parse().ok())) {
            unsafe { libc_kill(pid, sig) };
        }
    };
    pause(19); // SIGSTOP

    // A good config (new reservation address, new BIOS file, new TFTP root) takes effect,
    // for the agent and for the kernel's reply cache.
    std::fs::create_dir_all(s.dir.join("tftp2")).unwrap();
    std::fs::write(s.dir.join("tftp2/other.kpxe"), b"second root").unwrap();
    let good = config_text(&s.dir, mac, "10.77.0.22", "other.kpxe").replace("/tftp\"", "/tftp2\"");
    std::fs::write(&s.config, &good).unwrap();
    assert!(tests::eventually(10, || counter("config_reloads") == 1), "no reload: {}", agent.log_text());
    assert_eq!(counter("tftp_transfers_completed") + counter("tftp_transfers_failed"), 0, "the transfer ended before the reload");
    pause(18); // SIGCONT
    let pxe = s.udhcpc("after", &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"]);
    assert_eq!((pxe["ip"].as_str(), pxe["boot_file"].as_str()), ("10.77.0.22", "other.kpxe"));
    assert_eq!(tftp_get(&s, "other.kpxe"), b"second root");

    // A broken config changes nothing; the error names file, line and column.
    std::fs::write(&s.config, good.replace("[tftp]", "[tftp\n")).unwrap();
    assert!(tests::eventually(10, || counter("config_reload_errors") == 1), "broken config not counted: {}", agent.log_text());
    let log = agent.log_text();
    let shown = format!("{}:", s.config.display());
    assert!(log.lines().any(|l| l.contains("rejected") && l.contains(&shown)), "{log}");
    assert_eq!(s.udhcpc("broken", &[])["ip"], "10.77.0.22");

    // SIGHUP reloads even when no file changed (here: the broken one, rejected again).
    let pid = agent.status().unwrap()["agent_pid"].as_u64().unwrap() as i32;
    unsafe { libc_kill(pid, 1) };
    assert!(tests::eventually(10, || counter("config_reload_errors") == 2), "SIGHUP: {}", agent.log_text());
    std::fs::write(&s.config, &good).unwrap();
    assert!(tests::eventually(10, || counter("config_reloads") == 2));

    // The transfer that was running through all of this completes, byte-exact.
    let st = transfer.wait().unwrap();
    assert!(st.success(), "the running transfer failed");
    assert!(std::fs::read(&big).unwrap() == pattern(12 << 20, 2), "the running transfer is not byte-exact");
    assert_eq!(counter("tftp_transfers_failed"), 0);
    drop(agent);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// rdisc6 (a real router-solicitation client) gets our advertisement: router lifetime 0, no
/// prefix, no DHCPv6 flags; with `ipv6_ra = false` (applied by reload) it gets none.
#[test]
fn ipv6_router_advertisements_are_on_by_default_and_switchable() {
    if !require_root("ipv6_router_advertisements_are_on_by_default_and_switchable") {
        return;
    }
    let _serial = tests::serial();
    let mac = "52:54:00:aa:00:04";
    let s = setup("ra", mac, "10.77.0.2");
    let agent = s.start();
    let rdisc6 = || {
        let out = s.lab.client.command("timeout").args(["-s", "KILL", "15", "rdisc6", "-1", "-r", "3", "-w", "1000", &s.lab.client_if]).output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (ok, text) = rdisc6();
    assert!(ok, "no advertisement: {text}\n{}", agent.log_text());
    let field = |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("no {name}: {text}")).to_string();
    assert!(field("Router lifetime").contains(": 0 ") || field("Router lifetime").contains(":            0 "), "{text}");
    assert!(field("Stateful address conf.").ends_with("No"), "{text}");
    assert!(field("Stateful other conf.").ends_with("No"), "{text}");
    assert!(!text.contains("Prefix"), "no prefix information: {text}");
    assert!(text.to_lowercase().contains("source link-layer address"), "{text}");
    assert!(agent.status().unwrap()["agent"]["ra_sent"].as_u64().unwrap_or(0) >= 1);

    let text = std::fs::read_to_string(&s.config).unwrap().replace("[dhcp]\n", "[dhcp]\nipv6_ra = false\n");
    std::fs::write(&s.config, text).unwrap();
    assert!(tests::eventually(10, || agent.status().unwrap()["agent"]["config_reloads"] == 1));
    let (ok, text) = rdisc6();
    assert!(!ok, "an advertisement with ipv6_ra = false: {text}");
    assert!(agent.status().unwrap()["agent"]["ra_solicitations_ignored"].as_u64().unwrap_or(0) >= 1);
    drop(agent);
}
