use super::*;
use crate::dhcp6::identity::server_duid;
use crate::dhcp6::relay::{Envelope, forward};
use dhcproto::v6::{ORO, VendorClass};

const SERVER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const HOST_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 7]);

fn config(extra: &str) -> Config {
    let text = format!(
        "[server]\naddress6 = \"fd00:77::1\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n{extra}\n[dhcp6]\nenabled = true\nprefix = \"fd00:77::/64\"\npools = [\"fd00:77::1000-fd00:77::10ff\"]\ndns = [\"fd00:77::53\"]\n\n[[dhcp.host]]\nmac = \"{HOST_MAC}\"\nip = \"10.77.0.7\"\nip6 = \"fd00:77::7\"\n"
    );
    Config::parse(std::path::Path::new("t.toml"), &text).unwrap()
}

fn server(extra: &str) -> Dhcp6Server {
    let ip: Ipv6Addr = "fd00:77::1".parse().unwrap();
    Dhcp6Server::new(Params6::from_config(&config(extra), ip, server_duid(SERVER_MAC)))
}

/// A client message as EDK2's PXEv6 (PxeBcDhcp6.c) or iPXE sends it.
fn message(kind: MessageType, duid: &[u8], iaid: Option<u32>, extra: Vec<DhcpOption>) -> Message {
    let mut m = Message::new_with_id(kind, [1, 2, 3]);
    m.opts_mut().insert(DhcpOption::ClientId(duid.to_vec()));
    if let Some(id) = iaid {
        m.opts_mut().insert(DhcpOption::IANA(IANA { id, t1: 0, t2: 0, opts: Default::default() }));
    }
    for o in extra {
        m.opts_mut().insert(o);
    }
    m
}

fn edk2_options() -> Vec<DhcpOption> {
    vec![
        DhcpOption::ORO(ORO { opts: vec![OptionCode::OptBootfileUrl, OptionCode::Unknown(60), OptionCode::DomainNameServers, OptionCode::VendorClass] }),
        DhcpOption::ClientArchType(vec![dhcproto::v4::Architecture::from(7u16)]),
        class_option(OptionCode::VendorClass, Some(343), &[b"PXEClient:Arch:00007:UNDI:003000"]),
    ]
}

fn handle(s: &mut Dhcp6Server, bytes: &[u8], src: &str, now: u64) -> Result<Reply6, Silence6> {
    s.handle(&Request6 { payload: bytes, src: src.parse().unwrap(), now })
}

fn decode(r: &Reply6) -> Message {
    Message::decode(&mut Decoder::new(&r.payload)).unwrap()
}

fn boot_url(m: &Message) -> Option<String> {
    m.opts().iter().find_map(|o| match o {
        DhcpOption::Unknown(u) if u.code() == OptionCode::OptBootfileUrl => Some(String::from_utf8(u.data().to_vec()).unwrap()),
        _ => None,
    })
}

fn addresses(m: &Message) -> Vec<(u32, Ipv6Addr, u32)> {
    ia_nas(m).flat_map(|ia| ia.opts.iter().filter_map(move |o| match o {
        DhcpOption::IAAddr(a) => Some((ia.id, a.addr, a.valid_life)),
        _ => None,
    })).collect()
}

fn status_of(m: &Message) -> Option<Status> {
    match m.opts().get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => Some(s.status),
        _ => None,
    }
}

