//! Property tests (proptest) for the parsers that take bytes from the network, beside the
//! mutational fuzzer of `tests::fuzz`: where that one mutates real captures, these generate
//! *structured* inputs (well-formed messages with arbitrary fields and options, then damaged)
//! and check the symmetric properties: what is emitted parses back to itself; what parses
//! re-emits to the same bytes; nothing panics. Each case also runs through the fuzz targets,
//! so one invariant is written once. Case counts are fixed (deterministic in `cargo xtask
//! test`, a fixed seed); a failure shrinks to a minimal input, printed: add it to the fuzz corpus.

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable, Encoder};
use netboot::frame::{UdpEnvelope, parse_udp};
use netboot::mac::MacAddr;
use netboot::tftp::packet::Packet;
use proptest::prelude::*;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use tests::fuzz::Target;

/// `cases` in `cargo xtask test`; under `cargo xtask fuzz` (NETBOOT_FUZZ_SECONDS set) 50 times
/// as many, from proptest's random seed instead of a fixed one.
fn config(cases: u32) -> ProptestConfig {
    let long = std::env::var_os("NETBOOT_FUZZ_SECONDS").is_some();
    ProptestConfig {
        cases: if long { cases * 50 } else { cases },
        rng_seed: if long { proptest::test_runner::RngSeed::Random } else { proptest::test_runner::RngSeed::Fixed(0x6e62_7864) },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- DHCP

fn message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        Just(MessageType::Discover),
        Just(MessageType::Request),
        Just(MessageType::Decline),
        Just(MessageType::Release),
        Just(MessageType::Inform),
        Just(MessageType::Offer),
        Just(MessageType::Ack),
    ]
}

/// An option a boot client may send, with arbitrary contents (`Unknown` carries any code).
fn option() -> impl Strategy<Value = DhcpOption> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| DhcpOption::RequestedIpAddress(Ipv4Addr::from(a))),
        any::<[u8; 4]>().prop_map(|a| DhcpOption::ServerIdentifier(Ipv4Addr::from(a))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(DhcpOption::ClientIdentifier),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| DhcpOption::ParameterRequestList(v.into_iter().map(OptionCode::from).collect())),
        "[ -~]{0,40}".prop_map(DhcpOption::Hostname),
        prop_oneof![Just(b"PXEClient:Arch:00007:UNDI:003016".to_vec()), Just(b"HTTPClient:Arch:00016".to_vec()), proptest::collection::vec(any::<u8>(), 0..40)]
            .prop_map(DhcpOption::ClassIdentifier),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(c, v)| {
            // 0, 53 and 255 are framing (pad, the message type, end): not "unknown".
            let code = if matches!(c, 0 | 53 | 255) { 175 } else { c };
            DhcpOption::Unknown(v4::UnknownOption::new(OptionCode::from(code), v))
        }),
    ]
}

