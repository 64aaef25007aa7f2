//! Per-node boot timelines: what each machine did, when, along the boot chain of DESIGN.md §2
//! (firmware DHCP → TFTP → iPXE DHCP → script → files). Fed by the DHCP service (its own
//! replies and the kernel's ACK events), the TFTP engine and the HTTP layer; served at
//! `/api/v1/nodes`. It answers the operator's question in a storm: which machines are stuck,
//! and where.
//!
//! Nodes are keyed by MAC. TFTP and HTTP see only an address: it is mapped to the MAC the DHCP
//! service gave it to, else to the MAC the kernel's neighbour table has for it.

use crate::iface::NeighborCache;
use crate::mac::MacAddr;
use netboot_common::wire::ClientClass;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

/// Nodes kept at most: beyond this the least recently active [`EVICT_BATCH`] go (counted), so
/// memory stays bounded whatever a storm or a scan sends, and a flood of invented MACs cannot
/// keep the real machines that come after it off the timelines.
pub const MAX_NODES: usize = 200_000;
/// Nodes evicted at once when [`MAX_NODES`] is reached (one sort per batch, not a scan per node).
pub const EVICT_BATCH: usize = MAX_NODES / 100;
/// Longest file name or path kept in an event (clients choose them).
pub const MAX_NAME: usize = 256;
/// Events kept per node: the first ones (the boot chain) and the most recent ones (renewals).
pub const MAX_EVENTS: usize = 48;
const KEEP_FIRST: usize = 16;

/// Which path answered a DHCP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = AnswerPath)]
pub enum Path {
    Kernel,
    Agent,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Kernel => "kernel",
            Path::Agent => "agent",
        }
    }
}

/// How a TFTP read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TftpOutcome {
    /// Every block acknowledged.
    Complete,
    /// The client asked for the options (`tsize`) and stopped, as EDK2 does before it reads.
    SizeProbe,
    /// Given up (timeouts, an error from the client mid-transfer).
    Failed,
}

/// One step of a node's boot.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Milestone {
    /// DHCP of the firmware or OS (PXE ROM, UEFI PXE or HTTP boot, plain client).
    Dhcp {
        kind: &'static str,
        class: &'static str,
        arch: Option<u16>,
        #[schema(value_type = String, format = Ipv4)]
        ip: Ipv4Addr,
        path: Path,
    },
    /// DHCP of iPXE (user class "iPXE" or option 175).
    IpxeDhcp {
        kind: &'static str,
        arch: Option<u16>,
        #[schema(value_type = String, format = Ipv4)]
        ip: Ipv4Addr,
        path: Path,
    },
    /// A DHCPv6 answer ("advertise", "reply") and the address it gives.
    Dhcp6 {
        kind: &'static str,
        class: &'static str,
        arch: Option<u16>,
        #[schema(value_type = Option<String>, format = Ipv6)]
        ip: Option<Ipv6Addr>,
        path: Path,
    },
    /// A TFTP read, finished, probed or abandoned.
    Tftp { file: String, blksize: u16, windowsize: u16, bytes: u64, ms: u64, retransmits: u64, outcome: TftpOutcome },
    /// The iPXE script was served.
    Script { status: u16, known: bool },
    /// A file under `http.root` was requested.
    File { path: String, status: u16, bytes: Option<u64>, ms: u64 },
    /// The node's installer phoned home (`installed`, `failed`).
    Event { event: String, message: String },
}

impl Milestone {
    /// A DHCP reply of `kind` ("offer", "ack", "nak") to a client of `class`.
    pub fn dhcp(kind: &'static str, class: ClientClass, arch: Option<u16>, ip: Ipv4Addr, path: Path) -> Milestone {
        match class {
            ClientClass::Ipxe => Milestone::IpxeDhcp { kind, arch, ip, path },
            c => Milestone::Dhcp { kind, class: c.name(), arch, ip, path },
        }
    }

