//! The sans-IO DHCPv4 server core: request bytes and the time in, a reply and the lease records
//! that must be durable before it leaves out. No sockets, no clock, no disk.
//!
//! RFC 2131 states: DISCOVER→OFFER; REQUEST in SELECTING, INIT-REBOOT, RENEWING and REBINDING →
//! ACK/NAK; RELEASE; DECLINE (the address is quarantined); INFORM. ProxyDHCP (PXE spec): boot
//! information only, on port 67 and 4011. The boot answer per client class is DESIGN.md §2.

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

/// Everything the core needs from the configuration, resolved (server address known).
#[derive(Debug, Clone)]
pub struct ServerParams {
    pub mode: DhcpMode,
    pub server_ip: Ipv4Addr,
    pub subnet: Option<Ipv4Net>,
    pub lease_secs: u32,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub boot: BootFiles,
    pub reservations: HashMap<MacAddr, Host>,
    /// Addresses allocated from the pools per second, at most (`[dhcp] new_clients_per_s`;
    /// 0 = unlimited): a flood of invented clients cannot take the pool faster.
    pub new_clients_per_s: u32,
    /// What a client without a reservation gets.
    pub unknown: UnknownPolicy,
    /// Which machines boot the Secure Boot chain.
    pub secure_boot: SecureBoot,
}

/// Boot file names and URLs, `{server}` already expanded.
#[derive(Debug, Clone, Default)]
pub struct BootFiles {
    pub bios: String,
    pub uefi_ia32: String,
    pub uefi_x64: String,
    pub uefi_arm64: String,
    /// The first file of the Secure Boot chain (a signed shim) per UEFI architecture.
    pub secure_x64: String,
    pub secure_arm64: String,
    pub http_client: String,
    pub ipxe_script: String,
}

impl BootFiles {
    /// The boot file or URL for a class and architecture; `None` for plain clients and unknown
    /// PXE architectures. A `secure` machine's UEFI firmware gets the signed shim: it would
    /// refuse iPXE, which no Secure Boot key signs.
    pub fn for_client(&self, c: Classification, secure: bool) -> Option<&str> {
        let file: &String = match c.class {
            ClientClass::Plain => return None,
            ClientClass::Ipxe => &self.ipxe_script,
            ClientClass::Http => &self.http_client,
            ClientClass::Pxe => match c.arch.unwrap_or(arch::BIOS) {
                arch::BIOS => &self.bios,
                arch::EFI_IA32 => &self.uefi_ia32,
                arch::EFI_X64 | arch::EFI_BC if secure => &self.secure_x64,
                arch::EFI_X64 | arch::EFI_BC => &self.uefi_x64,
                arch::EFI_ARM64 if secure => &self.secure_arm64,
                arch::EFI_ARM64 => &self.uefi_arm64,
                _ => return None,
            },
        };
        Some(file.as_str()).filter(|s| !s.is_empty())
    }
}

impl ServerParams {
    /// `dhcp.lease_time` in seconds, as option 51 carries it (u32, "infinity" excluded).
    pub fn lease_secs(cfg: &Config) -> u32 {
        cfg.dhcp.lease_time.0.as_secs().min(u64::from(u32::MAX - 1)) as u32
    }

