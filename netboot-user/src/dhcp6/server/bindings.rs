//! The bindings each message makes (RFC 8415 §18.3): an address per IA_NA for SOLICIT and
//! REQUEST, lifetimes extended by RENEW and REBIND, RELEASE, DECLINE (the address set aside)
//! and CONFIRM.

use super::*;

impl Dhcp6Server {
    /// The address for one IA of the client: its host's, its current binding, or a new one.
    pub(super) fn address_for(&mut self, c: &Ctx, iaid: u32) -> Option<Ipv6Addr> {
        let fixed = c.mac.and_then(|m| self.params.hosts.get(&m).copied().flatten());
        if let Some(ip) = fixed {
            // The reservation is the machine's: its firmware and its iPXE (two DUIDs) both
            // get it, as in v4, unless it was declined.
            let machine_holds = self.leases.get(ip).is_some_and(|l| l.mac == c.mac && l.state != Lease6State::Declined);
            return (machine_holds || self.leases.is_free_for(ip, &c.duid, iaid, c.now)).then_some(ip);
        }
        if let Some(l) = self.leases.of_client(&c.duid, iaid, c.now) && self.params.pools.iter().any(|p| p.contains(l.ip)) {
            return Some(l.ip);
        }
        if !self.allocations.allowed(c.now, self.params.new_clients_per_s) {
            self.limited = true;
            return None;
        }
        let ip = self.leases.allocate(&self.params.pools, &c.duid, iaid, c.now, |ip| self.params.reserved.contains(&ip))?;
        self.allocations.made();
        Some(ip)
    }

    pub(super) fn lifetimes(&self) -> (u32, u32) {
        let l = self.params.lease_secs;
        (l / 2, (l / 5).saturating_mul(4))
    }

    pub(super) fn binding(&self, c: &Ctx, ip: Ipv6Addr, iaid: u32, state: Lease6State) -> Lease6 {
        let secs = if state == Lease6State::Advertised { ADVERTISE_HOLD_SECS } else { u64::from(self.params.lease_secs) };
        Lease6 { ip, duid: c.duid.clone(), iaid, mac: c.mac, state, expires: c.now + secs }
    }

    pub(super) fn ia_with(&self, iaid: u32, ip: Ipv6Addr, valid: u32) -> DhcpOption {
        let (t1, t2) = if valid == 0 { (0, 0) } else { self.lifetimes() };
        let mut opts = dhcproto::v6::DhcpOptions::new();
        opts.insert(DhcpOption::IAAddr(IAAddr { addr: ip, preferred_life: valid, valid_life: valid, opts: Default::default() }));
        DhcpOption::IANA(IANA { id: iaid, t1, t2, opts })
    }

    /// SOLICIT and REQUEST: an address per IA_NA.
    pub(super) fn assign(&mut self, c: &Ctx, state: Lease6State) -> (MessageType, Vec<DhcpOption>, Vec<Lease6>) {
        let kind = if state == Lease6State::Advertised { MessageType::Advertise } else { MessageType::Reply };
        let (mut opts, mut leases) = (Vec::new(), Vec::new());
        for iaid in ia_ids(&c.msg) {
            match self.address_for(c, iaid) {
                Some(ip) => {
                    // An ADVERTISE does not shorten a binding the client already has.
                    let keep = self.leases.of_client(&c.duid, iaid, c.now).filter(|l| l.ip == ip && l.state == Lease6State::Bound && state == Lease6State::Advertised).cloned();
                    let lease = keep.unwrap_or_else(|| self.binding(c, ip, iaid, state));
                    self.leases.upsert(lease.clone());
                    opts.push(self.ia_with(iaid, ip, self.params.lease_secs));
                    leases.push(lease);
                }
                None => opts.push(ia_status(iaid, Status::NoAddrsAvail, "no address available")),
            }
        }
        (kind, opts, leases)
    }