    pub fn stage(&self) -> &'static str {
        match self {
            Milestone::Dhcp { .. } => "dhcp",
            Milestone::IpxeDhcp { .. } => "ipxe_dhcp",
            Milestone::Dhcp6 { .. } => "dhcp6",
            Milestone::Tftp { .. } => "tftp",
            Milestone::Script { .. } => "script",
            Milestone::File { .. } => "file",
            Milestone::Event { .. } => "event",
        }
    }

    /// The address a DHCP ACK bound, if this is one.
    fn bound_ip(&self) -> Option<Ipv4Addr> {
        match self {
            Milestone::Dhcp { kind: "ack", ip, .. } | Milestone::IpxeDhcp { kind: "ack", ip, .. } => Some(*ip),
            _ => None,
        }
    }

    /// The IPv6 address a DHCPv6 REPLY bound, if this is one.
    fn bound_ip6(&self) -> Option<Ipv6Addr> {
        match self {
            Milestone::Dhcp6 { kind: "reply", ip, .. } => *ip,
            _ => None,
        }
    }

    /// Whether this step is worth an info line (the rest is debug): bindings, transfers,
    /// scripts and files; offers and renewals are not milestones of a boot. Neither are the
    /// kernel's ACKs: they come at the rate the XDP program answers a storm, a line each would
    /// cost the agent more than the answers cost the kernel; the timeline and `/metrics` have them.
    fn is_milestone(&self) -> bool {
        !matches!(
            self,
            Milestone::Dhcp { kind: "offer", .. }
                | Milestone::IpxeDhcp { kind: "offer", .. }
                | Milestone::Dhcp { path: Path::Kernel, .. }
                | Milestone::IpxeDhcp { path: Path::Kernel, .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = TimelineEvent)]
pub struct Event {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub what: Milestone,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Node {
    pub mac: MacAddr,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Ipv6)]
    pub ip6: Option<Ipv6Addr>,
    /// The stage of the latest event, and when it happened: a node whose `stage` is `tftp` and
    /// whose `last_ms` is a minute old is stuck after its transfer.
    pub stage: &'static str,
    pub first_ms: u64,
    pub last_ms: u64,
    /// Events dropped from the middle of a long history (renewals), if any.
    pub events_dropped: u64,
    pub events: Vec<Event>,
}

#[derive(Default)]
struct Inner {
    /// Shared with readers: `/api/v1/nodes` copies the pointers under the lock and serializes
    /// outside it; a node being read is copied when it is next written (`Arc::make_mut`).
    nodes: HashMap<MacAddr, std::sync::Arc<Node>>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    by_ip6: HashMap<Ipv6Addr, MacAddr>,
    nodes_dropped: u64,
}

impl Inner {
    /// Removes the least recently active nodes (and their addresses).
    fn evict(&mut self) {
        let mut by_age: Vec<(u64, MacAddr)> = self.nodes.values().map(|n| (n.last_ms, n.mac)).collect();
        by_age.sort_unstable();
        for (_, mac) in by_age.into_iter().take(EVICT_BATCH) {
            if let Some(n) = self.nodes.remove(&mac) {
                if let Some(ip) = n.ip.filter(|ip| self.by_ip.get(ip) == Some(&mac)) {
                    self.by_ip.remove(&ip);
                }
                if let Some(ip) = n.ip6.filter(|ip| self.by_ip6.get(ip) == Some(&mac)) {
                    self.by_ip6.remove(&ip);
                }
            }
            self.nodes_dropped += 1;
        }
    }
}

