//! A corpus-driven mutational fuzzer for everything that takes bytes from the network: the
//! DHCP core, the frame parser, the TFTP packet parser, sessions and transfers, and the HTTP
//! service (requests as raw bytes through hyper into the agent's router).
//!
//! Each target starts from its seeds in `tests/fuzz/corpus/<target>/` (real captures and
//! hand-made requests), runs every seed as it is, then mutated ones: bit flips, interesting
//! bytes and 16-bit lengths, insertions, deletions, duplicated ranges, splices of two seeds.
//! A panic is a failure; its input is written to `target/fuzz-crashes/` (add it to the corpus
//! once fixed: every seed runs on every test run). `cargo xtask test` runs a fixed seed and a
//! fixed number of inputs per target (deterministic); `cargo xtask fuzz [SECONDS]` runs each
//! target for that long from a random seed (printed, to reproduce).
//!
//! Why a mutator of our own beside proptest and cargo-fuzz: CI needs a bounded, deterministic
//! run of the release code (a fixed seed, a fixed count, no nightly sanitizer build of the agent
//! and its eBPF object, which cargo-fuzz's libFuzzer needs and two cores cannot afford per run);
//! proptest generates values, not mutations of captured frames. Not coverage-guided: the
//! mutations start from valid messages, which is where parsers break.

use crate::XorShift;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a target runs.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Inputs(u64),
    Time(Duration),
}

/// What one target's run did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub inputs: u64,
    /// Inputs that panicked, as saved.
    pub crashes: Vec<PathBuf>,
}

/// A target: a name (its corpus directory) and something that takes one input.
pub trait Target {
    fn name(&self) -> &'static str;
    fn run(&mut self, input: &[u8]);
}

pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// The seeds of a target, sorted by file name (a deterministic order).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `target` on its seeds, then on mutations of them, within `budget`.
pub fn fuzz(target: &mut dyn Target, seed: u64, budget: Budget) -> Report {
    let corpus = seeds(target.name());
    assert!(!corpus.is_empty(), "{}: empty corpus", target.name());
    let mut rng = XorShift(seed | 1);
    let mut report = Report { target: target.name(), inputs: 0, crashes: Vec::new() };
    let started = Instant::now();
    let more = |n: u64| match budget {
        Budget::Inputs(max) => n < max,
        Budget::Time(d) => started.elapsed() < d,
    };
    // The panic message of a crash is printed once; the default hook would print every one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut i = 0u64;
    while i < corpus.len() as u64 || more(i) {
        let input = match corpus.get(i as usize) {
            Some(s) => s.clone(),
            None => mutate(&mut rng, &corpus),
        };
        if let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(|| target.run(&input))) {
            let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            report.crashes.push(save_crash(target.name(), &input, &why));
        }
        i += 1;
    }
    std::panic::set_hook(hook);
    report.inputs = i;
    report
}

fn save_crash(target: &str, input: &[u8], why: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    // FNV-1a: a stable name per input.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    let path = dir.join(format!("{target}-{hash:016x}.bin"));
    let _ = std::fs::write(&path, input);
    eprintln!("fuzz {target}: PANIC ({why}); input saved to {}", path.display());
    path
}

/// One to four mutations of a seed (or of two spliced seeds).
pub fn mutate(rng: &mut XorShift, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                b[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                b[at] = [0, 1, 0x7f, 0x80, 0xff, 0x25, 0x2f, rng.next_u64() as u8][rng.below(8)];
            }
            2 if len > 1 => {
                // A 16-bit length field set to something near the truth, or far from it.
                let at = rng.below(len - 1);
                let v: u16 = [0, 1, len as u16, len as u16 + 1, (len as u16).wrapping_sub(1), 0xffff, 0x8000][rng.below(7)];
                b[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, bytes);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                b.drain(at..at + n);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                let chunk = b[at..at + n].to_vec();
                let to = rng.below(len + 1);
                b.splice(to..to, chunk);
            }
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            _ => {
                if len > 0 {
                    b.truncate(rng.below(len));
                }
            }
        }
    }
    b
}

