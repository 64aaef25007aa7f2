//! The sans-IO DHCPv6 server core: request bytes, their source and the time in; a reply and
//! the bindings it made out. No sockets, no clock, no disk.
//!
//! RFC 8415 §18.3: SOLICIT → ADVERTISE (preference 255: clients then skip their first
//! retransmission's wait), or REPLY with Rapid Commit when the client asks; REQUEST, RENEW,
//! REBIND → REPLY with the IA_NA bindings; RELEASE, DECLINE (the address is quarantined),
//! CONFIRM (on link or not) and INFORMATION-REQUEST → REPLY. A message the RFC says to discard
//! is a [`Silence6`] with a counter. Boot answers by class as in v4 (DESIGN.md §2, RFC 5970):
//! option 59 is `tftp://[us]/file` for PXE, the script URL for iPXE, the HTTP URL with
//! "HTTPClient" echoed in option 16 for UEFI HTTP boot.

mod bindings;

use super::identity::{mac_from_duid, mac_from_link_local};
use super::leases::{Lease6, Lease6State, Lease6Table};
use super::relay;
use crate::config::{Config, Pool6, UnknownPolicy};
use crate::dhcp::server::{BootFiles, Sighting};
use crate::mac::MacAddr;
use dhcproto::v6::{
    DhcpOption, IAAddr, IANA, Message, MessageType, OptionCode, Status, StatusCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use ipnet::Ipv6Net;
use netboot_common::wire::{self, ClientClass};
use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;

pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;
/// How long an ADVERTISE holds its address for the client.
pub const ADVERTISE_HOLD_SECS: u64 = 60;
/// Enterprise number of the vendor class UEFI sends (Intel, 343; EDK2 PxeBcDhcp6.c).
const ENTERPRISE_UEFI: u32 = 343;
/// DUIDs are at most 128 bytes (RFC 8415 §11.1) plus the type.
const MAX_DUID: usize = 130;

/// Everything the core needs from the configuration, resolved.
#[derive(Debug, Clone)]
pub struct Params6 {
    pub server_ip: Ipv6Addr,
    pub server_duid: Vec<u8>,
    pub prefix: Ipv6Net,
    pub pools: Vec<Pool6>,
    pub lease_secs: u32,
    pub dns: Vec<Ipv6Addr>,
    /// URLs with `{server}` expanded to `[server_ip]`; PXE files as `tftp://` URLs.
    pub boot: BootFiles,
    /// Known machines by MAC, with their fixed address if the host names one.
    pub hosts: HashMap<MacAddr, Option<Ipv6Addr>>,
    /// The fixed addresses of `hosts`: never given from the pools to anyone else.
    pub reserved: HashSet<Ipv6Addr>,
    pub unknown: UnknownPolicy,
    /// `[dhcp] new_clients_per_s`: pool allocations per second, at most (0 = unlimited), as in
    /// v4: a flood of invented DUIDs cannot take the pool faster.
    pub new_clients_per_s: u32,
    /// `[dhcp] per_client_pps`: messages per second one client may send (0 = unlimited); a
    /// client is its source address, and behind relays the innermost relay's peer address.
    pub per_client_pps: u32,
}

impl Params6 {
    pub fn from_config(cfg: &Config, server_ip: Ipv6Addr, server_duid: Vec<u8>) -> Params6 {
        let b = &cfg.boot;
        let url = |s: &str| Config::expand(s, server_ip);
        // A PXE client fetches what option 59 names: a bare file name is one on our TFTP.
        let tftp = |s: &str| if s.is_empty() || s.contains("://") { url(s) } else { format!("tftp://[{server_ip}]/{}", s.trim_start_matches('/')) };
        Params6 {
            server_ip,
            server_duid,
            prefix: cfg.dhcp6.prefix().unwrap_or_else(|| Ipv6Net::new(server_ip, 128).expect("128 is a valid length")),
            pools: cfg.dhcp6.pools.iter().map(|p| *p.get_ref()).collect(),
            lease_secs: cfg.dhcp6.lease_time.0.as_secs().min(u64::from(u32::MAX - 1)) as u32,
            dns: cfg.dhcp6.dns.clone(),
            boot: BootFiles {
                bios: String::new(), // no BIOS firmware boots over IPv6
                uefi_ia32: tftp(&b.uefi_ia32),
                uefi_x64: tftp(&b.uefi_x64),
                uefi_arm64: tftp(&b.uefi_arm64),
                // The Secure Boot chain is booted over IPv4 only (docs/DESIGN.md §5).
                secure_x64: String::new(),
                secure_arm64: String::new(),
                http_client: url(&b.http_client),
                ipxe_script: url(&b.ipxe_script),
            },
            hosts: cfg.dhcp.reservations().map(|h| (h.mac, h.ip6)).collect(),
            reserved: cfg.dhcp.reservations().filter_map(|h| h.ip6).collect(),
            unknown: cfg.dhcp.unknown,
            new_clients_per_s: cfg.dhcp.new_clients_per_s,
            per_client_pps: cfg.dhcp.per_client_pps,
        }
    }
}

/// What came in.
#[derive(Debug, Clone, Copy)]
pub struct Request6<'a> {
    pub payload: &'a [u8],
    /// Source address of the datagram: the client's link-local, or a relay agent.
    pub src: Ipv6Addr,
    /// Unix seconds.
    pub now: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply6 {
    /// ADVERTISE or REPLY.
    pub kind: MessageType,
    /// What goes on the wire: the reply, in RELAY-REPL envelopes for a relayed request.
    pub payload: Vec<u8>,
    /// Where: the client (port 546) or the relay the request came from (port 547).
    pub to: Ipv6Addr,
    pub port: u16,
    pub mac: Option<MacAddr>,
    pub class: ClientClass,
    pub arch: Option<u16>,
    /// Bindings this exchange made or changed: durable before the reply leaves.
    pub leases: Vec<Lease6>,
    /// Set when the kernel may answer the same client's next such request with this reply.
    pub cacheable: Option<Cacheable6>,
}

/// What the XDP program must check before it answers a request with a reply compiled from
/// this one (`netboot_common::cache6`): the reply depends on nothing else of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cacheable6 {
    /// The request's message type (SOLICIT or REQUEST).
    pub kind: u8,
    pub client_id: Vec<u8>,
    pub iaid: u32,
    /// The host's fixed address, which the reply gives.
    pub ip: Ipv6Addr,
    /// The vendor class enterprise number (0 without one).
    pub enterprise: u32,
}