prop_compose! {
    fn dhcp_message()(
        op in prop_oneof![Just(Opcode::BootRequest), Just(Opcode::BootReply)],
        mac in any::<[u8; 6]>(),
        xid in any::<u32>(),
        ciaddr in prop_oneof![Just([0u8; 4]), any::<[u8; 4]>()],
        giaddr in prop_oneof![Just([0u8; 4]), Just([10, 78, 0, 1]), any::<[u8; 4]>()],
        hops in prop_oneof![Just(0u8), any::<u8>()],
        kind in message_type(),
        opts in proptest::collection::vec(option(), 0..12),
        user_class in prop_oneof![Just(None), Just(Some(b"\x04iPXE".to_vec())), proptest::collection::vec(any::<u8>(), 0..12).prop_map(Some)],
        arch in prop_oneof![Just(None), (0u16..0x20).prop_map(Some), any::<u16>().prop_map(Some)],
    ) -> Vec<u8> {
        let mut m = Message::new(Ipv4Addr::from(ciaddr), Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::from(giaddr), &mac);
        m.set_opcode(op).set_xid(xid).set_hops(hops);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        if let Some(uc) = user_class {
            m.opts_mut().insert(DhcpOption::Unknown(v4::UnknownOption::new(OptionCode::from(77), uc)));
        }
        if let Some(a) = arch {
            m.opts_mut().insert(DhcpOption::Unknown(v4::UnknownOption::new(OptionCode::from(93), a.to_be_bytes().to_vec())));
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }
}

/// One lease table across cases (a small pool: exhaustion is reached), as the socket path has.
static DHCP: Mutex<Option<tests::fuzz::Dhcp>> = Mutex::new(None);

fn dhcp_run(input: &[u8]) {
    let mut d = DHCP.lock().unwrap_or_else(|e| e.into_inner());
    d.get_or_insert_with(tests::fuzz::Dhcp::new).run(input);
}

proptest! {
    #![proptest_config(config(20000))]

    /// Well-formed requests of every kind and class: the core's decode reads back what
    /// dhcproto wrote, and the core (authoritative and proxy) answers without panicking with
    /// replies it can decode itself (the fuzz target's checks).
    #[test]
    fn dhcp_messages_decode_and_never_panic_the_core(bytes in dhcp_message()) {
        let decoded = netboot::dhcp::classify::decode(&bytes);
        prop_assert!(decoded.is_some(), "a message dhcproto wrote does not decode");
        prop_assert_eq!(decoded.unwrap().xid(), Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap().xid());
        dhcp_run(&bytes);
    }

    /// The same messages damaged at one place (a length, a byte, the end cut off).
    #[test]
    fn damaged_dhcp_messages_never_panic_the_core(bytes in dhcp_message(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut b = bytes;
        let i = at.index(b.len());
        if cut { b.truncate(i) } else { b[i] = byte }
        dhcp_run(&b);
    }
}

// ---------------------------------------------------------------- frames

prop_compose! {
    fn envelope()(
        src_mac in any::<[u8; 6]>(), dst_mac in any::<[u8; 6]>(),
        vlan in prop_oneof![Just(None), (0u16..4096).prop_map(Some)],
        src_ip in any::<[u8; 4]>(), dst_ip in any::<[u8; 4]>(),
        src_port in any::<u16>(), dst_port in any::<u16>(), ttl in 1u8..,
    ) -> UdpEnvelope {
        UdpEnvelope {
            src_mac: MacAddr(src_mac), dst_mac: MacAddr(dst_mac), vlan,
            src_ip: Ipv4Addr::from(src_ip), dst_ip: Ipv4Addr::from(dst_ip), src_port, dst_port, ttl,
        }
    }
}

proptest! {
    #![proptest_config(config(20000))]

    /// Emit then parse is the identity: envelope and payload come back, the checksum holds.
    #[test]
    fn frames_parse_back_to_what_was_built(env in envelope(), payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let frame = env.build(&payload);
        let p = parse_udp(&frame).expect("a built frame parses");
        prop_assert_eq!(p.envelope, env);
        prop_assert_eq!(p.payload, &payload[..]);
        prop_assert!(netboot::frame::udp_checksum_ok(&frame));
    }

    /// One header byte changed, or the frame cut short: no panic, and whatever parses stays
    /// inside the frame (the fuzz target's check).
    #[test]
    fn damaged_frames_never_panic(env in envelope(), payload in proptest::collection::vec(any::<u8>(), 1..600), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let frame = env.build(&payload);
        let mut hdr = frame.clone();
        hdr[at.index(env.header_len())] = byte;
        tests::fuzz::Frame.run(&hdr);
        tests::fuzz::Frame.run(&frame[..cut.index(frame.len())]);
        // A payload byte changed fails the checksum, except where the right checksum happens to
        // equal the CHECKSUM_PARTIAL form (1 in 65536; the limit SECURITY.md states: such a
        // frame cannot be told from one a local sender left for its offload to finish).
        let at = env.header_len() - 2;
        let stored = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let partial = netboot::frame::partial_checksum(env.src_ip, env.dst_ip, 8 + payload.len());
        let mut body = frame.clone();
        let last = body.len() - 1;
        body[last] = body[last].wrapping_add(1);
        prop_assert!(stored == partial || !netboot::frame::udp_checksum_ok(&body), "a corrupted payload passed the checksum");
    }
}

// ---------------------------------------------------------------- TFTP

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,24}"
}

