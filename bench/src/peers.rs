//! Servers under test, as the bench runs them: netboot-xdp through its CLI, peers as child
//! processes in the lab's server namespace; and the peers' binaries.

use anyhow::{Context, bail};
use netboot_lab::{Agent, Lab};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running server (one or more processes); stopped on drop.
pub enum Running {
    Agent(Agent),
    Children(Vec<Child>),
    /// netboot-xdp for DHCP and TFTP, other processes (nginx) for HTTP.
    AgentWith(Agent, Vec<Child>),
    /// netboot-xdp servers sharing one PostgreSQL (dropped after them), each on a host of
    /// the lab's segment (the first on the lab's server end); the hosts and the store are held
    /// for the run.
    Cluster { agents: Vec<Agent>, _hosts: Vec<netboot_lab::Segment>, _store: netboot_lab::postgres::Postgres },
    /// Peer processes (several Kea servers and what serves their files) sharing one
    /// PostgreSQL, on hosts of the segment; stopped before the hosts and the store go.
    PeerCluster { children: Vec<Child>, _hosts: Vec<netboot_lab::Segment>, _store: netboot_lab::postgres::Postgres },
}

impl Running {
    /// The processes whose CPU is the server's.
    pub fn pids(&self) -> Vec<u32> {
        let agents = self.agents().iter().filter_map(|a| a.status().ok()?["agent_pid"].as_u64()).map(|p| p as u32);
        // A living child's CPU is its own; a reaped one's is in its parent's (cpu_of).
        let children = self.children().iter().flat_map(|c| crate::proc::with_descendants(c.id()));
        agents.chain(children).collect()
    }

    /// The netboot-xdp agents.
    pub fn agents(&self) -> &[Agent] {
        match self {
            Running::Agent(a) | Running::AgentWith(a, _) => std::slice::from_ref(a),
            Running::Cluster { agents, .. } => agents,
            Running::Children(_) | Running::PeerCluster { .. } => &[],
        }
    }

    /// The servers on hosts of their own on the segment (a cluster's members beyond the lab's
    /// server end), for clients that build frames.
    pub fn server_hosts(&self) -> anyhow::Result<Vec<crate::tftp_xsk::ServerHost>> {
        let hosts = match self {
            Running::Cluster { _hosts: h, .. } | Running::PeerCluster { _hosts: h, .. } => h.as_slice(),
            _ => &[],
        };
        let mut ends = Vec::new();
        for h in hosts {
            let name = h.iface.clone();
            let itf = h.ns.run(move || netboot::iface::Interface::lookup(&name))??;
            let ip = itf.ipv4.first().map(|n| n.addr()).with_context(|| format!("{} has no address", h.iface))?;
            ends.push(crate::tftp_xsk::ServerHost { tag: h.tag, ip, mac: itf.mac });
        }
        Ok(ends)
    }

    fn children(&self) -> &[Child] {
        match self {
            Running::Children(c) | Running::AgentWith(_, c) | Running::PeerCluster { children: c, .. } => c,
            _ => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Child] {
        match self {
            Running::Children(c) | Running::AgentWith(_, c) | Running::PeerCluster { children: c, .. } => c,
            _ => &mut [],
        }
    }

    /// Fails if a server process has already exited: at start, a peer that rejected its
    /// config; after a run (`when` says which), a server that died during it.
    pub fn check_alive(&mut self, what: &str, when: &str) -> anyhow::Result<()> {
        for c in self.children_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("{what}: a server process exited {when} ({st})");
            }
        }
        for a in self.agents_mut() {
            if let Some(st) = a.died() {
                bail!("{what}: the netboot-xdp agent on {} exited {when} ({st})", a.iface);
            }
        }
        Ok(())
    }

    fn agents_mut(&mut self) -> &mut [Agent] {
        match self {
            Running::Agent(a) | Running::AgentWith(a, _) => std::slice::from_mut(a),
            Running::Cluster { agents, .. } => agents,
            Running::Children(_) | Running::PeerCluster { .. } => &mut [],
        }
    }

    /// CPU of all its processes so far.
    pub fn cpu(&self) -> std::time::Duration {
        self.pids().into_iter().map(crate::proc::cpu_of).sum()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in self.children_mut() {
            // The whole group (tftpd-hpa forks a child per transfer, nginx its workers):
            // SIGTERM first, so that a master reaps its workers (no zombies), then SIGKILL.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tag of the lab host ([`netboot_lab::Lab::add_server`]) of a cluster's server `i` (1, 2,
/// ...; 0 is the lab's own server end).
pub fn host_tag(i: u32) -> char {
    (b'k' + i as u8) as char
}

/// Makes `cmd` the leader of a new process group, so that [`Running`] can stop it with every
/// process it forks.
pub fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// A peer's binary from its Debian package, unpacked under target/peers (downloaded once):
/// tftpd-hpa and atftpd conflict as installed packages (PEERS.md).
pub fn peer_binary(package: &str, path: &str) -> anyhow::Result<PathBuf> {
    // One tree per package: atftpd also ships a /usr/sbin/in.tftpd.
    let base = crate::bin_dir().join("../peers");
    let tree = base.join(package);
    let bin = tree.join(path);
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&base)?;
    let st = Command::new("apt-get").arg("download").arg(package).current_dir(&base).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !st.success() {
        bail!("apt-get download {package} failed");
    }
    for e in std::fs::read_dir(&base)?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(package)) {
            Command::new("dpkg").arg("-x").arg(&p).arg(&tree).status()?;
        }
    }
    anyhow::ensure!(bin.exists(), "{} not in package {package}", bin.display());
    Ok(bin)
}

