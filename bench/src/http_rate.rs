//! `netboot-bench http-rate --clients N --payload-mb M`: the payload of a storm over HTTP alone.
//! N clients at once, each as iPXE fetches (one connection, keep-alive, the kernel then the
//! initrd, sequentially, reading as fast as it can), against netboot-xdp's HTTP and against
//! nginx serving the same files, each on a fresh lab, in one run. Reports aggregate MiB/s,
//! server CPU per GiB delivered, and the spread of per-client completion times (p50, p99,
//! max: fairness). Every body is checked for its length and its first and last bytes.

use crate::proc::cpu_of;
use crate::http_fetch::{Connection, Expect};
use crate::peers::Running;
use netboot_lab::{Agent, Lab, LabSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Clients fetching at once.
    #[arg(long, default_value_t = 200)]
    pub clients: u32,
    /// Size of the initrd, MiB.
    #[arg(long, default_value_t = 32)]
    pub payload_mb: u64,
    /// Size of the kernel, MiB.
    #[arg(long, default_value_t = 8)]
    pub kernel_mb: u64,
    /// Servers, comma-separated: netboot-xdp, nginx.
    #[arg(long, default_value = "netboot-xdp,nginx")]
    pub servers: String,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Give up on a client after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub deadline: u64,
    /// TCP congestion control of the lab's two ends (net.ipv4.tcp_congestion_control, which
    /// each network namespace has its own of); the machine's own when absent.
    #[arg(long)]
    pub congestion: Option<String>,
}

const FILES: [&str; 2] = ["vmlinuz", "initrd.img"];

struct Run {
    server: String,
    /// Per client: seconds to both files, or why not.
    done: Vec<Result<f64, String>>,
    bytes: u64,
    wall: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let sizes = [args.kernel_mb << 20, args.payload_mb << 20];
    let files = sizes.map(|size| netboot_lab::pattern(size as usize, size));
    let expect = Arc::new([Expect::of(&files[0]), Expect::of(&files[1])]);
    println!("http-rate: {} clients, each a {} MiB kernel then a {} MiB initrd on one keep-alive connection", args.clients, args.kernel_mb, args.payload_mb);
    let mut runs = Vec::new();
    for server in args.servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lab = Lab::create(&LabSpec { server: "10.77.0.1/16".parse()?, client: Some("10.77.0.2/16".parse()?) })?;
        // HTTP alone needs no XDP_TX to the clients: no program on the client end, so TCP gets
        // the veth's normal receive path (see Lab::remove_peer_pass).
        lab.remove_peer_pass()?;
        if let Some(cc) = &args.congestion {
            lab.set_congestion(cc)?;
        }
        let dir = lab.scratch_dir("http-rate")?;
        let root = dir.join("http");
        std::fs::create_dir_all(&root)?;
        for (f, content) in FILES.iter().zip(&files) {
            std::fs::write(root.join(f), content)?;
        }
        let mut running = start(server, &lab, &dir, &root)?;
        // Warm the page cache for both alike: the first read of a file is a disk read.
        for f in FILES {
            let _ = std::fs::read(root.join(f))?;
        }
        let cpu0: Duration = running.pids().into_iter().map(cpu_of).sum();
        let (done, bytes, wall, client_cpu) = fetch_all(&lab, args, expect.clone())?;
        let server_cpu = running.pids().into_iter().map(cpu_of).sum::<Duration>().saturating_sub(cpu0);
        running.check_alive(server, "during the run")?;
        drop(running);
        let r = Run { server: server.to_string(), done, bytes, wall, server_cpu, client_cpu };
        print(&r);
        runs.push(r);
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&json(&runs, args))?)?;
        println!("json: {}", p.display());
    }
    let failed: usize = runs.iter().map(|r| r.done.iter().filter(|d| d.is_err()).count()).sum();
    anyhow::ensure!(failed == 0, "{failed} clients did not get both files intact");
    Ok(())
}

fn start(server: &str, lab: &Lab, dir: &Path, root: &Path) -> anyhow::Result<Running> {
    match server {
        "netboot-xdp" => {
            let config = dir.join("netboot.toml");
            std::fs::write(
                &config,
                format!(
                    "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n[dhcp]\nsubnet = \"10.77.0.0/16\"\n[http]\nlisten = \"10.77.0.1:8080\"\nroot = \"{}\"\nmax_connections_per_client = 0\n",
                    dir.join("state").display(),
                    root.display()
                ),
            )?;
            Ok(Running::Agent(Agent::start(lab, &crate::bin_dir().join("netboot-xdp"), &config, &[])?))
        }
        "nginx" => Ok(Running::Children(vec![crate::peers::nginx(lab, dir, root)?])),
        other => anyhow::bail!("unknown server {other:?} (netboot-xdp, nginx)"),
    }
}

