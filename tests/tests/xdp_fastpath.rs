//! Invariant 2: an XDP reply is byte-identical to the reply the userspace core builds for the
//! same request. For every captured client request the reply compiler installs the client's
//! entries, `BPF_PROG_TEST_RUN` runs the request through the program, and the output frame must
//! equal the frame the agent's core would send. Mutated requests are never answered with a
//! reply the core would not send.

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use netboot::config::Config;
use netboot::dhcp::{DhcpServer, Outcome, Request, ServerParams, classify};
use netboot::fastpath::cache::{Presentation, ReplyCache, compile};
use netboot::fastpath::{Counters, Loaded, testrun};
use netboot::frame::{UdpEnvelope, parse_udp};
use netboot::mac::MacAddr;
use netboot_common::{Counter, maps};
use std::net::Ipv4Addr;
use std::path::Path;
use tests::{XorShift, fixture_frames, require_root};

const NOW: u64 = 1_800_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const SERVER_MAC: MacAddr = MacAddr([0x02, 0x6e, 0x62, 0, 0, 1]);

/// A request as the core and the compiler see it.
struct Req {
    msg: Message,
    mac: MacAddr,
    /// The relay (giaddr, its MAC = the frame's source) of a relayed request.
    relay: Option<(Ipv4Addr, MacAddr)>,
}

fn req(frame: Vec<u8>) -> Req {
    let p = parse_udp(&frame).expect("UDP frame");
    let msg = Message::decode(&mut Decoder::new(p.payload)).expect("DHCP");
    let mac = MacAddr(msg.chaddr().try_into().unwrap());
    let relay = (!msg.giaddr().is_unspecified()).then(|| (msg.giaddr(), p.envelope.src_mac));
    Req { msg, mac, relay }
}

/// Re-encodes `msg` into the frame of `base` (same envelope), with valid checksums.
fn reframe(base: &[u8], msg: &Message) -> Vec<u8> {
    let p = parse_udp(base).unwrap();
    let mut payload = msg.to_vec().unwrap();
    payload.resize(payload.len().max(p.payload.len()), 0);
    UdpEnvelope { ttl: p.envelope.ttl, ..p.envelope }.build(&payload)
}

fn server(reserved: &[(MacAddr, Ipv4Addr)]) -> DhcpServer {
    let mut text = String::from(
        "[server]\naddress = \"10.78.0.1\"\n[dhcp]\nsubnet = \"10.78.0.0/16\"\npools = [\"10.78.2.1-10.78.2.200\"]\nrouter = \"10.78.0.1\"\ndns = [\"10.78.0.53\"]\ndomain = \"lab.example\"\n",
    );
    for (i, (mac, ip)) in reserved.iter().enumerate() {
        text.push_str(&format!("[[dhcp.host]]\nmac = \"{mac}\"\nip = \"{ip}\"\nhostname = \"node-{i:03}\"\n"));
    }
    let cfg = Config::parse(Path::new("diff.toml"), &text).unwrap();
    let pools = cfg.dhcp.pools.iter().map(|p| *p.get_ref()).collect();
    DhcpServer::new(ServerParams::from_config(&cfg, SERVER), pools, Vec::new())
}

/// The frame the core sends for `r`, if it sends one through the packet socket (a relay's
/// MAC is known to the agent from its neighbour table; here it is the request's source).
fn core_frame(server: &mut DhcpServer, frame: &[u8]) -> Option<Vec<u8>> {
    let p = parse_udp(frame)?;
    let out = server.handle(Request { payload: p.payload, local_port: 67, src_ip: p.envelope.src_ip, src_port: p.envelope.src_port, now: NOW });
    match out {
        Outcome::Reply(r) => r.frame(SERVER_MAC, SERVER, Some(p.envelope.src_mac)),
        Outcome::Silent { .. } => None,
    }
}

fn presentation(r: &Req) -> Presentation {
    let c = classify(&r.msg);
    let client_id = match r.msg.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.clone()),
        _ => None,
    };
    Presentation { mac: r.mac, class: c.class, arch: c.arch, client_id, relay: r.relay }
}

struct Prog {
    loaded: Loaded,
    cache: ReplyCache,
}

impl Prog {
    fn load() -> Prog {
        let mut loaded = Loaded::new().expect("load");
        let cache = ReplyCache::new(loaded.take_map(maps::REPLY_CACHE).unwrap()).unwrap();
        Prog { loaded, cache }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
        let before = self.loaded.counters().unwrap();
        let fd = self.loaded.program_fd();
        let r = testrun::run(fd, frame, 1).unwrap();
        (r.action, r.output, self.loaded.counters().unwrap().delta(&before))
    }
}