impl Reply6 {
    /// The bindings that must be durable before the reply leaves: all but an ADVERTISE's
    /// holds, which bind nothing (RFC 8415 §18.3.1: the REQUEST that follows is committed), so
    /// that a flood of invented DUIDs costs no disk write each.
    pub fn durable_leases(&self) -> Vec<Lease6> {
        self.leases.iter().filter(|l| l.state != Lease6State::Advertised).cloned().collect()
    }

    /// The first address the reply gives, for the node's timeline.
    pub fn address(&self) -> Option<Ipv6Addr> {
        self.leases.iter().find(|l| matches!(l.state, Lease6State::Advertised | Lease6State::Bound)).map(|l| l.ip)
    }
}

/// Why a message gets no reply (RFC 8415 §16 says to discard it, or policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence6 {
    Malformed,
    /// ADVERTISE, REPLY, RELAY-REPL and the like: sent by servers.
    NotARequest,
    NoClientId,
    /// A server identifier where none may be, or none where one must be.
    ServerIdRule,
    /// For another server.
    NotForUs,
    /// INFORMATION-REQUEST with an IA.
    IaInInformationRequest,
    /// `[dhcp] unknown = "ignore"` and no host has this MAC.
    UnknownClient,
    /// CONFIRM without addresses.
    NothingToConfirm,
    /// A new client over `new_clients_per_s` this second.
    NewClientLimited,
    /// A datagram over [`super::guard::MAX_DATAGRAM`].
    TooLarge,
    /// A client over `per_client_pps` this second.
    RateLimited,
    /// The reply (in its relay envelopes) does not encode: an option over 64 KiB.
    ReplyTooLarge,
}

