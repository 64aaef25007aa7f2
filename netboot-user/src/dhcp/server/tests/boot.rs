//! What each client class is booted with, proxy mode, relays, reservations and scale.

use super::*;

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
