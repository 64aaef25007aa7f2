//! `netboot-bench tftp-rate`: concurrent TFTP fetches against netboot-xdp and the peers, with
//! the same one-process client on one lab per server: by default the AF_XDP client
//! (`tftp_xsk`), which is not the bottleneck; `--client sockets` uses netboot-user's
//! `lab::tftp_fetch` (a kernel UDP socket per transfer, as the tests do).
//!
//! Peers are run as an operator would for a storm (PEERS.md): tftpd-hpa and atftpd come from
//! their Debian packages, unpacked into `target/peers` (the two conflict as installed packages,
//! and an installed tftpd-hpa would start a service on the host); dnsmasq with `--tftp-max`
//! above the concurrency.

use anyhow::{Context, bail};
use netboot_lab::tftp_fetch::fetch_many;
use netboot_lab::{Agent, Lab, LabSpec};
use crate::peers::{Running, peer_binary};
use netboot::tftp::client::Request;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Concurrent transfers per run (comma-separated).
    #[arg(long, default_value = "1,100,1000")]
    pub transfers: String,
    /// Servers (comma-separated): netboot-xdp (socket engine), netboot-xdp-afxdp, tftpd-hpa,
    /// atftpd, dnsmasq.
    #[arg(long, default_value = "netboot-xdp,netboot-xdp-afxdp,tftpd-hpa,atftpd,dnsmasq")]
    pub servers: String,
    /// The client: `xsk` (AF_XDP, one thread) or `sockets` (a kernel UDP socket per transfer).
    #[arg(long, value_enum, default_value_t = Client::Xsk)]
    pub client: Client,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    Xsk,
    Sockets,
}

/// The files of DESIGN.md's boot chain: undionly.kpxe (74 KiB) and ipxe.efi (850 KiB).
const CASES: [(&str, usize, u16); 3] = [("undionly.kpxe", 74_213, 512), ("undionly.kpxe", 74_213, 1432), ("ipxe.efi", 870_000, 1468)];

