//! What a DHCPv6 message must be before dhcproto decodes it. dhcproto decodes options that
//! hold options (IA_NA, IAADDR, a relay message...) by recursion, with no depth limit, and
//! subtracts a fixed header from the length of a few options without checking it: a crafted
//! datagram could exhaust a worker's stack (which aborts the whole agent) or overflow.
//! [`check`] walks the option tree iteratively and refuses all of that first.

use super::relay::{self, Malformed};

/// The largest datagram handled, relayed or not. A client's message is a few hundred bytes;
/// eight relays (RFC 8415's HOP_COUNT_LIMIT) add well under 2 KiB. Bigger is hostile, and
/// bounding it bounds the RELAY-REPL we build around it (every interface-id is echoed).
pub const MAX_DATAGRAM: usize = 8192;
/// Options inside options, at most: IA_NA → IAADDR → STATUS_CODE is the deepest a client
/// sends (IA_PD → IAPREFIX → ... the same).
pub const MAX_NESTING: usize = 4;

/// Fixed bytes at the start of an option that holds options, by code (dhcproto's layout).
fn encapsulation_header(code: u16) -> Option<usize> {
    match code {
        3 | 25 => Some(12), // IA_NA, IA_PD: IAID, T1, T2
        4 | 17 => Some(4),  // IA_TA: IAID; VENDOR_OPTS: enterprise number
        5 => Some(24),      // IAADDR: address and two lifetimes
        26 => Some(25),     // IAPREFIX: two lifetimes, length, prefix
        _ => None,
    }
}

/// The shortest data an option may have where the decoder reads a fixed part without checking.
fn min_len(code: u16) -> usize {
    match code {
        13 => 2, // STATUS_CODE: the code
        16 => 4, // VENDOR_CLASS: enterprise number
        _ => encapsulation_header(code).unwrap_or(0),
    }
}

/// Checks a client message (type, transaction id, options) as [`relay::unwrap`] leaves it.
pub fn check(message: &[u8]) -> Result<(), Malformed> {
    let options = message.get(4..).ok_or(Malformed::Truncated)?;
    let mut areas = vec![(options, 0usize)];
    while let Some((area, depth)) = areas.pop() {
        for opt in relay::options(area) {
            let (code, data) = opt?;
            if code == relay::OPT_RELAY_MSG {
                // Only relays carry a relay message, and unwrap has taken theirs off.
                return Err(Malformed::NoMessage);
            }
            if data.len() < min_len(code) {
                return Err(Malformed::Truncated);
            }
            if let Some(header) = encapsulation_header(code) {
                if depth + 1 > MAX_NESTING {
                    return Err(Malformed::TooDeep);
                }
                areas.push((&data[header..], depth + 1));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        relay::put_option(&mut m, code, data).unwrap();
        m
    }

    #[test]
    fn a_client_message_with_its_ia_passes() {
        let addr = option(5, &[0u8; 24]);
        let ia = option(3, &[[0u8; 12].as_slice(), &addr].concat());
        let msg = [&[1u8, 0, 0, 1][..], &option(1, b"\0\x01duid"), &ia].concat();
        assert_eq!(check(&msg), Ok(()));
    }

    #[test]
    fn deep_nests_short_fixed_parts_and_relay_messages_are_refused() {
        // IA_NA inside IA_NA, thousands deep: dhcproto would recurse once per level.
        let deep = (0..3000).fold(Vec::new(), |inner, _| option(3, &[[0u8; 12].as_slice(), &inner].concat()));
        assert_eq!(check(&[&[1u8, 0, 0, 1][..], &deep].concat()), Err(Malformed::TooDeep));
        assert_eq!(check(&[&[1u8, 0, 0, 1][..], &option(13, &[0])].concat()), Err(Malformed::Truncated));
        assert_eq!(check(&[&[1u8, 0, 0, 1][..], &option(16, &[0, 0])].concat()), Err(Malformed::Truncated));
        assert_eq!(check(&[&[1u8, 0, 0, 1][..], &option(9, &[1, 0, 0, 1])].concat()), Err(Malformed::NoMessage));
        assert_eq!(check(&[1u8, 0]), Err(Malformed::Truncated));
    }
}
