//! `netboot-bench dhcp-rate`: DHCP figures for netboot-xdp's kernel and userspace paths and for
//! peers, in one run on one lab, with the same generator (dhcpgen) against each.
//!
//! - kernel cost per reply: `BPF_PROG_TEST_RUN` with a large repeat count (cache hit, and a
//!   miss that is passed);
//! - N clients at once: netboot-xdp cold (every DORA through the agent: the userspace path),
//!   then the same clients again (leases known: answered by the XDP program), then dnsmasq and
//!   Kea configured equivalently (no ping check, leases in a temporary directory).

use crate::dhcpgen::{self, Persona, Report};
use crate::proc::cpu_of;
use anyhow::Context;
use netboot_lab::{Agent, Lab, LabSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated clients per run.
    #[arg(long, default_value_t = 10000)]
    pub clients: u32,
    /// Exchanges in flight (0 = all clients at once); several (comma-separated) run every
    /// server at each, and each server's best is its saturation rate.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub window: Vec<u32>,
    #[arg(long, value_enum, default_value_t = Persona::Pxe)]
    pub persona: Persona,
    /// Peers to run besides netboot-xdp (comma-separated: dnsmasq, kea).
    #[arg(long, default_value = "dnsmasq,kea")]
    pub peers: String,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub deadline: u64,
    /// Lease store of netboot-xdp and Kea: SQLite / Kea's memfile, or a PostgreSQL started
    /// for the run (netboot-xdp as a one-member cluster, Kea with its PostgreSQL backend
    /// initialised by `kea-admin db-init pgsql`).
    #[arg(long, value_enum, default_value_t = crate::storm::Store::Sqlite)]
    pub store: crate::storm::Store,
}

struct Row {
    server: String,
    window: u32,
    report: Report,
    server_cpu: Duration,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    let (hit, miss) = prog_test_run_cost()?;
    println!("XDP program cost (BPF_PROG_TEST_RUN, mean of 200,000 runs): {hit} ns per cached DISCOVER answered, {miss} ns per request passed to the agent");
    out.insert("xdp_ns_per_reply".into(), hit.into());
    out.insert("xdp_ns_per_pass".into(), miss.into());

    let mut rows = Vec::new();
    for &window in &args.window {
        run_window(args, window, &mut rows, &mut out)?;
    }
    report(args, &rows, &mut out)?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&serde_json::Value::Object(out))?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Every server at one window, each on a fresh lab.
fn run_window(args: &Args, window: u32, rows: &mut Vec<Row>, out: &mut serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {
    let clients_cfg = |base: u32| dhcpgen::Config {
        clients: args.clients,
        base,
        persona: args.persona,
        window,
        retry: Duration::from_secs(1),
        deadline: Duration::from_secs(args.deadline),
    };

    // netboot-xdp: cold (userspace path), then warm (kernel path), same lab, same clients.
    {
        let lab = lab()?;
        let dir = lab.scratch_dir("bench-dhcp")?;
        let pg = postgres(args, &lab.id)?;
        let cluster = pg.as_ref().map_or(String::new(), |pg| format!("[cluster]\nserver_id = \"boot-a\"\nstore = \"{}\"\n", pg.url()));
        let config = dir.join("netboot.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.250.254\"]\nrouter = \"10.77.0.1\"\nlease_time = \"1h\"\n{cluster}",
                dir.join("state").display()
            ),
        )?;
        let agent = Agent::start(&lab, &crate::bin_dir().join("netboot-xdp"), &config, &[])?;
        let pid = agent.status()?["agent_pid"].as_u64().unwrap_or(0) as u32;
        let c0 = cpu_of(pid);
        let cold = dhcpgen::run(&lab, &clients_cfg(0))?;
        // The leases are committed; the reply compiler may still be filling the cache. The
        // fast path is measured once the agent is idle again.
        settle(pid);
        let c1 = cpu_of(pid);
        rows.push(Row { server: format!("netboot-xdp userspace path (first DORA){}", store_label(args)), window, report: cold, server_cpu: c1 - c0 });
        let warm = dhcpgen::run(&lab, &clients_cfg(0))?;
        let c2 = cpu_of(pid);
        let counters = agent.counters()?;
        println!("  kernel answers in the second run: fast_offer {} fast_ack {}", counters["fast_offer"], counters["fast_ack"]);
        for (k, v) in [("kernel_offers", counters["fast_offer"]), ("kernel_acks", counters["fast_ack"])] {
            let total = out.get(k).and_then(|t| t.as_u64()).unwrap_or(0) + v;
            out.insert(k.into(), total.into());
        }
        rows.push(Row { server: format!("netboot-xdp XDP fast path (known clients){}", store_label(args)), window, report: warm, server_cpu: c2 - c1 });
        agent.stop()?;
        drop(pg);
    }
    for peer in args.peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let lab = lab()?;
        let dir = lab.scratch_dir(&format!("bench-dhcp-{peer}"))?;
        let pg = if peer == "kea" { postgres(args, &lab.id)? } else { None };
        let mut child = match peer {
            "dnsmasq" => start_dnsmasq(&lab, &dir, args.clients)?,
            "kea" => start_kea(&lab, &dir, pg.as_ref())?,
            other => anyhow::bail!("unknown peer {other:?} (dnsmasq, kea)"),
        };
        std::thread::sleep(Duration::from_millis(500));
        let pid = child.id();
        let c0 = cpu_of(pid);
        let report = dhcpgen::run(&lab, &clients_cfg(0));
        let c1 = cpu_of(pid);
        let _ = child.kill();
        let _ = child.wait();
        let label = if pg.is_some() { format!("{peer}{}", store_label(args)) } else { peer.to_string() };
        rows.push(Row { server: label, window, report: report?, server_cpu: c1 - c0 });
    }
    Ok(())
}

