//! What a storm prints and writes: the live progress bar, a summary per server, the comparison,
//! JSON, and the plot of the fraction of machines booted over time.

use super::machine::{Outcome, Progress, STAGES};
use super::{Args, Run};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A bar of booted machines with the count per stage; redrawn every 100 ms (hidden when stderr
/// is not a terminal).
pub fn progress_bar(n: u64, progress: Arc<Progress>) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} booted  {msg}").expect("template").progress_chars("=> "),
    );
    let b = bar.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        while !b.is_finished() {
            tick.tick().await;
            let d: Vec<u32> = progress.done.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            b.set_position(u64::from(d[4]));
            b.set_message(format!("dhcp {} tftp {} ipxe {} script {} failed {}", d[0], d[1], d[2], d[3], progress.failed.load(Ordering::Relaxed)));
        }
    });
    bar
}

/// Seconds each stage took (from the end of the previous one), per machine that finished it.
fn stage_durations(outcomes: &[Outcome]) -> Vec<Vec<f64>> {
    let mut per = vec![Vec::new(); STAGES.len()];
    for o in outcomes {
        let mut prev = 0.0;
        for (i, end) in o.stage_end.iter().enumerate() {
            per[i].push(end - prev);
            prev = *end;
        }
    }
    for v in &mut per {
        v.sort_by(f64::total_cmp);
    }
    per
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Machines that got an address another machine also got.
pub fn duplicate_addresses(r: &Run) -> usize {
    let mut seen = HashSet::new();
    r.outcomes.iter().filter_map(|o| o.ip).filter(|ip| !seen.insert(*ip)).count()
}

/// The time until the last machine booted, if all did.
pub fn all_booted(r: &Run) -> Option<f64> {
    r.outcomes.iter().map(Outcome::booted_at).collect::<Option<Vec<f64>>>().map(|v| v.into_iter().fold(0.0, f64::max))
}

fn failures_by_stage(r: &Run) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (stage, _) in r.outcomes.iter().filter_map(|o| o.failure.as_ref()) {
        *m.entry(stage.clone()).or_insert(0) += 1;
    }
    m
}

pub fn print(r: &Run, nodes: u32) {
    let booted = r.outcomes.iter().filter(|o| o.booted()).count();
    let last = r.outcomes.iter().filter_map(Outcome::booted_at).fold(0.0, f64::max);
    let dhcp_retx: u64 = r.outcomes.iter().map(|o| u64::from(o.dhcp_retransmits)).sum();
    let tftp_retx: u64 = r.outcomes.iter().map(|o| o.tftp_retransmits).sum();
    let deferred: u64 = r.outcomes.iter().map(|o| u64::from(o.http_deferred)).sum();
    let done = match all_booted(r) {
        Some(t) => format!("all {nodes} booted in {t:.2} s"),
        None => format!("{booted}/{nodes} booted (last at {last:.2} s)"),
    };
    println!("\n{}: {done}", r.server);
    println!(
        "  server CPU {:.2} s, client CPU {:.2} s, retransmits: DHCP {dhcp_retx}, TFTP {tftp_retx}{}",
        r.server_cpu.as_secs_f64(),
        r.client_cpu.as_secs_f64(),
        if deferred > 0 { format!(", files deferred (503): {deferred}") } else { String::new() }
    );
    println!("  {:<10} {:>8} {:>9} {:>9} {:>9} {:>9}   (seconds per stage)", "stage", "done", "p50", "p95", "p99", "max");
    for (i, d) in stage_durations(&r.outcomes).iter().enumerate() {
        println!("  {:<10} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3}", STAGES[i], d.len(), pct(d, 0.5), pct(d, 0.95), pct(d, 0.99), pct(d, 1.0));
    }
    let f = &r.faults;
    if f.restarts > 0 || f.flood_sent > 0 || f.lost_leases.is_some_and(|n| n > 0) {
        println!("  faults: {} agent restarts, {} flood frames, lost leases {:?}", f.restarts, f.flood_sent, f.lost_leases);
    }
    if let Some(kind) = f.member_fault {
        let reboots: u32 = r.outcomes.iter().map(|o| o.reboots).sum();
        println!("  member fault {kind:?}: buckets moved in {:?} s; {reboots} machines started over", f.failover_s);
    }
    for m in &f.members {
        println!(
            "  member {}: {} buckets, {} offers, {} acks, {} left to others, {} claims lost",
            m["cluster"]["server_id"].as_str().unwrap_or("?"),
            m["cluster"]["owned_buckets"],
            m["offers"],
            m["acks"],
            m["not_owner"],
            m["claims_lost"]
        );
    }
    let failures = failures_by_stage(r);
    if !failures.is_empty() {
        println!("  failures by stage: {failures:?}");
        for o in r.outcomes.iter().filter(|o| o.failure.is_some()).take(3) {
            let (stage, why) = o.failure.as_ref().expect("filtered");
            println!("    e.g. {} at {stage}: {why}", o.mac);
        }
    }
    let dups = duplicate_addresses(r);
    if dups > 0 {
        println!("  violation: {dups} machines got an address another machine got");
    }
}