const UUID_DUID: [u8; 18] = [0, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

#[test]
fn uefi_pxe_gets_an_address_and_a_tftp_url_in_advertise_and_reply() {
    let mut s = server("");
    let solicit = message(MessageType::Solicit, &UUID_DUID, Some(1), edk2_options()).to_vec().unwrap();
    let adv = handle(&mut s, &solicit, "fe80::1234", 100).unwrap();
    assert_eq!((adv.kind, adv.port, adv.to), (MessageType::Advertise, CLIENT_PORT, "fe80::1234".parse().unwrap()));
    let m = decode(&adv);
    assert_eq!(m.xid(), [1, 2, 3]);
    assert_eq!(m.opts().get(OptionCode::Preference), Some(&DhcpOption::Preference(255)));
    assert_eq!(boot_url(&m).as_deref(), Some("tftp://[fd00:77::1]/ipxe.efi"));
    assert!(m.opts().get(OptionCode::VendorClass).is_none(), "no PXEClient echo: that would make it a BINL offer");
    let offered = addresses(&m);
    assert_eq!(offered.len(), 1);
    assert!(s.params().pools[0].contains(offered[0].1));
    assert_eq!(adv.leases[0].state, Lease6State::Advertised);
    assert!(adv.durable_leases().is_empty(), "an ADVERTISE's hold is not written to the store");

    let mut request = message(MessageType::Request, &UUID_DUID, None, edk2_options());
    request.opts_mut().insert(DhcpOption::ServerId(server_duid(SERVER_MAC)));
    let mut ia = IANA { id: 1, t1: 0, t2: 0, opts: Default::default() };
    ia.opts.insert(DhcpOption::IAAddr(IAAddr { addr: offered[0].1, preferred_life: 0, valid_life: 0, opts: Default::default() }));
    request.opts_mut().insert(DhcpOption::IANA(ia));
    let reply = handle(&mut s, &request.to_vec().unwrap(), "fe80::1234", 101).unwrap();
    let m = decode(&reply);
    assert_eq!(reply.kind, MessageType::Reply);
    assert_eq!(reply.durable_leases().len(), 1, "the REQUEST's binding is");
    assert_eq!(addresses(&m), vec![(1, offered[0].1, 3600)]);
    assert_eq!(boot_url(&m).as_deref(), Some("tftp://[fd00:77::1]/ipxe.efi"), "EDK2 reads boot info from the REPLY");
    assert_eq!(m.opts().get(OptionCode::DomainNameServers), Some(&DhcpOption::DomainNameServers(vec!["fd00:77::53".parse().unwrap()])));
    assert_eq!(reply.leases[0].state, Lease6State::Bound);
    assert_eq!(reply.leases[0].expires, 101 + 3600);
    // The same request again gives the same bytes: replies are deterministic.
    assert_eq!(handle(&mut s, &request.to_vec().unwrap(), "fe80::1234", 101).unwrap().payload, reply.payload);
}

#[test]
fn ipxe_and_http_boot_get_their_urls_and_rapid_commit_binds_at_once() {
    let mut s = server("");
    let ipxe = vec![class_option(OptionCode::UserClass, None, &[b"iPXE"]), DhcpOption::RapidCommit];
    let r = handle(&mut s, &message(MessageType::Solicit, b"\0\x03\0\x01\x52\x54\0\0\0\x09", Some(5), ipxe).to_vec().unwrap(), "fe80::9", 5).unwrap();
    let m = decode(&r);
    assert_eq!(r.kind, MessageType::Reply);
    assert!(m.opts().get(OptionCode::RapidCommit).is_some());
    assert_eq!(boot_url(&m).as_deref(), Some("http://[fd00:77::1]:8080/boot.ipxe"));
    assert_eq!(r.leases[0].state, Lease6State::Bound);
    assert_eq!(r.mac, Some(MacAddr([0x52, 0x54, 0, 0, 0, 9])), "from the DUID-LL");

    let http = vec![
        class_option(OptionCode::VendorClass, Some(343), &[b"HTTPClient:Arch:00016:UNDI:003000"]),
        DhcpOption::ClientArchType(vec![dhcproto::v4::Architecture::from(16u16)]),
    ];
    let r = handle(&mut s, &message(MessageType::Solicit, &UUID_DUID, Some(1), http).to_vec().unwrap(), "fe80::5", 5).unwrap();
    let m = decode(&r);
    assert_eq!(boot_url(&m).as_deref(), Some("http://[fd00:77::1]:8080/ipxe.efi"));
    assert_eq!(m.opts().get(OptionCode::VendorClass), Some(&DhcpOption::VendorClass(VendorClass { num: 343, data: vec![b"HTTPClient".to_vec()] })));
    // A plain client (dhclient -6) gets no boot option.
    let r = handle(&mut s, &message(MessageType::Solicit, b"\0\x01plain", Some(1), vec![]).to_vec().unwrap(), "fe80::6", 5).unwrap();
    assert_eq!(boot_url(&decode(&r)), None);
}

#[test]
fn a_relayed_request_is_answered_in_the_envelope_with_the_reserved_address() {
    let mut s = server("");
    let solicit = message(MessageType::Solicit, &UUID_DUID, Some(3), edk2_options()).to_vec().unwrap();
    let e = Envelope {
        hop_count: 0,
        link: "fd00:99::1".parse().unwrap(),
        peer: "fe80::abcd".parse().unwrap(),
        interface_id: Some(b"ge-0/0/1".to_vec()),
        client_mac: Some(HOST_MAC),
    };
    let r = handle(&mut s, &forward(&e, &solicit).unwrap(), "fd00:99::1", 7).unwrap();
    assert_eq!((r.to, r.port, r.mac), ("fd00:99::1".parse().unwrap(), SERVER_PORT, Some(HOST_MAC)));
    let mut as_forward = r.payload.clone();
    as_forward[0] = relay::RELAY_FORW; // read the reply's envelope with the same view
    let un = relay::unwrap(&as_forward).unwrap();
    assert_eq!(un.envelopes[0].interface_id.as_deref(), Some(&b"ge-0/0/1"[..]));
    let m = Message::decode(&mut Decoder::new(un.message)).unwrap();
    assert_eq!(addresses(&m), vec![(3, "fd00:77::7".parse().unwrap(), 3600)], "the host's ip6, by option 79");
}

#[test]
fn hostile_relay_nests_and_option_trees_get_silence_not_a_panic() {
    let mut s = server("");
    let solicit = message(MessageType::Solicit, &UUID_DUID, Some(3), edk2_options()).to_vec().unwrap();
    let e = |id: Vec<u8>| Envelope { hop_count: 0, link: "fd00:99::1".parse().unwrap(), peer: "fe80::abcd".parse().unwrap(), interface_id: Some(id), client_mac: Some(HOST_MAC) };
    // A relay next to the client with a ~65 KB interface-id (reassembled from fragments),
    // inside another relay's envelope, the whole the largest UDP payload IPv6 carries: the
    // reply is longer than this small SOLICIT, so its inner RELAY-REPL exceeds what the outer
    // option 9 can hold (this panicked the DHCPv6 task).
    let small = message(MessageType::Solicit, &UUID_DUID, Some(3), vec![]).to_vec().unwrap();
    let id_len = 65_527 - 38 - forward(&e(Vec::new()), &small).unwrap().len();
    let inner = forward(&e(vec![b'x'; id_len]), &small).unwrap();
    let hostile = forward(&Envelope { hop_count: 1, interface_id: None, client_mac: None, ..e(Vec::new()) }, &inner).unwrap();
    assert_eq!(hostile.len(), 65_527);
    assert_eq!(handle(&mut s, &hostile, "fd00:99::1", 7).err(), Some(Silence6::TooLarge));
    // A client message whose IA_NA holds IA_NAs five deep: dhcproto would recurse per level.
    let mut nested = Vec::new();
    for _ in 0..5 {
        let mut o = vec![0, 3];
        o.extend_from_slice(&(12 + nested.len() as u16).to_be_bytes());
        o.extend_from_slice(&[0; 12]);
        o.extend_from_slice(&nested);
        nested = o;
    }
    let deep = [&solicit[..], &nested].concat();
    assert_eq!(handle(&mut s, &deep, "fe80::5054:ff:fe00:7", 7).err(), Some(Silence6::Malformed));
    // A client message carrying a relay message (only relays may).
    let with_relay_msg = [&solicit[..], &[0, 9, 0, 4, 1, 0, 0, 1]].concat();
    assert_eq!(handle(&mut s, &with_relay_msg, "fe80::5054:ff:fe00:7", 7).err(), Some(Silence6::Malformed));
    // And the server still answers.
    assert!(handle(&mut s, &forward(&e(b"ge-0/0/1".to_vec()), &solicit).unwrap(), "fd00:99::1", 8).is_ok());
}

#[test]
fn renew_release_decline_confirm_and_information_request() {
    let mut s = server("");
    let duid = b"\0\x01client";
    let r = handle(&mut s, &message(MessageType::Solicit, duid, Some(1), vec![DhcpOption::RapidCommit]).to_vec().unwrap(), "fe80::1", 10).unwrap();
    let ip = r.leases[0].ip;
    let with = |kind: MessageType, ip: Ipv6Addr, sid: bool| {
        let mut m = message(kind, duid, None, vec![]);
        if sid {
            m.opts_mut().insert(DhcpOption::ServerId(server_duid(SERVER_MAC)));
        }
        let mut ia = IANA { id: 1, t1: 0, t2: 0, opts: Default::default() };
        ia.opts.insert(DhcpOption::IAAddr(IAAddr { addr: ip, preferred_life: 0, valid_life: 0, opts: Default::default() }));
        m.opts_mut().insert(DhcpOption::IANA(ia));
        m.to_vec().unwrap()
    };
    // RENEW extends; RENEW without a server id, or for another server, is discarded.
    let r = handle(&mut s, &with(MessageType::Renew, ip, true), "fe80::1", 1000).unwrap();
    assert_eq!(r.leases[0].expires, 1000 + 3600);
    assert_eq!(handle(&mut s, &with(MessageType::Renew, ip, false), "fe80::1", 1000), Err(Silence6::ServerIdRule));
    let mut other = message(MessageType::Renew, duid, Some(1), vec![]);
    other.opts_mut().insert(DhcpOption::ServerId(b"\0\x03\0\x01another".to_vec()));
    assert_eq!(handle(&mut s, &other.to_vec().unwrap(), "fe80::1", 1000), Err(Silence6::NotForUs));
    // REBIND of a foreign address: lifetime 0.
    let r = handle(&mut s, &with(MessageType::Rebind, "2001:db8::1".parse().unwrap(), false), "fe80::1", 1000).unwrap();
    assert_eq!(addresses(&decode(&r)), vec![(1, "2001:db8::1".parse().unwrap(), 0)]);
    // CONFIRM: on link, or not.
    assert_eq!(status_of(&decode(&handle(&mut s, &with(MessageType::Confirm, ip, false), "fe80::1", 1000).unwrap())), Some(Status::Success));
    let r = handle(&mut s, &with(MessageType::Confirm, "2001:db8::1".parse().unwrap(), false), "fe80::1", 1000).unwrap();
    assert_eq!(status_of(&decode(&r)), Some(Status::NotOnLink));
    // DECLINE from another client does not quarantine this one's address...
    let mut foreign = with(MessageType::Decline, ip, true);
    let pos = foreign.windows(8).position(|w| w == b"\0\x01client").unwrap();
    foreign[pos + 2] = b'C';
    handle(&mut s, &foreign, "fe80::2", 1000).unwrap();
    assert_eq!(s.leases().get(ip).unwrap().state, Lease6State::Bound);
    // ...RELEASE frees it.
    let r = handle(&mut s, &with(MessageType::Release, ip, true), "fe80::1", 1001).unwrap();
    assert_eq!(status_of(&decode(&r)), Some(Status::Success));
    assert!(!s.leases().get(ip).unwrap().holds(1001));
    // RENEW after the release: no binding.
    let r = handle(&mut s, &with(MessageType::Renew, ip, true), "fe80::1", 1002).unwrap();
    assert!(addresses(&decode(&r)).is_empty());
    // INFORMATION-REQUEST: options only; with an IA it is discarded.
    let r = handle(&mut s, &message(MessageType::InformationRequest, duid, None, vec![class_option(OptionCode::UserClass, None, &[b"iPXE"])]).to_vec().unwrap(), "fe80::1", 5).unwrap();
    assert_eq!(boot_url(&decode(&r)).as_deref(), Some("http://[fd00:77::1]:8080/boot.ipxe"));
    assert_eq!(handle(&mut s, &with(MessageType::InformationRequest, ip, false), "fe80::1", 5), Err(Silence6::IaInInformationRequest));
}

#[test]
fn discarded_messages_and_the_ignore_policy() {
    let mut s = server("unknown = \"ignore\"");
    let solicit = |duid: &[u8]| message(MessageType::Solicit, duid, Some(1), vec![]).to_vec().unwrap();
    assert_eq!(handle(&mut s, &solicit(b"\0\x01stranger"), "fe80::1", 1), Err(Silence6::UnknownClient));
    // The host, known by the EUI-64 of its link-local source.
    let r = handle(&mut s, &solicit(&UUID_DUID), "fe80::5054:ff:fe00:7", 1).unwrap();
    assert_eq!(addresses(&decode(&r))[0].1, "fd00:77::7".parse::<Ipv6Addr>().unwrap());
    let mut no_id = Message::new(MessageType::Solicit);
    no_id.opts_mut().insert(DhcpOption::IANA(IANA { id: 1, t1: 0, t2: 0, opts: Default::default() }));
    assert_eq!(handle(&mut s, &no_id.to_vec().unwrap(), "fe80::5054:ff:fe00:7", 1), Err(Silence6::NoClientId));
    let adv = Message::new(MessageType::Advertise).to_vec().unwrap();
    assert_eq!(handle(&mut s, &adv, "fe80::1", 1), Err(Silence6::NotARequest));
    for n in 0..solicit(&UUID_DUID).len() {
        let _ = handle(&mut s, &solicit(&UUID_DUID)[..n], "fe80::1", 1);
    }
}


#[test]
fn every_client_with_a_mac_is_seen_for_discovery_even_when_ignored() {
    let mut s = server("unknown = \"ignore\"");
    let solicit = message(MessageType::Solicit, &UUID_DUID, Some(1), edk2_options()).to_vec().unwrap();
    assert_eq!(handle(&mut s, &solicit, "fe80::5054:ff:fe12:3456", 1), Err(Silence6::UnknownClient));
    let seen = s.take_sightings();
    assert_eq!(seen.len(), 1);
    let x = &seen[0];
    assert_eq!((x.mac, x.class, x.arch, x.known), (MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]), ClientClass::Pxe, Some(7), false));
    assert_eq!(x.vendor_class.as_deref(), Some("PXEClient:Arch:00007:UNDI:003000"));
    assert_eq!(x.uuid.as_deref(), Some("03020100-0504-0706-0809-0a0b0c0d0e0f"), "the DUID-UUID, as option 97 shows it");
    assert!(s.take_sightings().is_empty());
}

