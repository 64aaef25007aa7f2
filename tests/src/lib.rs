//! Shared helpers of the integration tests: privilege checks, the built binaries, fixtures.

use std::path::{Path, PathBuf};

/// Whether the test can do what needs root (BPF, namespaces). Without root it skips, except
/// under `CI=true`, where it fails loudly: CI runs as root, so a skip there hides a defect.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc_geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (BPF, network namespaces) and CI=true: refusing to skip");
    }
    eprintln!("{test}: SKIPPED: needs root (BPF, network namespaces)");
    false
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A binary built by `cargo xtask build` (target/release), or from `NETBOOT_BIN_DIR`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("NETBOOT_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo xtask build` (or `cargo xtask test`)", p.display());
    p
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The frames of `tests/fixtures/<name>.pcap`, in capture order.
pub fn fixture_frames(name: &str) -> Vec<Vec<u8>> {
    let path = fixture_dir().join(format!("{name}.pcap"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap header");
    let mut frames = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        frames.push(pkt.expect("pcap record").data.into_owned());
    }
    frames
}

/// Runs `netboot-bench ARGS --json FILE` (it must succeed) and returns the JSON it wrote;
/// its output is printed (the figures of a test run).
pub fn bench_json(args: &[&str], name: &str) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("nbx-bench-{name}-{}.json", std::process::id()));
    let out = std::process::Command::new(bin("netboot-bench")).args(args).arg("--json").arg(&json).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "netboot-bench {args:?} failed:\n{text}");
    eprintln!("{text}");
    let v = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    v
}

/// A deterministic xorshift generator for mutation tests (reproducible failures).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Offsets in an untagged Ethernet/IPv4(no options)/UDP/BOOTP frame, for editing fixtures.
pub mod off {
    pub const ETHERTYPE: usize = 12;
    pub const IP: usize = 14;
    pub const UDP: usize = 34;
    pub const BOOTP: usize = 42;
    pub const OPTIONS: usize = BOOTP + 240;
}

/// Finds option `code` in the options of an untagged frame: (offset of the code byte, length).
pub fn find_option(frame: &[u8], code: u8) -> Option<(usize, usize)> {
    let mut i = off::OPTIONS;
    while i < frame.len() {
        match frame[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let len = *frame.get(i + 1)? as usize;
                if c == code {
                    return Some((i, len));
                }
                i += 2 + len;
            }
        }
    }
    None
}

pub mod fuzz;
pub mod openapi;

/// A DHCP test client in a lab's client namespace: sends a captured request (with the
/// broadcast flag set, so replies reach a plain UDP socket) and collects the replies.
pub mod probe {
    use netboot_lab::Lab;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    pub struct Probe {
        sock: UdpSocket,
    }

    /// DISCOVER and REQUEST from any MAC through a [`Probe`], built from a captured udhcpc
    /// DISCOVER (without its client id, so that chaddr is the client).
    pub struct Dora {
        pub probe: Probe,
        base: Vec<u8>,
    }

    impl Dora {
        pub fn open(lab: &Lab) -> Dora {
            let base = netboot::frame::parse_udp(&crate::fixture_frames("udhcpc")[0]).unwrap().payload.to_vec();
            Dora { probe: Probe::open(lab), base }
        }

        pub fn discover(&self, mac: [u8; 6]) -> Vec<u8> {
            use dhcproto::{Decodable, Decoder, Encodable};
            let mut m = dhcproto::v4::Message::decode(&mut Decoder::new(&self.base)).unwrap();
            m.set_chaddr(&mac);
            m.opts_mut().remove(dhcproto::v4::OptionCode::ClientIdentifier);
            m.to_vec().unwrap()
        }

