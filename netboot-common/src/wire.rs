//! Wire constants and the client-class decision of DESIGN.md §2, shared by the XDP program and
//! the agent so both classify identically.

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;
pub const UDP_HLEN: usize = 8;

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
/// TFTP's well-known port (RFC 1350).
pub const TFTP_PORT: u16 = 69;
/// PXE ProxyDHCP port (PXE spec 2.1).
pub const PXE_PROXY_PORT: u16 = 4011;

/// Fixed BOOTP header (RFC 951) without the magic cookie.
pub const BOOTP_FIXED_LEN: usize = 236;
pub const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Offset of the first option from the start of the BOOTP header.
pub const BOOTP_OPTIONS_OFF: usize = BOOTP_FIXED_LEN + 4;
pub const BOOTREQUEST: u8 = 1;
pub const HTYPE_ETHER: u8 = 1;

/// Offsets inside the BOOTP header.
pub mod bootp {
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const XID: usize = 4;
    pub const FLAGS: usize = 10;
    pub const CIADDR: usize = 12;
    pub const YIADDR: usize = 16;
    pub const SIADDR: usize = 20;
    pub const GIADDR: usize = 24;
    pub const CHADDR: usize = 28;
    pub const SNAME: usize = 44;
    pub const FILE: usize = 108;
    pub const MAGIC: usize = 236;
}

/// DHCP option codes the classifier and server use.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const REQUESTED_IP: u8 = 50;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const USER_CLASS: u8 = 77;
    pub const RELAY_INFO: u8 = 82;
    pub const CLIENT_ARCH: u8 = 93;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const DECLINE: u8 = 4;
    pub const ACK: u8 = 5;
    pub const NAK: u8 = 6;
    pub const RELEASE: u8 = 7;
    pub const INFORM: u8 = 8;
}

/// Client system architecture types (option 93, RFC 4578 and the IANA registry).
pub mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_X64: u16 = 7;
    pub const EFI_BC: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const HTTP_X64: u16 = 16;
    pub const HTTP_ARM64: u16 = 19;
}

/// User class iPXE sends in option 77, as raw bytes.
pub const IPXE_USER_CLASS: [u8; 4] = *b"iPXE";
/// Option 60 prefixes.
pub const PXE_VENDOR_PREFIX: [u8; 9] = *b"PXEClient";
pub const HTTP_VENDOR_PREFIX: [u8; 10] = *b"HTTPClient";

/// What option 60 (vendor class identifier) says about the client.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorClass {
    None = 0,
    PxeClient = 1,
    HttpClient = 2,
}

/// The boot class of a DHCP client (DESIGN.md §2).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClientClass {
    /// Anything else: an installed OS renewing. Address and network options only.
    Plain = 0,
    /// PXE ROM / UEFI PXE: gets the iPXE binary for its architecture over TFTP.
    Pxe = 1,
    /// iPXE: gets the boot script URL.
    Ipxe = 2,
    /// UEFI HTTP boot: gets the HTTP URL of the iPXE binary.
    Http = 3,
}

impl ClientClass {
    pub const ALL: [ClientClass; 4] =
        [ClientClass::Plain, ClientClass::Pxe, ClientClass::Ipxe, ClientClass::Http];

    /// The decision table of DESIGN.md §2, in priority order: iPXE (user class `iPXE` or option
    /// 175 present) before HTTP boot (option 60 `HTTPClient…`) before PXE (option 60
    /// `PXEClient…` or option 93 present). iPXE also sends `PXEClient` in option 60, so the
    /// order matters.
    pub const fn classify(
        ipxe_user_class: bool,
        has_ipxe_encap: bool,
        vendor: VendorClass,
        has_arch: bool,
    ) -> ClientClass {
        if ipxe_user_class || has_ipxe_encap {
            ClientClass::Ipxe
        } else if matches!(vendor, VendorClass::HttpClient) {
            ClientClass::Http
        } else if matches!(vendor, VendorClass::PxeClient) || has_arch {
            ClientClass::Pxe
        } else {
            ClientClass::Plain
        }
    }

    /// The class of a `repr(u8)` value from the kernel (an `AckEvent`); unknown values are Plain.
    pub const fn from_u8(v: u8) -> ClientClass {
        match v {
            1 => ClientClass::Pxe,
            2 => ClientClass::Ipxe,
            3 => ClientClass::Http,
            _ => ClientClass::Plain,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            ClientClass::Plain => "plain",
            ClientClass::Pxe => "pxe",
            ClientClass::Ipxe => "ipxe",
            ClientClass::Http => "http",
        }
    }
}

/// Whether option 77's payload says iPXE: iPXE sends the raw bytes `iPXE`; RFC 3004 user-class
/// instances are length-prefixed (`\x04iPXE`). Both are accepted.
pub fn is_ipxe_user_class(payload: &[u8]) -> bool {
    payload == IPXE_USER_CLASS
        || (payload.len() == 5 && payload[0] == 4 && payload[1..] == IPXE_USER_CLASS)
}

/// What an option 60 payload says (prefix match, as DESIGN.md §2 requires).
pub fn vendor_class(payload: &[u8]) -> VendorClass {
    if payload.starts_with(&HTTP_VENDOR_PREFIX) {
        VendorClass::HttpClient
    } else if payload.starts_with(&PXE_VENDOR_PREFIX) {
        VendorClass::PxeClient
    } else {
        VendorClass::None
    }
}
