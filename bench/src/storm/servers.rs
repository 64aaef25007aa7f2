//! The servers a storm runs against, configured for the same work: reservations for every
//! machine, BIOS → undionly.kpxe and UEFI x64 → ipxe.efi over TFTP, iPXE → the script URL with
//! 175.176 = 1 (no ProxyDHCP wait), the script and files over HTTP on port 8080. Peers are set
//! up as a competent operator would for a storm (PEERS.md: no ping check, enough leases and
//! TFTP transfers); what each one gets is written under the run's directory.

use super::machine::Identity;
use crate::peers::{Running, peer_binary};
use anyhow::Context;
use netboot_lab::{Agent, Lab};
use std::path::Path;
use std::process::{Child, Stdio};

pub const SERVERS: [&str; 4] = ["netboot-xdp", "dnsmasq", "kea+tftpd-hpa", "nginx"];
pub const SERVER_IP: &str = "10.77.0.1";
pub const SCRIPT_URL: &str = "http://10.77.0.1:8080/boot.ipxe";

/// The address of boot server `i` of a cluster: the lab's server end, then 10.77.0.3 and up
/// (10.77.0.2 is the machines' side).
pub fn server_ip(i: u32) -> String {
    if i == 0 { SERVER_IP.into() } else { format!("10.77.0.{}", 2 + i) }
}

/// The script URL server `i` hands out.
pub fn script_url(i: u32) -> String {
    format!("http://{}:8080/boot.ipxe", server_ip(i))
}

/// The files every server serves, under `dir/tftp` and `dir/http`; `payload`: the kernel's
/// and the initrd's contents.
pub fn write_files(dir: &Path, bios: &[u8], uefi: &[u8], payload: &[Vec<u8>; 2]) -> anyhow::Result<()> {
    let (tftp, http) = (dir.join("tftp"), dir.join("http"));
    std::fs::create_dir_all(&tftp)?;
    std::fs::create_dir_all(&http)?;
    std::fs::write(tftp.join("undionly.kpxe"), bios)?;
    std::fs::write(tftp.join("ipxe.efi"), uefi)?;
    // netboot-xdp renders a per-node template; the peers serve the same script statically.
    std::fs::write(http.join("boot.ipxe.j2"), "#!ipxe\nkernel http://{{ server }}:8080/vmlinuz initrd=initrd.img ip=dhcp hostname={{ hostname }}\ninitrd http://{{ server }}:8080/initrd.img\nboot\n")?;
    std::fs::write(http.join("boot.ipxe"), "#!ipxe\nkernel http://10.77.0.1:8080/vmlinuz initrd=initrd.img ip=dhcp\ninitrd http://10.77.0.1:8080/initrd.img\nboot\n")?;
    std::fs::write(http.join("vmlinuz"), &payload[0])?;
    std::fs::write(http.join("initrd.img"), &payload[1])?;
    Ok(())
}

pub fn start(server: &str, lab: &Lab, dir: &Path, machines: &[Identity], args: &super::Args) -> anyhow::Result<Running> {
    let mut running = match server {
        "netboot-xdp" if args.store == super::Store::Postgres => cluster(lab, dir, machines, args)?,
        "netboot-xdp" => Running::Agent(Agent::start(lab, &crate::bin_dir().join("netboot-xdp"), &netboot_xdp_config(dir, machines, args, 0, None)?, &[])?),
        // HTTP compared like for like: netboot-xdp answers DHCP and TFTP (its HTTP moved off
        // the port), nginx serves the same script (static) and files on 8080.
        "nginx" => {
            let config = netboot_xdp_config(dir, machines, args, 0, None)?;
            let text = std::fs::read_to_string(&config)?.replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:8081\"");
            std::fs::write(&config, text)?;
            let agent = Agent::start(lab, &crate::bin_dir().join("netboot-xdp"), &config, &[])?;
            Running::AgentWith(agent, vec![http_server(lab, dir)?])
        }
        "dnsmasq" => Running::Children(vec![dnsmasq(lab, dir, machines)?]),
        "kea+tftpd-hpa" if args.store == super::Store::Postgres => kea_cluster(lab, dir, machines, args)?,
        "kea+tftpd-hpa" => Running::Children(vec![kea(lab, dir, machines)?, tftpd_hpa(lab, dir)?, http_server(lab, dir)?]),
        other => anyhow::bail!("unknown server {other:?} (one of {})", SERVERS.join(", ")),
    };
    if let Running::Children(c) = &mut running && server == "dnsmasq" {
        c.push(http_server(lab, dir)?);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    running.check_alive(server, "at start")?;
    Ok(running)
}