/// The targets, each ready to take inputs (`dir`: a scratch directory for their files).
pub fn targets(dir: &Path) -> Vec<Box<dyn Target>> {
    vec![Box::new(Dhcp::new()), Box::new(Dhcp6::new()), Box::new(Dhcp6Relay), Box::new(Frame), Box::new(Tftp::new(dir)), Box::new(Http::new(dir))]
}

const CONFIG: &str = "[server]\naddress = \"10.78.0.1\"\n[dhcp]\nsubnet = \"10.78.0.0/16\"\npools = [\"10.78.1.1-10.78.1.40\"]\nrouter = \"10.78.0.1\"\ndns = [\"10.78.0.53\"]\ndomain = \"lab.example\"\nnew_clients_per_s = 20\n[[dhcp.host]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.78.0.51\"\nhostname = \"node-001\"\n";

/// The DHCP core, authoritative and proxy, as the socket path calls it; its lease table
/// carries over from input to input (a small pool, so exhaustion is reached), time moves on.
pub struct Dhcp {
    servers: Vec<netboot::dhcp::DhcpServer>,
    now: u64,
}

impl Dhcp {
    pub fn new() -> Dhcp {
        use netboot::config::Config;
        use netboot::dhcp::{DhcpServer, ServerParams};
        let make = |text: &str| {
            let cfg = Config::parse(Path::new("fuzz.toml"), text).unwrap();
            let pools = cfg.dhcp.pools.iter().map(|p| *p.get_ref()).collect();
            DhcpServer::new(ServerParams::from_config(&cfg, "10.78.0.1".parse().unwrap()), pools, Vec::new())
        };
        let proxy = CONFIG.replace("[dhcp]\n", "[dhcp]\nmode = \"proxy\"\n");
        Dhcp { servers: vec![make(CONFIG), make(&proxy)], now: 1_800_000_000 }
    }
}

impl Default for Dhcp {
    fn default() -> Self {
        Dhcp::new()
    }
}

impl Target for Dhcp {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    fn run(&mut self, input: &[u8]) {
        use netboot::dhcp::{Outcome, Request};
        self.now += 1;
        for (s, port) in self.servers.iter_mut().zip([67u16, 4011]) {
            let out = s.handle(Request { payload: input, local_port: port, src_ip: "10.78.0.2".parse().unwrap(), src_port: 68, now: self.now });
            if let Outcome::Reply(r) = out {
                // A reply is a message the core itself can read back.
                assert!(netboot::dhcp::classify::decode(&r.payload).is_some(), "a reply the core cannot decode");
                let _ = r.frame(netboot::mac::MacAddr([2, 0, 0, 0, 0, 1]), "10.78.0.1".parse().unwrap(), Some(netboot::mac::MacAddr([2; 6])));
            }
        }
        let _ = netboot::dhcp::classify::decode(input).map(|m| netboot::dhcp::classify(&m));
    }
}

/// The DHCPv6 core: relay envelopes, client messages, a small pool (exhaustion is reached),
/// bindings carried over from input to input, time moving on.
pub struct Dhcp6 {
    server: netboot::dhcp6::Dhcp6Server,
    duid: Vec<u8>,
    now: u64,
}

impl Dhcp6 {
    pub fn new() -> Dhcp6 {
        use netboot::dhcp6::{Dhcp6Server, Params6};
        let text = format!("{CONFIG}[dhcp6]\nenabled = true\nprefix = \"fd00:78::/64\"\npools = [\"fd00:78::1000-fd00:78::1020\"]\ndns = [\"fd00:78::53\"]\n");
        let cfg = netboot::config::Config::parse(Path::new("fuzz.toml"), &text).unwrap();
        let duid = netboot::dhcp6::identity::server_duid(netboot::mac::MacAddr([2, 0, 0, 0, 0, 1]));
        Dhcp6 { server: Dhcp6Server::new(Params6::from_config(&cfg, "fd00:78::1".parse().unwrap(), duid.clone())), duid, now: 1_800_000_000 }
    }
}

impl Default for Dhcp6 {
    fn default() -> Self {
        Dhcp6::new()
    }
}

