//! The core against real client captures (tests/fixtures) and hand-made edge cases.

use super::*;
use dhcproto::{Decodable, Decoder};
use crate::config::Config;
use crate::frame::parse_udp;
use std::path::Path;

const NOW: u64 = 1_800_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

fn frames(name: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(format!("{name}.pcap"));
    let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut v = Vec::new();
    while let Some(p) = r.next_packet() {
        v.push(p.unwrap().data.into_owned());
    }
    v
}

fn config(extra: &str) -> Config {
    let text = format!(
        "[server]\naddress = \"10.78.0.1\"\n[dhcp]\nsubnet = \"10.78.0.0/16\"\npools = [\"10.78.1.1-10.78.1.20\"]\nrouter = \"10.78.0.1\"\ndns = [\"10.78.0.53\"]\ndomain = \"lab.example\"\nlease_time = \"1h\"\n{extra}"
    );
    Config::parse(Path::new("test.toml"), &text).unwrap()
}

fn server(cfg: &Config) -> DhcpServer {
    let pools = cfg.dhcp.pools.iter().map(|p| *p.get_ref()).collect();
    DhcpServer::new(ServerParams::from_config(cfg, SERVER), pools, Vec::new())
}

fn handle_frame(s: &mut DhcpServer, frame: &[u8], now: u64) -> Outcome {
    let p = parse_udp(frame).expect("fixture is a UDP frame");
    s.handle(Request {
        payload: p.payload,
        local_port: p.envelope.dst_port,
        src_ip: p.envelope.src_ip,
        src_port: p.envelope.src_port,
        now,
    })
}

fn reply(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn decode(r: &Reply) -> Message {
    Message::decode(&mut Decoder::new(&r.payload)).unwrap()
}

/// The BOOTP file field without its NUL terminator.
fn file(m: &Message) -> Option<&str> {
    m.fname_str().and_then(Result::ok).map(|s| s.trim_end_matches('\0'))
}

fn opt(m: &Message, code: u8) -> Option<Vec<u8>> {
    let bytes = m.to_vec().unwrap();
    raw_option(&bytes, code).map(<[u8]>::to_vec)
}

#[test]
fn dhclient_dora_gets_address_and_network_options() {
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("dhclient");
    let offer = reply(handle_frame(&mut s, &f[0], NOW));
    assert_eq!(offer.kind, MessageType::Offer);
    assert_eq!(offer.class, ClientClass::Plain);
    let m = decode(&offer);
    let ip = m.yiaddr();
    assert!(Pool::contains(&"10.78.1.1-10.78.1.20".parse().unwrap(), ip), "{ip}");
    assert_eq!(offer.commit.len(), 1);
    assert_eq!(offer.commit[0].state, LeaseState::Offered);
    assert_eq!(m.opts().get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0))));
    assert_eq!(m.opts().get(OptionCode::Router), Some(&DhcpOption::Router(vec![SERVER])));
    assert_eq!(m.opts().get(OptionCode::DomainNameServer), Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 78, 0, 53)])));
    assert_eq!(m.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(m.opts().get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(m.opts().get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
    assert_eq!(m.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SERVER)));
    assert!(m.opts().get(OptionCode::BootfileName).is_none(), "plain clients get no boot file");
    assert!(offer.payload.len() >= MIN_BOOTP_LEN);
    // dhclient's broadcast flag is clear and it has no address yet: link unicast.
    assert_eq!(offer.dest, Destination::LinkUnicast { mac: offer.mac, ip });

    // The captured REQUEST asked dnsmasq's address from dnsmasq's server id (10.78.0.1 =
    // us here): requested 10.78.1.78 is outside our pool of 20, so it is NAKed.
    let nak = reply(handle_frame(&mut s, &f[1], NOW + 1));
    assert_eq!(nak.kind, MessageType::Nak);
    assert_eq!(nak.dest, Destination::Broadcast);
}

/// A REQUEST built from the captured one, asking for `ip` from `server_id`.
fn request_for(frame: &[u8], ip: Ipv4Addr, server_id: Option<Ipv4Addr>) -> Vec<u8> {
    let p = parse_udp(frame).unwrap();
    let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    match server_id {
        Some(sid) => m.opts_mut().insert(DhcpOption::ServerIdentifier(sid)),
        None => m.opts_mut().remove(OptionCode::ServerIdentifier),
    };
    m.to_vec().unwrap()
}