#[test]
fn a_message_packed_with_ias_gets_a_bounded_answer_even_through_a_relay() {
    let mut s = server("");
    let mut m = message(MessageType::Solicit, &UUID_DUID, None, vec![DhcpOption::RapidCommit]);
    for id in 0..3000 {
        let mut ia = IANA { id, t1: 0, t2: 0, opts: Default::default() };
        for k in 0..3u16 {
            ia.opts.insert(DhcpOption::IAAddr(IAAddr { addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, k, 1), preferred_life: 0, valid_life: 0, opts: Default::default() }));
        }
        m.opts_mut().insert(DhcpOption::IANA(ia));
    }
    let bytes = m.to_vec().unwrap();
    let e = Envelope { hop_count: 0, link: "fd00:99::1".parse().unwrap(), peer: "fe80::1".parse().unwrap(), interface_id: None, client_mac: None };
    let relayed = [&[relay::RELAY_FORW, 0][..], &e.link.octets(), &e.peer.octets(), &9u16.to_be_bytes(), &(bytes.len().min(65535) as u16).to_be_bytes(), &bytes[..bytes.len().min(65535)]].concat();
    for (payload, src) in [(&bytes, "fe80::1"), (&relayed, "fd00:99::1")] {
        if let Ok(r) = handle(&mut s, payload, src, 9) {
            assert!(r.leases.len() <= MAX_IAS && r.payload.len() < 2048, "{} bindings, {} bytes", r.leases.len(), r.payload.len());
        }
    }
    assert!(s.leases().len() <= MAX_IAS);
}