pub fn compare(runs: &[Run]) {
    if runs.len() < 2 {
        return;
    }
    println!("\ntime until all booted:");
    let ours = runs.iter().find(|r| r.server == "netboot-xdp").and_then(all_booted);
    for r in runs {
        match (all_booted(r), ours) {
            (Some(t), Some(o)) if r.server != "netboot-xdp" => println!("  {:<15} {t:>8.2} s  ({:.1}× netboot-xdp)", r.server, t / o),
            (Some(t), _) => println!("  {:<15} {t:>8.2} s", r.server),
            (None, _) => println!("  {:<15} not all booted ({} of {})", r.server, r.outcomes.iter().filter(|o| o.booted()).count(), r.outcomes.len()),
        }
    }
}

/// (seconds since the start, fraction booted), at most ~400 points.
fn curve(r: &Run) -> Vec<(f64, f64)> {
    let mut t: Vec<f64> = r.outcomes.iter().filter_map(Outcome::booted_at).collect();
    t.sort_by(f64::total_cmp);
    let n = r.outcomes.len().max(1) as f64;
    let step = (t.len() / 400).max(1);
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(t.iter().enumerate().filter(|(i, _)| i % step == 0 || *i == t.len() - 1).map(|(i, x)| (*x, (i + 1) as f64 / n)));
    pts
}

pub fn plot(runs: &[Run], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let x_max = runs.iter().flat_map(|r| r.outcomes.iter().filter_map(Outcome::booted_at)).fold(1.0, f64::max) * 1.05;
    let nodes = runs.first().map_or(0, |r| r.outcomes.len());
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{nodes} machines powered on at once: fraction booted"), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..1.02)?;
    chart.configure_mesh().x_desc("seconds since power-on").y_desc("booted").draw()?;
    let colors = [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28), RGBColor(0x2c, 0xa0, 0x2c), RGBColor(0x94, 0x67, 0xbd)];
    for (i, r) in runs.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart.draw_series(LineSeries::new(curve(r), c.stroke_width(2)))?.label(r.server.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw()?;
    root.present()?;
    Ok(())
}

pub fn json(runs: &[Run], args: &Args) -> serde_json::Value {
    let servers: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let stages: serde_json::Map<String, serde_json::Value> = stage_durations(&r.outcomes)
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let f = |p: f64| if d.is_empty() { serde_json::Value::Null } else { serde_json::json!(pct(d, p)) };
                    (STAGES[i].to_string(), serde_json::json!({ "done": d.len(), "p50_s": f(0.5), "p95_s": f(0.95), "p99_s": f(0.99), "max_s": f(1.0) }))
                })
                .collect();
            serde_json::json!({
                "server": r.server,
                "booted": r.outcomes.iter().filter(|o| o.booted()).count(),
                "all_booted_s": all_booted(r),
                "wall_s": r.wall.as_secs_f64(),
                "failures_by_stage": failures_by_stage(r),
                "violations": r.outcomes.iter().filter(|o| o.violation()).count() + duplicate_addresses(r) + r.faults.lost_leases.unwrap_or(0),
                "duplicate_addresses": duplicate_addresses(r),
                "faults": r.faults,
                "dhcp_retransmits": r.outcomes.iter().map(|o| u64::from(o.dhcp_retransmits)).sum::<u64>(),
                "reboots": r.outcomes.iter().map(|o| u64::from(o.reboots)).sum::<u64>(),
                "tftp_retransmits": r.outcomes.iter().map(|o| o.tftp_retransmits).sum::<u64>(),
                "http_deferred": r.outcomes.iter().map(|o| u64::from(o.http_deferred)).sum::<u64>(),
                "server_cpu_s": r.server_cpu.as_secs_f64(),
                "client_cpu_s": r.client_cpu.as_secs_f64(),
                "stages": stages,
                "booted_over_time": curve(r),
                "failures": r.outcomes.iter().filter(|o| o.failure.is_some()).take(20).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "nodes": args.nodes,
        "arch": format!("{:?}", args.arch).to_lowercase(),
        "rom_blksize": args.rom_blksize,
        "uefi_windowsize": args.uefi_windowsize,
        "files": args.files,
        "ramp_s": args.ramp,
        "pool": args.pool,
        "loss_pct": args.loss,
        "kill_agent_at": args.kill_agent_at,
        "takeover_s": args.takeover,
        "flood_pps": args.flood,
        "flood_kind": args.flood_kind,
        "flood_lead_s": args.flood_lead,
        "cluster_servers": args.servers,
        "store": args.store,
        "servers": servers,
    })
}