fn handle_payload(s: &mut DhcpServer, payload: &[u8], now: u64) -> Outcome {
    s.handle(Request { payload, local_port: 67, src_ip: Ipv4Addr::UNSPECIFIED, src_port: 68, now })
}

#[test]
fn selecting_init_reboot_renew_release_decline() {
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("udhcpc");
    let offer = reply(handle_frame(&mut s, &f[0], NOW));
    let ip = decode(&offer).yiaddr();

    // SELECTING: ours → ACK, lease bound for the lease time.
    let ack = reply(handle_payload(&mut s, &request_for(&f[1], ip, Some(SERVER)), NOW + 1));
    assert_eq!(ack.kind, MessageType::Ack);
    assert_eq!(decode(&ack).yiaddr(), ip);
    assert_eq!(ack.commit[0].state, LeaseState::Bound);
    assert_eq!(ack.commit[0].expires, NOW + 1 + 3600);
    // udhcpc sends 61 = 01:<mac>: echoed (RFC 6842).
    assert!(opt(&decode(&ack), 61).is_some());

    // A second DISCOVER from the same client gets the same address.
    let again = reply(handle_frame(&mut s, &f[0], NOW + 2));
    assert_eq!(decode(&again).yiaddr(), ip);

    // INIT-REBOOT with the right address → ACK; with another, even a free one → NAK
    // (RFC 2131 §4.3.2: the requested address is incorrect).
    assert_eq!(reply(handle_payload(&mut s, &request_for(&f[1], ip, None), NOW + 3)).kind, MessageType::Ack);
    let wrong = Ipv4Addr::new(10, 78, 1, 19);
    assert_eq!(reply(handle_payload(&mut s, &request_for(&f[1], wrong, None), NOW + 4)).kind, MessageType::Nak);
    // Another server chosen: our offer is released, no reply.
    let other = handle_payload(&mut s, &request_for(&f[1], ip, Some(Ipv4Addr::new(10, 78, 0, 2))), NOW + 5);
    assert!(matches!(other, Outcome::Silent { why: Silence::OtherServer, .. }), "{other:?}");

    // RENEWING: ciaddr set, unicast reply to ciaddr.
    let p = parse_udp(&f[1]).unwrap();
    let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
    m.set_ciaddr(ip);
    m.opts_mut().remove(OptionCode::RequestedIpAddress);
    m.opts_mut().remove(OptionCode::ServerIdentifier);
    let renew = reply(handle_payload(&mut s, &m.to_vec().unwrap(), NOW + 10));
    assert_eq!(renew.kind, MessageType::Ack);
    assert_eq!(renew.dest, Destination::Unicast { ip, port: 68 });
    assert_eq!(decode(&renew).ciaddr(), ip);

    // RELEASE frees the address: committed, no reply.
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Release));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    match handle_payload(&mut s, &m.to_vec().unwrap(), NOW + 11) {
        Outcome::Silent { why: Silence::NoReplyDue, commit } => assert_eq!(commit[0].state, LeaseState::Released),
        o => panic!("{o:?}"),
    }

    // DECLINE (of an ACKed address) quarantines: the next DISCOVER does not get it.
    let offer = reply(handle_frame(&mut s, &f[0], NOW + 20));
    let ip = decode(&offer).yiaddr();
    assert_eq!(reply(handle_payload(&mut s, &request_for(&f[1], ip, Some(SERVER)), NOW + 20)).kind, MessageType::Ack);
    let mut d = Message::decode(&mut Decoder::new(&request_for(&f[1], ip, Some(SERVER)))).unwrap();
    d.opts_mut().insert(DhcpOption::MessageType(MessageType::Decline));
    match handle_payload(&mut s, &d.to_vec().unwrap(), NOW + 21) {
        Outcome::Silent { commit, .. } => assert_eq!(commit[0].state, LeaseState::Declined),
        o => panic!("{o:?}"),
    }
    let offer2 = reply(handle_frame(&mut s, &f[0], NOW + 22));
    assert_ne!(decode(&offer2).yiaddr(), ip, "declined address offered again");
}