        /// The DISCOVER of a BIOS PXE ROM from `mac` (option 60 `PXEClient:...`, option 93 = 0):
        /// a presentation the reply cache holds for every reserved client.
        pub fn discover_pxe(&self, mac: [u8; 6]) -> Vec<u8> {
            use dhcproto::v4::{Architecture, DhcpOption, Message};
            use dhcproto::{Decodable, Decoder, Encodable};
            let mut m = Message::decode(&mut Decoder::new(&self.discover(mac))).unwrap();
            m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture::X86_Bios));
            m.to_vec().unwrap()
        }

        /// The addresses offered to `mac` within 1.5 s.
        pub fn offers(&self, mac: [u8; 6]) -> Vec<Ipv4Addr> {
            self.offers_to(&self.discover(mac))
        }

        /// The addresses offered to `discover` within 1.5 s.
        pub fn offers_to(&self, discover: &[u8]) -> Vec<Ipv4Addr> {
            use dhcproto::{Decodable, Decoder};
            let replies = self.probe.exchange(discover, Duration::from_millis(1500));
            replies.iter().filter_map(|r| dhcproto::v4::Message::decode(&mut Decoder::new(r)).ok()).map(|m| m.yiaddr()).collect()
        }

        /// DISCOVER, then REQUEST of the address offered by `server`: the address ACKed.
        pub fn bind(&self, mac: [u8; 6], server: Ipv4Addr) -> Option<Ipv4Addr> {
            use dhcproto::v4::{DhcpOption, Message, MessageType};
            use dhcproto::{Decodable, Decoder, Encodable};
            let offered = *self.offers(mac).first()?;
            let mut request = Message::decode(&mut Decoder::new(&self.discover(mac))).unwrap();
            request.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
            request.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
            request.opts_mut().insert(DhcpOption::ServerIdentifier(server));
            let acks = self.probe.exchange(&request.to_vec().unwrap(), Duration::from_millis(1500));
            acks.iter()
                .filter_map(|r| Message::decode(&mut Decoder::new(r)).ok())
                .find(|m| netboot::dhcp::classify::message_type(m) == Some(MessageType::Ack))
                .map(|m| m.yiaddr())
        }
    }

    impl Probe {
        /// A socket on port 68 of the lab's client interface.
        pub fn open(lab: &Lab) -> Probe {
            let dev = lab.client_if.clone();
            let sock = lab
                .client
                .run(move || -> std::io::Result<UdpSocket> {
                    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
                    s.set_reuse_address(true)?;
                    s.set_broadcast(true)?;
                    s.bind_device(Some(dev.as_bytes()))?;
                    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
                    Ok(s.into())
                })
                .unwrap()
                .expect("probe socket");
            Probe { sock }
        }

        /// Broadcasts `payload` to port 67 with the BOOTP broadcast flag set, then collects
        /// replies whose xid matches for `wait`.
        pub fn exchange(&self, payload: &[u8], wait: Duration) -> Vec<Vec<u8>> {
            self.exchange_all(&[payload], wait)
        }

        /// [`Probe::exchange`] for several requests sent back to back: the replies to any.
        pub fn exchange_all(&self, payloads: &[&[u8]], wait: Duration) -> Vec<Vec<u8>> {
            let mut xids = Vec::new();
            for payload in payloads {
                let mut p = payload.to_vec();
                if p.len() > 11 {
                    p[10] |= 0x80;
                }
                self.sock.send_to(&p, (Ipv4Addr::BROADCAST, 67)).expect("send");
                xids.extend(p.get(4..8).map(|x| x.to_vec()));
            }
            let deadline = Instant::now() + wait;
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                self.sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
                match self.sock.recv_from(&mut buf) {
                    Ok((n, _)) if n > 8 && xids.iter().any(|x| buf[4..8] == x[..]) => out.push(buf[..n].to_vec()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            out
        }
    }
}

/// Serializes the lab tests of one test binary: they measure timing-sensitive exchanges
/// (perfdhcp counts a reply later than 1 s as a drop) and must not share the two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every 50 ms for at most `secs` seconds; true if it held. For values the agent
/// reaches asynchronously (counters after a client exchange, a reload).
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A lab with its own temporary directory and config file: what every lab test starts from.
pub mod kit {
    use netboot::iface::Interface;
    use netboot_lab::{Agent, Lab, LabSpec, ScratchDir};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub struct Setup {
        pub lab: Lab,
        /// `$TMPDIR/netboot-<tag>-<lab id>`: config, state, files, client scripts (removed
        /// when dropped).
        pub dir: ScratchDir,
        pub config: PathBuf,
    }

    impl Setup {
        /// The lab 10.77.0.1/16 (server) – 10.77.0.2/16 (client), and `config(dir)` written to
        /// `dir/netboot.toml`.
        pub fn new(tag: &str, config: impl FnOnce(&Path) -> String) -> Setup {
            let spec = LabSpec { server: "10.77.0.1/16".parse().unwrap(), client: Some("10.77.0.2/16".parse().unwrap()) };
            let lab = Lab::create(&spec).expect("lab");
            let dir = lab.scratch_dir(tag).expect("lab directory");
            let path = dir.join("netboot.toml");
            std::fs::write(&path, config(&dir)).unwrap();
            Setup { lab, dir, config: path }
        }

        /// `netboot-xdp attach` on the lab's server interface with this config.
        pub fn start(&self) -> Agent {
            Agent::start(&self.lab, &crate::bin("netboot-xdp"), &self.config, &[]).expect("agent")
        }

        /// The MAC of the client interface (what udhcpc and dhclient send).
        pub fn client_mac(&self) -> String {
            let dev = self.lab.client_if.clone();
            self.lab.client.run(move || Interface::lookup(&dev).unwrap().mac.to_string()).unwrap()
        }

        /// Sets the client interface's MAC (the client's end of the lab is ours).
        pub fn set_client_mac(&self, mac: &str) {
            let st = self.lab.client.command("ip").args(["link", "set", "dev", &self.lab.client_if, "address", mac]).status().unwrap();
            assert!(st.success());
        }

        /// udhcpc in the client namespace with extra options (`-V`, `-x`); the `bound` event's
        /// environment (recorded under `name`).
        pub fn udhcpc(&self, name: &str, extra: &[&str]) -> BTreeMap<String, String> {
            let (script, env) = self.recorder(name);
            let out = self
                .lab
                .client
                .command("timeout")
                .args(["-s", "KILL", "8", "udhcpc", "-i", &self.lab.client_if, "-n", "-q", "-f", "-t", "4", "-T", "1", "-A", "1", "-s", &script])
                .args(extra)
                .output()
                .unwrap();
            assert!(out.status.success(), "udhcpc: {}", String::from_utf8_lossy(&out.stderr));
            event(&env, "event", "bound")
        }

        /// curl in the client namespace with `args` (a URL last); the status and body.
        pub fn curl(&self, args: &[&str]) -> (u16, Vec<u8>) {
            let body = self.dir.join("curl.out");
            let _ = std::fs::remove_file(&body);
            let out = self
                .lab
                .client
                .command("curl")
                .args(["-s", "--max-time", "10", "-o"])
                .arg(&body)
                .args(["-w", "%{http_code}"])
                .args(args)
                .output()
                .unwrap();
            (String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0), std::fs::read(&body).unwrap_or_default())
        }

        /// A client script that appends its environment to `<dir>/<name>.env` (one run per file).
        pub fn recorder(&self, name: &str) -> (String, PathBuf) {
            let env = self.dir.join(format!("{name}.env"));
            let script = self.dir.join(format!("{name}.sh"));
            std::fs::write(&script, format!("#!/bin/sh\n{{ echo \"event=$1\"; env; echo ====; }} >> {}\n", env.display())).unwrap();
            Command::new("chmod").arg("+x").arg(&script).status().unwrap();
            (script.display().to_string(), env)
        }
    }

    /// The environment of the first recorded event where `key=value`.
    pub fn event(env_file: &Path, key: &str, value: &str) -> BTreeMap<String, String> {
        let text = std::fs::read_to_string(env_file).unwrap_or_default();
        for block in text.split("====\n") {
            let vars: BTreeMap<String, String> =
                block.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
            if vars.get(key).is_some_and(|v| v == value) {
                return vars;
            }
        }
        panic!("no event {key}={value} in {}:\n{text}", env_file.display())
    }
}
