//! TFTP in the lab with real clients: tftp-hpa, atftp and curl fetch files byte-exact; writes
//! and paths leaving the root are refused; block numbers roll over; transfers finish through
//! 5 % packet loss.

use netboot_lab::Agent;
use std::path::{Path, PathBuf};
use std::process::Output;
use tests::{kit, require_root};

/// A lab with an agent serving `root` with one engine (the agent stops before the lab goes).
struct Setup {
    agent: Agent,
    root: PathBuf,
    engine: &'static str,
    kit: kit::Setup,
}

impl std::ops::Deref for Setup {
    type Target = kit::Setup;
    fn deref(&self) -> &kit::Setup {
        &self.kit
    }
}

impl Setup {
    /// The engine under test served: with `afxdp`, frames went to the AF_XDP socket (none fell
    /// back to the kernel); with `socket`, none were redirected.
    fn served_by_engine(&self) {
        let c = self.agent.counters().unwrap();
        if self.engine == "afxdp" {
            assert!(c["xdp_redirect"] > 0 && c["tftp_no_socket"] == 0, "the AF_XDP engine did not serve: {c:?}\n{}", self.agent.log_text());
        } else {
            assert_eq!(c["xdp_redirect"], 0, "{c:?}");
        }
    }
}

/// Each test runs once per engine.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn socket() {
                super::$name("socket")
            }
            #[test]
            fn afxdp() {
                super::$name("afxdp")
            }
        }
    )*};
}

on_both_engines!(
    real_clients_fetch_files_byte_exact,
    writes_and_paths_outside_the_root_are_refused,
    a_40_mib_file_crosses_the_block_number_rollover,
    a_hundred_transfers_complete_through_5_percent_loss,
    a_thousand_concurrent_transfers_complete,
    transfers_beyond_the_limits_are_refused_and_counted,
    ipv6_clients_fetch_files_byte_exact,
);

use netboot_lab::pattern;

/// The lab's clients all fetch from one address: the per-client transfer limit is off unless
/// `limits` sets it.
fn setup(engine: &'static str, files: &[(&str, Vec<u8>)]) -> Setup {
    setup_with(engine, files, "max_transfers_per_client = 0\n")
}

/// The lab's config: TFTP from `<dir>/root` with `engine`, then `extra` keys of `[tftp]`.
fn tftp_config(engine: &str, extra: &str) -> impl FnOnce(&Path) -> String {
    move |dir| {
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n[tftp]\nroot = \"{}\"\nengine = \"{engine}\"\n{extra}",
            dir.join("state").display(),
            dir.join("root").display()
        )
    }
}

fn setup_with(engine: &'static str, files: &[(&str, Vec<u8>)], limits: &str) -> Setup {
    let kit = kit::Setup::new("tftp", tftp_config(engine, &format!("max_blksize = 1468\nmax_windowsize = 32\n{limits}")));
    let root = kit.dir.join("root");
    std::fs::create_dir_all(root.join("efi")).unwrap();
    for (name, data) in files {
        std::fs::write(root.join(name), data).unwrap();
    }
    std::fs::write(kit.dir.join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(kit.dir.join("secret"), root.join("escape")).unwrap();
    let agent = kit.start();
    Setup { agent, root, engine, kit }
}

fn client(s: &Setup, secs: u32, program: &str, args: &[&str]) -> Output {
    let mut c = s.lab.client.command("timeout");
    c.args(["-s", "KILL", &secs.to_string(), program]).args(args).current_dir(&s.dir);
    c.output().unwrap()
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).ok() == std::fs::read(b).ok()
}