/// A message from the udhcpc capture with another chaddr (and no client identifier).
fn from_mac(frame: &[u8], mac: [u8; 6], edit: impl FnOnce(&mut Message)) -> Vec<u8> {
    let p = parse_udp(frame).unwrap();
    let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
    m.set_chaddr(&mac);
    m.opts_mut().remove(OptionCode::ClientIdentifier);
    edit(&mut m);
    m.to_vec().unwrap()
}

#[test]
fn requests_of_clients_without_a_record_never_bind_an_address() {
    // Issue 13: an INIT-REBOOT for a free pool address from a MAC never seen got an ACK, so
    // one frame per address bound the whole pool for a lease time.
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("udhcpc");
    for i in 0..100u8 {
        let ip = Ipv4Addr::new(10, 78, 1, 1 + i % 20);
        let reboot = from_mac(&f[1], [2, 0, 0, 9, 0, i], |m| {
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            m.opts_mut().remove(OptionCode::ServerIdentifier);
        });
        match handle_payload(&mut s, &reboot, NOW) {
            Outcome::Silent { why: Silence::NoRecord, commit } => assert!(commit.is_empty()),
            o => panic!("INIT-REBOOT of an unknown client: {o:?}"),
        }
        // RENEWING/REBINDING an address we never gave it: NAK, nothing bound.
        let renew = from_mac(&f[1], [2, 0, 0, 9, 1, i], |m| {
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
            m.opts_mut().remove(OptionCode::RequestedIpAddress);
            m.opts_mut().remove(OptionCode::ServerIdentifier);
            m.set_ciaddr(ip);
        });
        let nak = reply(handle_payload(&mut s, &renew, NOW));
        assert_eq!((nak.kind, nak.commit.len()), (MessageType::Nak, 0));
    }
    assert!(s.leases().iter().all(|l| !l.holds(NOW)), "nothing is held");
}

#[test]
fn no_path_binds_a_pool_address_without_an_offer_counted_against_the_limit() {
    // Issue 26: a SELECTING REQUEST naming us and any free pool address was ACKed for a full
    // lease, and a DISCOVER carrying option 50 was offered that address; neither counted
    // against new_clients_per_s, so one host drained the pool with the limit set.
    let cfg = config("new_clients_per_s = 3");
    let mut s = server(&cfg);
    let f = frames("udhcpc");
    for i in 0..20u8 {
        let ip = Ipv4Addr::new(10, 78, 1, 1 + i);
        let select = from_mac(&f[1], [2, 0, 0, 7, 0, i], |m| {
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        });
        let nak = reply(handle_payload(&mut s, &select, NOW));
        assert_eq!((nak.kind, nak.commit.len()), (MessageType::Nak, 0), "SELECTING for an address never offered");
    }
    assert!(s.leases().iter().all(|l| !l.holds(NOW)), "nothing is held");
    let mut offered = 0;
    for i in 0..20u8 {
        let ip = Ipv4Addr::new(10, 78, 1, 1 + i);
        let discover = from_mac(&f[0], [2, 0, 0, 7, 1, i], |m| {
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        });
        match handle_payload(&mut s, &discover, NOW) {
            Outcome::Reply(r) => {
                assert_eq!(decode(&r).yiaddr(), ip, "an available address asked for is offered");
                offered += 1;
            }
            Outcome::Silent { why, .. } => assert_eq!(why, Silence::NewClientLimited),
        }
    }
    assert_eq!(offered, 3, "option 50 counts like any new client");
    // The offered client's SELECTING REQUEST still binds its offer.
    let select = from_mac(&f[1], [2, 0, 0, 7, 1, 0], |m| {
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 78, 1, 1)));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    });
    assert_eq!(reply(handle_payload(&mut s, &select, NOW)).kind, MessageType::Ack);
}

