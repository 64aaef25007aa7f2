//! `netboot-bench storm --nodes N`: N simulated machines powered on at once (or ramped) boot
//! through the whole chain against a server under test — netboot-xdp, dnsmasq, or Kea with
//! tftpd-hpa — each on a fresh lab, from one process on the client side. Reports per-stage
//! latencies, the time until all booted, retransmits, failures and CPU, as a table, JSON and a
//! plot of the fraction booted over time. Every run checks correctness: each machine got its
//! reserved address (so all are distinct), the file for its arch, byte-exact files, the script
//! URL and a script; a violation fails the run.

mod faults;
mod link;
mod machine;
mod report;
mod servers;

use link::DhcpLink;
use machine::{Behaviour, Expect, Identity, Outcome, Progress, Reached, STAGES};
use netboot_lab::{Lab, LabSpec};
use netboot::mac::MacAddr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchMix {
    Bios,
    Uefi,
    /// Every other machine UEFI x64.
    Mix,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machines to boot.
    #[arg(long, default_value_t = 1000)]
    pub nodes: u32,
    /// Servers, comma-separated: netboot-xdp, dnsmasq, kea+tftpd-hpa, nginx (netboot-xdp's
    /// DHCP and TFTP, nginx's HTTP) (or `all`).
    #[arg(long, default_value = "netboot-xdp")]
    pub server: String,
    /// Firmware architectures: BIOS PXE ROMs, UEFI x64, or half and half.
    #[arg(long, value_enum, default_value_t = ArchMix::Bios)]
    pub arch: ArchMix,
    /// TFTP blksize the ROMs ask (512 like old ROMs, 1432 like iPXE, 1468 like UEFI).
    #[arg(long, default_value_t = 1432)]
    pub rom_blksize: u16,
    /// TFTP windowsize UEFI machines ask (none by default).
    #[arg(long)]
    pub uefi_windowsize: Option<u16>,
    /// Also fetch the kernel and initrd the script names (256 KiB and 512 KiB). With one
    /// server, the machines' TCP then goes over a link of its own without the load generator's
    /// XDP program (which drops bulk TCP), as a booting machine's NIC would carry it.
    #[arg(long)]
    pub files: bool,
    /// With --files: an initrd of N MiB and a kernel of N/4 MiB (realistic: 32 → 8 + 32).
    #[arg(long)]
    pub payload_mb: Option<u64>,
    /// netboot-xdp's `[http] max_downloads`: files sent at once; a request beyond them is
    /// answered 503 with Retry-After, which the machines wait out and ask again as iPXE does
    /// (0: no limit, the default).
    #[arg(long, default_value_t = 0)]
    pub max_downloads: u32,
    /// TCP congestion control of the lab's namespaces (`reno` or `bbr` on this machine kind);
    /// the machine's own when absent.
    #[arg(long)]
    pub congestion: Option<String>,
    /// Power machines on evenly over this many seconds instead of all at once.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// Give up on machines not booted this many seconds after the start.
    #[arg(long, default_value_t = 180)]
    pub deadline: u64,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where to write the plot (SVG); default target/storm-<nodes>.svg.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Addresses from a pool instead of a reservation per machine (netboot-xdp only): every
    /// machine must keep one address through the chain, none twice, each in the lease store.
    #[arg(long)]
    pub pool: bool,
    /// Lose this percentage of the frames the server sends (the lab's lossy link).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// kill -9 the netboot-xdp agent once this fraction of the machines got their first
    /// address, and start it again at once (pinned program and maps are adopted).
    #[arg(long)]
    pub kill_agent_at: Option<f64>,
    /// During the storm, hostile frames at this rate (frames per second) from a host of its
    /// own on the segment, of the kind `--flood-kind` says.
    #[arg(long, default_value_t = 0)]
    pub flood: u32,
    /// What the flood sends: random-MAC DISCOVERs, DISCOVERs carrying the machines' own
    /// chaddrs from the flooder's MAC, or forged TFTP requests that never acknowledge.
    #[arg(long, value_enum, default_value_t = faults::FloodKind::Discover)]
    pub flood_kind: faults::FloodKind,
    /// Seconds the flood runs before the machines are powered on (what it holds is held when
    /// they come).
    #[arg(long, default_value_t = 0.0)]
    pub flood_lead: f64,
    /// Servers on the segment, active-active (more than one needs `--store postgres`):
    /// netboot-xdp members, or Kea servers sharing its PostgreSQL lease backend.
    #[arg(long, default_value_t = 1)]
    pub servers: u32,
    /// The lease store: netboot-xdp's SQLite in its state_dir (Kea's memfile), or one
    /// PostgreSQL (started for the run) shared by every server.
    #[arg(long, value_enum, default_value_t = Store::Sqlite)]
    pub store: Store,
    /// Once `--member-fault-at` of the machines have an address, kill -9 (`kill`) or SIGSTOP
    /// (`stop`) the last server of the cluster; its buckets must move to the others within
    /// `cluster.takeover` + 1 s. Machines whose boot broke with it start over (up to three times).
    #[arg(long, value_enum)]
    pub member_fault: Option<MemberFault>,
    #[arg(long, default_value_t = 0.5)]
    pub member_fault_at: f64,
    /// `cluster.takeover` of every member, in seconds.
    #[arg(long, default_value_t = 3)]
    pub takeover: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberFault {
    Kill,
    Stop,
}

impl Args {
    /// `cargo xtask demo`: 1000 machines, half BIOS and half UEFI, against netboot-xdp.
    pub fn demo() -> Args {
        Args {
            nodes: 1000,
            server: "netboot-xdp".into(),
            arch: ArchMix::Mix,
            rom_blksize: 1432,
            uefi_windowsize: None,
            files: false,
            payload_mb: None,
            max_downloads: 0,
            congestion: None,
            ramp: 0.0,
            deadline: 180,
            json: None,
            plot: None,
            pool: false,
            loss: 0.0,
            kill_agent_at: None,
            flood: 0,
            flood_kind: faults::FloodKind::Discover,
            flood_lead: 0.0,
            servers: 1,
            store: Store::Sqlite,
            member_fault: None,
            member_fault_at: 0.5,
            takeover: 3,
        }
    }
}

/// One server's run.
pub struct Run {
    pub server: String,
    pub outcomes: Vec<Outcome>,
    pub wall: Duration,
    pub server_cpu: Duration,
    pub client_cpu: Duration,
    /// What the fault options did, and the leases the store does not have.
    pub faults: faults::Seen,
}

pub fn identities(n: u32, mix: ArchMix) -> anyhow::Result<Vec<Identity>> {
    anyhow::ensure!((1..=62_500).contains(&n), "--nodes must be 1..=62500 (one /16 of reservations)");
    Ok((0..n)
        .map(|i| {
            let b = i.to_be_bytes();
            let arch = match mix {
                ArchMix::Bios => 0,
                ArchMix::Uefi => 7,
                ArchMix::Mix => if i % 2 == 1 { 7 } else { 0 },
            };
            Identity { index: i, mac: MacAddr([0x02, 0x5b, b[0], b[1], b[2], b[3]]), arch, ip: Ipv4Addr::new(10, 77, 2 + (i / 250) as u8, 1 + (i % 250) as u8) }
        })
        .collect())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let servers: Vec<String> = if args.server == "all" {
        servers::SERVERS.iter().map(|s| s.to_string()).collect()
    } else {
        args.server.split(',').map(|s| s.trim().to_string()).collect()
    };
    let machines = identities(args.nodes, args.arch)?;
    let read = |f: &str| std::fs::read(format!("/usr/lib/ipxe/{f}")).map_err(|e| anyhow::anyhow!("/usr/lib/ipxe/{f} (package ipxe): {e}"));
    let payload: [Vec<u8>; 2] = match args.payload_mb {
        Some(mb) => [netboot_lab::pattern(((mb << 20) / 4).max(1 << 20) as usize, 11), netboot_lab::pattern((mb << 20) as usize, 12)],
        None => [netboot_lab::pattern(256 << 10, 11), netboot_lab::pattern(512 << 10, 12)],
    };
    let expect = Expect {
        bios_file: "undionly.kpxe".into(),
        uefi_file: "ipxe.efi".into(),
        bios_bytes: Arc::new(read("undionly.kpxe")?),
        uefi_bytes: Arc::new(read("ipxe.efi")?),
        script_urls: (0..args.servers).map(servers::script_url).collect(),
        reserved: !args.pool,
        files: Arc::new(payload.iter().zip(["vmlinuz", "initrd.img"]).map(|(c, f)| (f.to_string(), crate::http_fetch::Expect::of(c))).collect()),
    };
    let clusterable = |s: &String| s == "netboot-xdp" || s == "kea+tftpd-hpa";
    anyhow::ensure!(!args.pool || servers.iter().all(clusterable), "--pool runs against netboot-xdp and kea+tftpd-hpa only");
    anyhow::ensure!(args.kill_agent_at.is_none() || servers == ["netboot-xdp"], "--kill-agent-at runs against netboot-xdp only");
    anyhow::ensure!((0.0..100.0).contains(&args.loss), "--loss must be a percentage below 100");
    anyhow::ensure!(args.servers >= 1 && args.servers <= 8, "--servers must be 1..=8");
    anyhow::ensure!(args.servers == 1 || args.store == Store::Postgres, "--servers {} needs --store postgres (one truth for all of them)", args.servers);
    anyhow::ensure!((args.servers == 1 && args.store == Store::Sqlite) || servers.iter().all(clusterable), "--servers and --store are for netboot-xdp and kea+tftpd-hpa (Kea on its PostgreSQL lease backend)");
    anyhow::ensure!(args.member_fault.is_none() || args.servers > 1, "--member-fault needs --servers 2 or more");
    anyhow::ensure!(args.payload_mb.is_none() || args.files, "--payload-mb needs --files");
    let how = Behaviour {
        rom_blksize: args.rom_blksize,
        uefi_windowsize: args.uefi_windowsize,
        fetch_files: args.files,
        // Real machines retry network boot for as long as it takes; three times is plenty here.
        // A server killed under a machine resets its open HTTP connection: the machine's boot
        // fails and, as a data center's firmware does, it network-boots again.
        reboots: if args.member_fault.is_some() || args.kill_agent_at.is_some() { 3 } else { 0 },
    };
    println!(
        "storm: {} machines ({:?}, ROM TFTP blksize {}, UEFI windowsize {:?}{}), {}",
        args.nodes,
        args.arch,
        args.rom_blksize,
        args.uefi_windowsize,
        if args.files { format!(", kernel and initrd ({} + {} KiB)", payload[0].len() >> 10, payload[1].len() >> 10) } else { String::new() },
        if args.ramp > 0.0 { format!("powered on over {} s", args.ramp) } else { "all powered on at once".into() }
    );
    let mut runs = Vec::new();
    for server in &servers {
        let lab = Lab::create(&LabSpec { server: "10.77.0.1/16".parse()?, client: Some("10.77.0.2/16".parse()?) })?;
        // What an operator expecting a storm sets on a boot server, for every server alike: a
        // default socket receive buffer that holds a burst (dnsmasq and Kea do not size their
        // own; netboot-xdp does). Per network namespace: this changes the lab only.
        netboot_lab::run_checked(lab.server.command("sysctl").args(["-qw", "net.core.rmem_default=16777216", "net.core.rmem_max=16777216"]))?;
        if let Some(cc) = &args.congestion {
            lab.set_congestion(cc)?;
        }
        if args.files && args.servers == 1 {
            // The payload's TCP on a link without the load generator's XDP program
            // (Lab::add_tcp_path); with several servers every one keeps the segment's path.
            lab.add_tcp_path("10.77.0.2".parse()?)?;
        }
        let dir = lab.scratch_dir("storm")?;
        servers::write_files(&dir, &expect.bios_bytes, &expect.uefi_bytes, &payload)?;
        let mut running = servers::start(server, &lab, &dir, &machines, args)?;
        if args.loss > 0.0 {
            lab.set_loss(args.loss)?;
        }
        let cpu0 = running.cpu();
        let hosts = running.server_hosts()?;
        let progress = Arc::new(Progress::default());
        let flood = match args.flood {
            0 => None,
            pps => {
                let victims = machines.iter().map(|m| m.mac).collect();
                let target = faults::Target { ip: servers::SERVER_IP.parse()?, mac: faults::iface_mac(&lab.server, &lab.server_if)? };
                let flood = faults::Flood::start(&lab, pps, args.flood_kind, victims, target)?;
                std::thread::sleep(Duration::from_secs_f64(args.flood_lead.clamp(0.0, 60.0)));
                Some(flood)
            }
        };
        let threshold = |at: f64| ((at * args.nodes as f64).ceil() as u32).clamp(1, args.nodes);
        let (outcomes, wall, client_cpu, fault) = std::thread::scope(|scope| {
            let fault = match (args.kill_agent_at, args.member_fault) {
                (Some(at), _) => {
                    let (progress, running) = (progress.clone(), &mut running);
                    Some(scope.spawn(move || faults::kill_agent_when(running, &progress, threshold(at), Duration::from_secs(args.deadline))))
                }
                (None, Some(kind)) => {
                    let (progress, running) = (progress.clone(), &mut running);
                    let at = threshold(args.member_fault_at);
                    Some(scope.spawn(move || faults::member_fault_when(running, kind, &progress, at, Duration::from_secs(args.deadline))))
                }
                (None, None) => None,
            };
            let r = storm(&lab, &hosts, &machines, &expect, how, args, progress.clone());
            let fault = fault.map(|k| k.join().expect("fault thread")).transpose();
            r.and_then(|(o, w, c)| Ok((o, w, c, fault?.unwrap_or_default())))
        })?;
        let flood_sent = flood.map(faults::Flood::stop).unwrap_or(0);
        // A member stopped by --member-fault goes on now (and rejoins): its CPU can be read.
        running.agents().iter().for_each(|a| a.pause(false));
        running.check_alive(server, "during the storm")?;
        let server_cpu = running.cpu().saturating_sub(cpu0);
        let lost = match running.agents().first() {
            Some(a) => Some(faults::lost_leases(a, &outcomes)?),
            None => None,
        };
        let members = running.agents().iter().map(faults::member_report).collect::<anyhow::Result<Vec<_>>>()?;
        drop(running);
        drop(dir);
        drop(lab);
        let seen = faults::Seen { flood_sent, lost_leases: lost, members, ..fault };
        let r = Run { server: server.clone(), outcomes, wall, server_cpu, client_cpu, faults: seen };
        report::print(&r, args.nodes);
        runs.push(r);
    }
    report::compare(&runs);
    let plot = args.plot.clone().unwrap_or_else(|| crate::bin_dir().join(format!("../storm-{}.svg", args.nodes)));
    report::plot(&runs, &plot)?;
    println!("plot: {}", plot.canonicalize().unwrap_or(plot.clone()).display());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report::json(&runs, args))?)?;
        println!("json: {}", p.display());
    }
    let violations: usize = runs
        .iter()
        .map(|r| r.outcomes.iter().filter(|o| o.violation()).count() + report::duplicate_addresses(r) + r.faults.lost_leases.unwrap_or(0))
        .sum();
    anyhow::ensure!(violations == 0, "{violations} correctness violations (see above)");
    Ok(())
}

