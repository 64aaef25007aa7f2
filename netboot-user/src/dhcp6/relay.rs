//! The relay envelope (RFC 8415 §9, §19-20): RELAY-FORW in, RELAY-REPL out, as a typed view over
//! the bytes. A relay agent wraps the client's message in option 9 and says where it came from
//! (link and peer address, option 18 interface id, option 79 the client's MAC, RFC 6939); the
//! reply goes back wrapped in the same envelopes, innermost first.

use super::identity::HTYPE_ETHERNET;
use crate::mac::MacAddr;
use std::net::Ipv6Addr;

pub const RELAY_FORW: u8 = 12;
pub const RELAY_REPL: u8 = 13;
pub const OPT_RELAY_MSG: u16 = 9;
pub const OPT_INTERFACE_ID: u16 = 18;
pub const OPT_CLIENT_LINKLAYER_ADDR: u16 = 79;
/// RFC 8415 §7.6 HOP_COUNT_LIMIT: a relay chain longer than this is refused.
pub const HOP_COUNT_LIMIT: usize = 8;
const HEADER: usize = 34;

/// One RELAY-FORW envelope, without the message it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub hop_count: u8,
    pub link: Ipv6Addr,
    pub peer: Ipv6Addr,
    /// Option 18, echoed in the reply (RFC 8415 §19.3).
    pub interface_id: Option<Vec<u8>>,
    /// Option 79 of an Ethernet link.
    pub client_mac: Option<MacAddr>,
}

/// A client message and the envelopes around it, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrapped<'a> {
    pub envelopes: Vec<Envelope>,
    pub message: &'a [u8],
}

impl Unwrapped<'_> {
    /// The client's MAC as the relay nearest to it saw it.
    pub fn client_mac(&self) -> Option<MacAddr> {
        self.envelopes.last().and_then(|e| e.client_mac)
    }
}

/// Why a relay envelope was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than its header, or an option runs past the end.
    Truncated,
    /// No option 9, or two.
    NoMessage,
    /// More than [`HOP_COUNT_LIMIT`] envelopes, or options nested deeper than
    /// the guard's `MAX_NESTING`.
    TooDeep,
}

/// An option's data over 65535 bytes: it cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// The options of a DHCPv6 option area: `(code, data)` in order; an error if one overruns.
pub fn options(mut area: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    std::iter::from_fn(move || {
        if area.is_empty() {
            return None;
        }
        let (Some(code), Some(len)) = (area.get(..2), area.get(2..4)) else {
            area = &[];
            return Some(Err(Malformed::Truncated));
        };
        let (code, len) = (u16::from_be_bytes([code[0], code[1]]), usize::from(u16::from_be_bytes([len[0], len[1]])));
        let Some(data) = area.get(4..4 + len) else {
            area = &[];
            return Some(Err(Malformed::Truncated));
        };
        area = &area[4 + len..];
        Some(Ok((code, data)))
    })
}

/// Opens every RELAY-FORW envelope around a message (a message that is not one comes back
/// with none).
pub fn unwrap(mut bytes: &[u8]) -> Result<Unwrapped<'_>, Malformed> {
    let mut envelopes = Vec::new();
    while bytes.first() == Some(&RELAY_FORW) {
        if envelopes.len() == HOP_COUNT_LIMIT {
            return Err(Malformed::TooDeep);
        }
        if bytes.len() < HEADER {
            return Err(Malformed::Truncated);
        }
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[at..at + 16]).unwrap_or_default());
        let mut e = Envelope { hop_count: bytes[1], link: addr(2), peer: addr(18), interface_id: None, client_mac: None };
        let mut inner = None;
        for opt in options(&bytes[HEADER..]) {
            match opt? {
                (OPT_RELAY_MSG, m) if inner.is_none() => inner = Some(m),
                (OPT_RELAY_MSG, _) => return Err(Malformed::NoMessage),
                (OPT_INTERFACE_ID, id) => e.interface_id = Some(id.to_vec()),
                (OPT_CLIENT_LINKLAYER_ADDR, [h0, h1, mac @ ..]) if u16::from_be_bytes([*h0, *h1]) == HTYPE_ETHERNET => {
                    e.client_mac = <[u8; 6]>::try_from(mac).ok().map(MacAddr);
                }
                _ => {}
            }
        }
        envelopes.push(e);
        bytes = inner.ok_or(Malformed::NoMessage)?;
    }
    Ok(Unwrapped { envelopes, message: bytes })
}

/// `reply` wrapped in RELAY-REPL envelopes mirroring `envelopes` (outermost first), or
/// [`TooLarge`] when an envelope would not fit its option (every interface-id is echoed, and
/// they come from the network).
pub fn wrap(envelopes: &[Envelope], reply: Vec<u8>) -> Result<Vec<u8>, TooLarge> {
    envelopes.iter().rev().try_fold(reply, |inner, e| {
        let mut m = Vec::with_capacity(HEADER + 8 + inner.len() + e.interface_id.as_ref().map_or(0, |i| 4 + i.len()));
        m.push(RELAY_REPL);
        m.push(e.hop_count);
        m.extend_from_slice(&e.link.octets());
        m.extend_from_slice(&e.peer.octets());
        if let Some(id) = &e.interface_id {
            put_option(&mut m, OPT_INTERFACE_ID, id)?;
        }
        put_option(&mut m, OPT_RELAY_MSG, &inner)?;
        Ok(m)
    })
}