/// The captured requests, each with the address it must be given (its REQUEST's option 50,
/// or a fixed one), and variants that isolate one rule.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for name in ["dhclient", "udhcpc", "ipxe", "uefi-pxe"] {
        for (i, f) in fixture_frames(name).into_iter().enumerate() {
            v.push((format!("{name}[{i}]"), f));
        }
    }
    // perfdhcp through its relay (giaddr 10.78.0.2), plain and as iPXE.
    v.push(("perfdhcp relayed".into(), fixture_frames("perfdhcp")[0].clone()));
    v.push(("perfdhcp -o 77 relayed".into(), fixture_frames("perfdhcp-ipxe")[0].clone()));
    // EDK2 DISCOVER without the broadcast flag: link unicast to chaddr/yiaddr.
    let uefi = fixture_frames("uefi-pxe")[0].clone();
    let mut m = req(uefi.clone()).msg;
    m.set_flags(Default::default());
    v.push(("uefi-pxe unicast".into(), reframe(&uefi, &m)));
    // UEFI HTTP boot and other architectures, from the EDK2 capture.
    let mut m = req(uefi.clone()).msg;
    m.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003000".to_vec()));
    m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(16u16.into()));
    v.push(("http boot".into(), reframe(&uefi, &m)));
    for arch in [0u16, 6, 9, 11] {
        let mut m = req(uefi.clone()).msg;
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(arch.into()));
        v.push((format!("pxe arch {arch}"), reframe(&uefi, &m)));
    }
    v
}

/// The address each client is reserved: what its captured REQUEST asked for, else 10.78.1.99.
fn reservations(corpus: &[(String, Vec<u8>)]) -> Vec<(MacAddr, Ipv4Addr)> {
    let mut out: Vec<(MacAddr, Ipv4Addr)> = Vec::new();
    for (_, f) in corpus {
        let r = req(f.clone());
        let asked = match r.msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        match out.iter_mut().find(|(m, _)| *m == r.mac) {
            Some(e) => {
                if let Some(ip) = asked {
                    e.1 = ip;
                }
            }
            None => out.push((r.mac, asked.unwrap_or(Ipv4Addr::new(10, 78, 1, 99)))),
        }
    }
    // Distinct addresses (dhclient and udhcpc ran on the same interface, so share a MAC).
    out
}

#[test]
fn xdp_replies_are_byte_identical_to_the_core() {
    if !require_root("xdp_replies_are_byte_identical_to_the_core") {
        return;
    }
    let corpus = corpus();
    let reserved = reservations(&corpus);
    let mut prog = Prog::load();
    let mut tx = 0;
    for (what, frame) in &corpus {
        let r = req(frame.clone());
        let mut core = server(&reserved);
        let who = presentation(&r);
        let entries = compile(&core, &who, SERVER_MAC, NOW);
        assert_eq!(entries.len(), 2, "{what}: compiled entries");
        prog.cache.install(r.mac, &entries).unwrap();

        let expected = core_frame(&mut core, frame).unwrap_or_else(|| panic!("{what}: the core does not answer"));
        let (action, out, d) = prog.run(frame);
        assert_eq!(action, testrun::XDP_TX, "{what}: not answered in the kernel: {:?}", d.nonzero());
        if out != expected {
            let first = out.iter().zip(&expected).position(|(a, b)| a != b);
            panic!("{what}: XDP reply differs from the core's (len {} vs {}, first difference at byte {first:?})", out.len(), expected.len());
        }
        assert!(netboot::frame::udp_checksum_ok(&out), "{what}: UDP checksum");
        assert_eq!(d.get(Counter::FastOffer) + d.get(Counter::FastAck), 1, "{what}");
        tx += 1;
        prog.cache.forget(r.mac);
    }
    assert_eq!(tx, corpus.len());
}

#[test]
fn a_relayed_reply_goes_to_the_requests_sender_not_the_mac_it_was_compiled_for() {
    if !require_root("a_relayed_reply_goes_to_the_requests_sender_not_the_mac_it_was_compiled_for") {
        return;
    }
    // Issue 26: the kernel's relayed replies went to the relay MAC of when the entry was
    // compiled; a relay whose MAC changed since (a VRRP failover, a replaced switch) lost them.
    let frame = fixture_frames("perfdhcp")[0].clone();
    let r = req(frame.clone());
    let mut prog = Prog::load();
    let core = server(&reservations(&[("relayed".into(), frame.clone())]));
    let entries = compile(&core, &presentation(&r), SERVER_MAC, NOW);
    prog.cache.install(r.mac, &entries).unwrap();
    let mut moved = frame.clone();
    let new_relay = [0x02, 0, 0, 0, 0x0a, 0x0b];
    moved[6..12].copy_from_slice(&new_relay);
    let (action, out, d) = prog.run(&moved);
    assert_eq!(action, testrun::XDP_TX, "not answered in the kernel: {:?}", d.nonzero());
    assert_eq!(out[0..6], new_relay, "the reply went to the MAC the entry was compiled with");
    assert!(netboot::frame::udp_checksum_ok(&out));
}

