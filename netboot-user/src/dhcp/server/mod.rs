//! The sans-IO DHCPv4 server core: request bytes and the time in, a reply and the lease records
//! that must be durable before it leaves out. No sockets, no clock, no disk.
//!
//! RFC 2131 states: DISCOVER→OFFER; REQUEST in SELECTING, INIT-REBOOT, RENEWING and REBINDING →
//! ACK/NAK; RELEASE; DECLINE (the address is quarantined); INFORM. ProxyDHCP (PXE spec): boot
//! information only, on port 67 and 4011. The boot answer per client class is DESIGN.md §2.
//!
//! The core is one type, [`DhcpServer`], in four rooms: this file (the request's facts and the
//! dispatch per message type), [`params`] (what the config resolves to, and the boot file per
//! client class), [`states`] (RFC 2131's answer to each message), [`reply`] (encoding, option
//! 57 and relays' envelopes) and [`kernel`] (the cached replies the XDP program sends, and the
//! kernel's ACKs recorded).

mod kernel;
mod params;
mod reply;
mod states;

use super::classify::{Classification, classify, raw_option};
use super::leases::{ClientKey, Lease, LeaseState, LeaseTable};
use crate::config::profile::{Facts, SecureBoot};
use crate::config::{Config, DhcpMode, Host, UnknownPolicy};
use crate::mac::MacAddr;
use dhcproto::v4::{
    DhcpOption, DhcpOptions, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Encodable, Name};
use ipnet::Ipv4Net;
use netboot_common::wire::{ClientClass, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, PXE_PROXY_PORT, arch};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use crate::dhcp::buckets::Buckets;

/// How long an OFFER holds its address for the client.
pub const OFFER_HOLD_SECS: u64 = 60;
/// BOOTP messages are padded to at least this size (RFC 1542 §3.3: some relays and ROMs need it).
pub const MIN_BOOTP_LEN: usize = 300;


pub use kernel::CachedReplies;
pub use params::{BootFiles, ServerParams};


/// What came in: the DHCP payload and where it was received.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub payload: &'a [u8],
    /// The UDP port it was addressed to: 67, or 4011 (ProxyDHCP).
    pub local_port: u16,
    /// IP source of the datagram (ProxyDHCP replies on 4011 go back to it).
    pub src_ip: Ipv4Addr,
    pub src_port: u16,
    /// Unix seconds.
    pub now: u64,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// giaddr ≠ 0: to the relay agent, port 67.
    Relay(Ipv4Addr),
    /// To an address the client already has (ciaddr, or the source of a port-4011 request).
    Unicast { ip: Ipv4Addr, port: u16 },
    /// Link broadcast to port 68: the client asked for it, or cannot receive unicast yet.
    Broadcast,
    /// Link unicast to the client's hardware address, IP yiaddr, port 68.
    LinkUnicast { mac: MacAddr, ip: Ipv4Addr },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: MessageType,
    pub payload: Vec<u8>,
    pub dest: Destination,
    pub mac: MacAddr,
    pub class: ClientClass,
    pub arch: Option<u16>,
    /// The port the request arrived on (the reply leaves from it).
    pub local_port: u16,
    /// Lease records to commit durably before the reply is sent (invariant 1).
    pub commit: Vec<Lease>,
}

/// Why a request got no reply; each is counted by the I/O layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Silence {
    /// Not a decodable BOOTREQUEST with a DHCP message type.
    Malformed,
    /// A message type a server does not answer (OFFER, ACK, ...) or BOOTP without DHCP.
    NotARequest,
    /// REQUEST/RELEASE/DECLINE for another server.
    OtherServer,
    /// Relayed from a subnet we do not serve.
    UnknownSubnet,
    /// ProxyDHCP: not a boot client, or not ours to answer.
    ProxyIgnored,
    /// No free address in the pools.
    PoolExhausted,
    /// A new client over `new_clients_per_s` this second.
    NewClientLimited,
    /// DECLINE of an address the client does not hold bound (only an ACKed lease can be
    /// declined: an offered one would let DISCOVER+DECLINE quarantine the pool).
    DeclineIgnored,
    /// RFC 2131 says stay silent (INIT-REBOOT/REBINDING of a client we know nothing about).
    NoRecord,
    /// RELEASE and DECLINE are never answered (their lease change may still be committed).
    NoReplyDue,
    /// DISCOVER or REQUEST of a client in a bucket another server of the cluster answers.
    NotOwner,
    /// A client no host describes, with `[dhcp] unknown = "ignore"`.
    UnknownClient,
}