/// A client-chosen name cut to [`MAX_NAME`] bytes (at a character boundary).
fn bounded(mut s: String) -> String {
    if s.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub struct Timelines {
    iface: String,
    inner: Mutex<Inner>,
    neighbors: NeighborCache,
}

impl Timelines {
    pub fn new(iface: &str) -> Timelines {
        Timelines { iface: iface.to_string(), inner: Mutex::default(), neighbors: NeighborCache::default() }
    }

    /// Records a step of the node `mac`.
    pub fn record(&self, mac: MacAddr, what: Milestone) {
        let at_ms = unix_ms();
        let what = match what {
            Milestone::Tftp { file, blksize, windowsize, bytes, ms, retransmits, outcome } => {
                Milestone::Tftp { file: bounded(file), blksize, windowsize, bytes, ms, retransmits, outcome }
            }
            Milestone::File { path, status, bytes, ms } => Milestone::File { path: bounded(path), status, bytes, ms },
            Milestone::Event { event, message } => Milestone::Event { event, message: bounded(message) },
            other => other,
        };
        if what.is_milestone() {
            tracing::info!(%mac, stage = what.stage(), "{}", describe(&what));
        } else {
            tracing::debug!(%mac, stage = what.stage(), "{}", describe(&what));
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *g;
        if !inner.nodes.contains_key(&mac) && inner.nodes.len() >= MAX_NODES {
            inner.evict();
        }
        if let Some(ip) = what.bound_ip() {
            inner.by_ip.insert(ip, mac);
        }
        if let Some(ip) = what.bound_ip6() {
            inner.by_ip6.insert(ip, mac);
        }
        let node = inner.nodes.entry(mac).or_insert_with(|| {
            std::sync::Arc::new(Node {
                mac,
                ip: None,
                ip6: None,
                stage: what.stage(),
                first_ms: at_ms,
                last_ms: at_ms,
                events_dropped: 0,
                events: Vec::new(),
            })
        });
        let node = std::sync::Arc::make_mut(node);
        if let Some(ip) = what.bound_ip() {
            node.ip = Some(ip);
        }
        if let Some(ip) = what.bound_ip6() {
            node.ip6 = Some(ip);
        }
        node.stage = what.stage();
        node.last_ms = at_ms;
        if node.events.len() >= MAX_EVENTS {
            node.events.remove(KEEP_FIRST);
            node.events_dropped += 1;
        }
        node.events.push(Event { at_ms, what });
    }

    /// The node that has `ip`: the MAC we bound it to, else the neighbour table's.
    pub fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match ip {
            IpAddr::V4(ip) => {
                let known = inner.by_ip.get(&ip).copied();
                drop(inner);
                known.or_else(|| self.neighbors.get(&self.iface, ip))
            }
            IpAddr::V6(ip) => inner.by_ip6.get(&ip).copied().or_else(|| crate::dhcp6::identity::mac_from_link_local(ip)),
        }
    }

    /// Records a step of whichever node has `ip`; false if no node is known for it.
    pub fn record_by_ip(&self, ip: IpAddr, what: Milestone) -> bool {
        match self.mac_of(ip) {
            Some(mac) => {
                self.record(mac, what);
                true
            }
            None => false,
        }
    }

    pub fn node(&self, mac: MacAddr) -> Option<std::sync::Arc<Node>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).nodes.get(&mac).cloned()
    }

    /// How many nodes have a timeline.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All nodes, ordered by MAC (pointers copied under the lock, sorted outside it).
    pub fn nodes(&self) -> Vec<std::sync::Arc<Node>> {
        let mut v: Vec<std::sync::Arc<Node>> = self.inner.lock().unwrap_or_else(|e| e.into_inner()).nodes.values().cloned().collect();
        v.sort_by_key(|n| n.mac);
        v
    }

    /// Nodes evicted because [`MAX_NODES`] was reached.
    pub fn nodes_dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).nodes_dropped
    }
}