fn report(args: &Args, rows: &[Row], out: &mut serde_json::Map<String, serde_json::Value>) -> anyhow::Result<()> {

    println!("\n{} clients ({:?}), DORA through dhcpgen, window = exchanges in flight (0: all at once):", args.clients, args.persona);
    println!("{:<44} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}", "server", "window", "leased", "wall s", "DORA/s", "p50 ms", "p99 ms", "retx", "srv CPU s");
    let mut json_rows = Vec::new();
    for r in rows {
        let p = &r.report;
        println!(
            "{:<44} {:>6} {:>7} {:>9.3} {:>9.0} {:>9.2} {:>9.2} {:>7} {:>9.2}",
            r.server,
            r.window,
            p.leased,
            p.wall.as_secs_f64(),
            p.rate(),
            p.pct(0.5).as_secs_f64() * 1e3,
            p.pct(0.99).as_secs_f64() * 1e3,
            p.retransmits,
            r.server_cpu.as_secs_f64()
        );
        let distinct: std::collections::HashSet<_> = p.addresses.iter().collect();
        if distinct.len() != p.addresses.len() {
            println!("  !! {}: an address was given to two clients", r.server);
        }
        json_rows.push(serde_json::json!({
            "server": r.server, "window": r.window, "clients": p.clients, "leased": p.leased, "wall_s": p.wall.as_secs_f64(),
            "dora_per_s": p.rate(), "p50_ms": p.pct(0.5).as_secs_f64() * 1e3, "p99_ms": p.pct(0.99).as_secs_f64() * 1e3,
            "retransmits": p.retransmits, "server_cpu_s": r.server_cpu.as_secs_f64(), "client_cpu_s": p.client_cpu.as_secs_f64(),
            "distinct_addresses": distinct.len(),
        }));
    }
    // Each server's best over the windows run: its saturation rate.
    let mut best: Vec<(&str, &Row)> = Vec::new();
    for r in rows {
        match best.iter_mut().find(|(s, _)| *s == r.server) {
            Some((_, b)) if b.report.rate() < r.report.rate() => *b = r,
            Some(_) => {}
            None => best.push((&r.server, r)),
        }
    }
    if args.window.len() > 1 {
        println!("\nbest over windows {:?}:", args.window);
        for (s, r) in &best {
            println!("  {s:<44} {:>9.0} DORA/s (window {})", r.report.rate(), r.window);
        }
    }
    let fast = best.iter().find(|(s, _)| s.contains("fast path"));
    let peer = best.iter().filter(|(s, _)| !s.starts_with("netboot")).max_by(|a, b| a.1.report.rate().total_cmp(&b.1.report.rate()));
    if let (Some((_, fast)), Some((peer, p))) = (fast, peer) {
        let ratio = fast.report.rate() / p.report.rate().max(1e-9);
        println!("\nfast path vs best peer ({peer}), best against best: {ratio:.1}x the rate");
        out.insert("fast_vs_best_peer".into(), ratio.into());
    }
    out.insert("runs".into(), json_rows.into());
    Ok(())
}

/// Waits (at most 30 s) until process `pid` uses less than 5 % of a CPU.
fn settle(pid: u32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = cpu_of(pid);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_of(pid);
        if now - last < Duration::from_millis(5) {
            return;
        }
        last = now;
    }
}

fn lab() -> anyhow::Result<Lab> {
    Lab::create(&LabSpec { server: "10.77.0.1/16".parse()?, client: None })
}

