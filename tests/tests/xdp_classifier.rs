//! The XDP program under `BPF_PROG_TEST_RUN`: real client captures are classified as DESIGN.md
//! §2 says, and nothing (truncated, mutated, malformed) is ever answered or crashes.

use netboot::fastpath::{Counters, Loaded, testrun};
use netboot_common::{Counter, counter::OUTCOMES};
use tests::{XorShift, find_option, fixture_frames, off, require_root};

struct Prog(Loaded);

impl Prog {
    fn load() -> Prog {
        Prog(Loaded::new().expect("load XDP object"))
    }

    /// Runs one frame; returns the action, whether the frame was left as it was, and the
    /// counters it moved.
    fn run(&mut self, frame: &[u8]) -> (u32, bool, Counters) {
        let before = self.0.counters().unwrap();
        let fd = self.0.program_fd();
        let r = testrun::run(fd, frame, 1).expect("BPF_PROG_TEST_RUN");
        let after = self.0.counters().unwrap();
        (r.action, r.output == frame, after.delta(&before))
    }
}

#[derive(Debug)]
struct Expect {
    msg: Counter,
    class: Counter,
    arch: Counter,
    relayed: bool,
}

const fn expect(msg: Counter, class: Counter, arch: Counter, relayed: bool) -> Expect {
    Expect { msg, class, arch, relayed }
}

/// Asserts the frame is passed untouched and counted as exactly this classification.
fn assert_classified(p: &mut Prog, what: &str, frame: &[u8], e: &Expect) {
    let (action, same, d) = p.run(frame);
    assert_eq!(action, testrun::XDP_PASS, "{what}: action");
    assert!(same, "{what}: frame modified");
    assert_eq!(d.get(Counter::Packets), 1, "{what}");
    assert_eq!(d.get(Counter::XdpPass), 1, "{what}");
    for c in OUTCOMES {
        assert_eq!(d.get(*c), u64::from(*c == e.msg), "{what}: outcome {} in {:?}", c.name(), d.nonzero());
    }
    for c in [Counter::ClassIpxe, Counter::ClassHttp, Counter::ClassPxe, Counter::ClassPlain] {
        assert_eq!(d.get(c), u64::from(c == e.class), "{what}: {} in {:?}", c.name(), d.nonzero());
    }
    assert_eq!(d.get(e.arch), 1, "{what}: {} in {:?}", e.arch.name(), d.nonzero());
    assert_eq!(d.get(Counter::Relayed), u64::from(e.relayed), "{what}: relayed");
}

/// Asserts the frame is passed untouched, not classified, and counted under `outcome`.
fn assert_rejected(p: &mut Prog, what: &str, frame: &[u8], outcome: Counter) {
    let (action, same, d) = p.run(frame);
    assert_eq!(action, testrun::XDP_PASS, "{what}: action");
    assert!(same, "{what}: frame modified");
    for c in OUTCOMES {
        assert_eq!(d.get(*c), u64::from(*c == outcome), "{what}: outcome {} in {:?}", c.name(), d.nonzero());
    }
}

#[test]
fn real_client_captures_are_classified() {
    if !require_root("real_client_captures_are_classified") {
        return;
    }
    use Counter::*;
    let table: &[(&str, usize, Expect)] = &[
        ("dhclient", 0, expect(MsgDiscover, ClassPlain, ArchNone, false)),
        ("dhclient", 1, expect(MsgRequest, ClassPlain, ArchNone, false)),
        // udhcpc sends option 60 "udhcp 1.35.0": neither PXEClient nor HTTPClient.
        ("udhcpc", 0, expect(MsgDiscover, ClassPlain, ArchNone, false)),
        ("udhcpc", 1, expect(MsgRequest, ClassPlain, ArchNone, false)),
        ("perfdhcp", 0, expect(MsgDiscover, ClassPlain, ArchNone, true)),
        ("perfdhcp-ipxe", 0, expect(MsgDiscover, ClassIpxe, ArchNone, true)),
        // iPXE (QEMU's NIC ROM under SeaBIOS): user class iPXE, option 175, PXEClient, arch 0.
        // Frames 0 and 1 are the first DISCOVER and its retry (no OFFER carried 175.176 = 1, so
        // iPXE waited for ProxyDHCP offers), frame 2 the REQUEST.
        ("ipxe", 0, expect(MsgDiscover, ClassIpxe, ArchBios, false)),
        ("ipxe", 1, expect(MsgDiscover, ClassIpxe, ArchBios, false)),
        ("ipxe", 2, expect(MsgRequest, ClassIpxe, ArchBios, false)),
        // OVMF's own EDK2 PXE client: PXEClient:Arch:00007, option 93 = 7.
        ("uefi-pxe", 0, expect(MsgDiscover, ClassPxe, ArchEfiX64, false)),
        ("uefi-pxe", 1, expect(MsgRequest, ClassPxe, ArchEfiX64, false)),
    ];
    let mut p = Prog::load();
    for (name, idx, e) in table {
        let frames = fixture_frames(name);
        assert_classified(&mut p, &format!("{name}[{idx}]"), &frames[*idx], e);
    }
    // The OFFER dnsmasq sent to perfdhcp's relay port is a BOOTREPLY on port 67.
    assert_rejected(&mut p, "perfdhcp[1] (server reply)", &fixture_frames("perfdhcp")[1], BootReply);
}