    pub fn from_config(cfg: &Config, server_ip: Ipv4Addr) -> ServerParams {
        let b = &cfg.boot;
        let x = |s: &str| Config::expand(s, server_ip);
        ServerParams {
            mode: cfg.dhcp.mode,
            server_ip,
            subnet: cfg.dhcp.subnet.as_ref().map(|s| *s.get_ref()),
            lease_secs: ServerParams::lease_secs(cfg),
            router: cfg.dhcp.router,
            dns: cfg.dhcp.dns.clone(),
            domain: cfg.dhcp.domain.clone(),
            boot: BootFiles {
                bios: x(&b.bios),
                uefi_ia32: x(&b.uefi_ia32),
                uefi_x64: x(&b.uefi_x64),
                uefi_arm64: x(&b.uefi_arm64),
                secure_x64: x(&b.secure_x64),
                secure_arm64: x(&b.secure_arm64),
                http_client: x(&b.http_client),
                ipxe_script: x(&b.ipxe_script),
            },
            reservations: cfg.dhcp.reservations().map(|h| (h.mac, h.clone())).collect(),
            new_clients_per_s: cfg.dhcp.new_clients_per_s,
            unknown: cfg.dhcp.unknown,
            secure_boot: SecureBoot::from_config(cfg),
        }
    }
}

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

    fn discover(&mut self, c: &Ctx) -> Outcome {
        let now = c.req.now;
        let ip = if let Some(h) = self.reservation(c.mac) {
            h.ip
        } else if let Some(l) = self.leases.for_client(&c.client).filter(|l| self.leases.available_to(l.ip, &c.client, now)) {
            l.ip
        } else {
            // A new client: whether it names the address it wants (option 50) or not, it
            // takes one from the pool, and counts against the limit.
            if !self.allocations.allowed(now, self.params.new_clients_per_s) {
                return silent(Silence::NewClientLimited);
            }
            let wanted = requested_ip(&c.msg).filter(|ip| self.leases.available_to(*ip, &c.client, now));
            let Some(ip) = wanted.or_else(|| self.leases.allocate(&c.client, now)) else {
                return silent(Silence::PoolExhausted);
            };
            self.allocations.made();
            ip
        };
        // Keep a bound lease bound (a rebooting client re-discovering); hold a new one briefly.
        let existing = self.leases.get(ip).filter(|l| l.client == c.client && l.state == LeaseState::Bound && l.expires > now);
        let lease = match existing {
            Some(l) => l.clone(),
            None => self.lease(c, ip, LeaseState::Offered, now + OFFER_HOLD_SECS),
        };
        self.leases.upsert(lease.clone());
        let payload = self.build(c, MessageType::Offer, ip);
        self.reply(c, MessageType::Offer, payload, ip, vec![lease])
    }

    fn request(&mut self, c: &Ctx) -> Outcome {
        let now = c.req.now;
        let server_id = match c.msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let requested = requested_ip(&c.msg);
        let ciaddr = c.msg.ciaddr();
        if let Some(sid) = server_id {
            // SELECTING: the client chose a server.
            if sid != self.params.server_ip {
                // Not us: free what we offered it.
                let ours = self.leases.for_client(&c.client).filter(|l| l.state == LeaseState::Offered).cloned();
                let commit = ours
                    .map(|mut l| {
                        l.state = LeaseState::Released;
                        l.expires = now;
                        self.leases.upsert(l.clone());
                        vec![l]
                    })
                    .unwrap_or_default();
                return Outcome::Silent { why: Silence::OtherServer, commit };
            }
            let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
                return self.nak(c);
            };
            return self.ack_if_ours(c, ip, RequestState::Selecting);
        }
        match (requested, ciaddr.is_unspecified()) {
            // INIT-REBOOT: a client reusing an address it remembers.
            (Some(ip), true) => self.ack_if_ours(c, ip, RequestState::InitReboot),
            // RENEWING (unicast) or REBINDING (broadcast): ciaddr is the address in use.
            (_, false) => self.ack_if_ours(c, ciaddr, RequestState::Renewing),
            (None, true) => self.nak(c),
        }
    }

    /// ACK `ip` to the client when it is (or may become) its address; NAK when it cannot be;
    /// silence when we know nothing and RFC 2131 says so. Outside SELECTING only a client we
    /// have a record of gets an address: a REQUEST with no OFFER before it never binds one
    /// (§4.3.2: "If the DHCP server has no record of this client, then it MUST remain silent"),
    /// or one frame per address would take the pool.
    fn ack_if_ours(&mut self, c: &Ctx, ip: Ipv4Addr, state: RequestState) -> Outcome {
        let now = c.req.now;
        if let Some(h) = self.reservation(c.mac) {
            if h.ip != ip {
                return self.nak(c);
            }
        } else {
            if self.params.subnet.is_some_and(|n| !n.contains(&ip)) {
                return self.nak(c); // wrong network: the client moved
            }
            let record = self.leases.for_client(&c.client);
            let known = record.is_some_and(|l| l.ip == ip && l.state != LeaseState::Released);
            if !known {
                match (state, record) {
                    // SELECTING binds only what we offered it (or its own lease, `known`): an
                    // address it never was offered would bypass the OFFER's `new_clients_per_s`.
                    (RequestState::Selecting, _) => return self.nak(c),
                    (RequestState::InitReboot, None) => return silent(Silence::NoRecord),
                    // Renewing an address we never gave it: start over (RFC 2131 §4.4.5).
                    (RequestState::Renewing, None) => return self.nak(c),
                    // It remembers another address than the one we hold for it.
                    (RequestState::InitReboot | RequestState::Renewing, Some(l)) if l.ip != ip => return self.nak(c),
                    _ => {}
                }
                if self.leases.held_by_other(ip, &c.client, now)
                    || !self.leases.in_pool(ip)
                    || !self.leases.available_to(ip, &c.client, now)
                {
                    return self.nak(c);
                }
            }
        }
        let lease = self.lease(c, ip, LeaseState::Bound, now + u64::from(self.params.lease_secs));
        self.leases.upsert(lease.clone());
        let payload = self.build(c, MessageType::Ack, ip);
        self.reply(c, MessageType::Ack, payload, ip, vec![lease])
    }

    fn nak(&self, c: &Ctx) -> Outcome {
        let payload = self.build(c, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
        self.reply(c, MessageType::Nak, payload, Ipv4Addr::UNSPECIFIED, Vec::new())
    }

    fn release(&mut self, c: &Ctx) -> Outcome {
        let ip = c.msg.ciaddr();
        let commit = match self.leases.get(ip).filter(|l| l.client == c.client).cloned() {
            Some(mut l) if self.is_to_us(c) => {
                l.state = LeaseState::Released;
                l.expires = c.req.now;
                self.leases.upsert(l.clone());
                vec![l]
            }
            _ => Vec::new(),
        };
        Outcome::Silent { why: Silence::NoReplyDue, commit }
    }

    fn decline(&mut self, c: &Ctx) -> Outcome {
        let Some(ip) = requested_ip(&c.msg) else { return silent(Silence::NoReplyDue) };
        if !self.is_to_us(c) {
            return silent(Silence::NoReplyDue);
        }
        // A client declines an address it was ACKed and then found in use (RFC 2131 §3.1.5).
        let bound = self.leases.get(ip).is_some_and(|l| l.client == c.client && l.state == LeaseState::Bound && l.holds(c.req.now));
        if !bound {
            return silent(Silence::DeclineIgnored);
        }
        // Someone else answers ARP for it: keep it out of the pool for a lease time.
        let mut l = self.lease(c, ip, LeaseState::Declined, c.req.now + u64::from(self.params.lease_secs));
        l.hostname = None;
        self.leases.upsert(l.clone());
        Outcome::Silent { why: Silence::NoReplyDue, commit: vec![l] }
    }

    fn inform(&self, c: &Ctx) -> Outcome {
        let payload = self.build(c, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
        self.reply(c, MessageType::Ack, payload, Ipv4Addr::UNSPECIFIED, Vec::new())
    }

    fn is_to_us(&self, c: &Ctx) -> bool {
        match c.msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip == self.params.server_ip,
            _ => true,
        }
    }

    /// ProxyDHCP: boot clients get boot information without an address; a DISCOVER on 67 gets
    /// an OFFER, a REQUEST on 4011 an ACK back to its source.
    fn proxy(&mut self, c: &Ctx, kind: MessageType) -> Outcome {
        if c.class.class == ClientClass::Plain || self.boot_file(c).is_none() {
            return silent(Silence::ProxyIgnored);
        }
        let reply_kind = match (kind, c.req.local_port) {
            (MessageType::Discover, DHCP_SERVER_PORT) => MessageType::Offer,
            (MessageType::Request, PXE_PROXY_PORT) => MessageType::Ack,
            (MessageType::Request, _) if self.is_to_us(c) && has_server_id(&c.msg) => MessageType::Ack,
            _ => return silent(Silence::ProxyIgnored),
        };
        let payload = self.build(c, reply_kind, Ipv4Addr::UNSPECIFIED);
        self.reply(c, reply_kind, payload, Ipv4Addr::UNSPECIFIED, Vec::new())
    }

    fn lease(&self, c: &Ctx, ip: Ipv4Addr, state: LeaseState, expires: u64) -> Lease {
        Lease {
            ip,
            client: c.client.clone(),
            mac: c.mac,
            hostname: self.reservation(c.mac).and_then(|h| h.hostname.clone()).or_else(|| match c.msg.opts().get(OptionCode::Hostname) {
                Some(DhcpOption::Hostname(h)) => Some(h.clone()),
                _ => None,
            }),
            state,
            expires,
        }
    }

    fn boot_file(&self, c: &Ctx) -> Option<&str> {
        let host = self.reservation(c.mac);
        let secure = self.params.secure_boot.wants(host, || Facts {
            mac: Some(c.mac),
            known: host.is_some(),
            ip: host.map(|h| h.ip),
            arch: c.class.arch,
            vendor_class: raw_option(c.raw, 60).map(|v| String::from_utf8_lossy(v).into_owned()),
            relay: Some(c.msg.giaddr()).filter(|g| !g.is_unspecified()),
            vars: host.map(|h| h.vars.clone()).unwrap_or_default(),
        });
        self.params.boot.for_client(c.class, secure)
    }

    /// Encodes the reply message. Deterministic: the same request and lease state give the same
    /// bytes (the XDP reply cache depends on it).
    fn build(&self, c: &Ctx, kind: MessageType, yiaddr: Ipv4Addr) -> Vec<u8> {
        let p = &self.params;
        let req = &c.msg;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(req.htype())
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_chaddr(req.chaddr())
            .set_yiaddr(yiaddr)
            .set_ciaddr(Ipv4Addr::UNSPECIFIED)
            .set_siaddr(Ipv4Addr::UNSPECIFIED)
            .set_secs(0)
            .set_hops(0);
        let mut o = DhcpOptions::new();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(p.server_ip));
        if kind == MessageType::Nak {
            // RFC 2131 table 3: a NAK carries no address, file or configuration.
            if let Some(id) = client_id(req) {
                o.insert(DhcpOption::ClientIdentifier(id));
            }
            if !req.giaddr().is_unspecified() {
                m.set_flags(Flags::default().set_broadcast());
            }
            m.set_opts(o);
            return self.encode(c, m);
        }
        let informing = super::classify::message_type(req) == Some(MessageType::Inform);
        let proxy = p.mode == DhcpMode::Proxy;
        if informing || (kind == MessageType::Ack && !req.ciaddr().is_unspecified()) {
            m.set_ciaddr(req.ciaddr());
        }
        if !proxy {
            if let Some(net) = p.subnet {
                o.insert(DhcpOption::SubnetMask(net.netmask()));
                o.insert(DhcpOption::BroadcastAddr(net.broadcast()));
            }
            if let Some(r) = p.router {
                o.insert(DhcpOption::Router(vec![r]));
            }
            if !p.dns.is_empty() {
                o.insert(DhcpOption::DomainNameServer(p.dns.clone()));
            }
            if let Some(d) = &p.domain {
                o.insert(DhcpOption::DomainName(d.clone()));
                if let Ok(name) = Name::from_ascii(format!("{}.", d.trim_end_matches('.'))) {
                    o.insert(DhcpOption::DomainSearch(vec![name]));
                }
            }
            if let Some(h) = self.reservation(c.mac).and_then(|h| h.hostname.clone()) {
                o.insert(DhcpOption::Hostname(h));
            }
            if !informing {
                let secs = p.lease_secs;
                o.insert(DhcpOption::AddressLeaseTime(secs));
                o.insert(DhcpOption::Renewal(secs / 2));
                o.insert(DhcpOption::Rebinding((u64::from(secs) * 7 / 8) as u32));
            }
        }
        if let Some(file) = self.boot_file(c) {
            m.set_siaddr(p.server_ip);
            m.set_sname_str(p.server_ip.to_string());
            if file.len() < 128 {
                m.set_fname_str(file);
            }
            o.insert(DhcpOption::TFTPServerName(p.server_ip.to_string().into_bytes()));
            o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
            match c.class.class {
                ClientClass::Ipxe => {
                    // 175.176 = 1 (no-pxedhcp): iPXE skips its wait for ProxyDHCP offers.
                    o.insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), vec![176, 1, 1])));
                }
                ClientClass::Http => {
                    o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
                }
                ClientClass::Pxe if proxy => {
                    o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                    // PXE_DISCOVERY_CONTROL = 8: use the boot file of this offer, no discovery.
                    o.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
                }
                _ => {}
            }
            if proxy && c.class.class == ClientClass::Ipxe {
                o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            }
            if proxy && let Some(DhcpOption::ClientMachineIdentifier(uuid)) = req.opts().get(OptionCode::ClientMachineIdentifier) {
                o.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
            }
        }
        // RFC 6842: echo the client identifier.
        if let Some(id) = client_id(req) {
            o.insert(DhcpOption::ClientIdentifier(id));
        }
        m.set_opts(o);
        self.encode(c, m)
    }

    /// Encodes, trimmed to the client's maximum message size (option 57, at least 576), with
    /// option 82 echoed verbatim as the last option (RFC 3046 §2.2), padded to the BOOTP
    /// minimum.
    fn encode(&self, c: &Ctx, mut m: Message) -> Vec<u8> {
        let rai = raw_option(c.raw, 82).map(|d| {
            let mut o = vec![82, d.len() as u8];
            o.extend_from_slice(d);
            o
        });
        let extra = rai.as_ref().map_or(0, Vec::len);
        let max = match c.msg.opts().get(OptionCode::MaxMessageSize) {
            Some(DhcpOption::MaxMessageSize(n)) => usize::from(*n).max(576),
            _ => 576,
        } - 28; // IPv4 + UDP headers
        let mut bytes = m.to_vec().unwrap_or_default();
        for optional in [OptionCode::DomainSearch, OptionCode::DomainName, OptionCode::Hostname] {
            if bytes.len() + extra <= max {
                break;
            }
            m.opts_mut().remove(optional);
            bytes = m.to_vec().unwrap_or_default();
        }
        if let Some(rai) = rai {
            // dhcproto ends the options with END; 82 goes right before it.
            if bytes.last() == Some(&netboot_common::wire::opt::END) {
                let end = bytes.len() - 1;
                bytes.splice(end..end, rai);
            }
        }
        if bytes.len() < MIN_BOOTP_LEN {
            bytes.resize(MIN_BOOTP_LEN, 0);
        }
        bytes
    }

    fn reply(&self, c: &Ctx, kind: MessageType, payload: Vec<u8>, yiaddr: Ipv4Addr, commit: Vec<Lease>) -> Outcome {
        let m = &c.msg;
        let dest = if c.req.local_port == PXE_PROXY_PORT {
            Destination::Unicast { ip: c.req.src_ip, port: c.req.src_port }
        } else if !m.giaddr().is_unspecified() {
            Destination::Relay(m.giaddr())
        } else if kind == MessageType::Nak {
            Destination::Broadcast
        } else if !m.ciaddr().is_unspecified() {
            Destination::Unicast { ip: m.ciaddr(), port: DHCP_CLIENT_PORT }
        } else if m.flags().broadcast() || yiaddr.is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::LinkUnicast { mac: c.mac, ip: yiaddr }
        };
        Outcome::Reply(Reply {
            kind,
            payload,
            dest,
            mac: c.mac,
            class: c.class.class,
            arch: c.class.arch,
            local_port: c.req.local_port,
            commit,
        })
    }
}