/// Appends one option, if `data` fits in its 16-bit length.
pub fn put_option(m: &mut Vec<u8>, code: u16, data: &[u8]) -> Result<(), TooLarge> {
    let len = u16::try_from(data.len()).map_err(|_| TooLarge)?;
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    Ok(())
}

/// A RELAY-FORW around `message` (what a relay agent sends; for tests and the bench), if it
/// fits.
pub fn forward(e: &Envelope, message: &[u8]) -> Result<Vec<u8>, TooLarge> {
    let mut m = vec![RELAY_FORW, e.hop_count];
    m.extend_from_slice(&e.link.octets());
    m.extend_from_slice(&e.peer.octets());
    if let Some(id) = &e.interface_id {
        put_option(&mut m, OPT_INTERFACE_ID, id)?;
    }
    if let Some(mac) = e.client_mac {
        let mut d = HTYPE_ETHERNET.to_be_bytes().to_vec();
        d.extend_from_slice(&mac.0);
        put_option(&mut m, OPT_CLIENT_LINKLAYER_ADDR, &d)?;
    }
    put_option(&mut m, OPT_RELAY_MSG, message)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(hop: u8) -> Envelope {
        Envelope {
            hop_count: hop,
            link: format!("2001:db8:{hop}::1").parse().unwrap(),
            peer: "fe80::5054:ff:fe00:1".parse().unwrap(),
            interface_id: Some(format!("eth{hop}").into_bytes()),
            client_mac: (hop == 0).then_some(MacAddr([0x52, 0x54, 0, 0, 0, 1])),
        }
    }

    #[test]
    fn nested_envelopes_unwrap_and_the_reply_mirrors_them() {
        let solicit = [1u8, 0xaa, 0xbb, 0xcc, 0, 8, 0, 2, 0, 0];
        // A relay next to the client, then one more towards the server.
        let inner = forward(&envelope(0), &solicit).unwrap();
        let outer = forward(&envelope(1), &inner).unwrap();
        let u = unwrap(&outer).unwrap();
        assert_eq!(u.message, solicit);
        assert_eq!(u.envelopes, vec![envelope(1), envelope(0)]);
        assert_eq!(u.client_mac(), Some(MacAddr([0x52, 0x54, 0, 0, 0, 1])));
        let reply = [7u8, 0xaa, 0xbb, 0xcc];
        let wrapped = wrap(&u.envelopes, reply.to_vec()).unwrap();
        // The same bytes a relay would parse: RELAY-REPL, hop 1, ..., interface id, message.
        assert_eq!(wrapped[0], RELAY_REPL);
        let mut as_forward = wrapped.clone();
        as_forward[0] = RELAY_FORW;
        let pos = as_forward.windows(2).position(|w| w == [RELAY_REPL, 0]).unwrap();
        as_forward[pos] = RELAY_FORW;
        let back = unwrap(&as_forward).unwrap();
        assert_eq!(back.message, reply);
        assert_eq!(back.envelopes.iter().map(|e| e.interface_id.clone()).collect::<Vec<_>>(), vec![Some(b"eth1".to_vec()), Some(b"eth0".to_vec())]);
    }

    #[test]
    fn hostile_envelopes_are_refused() {
        let solicit = [1u8, 0, 0, 1];
        let ok = forward(&envelope(0), &solicit).unwrap();
        assert_eq!(unwrap(&ok[..20]), Err(Malformed::Truncated));
        assert_eq!(unwrap(&ok[..ok.len() - 1]), Err(Malformed::Truncated));
        let mut none = ok[..HEADER].to_vec();
        put_option(&mut none, OPT_INTERFACE_ID, b"x").unwrap();
        assert_eq!(unwrap(&none), Err(Malformed::NoMessage));
        let deep = (0..=HOP_COUNT_LIMIT).fold(solicit.to_vec(), |m, _| forward(&envelope(0), &m).unwrap());
        assert_eq!(unwrap(&deep), Err(Malformed::TooDeep));
        for n in 0..ok.len() {
            let _ = unwrap(&ok[..n]);
        }
    }

    #[test]
    fn a_reply_whose_envelopes_do_not_fit_is_refused_not_a_panic() {
        // A relay's interface-id of ~65 KB, inside another relay's envelope: the inner
        // RELAY-REPL alone exceeds what the outer option 9 can carry.
        let mut big = envelope(0);
        big.interface_id = Some(vec![b'x'; 65_500]);
        assert!(wrap(&[envelope(1), big], vec![7, 0, 0, 1]) == Err(TooLarge), "an envelope over 64 KiB was encoded");
    }
}
