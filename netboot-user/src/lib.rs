//! netboot-xdp's agent as a library, in layers whose arrows point down (docs/DESIGN.md §3,
//! checked by `tests/tests/architecture.rs`), from the top:
//!
//! - [`cli`] and [`control`]: the `netboot-xdp` command line and the agent's control socket.
//! - [`agent`]: the running agent that wires the services on one interface and supervises them.
//! - Services: [`http`] (router, API and its OpenAPI document, scripts, files), [`serve`] (the
//!   sockets of DHCP, DHCPv6, TFTP and router advertisements), [`metrics`], [`provision`] (the
//!   published config, reloads, discovery), [`cluster`], [`fastpath`] (the XDP program).
//! - [`store`]: every database concern, SQLite and PostgreSQL.
//! - Sans-IO cores and what they record: [`dhcp`], [`dhcp6`], [`tftp`]; [`timeline`], [`stats`].
//! - [`published`] and [`config`]: the configuration as published to the services, and as read.
//! - Ground: [`runtime`], [`mac`], [`frame`], [`iface`], [`xsk`].

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dhcp;
pub mod dhcp6;
pub mod fastpath;
pub mod frame;
pub mod http;
pub mod iface;
pub mod mac;
pub mod metrics;
pub mod provision;
pub mod published;
pub mod runtime;
pub mod serve;
#[cfg(test)]
pub(crate) mod scratch;
pub mod store;
pub mod stats;
pub mod tftp;
pub mod timeline;
pub mod xsk;