#[test]
fn only_a_bound_lease_can_be_declined() {
    // Issue 13: DECLINE of an offered address quarantined it, so DISCOVER+DECLINE from one MAC
    // took the whole pool.
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("udhcpc");
    let decline = |ip| {
        move |m: &mut Message| {
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Decline));
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
            m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        }
    };
    for i in 0..40u8 {
        let offer = reply(handle_payload(&mut s, &from_mac(&f[0], [2, 0, 0, 7, 0, 1], |_| {}), NOW + u64::from(i)));
        let ip = decode(&offer).yiaddr();
        match handle_payload(&mut s, &from_mac(&f[0], [2, 0, 0, 7, 0, 1], decline(ip)), NOW + u64::from(i)) {
            Outcome::Silent { why: Silence::DeclineIgnored, commit } => assert!(commit.is_empty()),
            o => panic!("{o:?}"),
        }
    }
    assert!(s.leases().iter().all(|l| l.state != LeaseState::Declined));
    // A client that was ACKed and finds the address in use declines it for real.
    let mac = [2, 0, 0, 7, 0, 2];
    let ip = decode(&reply(handle_payload(&mut s, &from_mac(&f[0], mac, |_| {}), NOW + 50))).yiaddr();
    let req = from_mac(&f[1], mac, |m| {
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    });
    assert_eq!(reply(handle_payload(&mut s, &req, NOW + 51)).kind, MessageType::Ack);
    match handle_payload(&mut s, &from_mac(&f[0], mac, decline(ip)), NOW + 52) {
        Outcome::Silent { why: Silence::NoReplyDue, commit } => assert_eq!(commit[0].state, LeaseState::Declined),
        o => panic!("{o:?}"),
    }
}

#[test]
fn new_clients_per_second_are_limited_and_known_ones_are_not() {
    let cfg = config("new_clients_per_s = 5");
    let mut s = server(&cfg);
    let f = frames("udhcpc");
    let discover = |i: u8| from_mac(&f[0], [2, 0, 0, 8, 0, i], |_| {});
    let mut answered = 0;
    for i in 0..20u8 {
        match handle_payload(&mut s, &discover(i), NOW) {
            Outcome::Reply(_) => answered += 1,
            Outcome::Silent { why, .. } => assert_eq!(why, Silence::NewClientLimited),
        }
    }
    assert_eq!(answered, 5);
    // A client that has its offer is answered again within the same second.
    assert!(matches!(handle_payload(&mut s, &discover(0), NOW), Outcome::Reply(_)));
    // The next second has a new budget.
    assert!(matches!(handle_payload(&mut s, &discover(19), NOW + 1), Outcome::Reply(_)));
}

#[test]
fn boot_answers_per_class_and_architecture() {
    let cfg = config("");
    let mut s = server(&cfg);
    // EDK2 PXE (arch 7, broadcast flag): ipxe.efi by TFTP from us.
    let r = reply(handle_frame(&mut s, &frames("uefi-pxe")[0], NOW));
    assert_eq!((r.class, r.arch), (ClientClass::Pxe, Some(7)));
    let m = decode(&r);
    assert_eq!(file(&m), Some("ipxe.efi"));
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(m.sname_str().and_then(Result::ok).map(|s| s.trim_end_matches('\0')), Some("10.78.0.1"));
    assert_eq!(opt(&m, 67).unwrap(), b"ipxe.efi");
    assert_eq!(opt(&m, 66).unwrap(), b"10.78.0.1");
    assert!(opt(&m, 175).is_none());
    assert_eq!(r.dest, Destination::Broadcast);

    // iPXE (SeaBIOS ROM): the script URL and 175.176 = 1.
    let r = reply(handle_frame(&mut s, &frames("ipxe")[0], NOW));
    assert_eq!(r.class, ClientClass::Ipxe);
    let m = decode(&r);
    assert_eq!(file(&m), Some("http://10.78.0.1:8080/boot.ipxe"));
    assert_eq!(opt(&m, 175).unwrap(), vec![176, 1, 1]);

    // perfdhcp -o 77,69505845 (relayed): iPXE answer unicast to the relay, giaddr kept.
    let r = reply(handle_frame(&mut s, &frames("perfdhcp-ipxe")[0], NOW));
    assert_eq!(r.class, ClientClass::Ipxe);
    assert_eq!(r.dest, Destination::Relay(Ipv4Addr::new(10, 78, 0, 2)));
    assert_eq!(decode(&r).giaddr(), Ipv4Addr::new(10, 78, 0, 2));

    // Architectures from option 93.
    for (arch, name) in [(0u8, "undionly.kpxe"), (6, "ipxe-ia32.efi"), (9, "ipxe.efi"), (11, "ipxe-arm64.efi")] {
        let mut f = frames("uefi-pxe")[0].clone();
        let p = parse_udp(&f).unwrap();
        let off = p.udp_offset + 8;
        let o93 = off + raw_option(p.payload, 93).unwrap().as_ptr() as usize - p.payload.as_ptr() as usize;
        f[o93 + 1] = arch;
        let m = decode(&reply(handle_frame(&mut s, &f, NOW)));
        assert_eq!(file(&m), Some(name), "arch {arch}");
    }
}

