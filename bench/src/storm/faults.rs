//! Faults a storm can run through (`--kill-agent-at`, `--member-fault`, `--flood` of the kind
//! `--flood-kind` says; `--loss` is the lab's lossy link), and the check that follows them:
//! every machine that booted has its lease in the store.

use super::MemberFault;
use super::machine::{Outcome, Progress};
use crate::peers::Running;
use netboot_lab::Agent;
use netboot_lab::{Lab, Segment};
use netboot::mac::MacAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the faults did during a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Seen {
    /// Agent crashes and restarts (`--kill-agent-at`).
    pub restarts: u32,
    /// The fault done to a cluster member (`--member-fault`).
    pub member_fault: Option<MemberFault>,
    /// Seconds from that fault until the other members owned all 256 buckets.
    pub failover_s: Option<f64>,
    /// Per netboot-xdp server at the end: its id, buckets, answers and drops (see
    /// [`member_report`]).
    pub members: Vec<serde_json::Value>,
    /// Frames of the flood sent (`--flood`).
    pub flood_sent: u64,
    /// Machines that booted but whose address the lease store does not hold bound to them
    /// (netboot-xdp only): each is a lost lease, counted as a violation.
    pub lost_leases: Option<usize>,
}

/// Waits until `threshold` machines have their first address (an event of the storm, not a
/// time), then kill -9 of the agent and a new one at once. Returns the restarts done (0 when
/// the threshold was never reached before `deadline`).
pub fn kill_agent_when(running: &mut Running, progress: &Progress, threshold: u32, deadline: Duration) -> anyhow::Result<Seen> {
    let Running::Agent(agent) = running else { anyhow::bail!("--kill-agent-at needs netboot-xdp") };
    if !reached(progress, threshold, deadline) {
        return Ok(Seen::default());
    }
    let t = Instant::now();
    agent.crash_and_restart()?;
    println!("storm: agent killed (-9) after {threshold} machines had an address; running again after {:.2} s", t.elapsed().as_secs_f64());
    Ok(Seen { restarts: 1, ..Default::default() })
}