#[test]
fn a_flood_with_a_victims_chaddr_from_another_host_does_not_silence_the_victim() {
    if !require_root("a_flood_with_a_victims_chaddr_from_another_host_does_not_silence_the_victim") {
        return;
    }
    // Issue 26: the per-client counter was keyed by chaddr only: 21 frames a second carrying a
    // victim's chaddr made the kernel drop the victim's own requests. Now a client is its
    // (Ethernet source, chaddr), relayed (giaddr, chaddr).
    use aya::maps::Array;
    use netboot_common::cache::FastLimits;
    let uefi = fixture_frames("uefi-pxe")[0].clone();
    let r = req(uefi.clone());
    let mut prog = Prog::load();
    let core = server(&[(r.mac, Ipv4Addr::new(10, 78, 1, 50))]);
    prog.cache.install(r.mac, &compile(&core, &presentation(&r), SERVER_MAC, NOW)).unwrap();
    let mut limits: Array<_, FastLimits> = Array::try_from(prog.loaded.take_map(maps::LIMITS).unwrap()).unwrap();
    limits.set(0, FastLimits { per_client_pps: 3, ..Default::default() }, 0).unwrap();
    let mut forged = uefi.clone();
    forged[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x66, 0x66]);
    // The window is one second: a burst that took longer is run again.
    let burst = (0..3).find_map(|_| {
        let started = std::time::Instant::now();
        let flood: Vec<_> = (0..10).map(|_| prog.run(&forged)).collect();
        let victim = prog.run(&uefi);
        (started.elapsed() < std::time::Duration::from_millis(500)).then_some((flood, victim))
    });
    let (flood, (action, _, d)) = burst.expect("eleven test runs within half a second");
    assert!(flood.iter().filter(|(a, _, d)| *a == testrun::XDP_DROP && d.get(Counter::RateLimited) == 1).count() >= 7, "the flooder is limited");
    assert_eq!((action, d.get(Counter::RateLimited)), (testrun::XDP_TX, 0), "the victim was silenced: {:?}", d.nonzero());
    limits.set(0, FastLimits::default(), 0).unwrap();
}

#[test]
fn ineligible_and_mismatched_requests_go_to_the_agent() {
    if !require_root("ineligible_and_mismatched_requests_go_to_the_agent") {
        return;
    }
    let mut prog = Prog::load();
    let uefi = fixture_frames("uefi-pxe");
    let r = req(uefi[0].clone());
    let reserved = [(r.mac, Ipv4Addr::new(10, 78, 1, 50))];
    let core = server(&reserved);
    let entries = compile(&core, &presentation(&r), SERVER_MAC, NOW);
    prog.cache.install(r.mac, &entries).unwrap();
    let pass = |prog: &mut Prog, what: &str, frame: &[u8], counter: Counter| {
        let (action, out, d) = prog.run(frame);
        assert_eq!(action, testrun::XDP_PASS, "{what}");
        assert_eq!(out, frame, "{what}: modified");
        assert_eq!(d.get(counter), 1, "{what}: {:?}", d.nonzero());
    };
    // The cached client, answered.
    assert_eq!(prog.run(&uefi[0]).0, testrun::XDP_TX);
    // Another MAC: miss.
    let mut m = r.msg.clone();
    m.set_chaddr(&[2, 0, 0, 0, 0, 9]);
    pass(&mut prog, "unknown MAC", &reframe(&uefi[0], &m), Counter::CacheMiss);
    // Another class for the same MAC (iPXE): miss.
    let mut m = r.msg.clone();
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    pass(&mut prog, "other class", &reframe(&uefi[0], &m), Counter::CacheMiss);
    // A client identifier the entry was not compiled for.
    let mut m = r.msg.clone();
    m.opts_mut().insert(DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3]));
    pass(&mut prog, "client id", &reframe(&uefi[0], &m), Counter::FastMismatch);
    // REQUEST for another address, or naming another server.
    let mut m = req(uefi[1].clone()).msg;
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 78, 1, 51)));
    pass(&mut prog, "REQUEST other address", &reframe(&uefi[1], &m), Counter::FastMismatch);
    let mut m = req(uefi[1].clone()).msg;
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 78, 1, 50)));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 78, 0, 9)));
    pass(&mut prog, "REQUEST other server", &reframe(&uefi[1], &m), Counter::FastMismatch);
    // Through a relay it is another entry; renewing (ciaddr) and VLAN-tagged: the agent's.
    let mut m = r.msg.clone();
    m.set_giaddr(Ipv4Addr::new(10, 78, 0, 2));
    pass(&mut prog, "relayed", &reframe(&uefi[0], &m), Counter::CacheMiss);
    let mut m = r.msg.clone();
    m.set_ciaddr(Ipv4Addr::new(10, 78, 1, 50));
    pass(&mut prog, "ciaddr", &reframe(&uefi[0], &m), Counter::FastIneligible);
    let mut tagged = uefi[0][..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
    tagged.extend_from_slice(&uefi[0][12..]);
    pass(&mut prog, "vlan", &tagged, Counter::FastIneligible);
    // Bad checksums: the kernel would drop these, so the fast path must not answer them.
    let mut f = uefi[0].clone();
    f[14 + 8] ^= 1; // TTL without fixing the IPv4 checksum
    pass(&mut prog, "bad IPv4 checksum", &f, Counter::BadChecksum);
    let mut f = uefi[0].clone();
    f[42 + 44 + 10] ^= 0x5a; // a byte of sname, without fixing the UDP checksum
    pass(&mut prog, "bad UDP checksum", &f, Counter::BadChecksum);
    // After `forget`, the client is the agent's again.
    prog.cache.forget(r.mac);
    pass(&mut prog, "forgotten", &uefi[0], Counter::CacheMiss);
}