impl Target for Dhcp6 {
    fn name(&self) -> &'static str {
        "dhcp6"
    }

    fn run(&mut self, input: &[u8]) {
        self.now += 7;
        let req = netboot::dhcp6::Request6 { payload: input, src: "fe80::5054:ff:fe00:9".parse().unwrap(), now: self.now };
        if let Ok(r) = self.server.handle(&req) {
            // A reply is a message (or an envelope around one) that parses again.
            let mut as_forward = r.payload.clone();
            if as_forward[0] == netboot::dhcp6::relay::RELAY_REPL {
                as_forward[0] = netboot::dhcp6::relay::RELAY_FORW;
            }
            let inner = netboot::dhcp6::relay::unwrap(&as_forward).map(|u| u.message.to_vec());
            assert!(inner.is_ok_and(|m| !m.is_empty()), "a reply that does not parse");
            // What the agent does next with it: the kernel's reply cache entry.
            if let Some(c) = &r.cacheable {
                let _ = netboot::fastpath::cache6::compile6(&r, c, netboot::mac::MacAddr([2, 0, 0, 0, 0, 1]), "fe80::1".parse().unwrap(), &self.duid);
            }
            let _ = r.durable_leases();
        }
        if self.now.is_multiple_of(1000) {
            self.server.sweep(self.now);
        }
    }
}

/// The DHCPv6 relay envelope alone: opening any nest of RELAY-FORWs, checking the message
/// inside before dhcproto sees it, and wrapping a reply back in the same envelopes (which
/// opens again to the same message).
pub struct Dhcp6Relay;

impl Target for Dhcp6Relay {
    fn name(&self) -> &'static str {
        "dhcp6-relay"
    }

    fn run(&mut self, input: &[u8]) {
        use netboot::dhcp6::{guard, relay};
        let Ok(u) = relay::unwrap(input) else { return };
        let _ = guard::check(u.message);
        if let Ok(mut wrapped) = relay::wrap(&u.envelopes, u.message.to_vec()) {
            // The REPLs read back as FORWs: the same message, the same number of envelopes.
            let mut at = 0;
            for _ in 0..u.envelopes.len() {
                assert_eq!(wrapped[at], relay::RELAY_REPL, "an envelope that is not a RELAY-REPL");
                wrapped[at] = relay::RELAY_FORW;
                let Some(next) = relay::options(&wrapped[at + 34..]).filter_map(Result::ok).find(|(c, _)| *c == relay::OPT_RELAY_MSG).map(|(_, d)| d.as_ptr() as usize - wrapped.as_ptr() as usize) else {
                    panic!("an envelope without its message");
                };
                at = next;
            }
            let back = relay::unwrap(&wrapped).expect("a wrapped reply opens again");
            assert_eq!((back.message, back.envelopes.len()), (u.message, u.envelopes.len()));
        }
    }
}

/// The frame parser and checksum check the AF_XDP engine runs on every frame.
pub struct Frame;

impl Target for Frame {
    fn name(&self) -> &'static str {
        "frame"
    }

    fn run(&mut self, input: &[u8]) {
        if let Some(p) = netboot::frame::parse_udp(input) {
            assert!(p.udp_offset + 8 + p.payload.len() <= input.len());
        }
        let _ = netboot::frame::udp_checksum_ok(input);
    }
}

/// TFTP: the packet parser, opening a session from the input as a request, and the input as
/// a packet to a transfer in progress (and its timer).
pub struct Tftp {
    source: netboot::tftp::session::Source,
    stats: netboot::stats::Stats,
    timelines: netboot::timeline::Timelines,
}

impl Tftp {
    pub fn new(dir: &Path) -> Tftp {
        let root = dir.join("tftp");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), netboot_lab::pattern(70_000, 7)).unwrap();
        std::fs::write(root.join("ipxe.efi"), b"line one\nline two\r\n").unwrap();
        let limits = netboot::tftp::Limits { max_blksize: 1468, max_windowsize: 32, max_payload: 1472, max_transfers: 64, max_transfers_per_client: 4 };
        let files = std::sync::Arc::new(netboot::tftp::FileCache::new(&root).unwrap());
        Tftp {
            source: netboot::tftp::session::Source { files, limits, admission: Default::default(), generated: Default::default() },
            stats: Default::default(),
            timelines: netboot::timeline::Timelines::new("fuzz"),
        }
    }
}