fn describe(m: &Milestone) -> String {
    match m {
        Milestone::Dhcp { kind, class, arch, ip, path } => {
            format!("DHCP {kind} {ip} to {class} client (arch {arch:?}) from the {} path", path.name())
        }
        Milestone::IpxeDhcp { kind, ip, path, .. } => format!("iPXE DHCP {kind} {ip} from the {} path", path.name()),
        Milestone::Dhcp6 { kind, class, arch, ip, path } => match ip {
            Some(ip) => format!("DHCPv6 {kind} {ip} to {class} client (arch {arch:?}) from the {} path", path.name()),
            None => format!("DHCPv6 {kind} to {class} client (arch {arch:?}) from the {} path", path.name()),
        },
        Milestone::Tftp { file, bytes, ms, retransmits, outcome: TftpOutcome::Complete, .. } => {
            format!("TFTP {file}: {bytes} bytes in {ms} ms, {retransmits} retransmits")
        }
        Milestone::Tftp { file, outcome: TftpOutcome::SizeProbe, .. } => format!("TFTP {file}: size asked"),
        Milestone::Tftp { file, ms, .. } => format!("TFTP {file} failed after {ms} ms"),
        Milestone::Script { status, known } => format!("iPXE script served ({status}, known node: {known})"),
        Milestone::File { path, status, .. } => format!("HTTP {path} ({status})"),
        Milestone::Event { event, message } => format!("installer reported {event}: {message}"),
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn chain_is_recorded_in_order_and_ip_maps_to_the_node() {
        let t = Timelines::new("lo");
        let ip = Ipv4Addr::new(10, 0, 1, 7);
        t.record(mac(1), Milestone::dhcp("offer", ClientClass::Pxe, Some(7), ip, Path::Kernel));
        t.record(mac(1), Milestone::dhcp("ack", ClientClass::Pxe, Some(7), ip, Path::Agent));
        let tftp = Milestone::Tftp { file: "ipxe.efi".into(), blksize: 1468, windowsize: 4, bytes: 10, ms: 3, retransmits: 0, outcome: TftpOutcome::Complete };
        assert!(t.record_by_ip(ip.into(), tftp));
        t.record(mac(1), Milestone::dhcp("ack", ClientClass::Ipxe, Some(7), ip, Path::Kernel));
        t.record(mac(1), Milestone::Script { status: 200, known: true });
        let n = t.node(mac(1)).unwrap();
        let stages: Vec<&str> = n.events.iter().map(|e| e.what.stage()).collect();
        assert_eq!(stages, ["dhcp", "dhcp", "tftp", "ipxe_dhcp", "script"]);
        assert_eq!((n.ip, n.stage), (Some(ip), "script"));
        assert!(!t.record_by_ip(Ipv4Addr::new(10, 9, 9, 9).into(), Milestone::Script { status: 200, known: false }));
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["events"][2]["stage"], "tftp");
        assert_eq!(json["events"][2]["blksize"], 1468);
        assert_eq!(json["mac"], "52:54:00:00:00:01");
    }

    #[test]
    fn names_are_bounded_and_a_full_table_evicts_the_least_recently_active() {
        let t = Timelines::new("lo");
        let ip = Ipv4Addr::new(10, 0, 1, 9);
        t.record(mac(3), Milestone::dhcp("ack", ClientClass::Pxe, Some(0), ip, Path::Agent));
        let long = "é".repeat(1000);
        assert!(t.record_by_ip(ip.into(), Milestone::File { path: long, status: 404, bytes: None, ms: 1 }));
        match &t.node(mac(3)).unwrap().events[1].what {
            Milestone::File { path, .. } => assert!(path.len() <= MAX_NAME && path.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
        // A full table: the oldest batch goes, the newcomer is recorded.
        let mut inner = Inner::default();
        for i in 0..MAX_NODES as u64 {
            let m = MacAddr([2, 0, (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            inner.nodes.insert(m, std::sync::Arc::new(Node { mac: m, ip: None, ip6: None, stage: "dhcp", first_ms: i, last_ms: i, events_dropped: 0, events: Vec::new() }));
        }
        *t.inner.lock().unwrap() = inner;
        t.record(mac(4), Milestone::Script { status: 200, known: false });
        assert!(t.node(mac(4)).is_some());
        assert_eq!(t.nodes_dropped(), EVICT_BATCH as u64);
        assert!(t.node(MacAddr([2, 0, 0, 0, 0, 0])).is_none(), "the oldest went");
        assert_eq!(t.len(), MAX_NODES - EVICT_BATCH + 1);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_boot_chain() {
        let t = Timelines::new("lo");
        let ip = Ipv4Addr::new(10, 0, 1, 8);
        t.record(mac(2), Milestone::dhcp("ack", ClientClass::Pxe, Some(0), ip, Path::Agent));
        for _ in 0..1000 {
            t.record(mac(2), Milestone::dhcp("ack", ClientClass::Plain, None, ip, Path::Kernel));
        }
        let n = t.node(mac(2)).unwrap();
        assert_eq!(n.events.len(), MAX_EVENTS);
        assert_eq!(n.events[0].what.stage(), "dhcp");
        assert!(matches!(n.events[0].what, Milestone::Dhcp { class: "pxe", .. }));
        assert_eq!(n.events_dropped, 1001 - MAX_EVENTS as u64);
    }
}
