//! The `netboot-xdp` command line (DESIGN.md §5, normative).

use crate::config::Config;
use crate::fastpath::{Counters, XdpModeArg, pins};
use crate::runtime::AgentRecord;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "netboot-xdp", version, about = "XDP-accelerated DHCP and TFTP fast path for network boot servers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent on IFACE in the foreground until SIGINT/SIGTERM, then detach.
    Attach {
        /// The boot interface, e.g. eth1.
        iface: String,
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// XDP attach mode: auto tries native and falls back to skb.
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        xdp_mode: XdpModeArg,
    },
    /// Stop the agent on IFACE and remove its XDP program and pins.
    Detach { iface: String },
    /// Show the XDP counters of a running attach (all attached interfaces without IFACE).
    Status {
        iface: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the leases of the lease store (of the running agent, or of `-c FILE`'s state_dir).
    Leases {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Read the state_dir of this config instead of the running agent's.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file; prints file:line:column and the problem when it is invalid.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Entry point of the binary: parses arguments, runs, and turns errors into one line on stderr
/// and a non-zero exit code.
pub fn main() -> ExitCode {
    // Behave like a Unix tool when the reader goes away (`netboot-xdp leases | head`).
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netboot-xdp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Attach { iface, config, xdp_mode } => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(crate::agent::run(&iface, &config, xdp_mode))
        }
        Command::Detach { iface } => detach(&iface),
        Command::Status { iface, json } => status(iface.as_deref(), json),
        Command::Leases { json, config } => leases(json, config.as_deref()),
        Command::Check { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: ok ({} reservations, {} pools, mode {:?})",
                config.display(),
                c.dhcp.reservations().count(),
                c.dhcp.pools.len(),
                c.dhcp.mode
            );
            Ok(())
        }
    }
}

fn detach(iface: &str) -> anyhow::Result<()> {
    let record = AgentRecord::read(iface);
    let pinned = pins::iface_dir(iface).exists();
    match record {
        Some(rec) if rec.is_running() => {
            unsafe { libc::kill(rec.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while rec.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if rec.is_running() {
                anyhow::bail!("agent pid {} on {iface} did not stop within 10 s", rec.pid);
            }
        }
        Some(_) => AgentRecord::remove(iface),
        None if !pinned => anyhow::bail!("{iface}: not attached"),
        None => {}
    }
    pins::remove_iface_dir(iface)?;
    eprintln!("{iface}: detached");
    Ok(())
}

fn status(iface: Option<&str>, json: bool) -> anyhow::Result<()> {
    let ifaces: Vec<String> = match iface {
        Some(i) => vec![i.to_string()],
        None => pins::pinned_ifaces(),
    };
    let mut reports = Vec::new();
    for i in &ifaces {
        let dir = pins::iface_dir(i);
        if !dir.exists() {
            anyhow::bail!("{i}: not attached (no pins under {})", dir.display());
        }
        let counters = Counters::from_pin(&dir)?;
        let rec = AgentRecord::read(i);
        reports.push(serde_json::json!({
            "iface": i,
            "agent_pid": rec.as_ref().map(|r| r.pid),
            "agent_running": rec.as_ref().is_some_and(AgentRecord::is_running),
            "xdp_mode": rec.as_ref().map(|r| r.xdp_mode.clone()),
            "counters": counters.named(),
            "agent": crate::runtime::read_stats(i).unwrap_or_default(),
        }));
    }
    if json {
        let out = if iface.is_some() { reports.remove(0) } else { serde_json::Value::Array(reports) };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no interface attached");
    }
    for r in &reports {
        println!(
            "{}: xdp {} agent pid {} ({})",
            r["iface"].as_str().unwrap_or_default(),
            r["xdp_mode"].as_str().unwrap_or("?"),
            r["agent_pid"],
            if r["agent_running"].as_bool() == Some(true) { "running" } else { "not running" }
        );
        if let Some(map) = r["counters"].as_object() {
            println!("  XDP (in kernel):");
            for c in netboot_common::Counter::ALL {
                println!("    {:<26} {}", c.name(), map[c.name()]);
            }
        }
        if let Some(map) = r["agent"].as_object() {
            println!("  agent:");
            for (k, v) in map {
                println!("    {k:<26} {v}");
            }
        }
    }
    Ok(())
}

fn leases(json: bool, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    use crate::dhcp::store::{LeaseStore, SqliteStore};
    let state_dir = match config {
        Some(c) => Config::load(c)?.server.state_dir,
        None => match AgentRecord::all().into_iter().next() {
            Some(rec) => rec.state_dir,
            None => crate::config::ServerConfig::default().state_dir,
        },
    };
    let mut leases = SqliteStore::read_only(&state_dir)?.load()?;
    leases.sort_by_key(|l| l.ip);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    if json {
        let v: Vec<_> = leases
            .iter()
            .map(|l| {
                serde_json::json!({
                    "ip": l.ip.to_string(),
                    "mac": l.mac.to_string(),
                    "client": l.client.to_text(),
                    "hostname": l.hostname,
                    "state": l.state.as_str(),
                    "expires": l.expires,
                    "active": l.holds(now),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<16} {:<18} {:<9} {:>9}  {}", "IP", "MAC", "STATE", "EXPIRES", "HOSTNAME");
    for l in &leases {
        let left = l.expires.saturating_sub(now);
        let expires = if l.holds(now) { format!("{left}s") } else { "-".into() };
        println!("{:<16} {:<18} {:<9} {:>9}  {}", l.ip, l.mac, l.state.as_str(), expires, l.hostname.as_deref().unwrap_or(""));
    }
    Ok(())
}
