//! Who a DHCPv6 client is: its DUID (RFC 8415 §11), and the MAC a reservation is made for.

use crate::mac::MacAddr;
use std::net::Ipv6Addr;

const DUID_LLT: u16 = 1;
const DUID_LL: u16 = 3;
/// Hardware type 1 (Ethernet, RFC 826) as DUIDs and option 79 carry it.
pub const HTYPE_ETHERNET: u16 = 1;

/// The MAC inside a link-layer DUID (DUID-LLT or DUID-LL of an Ethernet interface). EDK2 and
/// other firmware send DUID-UUID (type 4): no MAC there.
pub fn mac_from_duid(duid: &[u8]) -> Option<MacAddr> {
    let kind = u16::from_be_bytes(duid.get(..2)?.try_into().ok()?);
    let htype = u16::from_be_bytes(duid.get(2..4)?.try_into().ok()?);
    let addr = match kind {
        DUID_LLT => duid.get(8..)?,
        DUID_LL => duid.get(4..)?,
        _ => return None,
    };
    (htype == HTYPE_ETHERNET && addr.len() == 6).then(|| MacAddr(addr.try_into().expect("6 bytes")))
}

/// The MAC a modified EUI-64 link-local address was formed from (RFC 4291 appendix A):
/// `fe80::XXXX:XXff:feXX:XXXX` with the universal/local bit flipped back. Addresses made
/// otherwise (stable privacy, RFC 7217) give none.
pub fn mac_from_link_local(ip: Ipv6Addr) -> Option<MacAddr> {
    let o = ip.octets();
    if o[..8] != [0xfe, 0x80, 0, 0, 0, 0, 0, 0] || o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some(MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// Our DUID: DUID-LL of the boot interface, stable across restarts without any state.
pub fn server_duid(mac: MacAddr) -> Vec<u8> {
    let mut d = Vec::with_capacity(10);
    d.extend_from_slice(&DUID_LL.to_be_bytes());
    d.extend_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    d.extend_from_slice(&mac.0);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_from_duids_and_link_local_addresses() {
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(mac_from_duid(&server_duid(mac)), Some(mac));
        // dhclient's DUID-LLT: type 1, htype 1, time, MAC.
        let llt = [0, 1, 0, 1, 0x2c, 0x1e, 0x3a, 0x4b, 0x52, 0x54, 0, 0x12, 0x34, 0x56];
        assert_eq!(mac_from_duid(&llt), Some(mac));
        // EDK2's DUID-UUID.
        let uuid = [0, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0];
        assert_eq!(mac_from_duid(&uuid), None);
        assert_eq!(mac_from_duid(&[0, 3, 0, 6, 1, 2, 3, 4, 5, 6]), None, "not Ethernet");
        assert_eq!(mac_from_duid(&[0, 3]), None);
        assert_eq!(mac_from_link_local("fe80::5054:ff:fe12:3456".parse().unwrap()), Some(mac));
        assert_eq!(mac_from_link_local("fe80::1".parse().unwrap()), None);
        assert_eq!(mac_from_link_local("fd00::5054:ff:fe12:3456".parse().unwrap()), None);
    }
}