#[test]
fn machines_of_a_secure_boot_profile_get_the_signed_shim_and_the_others_ipxe() {
    let frame = frames("uefi-pxe")[0].clone();
    let p = parse_udp(&frame).unwrap();
    let mac = MacAddr(p.payload[28..34].try_into().unwrap());
    let cfg = config(&format!(
        "[[dhcp.host]]\nmac = \"{mac}\"\nip = \"10.78.2.1\"\n[[profile]]\nname = \"signed\"\nsecure_boot = true\nselector = {{ arch = [\"efi-x64\"] }}\n"
    ));
    let mut s = server(&cfg);
    assert_eq!(file(&decode(&reply(handle_frame(&mut s, &frame, NOW)))), Some("shimx64.efi"));
    // The selector asks for UEFI x64: the same machine as a BIOS gets its iPXE ROM loader.
    let mut bios = frame.clone();
    let off = p.udp_offset + 8 + raw_option(p.payload, 93).unwrap().as_ptr() as usize - p.payload.as_ptr() as usize;
    bios[off + 1] = 0;
    assert_eq!(file(&decode(&reply(handle_frame(&mut s, &bios, NOW)))), Some("undionly.kpxe"));
    // A machine no host describes is in no selector's profile.
    let stranger = from_mac(&frame, [0x02, 0, 0, 0, 0, 9], |_| {});
    assert_eq!(file(&decode(&reply(handle_payload(&mut s, &stranger, NOW)))), Some("ipxe.efi"));
}

#[test]
fn http_boot_gets_url_and_httpclient() {
    let cfg = config("");
    let mut s = server(&cfg);
    let mut f = frames("uefi-pxe")[0].clone();
    let p = parse_udp(&f).unwrap();
    let base = p.udp_offset + 8;
    let at = |code| base + raw_option(p.payload, code).unwrap().as_ptr() as usize - p.payload.as_ptr() as usize;
    let (o60, o93) = (at(60), at(93));
    f[o60..o60 + 10].copy_from_slice(b"HTTPClient");
    f[o93 + 1] = 16;
    // The IPv4 header checksum is unchanged (UDP payload edit); parse_udp does not check UDP.
    let r = reply(handle_frame(&mut s, &f, NOW));
    assert_eq!(r.class, ClientClass::Http);
    let m = decode(&r);
    assert_eq!(file(&m), Some("http://10.78.0.1:8080/ipxe.efi"));
    assert_eq!(opt(&m, 60).unwrap(), b"HTTPClient");
}

#[test]
fn reservations_win_and_carry_hostname() {
    let cfg = config("[[dhcp.host]]\nmac = \"52:54:00:00:00:12\"\nip = \"10.78.0.51\"\nhostname = \"node-051\"\n");
    let mut s = server(&cfg);
    let r = reply(handle_frame(&mut s, &frames("uefi-pxe")[0], NOW));
    let m = decode(&r);
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 78, 0, 51));
    assert_eq!(m.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("node-051".into())));
    // The reserved address is never given to another client.
    for _ in 0..25 {
        let r = handle_frame(&mut s, &frames("dhclient")[0], NOW);
        if let Outcome::Reply(r) = r {
            assert_ne!(decode(&r).yiaddr(), Ipv4Addr::new(10, 78, 0, 51));
        }
    }
}