fn real_clients_fetch_files_byte_exact(engine: &'static str) {
    if !require_root("real_clients_fetch_files_byte_exact") {
        return;
    }
    let _serial = tests::serial();
    let undionly = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap_or_else(|_| pattern(74_213, 1));
    let s = setup(engine, &[("undionly.kpxe", undionly), ("efi/ipxe.efi", pattern(870_000, 2)), ("empty", Vec::new()), ("x1024", vec![7; 1024])]);
    let out = |n: &str| s.dir.join(n);
    let o = |n: &str| out(n).display().to_string();

    // tftp-hpa: no options (512-byte blocks), binary mode.
    let r = client(&s, 20, "tftp", &["-m", "binary", "10.77.0.1", "-c", "get", "undionly.kpxe", &o("hpa.kpxe")]);
    assert!(same(&out("hpa.kpxe"), &s.root.join("undionly.kpxe")), "tftp-hpa: {r:?}");
    // atftp with blksize 1468 and windowsize 8 (RFC 7440).
    let r = client(&s, 30, "atftp", &["--option", "blksize 1468", "--option", "windowsize 8", "-g", "-r", "efi/ipxe.efi", "-l", &o("atftp.efi"), "10.77.0.1"]);
    assert!(same(&out("atftp.efi"), &s.root.join("efi/ipxe.efi")), "atftp: {r:?}");
    // curl with blksize 1432 (what iPXE asks) and tsize.
    let r = client(&s, 20, "curl", &["-sS", "--tftp-blksize", "1432", "-o", &o("curl.kpxe"), "tftp://10.77.0.1/undionly.kpxe"]);
    assert!(same(&out("curl.kpxe"), &s.root.join("undionly.kpxe")), "curl: {r:?}");
    // Edge sizes: empty, and an exact multiple of the block size.
    for f in ["empty", "x1024"] {
        let r = client(&s, 10, "tftp", &["-m", "binary", "10.77.0.1", "-c", "get", f, &o(&format!("{f}.out"))]);
        assert!(same(&out(&format!("{f}.out")), &s.root.join(f)), "{f}: {r:?}");
    }
    let st = s.agent.status().unwrap();
    assert!(tests::eventually(3, || s.agent.status().unwrap()["agent"]["tftp_transfers_completed"].as_u64().unwrap_or(0) >= 5), "{st}");
    s.served_by_engine();
}

/// TFTP over IPv6 (issue 16), on both engines: the AF_XDP engine gets IPv6 frames to our
/// address too. tftp-hpa without options, curl with blksize 1432 (what iPXE asks): DATA is
/// sized for the 20 bytes more of an IPv6 header.
fn ipv6_clients_fetch_files_byte_exact(engine: &'static str) {
    if !require_root("ipv6_clients_fetch_files_byte_exact") {
        return;
    }
    let _serial = tests::serial();
    let dhcp6 = "[dhcp6]\nenabled = true\nprefix = \"fd00:77::/64\"\npools = [\"fd00:77::1000-fd00:77::1fff\"]\n";
    let kit = kit::Setup::new("tftp6", move |dir: &Path| {
        let c = tftp_config(engine, "max_blksize = 1468\nmax_transfers_per_client = 0\n")(dir);
        c.replace("[tftp]", &format!("{dhcp6}[tftp]"))
    });
    let root = kit.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("ipxe.efi"), pattern(870_000, 3)).unwrap();
    for (ns, iface, addr) in [(&kit.lab.server, &kit.lab.server_if, "fd00:77::1/64"), (&kit.lab.client, &kit.lab.client_if, "fd00:77::2/64")] {
        assert!(ns.command("ip").args(["-6", "addr", "add", addr, "dev", iface, "nodad"]).status().unwrap().success());
    }
    let agent = kit.start();
    let s = Setup { agent, root, engine, kit };
    let out = |n: &str| s.dir.join(n);
    let o = |n: &str| out(n).display().to_string();
    let r = client(&s, 30, "tftp", &["-6", "-m", "binary", "fd00:77::1", "-c", "get", "ipxe.efi", &o("hpa.efi")]);
    assert!(same(&out("hpa.efi"), &s.root.join("ipxe.efi")), "tftp-hpa over IPv6: {r:?}\n{}", s.agent.log_text());
    let r = client(&s, 30, "curl", &["-sS", "--tftp-blksize", "1432", "-o", &o("curl.efi"), "tftp://[fd00:77::1]/ipxe.efi"]);
    assert!(same(&out("curl.efi"), &s.root.join("ipxe.efi")), "curl over IPv6: {r:?}\n{}", s.agent.log_text());
    assert!(tests::eventually(3, || s.agent.status().unwrap()["agent"]["tftp_transfers_completed"].as_u64().unwrap_or(0) >= 2), "{}", s.agent.status().unwrap());
    s.served_by_engine();
}