pub fn run(args: &Args) -> anyhow::Result<()> {
    let counts: Vec<usize> = args.transfers.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().context("--transfers")?;
    let mut rows = Vec::new();
    println!("{:<18} {:<14} {:>6} {:>6} {:>8} {:>9} {:>8} {:>8} {:>6} {:>6} {:>12}", "server", "file", "blksz", "n", "wall s", "MiB/s", "p50 ms", "p99 ms", "retx", "fail", "CPU ms/xfer");
    for server in args.servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lab = Lab::create(&LabSpec { server: "10.77.0.1/16".parse()?, client: Some("10.77.0.2/16".parse()?) })?;
        let dir = lab.scratch_dir("bench-tftp")?;
        let root = dir.join("root");
        std::fs::create_dir_all(&root)?;
        for (name, size, _) in CASES {
            std::fs::write(root.join(name), file_bytes(size))?;
        }
        // As in the storm: socket buffers that hold a burst of requests (what an operator
        // expecting a storm sets; the peers do not size their sockets, netboot-xdp does).
        netboot_lab::run_checked(lab.server.command("sysctl").args(["-qw", "net.core.rmem_default=16777216", "net.core.rmem_max=16777216"]))?;
        let mut guard = start(server, &lab, &dir, &root)?;
        let addr: std::net::SocketAddrV4 = "10.77.0.1:69".parse()?;
        let mut xsk = match args.client {
            Client::Xsk => Some(crate::tftp_xsk::XskClient::open(&lab, counts.iter().copied().max().unwrap_or(1), &[])?),
            Client::Sockets => None,
        };
        std::thread::sleep(Duration::from_millis(300));
        guard.check_alive(server, "at start")?;
        for (name, size, blksize) in CASES {
            for &n in &counts {
                let req = Request { file: name.into(), blksize: (blksize != 512).then_some(blksize), windowsize: None, tsize: true };
                let cpu0 = guard.cpu();
                let t0 = Instant::now();
                let got = match xsk.as_mut() {
                    Some(c) => c.fetch_many(addr, &req, n, Duration::from_secs(15))?,
                    None => fetch_many(&lab, addr.into(), &req, n, Duration::from_secs(15))?,
                };
                let wall = t0.elapsed();
                let cpu = guard.cpu() - cpu0;
                let expected = file_bytes(size);
                let failed = got.iter().filter(|f| f.data != expected).count();
                let retransmits: u64 = got.iter().map(|f| f.retransmits).sum();
                let mut lat: Vec<Duration> = got.iter().filter(|f| f.error.is_none()).map(|f| f.elapsed).collect();
                lat.sort();
                let pct = |p: f64| lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default();
                let mib = (size * (n - failed)) as f64 / (1 << 20) as f64 / wall.as_secs_f64();
                let cpu_per = cpu.as_secs_f64() * 1e3 / n as f64;
                println!(
                    "{:<18} {:<14} {:>6} {:>6} {:>8.3} {:>9.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>12.2}",
                    server, name, blksize, n, wall.as_secs_f64(), mib, pct(0.5).as_secs_f64() * 1e3, pct(0.99).as_secs_f64() * 1e3, retransmits, failed, cpu_per
                );
                rows.push(serde_json::json!({
                    "server": server, "file": name, "bytes": size, "blksize": blksize, "transfers": n,
                    "wall_s": wall.as_secs_f64(), "mib_per_s": mib, "p50_ms": pct(0.5).as_secs_f64() * 1e3,
                    "p99_ms": pct(0.99).as_secs_f64() * 1e3, "failed": failed, "client_retransmits": retransmits, "server_cpu_ms_per_transfer": cpu_per,
                    "client": format!("{:?}", args.client).to_lowercase(),
                }));
            }
        }
        drop(xsk);
        drop(guard);
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn file_bytes(size: usize) -> Vec<u8> {
    netboot_lab::pattern(size, 0x9e37_79b9_7f4a_7c15 ^ size as u64)
}

fn start(server: &str, lab: &Lab, dir: &Path, root: &Path) -> anyhow::Result<Running> {
    let quiet = |c: &mut Command| {
        crate::peers::own_group(c).stdout(Stdio::null()).stderr(Stdio::null());
    };
    Ok(match server {
        "netboot-xdp" | "netboot-xdp-afxdp" => {
            let engine = if server == "netboot-xdp" { "socket" } else { "afxdp" };
            // Every transfer comes from the one client address of the lab: the per-client
            // limit (4 by default; real machines each have their own address) is off here.
            let config = dir.join("netboot.toml");
            std::fs::write(
                &config,
                format!(
                    "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n[tftp]\nroot = \"{}\"\nengine = \"{engine}\"\nmax_transfers_per_client = 0\n",
                    dir.join("state").display(),
                    root.display()
                ),
            )?;
            Running::Agent(Agent::start(lab, &crate::bin_dir().join("netboot-xdp"), &config, &[])?)
        }
        "tftpd-hpa" => {
            let bin = peer_binary("tftpd-hpa", "usr/sbin/in.tftpd")?;
            let mut c = lab.server.command(&bin.to_string_lossy());
            c.args(["-L", "-s", "-u", "root", "-a", "10.77.0.1:69", "-B", "1468"]).arg(root);
            quiet(&mut c);
            Running::Children(vec![c.spawn().context("in.tftpd")?])
        }
        "atftpd" => {
            let bin = peer_binary("atftpd", "usr/sbin/atftpd")?;
            let mut c = lab.server.command(&bin.to_string_lossy());
            c.args(["--daemon", "--no-fork", "--port", "69", "--bind-address", "10.77.0.1", "--maxthread", "2000", "--logfile", "/dev/null", "--user", "root.root"]).arg(root);
            quiet(&mut c);
            Running::Children(vec![c.spawn().context("atftpd")?])
        }
        "dnsmasq" => {
            let mut c = lab.server.command("dnsmasq");
            c.args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--enable-tftp", "--tftp-max=2000", "--log-facility=-"])
                .arg(format!("--interface={}", lab.server_if))
                .arg(format!("--tftp-root={}", root.display()))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
            quiet(&mut c);
            Running::Children(vec![c.spawn().context("dnsmasq")?])
        }
        other => bail!("unknown server {other:?}"),
    })
}