#[test]
fn new_clients_per_second_are_limited_and_known_ones_are_not() {
    let mut s = server("new_clients_per_s = 2");
    let now = 1_800_000_000;
    let solicit = |n: u8| message(MessageType::Solicit, &[0, 3, 0, 1, 2, 0, 0, 0, 9, n], Some(1), edk2_options()).to_vec().unwrap();
    let from = "fe80::1";
    assert!(handle(&mut s, &solicit(1), from, now).is_ok());
    assert!(handle(&mut s, &solicit(2), from, now).is_ok());
    assert_eq!(handle(&mut s, &solicit(3), from, now).err(), Some(Silence6::NewClientLimited), "the third new client this second");
    // A client that has its address, and a host with a fixed one, are not new clients.
    assert!(handle(&mut s, &solicit(1), from, now).is_ok());
    let host = message(MessageType::Solicit, &[0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 7], Some(1), edk2_options()).to_vec().unwrap();
    assert_eq!(addresses(&decode(&handle(&mut s, &host, from, now).unwrap()))[0].1, "fd00:77::7".parse::<Ipv6Addr>().unwrap());
    // The next second has room again.
    assert!(handle(&mut s, &solicit(3), from, now + 1).is_ok());
}

#[test]
fn a_client_over_per_client_pps_gets_silence_and_others_do_not() {
    // Issue 26: the v6 path had no per-client limit.
    let mut s = server("per_client_pps = 5");
    let now = 1_800_000_000;
    let solicit = message(MessageType::Solicit, &UUID_DUID, Some(1), edk2_options()).to_vec().unwrap();
    let answered = (0..12).filter(|_| handle(&mut s, &solicit, "fe80::5054:ff:fe00:99", now).is_ok()).count();
    assert_eq!(answered, 5);
    assert_eq!(handle(&mut s, &solicit, "fe80::5054:ff:fe00:99", now).err(), Some(Silence6::RateLimited));
    assert!(handle(&mut s, &solicit, "fe80::5054:ff:fe00:98", now).is_ok(), "another source is another client");
    // Behind a relay, each client is the relay's peer address.
    let e = |peer: &str| Envelope { hop_count: 0, link: "fd00:99::1".parse().unwrap(), peer: peer.parse().unwrap(), interface_id: None, client_mac: None };
    for _ in 0..5 {
        assert!(handle(&mut s, &forward(&e("fe80::a"), &solicit).unwrap(), "fd00:99::1", now).is_ok());
    }
    assert_eq!(handle(&mut s, &forward(&e("fe80::a"), &solicit).unwrap(), "fd00:99::1", now).err(), Some(Silence6::RateLimited));
    assert!(handle(&mut s, &forward(&e("fe80::b"), &solicit).unwrap(), "fd00:99::1", now).is_ok());
    assert!(handle(&mut s, &solicit, "fe80::5054:ff:fe00:99", now + 1).is_ok(), "the next second");
}