/// Whether `threshold` machines got their first address before `deadline` (and none failed).
fn reached(progress: &Progress, threshold: u32, deadline: Duration) -> bool {
    let started = Instant::now();
    while progress.done[0].load(Ordering::Relaxed) < threshold {
        if started.elapsed() > deadline || progress.failed.load(Ordering::Relaxed) > 0 {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Once `threshold` machines have an address, kill -9 or SIGSTOP the last member of the
/// cluster, then measures how long until the others own all of its buckets (they poll
/// `status` every 50 ms: the figure is that much coarse).
pub fn member_fault_when(running: &mut Running, kind: MemberFault, progress: &Progress, threshold: u32, deadline: Duration) -> anyhow::Result<Seen> {
    let Running::Cluster { agents, .. } = running else { anyhow::bail!("--member-fault needs --servers 2 or more") };
    if !reached(progress, threshold, deadline) {
        return Ok(Seen::default());
    }
    let n = agents.len();
    let t = Instant::now();
    match kind {
        MemberFault::Kill => agents[n - 1].crash()?,
        MemberFault::Stop => agents[n - 1].pause(true),
    }
    let owned = |a: &Agent| a.status().ok().and_then(|s| s["cluster"]["owned_buckets"].as_u64()).unwrap_or(0);
    let failover = loop {
        if agents[..n - 1].iter().map(owned).sum::<u64>() == u64::from(netboot_common::cluster::BUCKETS) {
            break Some(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(30) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "storm: member {} {} after {threshold} machines had an address; its buckets moved in {}",
        agents[n - 1].iface,
        if kind == MemberFault::Kill { "killed (-9)" } else { "stopped (SIGSTOP)" },
        failover.map_or("(not within 30 s)".into(), |s| format!("{s:.2} s"))
    );
    Ok(Seen { member_fault: Some(kind), failover_s: failover, ..Default::default() })
}

/// A member at the end of a run: `status`'s cluster object and the counters that show who
/// answered (OFFERs in the kernel and the agent) and who left requests to the others.
pub fn member_report(agent: &Agent) -> anyhow::Result<serde_json::Value> {
    let s = match agent.status() {
        Ok(s) if s["agent_running"] == true => s,
        _ => return Ok(serde_json::json!({ "iface": agent.iface, "running": false })),
    };
    let xdp = |k: &str| s["counters"][k].as_u64().unwrap_or(0);
    let own = |k: &str| s["agent"][k].as_u64().unwrap_or(0);
    Ok(serde_json::json!({
        "iface": agent.iface,
        "running": true,
        "cluster": s["cluster"],
        "offers": xdp("fast_offer") + own("dhcp_sent_offer"),
        "acks": xdp("fast_ack") + own("dhcp_sent_ack"),
        "not_owner": xdp("not_owner") + own("dhcp_silent_not_owner"),
        "claims_lost": own("lease_claims_lost"),
        // What this server's API shows of the shared store: every member's leases.
        "leases_bound": bound_leases(&agent.iface).unwrap_or(0),
        "agent_counters": s["agent"],
        "xdp_counters": s["counters"],
    }))
}

fn bound_leases(iface: &str) -> anyhow::Result<usize> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(&netboot::control::control_get(iface, "/api/v1/leases")?)?;
    Ok(v.iter().filter(|l| l["state"] == "bound").count())
}

/// Hostile frames at a steady rate, from a host of their own on the segment.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
    _host: Segment,
}

/// What a flood sends (`--flood-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloodKind {
    /// DISCOVERs from random MACs (each its own Ethernet source and chaddr): a pool drain.
    Discover,
    /// DISCOVERs carrying the storm's machines' chaddrs, from the flooding host's own MAC:
    /// an attempt to get the machines rate-limited (`per_client_pps`) while they boot.
    Victims,
    /// TFTP read requests with options (an OACK each) from forged sources (8192 addresses of
    /// the segment, random MACs) that never acknowledge: an attempt to hold every transfer
    /// place.
    Rrq,
}

/// Where forged frames go: the server's address and MAC.
pub struct Target {
    pub ip: std::net::Ipv4Addr,
    pub mac: MacAddr,
}

/// The flood never outlives this, whatever happens to the storm.
const FLOOD_MAX: Duration = Duration::from_secs(600);

impl Flood {
    pub fn start(lab: &Lab, pps: u32, kind: FloodKind, victims: Vec<MacAddr>, target: Target) -> anyhow::Result<Flood> {
        let host = lab.add_segment("flood", 'f', None)?;
        let own_mac = iface_mac(&host.ns, &host.iface)?;
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (dev, flag, count) = (host.iface.clone(), stop.clone(), sent.clone());
        let ns = host.ns.clone();
        let thread = std::thread::spawn(move || {
            let run = || -> anyhow::Result<()> {
                // Send only: a filter that accepts nothing keeps replies out of its buffer.
                let none = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
                let sock = crate::rawsock::PacketSocket::open(&dev, Some(&none))?;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(pps);
                let started = Instant::now();
                let mut n: u64 = 0;
                while !flag.load(Ordering::Relaxed) && started.elapsed() < FLOOD_MAX {
                    // Paced: frame n leaves at n / pps seconds.
                    let due = Duration::from_secs_f64(n as f64 / f64::from(pps));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait.min(Duration::from_millis(5)));
                        continue;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let b = rng.to_be_bytes();
                    let random_mac = MacAddr([0x02, 0xf1, b[0], b[1], b[2], b[3]]);
                    let frame = match kind {
                        FloodKind::Discover => crate::rawsock::dhcp_broadcast(random_mac, &discover(random_mac, rng as u32)),
                        FloodKind::Victims if victims.is_empty() => break,
                        FloodKind::Victims => {
                            let victim = victims[(n % victims.len() as u64) as usize];
                            let mut f = crate::rawsock::dhcp_broadcast(victim, &discover(victim, rng as u32));
                            f[6..12].copy_from_slice(&own_mac.0);
                            f
                        }
                        FloodKind::Rrq => forged_rrq(random_mac, std::net::Ipv4Addr::new(10, 77, 0x80 | (b[4] & 0x1f), b[5]), 1024 + u16::from_be_bytes([b[6], b[7]]) % 60000, &target),
                    };
                    if sock.send(&frame) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
                Ok(())
            };
            if let Err(e) = ns.run(run).and_then(|r| r) {
                eprintln!("storm: flood stopped: {e:#}");
            }
        });
        Ok(Flood { stop, sent, thread, _host: host })
    }

    /// Stops the flood; returns how many frames it sent.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.sent.load(Ordering::Relaxed)
    }
}

/// The MAC of `iface` in `ns`.
pub fn iface_mac(ns: &netboot_lab::NetNs, iface: &str) -> anyhow::Result<MacAddr> {
    // `ip -br link`: "NAME STATE MAC <FLAGS>" (sysfs would show the caller's namespace).
    let out = ns.command("ip").args(["-br", "link", "show", "dev", iface]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2).unwrap_or_default().parse().map_err(|e| anyhow::anyhow!("MAC of {iface} ({text:?}): {e:?}"))
}

/// A TFTP read request with options (answered with an OACK) from a forged address of the
/// segment (10.77.128.0/19: 8192 of them).
fn forged_rrq(src_mac: MacAddr, src_ip: std::net::Ipv4Addr, src_port: u16, to: &Target) -> Vec<u8> {
    let mut rrq = vec![0, 1];
    for s in ["undionly.kpxe", "octet", "blksize", "1432", "tsize", "0"] {
        rrq.extend_from_slice(s.as_bytes());
        rrq.push(0);
    }
    netboot::frame::UdpEnvelope { src_mac, dst_mac: to.mac, vlan: None, src_ip, dst_ip: to.ip, src_port, dst_port: 69, ttl: 64 }.build(&rrq)
}

/// A DISCOVER as a PXE ROM sends it.
fn discover(mac: MacAddr, xid: u32) -> Vec<u8> {
    use dhcproto::Encodable;
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType};
    let mut m = Message::default();
    m.set_xid(xid).set_flags(Flags::default().set_broadcast()).set_chaddr(&mac.0);
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
    m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
    m.to_vec().expect("encode")
}

/// Booted machines whose address the running agent's lease table does not hold bound to
/// their MAC.
pub fn lost_leases(agent: &netboot_lab::Agent, outcomes: &[Outcome]) -> anyhow::Result<usize> {
    let body = netboot::control::control_get(&agent.iface, "/api/v1/leases")?;
    let leases: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    let bound: std::collections::HashSet<(String, String)> = leases
        .iter()
        .filter(|l| l["state"] == "bound")
        .map(|l| (l["ip"].as_str().unwrap_or_default().to_string(), l["mac"].as_str().unwrap_or_default().to_string()))
        .collect();
    Ok(outcomes
        .iter()
        .filter(|o| o.failure.is_none())
        .filter_map(|o| Some((o.ip?.to_string(), o.mac.clone())))
        .filter(|k| !bound.contains(k))
        .count())
}
