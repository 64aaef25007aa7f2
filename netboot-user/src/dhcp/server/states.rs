//! RFC 2131's answer to each message: DISCOVER → OFFER; REQUEST in SELECTING, INIT-REBOOT,
//! RENEWING and REBINDING → ACK or NAK; RELEASE; DECLINE (quarantine); INFORM; and ProxyDHCP.

use super::*;

impl DhcpServer {
    pub(super) fn discover(&mut self, c: &Ctx) -> Outcome {
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

    pub(super) fn request(&mut self, c: &Ctx) -> Outcome {
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
    pub(super) fn ack_if_ours(&mut self, c: &Ctx, ip: Ipv4Addr, state: RequestState) -> Outcome {
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

    pub(super) fn nak(&self, c: &Ctx) -> Outcome {
        let payload = self.build(c, MessageType::Nak, Ipv4Addr::UNSPECIFIED);
        self.reply(c, MessageType::Nak, payload, Ipv4Addr::UNSPECIFIED, Vec::new())
    }

    pub(super) fn release(&mut self, c: &Ctx) -> Outcome {
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

    pub(super) fn decline(&mut self, c: &Ctx) -> Outcome {
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

    pub(super) fn inform(&self, c: &Ctx) -> Outcome {
        let payload = self.build(c, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
        self.reply(c, MessageType::Ack, payload, Ipv4Addr::UNSPECIFIED, Vec::new())
    }

    pub(super) fn is_to_us(&self, c: &Ctx) -> bool {
        match c.msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip == self.params.server_ip,
            _ => true,
        }
    }

    /// ProxyDHCP: boot clients get boot information without an address; a DISCOVER on 67 gets
    /// an OFFER, a REQUEST on 4011 an ACK back to its source.
    pub(super) fn proxy(&mut self, c: &Ctx, kind: MessageType) -> Outcome {
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

    pub(super) fn lease(&self, c: &Ctx, ip: Ipv4Addr, state: LeaseState, expires: u64) -> Lease {
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
}