/// Kea 2.2's DHCPv4 server as the bench runs it (PEERS.md): memfile with `persist`, 2 threads,
/// raw sockets, the lab's /16 with the router; `subnet` keys are added to the subnet (pools,
/// reservations) and `extra` keys to `Dhcp4` (client classes, option definitions).
pub fn kea(lab: &Lab, dir: &Path, subnet: serde_json::Value, extra: serde_json::Value) -> anyhow::Result<Child> {
    kea_on(&lab.server, &lab.server_if, dir, subnet, extra)
}

/// [`kea`] on interface `iface` of namespace `ns` (a host of its own on the lab's segment), its
/// files (config, leases, log, pid and lock) under `dir`.
pub fn kea_on(ns: &netboot_lab::NetNs, iface: &str, dir: &Path, subnet: serde_json::Value, extra: serde_json::Value) -> anyhow::Result<Child> {
    let mut sub = serde_json::json!({ "id": 1, "subnet": "10.77.0.0/16", "option-data": [{ "name": "routers", "data": "10.77.0.1" }] });
    merge(&mut sub, subnet);
    let mut dhcp4 = serde_json::json!({
        "interfaces-config": { "interfaces": [iface], "dhcp-socket-type": "raw" },
        "lease-database": { "type": "memfile", "persist": true, "name": dir.join("kea-leases.csv") },
        "valid-lifetime": 3600,
        "multi-threading": { "enable-multi-threading": true, "thread-pool-size": 2, "packet-queue-size": 16384 },
        "subnet4": [sub],
        "loggers": [{ "name": "kea-dhcp4", "severity": "WARN", "output_options": [{ "output": dir.join("kea.log") }] }]
    });
    merge(&mut dhcp4, extra);
    let file = dir.join("kea.json");
    std::fs::write(&file, serde_json::to_string_pretty(&serde_json::json!({ "Dhcp4": dhcp4 }))?)?;
    own_group(ns.command("kea-dhcp4").arg("-c").arg(&file).env("KEA_PIDFILE_DIR", dir).env("KEA_LOCKFILE_DIR", dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kea-dhcp4 (Debian package kea-dhcp4-server)")
}

/// Kea's PostgreSQL lease backend on `pg`: a database `kea` with the schema `kea-admin db-init
/// pgsql` creates; the `lease-database` key for Kea's config (every Kea given it shares it).
pub fn kea_pg_database(pg: &netboot_lab::postgres::Postgres) -> anyhow::Result<serde_json::Value> {
    pg.create_db("kea")?;
    let out = Command::new("kea-admin")
        .args(["db-init", "pgsql", "-u", "netboot", "-n", "kea", "-h"])
        .arg(pg.socket_dir())
        .output()
        .context("kea-admin (Debian package kea-admin)")?;
    anyhow::ensure!(out.status.success(), "kea-admin db-init pgsql: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::json!({ "lease-database": { "type": "postgresql", "name": "kea", "user": "netboot", "host": pg.socket_dir() } }))
}

/// Adds `from`'s keys to the object `into`.
pub fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

/// nginx serving `root` on 10.77.0.1:8080 in the lab's server namespace, as an operator runs it
/// for payloads (PEERS.md): sendfile, tcp_nopush, keep-alive, a worker per core, no access log.
/// Its files (config, pid, logs, temp) go under `dir`; returns once it has written its pid.
pub fn nginx(lab: &Lab, dir: &Path, root: &Path) -> anyhow::Result<Child> {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes auto;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n  keepalive_requests 10000;\n\
             client_body_temp_path {d}/cb;\n  proxy_temp_path {d}/px;\n  fastcgi_temp_path {d}/fc;\n  uwsgi_temp_path {d}/uw;\n  scgi_temp_path {d}/sc;\n\
             server {{\n    listen 10.77.0.1:8080 backlog=65535;\n    root {r};\n  }}\n}}\n",
            d = dir.display(),
            r = root.display()
        ),
    )?;
    let child = own_group(lab.server.command("nginx").arg("-c").arg(&conf).arg("-p").arg(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (Debian package nginx)")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.join("nginx.pid").exists() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(child)
}