impl Silence {
    pub fn name(self) -> &'static str {
        match self {
            Silence::Malformed => "malformed",
            Silence::NotARequest => "not_a_request",
            Silence::OtherServer => "other_server",
            Silence::UnknownSubnet => "unknown_subnet",
            Silence::ProxyIgnored => "proxy_ignored",
            Silence::PoolExhausted => "pool_exhausted",
            Silence::NewClientLimited => "new_client_limited",
            Silence::DeclineIgnored => "decline_ignored",
            Silence::NoRecord => "no_record",
            Silence::NoReplyDue => "no_reply_due",
            Silence::NotOwner => "not_owner",
            Silence::UnknownClient => "unknown_client",
        }
    }
}

/// The result of one request: a reply, or silence with lease changes to commit anyway
/// (RELEASE, DECLINE, a REQUEST for another server that frees our offer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Reply),
    Silent { why: Silence, commit: Vec<Lease> },
}

fn sighting(c: &Ctx, known: bool) -> Sighting {
    let text = |code: u8| raw_option(c.raw, code).map(|v| String::from_utf8_lossy(v).chars().filter(|ch| !ch.is_control()).take(128).collect());
    Sighting {
        mac: c.mac,
        at: c.req.now,
        class: c.class.class,
        arch: c.class.arch,
        uuid: raw_option(c.raw, 97).and_then(machine_uuid),
        vendor_class: text(60),
        relay: Some(c.msg.giaddr()).filter(|g| !g.is_unspecified()),
        known,
    }
}

/// Option 97 (RFC 4578 §2.3): type 0 and 16 bytes of UUID, shown as RFC 4122 text (the first
/// three fields little-endian, as SMBIOS and PXE firmware write them).
pub(crate) fn machine_uuid(v: &[u8]) -> Option<String> {
    let (&[0], u) = (v.get(..1)?, v.get(1..)?) else { return None };
    let u: [u8; 16] = u.try_into().ok()?;
    let h = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let le = |b: &[u8]| h(&b.iter().rev().copied().collect::<Vec<_>>());
    Some(format!("{}-{}-{}-{}-{}", le(&u[0..4]), le(&u[4..6]), le(&u[6..8]), h(&u[8..10]), h(&u[10..16])))
}

fn silent(why: Silence) -> Outcome {
    Outcome::Silent { why, commit: Vec::new() }
}

pub struct DhcpServer {
    params: ServerParams,
    leases: LeaseTable,
    /// The expiry each address has in the store, as far as this core handed leases to it.
    persisted: HashMap<Ipv4Addr, u64>,
    /// Pool allocations in the current second.
    allocations: super::new_clients::NewClients,
    /// The load-balancing buckets this server answers (all, alone).
    buckets: Arc<Buckets>,
    /// Who asked, since the I/O layer last took them (discovery).
    sightings: Vec<Sighting>,
}

/// What a request said about the machine that sent it (`/api/v1/discovered`, profiles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub mac: MacAddr,
    /// Unix seconds.
    pub at: u64,
    pub class: ClientClass,
    pub arch: Option<u16>,
    /// Option 97 (client machine identifier), as a UUID when it is one.
    pub uuid: Option<String>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// giaddr, when relayed.
    pub relay: Option<Ipv4Addr>,
    /// A host describes it.
    pub known: bool,
}

/// Sightings kept between two takes, at most (the I/O layer takes them after every request).
const SIGHTINGS_KEPT: usize = 1024;

