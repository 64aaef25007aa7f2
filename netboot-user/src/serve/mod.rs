//! The services that own sockets: each runs a sans-IO core ([`crate::dhcp`], [`crate::dhcp6`],
//! [`crate::tftp`]) on the network and keeps the stores and the kernel's caches in step with it.
//! HTTP, which has more rooms than a socket loop, is [`crate::http`].
//!
//! - [`dhcp`]: DHCPv4 on a UDP socket: batches, group commits, the reply cache and its events.
//! - [`dhcp6`]: DHCPv6 on a UDP socket, the same shape.
//! - [`tftp`]: TFTP on tokio sockets or AF_XDP.
//! - [`ra`]: router advertisements that end iPXE's IPv6 wait.

pub mod dhcp;
pub mod dhcp6;
pub mod ra;
pub mod tftp;