/// The domain the parser accepts: names lowercased (as it stores them), at most 16 options.
fn tftp_options(min: usize) -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-z]{1,10}", text()), min..6)
}

fn tftp_packet() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<bool>(), "[^\u{0}]{1,24}", prop_oneof![Just("octet".to_string()), Just("netascii".to_string()), "[a-z]{1,10}"], tftp_options(0))
            .prop_map(|(write, file, mode, options)| Packet::Request { write, file, mode, options }.to_vec()),
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..1468)).prop_map(|(block, data)| Packet::Data { block, data: &data }.to_vec()),
        any::<u16>().prop_map(|block| Packet::Ack { block }.to_vec()),
        (0u16..9, text()).prop_map(|(code, message)| Packet::Error { code, message }.to_vec()),
        // An OACK acknowledges at least one option (RFC 2347).
        tftp_options(1).prop_map(|options| Packet::OptionAck { options }.to_vec()),
    ]
}

static TFTP: Mutex<Option<tests::fuzz::Tftp>> = Mutex::new(None);

proptest! {
    #![proptest_config(config(20000))]

    /// Encode then parse then encode is the identity, and every packet goes through a session
    /// as a request and as a packet to a transfer in progress (the fuzz target).
    #[test]
    fn tftp_packets_round_trip_and_never_panic_a_session(bytes in tftp_packet(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let p = Packet::parse(&bytes).expect("an encoded packet parses");
        prop_assert_eq!(p.to_vec(), bytes.clone());
        let mut t = TFTP.lock().unwrap_or_else(|e| e.into_inner());
        // The harness lives in a static (never dropped): one fixed directory, emptied when the
        // harness is made, so that runs do not leave one each behind.
        let t = t.get_or_insert_with(|| tests::fuzz::Tftp::new(&fresh_dir("nbx-proptest-tftp")));
        t.run(&bytes);
        let mut damaged = bytes;
        let i = at.index(damaged.len());
        damaged[i] = byte;
        t.run(&damaged);
    }
}

/// `name` under the temporary directory, emptied of what an earlier run left.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

// ---------------------------------------------------------------- HTTP

fn path() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        Just("boot.ipxe".to_string()),
        Just("vmlinuz".to_string()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("%ff%fe".to_string()),
        Just("api".to_string()),
        Just("v1".to_string()),
        Just("nodes".to_string()),
        "[!-~&&[^/?#]]{0,12}",
    ];
    (proptest::collection::vec(seg, 0..5), prop_oneof![Just(String::new()), "\\?[!-~]{0,30}"]).prop_map(|(s, q)| format!("/{}{q}", s.join("/")))
}

fn http_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![Just("GET"), Just("HEAD"), Just("POST"), Just("PUT"), Just("DELETE"), Just("OPTIONS")];
    let header = prop_oneof![
        "bytes=[0-9]{0,6}-[0-9]{0,6}".prop_map(|v| format!("Range: {v}")),
        "\"[!-~&&[^\"]]{0,16}\"".prop_map(|v| format!("If-None-Match: {v}")),
        "[0-9]{1,4}".prop_map(|v| format!("Content-Length: {v}")),
        "[!-9;-~]{1,12}: [ -~]{0,30}",
    ];
    (method, path(), proptest::collection::vec(header, 0..5), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(m, p, h, body)| {
        let mut r = format!("{m} {p} HTTP/1.1\r\nHost: 10.78.0.1\r\n{}\r\n", h.iter().map(|l| format!("{l}\r\n")).collect::<String>()).into_bytes();
        r.extend_from_slice(&body);
        r
    })
}

static HTTP: Mutex<Option<tests::fuzz::Http>> = Mutex::new(None);

proptest! {
    #![proptest_config(config(3000))]

    /// Requests of every method to boot, file and API paths (traversal and bad escapes among
    /// them) with ranges and conditions: a well-formed HTTP/1.1 response, or a closed
    /// connection, always within 5 s (the fuzz target's checks).
    #[test]
    fn http_requests_get_well_formed_answers(req in http_request()) {
        let mut h = HTTP.lock().unwrap_or_else(|e| e.into_inner());
        h.get_or_insert_with(|| tests::fuzz::Http::new(&fresh_dir("nbx-proptest-http"))).run(&req);
    }
}