impl Reply {
    /// The whole frame of a reply that leaves through the packet socket: broadcast, link
    /// unicast, or to a relay whose MAC is known (`relay_mac`). `None` for replies routed
    /// through the UDP socket (unicast to ciaddr, a relay whose MAC is unknown).
    pub fn frame(&self, src_mac: MacAddr, server_ip: Ipv4Addr, relay_mac: Option<MacAddr>) -> Option<Vec<u8>> {
        let (dst_mac, dst_ip, dst_port) = match self.dest {
            Destination::Broadcast => (MacAddr([0xff; 6]), Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
            Destination::LinkUnicast { mac, ip } => (mac, ip, DHCP_CLIENT_PORT),
            Destination::Relay(giaddr) => (relay_mac?, giaddr, DHCP_SERVER_PORT),
            Destination::Unicast { .. } => return None,
        };
        Some(
            crate::frame::UdpEnvelope {
                src_mac,
                dst_mac,
                vlan: None,
                src_ip: server_ip,
                dst_ip,
                src_port: DHCP_SERVER_PORT,
                dst_port,
                ttl: 64,
            }
            .build(&self.payload),
        )
    }
}

/// The two replies a cached client gets, compiled for a request with xid 0 and flags 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedReplies {
    pub ip: Ipv4Addr,
    pub offer: Reply,
    pub ack: Reply,
}

