//! The client classifier of DESIGN.md §2 on a decoded message: the same decision the XDP
//! program makes (both call [`ClientClass::classify`]), from dhcproto's view of the options.

use dhcproto::v4::{DhcpOption, Message, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder};
use netboot_common::wire::{self, ClientClass, VendorClass};

/// What a request says about the booting client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub class: ClientClass,
    /// Option 93, first entry.
    pub arch: Option<u16>,
}

pub fn classify(msg: &Message) -> Classification {
    let opts = msg.opts();
    let ipxe_user_class = matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(v)) if wire::is_ipxe_user_class(v));
    let has_ipxe_encap = opts.get(OptionCode::Unknown(wire::opt::IPXE_ENCAP)).is_some();
    let vendor = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => wire::vendor_class(v),
        _ => VendorClass::None,
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    };
    Classification { class: ClientClass::classify(ipxe_user_class, has_ipxe_encap, vendor, arch.is_some()), arch }
}

/// Decodes a DHCP message so that every option in it is seen. dhcproto stops at the first
/// option whose value it cannot interpret (say a 3-byte option 154) and drops the rest, which
/// would make the core see a different client than the XDP program, which walks the raw
/// options. So each option dhcproto dropped is decoded alone, or kept as an unknown option.
pub fn decode(payload: &[u8]) -> Option<Message> {
    let mut msg = Message::decode(&mut Decoder::new(payload)).ok()?;
    let mut i = wire::BOOTP_OPTIONS_OFF;
    while i < payload.len() {
        match payload[i] {
            wire::opt::PAD => i += 1,
            wire::opt::END => break,
            code => {
                let len = usize::from(*payload.get(i + 1)?);
                let raw = payload.get(i..i + 2 + len)?;
                let oc = OptionCode::from(code);
                if msg.opts().get(oc).is_none() {
                    let opt = DhcpOption::decode(&mut Decoder::new(raw))
                        .ok()
                        .filter(|o| OptionCode::from(o) == oc)
                        .unwrap_or_else(|| DhcpOption::Unknown(UnknownOption::new(oc, raw[2..].to_vec())));
                    msg.opts_mut().insert(opt);
                }
                i += 2 + len;
            }
        }
    }
    Some(msg)
}

/// Whether the option area is well formed the way the XDP program requires it: every option
/// inside the message and an END. The core and the kernel reject the same messages.
pub fn options_well_formed(packet: &[u8]) -> bool {
    let mut i = wire::BOOTP_OPTIONS_OFF;
    while i < packet.len() {
        match packet[i] {
            wire::opt::PAD => i += 1,
            wire::opt::END => return true,
            _ => match packet.get(i + 1) {
                Some(len) if i + 2 + usize::from(*len) <= packet.len() => i += 2 + usize::from(*len),
                _ => return false,
            },
        }
    }
    false
}

/// The raw payload of option `code` in an encoded DHCP message, for options that must be echoed
/// byte for byte (82, RFC 3046). Only the main option area is searched.
pub fn raw_option(packet: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = wire::BOOTP_OPTIONS_OFF;
    if packet.get(wire::bootp::MAGIC..i)? != wire::DHCP_MAGIC {
        return None;
    }
    while i < packet.len() {
        match packet[i] {
            wire::opt::PAD => i += 1,
            wire::opt::END => return None,
            c => {
                let len = usize::from(*packet.get(i + 1)?);
                let data = packet.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(data);
                }
                i += 2 + len;
            }
        }
    }
    None
}