/// Random edits of cached clients' requests: whenever the kernel answers, the core answers the
/// same edited request with the same bytes.
#[test]
fn mutated_requests_never_get_a_reply_the_core_would_not_send() {
    if !require_root("mutated_requests_never_get_a_reply_the_core_would_not_send") {
        return;
    }
    let corpus = corpus();
    let reserved = reservations(&corpus);
    let mut prog = Prog::load();
    let mut rng = XorShift(0xfa57_0b07_1234_5678);
    let (mut answered, mut total) = (0, 0);
    for (what, frame) in corpus.iter().take(11) {
        let r = req(frame.clone());
        let core = server(&reserved);
        prog.cache.install(r.mac, &compile(&core, &presentation(&r), SERVER_MAC, NOW)).unwrap();
        for _ in 0..300 {
            let mut f = frame.clone();
            for _ in 0..1 + rng.below(3) {
                let at = 14 + rng.below(f.len() - 14);
                f[at] = rng.next_u64() as u8;
            }
            // Half of them with valid checksums, so that the edit reaches the DHCP checks.
            if rng.below(2) == 0 {
                f[24] = 0;
                f[25] = 0;
                let c = netboot::frame::checksum(&[&f[14..34]]);
                f[24..26].copy_from_slice(&c.to_be_bytes());
                let rebuilt = parse_udp(&f).map(|p| UdpEnvelope { ttl: p.envelope.ttl, ..p.envelope }.build(p.payload));
                if let Some(g) = rebuilt {
                    f = g;
                }
            }
            total += 1;
            let (action, out, _) = prog.run(&f);
            if action == testrun::XDP_TX {
                answered += 1;
                let mut core = server(&reserved);
                let expected = core_frame(&mut core, &f);
                if Some(&out) != expected.as_ref() {
                    let p = parse_udp(&f).unwrap();
                    eprintln!("request options: {:?}", netboot_test_dump(p.payload));
                    eprintln!("dhcproto: {:?}", Message::decode(&mut Decoder::new(p.payload)).map(|m| m.opts().iter().map(|(c, _)| u8::from(*c)).collect::<Vec<_>>()));
                }
                assert_eq!(Some(out), expected, "{what}: the kernel answered an edited request differently from the core");
            }
        }
        prog.cache.forget(r.mac);
    }
    eprintln!("{answered} of {total} edited requests answered in the kernel, each as the core would");
}

fn netboot_test_dump(payload: &[u8]) -> Vec<(u8, usize)> {
    let mut v = Vec::new();
    let mut i = 240;
    while i < payload.len() {
        match payload[i] {
            0 => i += 1,
            255 => { v.push((255, 0)); break; }
            c => { let l = payload.get(i + 1).copied().unwrap_or(0) as usize; v.push((c, l)); i += 2 + l; }
        }
    }
    v
}