#[test]
fn pool_exhaustion_is_silent_and_expiry_frees() {
    let cfg = config("");
    let mut s = server(&cfg);
    let base = frames("dhclient")[0].clone();
    let p = parse_udp(&base).unwrap();
    let mut given = HashSet::new();
    for i in 0..21u8 {
        let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
        m.set_chaddr(&[2, 0, 0, 0, 1, i]);
        match handle_payload(&mut s, &m.to_vec().unwrap(), NOW) {
            Outcome::Reply(r) => assert!(given.insert(decode(&r).yiaddr()), "address given twice"),
            Outcome::Silent { why, .. } => {
                assert_eq!((i, why), (20, Silence::PoolExhausted));
            }
        }
    }
    assert_eq!(given.len(), 20);
    // Offers are held 60 s; after that the pool is free again.
    let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
    m.set_chaddr(&[2, 0, 0, 0, 1, 99]);
    assert!(matches!(handle_payload(&mut s, &m.to_vec().unwrap(), NOW + OFFER_HOLD_SECS + 1), Outcome::Reply(_)));
}

#[test]
fn proxy_mode_answers_boot_clients_only_without_addresses() {
    // dnsmasq (10.78.0.1 in the captures) owns the addresses; we are 10.78.0.9.
    let text = "[server]\naddress = \"10.78.0.9\"\n[dhcp]\nmode = \"proxy\"\n";
    let cfg = Config::parse(Path::new("p.toml"), text).unwrap();
    let mut s = DhcpServer::new(ServerParams::from_config(&cfg, Ipv4Addr::new(10, 78, 0, 9)), Vec::new(), Vec::new());
    assert!(matches!(handle_frame(&mut s, &frames("dhclient")[0], NOW), Outcome::Silent { why: Silence::ProxyIgnored, .. }));
    let r = reply(handle_frame(&mut s, &frames("uefi-pxe")[0], NOW));
    assert_eq!(r.kind, MessageType::Offer);
    assert!(r.commit.is_empty());
    let m = decode(&r);
    assert!(m.yiaddr().is_unspecified());
    assert_eq!(opt(&m, 60).unwrap(), b"PXEClient");
    assert_eq!(opt(&m, 43).unwrap(), vec![6, 1, 8, 255]);
    assert!(opt(&m, 97).is_some(), "UUID echoed");
    assert!(opt(&m, 51).is_none() && opt(&m, 1).is_none(), "no address options");
    assert_eq!(file(&m), Some("ipxe.efi"));
    // The REQUEST on 67 goes to the address server (dnsmasq's id): ignored.
    assert!(matches!(handle_frame(&mut s, &frames("uefi-pxe")[1], NOW), Outcome::Silent { .. }));
    // The same REQUEST on port 4011 gets an ACK back to its source.
    let uefi = frames("uefi-pxe");
    let p = parse_udp(&uefi[1]).unwrap();
    let r = reply(s.handle(Request { payload: p.payload, local_port: 4011, src_ip: Ipv4Addr::new(10, 78, 1, 7), src_port: 68, now: NOW }));
    assert_eq!(r.kind, MessageType::Ack);
    assert_eq!(r.dest, Destination::Unicast { ip: Ipv4Addr::new(10, 78, 1, 7), port: 68 });
}

#[test]
fn replies_are_deterministic() {
    let cfg = config("");
    let f = frames("ipxe")[0].clone();
    let a = reply(handle_frame(&mut server(&cfg), &f, NOW));
    let b = reply(handle_frame(&mut server(&cfg), &f, NOW));
    assert_eq!(a.payload, b.payload);
}

#[test]
fn an_option_53_of_the_wrong_length_is_not_a_request_and_does_not_panic() {
    // Found by the fuzzer: dhcproto keeps such an option as unknown, and its `msg_type()`
    // then panics.
    let cfg = config("");
    let mut s = server(&cfg);
    let p = parse_udp(&frames("udhcpc")[0]).unwrap().payload.to_vec();
    let at = netboot_common::wire::BOOTP_OPTIONS_OFF;
    for len in [0u8, 2] {
        let mut payload = p[..at].to_vec();
        payload.extend_from_slice(&[53, len]);
        payload.extend(std::iter::repeat_n(1u8, usize::from(len)));
        payload.push(255);
        payload.resize(300, 0);
        let out = handle_payload(&mut s, &payload, NOW);
        assert!(matches!(out, Outcome::Silent { why: Silence::NotARequest | Silence::Malformed, .. }), "length {len}: {out:?}");
    }
}