impl Silence6 {
    pub fn counter(self) -> &'static str {
        match self {
            Silence6::Malformed => "dhcp6_silent_malformed",
            Silence6::NotARequest => "dhcp6_silent_not_a_request",
            Silence6::NoClientId => "dhcp6_silent_no_client_id",
            Silence6::ServerIdRule => "dhcp6_silent_server_id_rule",
            Silence6::NotForUs => "dhcp6_silent_not_for_us",
            Silence6::IaInInformationRequest => "dhcp6_silent_ia_in_information_request",
            Silence6::UnknownClient => "dhcp6_silent_unknown_client",
            Silence6::NothingToConfirm => "dhcp6_silent_nothing_to_confirm",
            Silence6::NewClientLimited => "dhcp6_silent_new_client_limited",
            Silence6::TooLarge => "dhcp6_silent_too_large",
            Silence6::RateLimited => "dhcp6_silent_rate_limited",
            Silence6::ReplyTooLarge => "dhcp6_silent_reply_too_large",
        }
    }
}

/// What a client message says about the booting client (as [`crate::dhcp::classify`] in v4):
/// user class "iPXE" (option 15), vendor class "HTTPClient"/"PXEClient" (option 16), option 61.
pub fn classify6(m: &Message) -> (ClientClass, Option<u16>, Option<u32>) {
    let o = m.opts();
    let ipxe = matches!(o.get(OptionCode::UserClass), Some(DhcpOption::UserClass(u)) if u.data.iter().any(|d| wire::is_ipxe_user_class(d)));
    let (vendor, enterprise) = match o.get(OptionCode::VendorClass) {
        Some(DhcpOption::VendorClass(v)) => {
            let best = v.data.iter().map(|d| wire::vendor_class(d)).max_by_key(|c| *c as u8).unwrap_or(wire::VendorClass::None);
            (best, Some(v.num))
        }
        _ => (wire::VendorClass::None, None),
    };
    let arch = match o.get(OptionCode::ClientArchType) {
        Some(DhcpOption::ClientArchType(a)) => a.first().map(|a| u16::from(*a)),
        _ => None,
    };
    (ClientClass::classify(ipxe, false, vendor, arch.is_some()), arch, enterprise)
}

pub struct Dhcp6Server {
    params: Params6,
    leases: Lease6Table,
    /// Machines seen asking since the I/O layer last took them (for discovery).
    sightings: Vec<Sighting>,
    /// Pool allocations in the current second.
    allocations: crate::dhcp::new_clients::NewClients,
    /// The request being handled wanted a new address over `new_clients_per_s`.
    limited: bool,
    /// Messages per client in the current second (`per_client_pps`).
    rates: ClientRates,
}

/// Messages per client (source address, and the innermost relay's peer) in the current second.
#[derive(Default)]
struct ClientRates {
    second: u64,
    counts: HashMap<(Ipv6Addr, Ipv6Addr), u32>,
}

/// Clients counted per second, at most: beyond, the new ones of that second are not counted
/// (a flood of invented sources is not one client; `new_clients_per_s` bounds what it takes).
const RATES_KEPT: usize = 65536;

impl ClientRates {
    /// Counts a message of `client` at `now`; whether it is over `limit` (0 = unlimited).
    fn over(&mut self, client: (Ipv6Addr, Ipv6Addr), now: u64, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        if self.second != now {
            self.second = now;
            self.counts.clear();
        }
        if self.counts.len() >= RATES_KEPT && !self.counts.contains_key(&client) {
            return false;
        }
        let n = self.counts.entry(client).or_default();
        *n += 1;
        *n > limit
    }
}

/// Sightings kept between two takes, at most.
const SIGHTINGS_KEPT: usize = 1024;

/// What discovery records of a DHCPv6 client: as in v4, with the UUID of a DUID-UUID (EDK2's
/// SMBIOS UUID) and the first vendor class item.
fn sighting(m: &Message, mac: MacAddr, duid: &[u8], known: bool, now: u64) -> Sighting {
    let (class, arch, _) = classify6(m);
    let uuid = match duid {
        [0, 4, uuid @ ..] if uuid.len() == 16 => crate::dhcp::server::machine_uuid(&[&[0u8][..], uuid].concat()),
        _ => None,
    };
    let vendor_class = match m.opts().get(OptionCode::VendorClass) {
        Some(DhcpOption::VendorClass(v)) => v.data.first().map(|d| String::from_utf8_lossy(d).chars().filter(|c| !c.is_control()).take(128).collect()),
        _ => None,
    };
    Sighting { mac, at: now, class, arch, uuid, vendor_class, relay: None, known }
}