/// Issue 13: frames a hostile or broken segment sends, each answered as the kernel stack and the
/// core would treat it, and counted: a flooding client dropped, the CHECKSUM_PARTIAL form of a
/// local sender with offload answered, frames for other hosts, a 255-byte option 61 and an
/// entry past its deadline passed, a TFTP frame whose total length is shorter than its headers
/// never steered to the AF_XDP engine.
#[test]
fn hostile_and_offloaded_frames_are_counted_and_never_answered_wrongly() {
    if !require_root("hostile_and_offloaded_frames_are_counted_and_never_answered_wrongly") {
        return;
    }
    use aya::maps::Array;
    use netboot_common::cache::FastLimits;
    let mut prog = Prog::load();
    let mut limits: Array<_, FastLimits> = Array::try_from(prog.loaded.take_map(maps::LIMITS).unwrap()).unwrap();
    let uefi = fixture_frames("uefi-pxe");
    let r = req(uefi[0].clone());
    let core = server(&[(r.mac, Ipv4Addr::new(10, 78, 1, 50))]);
    let entries = compile(&core, &presentation(&r), SERVER_MAC, NOW);
    prog.cache.install(r.mac, &entries).unwrap();
    let passed = |prog: &mut Prog, what: &str, frame: &[u8], counter: Counter| {
        let (action, out, d) = prog.run(frame);
        assert_eq!(action, testrun::XDP_PASS, "{what}: {:?}", d.nonzero());
        assert_eq!(out, frame, "{what}: modified");
        assert_eq!(d.get(counter), 1, "{what}: {:?}", d.nonzero());
    };

    // CHECKSUM_PARTIAL (a veth or virtio sender with TX offload): answered, counted.
    let udp = 14 + 20;
    let mut partial = uefi[0].clone();
    let udp_len = partial.len() - udp;
    let p = parse_udp(&partial).unwrap();
    let c = netboot::frame::partial_checksum(p.envelope.src_ip, p.envelope.dst_ip, udp_len);
    partial[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
    let (action, out, d) = prog.run(&partial);
    assert_eq!((action, d.get(Counter::ChecksumPartial)), (testrun::XDP_TX, 1), "{:?}", d.nonzero());
    assert_eq!(out, prog.run(&uefi[0]).1, "the same reply as to the fully checksummed request");
    // Any other wrong value is still a bad checksum.
    partial[udp + 7] ^= 0x10;
    passed(&mut prog, "neither full nor partial", &partial, Counter::BadChecksum);

    // To another host's MAC, or to another IP: not ours to answer.
    let mut f = uefi[0].clone();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0x77, 1]);
    passed(&mut prog, "other destination MAC", &f, Counter::FastNotForUs);
    let p = parse_udp(&uefi[0]).unwrap();
    let other_ip = UdpEnvelope { dst_ip: Ipv4Addr::new(10, 78, 0, 9), ttl: p.envelope.ttl, ..p.envelope }.build(p.payload);
    passed(&mut prog, "other destination IP", &other_ip, Counter::FastNotForUs);

    // Option 61 of 255 bytes once equalled the "absent" sentinel: it matched an entry compiled
    // for a client without one.
    let mut m = r.msg.clone();
    m.opts_mut().insert(DhcpOption::ClientIdentifier(vec![0x42; 255]));
    passed(&mut prog, "255-byte client id", &reframe(&uefi[0], &m), Counter::FastMismatch);

    // An entry past its deadline (its agent is gone): the agent's, not the kernel's.
    let mut stale = entries.clone();
    for (_, e) in &mut stale {
        e.not_after_ns = 1;
    }
    prog.cache.install(r.mac, &stale).unwrap();
    passed(&mut prog, "expired entry", &uefi[0], Counter::FastExpired);
    prog.cache.install(r.mac, &entries).unwrap();

    // A client over per_client_pps: dropped (neither the kernel nor the agent answers), other
    // clients untouched. The window is one second: a burst that took longer is run again.
    limits.set(0, FastLimits { per_client_pps: 3, ..Default::default() }, 0).unwrap();
    let mut other = r.msg.clone();
    other.set_chaddr(&[2, 0, 0, 0, 0x66, 1]);
    let other = reframe(&uefi[0], &other);
    let burst = (0..3).find_map(|_| {
        let started = std::time::Instant::now();
        let results: Vec<_> = (0..6).map(|_| prog.run(&uefi[0])).collect();
        let other_run = prog.run(&other);
        (started.elapsed() < std::time::Duration::from_millis(500)).then_some((results, other_run))
    });
    let (results, (other_action, _, other_d)) = burst.expect("six test runs within half a second");
    let dropped = results.iter().filter(|(a, _, d)| *a == testrun::XDP_DROP && d.get(Counter::RateLimited) == 1).count();
    assert!(dropped >= 3, "a client over its limit is dropped: {dropped} of 6");
    assert_eq!(results.iter().filter(|(a, ..)| *a == testrun::XDP_TX).count(), 6 - dropped);
    assert_eq!((other_action, other_d.get(Counter::CacheMiss)), (testrun::XDP_PASS, 1), "another client is not limited");
    limits.set(0, FastLimits::default(), 0).unwrap();

    // A TFTP frame whose IPv4 total length is below its header length (it once killed the
    // AF_XDP thread): never steered.
    let mut steer: Array<_, netboot_common::TftpSteer> = Array::try_from(prog.loaded.take_map(maps::TFTP_STEER).unwrap()).unwrap();
    steer.set(0, netboot_common::TftpSteer { server_ip: SERVER.octets(), port_lo: 0, port_hi: 0, enabled: 1, ..Default::default() }, 0).unwrap();
    let rrq = UdpEnvelope {
        src_mac: MacAddr([2, 0, 0, 0, 0, 5]),
        dst_mac: SERVER_MAC,
        vlan: None,
        src_ip: Ipv4Addr::new(10, 78, 1, 5),
        dst_ip: SERVER,
        src_port: 2000,
        dst_port: 69,
        ttl: 64,
    };
    let good = rrq.build(b"\0\x01undionly.kpxe\0octet\0");
    let (_, _, d) = prog.run(&good);
    assert_eq!(d.get(Counter::TftpSteered), 1, "a well-formed request is steered: {:?}", d.nonzero());
    for total in [0u16, 19, 20, 27] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&total.to_be_bytes());
        let (action, _, d) = prog.run(&f);
        assert_eq!((action, d.get(Counter::TftpSteered), d.get(Counter::MalformedIp)), (testrun::XDP_PASS, 0, 1), "total length {total}");
    }
}

