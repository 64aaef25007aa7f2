//! `netboot-bench`: boot storms and rate tests against netboot-xdp and its peers, the demo, and
//! the lab by hand.

mod dhcp_rate;
mod dhcpgen;
mod http_fetch;
mod http_rate;
mod peers;
mod proc;
mod rawsock;
mod storm;
mod tftp_rate;
mod tftp_xsk;

use clap::{Parser, Subcommand};
use netboot_lab::{Lab, LabSpec};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "netboot-bench", about = "Boot-storm bench and lab tools for netboot-xdp")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The demo: a 1000-machine boot storm against netboot-xdp (storm --nodes 1000).
    Demo,
    /// Boot storm: N simulated machines through DHCP (PXE ROM), TFTP, DHCP (iPXE) and HTTP,
    /// against netboot-xdp and its peers.
    Storm(storm::Args),
    /// DHCP rate: XDP cost per reply, N clients at once against netboot-xdp (userspace and
    /// kernel paths), dnsmasq and Kea.
    DhcpRate(dhcp_rate::Args),
    /// Kernels and initrds over HTTP alone: N clients at once against netboot-xdp and nginx.
    HttpRate(http_rate::Args),
    /// TFTP: concurrent fetches of boot files against netboot-xdp, tftpd-hpa, atftpd, dnsmasq.
    TftpRate(tftp_rate::Args),
    /// Manage labs by hand.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create a lab and leave it in place; prints its namespaces and interfaces.
    Up {
        /// Server end address and prefix.
        #[arg(long, default_value = "10.77.0.1/16")]
        server: ipnet::Ipv4Net,
        /// Client end address and prefix (none by default, like a booting machine).
        #[arg(long)]
        client: Option<ipnet::Ipv4Net>,
    },
    /// Remove a lab created by `up`.
    Down { id: String },
    /// List the labs on this machine.
    List,
}

/// Directory of the sibling binaries (netboot-xdp is built next to netboot-bench).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo => storm::run(&storm::Args::demo()),
        Cmd::Storm(args) => storm::run(&args),
        Cmd::DhcpRate(args) => dhcp_rate::run(&args),
        Cmd::HttpRate(args) => http_rate::run(&args),
        Cmd::TftpRate(args) => tftp_rate::run(&args),
        Cmd::Lab { cmd: LabCmd::Up { server, client } } => Lab::create(&LabSpec { server, client }).map(|lab| {
            println!("lab {}", lab.id);
            println!("  server: netns {} dev {} addr {}", lab.server.name(), lab.server_if, lab.server_addr);
            println!("  client: netns {} dev {}", lab.client.name(), lab.client_if);
            println!("  run:    ip netns exec {} netboot-xdp attach {} -c FILE", lab.server.name(), lab.server_if);
            println!("  remove: cargo xtask lab down {}", lab.id);
            lab.keep();
        }),
        Cmd::Lab { cmd: LabCmd::Down { id } } => Lab::destroy(&id).map(|()| println!("lab {id} removed")),
        Cmd::Lab { cmd: LabCmd::List } => {
            for id in Lab::list() {
                println!("{id}");
            }
            Ok(())
        }
    };
    if let Err(e) = r {
        eprintln!("netboot-bench: {e:#}");
        std::process::exit(1);
    }
}