fn start_dnsmasq(lab: &Lab, dir: &Path, clients: u32) -> anyhow::Result<Child> {
    // As a competent operator runs it for a storm (PEERS.md): no ping, enough leases.
    lab.server
        .command("dnsmasq")
        .args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--dhcp-authoritative", "--no-ping"])
        .arg(format!("--interface={}", lab.server_if))
        .args(["--dhcp-range=10.77.1.1,10.77.250.254,1h", "--dhcp-option=3,10.77.0.1"])
        .arg(format!("--dhcp-lease-max={}", clients * 2 + 1000))
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .arg("--log-facility=-")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq")
}

/// Kea on memfile, or on `pg` with the schema `kea-admin db-init pgsql` creates.
fn start_kea(lab: &Lab, dir: &Path, pg: Option<&netboot_lab::postgres::Postgres>) -> anyhow::Result<Child> {
    let extra = match pg {
        None => serde_json::json!({}),
        Some(pg) => crate::peers::kea_pg_database(pg)?,
    };
    crate::peers::kea(lab, dir, serde_json::json!({ "pools": [{ "pool": "10.77.1.1 - 10.77.250.254" }] }), extra)
}

/// A PostgreSQL for one run with `--store postgres`.
fn postgres(args: &Args, tag: &str) -> anyhow::Result<Option<netboot_lab::postgres::Postgres>> {
    match args.store {
        crate::storm::Store::Postgres => Ok(Some(netboot_lab::postgres::Postgres::start(tag)?)),
        crate::storm::Store::Sqlite => Ok(None),
    }
}

fn store_label(args: &Args) -> &'static str {
    match args.store {
        crate::storm::Store::Postgres => ", PostgreSQL",
        crate::storm::Store::Sqlite => "",
    }
}

const RUNS: u32 = 200_000;

/// ns per packet for a cached DISCOVER (answered) and for a miss (passed).
fn prog_test_run_cost() -> anyhow::Result<(u32, u32)> {
    use netboot::config::Config;
    use netboot::dhcp::{DhcpServer, ServerParams};
    use netboot::fastpath::cache::{Presentation, ReplyCache, compile};
    use netboot::fastpath::{Loaded, testrun};
    let mac = netboot::mac::MacAddr([0x02, 0xb0, 0, 0, 0, 1]);
    let cfg = Config::parse(
        Path::new("bench.toml"),
        &format!("[server]\naddress = \"10.77.0.1\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n[[dhcp.host]]\nmac = \"{mac}\"\nip = \"10.77.0.50\"\n"),
    )?;
    let server = DhcpServer::new(ServerParams::from_config(&cfg, "10.77.0.1".parse()?), Vec::new(), Vec::new());
    let mut loaded = Loaded::new()?;
    let mut cache = ReplyCache::new(loaded.take_map(netboot_common::maps::REPLY_CACHE).context("no cache map")?)?;
    let who = Presentation { mac, class: netboot_common::wire::ClientClass::Pxe, arch: Some(0), client_id: None, relay: None };
    cache.install(mac, &compile(&server, &who, netboot::mac::MacAddr([2, 0, 0, 0, 0, 1]), 0))?;
    let clients_cfg = dhcpgen::Config { clients: 2, base: 0, persona: Persona::Pxe, window: 0, retry: Duration::from_secs(1), deadline: Duration::from_secs(1) };
    // Client 1 has the reservation (02:b0:00:00:00:01); client 0 is unknown.
    let hit = dhcpgen::discover_frame(&clients_cfg, 1);
    let miss = dhcpgen::discover_frame(&clients_cfg, 0);
    let fd = loaded.program_fd();
    // One run per call: an answered frame is rewritten in place, so a repeat would run on the
    // reply. The kernel times each run; the mean over many calls is the cost.
    let mean = |frame: &[u8]| -> anyhow::Result<(u32, u32)> {
        let mut total: u64 = 0;
        let mut action = 0;
        for _ in 0..RUNS {
            let r = testrun::run(fd, frame, 1)?;
            total += u64::from(r.duration_ns);
            action = r.action;
        }
        Ok(((total / u64::from(RUNS)) as u32, action))
    };
    let (hit_ns, hit_action) = mean(&hit)?;
    let h = testrun::TestRun { action: hit_action, output: Vec::new(), duration_ns: hit_ns };
    anyhow::ensure!(
        h.action == testrun::XDP_TX,
        "the cached DISCOVER was not answered (action {}, counters {:?})",
        h.action,
        loaded.counters()?.nonzero()
    );
    let (miss_ns, _) = mean(&miss)?;
    Ok((h.duration_ns, miss_ns))
}