#[test]
fn garbage_never_panics_and_is_never_answered_as_a_request() {
    let cfg = config("");
    let mut s = server(&cfg);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for name in ["dhclient", "udhcpc", "ipxe", "uefi-pxe", "perfdhcp"] {
        for frame in frames(name) {
            let p = parse_udp(&frame).unwrap();
            for _ in 0..300 {
                let mut b = p.payload.to_vec();
                for _ in 0..1 + next() % 6 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                let cut = (next() as usize) % (b.len() + 1);
                let b = if next() % 4 == 0 { &b[..cut] } else { &b[..] };
                if let Outcome::Reply(r) = handle_payload(&mut s, b, NOW) {
                    assert!(!r.payload.is_empty());
                }
            }
        }
    }
    for junk in [&[][..], &[1u8][..], &[1, 1, 6, 0][..], &[0u8; 240][..], &[2u8; 300][..]] {
        assert!(matches!(handle_payload(&mut s, junk, NOW), Outcome::Silent { .. }));
    }
}

use crate::config::Pool;

#[test]
fn relay_agent_information_is_echoed_verbatim_and_last() {
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("perfdhcp")[0].clone();
    let p = parse_udp(&f).unwrap();
    // Insert option 82 (circuit-id "eth0/1", remote-id 6 bytes) before END.
    let rai: Vec<u8> = vec![1, 6, b'e', b't', b'h', b'0', b'/', b'1', 2, 6, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
    let mut payload = p.payload.to_vec();
    let end = netboot_common::wire::BOOTP_OPTIONS_OFF
        + payload[netboot_common::wire::BOOTP_OPTIONS_OFF..].iter().position(|b| *b == 255).unwrap();
    let mut opt82 = vec![82, rai.len() as u8];
    opt82.extend_from_slice(&rai);
    payload.splice(end..end, opt82);
    let r = reply(handle_payload(&mut s, &payload, NOW));
    assert_eq!(r.dest, Destination::Relay(Ipv4Addr::new(10, 78, 0, 2)));
    assert_eq!(raw_option(&r.payload, 82), Some(&rai[..]));
    // RFC 3046 §2.2: the last option before END.
    let at = r.payload.windows(2 + rai.len()).position(|w| w[0] == 82 && w[2..] == rai[..]).unwrap();
    assert_eq!(r.payload[at + 2 + rai.len()], 255);
}

#[test]
fn a_giaddr_that_is_ours_or_the_subnets_broadcast_or_network_is_not_a_relay() {
    let cfg = config("");
    let mut s = server(&cfg);
    let f = frames("perfdhcp")[0].clone();
    let p = parse_udp(&f).unwrap();
    for (g, answered) in [([10, 78, 0, 2], true), ([10, 78, 255, 255], false), ([10, 78, 0, 0], false), ([10, 78, 0, 1], false)] {
        let mut m = Message::decode(&mut Decoder::new(p.payload)).unwrap();
        m.set_giaddr(Ipv4Addr::from(g));
        match handle_payload(&mut s, &m.to_vec().unwrap(), NOW) {
            Outcome::Reply(r) => assert!(answered, "{g:?}: {:?}", r.dest),
            Outcome::Silent { why, .. } => assert_eq!((answered, why), (false, Silence::UnknownSubnet), "{g:?}"),
        }
    }
}

#[test]
fn tens_of_thousands_of_reservations_from_a_hosts_file() {
    let dir = crate::scratch::ScratchDir::new("hosts");
    let mut csv = String::from("mac,ip,hostname,vars\n");
    for i in 0..30_000u32 {
        let b = i.to_be_bytes();
        csv.push_str(&format!("52:54:00:{:02x}:{:02x}:{:02x},10.78.{}.{},node-{i:05},rack=r{}\n", b[1], b[2], b[3], 100 + i / 250, 1 + i % 250, i / 40));
    }
    std::fs::write(dir.join("hosts.csv"), csv).unwrap();
    std::fs::write(dir.join("n.toml"), "[server]\naddress = \"10.78.0.1\"\n[dhcp]\nsubnet = \"10.78.0.0/16\"\nhosts_file = \"hosts.csv\"\n").unwrap();
    let cfg = Config::load(&dir.join("n.toml")).unwrap();
    assert_eq!(cfg.dhcp.reservations().count(), 30_000);
    let mut s = DhcpServer::new(ServerParams::from_config(&cfg, SERVER), Vec::new(), Vec::new());
    // The EDK2 client as node 29999 (52:54:00:00:75:2f).
    let mut f = frames("uefi-pxe")[0].clone();
    let p = parse_udp(&f).unwrap();
    let chaddr = p.udp_offset + 8 + 28;
    f[chaddr..chaddr + 6].copy_from_slice(&[0x52, 0x54, 0, 0, 0x75, 0x2f]);
    let m = decode(&reply(handle_frame(&mut s, &f, NOW)));
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 78, 219, 250));
    assert_eq!(m.opts().get(OptionCode::Hostname), Some(&DhcpOption::Hostname("node-29999".into())));
}

