//! TFTP's two engines around the core of [`crate::tftp`]: [`socket`], portable, on tokio UDP
//! sockets; [`afxdp`], on AF_XDP sockets fed by the XDP program.

pub mod afxdp;
pub mod socket;