/// The parts of a request every handler needs.
struct Ctx {
    msg: Message,
    duid: Vec<u8>,
    mac: Option<MacAddr>,
    class: ClientClass,
    arch: Option<u16>,
    enterprise: Option<u32>,
    now: u64,
}

impl Dhcp6Server {
    pub fn new(params: Params6) -> Dhcp6Server {
        Dhcp6Server { params, leases: Lease6Table::default(), sightings: Vec::new(), allocations: Default::default(), limited: false, rates: ClientRates::default() }
    }

    fn observe(&mut self, s: Sighting) {
        if self.sightings.len() < SIGHTINGS_KEPT {
            self.sightings.push(s);
        }
    }

    /// The machines seen since the last call.
    pub fn take_sightings(&mut self) -> Vec<Sighting> {
        std::mem::take(&mut self.sightings)
    }

    pub fn params(&self) -> &Params6 {
        &self.params
    }

    /// A reload: new pools, hosts and boot files; bindings stay.
    pub fn set_params(&mut self, params: Params6) {
        self.params = params;
    }

    pub fn leases(&self) -> &Lease6Table {
        &self.leases
    }

    /// Bindings read back from the store at start.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = Lease6>) {
        for l in leases {
            self.leases.upsert(l);
        }
    }

    /// A REPLY the kernel sent from the reply cache bound `ip` to the client: the binding the
    /// core would have made (to be written to the store).
    pub fn bound_by_kernel(&mut self, ip: Ipv6Addr, duid: Vec<u8>, iaid: u32, mac: MacAddr, now: u64) -> Lease6 {
        let lease = Lease6 { ip, duid, iaid, mac: Some(mac), state: Lease6State::Bound, expires: now + u64::from(self.params.lease_secs) };
        self.leases.upsert(lease.clone());
        lease
    }

    pub fn sweep(&mut self, now: u64) -> usize {
        self.leases.sweep(now)
    }

    pub fn handle(&mut self, req: &Request6) -> Result<Reply6, Silence6> {
        if req.payload.len() > super::guard::MAX_DATAGRAM {
            return Err(Silence6::TooLarge);
        }
        let outer = relay::unwrap(req.payload).map_err(|_| Silence6::Malformed)?;
        let peer = outer.envelopes.last().map_or(req.src, |e| e.peer);
        if self.rates.over((req.src, peer), req.now, self.params.per_client_pps) {
            return Err(Silence6::RateLimited);
        }
        super::guard::check(outer.message).map_err(|_| Silence6::Malformed)?;
        let msg = Message::decode(&mut Decoder::new(outer.message)).map_err(|_| Silence6::Malformed)?;
        let kind = msg.msg_type();
        if !matches!(
            kind,
            MessageType::Solicit
                | MessageType::Request
                | MessageType::Confirm
                | MessageType::Renew
                | MessageType::Rebind
                | MessageType::Release
                | MessageType::Decline
                | MessageType::InformationRequest
        ) {
            return Err(Silence6::NotARequest);
        }
        let client_id = match msg.opts().get(OptionCode::ClientId) {
            Some(DhcpOption::ClientId(d)) if !d.is_empty() && d.len() <= MAX_DUID => Some(d.clone()),
            Some(_) => return Err(Silence6::Malformed),
            None => None,
        };
        let server_id = match msg.opts().get(OptionCode::ServerId) {
            Some(DhcpOption::ServerId(d)) => Some(d.as_slice()),
            _ => None,
        };
        // RFC 8415 §16.2-16.12: which messages carry which identifiers.
        let ours = server_id.map(|s| s == self.params.server_duid.as_slice());
        match kind {
            MessageType::Solicit | MessageType::Confirm | MessageType::Rebind if ours.is_some() => return Err(Silence6::ServerIdRule),
            MessageType::Request | MessageType::Renew | MessageType::Release | MessageType::Decline if ours.is_none() => {
                return Err(Silence6::ServerIdRule);
            }
            _ if ours == Some(false) => return Err(Silence6::NotForUs),
            _ => {}
        }
        if kind == MessageType::InformationRequest && has_ia(&msg) {
            return Err(Silence6::IaInInformationRequest);
        }
        let duid = match (client_id, kind) {
            (Some(d), _) => d,
            (None, MessageType::InformationRequest) => Vec::new(),
            (None, _) => return Err(Silence6::NoClientId),
        };
        let mac = outer.client_mac().or_else(|| mac_from_duid(&duid)).or_else(|| mac_from_link_local(peer));
        let known = mac.is_some_and(|m| self.params.hosts.contains_key(&m));
        let (class, arch, enterprise) = classify6(&msg);
        if let Some(mac) = mac {
            self.observe(sighting(&msg, mac, &duid, known, req.now));
        }
        if !known && self.params.unknown == UnknownPolicy::Ignore {
            return Err(Silence6::UnknownClient);
        }
        let c = Ctx { msg, duid, mac, class, arch, enterprise, now: req.now };
        self.limited = false;

        let rapid = kind == MessageType::Solicit && c.msg.opts().get(OptionCode::RapidCommit).is_some();
        let (reply_kind, opts, leases) = match kind {
            MessageType::Solicit if rapid => self.assign(&c, Lease6State::Bound),
            MessageType::Solicit => self.assign(&c, Lease6State::Advertised),
            MessageType::Request => self.assign(&c, Lease6State::Bound),
            MessageType::Renew | MessageType::Rebind => self.extend(&c, kind == MessageType::Rebind),
            MessageType::Release => self.release(&c),
            MessageType::Decline => self.decline(&c),
            MessageType::Confirm => self.confirm(&c)?,
            _ => (MessageType::Reply, Vec::new(), Vec::new()),
        };
        if self.limited && leases.is_empty() {
            // Nothing to give but new addresses, and none this second: silence, as in v4
            // (the client retries; a flood of invented DUIDs gets nothing).
            return Err(Silence6::NewClientLimited);
        }
        let mut reply = Message::new_with_id(reply_kind, c.msg.xid());
        let o = reply.opts_mut();
        o.insert(DhcpOption::ServerId(self.params.server_duid.clone()));
        if !c.duid.is_empty() {
            o.insert(DhcpOption::ClientId(c.duid.clone()));
        }
        for opt in opts {
            o.insert(opt);
        }
        if reply_kind == MessageType::Advertise {
            o.insert(DhcpOption::Preference(255));
        }
        if rapid {
            o.insert(DhcpOption::RapidCommit);
        }
        if !self.params.dns.is_empty() && !matches!(kind, MessageType::Release | MessageType::Decline) {
            o.insert(DhcpOption::DomainNameServers(self.params.dns.clone()));
        }
        if !matches!(kind, MessageType::Release | MessageType::Decline | MessageType::Confirm) {
            self.boot_options(&c, o);
        }
        let inner = reply.to_vec().map_err(|_| Silence6::ReplyTooLarge)?;
        let cacheable = if outer.envelopes.is_empty() && !rapid { self.cacheable(&c, kind, &leases) } else { None };
        // To the client, or to the relay that sent the request (RFC 8415 §19.3).
        let port = if outer.envelopes.is_empty() { CLIENT_PORT } else { SERVER_PORT };
        Ok(Reply6 { kind: reply_kind, payload: relay::wrap(&outer.envelopes, inner).map_err(|_| Silence6::ReplyTooLarge)?, to: req.src, port, mac, class, arch, leases, cacheable })
    }

    /// Whether the reply to this SOLICIT or REQUEST (on the link, no Rapid Commit) can answer
    /// the client's next one in the kernel: a host's fixed address for its one IA_NA, class
    /// options the kernel reads the same way, DUIDs an entry holds. The reply then depends on
    /// the DUID, IAID, source, class, architecture and enterprise number only (and on the
    /// config: a reload empties the cache).
    fn cacheable(&self, c: &Ctx, kind: MessageType, leases: &[Lease6]) -> Option<Cacheable6> {
        use netboot_common::cache6::{DUID_MAX, REQUEST, SOLICIT};
        let kind = match kind {
            MessageType::Solicit => SOLICIT,
            MessageType::Request => REQUEST,
            _ => return None,
        };
        let fixed = self.params.hosts.get(&c.mac?).copied().flatten()?;
        let o = c.msg.opts();
        let one_ia = ia_nas(&c.msg).count() == 1 && !o.iter().any(|o| matches!(o, DhcpOption::IATA(_) | DhcpOption::IAPD(_)));
        let plain_classes = match (o.get(OptionCode::UserClass), o.get(OptionCode::VendorClass)) {
            (Some(DhcpOption::UserClass(u)), _) if !(u.data.len() == 1 && u.data[0] == wire::IPXE_USER_CLASS) => false,
            (_, Some(DhcpOption::VendorClass(v))) if v.data.len() != 1 => false,
            _ => true,
        };
        let gives_fixed = leases.len() == 1 && leases[0].ip == fixed;
        let fits = (1..=DUID_MAX).contains(&c.duid.len()) && self.params.server_duid.len() <= DUID_MAX;
        (one_ia && plain_classes && gives_fixed && fits).then(|| Cacheable6 {
            kind,
            client_id: c.duid.clone(),
            iaid: leases[0].iaid,
            ip: fixed,
            enterprise: c.enterprise.unwrap_or(0),
        })
    }

    /// Option 59 (and 16 for HTTP boot) by class.
    fn boot_options(&self, c: &Ctx, o: &mut dhcproto::v6::DhcpOptions) {
        let class = crate::dhcp::Classification { class: c.class, arch: c.arch };
        let Some(url) = self.params.boot.for_client(class, false) else { return };
        o.insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::OptBootfileUrl, url.as_bytes().to_vec())));
        if c.class == ClientClass::Http {
            // UEFI HTTP boot takes only an answer that says "HTTPClient" (EDK2 HttpBootDhcp6.c).
            o.insert(class_option(OptionCode::VendorClass, Some(c.enterprise.unwrap_or(ENTERPRISE_UEFI)), &[&wire::HTTP_VENDOR_PREFIX]));
        }
    }
}