/// `--servers N --store postgres`: a PostgreSQL for the run and N netboot-xdp servers sharing
/// it, the first on the lab's server end and the others on hosts of their own on the segment;
/// ready once each sees all N members.
fn cluster(lab: &Lab, dir: &Path, machines: &[Identity], args: &super::Args) -> anyhow::Result<Running> {
    let store = netboot_lab::postgres::Postgres::start(&lab.id)?;
    let bin = crate::bin_dir().join("netboot-xdp");
    let (mut agents, mut hosts) = (Vec::new(), Vec::new());
    for i in 0..args.servers {
        let config = netboot_xdp_config(dir, machines, args, i, Some((&store.url(), args.takeover)))?;
        let agent = if i == 0 {
            Agent::start(lab, &bin, &config, &[])?
        } else {
            let tag = crate::peers::host_tag(i);
            let host = lab.add_server(&format!("srv{i}"), tag, format!("{}/16", server_ip(i)).parse()?)?;
            netboot_lab::run_checked(host.ns.command("sysctl").args(["-qw", "net.core.rmem_default=16777216", "net.core.rmem_max=16777216"]))?;
            let a = Agent::start_on(&host.ns, &host.iface, &bin, &config, &[])?;
            hosts.push(host);
            a
        };
        agents.push(agent);
    }
    let members = |a: &Agent| a.status().ok().and_then(|s| s["cluster"]["members"].as_array().map(Vec::len)).unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while agents.iter().any(|a| members(a) != args.servers as usize) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the {} servers did not all see each other within 15 s", args.servers);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(Running::Cluster { agents, _hosts: hosts, _store: store })
}

/// netboot-xdp's config as server `i` with a reservation per machine, or (`--pool`) a pool of
/// addresses for them; a member of a cluster sharing `store` (URL, takeover in seconds).
fn netboot_xdp_config(dir: &Path, machines: &[Identity], args: &super::Args, i: u32, store: Option<(&str, u32)>) -> anyhow::Result<std::path::PathBuf> {
    let mut hosts = String::from("mac,ip,hostname\n");
    for m in machines {
        hosts.push_str(&format!("{},{},node-{:05}\n", m.mac, m.ip, m.index));
    }
    std::fs::write(dir.join("hosts.csv"), hosts)?;
    // The simulated machines fetch over TFTP and HTTP from the one address of the lab's client
    // end: the per-client transfer and connection limits (real machines each have their own
    // address) are off; every other limit keeps its default.
    let config = dir.join(format!("netboot-{i}.toml"));
    let cluster = store.map_or(String::new(), |(url, takeover)| format!("[cluster]\nserver_id = \"boot-{i}\"\nstore = \"{url}\"\ntakeover = \"{takeover}s\"\n"));
    std::fs::write(
        &config,
        format!(
            "[server]\naddress = \"{address}\"\nstate_dir = \"{state}\"\n\
             [dhcp]\nsubnet = \"10.77.0.0/16\"\nlease_time = \"1h\"\n{addresses}\n\
             [boot]\nbios = \"undionly.kpxe\"\nuefi_x64 = \"ipxe.efi\"\nipxe_script = \"http://{{server}}:8080/boot.ipxe\"\n\
             [tftp]\nroot = \"{tftp}\"\nengine = \"afxdp\"\nmax_transfers_per_client = 0\n\
             [http]\nlisten = \"0.0.0.0:8080\"\nroot = \"{http}\"\nscript = \"boot.ipxe.j2\"\nmax_downloads = {max_downloads}\nmax_connections_per_client = 0\n{cluster}",
            address = server_ip(i),
            state = dir.join(format!("state-{i}")).display(),
            tftp = dir.join("tftp").display(),
            http = dir.join("http").display(),
            max_downloads = args.max_downloads,
            addresses = if args.pool { "pools = [\"10.77.2.1-10.77.255.254\"]" } else { "hosts_file = \"hosts.csv\"" },
        ),
    )?;
    Ok(config)
}

/// No output, and a process group of its own (see [`crate::peers::own_group`]).
fn quiet(c: &mut std::process::Command) -> &mut std::process::Command {
    crate::peers::own_group(c).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
}

fn dnsmasq(lab: &Lab, dir: &Path, machines: &[Identity]) -> anyhow::Result<Child> {
    let hosts: String = machines.iter().map(|m| format!("{},{}\n", m.mac, m.ip)).collect();
    std::fs::write(dir.join("dnsmasq.hosts"), hosts)?;
    let n = machines.len();
    let mut c = lab.server.command("dnsmasq");
    c.args(["--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--dhcp-authoritative", "--no-ping"])
        .arg(format!("--interface={}", lab.server_if))
        .args(["--dhcp-range=10.77.0.0,static,255.255.0.0,1h", "--dhcp-option=3,10.77.0.1"])
        .arg(format!("--dhcp-hostsfile={}", dir.join("dnsmasq.hosts").display()))
        .arg(format!("--dhcp-lease-max={}", n * 2 + 1000))
        .arg(format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()))
        .args(["--dhcp-match=set:efi64,option:client-arch,7", "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:ipxe,175"])
        .arg(format!("--dhcp-boot=tag:ipxe,{SCRIPT_URL}"))
        .arg(format!("--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{SERVER_IP}"))
        .arg(format!("--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,{SERVER_IP}"))
        .arg("--dhcp-option=tag:ipxe,encap:175,176,1b")
        .arg("--enable-tftp")
        .arg(format!("--tftp-root={}", dir.join("tftp").display()))
        .arg(format!("--tftp-max={}", n + 100))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        // No log line per DHCP and TFTP event: what an operator sets for a storm.
        .args(["--quiet-dhcp", "--quiet-tftp", "--log-facility=-"]);
    quiet(&mut c).spawn().context("starting dnsmasq")
}