/// Issue 14: a cluster member answers only the buckets it owns, and the kernel and the agent
/// agree on which those are: the RFC 3074 bucket of chaddr, computed once in netboot-common.
/// DISCOVER and REQUEST of another member's client are dropped in the kernel (`not_owner`)
/// and would be silent in the core; a RELEASE still reaches the agent.
#[test]
fn the_kernel_and_the_core_agree_on_which_clients_a_member_answers() {
    if !require_root("the_kernel_and_the_core_agree_on_which_clients_a_member_answers") {
        return;
    }
    use aya::maps::Array;
    use dhcproto::v4::MessageType;
    use netboot::dhcp::buckets::{Buckets, owned_by};
    use netboot::dhcp::Silence;
    let mut prog = Prog::load();
    let mut owner_map: Array<_, u8> = Array::try_from(prog.loaded.take_map(maps::BUCKET_OWNER).unwrap()).unwrap();
    let members = vec!["boot-a".to_string(), "boot-b".to_string()];
    let owned = owned_by("boot-a", &members);
    for (b, o) in owned.iter().enumerate() {
        owner_map.set(b as u32, if *o { netboot_common::cluster::OWNER_SELF } else { netboot_common::cluster::OWNER_OTHER }, 0).unwrap();
    }
    let buckets = std::sync::Arc::new(Buckets::default());
    buckets.set(&owned);
    let mut core = server(&[]);
    core.set_buckets(buckets.clone());
    let base = fixture_frames("uefi-pxe");
    let mut rng = XorShift(0x14_0014_1401);
    let (mut mine, mut theirs) = (0, 0);
    for _ in 0..300 {
        let mac = MacAddr([2, 0x14, rng.next_u64() as u8, rng.next_u64() as u8, rng.next_u64() as u8, rng.next_u64() as u8]);
        let ours = owned[netboot_common::cluster::bucket(&mac.0) as usize];
        assert_eq!(buckets.owns(mac), ours);
        let mut m = req(base[0].clone()).msg;
        m.set_chaddr(&mac.0);
        let frame = reframe(&base[0], &m);
        let (action, _, d) = prog.run(&frame);
        let p = parse_udp(&frame).unwrap();
        let out = core.handle(Request { payload: p.payload, local_port: 67, src_ip: p.envelope.src_ip, src_port: p.envelope.src_port, now: NOW });
        if ours {
            mine += 1;
            assert_ne!(action, testrun::XDP_DROP, "{mac}: ours, dropped: {:?}", d.nonzero());
            assert!(matches!(out, Outcome::Reply(_)), "{mac}: ours, the core is silent: {out:?}");
        } else {
            theirs += 1;
            assert_eq!((action, d.get(Counter::NotOwner)), (testrun::XDP_DROP, 1), "{mac}: another member's, not dropped: {:?}", d.nonzero());
            assert!(matches!(out, Outcome::Silent { why: Silence::NotOwner, .. }), "{mac}: the core answers another member's client: {out:?}");
            // A RELEASE of that client is not a request to answer: it goes on to the agent.
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Release));
            let (action, _, d) = prog.run(&reframe(&base[0], &m));
            assert_eq!((action, d.get(Counter::NotOwner)), (testrun::XDP_PASS, 0), "{mac}: RELEASE");
        }
    }
    assert!(mine > 100 && theirs > 100, "an even split of 300 clients: {mine} ours, {theirs} theirs");

    // A member whose agent stopped renewing its liveness answers nobody, its own clients
    // included (the others own its buckets by then); renewed, it answers again.
    let mut limits: Array<_, netboot_common::cache::FastLimits> = Array::try_from(prog.loaded.take_map(maps::LIMITS).unwrap()).unwrap();
    let own = (0u8..=255).map(|i| MacAddr([2, 0x14, 0, 0, 0, i])).find(|m| buckets.owns(*m)).unwrap();
    let mut m = req(base[0].clone()).msg;
    m.set_chaddr(&own.0);
    let frame = reframe(&base[0], &m);
    limits.set(0, netboot_common::cache::FastLimits { alive_until_ns: 1, ..Default::default() }, 0).unwrap();
    let (action, _, d) = prog.run(&frame);
    assert_eq!((action, d.get(Counter::MemberStalled)), (testrun::XDP_DROP, 1), "{:?}", d.nonzero());
    limits.set(0, netboot_common::cache::FastLimits { alive_until_ns: u64::MAX, ..Default::default() }, 0).unwrap();
    let (action, _, d) = prog.run(&frame);
    assert_ne!(action, testrun::XDP_DROP, "{:?}", d.nonzero());
}

/// Issue 16: the DHCPv6 reply cache. A host with a fixed `ip6` asks once (the core answers
/// and the agent compiles the reply into an entry); its next SOLICIT or REQUEST is answered by
/// the program, byte for byte the frame the core's reply goes out in.
mod v6 {
    use super::*;
    use netboot::dhcp6::{Dhcp6Server, Params6, Request6};
    use netboot::fastpath::cache6::{ReplyCache6, compile6, reply_frame};
    use netboot::frame::Udp6Envelope;
    use netboot_common::cache6::{ALL_DHCP_AGENTS, ALL_DHCP_AGENTS_MAC};
    use std::net::Ipv6Addr;

    const CLIENT_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
    const FIXED: &str = "fd00:78::9";

    fn client_ll() -> Ipv6Addr {
        "fe80::5054:ff:fe00:9".parse().unwrap()
    }
    fn server_ll() -> Ipv6Addr {
        "fe80::6e:62ff:fe00:1".parse().unwrap()
    }

    fn core() -> Dhcp6Server {
        let text = format!(
            "[server]\naddress = \"10.78.0.1\"\n[dhcp]\nsubnet = \"10.78.0.0/16\"\npools = [\"10.78.2.1-10.78.2.200\"]\n\
             [[dhcp.host]]\nmac = \"{CLIENT_MAC}\"\nip = \"10.78.1.9\"\nip6 = \"{FIXED}\"\n\
             [dhcp6]\nenabled = true\nprefix = \"fd00:78::/64\"\npools = [\"fd00:78::1000-fd00:78::1fff\"]\ndns = [\"fd00:78::53\"]\n"
        );
        let cfg = Config::parse(Path::new("diff6.toml"), &text).unwrap();
        Dhcp6Server::new(Params6::from_config(&cfg, "fd00:78::1".parse().unwrap(), netboot::dhcp6::identity::server_duid(SERVER_MAC)))
    }

    fn server_duid() -> Vec<u8> {
        netboot::dhcp6::identity::server_duid(SERVER_MAC)
    }

    /// The frame a client on the link sends `payload` in.
    fn frame(payload: &[u8], src: Ipv6Addr) -> Vec<u8> {
        let dst_mac = MacAddr(ALL_DHCP_AGENTS_MAC);
        Udp6Envelope { src_mac: CLIENT_MAC, dst_mac, src_ip: src, dst_ip: Ipv6Addr::from(ALL_DHCP_AGENTS), src_port: 546, dst_port: 547, hop_limit: 1 }.build(payload)
    }

