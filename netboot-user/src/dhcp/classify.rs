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

/// One option as it is on the wire.
#[derive(Debug, Clone, Copy)]
pub struct RawOption<'a> {
    pub code: u8,
    /// Code, length and payload.
    pub wire: &'a [u8],
}

impl<'a> RawOption<'a> {
    pub fn data(&self) -> &'a [u8] {
        &self.wire[2..]
    }
}

/// Why a walk of the option area stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkError {
    /// An option runs past the end of the message.
    Overrun,
    /// The area ends without END.
    NoEnd,
}

/// The options of the main option area in order (PAD skipped), up to END. The last item is an
/// error if the area is not well formed. One walk for the core, the echo of option 82 and the
/// validation that mirrors the XDP program's.
pub fn raw_options(packet: &[u8]) -> impl Iterator<Item = Result<RawOption<'_>, WalkError>> {
    let mut i = wire::BOOTP_OPTIONS_OFF;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < packet.len() && packet[i] == wire::opt::PAD {
            i += 1;
        }
        let Some(&code) = packet.get(i) else {
            done = true;
            return Some(Err(WalkError::NoEnd));
        };
        if code == wire::opt::END {
            done = true;
            return None;
        }
        let end = packet.get(i + 1).map(|len| i + 2 + usize::from(*len)).filter(|end| *end <= packet.len());
        let Some(end) = end else {
            done = true;
            return Some(Err(WalkError::Overrun));
        };
        let wire = &packet[i..end];
        i = end;
        Some(Ok(RawOption { code, wire }))
    })
}

/// The message type (option 53), if the message has a valid one. dhcproto's own
/// `DhcpOptions::msg_type` panics (`unreachable!`) when option 53 is present but was not
/// decodable as a message type (a length other than 1): found by the fuzzer.
pub fn message_type(m: &Message) -> Option<dhcproto::v4::MessageType> {
    match m.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// Decodes a DHCP message so that every option in it is seen. dhcproto stops at the first
/// option whose value it cannot interpret (say a 3-byte option 154) and drops the rest, which
/// would make the core see a different client than the XDP program, which walks the raw
/// options. So each option dhcproto dropped is decoded alone, or kept as an unknown option.
pub fn decode(payload: &[u8]) -> Option<Message> {
    let mut msg = Message::decode(&mut Decoder::new(payload)).ok()?;
    for item in raw_options(payload) {
        let raw = match item {
            Ok(raw) => raw,
            Err(WalkError::NoEnd) => break,
            Err(WalkError::Overrun) => return None,
        };
        let oc = OptionCode::from(raw.code);
        if msg.opts().get(oc).is_none() {
            let opt = DhcpOption::decode(&mut Decoder::new(raw.wire))
                .ok()
                .filter(|o| OptionCode::from(o) == oc)
                .unwrap_or_else(|| DhcpOption::Unknown(UnknownOption::new(oc, raw.data().to_vec())));
            msg.opts_mut().insert(opt);
        }
    }
    Some(msg)
}

/// Whether the option area is well formed the way the XDP program requires it: every option
/// inside the message and an END. The core and the kernel reject the same messages.
pub fn options_well_formed(packet: &[u8]) -> bool {
    raw_options(packet).all(|r| r.is_ok())
}

/// The raw payload of option `code` in an encoded DHCP message, for options that must be echoed
/// byte for byte (82, RFC 3046). Only the main option area is searched.
pub fn raw_option(packet: &[u8], code: u8) -> Option<&[u8]> {
    if packet.get(wire::bootp::MAGIC..wire::BOOTP_OPTIONS_OFF)? != wire::DHCP_MAGIC {
        return None;
    }
    raw_options(packet).map_while(Result::ok).find(|o| o.code == code).map(|o| o.data())
}
