//! `cargo xtask demo`: the product on the lab. Until the TFTP, HTTP and storm issues land it
//! shows what is there: attach, real DHCP clients served by the agent (leases on disk), every
//! request classified and counted in the kernel, and known machines answered by the XDP
//! program.

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
    let config = dir.join("netboot.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\naddress = \"10.77.0.1\"\nstate_dir = \"{}\"\n\n[dhcp]\nsubnet = \"10.77.0.0/16\"\npools = [\"10.77.1.1-10.77.9.254\"]\nrouter = \"10.77.0.1\"\n",
            dir.join("state").display()
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
    println!("\n(counters at zero are not shown; TFTP, HTTP and the whole-chain boot storm arrive with the next issues)");
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("lab {} removed; demo took {:.1} s", lab.id, t0.elapsed().as_secs_f64());
    Ok(())
}
