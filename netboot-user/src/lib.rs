//! netboot-xdp's agent as a library: the modules follow DESIGN.md §3.
//!
//! - [`config`]: the TOML configuration, validated all-or-nothing.
//! - [`fastpath`]: the XDP program: loading, attaching, pins, counters, test runs.
//! - [`agent`]: the running agent that ties the pieces together on one interface.
//! - [`dhcp`], [`tftp`], [`http`]: the services of the boot chain.
//! - [`timeline`], [`stats`], [`metrics`]: what each node did; counters and latencies.
//! - [`reload`]: live configuration reload.
//! - [`ra`]: IPv6 router advertisements that end iPXE's IPv6 wait.
//! - [`cli`]: the `netboot-xdp` command line.

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