#[test]
fn kernel_renewals_within_the_slack_stay_in_memory_and_a_restart_holds_the_address_longer() {
    let cfg = config(""); // lease time 1 h: slack 15 min
    let mut s = server(&cfg);
    assert_eq!(s.renewal_slack(), 900);
    let f = frames("udhcpc");
    let ip = decode(&reply(handle_frame(&mut s, &f[0], NOW))).yiaddr();
    let ack = reply(handle_payload(&mut s, &request_for(&f[1], ip, Some(SERVER)), NOW));
    let mac = ack.commit[0].mac;
    let stored = ack.commit[0].clone();

    // iPXE's DORA seconds after the ROM's: renewed in memory, not written.
    let k = s.record_kernel_ack(mac, ip, NOW + 5).unwrap();
    assert!(!k.persist);
    assert_eq!(s.leases().get(ip).unwrap().expires, NOW + 5 + 3600);
    // Still measured against what the store has, however many renewals came in between.
    assert!(!s.record_kernel_ack(mac, ip, NOW + 899).unwrap().persist);
    let k = s.record_kernel_ack(mac, ip, NOW + 900).unwrap();
    assert!(k.persist);
    assert_eq!(k.lease.expires, NOW + 900 + 3600);
    assert!(!s.record_kernel_ack(mac, ip, NOW + 901).unwrap().persist);

    // A reservation the kernel answered before the agent ever recorded it is written.
    let cfg = config("[[dhcp.host]]\nmac = \"02:00:00:00:00:99\"\nip = \"10.78.0.99\"\n");
    let mut r = server(&cfg);
    assert!(r.record_kernel_ack("02:00:00:00:00:99".parse().unwrap(), "10.78.0.99".parse().unwrap(), NOW).unwrap().persist);

    // After a restart from the store (the unwritten renewals lost), the address is held a slack
    // longer than the store says, so never given away before the client's lease ends; a reload
    // does not add the slack again.
    let pools = cfg.dhcp.pools.iter().map(|p| *p.get_ref()).collect();
    let mut restarted = DhcpServer::new(ServerParams::from_config(&config(""), SERVER), pools, vec![stored.clone()]);
    assert_eq!(restarted.leases().get(ip).unwrap().expires, stored.expires + 900);
    let c = config("");
    restarted.reconfigure(ServerParams::from_config(&c, SERVER), c.dhcp.pools.iter().map(|p| *p.get_ref()).collect());
    assert_eq!(restarted.leases().get(ip).unwrap().expires, stored.expires + 900);
    let other = ClientKey::new(MacAddr([2, 0, 0, 0, 0, 0x42]), None);
    assert!(restarted.leases().held_by_other(ip, &other, stored.expires + 899));
    assert!(!restarted.leases().held_by_other(ip, &other, stored.expires + 900));
}