/// Variants of real captures that keep every length: each isolates one rule of the classifier.
#[test]
fn classifier_rules_on_edited_captures() {
    if !require_root("classifier_rules_on_edited_captures") {
        return;
    }
    use Counter::*;
    let mut p = Prog::load();
    let ipxe = fixture_frames("ipxe")[0].clone();
    let uefi = fixture_frames("uefi-pxe")[0].clone();
    let dhclient = fixture_frames("dhclient")[0].clone();
    const UNUSED: u8 = 224; // a site-specific option code the classifier ignores

    // Option 175 alone makes a client iPXE.
    let mut f = ipxe.clone();
    let (o77, _) = find_option(&f, 77).unwrap();
    f[o77] = UNUSED;
    assert_classified(&mut p, "ipxe without 77", &f, &expect(MsgDiscover, ClassIpxe, ArchBios, false));
    // Without 77 and 175, iPXE's PXEClient vendor class makes it PXE.
    let (o175, _) = find_option(&f, 175).unwrap();
    f[o175] = UNUSED;
    assert_classified(&mut p, "ipxe without 77/175", &f, &expect(MsgDiscover, ClassPxe, ArchBios, false));
    // User class "iPXE" under another code does not count; option 77 "iPXX" is not iPXE.
    let mut f = ipxe.clone();
    let (o175, _) = find_option(&f, 175).unwrap();
    f[o175] = UNUSED;
    f[o77 + 2 + 3] = b'X';
    assert_classified(&mut p, "user class iPXX", &f, &expect(MsgDiscover, ClassPxe, ArchBios, false));

    // UEFI HTTP boot: option 60 starts with HTTPClient, arch 16.
    let mut f = uefi.clone();
    let (o60, _) = find_option(&f, 60).unwrap();
    f[o60 + 2..o60 + 12].copy_from_slice(b"HTTPClient");
    let (o93, _) = find_option(&f, 93).unwrap();
    f[o93 + 3] = 16;
    assert_classified(&mut p, "http boot", &f, &expect(MsgDiscover, ClassHttp, ArchHttpX64, false));
    // Architectures by option 93, not by the option 60 string.
    for (arch, counter) in [(0u8, ArchBios), (6, ArchEfiIa32), (9, ArchEfiX64), (11, ArchEfiArm64), (19, ArchHttpArm64), (42, ArchOther)] {
        let mut f = uefi.clone();
        f[o93 + 3] = arch;
        assert_classified(&mut p, &format!("arch {arch}"), &f, &expect(MsgDiscover, ClassPxe, counter, false));
    }
    // Option 93 alone (no PXEClient) is PXE.
    let mut f = uefi.clone();
    f[o60] = UNUSED;
    assert_classified(&mut p, "arch without vendor class", &f, &expect(MsgDiscover, ClassPxe, ArchEfiX64, false));

    // One 802.1Q tag is parsed through and counted.
    let mut tagged = uefi[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
    tagged.extend_from_slice(&uefi[12..]);
    let (_, _, d) = p.run(&tagged);
    assert_eq!(d.get(VlanTagged), 1);
    assert_classified(&mut p, "vlan 42", &tagged, &expect(MsgDiscover, ClassPxe, ArchEfiX64, false));

    // Rejections, each with its counter.
    let edit = |base: &[u8], at: usize, v: u8| {
        let mut f = base.to_vec();
        f[at] = v;
        f
    };
    assert_rejected(&mut p, "IPv6 ethertype", &edit(&dhclient, off::ETHERTYPE, 0x86), NotDhcp);
    assert_rejected(&mut p, "TCP", &edit(&dhclient, off::IP + 9, 6), NotDhcp);
    assert_rejected(&mut p, "to port 68", &edit(&dhclient, off::UDP + 3, 68), NotDhcp);
    assert_rejected(&mut p, "IP version 6 in an IPv4 frame", &edit(&dhclient, off::IP, 0x65), MalformedIp);
    assert_rejected(&mut p, "IHL 4", &edit(&dhclient, off::IP, 0x44), MalformedIp);
    assert_rejected(&mut p, "IP options", &edit(&dhclient, off::IP, 0x46), Unsupported);
    assert_rejected(&mut p, "more fragments", &edit(&dhclient, off::IP + 6, 0x20), MalformedIp);
    assert_rejected(&mut p, "IP length beyond frame", &edit(&dhclient, off::IP + 2, 0x05), Truncated);
    assert_rejected(&mut p, "UDP length beyond IP", &edit(&dhclient, off::UDP + 4, 0x05), Truncated);
    assert_rejected(&mut p, "htype 6", &edit(&dhclient, off::BOOTP + 1, 6), MalformedBootp);
    assert_rejected(&mut p, "hlen 16", &edit(&dhclient, off::BOOTP + 2, 16), MalformedBootp);
    assert_rejected(&mut p, "bad cookie", &edit(&dhclient, off::BOOTP + 236, 0), MalformedBootp);
    let (o53, _) = find_option(&dhclient, 53).unwrap();
    assert_rejected(&mut p, "no message type", &edit(&dhclient, o53, UNUSED), MalformedOptions);
    assert_rejected(&mut p, "message type length 2", &edit(&dhclient, o53 + 1, 2), MalformedOptions);
    let (o12, _) = find_option(&dhclient, 12).unwrap();
    assert_rejected(&mut p, "option overrunning the area", &edit(&dhclient, o12 + 1, 250), MalformedOptions);
    assert_rejected(&mut p, "option overload (52)", &edit(&dhclient, o12, 52), Unsupported);
    let end = dhclient.iter().rposition(|b| *b == 255).unwrap();
    assert_rejected(&mut p, "no END", &edit(&dhclient, end, 0), MalformedOptions);
    let (o93, _) = find_option(&uefi, 93).unwrap();
    assert_rejected(&mut p, "arch of odd length", &edit(&uefi, o93 + 1, 3), MalformedOptions);
}

/// Every prefix of every capture: passed untouched, exactly one outcome, and no prefix that cuts
/// into the DHCP message is classified.
#[test]
fn truncated_frames_are_counted_never_answered() {
    if !require_root("truncated_frames_are_counted_never_answered") {
        return;
    }
    let mut p = Prog::load();
    for name in ["dhclient", "udhcpc", "perfdhcp-ipxe", "ipxe", "uefi-pxe"] {
        for (i, frame) in fixture_frames(name).iter().enumerate() {
            let ip_end = off::IP + u16::from_be_bytes([frame[off::IP + 2], frame[off::IP + 3]]) as usize;
            // BPF_PROG_TEST_RUN needs at least an Ethernet header.
            for len in 14..frame.len() {
                let (action, same, d) = p.run(&frame[..len]);
                assert_eq!(action, testrun::XDP_PASS, "{name}[{i}] cut at {len}");
                assert!(same, "{name}[{i}] cut at {len}: modified");
                let outcomes: u64 = OUTCOMES.iter().map(|c| d.get(*c)).sum();
                assert_eq!(outcomes, 1, "{name}[{i}] cut at {len}: {:?}", d.nonzero());
                if len < ip_end {
                    let classified = d.get(Counter::MsgDiscover) + d.get(Counter::MsgRequest);
                    assert_eq!(classified, 0, "{name}[{i}] cut at {len} was classified: {:?}", d.nonzero());
                }
            }
        }
    }
}

/// Random byte edits of real captures: never anything but XDP_PASS of the unmodified frame,
/// and always exactly one outcome counted.
#[test]
fn mutated_frames_are_passed_and_counted() {
    if !require_root("mutated_frames_are_passed_and_counted") {
        return;
    }
    let mut p = Prog::load();
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let mut seen = std::collections::BTreeSet::new();
    for name in ["dhclient", "udhcpc", "perfdhcp", "ipxe", "uefi-pxe"] {
        for frame in fixture_frames(name) {
            for _ in 0..400 {
                let mut f = frame.clone();
                for _ in 0..1 + rng.below(4) {
                    // Bias edits towards the headers and the first options, where decisions are.
                    let at = if rng.below(2) == 0 { rng.below(f.len()) } else { rng.below(f.len().min(320)) };
                    f[at] = rng.next_u64() as u8;
                }
                let (action, same, d) = p.run(&f);
                assert_eq!(action, testrun::XDP_PASS);
                assert!(same);
                let hit: Vec<_> = OUTCOMES.iter().filter(|c| d.get(**c) == 1).collect();
                assert_eq!(hit.len(), 1, "{name}: {:?}", d.nonzero());
                seen.insert(hit[0].name());
            }
        }
    }
    // The mutations reached deep enough to exercise several outcomes.
    assert!(seen.len() >= 5, "outcomes seen: {seen:?}");
}