fn kea(lab: &Lab, dir: &Path, machines: &[Identity]) -> anyhow::Result<Child> {
    crate::peers::kea(lab, dir, kea_addresses(machines, false), kea_classes())
}

/// A reservation per machine, or (`pool`) the pool netboot-xdp's `--pool` runs use.
fn kea_addresses(machines: &[Identity], pool: bool) -> serde_json::Value {
    if pool {
        return serde_json::json!({ "pools": [{ "pool": "10.77.2.1 - 10.77.255.254" }] });
    }
    let reservations: Vec<serde_json::Value> =
        machines.iter().map(|m| serde_json::json!({ "hw-address": m.mac.to_string(), "ip-address": m.ip.to_string() })).collect();
    serde_json::json!({ "reservations": reservations })
}

/// The boot chain for Kea (PEERS.md): iPXE by option 77, then the firmware by option 93.
fn kea_classes() -> serde_json::Value {
    serde_json::json!({
        "option-def": [{ "name": "ipxe-encap", "code": 175, "type": "binary" }],
        "client-classes": [
            { "name": "ipxe", "test": "option[77].hex == 'iPXE'", "boot-file-name": SCRIPT_URL,
              "option-data": [{ "name": "ipxe-encap", "data": "B00101", "always-send": true }] },
            { "name": "efi64", "test": "not member('ipxe') and option[93].hex == 0x0007", "next-server": SERVER_IP, "boot-file-name": "ipxe.efi" },
            { "name": "bios", "test": "not member('ipxe') and option[93].hex == 0x0000", "next-server": SERVER_IP, "boot-file-name": "undionly.kpxe" }
        ]
    })
}

/// `--server kea+tftpd-hpa --servers N --store postgres`: N Kea servers sharing one PostgreSQL
/// lease database (Kea's shared-lease-database set-up: no HA hook, every server answers, the
/// database settles conflicts), the first on the lab's server end and the others on hosts of
/// their own, as netboot-xdp's members are placed. TFTP and HTTP (tftpd-hpa, nginx) run once,
/// on the lab's server end, which every Kea names: what is compared is DHCP on a shared store.
fn kea_cluster(lab: &Lab, dir: &Path, machines: &[Identity], args: &super::Args) -> anyhow::Result<Running> {
    let store = netboot_lab::postgres::Postgres::start(&lab.id)?;
    let mut extra = kea_classes();
    crate::peers::merge(&mut extra, crate::peers::kea_pg_database(&store)?);
    let mut children = vec![tftpd_hpa(lab, dir)?, http_server(lab, dir)?];
    let mut hosts = Vec::new();
    for i in 0..args.servers {
        let own = dir.join(format!("kea-{i}"));
        std::fs::create_dir_all(&own)?;
        let kea = if i == 0 {
            crate::peers::kea_on(&lab.server, &lab.server_if, &own, kea_addresses(machines, args.pool), extra.clone())?
        } else {
            let tag = crate::peers::host_tag(i);
            let host = lab.add_server(&format!("srv{i}"), tag, format!("{}/16", server_ip(i)).parse()?)?;
            netboot_lab::run_checked(host.ns.command("sysctl").args(["-qw", "net.core.rmem_default=16777216", "net.core.rmem_max=16777216"]))?;
            let k = crate::peers::kea_on(&host.ns, &host.iface, &own, kea_addresses(machines, args.pool), extra.clone())?;
            hosts.push(host);
            k
        };
        children.push(kea);
    }
    Ok(Running::PeerCluster { children, _hosts: hosts, _store: store })
}

fn tftpd_hpa(lab: &Lab, dir: &Path) -> anyhow::Result<Child> {
    let bin = peer_binary("tftpd-hpa", "usr/sbin/in.tftpd")?;
    let mut c = lab.server.command(&bin.to_string_lossy());
    c.args(["-L", "-s", "-u", "root", "-a", "10.77.0.1:69", "-B", "1468"]).arg(dir.join("tftp"));
    quiet(&mut c).spawn().context("in.tftpd")
}

/// The peers have no HTTP server of their own: nginx serves their (static) script and files,
/// as operators run it next to dnsmasq or Kea (it replaced Python's http.server in the bench:
/// no operator serves kernels with that).
fn http_server(lab: &Lab, dir: &Path) -> anyhow::Result<Child> {
    crate::peers::nginx(lab, dir, &dir.join("http"))
}
