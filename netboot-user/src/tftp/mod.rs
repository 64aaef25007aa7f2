//! TFTP: a read-only server for boot files. The protocol is a sans-IO core (`packet`,
//! `transfer`, and `session`: a request in, a transfer or a refusal out, and the accounting
//! of its end); `files` is the confined, caching file store; `socket` is the portable engine
//! on tokio UDP sockets and `afxdp` the engine on AF_XDP sockets.

pub mod client;
pub mod files;
pub mod packet;
pub mod session;
pub mod transfer;

pub use files::{FileCache, Refusal};
pub use transfer::{Limits, Params, Step, Transfer};