impl Target for Tftp {
    fn name(&self) -> &'static str {
        "tftp"
    }

    fn run(&mut self, input: &[u8]) {
        use netboot::tftp::packet::Packet;
        use netboot::tftp::session::{Opened, open};
        if let Ok(p) = Packet::parse(input) {
            // What parses, encodes and parses back the same.
            let again = p.to_vec();
            assert_eq!(Packet::parse(&again).map(|q| q.to_vec()), Ok(again), "parse ∘ encode is not the identity");
        }
        let now = Instant::now();
        let client = "10.78.1.9:2000".parse().unwrap();
        if let Opened::Transfer(mut s, first) = open(&self.source, input, client, &self.stats, now) {
            assert!(!first.is_empty());
            let _ = s.transfer.on_packet(input, now);
            let _ = s.transfer.on_packet(&Packet::Ack { block: 0 }.to_vec(), now);
            let _ = s.transfer.on_packet(input, now);
            let _ = s.transfer.on_timeout(now + Duration::from_secs(1));
            s.finish(client, Some("fuzz"), &self.stats, &self.timelines);
        }
    }
}

/// HTTP: the input as the bytes a client sends on a connection of `http.listen`, through the
/// agent's own HTTP/1.1 connection loop into its router (boot script, files, API); the response
/// must be well-formed HTTP/1.1.
pub struct Http {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
}

impl Http {
    pub fn new(dir: &Path) -> Http {
        use netboot::config::Config;
        let http_root = dir.join("http");
        std::fs::create_dir_all(&http_root).unwrap();
        std::fs::write(http_root.join("boot.ipxe.j2"), "#!ipxe\necho {{ hostname }} {{ ip }} {{ vars.rack }}\nchain http://{{ server }}/vmlinuz\n").unwrap();
        std::fs::write(http_root.join("vmlinuz"), netboot_lab::pattern(4096, 8)).unwrap();
        std::fs::write(http_root.join("initrd.img"), netboot_lab::pattern(100, 9)).unwrap();
        // No lease store in `state`: a script for a node that is not reserved answers 503.
        let text = format!("{CONFIG}[http]\nroot = \"{}\"\n", http_root.display())
            .replace("[server]\n", &format!("[server]\nstate_dir = \"{}\"\n", dir.join("state").display()));
        let cfg = Config::parse(Path::new("fuzz.toml"), &text).unwrap();
        let agent = netboot::runtime::AgentRecord {
            pid: std::process::id(),
            iface: "nbxfuzz0".into(),
            xdp_mode: "skb".into(),
            config: dir.join("fuzz.toml"),
            state_dir: dir.join("state"),
        };
        let stats = std::sync::Arc::new(netboot::stats::Stats::default());
        let timelines = std::sync::Arc::new(netboot::timeline::Timelines::new("nbxfuzz0"));
        let state = netboot::http::HttpState::new(&cfg, "10.78.0.1".parse().unwrap(), agent, stats, timelines).expect("http state");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Http { rt, app: netboot::http::router(std::sync::Arc::new(state)) }
    }
}

impl Target for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn run(&mut self, input: &[u8]) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = self.app.clone();
        let input = input.to_vec();
        let out = self.rt.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            let peer = netboot::http::listener::PeerAddr { addr: "10.78.0.2:40000".parse().unwrap(), tls: false };
            let stats = std::sync::Arc::new(netboot::stats::Stats::default());
            let conn = tokio::spawn(netboot::http::conn::connection(server, peer, app, stats));
            let (mut rd, mut wr) = tokio::io::split(client);
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
            conn.abort();
            assert!(read.is_ok(), "the connection neither answered nor closed within 5 s");
            out
        });
        if !out.is_empty() {
            assert!(out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "), "not an HTTP response: {:?}", String::from_utf8_lossy(&out[..out.len().min(60)]));
        }
    }
}