impl DhcpServer {
    /// Records an ACK the XDP program sent from the cache: the client's lease is bound again
    /// for a lease time from `now`; it is to be committed unless the store's expiry is within
    /// the renewal slack of the new one.
    pub fn record_kernel_ack(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Option<KernelAck> {
        let expires = now + u64::from(self.params.lease_secs);
        let lease = match self.leases.get(ip).filter(|l| l.mac == mac) {
            Some(l) => Lease { state: LeaseState::Bound, expires, ..l.clone() },
            None => {
                // A reservation answered before the agent ever recorded it.
                let h = self.reservation(mac).filter(|h| h.ip == ip)?;
                Lease { ip, client: ClientKey::new(mac, None), mac, hostname: h.hostname.clone(), state: LeaseState::Bound, expires }
            }
        };
        self.leases.upsert(lease.clone());
        let persist = self.persisted.get(&ip).is_none_or(|stored| expires >= stored + self.renewal_slack());
        if persist {
            self.persisted.insert(ip, expires);
        }
        Some(KernelAck { lease, persist })
    }

    /// Until when (Unix seconds) the kernel may answer `mac` for `ip` from its cache on its
    /// own: `None` (always) for a reservation; for a lease, while an ACK it sends (a lease time
    /// from then) ends within the renewal slack of the expiry in the store, which is how long
    /// a restarted agent holds the address. A cache whose agent is gone cannot extend a lease
    /// beyond what the store covers (invariant 1).
    pub fn kernel_deadline(&self, mac: MacAddr, ip: Ipv4Addr) -> Option<u64> {
        if self.reservation(mac).is_some_and(|h| h.ip == ip) {
            return None;
        }
        let stored = self.persisted.get(&ip).copied().unwrap_or(0);
        Some((stored + self.renewal_slack()).saturating_sub(u64::from(self.params.lease_secs)))
    }

    /// The commit of these addresses failed: what the store holds for them is unknown, so
    /// nothing the kernel answers may rely on it (their cache entries are compiled again only
    /// after a commit that succeeds).
    pub fn commit_failed(&mut self, ips: impl IntoIterator<Item = Ipv4Addr>) {
        for ip in ips {
            self.persisted.remove(&ip);
        }
    }

    /// The shared store refused `lease` (another server's client holds its address, or this
    /// client holds another address another server gave it): forget what this core recorded
    /// for it and take the store's `winner` instead. The client's next request is answered
    /// from the winner's truth.
    pub fn claim_lost(&mut self, lease: &Lease, winner: Option<Lease>) {
        self.persisted.remove(&lease.ip);
        self.leases.remove_if(lease.ip, &lease.client);
        if let Some(w) = winner {
            self.apply_remote(w);
        }
    }

    /// A lease another server of the cluster committed (from the shared store's change log):
    /// the table follows it, with the same slack on a bound lease as a restart's load gives.
    pub fn apply_remote(&mut self, lease: Lease) {
        self.persisted.insert(lease.ip, lease.expires);
        self.leases.upsert(held_with_slack(lease, self.renewal_slack()));
    }

    /// The MAC of the client an address is recorded for.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.leases.get(ip).map(|l| l.mac)
    }

