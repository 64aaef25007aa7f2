//! The core against real client captures (tests/fixtures) and hand-made edge cases: the RFC
//! 2131 states here, the boot answers, relays, reservations and scale in [`boot`].

mod boot;

use super::*;
use dhcproto::{Decodable, Decoder};
use crate::config::{Config, Pool};
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
