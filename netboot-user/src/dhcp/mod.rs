//! DHCPv4: the wire codec is dhcproto; on top of it the classifier, the sans-IO server core,
//! the lease table (its durable copy is the lease store) and the cluster's bucket map. The
//! socket I/O of the agent is `serve::dhcp`.

pub mod buckets;
pub mod classify;
pub mod leases;
pub mod new_clients;
pub mod server;

pub use classify::{Classification, classify};
pub use leases::{ClientKey, Lease, LeaseState, LeaseTable, UnwrittenRenewals};
pub use server::{CachedReplies, Destination, DhcpServer, KernelAck, Outcome, Reply, Request, ServerParams, Silence};