    /// The sightings since the last call.
    pub fn take_sightings(&mut self) -> Vec<Sighting> {
        std::mem::take(&mut self.sightings)
    }

    /// Whether `mac` has a reservation.
    pub fn is_reserved(&self, mac: MacAddr) -> bool {
        self.params.reservations.contains_key(&mac)
    }

    /// What this server answers a DISCOVER and a REQUEST (SELECTING or INIT-REBOOT, for its
    /// address, directly or through the relay `giaddr`) from `mac` presenting `class`/`arch` and
    /// `client_id`, if the answer is fixed: the client has a reservation or a bound lease at
    /// `now`. Replies that the client's option 57 could make the core trim (longer than 548
    /// bytes) are not cacheable.
    pub fn cached_replies(
        &self,
        mac: MacAddr,
        class: ClientClass,
        arch: Option<u16>,
        client_id: Option<&[u8]>,
        giaddr: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<CachedReplies> {
        if self.params.mode != DhcpMode::Authoritative {
            return None;
        }
        let key = ClientKey::new(mac, client_id);
        let ip = match self.reservation(mac) {
            Some(h) => h.ip,
            None if self.params.unknown == UnknownPolicy::Ignore => return None,
            None => self.leases.for_client(&key).filter(|l| l.state == LeaseState::Bound && l.expires > now)?.ip,
        };
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest).set_chaddr(&mac.0).set_xid(0).set_flags(Flags::default());
        if let Some(g) = giaddr {
            if !self.serves_relay(g) {
                return None; // handle() would not answer it
            }
            m.set_giaddr(g);
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(MessageType::Discover));
        if let Some(id) = client_id {
            o.insert(DhcpOption::ClientIdentifier(id.to_vec()));
        }
        match class {
            ClientClass::Ipxe => {
                o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            }
            ClientClass::Http => {
                o.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            }
            ClientClass::Pxe => {
                o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            }
            ClientClass::Plain => {}
        }
        if let Some(a) = arch.filter(|_| class != ClientClass::Plain) {
            o.insert(DhcpOption::ClientSystemArchitecture(a.into()));
        }
        let raw = m.to_vec().ok()?;
        let ctx = Ctx {
            client: key,
            class: Classification { class, arch: if class == ClientClass::Plain { None } else { arch } },
            mac,
            raw: &raw,
            req: Request { payload: &raw, local_port: DHCP_SERVER_PORT, src_ip: Ipv4Addr::UNSPECIFIED, src_port: DHCP_CLIENT_PORT, now },
            msg: m.clone(),
        };
        if classify(&ctx.msg) != ctx.class {
            return None; // the facts do not describe a client of this class
        }
        let reply = |kind| {
            let payload = self.build(&ctx, kind, ip);
            match self.reply(&ctx, kind, payload, ip, Vec::new()) {
                Outcome::Reply(r) => Some(r),
                Outcome::Silent { .. } => None,
            }
        };
        let offer = reply(MessageType::Offer)?;
        let ack = reply(MessageType::Ack)?;
        if offer.payload.len() > 548 || ack.payload.len() > 548 {
            return None;
        }
        Some(CachedReplies { ip, offer, ack })
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
