//! TFTP: a read-only server for boot files. The protocol is a sans-IO core (`packet`,
//! `transfer`); `files` is the confined, caching file store; `socket` is the portable engine
//! on tokio UDP sockets.

pub mod client;
pub mod files;
pub mod packet;
pub mod socket;
pub mod transfer;

pub use files::{FileCache, Refusal};
pub use transfer::{Limits, Params, Step, Transfer};
