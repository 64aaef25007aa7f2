//! Reply building: the boot file a client gets, the options it asked for within its option 57,
//! the BOOTP minimum, the destination (RFC 2131 §4.1) and the frame sent on the packet socket.

use super::*;

impl DhcpServer {
    pub(super) fn boot_file(&self, c: &Ctx) -> Option<&str> {
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
    pub(super) fn build(&self, c: &Ctx, kind: MessageType, yiaddr: Ipv4Addr) -> Vec<u8> {
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
        let informing = crate::dhcp::classify::message_type(req) == Some(MessageType::Inform);
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
    pub(super) fn encode(&self, c: &Ctx, mut m: Message) -> Vec<u8> {
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

    pub(super) fn reply(&self, c: &Ctx, kind: MessageType, payload: Vec<u8>, yiaddr: Ipv4Addr, commit: Vec<Lease>) -> Outcome {
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