    /// RENEW and REBIND: the IA's address extended, or (REBIND, RFC 8415 §18.3.5) bound anew
    /// if it is ours to give; a foreign address gets lifetime 0.
    pub(super) fn extend(&mut self, c: &Ctx, rebind: bool) -> (MessageType, Vec<DhcpOption>, Vec<Lease6>) {
        let (mut opts, mut leases) = (Vec::new(), Vec::new());
        for (iaid, addrs) in ia_addresses(&c.msg) {
            let bound = self.leases.of_client(&c.duid, iaid, c.now).map(|l| l.ip);
            let mut ia_opts = Vec::new();
            let mut any = false;
            for ip in addrs {
                let ours = self.params.pools.iter().any(|p| p.contains(ip)) || self.params.reserved.contains(&ip);
                if bound == Some(ip) || (rebind && bound.is_none() && ours && self.address_for(c, iaid) == Some(ip)) {
                    let lease = self.binding(c, ip, iaid, Lease6State::Bound);
                    self.leases.upsert(lease.clone());
                    leases.push(lease);
                    ia_opts.push(ip);
                    any = true;
                } else if !self.params.prefix.contains(&ip) || rebind {
                    // Not appropriate here (or not this client's): lifetime 0 (§18.3.4-5).
                    opts.push(self.ia_with(iaid, ip, 0));
                    any = true;
                }
            }
            match (any, ia_opts.first()) {
                (_, Some(ip)) => opts.push(self.ia_with(iaid, *ip, self.params.lease_secs)),
                (false, None) => opts.push(ia_status(iaid, Status::NoBinding, "no binding for this IA")),
                (true, None) => {}
            }
        }
        (MessageType::Reply, opts, leases)
    }

    pub(super) fn release(&mut self, c: &Ctx) -> (MessageType, Vec<DhcpOption>, Vec<Lease6>) {
        let mut leases = Vec::new();
        let mut opts = Vec::new();
        for (iaid, addrs) in ia_addresses(&c.msg) {
            let mut released = false;
            for ip in addrs {
                if let Some(l) = self.leases.release(ip, &c.duid, iaid, c.now) {
                    leases.push(l);
                    released = true;
                }
            }
            if !released {
                opts.push(ia_status(iaid, Status::NoBinding, "no binding for this IA"));
            }
        }
        opts.push(status(Status::Success, "released"));
        (MessageType::Reply, opts, leases)
    }

    /// DECLINE: the address is someone else's; nobody gets it for a lease time.
    pub(super) fn decline(&mut self, c: &Ctx) -> (MessageType, Vec<DhcpOption>, Vec<Lease6>) {
        let mut leases = Vec::new();
        for (iaid, addrs) in ia_addresses(&c.msg) {
            for ip in addrs {
                // Only the client's own binding: a DECLINE must not quarantine others' addresses.
                if self.leases.of_client(&c.duid, iaid, c.now).is_some_and(|l| l.ip == ip && l.state == Lease6State::Bound) {
                    let lease = Lease6 { state: Lease6State::Declined, ..self.binding(c, ip, iaid, Lease6State::Declined) };
                    self.leases.upsert(lease.clone());
                    leases.push(lease);
                }
            }
        }
        (MessageType::Reply, vec![status(Status::Success, "declined")], leases)
    }

    /// CONFIRM (RFC 8415 §18.3.3): are the client's addresses on this link?
    pub(super) fn confirm(&self, c: &Ctx) -> Result<(MessageType, Vec<DhcpOption>, Vec<Lease6>), Silence6> {
        let addrs: Vec<Ipv6Addr> = ia_addresses(&c.msg).into_iter().flat_map(|(_, a)| a).collect();
        if addrs.is_empty() {
            return Err(Silence6::NothingToConfirm);
        }
        let on_link = addrs.iter().all(|ip| self.params.prefix.contains(ip));
        let s = if on_link { status(Status::Success, "on link") } else { status(Status::NotOnLink, "not on this link") };
        Ok((MessageType::Reply, vec![s], Vec::new()))
    }
}