fn writes_and_paths_outside_the_root_are_refused(engine: &'static str) {
    if !require_root("writes_and_paths_outside_the_root_are_refused") {
        return;
    }
    let _serial = tests::serial();
    let s = setup(engine, &[("a", b"a".to_vec())]);
    std::fs::write(s.dir.join("upload"), b"data").unwrap();
    let text = |r: &Output| format!("{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    let r = client(&s, 10, "tftp", &["-m", "binary", "10.77.0.1", "-c", "put", "upload", "upload"]);
    assert!(text(&r).contains("Error code 2"), "write: {}", text(&r));
    assert!(!s.root.join("upload").exists());
    // tftp-hpa sends the name as given (curl would normalize `..` away first).
    // A leading `/` is the root (GRUB asks for `/grub/grub.cfg`), never the server's `/`.
    for path in ["../secret", "efi/../../secret", "/../secret", "escape"] {
        let dest = s.dir.join("got");
        let _ = std::fs::remove_file(&dest);
        let r = client(&s, 10, "tftp", &["-m", "binary", "10.77.0.1", "-c", "get", path, &dest.display().to_string()]);
        assert_ne!(std::fs::read(&dest).ok().as_deref(), Some(&b"outside the root"[..]), "{path} leaked");
        assert!(text(&r).contains("Error code 2"), "{path}: {}", text(&r));
    }
    for missing in ["missing", "/etc/passwd"] {
        let r = client(&s, 10, "tftp", &["-m", "binary", "10.77.0.1", "-c", "get", missing, "/dev/null"]);
        assert!(text(&r).contains("Error code 1"), "{missing}: {}", text(&r));
    }
    let dest = s.dir.join("got-a");
    let r = client(&s, 10, "tftp", &["-m", "binary", "10.77.0.1", "-c", "get", "/a", &dest.display().to_string()]);
    assert_eq!(std::fs::read(&dest).ok().as_deref(), Some(&b"a"[..]), "/a is the root's a: {}", text(&r));
    let a = s.agent.status().unwrap();
    assert!(tests::eventually(3, || {
        let a = s.agent.status().unwrap();
        a["agent"]["tftp_refused_write"].as_u64() == Some(1) && a["agent"]["tftp_refused_path"].as_u64() == Some(4)
    }), "{a}");
    s.served_by_engine();
}

fn a_40_mib_file_crosses_the_block_number_rollover(engine: &'static str) {
    if !require_root("a_40_mib_file_crosses_the_block_number_rollover") {
        return;
    }
    let _serial = tests::serial();
    // 40 MiB at 512-byte blocks is 81,921 blocks: the numbers wrap past 65535.
    let s = setup(engine, &[("big.img", pattern(40 << 20, 3))]);
    let dest = s.dir.join("big.out");
    let r = client(&s, 120, "atftp", &["--option", "windowsize 16", "-g", "-r", "big.img", "-l", &dest.display().to_string(), "10.77.0.1"]);
    assert!(same(&dest, &s.root.join("big.img")), "{r:?}");
    s.served_by_engine();
}

fn a_hundred_transfers_complete_through_5_percent_loss(engine: &'static str) {
    if !require_root("a_hundred_transfers_complete_through_5_percent_loss") {
        return;
    }
    let _serial = tests::serial();
    let s = setup(engine, &[("undionly.kpxe", pattern(74_213, 4))]);
    // 5 % of the frames from the server are dropped on arrival at the client end.
    s.lab.set_loss(5.0).unwrap();
    let t0 = std::time::Instant::now();
    let children: Vec<_> = (0..100)
        .map(|i| {
            let dest = s.dir.join(format!("out{i}"));
            let mut c = s.lab.client.command("timeout");
            c.args(["-s", "KILL", "120", "curl", "-sS", "--tftp-blksize", "1432", "-o", &dest.display().to_string(), "tftp://10.77.0.1/undionly.kpxe"]);
            (dest, c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap())
        })
        .collect();
    let mut failed = Vec::new();
    for (dest, child) in children {
        let out = child.wait_with_output().unwrap();
        if !same(&dest, &s.root.join("undionly.kpxe")) {
            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert!(failed.is_empty(), "{} of 100 failed: {:?}", failed.len(), failed.first());
    eprintln!("100 transfers through 5% loss in {:.1} s", t0.elapsed().as_secs_f64());
    let retx = s.agent.status().unwrap()["agent"]["tftp_retransmits"].as_u64().unwrap_or(0);
    assert!(tests::eventually(3, || s.agent.status().unwrap()["agent"]["tftp_retransmits"].as_u64().unwrap_or(0) > 0), "no retransmissions under loss? {retx}");
    s.served_by_engine();
}

/// A thousand machines fetch undionly.kpxe at once (one efficient client process).
fn a_thousand_concurrent_transfers_complete(engine: &'static str) {
    if !require_root("a_thousand_concurrent_transfers_complete") {
        return;
    }
    let _serial = tests::serial();
    let file = pattern(74_213, 5);
    let s = setup(engine, &[("undionly.kpxe", file.clone())]);
    let req = netboot::tftp::client::Request { file: "undionly.kpxe".into(), blksize: Some(1432), windowsize: None, tsize: true };
    let t0 = std::time::Instant::now();
    let got = netboot_lab::tftp_fetch::fetch_many(&s.lab, "10.77.0.1:69".parse().unwrap(), &req, 1000, std::time::Duration::from_secs(10)).unwrap();
    let wall = t0.elapsed();
    let bad: Vec<_> = got.iter().filter(|f| f.data != file).map(|f| f.error.clone()).collect();
    assert!(bad.is_empty(), "{} of 1000 failed, e.g. {:?}", bad.len(), bad.first());
    eprintln!("1000 concurrent transfers of 74 KiB in {:.2} s", wall.as_secs_f64());
    s.served_by_engine();
}

/// `max_transfers` and `max_transfers_per_client`: requests beyond them get an ERROR and are
/// counted; a place freed is taken again. Transfers are held open by clients that acknowledge
/// the option acknowledgement and then nothing (the server keeps them for its retries, seconds).
fn transfers_beyond_the_limits_are_refused_and_counted(engine: &'static str) {
    use netboot::tftp::packet::Packet;
    use std::net::UdpSocket;
    use std::time::Duration;
    if !require_root("transfers_beyond_the_limits_are_refused_and_counted") {
        return;
    }
    let _serial = tests::serial();
    let s = setup_with(engine, &[("undionly.kpxe", pattern(74_213, 6))], "max_transfers = 2\nmax_transfers_per_client = 1\n");
    // A second client address on the lab's client end.
    netboot_lab::run_checked(s.lab.client.command("ip").args(["addr", "add", "10.77.0.3/16", "dev", &s.lab.client_if])).unwrap();
    let rrq = Packet::Request { write: false, file: "undionly.kpxe".into(), mode: "octet".into(), options: vec![("blksize".into(), "1432".into())] }.to_vec();
    // Sends the request from `from`; returns the socket and the server's first answer.
    let ask = |from: &'static str| -> (UdpSocket, Vec<u8>) {
        let rrq = rrq.clone();
        s.lab
            .client
            .run(move || {
                let sock = UdpSocket::bind((from, 0)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                sock.send_to(&rrq, "10.77.0.1:69").unwrap();
                let mut buf = [0u8; 2048];
                let (n, server) = sock.recv_from(&mut buf).expect("an answer to the request");
                sock.connect(server).unwrap();
                (sock, buf[..n].to_vec())
            })
            .unwrap()
    };
    // Holds a transfer: ACK 0 for the OACK, and no ACK after that.
    let hold = |(sock, first): (UdpSocket, Vec<u8>)| {
        assert!(matches!(Packet::parse(&first), Ok(Packet::OptionAck { .. })), "{:?}", Packet::parse(&first));
        sock.send(&Packet::Ack { block: 0 }.to_vec()).unwrap();
        sock
    };
    let refused = |(_, first): (UdpSocket, Vec<u8>)| match Packet::parse(&first) {
        Ok(Packet::Error { message, .. }) => message,
        other => panic!("expected an ERROR, got {other:?}"),
    };
    let stat = |k: &str| s.agent.status().unwrap()["agent"][k].as_u64().unwrap_or(0);
    netboot_lab::run_checked(s.lab.client.command("ip").args(["addr", "add", "10.77.0.4/16", "dev", &s.lab.client_if])).unwrap();
    let a = hold(ask("10.77.0.2"));
    assert!(refused(ask("10.77.0.2")).contains("too many transfers from this client"));
    let _b = hold(ask("10.77.0.3"));
    // Both places taken: a third address is refused as busy.
    assert!(refused(ask("10.77.0.4")).contains("busy"));
    assert_eq!((stat("tftp_refused_client_limit"), stat("tftp_refused_busy")), (1, 1));
    let metrics = String::from_utf8(netboot::control::control_get(&s.lab.server_if, "/metrics").unwrap()).unwrap();
    for reason in ["busy", "client_limit"] {
        let line = format!("netboot_tftp_refused_total{{iface=\"{}\",reason=\"{reason}\"}} 1", s.lab.server_if);
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in /metrics");
    }
    // The first client's place comes back when its transfer ends (an ERROR from the client).
    a.send(&Packet::error(netboot::tftp::packet::ErrorCode::NotDefined, "stop")).unwrap();
    assert!(tests::eventually(3, || stat("tftp_transfers_failed") >= 1), "the ended transfer is not counted");
    let _c = hold(ask("10.77.0.4"));
}

/// Issue 13: with a jumbo MTU and a large blksize, DATA frames did not fit the AF_XDP engine's
/// 2 KiB UMEM frames and were silently dropped (the transfer timed out). The engine now caps
/// blksize at what fits. MTU 3500: the most native XDP on a veth takes.
#[test]
fn a_large_blksize_on_a_jumbo_link_fits_the_afxdp_frames() {
    if !require_root("a_large_blksize_on_a_jumbo_link_fits_the_afxdp_frames") {
        return;
    }
    let _serial = tests::serial();
    let kit = kit::Setup::new("tftp-jumbo", tftp_config("afxdp", "max_blksize = 8192\n"));
    let root = kit.dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("big"), pattern(200_000, 7)).unwrap();
    let mtu = |ns: &netboot_lab::NetNs, dev: &str| {
        netboot_lab::run_checked(ns.command("ip").args(["link", "set", "dev", dev, "mtu", "3500"])).unwrap();
    };
    mtu(&kit.lab.server, &kit.lab.server_if);
    mtu(&kit.lab.client, &kit.lab.link_if);
    mtu(&kit.lab.client, &kit.lab.client_if);
    let agent = kit.start();
    let dest = kit.dir.join("big.out");
    let mut c = kit.lab.client.command("timeout");
    c.args(["-s", "KILL", "10", "curl", "-sS", "--tftp-blksize", "3000", "-o", &dest.display().to_string(), "tftp://10.77.0.1/big"]);
    let out = c.output().unwrap();
    assert!(same(&dest, &root.join("big")), "{}\n{:#}", String::from_utf8_lossy(&out.stderr), agent.status().unwrap());
    let c = agent.counters().unwrap();
    assert!(c["xdp_redirect"] > 0, "the AF_XDP engine did not serve: {c:?}");
    assert_eq!(agent.status().unwrap()["agent"]["tftp_xsk_tx_dropped"].as_u64().unwrap_or(0), 0);
}