/// Boots `machines` from the lab's client namespace; returns their outcomes, the wall time
/// until the last one finished, and this process's CPU.
fn storm(
    lab: &Lab,
    hosts: &[crate::tftp_xsk::ServerHost],
    machines: &[Identity],
    expect: &Expect,
    how: Behaviour,
    args: &Args,
    progress: Arc<Progress>,
) -> anyhow::Result<(Vec<Outcome>, Duration, Duration)> {
    // One server: the machines' wire is the bridge port towards it. Several: the bridge itself
    // (a broadcast reaches every server; promiscuous, so that the replies to the machines'
    // MACs, which the bridge never learns, are delivered to it too).
    let dev = if args.servers > 1 {
        netboot_lab::run_checked(lab.client.command("ip").args(["link", "set", &lab.client_if, "promisc", "on"]))?;
        lab.client_if.clone()
    } else {
        lab.link_if.clone()
    };
    let (ramp, deadline) = (args.ramp, Duration::from_secs(args.deadline));
    let n = machines.len();
    // TFTP from the machines through the bench's AF_XDP client (one thread, a port per read).
    let tftp = Arc::new(crate::tftp_xsk::XskService::start(lab, n.min(20_000), hosts)?);
    lab.client.run(move || -> anyhow::Result<(Vec<Outcome>, Duration, Duration)> {
        netboot_lab::tftp_fetch::raise_fd_limit(2 * n as u64 + 1024);
        let macs: Vec<MacAddr> = machines.iter().map(|m| m.mac).collect();
        let (link, rxs) = DhcpLink::open(&dev, &macs)?;
        // Threads started here inherit the client namespace.
        let receiver = {
            let link = link.clone();
            std::thread::spawn(move || link.receive())
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cpu0 = crate::proc::self_cpu();
        let t0 = Instant::now();
        let outcomes = rt.block_on(async {
            let bar = report::progress_bar(n as u64, progress.clone());
            let mut tasks = Vec::with_capacity(n);
            for (i, (id, rx)) in machines.iter().cloned().zip(rxs).enumerate() {
                let (link, expect, progress, tftp) = (link.clone(), expect.clone(), progress.clone(), tftp.clone());
                let power_on = if ramp > 0.0 { ramp * i as f64 / n as f64 } else { 0.0 };
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(power_on)).await;
                    let reached = Reached::new(0);
                    let left = deadline.saturating_sub(t0.elapsed());
                    let mut out = match tokio::time::timeout(left, machine::boot(&id, &link, &tftp, rx, &expect, how, &progress, &reached)).await {
                        Ok(out) => out,
                        Err(_) => {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            let stage = STAGES[reached.load(Ordering::Relaxed).min(STAGES.len() - 1)];
                            Outcome { index: id.index, mac: id.mac.to_string(), failure: Some((stage.into(), format!("not booted within the {deadline:?} deadline"))), ..Default::default() }
                        }
                    };
                    out.power_on = power_on;
                    out
                }));
            }
            let mut outcomes = Vec::with_capacity(n);
            for t in tasks {
                outcomes.push(t.await.expect("machine task"));
            }
            bar.finish_and_clear();
            outcomes
        });
        let wall = t0.elapsed();
        let cpu = crate::proc::self_cpu().saturating_sub(cpu0);
        tftp.stop();
        link.stop();
        let _ = receiver.join();
        Ok((outcomes, wall, cpu))
    })?
}