/// Which REQUEST state of RFC 2131 §4.3.2 an ACK is considered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestState {
    /// Option 54 names us: the client chose our OFFER.
    Selecting,
    /// No option 54, no ciaddr: a rebooting client verifying the address it remembers.
    InitReboot,
    /// ciaddr set: extending the lease in use.
    Renewing,
}

/// A kernel ACK as the core recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAck {
    /// The renewed lease (in the table already).
    pub lease: Lease,
    /// Whether it must go to the store: a renewal within [`DhcpServer::renewal_slack`] of the
    /// stored expiry stays in memory only.
    pub persist: bool,
}

pub fn renewal_slack(lease_secs: u32) -> u64 {
    u64::from(lease_secs / 4)
}

/// A stored lease as the table holds it: a bound one `slack` longer than the store says (the
/// kernel may have renewed it in memory that much beyond), never given away early.
fn held_with_slack(lease: Lease, slack: u64) -> Lease {
    match lease.state {
        LeaseState::Bound => Lease { expires: lease.expires + slack, ..lease },
        _ => lease,
    }
}

/// A decoded request with the facts every handler needs.
struct Ctx<'a> {
    msg: Message,
    raw: &'a [u8],
    req: Request<'a>,
    mac: MacAddr,
    client: ClientKey,
    class: Classification,
}

impl DhcpServer {
    /// A server over `pools` (empty in proxy mode), with the leases loaded from the store.
    pub fn new(params: ServerParams, pools: Vec<crate::config::Pool>, stored: Vec<Lease>) -> DhcpServer {
        // Never handed out dynamically: reservations, our address, the router, and the
        // subnet's network and broadcast addresses.
        let mut excluded: HashSet<Ipv4Addr> = params.reservations.values().map(|h| h.ip).collect();
        excluded.insert(params.server_ip);
        excluded.extend(params.router);
        if let Some(net) = params.subnet {
            excluded.insert(net.network());
            excluded.insert(net.broadcast());
        }
        let mut leases = LeaseTable::new(pools, excluded);
        // A renewal the kernel answered may end up to the slack later than the store says:
        // addresses are held that much longer after a restart (never given away early).
        let slack = renewal_slack(params.lease_secs);
        let persisted = stored.iter().map(|l| (l.ip, l.expires)).collect();
        leases.load(stored.into_iter().map(|l| held_with_slack(l, slack)));
        DhcpServer { params, leases, persisted, allocations: Default::default(), buckets: Arc::default(), sightings: Vec::new() }
    }

    /// Allocates from `part`/`parts` of the pools on (see [`LeaseTable::start_at`]).
    pub fn spread_allocation(&mut self, part: usize, parts: usize) {
        self.leases.start_at(part, parts);
    }

    /// Answers DISCOVER and REQUEST only for clients in `buckets` (a cluster member's share).
    pub fn set_buckets(&mut self, buckets: Arc<Buckets>) {
        self.buckets = buckets;
    }

    /// How much later than the stored expiry a lease renewed by the kernel may end before the
    /// renewal is written: a quarter of the lease time. Every boot renews twice within seconds
    /// (the PXE ROM, then iPXE), and a storm of reboots renews thousands of leases at once; the
    /// second write of each would be the agent's main cost while the kernel answers.
    pub fn renewal_slack(&self) -> u64 {
        renewal_slack(self.params.lease_secs)
    }

    /// Applies a reloaded config: new parameters and pools over the same leases, as a restart
    /// would (mode and server address stay as they are: their sockets need a restart).
    pub fn reconfigure(&mut self, mut params: ServerParams, pools: Vec<crate::config::Pool>) {
        params.mode = self.params.mode;
        params.server_ip = self.params.server_ip;
        let leases = self.leases.iter().cloned().collect::<Vec<_>>();
        let persisted = std::mem::take(&mut self.persisted);
        let mut rebuilt = DhcpServer::new(params, pools, Vec::new());
        rebuilt.leases.load(leases);
        rebuilt.persisted = persisted;
        rebuilt.allocations = self.allocations;
        rebuilt.buckets = self.buckets.clone();
        *self = rebuilt;
    }