    fn seed(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dhcp6").join(name)).unwrap()
    }

    /// Edits the options of a message as (code, data) pairs, byte for byte (dhcproto
    /// re-encodes user and vendor classes with wrong lengths).
    fn edit(payload: &[u8], f: impl FnOnce(&mut Vec<(u16, Vec<u8>)>)) -> Vec<u8> {
        let mut opts = Vec::new();
        let mut rest = &payload[4..];
        while rest.len() >= 4 {
            let (code, len) = (u16::from_be_bytes([rest[0], rest[1]]), usize::from(u16::from_be_bytes([rest[2], rest[3]])));
            opts.push((code, rest[4..4 + len].to_vec()));
            rest = &rest[4 + len..];
        }
        f(&mut opts);
        let mut out = payload[..4].to_vec();
        for (code, data) in opts {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    fn without(code: u16) -> impl FnOnce(&mut Vec<(u16, Vec<u8>)>) {
        move |o| o.retain(|(c, _)| *c != code)
    }

    fn with_xid(payload: &[u8], xid: [u8; 3]) -> Vec<u8> {
        let mut p = payload.to_vec();
        p[1..4].copy_from_slice(&xid);
        p
    }

    /// EDK2's PXE SOLICIT, UEFI HTTP boot's, iPXE's (without Rapid Commit), and a REQUEST
    /// naming us.
    fn corpus() -> Vec<(&'static str, Vec<u8>)> {
        let ours = |o: &mut Vec<(u16, Vec<u8>)>| {
            o.retain(|(c, _)| *c != 2);
            o.insert(0, (2, server_duid()));
        };
        vec![
            ("edk2 solicit", seed("01-edk2-solicit")),
            ("http solicit", seed("03-http-solicit")),
            ("ipxe solicit", edit(&seed("02-ipxe-solicit-rapid"), without(14))),
            ("request", edit(&seed("04-request"), ours)),
        ]
    }

    struct Prog6 {
        loaded: netboot::fastpath::Loaded,
        cache: ReplyCache6,
    }

    impl Prog6 {
        fn load() -> Prog6 {
            let mut loaded = netboot::fastpath::Loaded::new().expect("load");
            let cache = ReplyCache6::new(loaded.take_map(maps::REPLY_CACHE6).unwrap()).unwrap();
            Prog6 { loaded, cache }
        }

        fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
            let before = self.loaded.counters().unwrap();
            let r = testrun::run(self.loaded.program_fd(), frame, 1).unwrap();
            (r.action, r.output, self.loaded.counters().unwrap().delta(&before))
        }

        /// The core answers `payload` from the client's link-local; its entry is installed.
        fn learn(&mut self, core: &mut Dhcp6Server, what: &str, payload: &[u8]) {
            let r = core.handle(&Request6 { payload, src: client_ll(), now: NOW }).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let c = r.cacheable.clone().unwrap_or_else(|| panic!("{what}: not cacheable"));
            let (key, entry) = compile6(&r, &c, SERVER_MAC, server_ll(), &server_duid()).unwrap();
            self.cache.install(key, &entry).unwrap();
        }
    }

    #[test]
    fn xdp_dhcpv6_replies_are_byte_identical_to_the_core() {
        if !require_root("xdp_dhcpv6_replies_are_byte_identical_to_the_core") {
            return;
        }
        let mut prog = Prog6::load();
        for (what, payload) in corpus() {
            let mut core = core();
            prog.learn(&mut core, what, &payload);
            // The next one, as a client sends it: a new transaction id.
            let next = with_xid(&payload, [0xab, 0xcd, 0xef]);
            let expected = core.handle(&Request6 { payload: &next, src: client_ll(), now: NOW }).unwrap();
            assert_eq!(expected.to, client_ll());
            let expected = reply_frame(&expected, CLIENT_MAC, SERVER_MAC, server_ll());
            let (action, out, d) = prog.run(&frame(&next, client_ll()));
            assert_eq!(action, testrun::XDP_TX, "{what}: not answered in the kernel: {:?}", d.nonzero());
            assert_eq!(out, expected, "{what}: the kernel's reply differs from the core's");
            assert_eq!(d.get(Counter::Fast6Advertise) + d.get(Counter::Fast6Reply), 1, "{what}");
            prog.cache.forget(CLIENT_MAC);
        }
    }

    #[test]
    fn dhcpv6_requests_the_entry_does_not_describe_go_to_the_agent() {
        if !require_root("dhcpv6_requests_the_entry_does_not_describe_go_to_the_agent") {
            return;
        }
        let mut prog = Prog6::load();
        let mut core = core();
        let solicit = seed("01-edk2-solicit");
        prog.learn(&mut core, "edk2 solicit", &solicit);
        let pass = |prog: &mut Prog6, what: &str, frame: &[u8], counter: Counter| {
            let (action, out, d) = prog.run(frame);
            assert_eq!(action, testrun::XDP_PASS, "{what}");
            assert_eq!(out, frame, "{what}: modified");
            assert_eq!(d.get(counter), 1, "{what}: {:?}", d.nonzero());
        };
        assert_eq!(prog.run(&frame(&solicit, client_ll())).0, testrun::XDP_TX, "the cached client");
        let other_duid = edit(&solicit, |o| {
            o.retain(|(c, _)| *c != 1);
            o.insert(0, (1, vec![0, 4, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6]));
        });
        pass(&mut prog, "another DUID", &frame(&other_duid, client_ll()), Counter::FastMismatch);
        let other_iaid = edit(&solicit, |o| {
            let ia = o.iter_mut().find(|(c, _)| *c == 3).expect("IA_NA");
            ia.1[3] ^= 1;
        });
        pass(&mut prog, "another IAID", &frame(&other_iaid, client_ll()), Counter::FastMismatch);
        pass(&mut prog, "another source", &frame(&solicit, "fe80::1".parse().unwrap()), Counter::FastMismatch);
        let rapid = edit(&solicit, |o| o.push((14, Vec::new())));
        pass(&mut prog, "rapid commit", &frame(&rapid, client_ll()), Counter::FastIneligible);
        let two_ias = edit(&solicit, |o| o.push((3, vec![0, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0, 0])));
        pass(&mut prog, "two IA_NAs", &frame(&two_ias, client_ll()), Counter::FastIneligible);
        let named = edit(&solicit, |o| o.push((2, server_duid())));
        pass(&mut prog, "SOLICIT naming a server", &frame(&named, client_ll()), Counter::FastIneligible);
        let mut f = frame(&solicit, client_ll());
        let last = f.len() - 1;
        f[last] ^= 0x5a; // without fixing the UDP checksum
        pass(&mut prog, "bad UDP checksum", &f, Counter::BadChecksum);
        let mut f = frame(&solicit, client_ll());
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
        pass(&mut prog, "to another host", &f, Counter::FastNotForUs);
        let envelope = netboot::dhcp6::relay::Envelope { hop_count: 0, link: "fd00:78::2".parse().unwrap(), peer: client_ll(), interface_id: None, client_mac: None };
        let mut relayed = netboot::dhcp6::relay::wrap(&[envelope], solicit.clone()).unwrap();
        relayed[0] = netboot::dhcp6::relay::RELAY_FORW;
        let (action, _, d) = prog.run(&frame(&relayed, client_ll()));
        assert_eq!((action, d.get(Counter::Msg6Other)), (testrun::XDP_PASS, 1), "RELAY-FORW is the agent's");
        prog.cache.forget(CLIENT_MAC);
        pass(&mut prog, "forgotten", &frame(&solicit, client_ll()), Counter::CacheMiss);
    }
}

/// The program's aya-log records of its rare exits: none while `FastLimits::log` is 0 (the
/// default), one naming the exit and the sender when it is 1; the common exits (a cached
/// answer, a miss) never log. And the cached answer's cost, with `BPF_PROG_TEST_RUN` timing
/// many runs, is the same with the log off as with it on (the answer does not pass by it).
#[test]
fn rare_exits_are_logged_only_when_switched_on() {
    if !require_root("rare_exits_are_logged_only_when_switched_on") {
        return;
    }
    use aya::maps::Array;
    use netboot_common::cache::FastLimits;
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            self.0.lock().unwrap().push(format!("{} {}", r.level(), r.args()));
        }
        fn flush(&self) {}
    }
    let mut prog = Prog::load();
    let capture = Capture::default();
    let mut logger = prog.loaded.logger(capture.clone()).expect("the object logs through aya-log");
    let mut limits: Array<_, FastLimits> = Array::try_from(prog.loaded.take_map(maps::LIMITS).unwrap()).unwrap();
    let uefi = fixture_frames("uefi-pxe");
    let r = req(uefi[0].clone());
    let core = server(&[(r.mac, Ipv4Addr::new(10, 78, 1, 50))]);
    prog.cache.install(r.mac, &compile(&core, &presentation(&r), SERVER_MAC, NOW)).unwrap();
    let mut cookie = uefi[0].clone();
    cookie[14 + 20 + 8 + 236] ^= 0xff; // the magic cookie: malformed BOOTP
    let mut records = |prog: &mut Prog, frame: &[u8]| {
        prog.run(frame);
        logger.flush();
        std::mem::take(&mut *capture.0.lock().unwrap())
    };

    assert_eq!(records(&mut prog, &cookie), Vec::<String>::new(), "logged while off");
    limits.set(0, FastLimits { log: 1, ..Default::default() }, 0).unwrap();
    let logged = records(&mut prog, &cookie);
    let sender = MacAddr(cookie[6..12].try_into().unwrap()).to_string();
    assert!(logged.len() == 1 && logged[0].starts_with("WARN") && logged[0].contains("malformed_bootp") && logged[0].contains(&sender), "{logged:?}");
    assert_eq!(records(&mut prog, &uefi[0]), Vec::<String>::new(), "a cached answer logged");

    let fd = prog.loaded.program_fd();
    let cost = |limits: &mut Array<_, FastLimits>, log: u32| {
        limits.set(0, FastLimits { log, ..Default::default() }, 0).unwrap();
        let mut ns: Vec<u32> = (0..5).map(|_| testrun::run(fd, &uefi[0], 20_000).unwrap().duration_ns).collect();
        ns.sort();
        ns[2]
    };
    let (off, on) = (cost(&mut limits, 0), cost(&mut limits, 1));
    println!("cached answer: {off} ns with the log off, {on} ns on (median of 5 runs of 20000)");
}
