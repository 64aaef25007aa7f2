//! DHCPv6 (RFC 8415), stateful, for network boot: the same shape as [`crate::dhcp`] — dhcproto
//! for client messages, a typed view of the relay envelope ([`relay`]: dhcproto reads option 9
//! as a relay header, not as the message it carries), the lease table and the sans-IO server
//! core (its socket I/O is `serve::dhcp6`).
//!
//! Identity is the DUID and IAID of each IA_NA; reservations and boot intent are by MAC, found
//! in option 79 of a relay, a link-layer DUID, or the EUI-64 of the client's link-local source
//! ([`identity`]).

pub mod guard;
pub mod identity;
pub mod leases;
pub mod relay;
pub mod server;

pub use leases::{Lease6, Lease6State, Lease6Table};
pub use server::{Dhcp6Server, Params6, Reply6, Request6, Silence6};
