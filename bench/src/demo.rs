//! `cargo xtask demo`: the product on the lab. Until the storm issue lands it shows the pieces
//! one by one: attach, real DHCP clients served by the agent (leases on disk), every request
//! classified and counted in the kernel, known machines answered by the XDP program, 1000
//! TFTP fetches of undionly.kpxe, and a per-node iPXE script over HTTP.

/// The shipped default template (docs/boot.ipxe.j2).
const DEFAULT_SCRIPT: &str = include_str!("../../docs/boot.ipxe.j2");

use netboot::lab::{Agent, Lab, LabSpec, clients};
use std::time::Instant;

pub fn run() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let lab = Lab::create(&LabSpec {
        server: "10.77.0.1/16".parse()?,
        client: Some("10.77.0.2/16".parse()?),
    })?;
    println!("lab {}: {} ({}) <-> {} ({})", lab.id, lab.server_if, lab.server.name(), lab.client_if, lab.client.name());

    let dir = std::env::temp_dir().join(format!("netboot-demo-{}", lab.id));
    std::fs::create_dir_all(&dir)?;
    // Boot files: the real undionly.kpxe where the ipxe package has it; the default script.
    let (tftp_root, http_root) = (dir.join("tftp"), dir.join("http"));
    std::fs::create_dir_all(&tftp_root)?;
    std::fs::create_dir_all(&http_root)?;
    let undionly = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap_or_else(|_| netboot::lab::pattern(74_213, 7));
    std::fs::write(tftp_root.join("undionly.kpxe"), &undionly)?;
    std::fs::write(http_root.join("boot.ipxe.j2"), DEFAULT_SCRIPT)?;
    let config = dir.join("netboot.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.9.254\"]\nrouter = \"10.77.0.1\"\n\n[[dhcp.host]]\nmac = \"52:54:00:00:00:07\"\nip = \"10.77.0.7\"\nhostname = \"node-007\"\nvars = {{ rack = \"r1\" }}\n\n[tftp]\nroot = \"{}\"\nengine = \"socket\"\n\n[http]\nroot = \"{}\"\n",
            dir.join("state").display(),
            tftp_root.display(),
            http_root.display()
        ),
    )?;
    let bin = crate::bin_dir().join("netboot-xdp");
    let agent = Agent::start(&lab, &bin, &config, &[])?;
    let status = agent.status()?;
    println!("netboot-xdp attached to {} in {} mode", lab.server_if, status["xdp_mode"].as_str().unwrap_or("?"));

    println!("\nclients in {}:", lab.client.name());
    let run = |what: &str, r: std::io::Result<std::process::Output>| match r {
        Ok(_) => println!("  {what}: sent"),
        Err(e) => println!("  {what}: could not run ({e})"),
    };
    run("udhcpc", clients::udhcpc(&lab, 2));
    run("dhclient", clients::dhclient(&lab));
    let perf = |r: std::io::Result<std::process::Output>| {
        r.map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let pick = |k: &str| text.lines().filter(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string()).collect::<Vec<_>>().join("/");
            println!("    perfdhcp: sent {} received {} (DISCOVER-OFFER/REQUEST-ACK)", pick("sent packets:"), pick("received packets:"));
            o
        })
    };
    run("perfdhcp, 500 clients, full DORA through a relay", perf(clients::perfdhcp(&lab, 500, 250, &[])));
    run("perfdhcp as iPXE (-o 77,69505845), the same 500", perf(clients::perfdhcp(&lab, 500, 250, &["-o", "77,69505845"])));
    // A small storm of PXE ROMs: first as new machines (the agent answers), then again (their
    // leases are on disk: the XDP program answers).
    let storm = crate::dhcpgen::Config {
        clients: 1000,
        base: 0x10000,
        persona: crate::dhcpgen::Persona::Pxe,
        window: 256,
        retry: std::time::Duration::from_secs(1),
        deadline: std::time::Duration::from_secs(30),
    };
    for pass in ["new machines, agent", "same machines again, XDP fast path"] {
        let r = crate::dhcpgen::run(&lab, &storm)?;
        println!(
            "  1000 PXE ROMs ({pass}): {} leased in {:.3} s, {:.0} DORA/s, p99 {:.1} ms",
            r.leased,
            r.wall.as_secs_f64(),
            r.rate(),
            r.pct(0.99).as_secs_f64() * 1e3
        );
    }
    // TFTP: 1000 machines fetch undionly.kpxe at once (blksize 1432, as iPXE asks).
    let req = netboot::tftp::client::Request { file: "undionly.kpxe".into(), blksize: Some(1432), windowsize: None, tsize: true };
    let t = Instant::now();
    let got = netboot::lab::tftp_fetch::fetch_many(&lab, "10.77.0.1:69".parse()?, &req, 1000, std::time::Duration::from_secs(10))?;
    let ok = got.iter().filter(|f| f.data == undionly).count();
    println!("  TFTP: {ok} of 1000 machines got undionly.kpxe ({} bytes, byte-exact) in {:.2} s", undionly.len(), t.elapsed().as_secs_f64());
    // HTTP: the per-node iPXE script of a known machine.
    let script = lab
        .client
        .command("curl")
        .args(["-s", "--max-time", "5", "http://10.77.0.1:8080/boot.ipxe?mac=52:54:00:00:00:07"])
        .output()?;
    println!("  HTTP: GET /boot.ipxe?mac=52:54:00:00:00:07 ->");
    for line in String::from_utf8_lossy(&script.stdout).lines().filter(|l| !l.trim().is_empty()).take(6) {
        println!("    {line}");
    }
    let leases = std::process::Command::new(&bin).args(["leases", "-c"]).arg(&config).output()?;
    let rows: Vec<String> = String::from_utf8_lossy(&leases.stdout).lines().map(str::to_string).collect();
    println!("\nleases on disk (netboot-xdp leases): {} rows; the first ones:", rows.len().saturating_sub(1));
    for r in rows.iter().take(4) {
        println!("  {r}");
    }

    println!("\nin-kernel classification (netboot-xdp status {}):", lab.server_if);
    let out = std::process::Command::new(&bin).args(["status", &lab.server_if]).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        if !line.trim_end().ends_with(" 0") {
            println!("{line}");
        }
    }
    println!("\n(counters at zero are not shown; the whole-chain boot storm and QEMU machines arrive with the next issues)");
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("lab {} removed; demo took {:.1} s", lab.id, t0.elapsed().as_secs_f64());
    Ok(())
}