/// A user class (15) or vendor class (16) option, encoded here: dhcproto 0.15 writes their
/// length as the number of items, not bytes (its decoding is right).
pub fn class_option(code: OptionCode, enterprise: Option<u32>, items: &[&[u8]]) -> DhcpOption {
    let mut data = enterprise.map(|e| e.to_be_bytes().to_vec()).unwrap_or_default();
    for item in items {
        data.extend_from_slice(&(item.len() as u16).to_be_bytes());
        data.extend_from_slice(item);
    }
    DhcpOption::Unknown(UnknownOption::new(code, data))
}

fn status(s: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode { status: s, msg: msg.into() })
}

fn ia_status(iaid: u32, s: Status, msg: &str) -> DhcpOption {
    let mut opts = dhcproto::v6::DhcpOptions::new();
    opts.insert(status(s, msg));
    DhcpOption::IANA(IANA { id: iaid, t1: 0, t2: 0, opts })
}

/// IA_NAs of one message, and addresses of one IA_NA, that are answered at most: firmware sends
/// one of each; a message packed with thousands would otherwise cost a binding each and make a
/// reply that no datagram (or relay envelope) holds.
const MAX_IAS: usize = 8;
const MAX_ADDRS_PER_IA: usize = 8;

fn ia_nas(m: &Message) -> impl Iterator<Item = &IANA> {
    m.opts()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
        .take(MAX_IAS)
}

fn has_ia(m: &Message) -> bool {
    m.opts().iter().any(|o| matches!(o, DhcpOption::IANA(_) | DhcpOption::IATA(_) | DhcpOption::IAPD(_)))
}

/// The IAIDs of the IA_NAs, each once (a client may repeat one; it gets one answer).
fn ia_ids(m: &Message) -> Vec<u32> {
    let mut ids: Vec<u32> = Vec::new();
    for ia in ia_nas(m) {
        if !ids.contains(&ia.id) {
            ids.push(ia.id);
        }
    }
    ids
}

/// Each IA_NA with the addresses it carries.
fn ia_addresses(m: &Message) -> Vec<(u32, Vec<Ipv6Addr>)> {
    ia_nas(m)
        .map(|ia| {
            let addrs = ia.opts.iter().filter_map(|o| match o {
                DhcpOption::IAAddr(a) => Some(a.addr),
                _ => None,
            });
            (ia.id, addrs.take(MAX_ADDRS_PER_IA).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests;