/// What every client did: per client the seconds its downloads took or why it failed; the
/// bytes received, the wall time and this process's CPU time.
type Fetched = (Vec<Result<f64, String>>, u64, Duration, Duration);

/// Every client at once from the lab's client namespace.
fn fetch_all(lab: &Lab, args: &Args, expect: Arc<[Expect; 2]>) -> anyhow::Result<Fetched> {
    let (n, deadline) = (args.clients as usize, Duration::from_secs(args.deadline));
    lab.client.run(move || -> anyhow::Result<_> {
        netboot_lab::tftp_fetch::raise_fd_limit(n as u64 + 1024);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let cpu0 = crate::proc::self_cpu();
        let t0 = Instant::now();
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = rt.block_on(async {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (bytes, expect) = (bytes.clone(), expect.clone());
                    tokio::spawn(async move {
                        let t = Instant::now();
                        match tokio::time::timeout(deadline, client(&expect, &bytes)).await {
                            Ok(Ok(())) => Ok(t.elapsed().as_secs_f64()),
                            Ok(Err(e)) => Err(e),
                            Err(_) => Err(format!("not done within {deadline:?}")),
                        }
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(n);
            for t in tasks {
                out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
            }
            out
        });
        let wall = t0.elapsed();
        Ok((done, bytes.load(std::sync::atomic::Ordering::Relaxed), wall, crate::proc::self_cpu().saturating_sub(cpu0)))
    })?
}

/// One machine: one connection, the kernel then the initrd.
async fn client(expect: &[Expect; 2], bytes: &std::sync::atomic::AtomicU64) -> Result<(), String> {
    let mut conn = Connection::open("10.77.0.1:8080").await?;
    for (f, e) in FILES.iter().zip(expect) {
        // Both servers run without a download limit here: every request is served.
        let got = conn.fetch(&format!("/{f}"), e, bytes).await?;
        if got != crate::http_fetch::Fetched::Done {
            return Err(format!("/{f}: {got:?}"));
        }
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(r: &Run) -> serde_json::Value {
    let mut t: Vec<f64> = r.done.iter().filter_map(|d| d.as_ref().ok().copied()).collect();
    t.sort_by(f64::total_cmp);
    let gib = r.bytes as f64 / (1u64 << 30) as f64;
    serde_json::json!({
        "server": r.server,
        "clients_done": t.len(),
        "failed": r.done.len() - t.len(),
        "bytes": r.bytes,
        "wall_s": r.wall.as_secs_f64(),
        "mib_per_s": r.bytes as f64 / (1 << 20) as f64 / r.wall.as_secs_f64(),
        "server_cpu_s": r.server_cpu.as_secs_f64(),
        "server_cpu_s_per_gib": r.server_cpu.as_secs_f64() / gib.max(1e-9),
        "client_cpu_s": r.client_cpu.as_secs_f64(),
        "p50_s": pct(&t, 0.5),
        "p99_s": pct(&t, 0.99),
        "max_s": pct(&t, 1.0),
        "p99_over_p50": pct(&t, 0.99) / pct(&t, 0.5),
        "errors": r.done.iter().filter_map(|d| d.as_ref().err()).take(5).collect::<Vec<_>>(),
    })
}

fn print(r: &Run) {
    let s = summary(r);
    println!(
        "{:<12} {} of {} clients, {:.0} MiB/s, server CPU {:.2} s ({:.3} s/GiB), client CPU {:.2} s, completion p50 {:.2} s p99 {:.2} s max {:.2} s (p99/p50 {:.2})",
        r.server,
        s["clients_done"],
        r.done.len(),
        s["mib_per_s"].as_f64().unwrap_or(0.0),
        r.server_cpu.as_secs_f64(),
        s["server_cpu_s_per_gib"].as_f64().unwrap_or(0.0),
        r.client_cpu.as_secs_f64(),
        s["p50_s"].as_f64().unwrap_or(f64::NAN),
        s["p99_s"].as_f64().unwrap_or(f64::NAN),
        s["max_s"].as_f64().unwrap_or(f64::NAN),
        s["p99_over_p50"].as_f64().unwrap_or(f64::NAN),
    );
    for e in s["errors"].as_array().into_iter().flatten() {
        println!("    e.g. {e}");
    }
}

fn json(runs: &[Run], args: &Args) -> serde_json::Value {
    serde_json::json!({
        "clients": args.clients,
        "kernel_mb": args.kernel_mb,
        "payload_mb": args.payload_mb,
        "congestion": args.congestion.clone().unwrap_or_else(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default().trim().to_string()),
        "servers": runs.iter().map(summary).collect::<Vec<_>>(),
    })
}
