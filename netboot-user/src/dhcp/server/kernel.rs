//! The kernel's side of the core: the OFFER and ACK a known client is answered with by the XDP
//! program (compiled here with the same code that answers on the socket, so they are
//! byte-identical), and the ACKs the kernel sent, recorded so that the lease table agrees.

use super::*;

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