    pub fn params(&self) -> &ServerParams {
        &self.params
    }

    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Handles one request. Never panics on any input.
    /// Answers one request. The leases the outcome carries are to be committed before any
    /// reply is sent.
    pub fn handle(&mut self, req: Request<'_>) -> Outcome {
        let outcome = self.answer(req);
        let commit = match &outcome {
            Outcome::Reply(r) => &r.commit,
            Outcome::Silent { commit, .. } => commit,
        };
        for l in commit {
            self.persisted.insert(l.ip, l.expires);
        }
        outcome
    }

    fn answer(&mut self, req: Request<'_>) -> Outcome {
        // Ethernet clients only (htype 1, hlen 6); checked on the bytes first because
        // dhcproto's `chaddr()` slices by the wire's hlen and would panic past 16.
        use netboot_common::wire::{BOOTP_OPTIONS_OFF, DHCP_MAGIC, bootp};
        if req.payload.len() < BOOTP_OPTIONS_OFF
            || req.payload[1..3] != [1, 6]
            || req.payload[bootp::MAGIC..BOOTP_OPTIONS_OFF] != DHCP_MAGIC
            || !super::classify::options_well_formed(req.payload)
        {
            return silent(Silence::Malformed);
        }
        // Option 53 is one byte (RFC 2132 §9.6), as the XDP program requires too.
        if raw_option(req.payload, netboot_common::wire::opt::MESSAGE_TYPE).is_none_or(|t| t.len() != 1) {
            return silent(Silence::NotARequest);
        }
        let Some(msg) = super::classify::decode(req.payload) else { return silent(Silence::Malformed) };
        if msg.opcode() != Opcode::BootRequest || msg.hlen() != 6 {
            return silent(Silence::Malformed);
        }
        let Some(kind) = super::classify::message_type(&msg) else { return silent(Silence::NotARequest) };
        let mac = MacAddr(msg.chaddr().try_into().expect("checked length"));
        if matches!(kind, MessageType::Discover | MessageType::Request) && !self.buckets.owns(mac) {
            return silent(Silence::NotOwner);
        }
        let client_id = match msg.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) => Some(id.clone()),
            _ => None,
        };
        let ctx = Ctx {
            client: ClientKey::new(mac, client_id.as_deref()),
            class: classify(&msg),
            mac,
            raw: req.payload,
            req,
            msg,
        };
        if !ctx.msg.giaddr().is_unspecified() && self.params.mode == DhcpMode::Authoritative && !self.serves_relay(ctx.msg.giaddr()) {
            return silent(Silence::UnknownSubnet);
        }
        let known = self.is_reserved(mac);
        if matches!(kind, MessageType::Discover | MessageType::Request | MessageType::Inform) && self.sightings.len() < SIGHTINGS_KEPT {
            self.sightings.push(sighting(&ctx, known));
        }
        if !known && self.params.unknown == UnknownPolicy::Ignore {
            return silent(Silence::UnknownClient);
        }
        if self.params.mode == DhcpMode::Proxy {
            return self.proxy(&ctx, kind);
        }
        match kind {
            MessageType::Discover => self.discover(&ctx),
            MessageType::Request => self.request(&ctx),
            MessageType::Release => self.release(&ctx),
            MessageType::Decline => self.decline(&ctx),
            MessageType::Inform => self.inform(&ctx),
            _ => silent(Silence::NotARequest),
        }
    }

    /// Whether a request relayed with `giaddr` is ours: a host address of our subnet other than
    /// our own (a giaddr that is the subnet's broadcast or network address, or ours, would make
    /// us send the reply to everyone or to ourselves).
    fn serves_relay(&self, giaddr: Ipv4Addr) -> bool {
        self.params.subnet.is_some_and(|n| n.contains(&giaddr) && giaddr != n.network() && giaddr != n.broadcast())
            && giaddr != self.params.server_ip
    }

    fn reservation(&self, mac: MacAddr) -> Option<&Host> {
        self.params.reservations.get(&mac)
    }

}


fn requested_ip(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn has_server_id(m: &Message) -> bool {
    m.opts().get(OptionCode::ServerIdentifier).is_some()
}

fn client_id(m: &Message) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) => Some(id.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
