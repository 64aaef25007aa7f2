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
    /// Show the XDP and agent counters of an attached interface (all of them without IFACE).
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
    /// The lease store's schema.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Bearer tokens of the HTTP API (`[api] tokens_file`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Hosts of the running agent (the config's and the API's), over its control socket.
    Hosts {
        #[command(subcommand)]
        action: HostsAction,
        /// The agent's interface (default: the only running agent).
        #[arg(long, global = true)]
        iface: Option<String>,
    },
    /// A node's boot intent, over the running agent's control socket.
    Node {
        /// The node's MAC address.
        mac: String,
        #[command(subcommand)]
        action: NodeAction,
        #[arg(long, global = true)]
        iface: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Adds a token and prints it once (only its SHA-256 is stored).
    Add {
        name: String,
        #[arg(long, value_enum)]
        scope: crate::http::auth::Scope,
        /// The config whose `[api] tokens_file` takes it (default: the running agent's).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostsAction {
    /// Every host, with its source (config or api) and intent.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Adds or replaces a host of the API.
    Add {
        mac: String,
        ip: std::net::Ipv4Addr,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// `key=value`, repeatable.
        #[arg(long = "var")]
        vars: Vec<String>,
        #[arg(long)]
        intent: Option<String>,
    },
    /// Removes a host of the API.
    Rm { mac: String },
    /// Imports hosts from a CSV file (as `dhcp.hosts_file`) or JSON lines (`.jsonl`,
    /// `.ndjson`): all or none.
    Import { file: PathBuf },
    /// Enrols a machine (a discovered one, or any): a host with the given name and profile,
    /// and an address from `--ip` or, without it, the lease it holds.
    Adopt {
        mac: String,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// Sets what the node's next boot does: local, install, rescue or discover.
    Intent {
        intent: String,
        /// Keep the intent after an `installed` report (default: back to local).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DbAction {
    /// Bring the schema of the config's lease store (`[cluster] store`, or SQLite in
    /// state_dir) up to date; `attach` does the same. Safe to run from several servers at once.
    Migrate {
        #[arg(short, long)]
        config: PathBuf,
    },
}

/// Entry point of the binary: parses arguments, runs, and turns errors into one line on stderr
/// and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A command that prints behaves like a Unix tool when its reader goes away
    // (`netboot-xdp leases | head`). The agent must not: sendfile(2) has no MSG_NOSIGNAL, and a
    // client that hangs up mid-file (FIN, then RST) would make it raise SIGPIPE and kill the
    // server; with the signal ignored the call fails with EPIPE and only that connection ends.
    let sigpipe = if matches!(cli.command, Command::Attach { .. }) { libc::SIG_IGN } else { libc::SIG_DFL };
    // SAFETY: at start, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, sigpipe) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Db { action: DbAction::Migrate { config } } => db_migrate(&config),
        Command::Token { action: TokenAction::Add { name, scope, config } } => token_add(&name, scope, config),
        Command::Hosts { action, iface } => hosts(action, &agent_iface(iface)?),
        Command::Node { mac, action: NodeAction::Intent { intent, keep }, iface } => {
            let body = serde_json::json!({ "intent": intent, "intent_once": !keep });
            let out = control_json(&agent_iface(iface)?, hyper::Method::PUT, &format!("/api/v1/nodes/{mac}/intent"), Some(body))?;
            println!("{mac}: intent {}", out["intent"].as_str().unwrap_or("?"));
            Ok(())
        }
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
        None => {
            let mut v = pins::pinned_ifaces();
            v.extend(AgentRecord::all().into_iter().filter(AgentRecord::is_running).map(|r| r.iface));
            v.sort();
            v.dedup();
            v
        }
    };
    let mut reports = Vec::new();
    for i in &ifaces {
        // From the running agent (its control socket is in /run, visible from any mount
        // namespace); without one, what the pins say (the kernel keeps answering).
        let report = match AgentRecord::read(i).filter(AgentRecord::is_running) {
            Some(_) => serde_json::from_slice(&crate::control::control_get(i, "/api/v1/status")?)?,
            None if !pins::iface_dir(i).exists() => {
                anyhow::bail!("{i}: not attached (no running agent, no pins under {})", pins::iface_dir(i).display())
            }
            None => serde_json::json!({
                "iface": i,
                "agent_pid": null,
                "agent_running": false,
                "xdp_mode": null,
                "counters": Counters::from_pin(&pins::iface_dir(i))?.named(),
                "agent": {},
            }),
        };
        reports.push(report);
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

/// The interface of the agent to talk to: `iface`, or the only one running.
fn agent_iface(iface: Option<String>) -> anyhow::Result<String> {
    if let Some(i) = iface {
        return Ok(i);
    }
    let running: Vec<String> = AgentRecord::all().into_iter().filter(AgentRecord::is_running).map(|r| r.iface).collect();
    match running.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("no agent is running (netboot-xdp attach IFACE -c FILE)"),
        many => anyhow::bail!("agents run on {}: say which with --iface", many.join(", ")),
    }
}

fn control_json(iface: &str, method: hyper::Method, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
    let out = crate::control::control_request(iface, method, path, body)?;
    if out.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_slice(&out)?)
}

fn token_add(name: &str, scope: crate::http::auth::Scope, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match config {
        Some(c) => c,
        None => AgentRecord::all()
            .into_iter()
            .find(AgentRecord::is_running)
            .map(|r| r.config)
            .ok_or_else(|| anyhow::anyhow!("no running agent: name the config with -c FILE"))?,
    };
    let c = Config::load(&path)?;
    let file = c.api.tokens_path.ok_or_else(|| anyhow::anyhow!("{}: no [api] tokens_file to add the token to", path.display()))?;
    let token = crate::http::auth::add(&file, name, scope)?;
    eprintln!("token {name} (scope {}) added to {}; it is shown once:", scope.name(), file.display());
    println!("{token}");
    Ok(())
}

fn hosts(action: HostsAction, iface: &str) -> anyhow::Result<()> {
    use hyper::Method;
    match action {
        HostsAction::List { json } => {
            let v = control_json(iface, Method::GET, "/api/v1/hosts", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{:<18} {:<16} {:<20} {:<8} {:<9} PROFILE", "MAC", "IP", "HOSTNAME", "SOURCE", "INTENT");
            for h in v.as_array().into_iter().flatten() {
                let t = |k: &str| printable(h[k].as_str().unwrap_or("-"));
                println!("{:<18} {:<16} {:<20} {:<8} {:<9} {}", t("mac"), t("ip"), t("hostname"), t("source"), t("intent"), t("profile"));
            }
        }
        HostsAction::Add { mac, ip, hostname, profile, vars, intent } => {
            let mut map = serde_json::Map::new();
            for kv in &vars {
                let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--var {kv}: expected key=value"))?;
                map.insert(k.into(), v.into());
            }
            let body = serde_json::json!({ "ip": ip, "hostname": hostname, "profile": profile, "vars": map, "intent": intent });
            control_json(iface, Method::PUT, &format!("/api/v1/hosts/{mac}"), Some(body))?;
            println!("{mac}: {ip}");
        }
        HostsAction::Rm { mac } => {
            control_json(iface, Method::DELETE, &format!("/api/v1/hosts/{mac}"), None)?;
            println!("{mac}: removed");
        }
        HostsAction::Import { file } => {
            let text = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            let kind = if matches!(ext, "jsonl" | "ndjson" | "json") { "application/x-ndjson" } else { "text/csv" };
            let out = crate::control::control_request(iface, Method::POST, "/api/v1/hosts:import", Some((kind, text)))?;
            let v: serde_json::Value = serde_json::from_slice(&out)?;
            println!("{}: {} hosts imported", file.display(), v["imported"]);
        }
        HostsAction::Adopt { mac, hostname, profile, ip } => {
            let ip = match ip {
                Some(ip) => ip.to_string(),
                None => {
                    let leases = control_json(iface, Method::GET, "/api/v1/leases", None)?;
                    let want = mac.to_ascii_lowercase();
                    leases
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|l| l["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&want)) && l["active"] == true)
                        .find_map(|l| l["ip"].as_str().map(str::to_string))
                        .ok_or_else(|| anyhow::anyhow!("{mac} holds no lease: give the address with --ip"))?
                }
            };
            let body = serde_json::json!({ "ip": ip, "hostname": hostname, "profile": profile });
            control_json(iface, Method::PUT, &format!("/api/v1/hosts/{mac}"), Some(body))?;
            println!("{mac}: adopted as {hostname} at {ip}");
        }
    }
    Ok(())
}

fn db_migrate(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (applied, store, version) = match config.cluster.store_url() {
        Some(url) => {
            let target = crate::store::postgres::parse_url(url)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let applied = rt.block_on(async { crate::store::postgres::migrate(&mut crate::store::postgres::connect(&target).await?).await })?;
            (applied, "PostgreSQL", crate::store::schema::POSTGRES.last().map_or(0, |m| m.version))
        }
        None => {
            let s = crate::store::SqliteStore::open(&config.server.state_dir)?;
            (s.migrated, "SQLite", crate::store::schema::SQLITE.last().map_or(0, |m| m.version))
        }
    };
    match applied.as_slice() {
        [] => println!("{store} lease store: schema at version {version}, nothing to do"),
        v => println!("{store} lease store: applied migrations {v:?}; schema at version {version}"),
    }
    Ok(())
}

fn leases(json: bool, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let running = AgentRecord::all().into_iter().find(AgentRecord::is_running);
    let leases: Vec<serde_json::Value> = match (config, running) {
        // The running agent answers (its lease store, as it serves it).
        (None, Some(rec)) => serde_json::from_slice(&crate::control::control_get(&rec.iface, "/api/v1/leases")?)?,
        (config, _) => {
            // The store the config names (the cluster's PostgreSQL, or SQLite in state_dir).
            let reader = match config {
                Some(c) => crate::store::LeaseReader::new(&Config::load(c)?)?,
                None => crate::store::LeaseReader::Sqlite(crate::config::ServerConfig::default().state_dir),
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut leases = rt.block_on(reader.all())?;
            leases.sort_by_key(|l| l.ip);
            leases.iter().map(|l| l.to_json(now)).collect()
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
        return Ok(());
    }
    println!("{:<16} {:<18} {:<9} {:>9}  HOSTNAME", "IP", "MAC", "STATE", "EXPIRES");
    for l in &leases {
        let text = |k: &str| printable(l[k].as_str().unwrap_or(""));
        let left = l["expires"].as_u64().unwrap_or(0).saturating_sub(now);
        let expires = if l["active"].as_bool() == Some(true) { format!("{left}s") } else { "-".into() };
        println!("{:<16} {:<18} {:<9} {:>9}  {}", text("ip"), text("mac"), text("state"), expires, text("hostname"));
    }
    Ok(())
}

/// A value a client chose (a hostname) as a terminal may show it: control characters, terminal
/// escapes among them, are written escaped (`\u{1b}`), never sent to the terminal.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_chosen_text_cannot_drive_the_terminal() {
        assert_eq!(super::printable("node-01"), "node-01");
        assert_eq!(super::printable("x\u{1b}]0;owned\u{7}y\n"), "x\\u{1b}]0;owned\\u{7}y\\n");
        assert!(!super::printable("\u{1b}[2J\u{9b}31m").chars().any(char::is_control));
    }
}
