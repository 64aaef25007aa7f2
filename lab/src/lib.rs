//! The lab: a server namespace and a client namespace joined by a veth pair, for the demo, the
//! tests and the bench (DESIGN.md §6).
//!
//! Every lab has a unique id; its namespaces are `nbx-<id>-srv` / `nbx-<id>-cli` (and
//! `nbx-<id>-<segment>` for extra hosts). The server end of the veth pair is `nbx<id>s`; its
//! other end `nbx<id>x` is a port of the bridge `nbx<id>c` in the client namespace, the
//! interface clients use. More hosts (a peer DHCP server, QEMU taps) join that bridge, as
//! machines join a boot network's switch. A payload storm's TCP may take a link of its own,
//! `nbx<id>T` to `nbx<id>t` ([`Lab::add_tcp_path`]); no segment uses the tag `t`.
//!
//! A lab removes exactly what it created: on drop, and on SIGINT/SIGTERM/SIGHUP through a
//! process-wide handler. The client end of the veth gets what native XDP on the server end
//! needs: an XDP_PASS program (TOOLCHAIN.md P3) and TX checksum offload off (P4).

mod agent;
pub mod clients;
pub mod pki;
pub mod postgres;
mod netns;
pub mod tftp_fetch;
pub mod vm;

pub use agent::Agent;
pub use netns::{NetNs, run_checked};

use netboot::fastpath::OBJECT;
use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, Once};

/// Addresses of a new lab.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Address and prefix of the server end, e.g. `10.77.0.1/16`.
    pub server: Ipv4Net,
    /// Address of the client end; `None` leaves it unconfigured, as a booting machine is.
    pub client: Option<Ipv4Net>,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec { server: "10.77.0.1/16".parse().expect("literal"), client: None }
    }
}

#[derive(Debug)]
pub struct Lab {
    pub id: String,
    pub server: NetNs,
    pub client: NetNs,
    pub server_if: String,
    /// The bridge in the client namespace: the clients' interface.
    pub client_if: String,
    /// The veth end in the client namespace, a port of `client_if`.
    pub link_if: String,
    pub server_addr: Ipv4Net,
    /// false after [`Lab::keep`]: the lab outlives this process (`xtask lab up`).
    owned: bool,
    /// The share of frames the client end loses ([`Lab::set_loss`]), in 1/65536: the load
    /// generators' program ([`Lab::client_xsk`]) loses them too.
    loss_share: std::sync::atomic::AtomicU32,
}

/// The routing table of [`Lab::add_tcp_path`] in the lab's namespaces.
const TCP_PATH_TABLE: &str = "77";

/// Ids of the labs this process owns, for the signal handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SIGNALS: Once = Once::new();

impl Lab {
    /// Creates a lab with a fresh id.
    pub fn create(spec: &LabSpec) -> anyhow::Result<Lab> {
        Lab::create_named(&new_id(), spec)
    }

    /// Creates a lab with the given id (6 to 8 characters of `[a-z0-9]`).
    pub fn create_named(id: &str, spec: &LabSpec) -> anyhow::Result<Lab> {
        if id.is_empty() || id.len() > 8 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            bail!("invalid lab id {id:?}: use 1 to 8 characters of a-z, 0-9");
        }
        install_signal_teardown();
        LIVE.lock().unwrap().push(id.to_string());
        // From here on, Drop removes whatever part was created.
        let lab = Lab {
            id: id.to_string(),
            server: NetNs::named(&format!("nbx-{id}-srv")),
            client: NetNs::named(&format!("nbx-{id}-cli")),
            server_if: format!("nbx{id}s"),
            client_if: format!("nbx{id}c"),
            link_if: format!("nbx{id}x"),
            server_addr: spec.server,
            owned: true,
            loss_share: Default::default(),
        };
        lab.build(spec).with_context(|| format!("creating lab {id}"))?;
        Ok(lab)
    }

    fn build(&self, spec: &LabSpec) -> anyhow::Result<()> {
        self.server.add()?;
        self.client.add()?;
        // A queue per CPU on both ends, as a multi-queue NIC has: XDP and AF_XDP run per queue,
        // and a veth hands a frame to the peer's queue of the sending CPU.
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).to_string();
        run_checked(Command::new("ip").args([
            "link", "add", &self.server_if, "netns", self.server.name(), "numtxqueues", &queues, "numrxqueues", &queues,
            "type", "veth", "peer", "name", &self.link_if, "netns", self.client.name(), "numtxqueues", &queues, "numrxqueues", &queues,
        ]))?;
        // A fixed bridge MAC: a bridge otherwise takes its lowest port MAC, which changes as
        // segments join.
        let mac = lab_mac(&self.id, 0);
        run_checked(self.client.command("ip").args([
            "link", "add", &self.client_if, "address", &mac, "type", "bridge", "forward_delay", "0",
        ]))?;
        run_checked(self.client.command("ip").args(["link", "set", &self.link_if, "master", &self.client_if]))?;
        for (ns, dev, addr) in [
            (&self.server, &self.server_if, Some(spec.server)),
            (&self.client, &self.client_if, spec.client),
        ] {
            run_checked(ns.command("ip").args(["link", "set", "lo", "up"]))?;
            // IPv6 link-local addresses usable at once (lab addresses are unique): no second of
            // duplicate address detection before router solicitations and advertisements work.
            run_checked(ns.command("sysctl").args(["-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")]))?;
            if let Some(a) = addr {
                run_checked(ns.command("ip").args(["addr", "add", &a.to_string(), "dev", dev]))?;
            }
            run_checked(ns.command("ip").args(["link", "set", dev, "up"]))?;
        }
        run_checked(self.client.command("ip").args(["link", "set", &self.link_if, "up"]))?;
        // P4: frames leaving towards the server must carry final checksums, or native-XDP and
        // AF_XDP replies built from them are dropped as UdpInCsumErrors.
        run_checked(self.client.command("ethtool").args(["-K", &self.link_if, "tx", "off"]))?;
        self.attach_peer_pass(&self.link_if, "peer_pass")?;
        self.wait_forwarding(&self.link_if)
    }

    /// Turns TX checksum offload of the client end on or off. Off (the default, P4) makes the
    /// kernel finish every checksum before a frame crosses to the server; on, frames arrive
    /// as a local VM or container sends them: CHECKSUM_PARTIAL, the pseudo-header sum in the
    /// UDP checksum field.
    pub fn set_tx_offload(&self, on: bool) -> anyhow::Result<()> {
        run_checked(self.client.command("ethtool").args(["-K", &self.link_if, "tx", if on { "on" } else { "off" }]))?;
        Ok(())
    }

    /// Waits (at most 10 s) until `port` forwards on the client bridge and both ends are up:
    /// the kernel enables a new veth port about a second after link-up, and frames sent before
    /// that are lost.
    fn wait_forwarding(&self, port: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let port_ok = run_checked(self.client.command("bridge").args(["link", "show", "dev", port]))
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("state forwarding"));
            let up = |ns: &NetNs, dev: &str| {
                run_checked(ns.command("ip").args(["-o", "link", "show", "dev", dev]))
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("state UP"))
            };
            if port_ok && up(&self.client, &self.client_if) && up(&self.server, &self.server_if) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("lab {}: {port} did not start forwarding within 10 s", self.id);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Adds a host `nbx-<id>-<name>` on the client bridge, with `addr` on its interface
    /// `nbx<id><tag>` (`tag`: one character, unique per segment). Removed with the lab.
    pub fn add_segment(&self, name: &str, tag: char, addr: Option<Ipv4Net>) -> anyhow::Result<Segment> {
        let ns = NetNs::named(&format!("nbx-{}-{name}", self.id));
        let dev = format!("nbx{}{tag}", self.id);
        let port = self.segment_port(tag);
        ns.add()?;
        run_checked(Command::new("ip").args([
            "link", "add", &dev, "netns", ns.name(), "type", "veth", "peer", "name", &port, "netns", self.client.name(),
        ]))?;
        run_checked(self.client.command("ip").args(["link", "set", &port, "master", &self.client_if]))?;
        run_checked(self.client.command("ip").args(["link", "set", &port, "up"]))?;
        run_checked(ns.command("ip").args(["link", "set", "lo", "up"]))?;
        if let Some(a) = addr {
            run_checked(ns.command("ip").args(["addr", "add", &a.to_string(), "dev", &dev]))?;
        }
        run_checked(ns.command("ip").args(["link", "set", &dev, "up"]))?;
        run_checked(ns.command("ethtool").args(["-K", &dev, "tx", "off"]))?;
        self.wait_forwarding(&port)?;
        Ok(Segment { ns, iface: dev, tag })
    }

    /// The client bridge's port to the segment with tag `tag`.
    fn segment_port(&self, tag: char) -> String {
        format!("nbx{}{}", self.id, tag.to_ascii_uppercase())
    }

    /// Adds a second boot server on the client bridge: a segment (see [`Lab::add_segment`])
    /// whose bridge port carries the pass-through program, so that an agent attached in native
    /// mode there is heard (P3), as on the lab's own server end.
    pub fn add_server(&self, name: &str, tag: char, addr: Ipv4Net) -> anyhow::Result<Segment> {
        let seg = self.add_segment(name, tag, Some(addr))?;
        let port = self.segment_port(tag);
        self.attach_peer_pass(&port, &format!("peer_pass_{tag}"))?;
        Ok(seg)
    }

    /// A second link between the client and server namespaces, `nbx<id>T` to `nbx<id>t`, with
    /// no XDP program on either end, that carries the TCP between the client end's address
    /// (`client`) and the server's (policy routes on `ipproto tcp`; DHCP, TFTP and every
    /// other protocol stay on the lab's link). For storms that move a payload: the load
    /// generator's program on the client end is the instrument's, not a booting machine's, and
    /// with it veth hands each TCP segment to it separately through a 256-frame ring that
    /// drops under bulk TCP (no GRO), which no NIC does. Removed with the namespaces.
    pub fn add_tcp_path(&self, client: Ipv4Addr) -> anyhow::Result<()> {
        let (cli_dev, srv_dev) = (format!("nbx{}T", self.id), format!("nbx{}t", self.id));
        run_checked(Command::new("ip").args([
            "link", "add", &cli_dev, "netns", self.client.name(), "type", "veth", "peer", "name", &srv_dev, "netns", self.server.name(),
        ]))?;
        let server = self.server_ip();
        for (ns, dev, to, from) in [(&self.client, &cli_dev, server, client), (&self.server, &srv_dev, client, server)] {
            // The replies come in on a link whose routes do not lead back to their source
            // outside this rule: no reverse-path filter on it.
            for key in ["all", dev.as_str()] {
                run_checked(ns.command("sysctl").args(["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")]))?;
            }
            run_checked(ns.command("ip").args(["link", "set", dev, "up"]))?;
            run_checked(ns.command("ip").args(["route", "add", &format!("{to}/32"), "dev", dev, "src", &from.to_string(), "table", TCP_PATH_TABLE]))?;
            run_checked(ns.command("ip").args(["rule", "add", "ipproto", "tcp", "to", &format!("{to}/32"), "lookup", TCP_PATH_TABLE, "pref", "100"]))?;
        }
        Ok(())
    }

    /// TCP congestion control `cc` in the lab's two namespaces (each has its own
    /// `net.ipv4.tcp_congestion_control`; new ones take the machine's).
    pub fn set_congestion(&self, cc: &str) -> anyhow::Result<()> {
        for ns in [&self.server, &self.client] {
            run_checked(ns.command("sysctl").args(["-qw", &format!("net.ipv4.tcp_congestion_control={cc}")]))?;
        }
        Ok(())
    }

    /// Detaches the pass-through program of the client end (unpins its link). Only for runs
    /// that need no XDP_TX towards the clients (HTTP alone): an XDP program on a veth makes the
    /// kernel hand it every segment separately (no GRO, a 256-frame ring that drops under bulk
    /// TCP), which is not what a NIC does to a TCP stream.
    pub fn remove_peer_pass(&self) -> anyhow::Result<()> {
        let pin = self.pin_dir().join("peer_pass");
        std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        Ok(())
    }

    /// P3: native XDP_TX on a server end is only delivered if the receiving end (`dev`, in the
    /// client namespace) has an XDP program. The link is pinned as `pin` so it outlives this
    /// process for kept labs.
    fn attach_peer_pass(&self, dev: &str, pin: &str) -> anyhow::Result<()> {
        use aya::programs::{Xdp, XdpMode, links::FdLink};
        let dir = self.pin_dir();
        netboot::fastpath::pins::ensure_bpffs()?;
        std::fs::create_dir_all(&dir)?;
        let mut ebpf = aya::EbpfLoader::new().load(OBJECT)?;
        let prog: &mut Xdp = ebpf
            .program_mut(netboot_common::PASS_PROGRAM_NAME)
            .context("object has no xdp_pass program")?
            .try_into()?;
        prog.load()?;
        let dev = dev.to_string();
        let link_id = self.client.run(|| prog.attach(&dev, XdpMode::Driver))??;
        let link = prog.take_link(link_id)?;
        let fd_link = FdLink::try_from(link).context("peer XDP link is not a bpf_link")?;
        fd_link.pin(dir.join(pin)).context("pinning the peer XDP link")?;
        Ok(())
    }

    /// Makes the link lose `percent` of the frames the server sends to the clients (an XDP
    /// program on the client end replaces the pass-through one inside the pinned link).
    /// `tc netem` needs a kernel module this machine kind does not have.
    pub fn set_loss(&self, percent: f64) -> anyhow::Result<()> {
        let share = ((percent / 100.0) * 65536.0).round().clamp(0.0, 65536.0) as u32;
        self.loss_share.store(share, std::sync::atomic::Ordering::Relaxed);
        let ebpf = self.replace_client_program(netboot_common::LAB_LOSS_PROGRAM_NAME, |ebpf| {
            let mut map: aya::maps::Array<_, u32> =
                aya::maps::Array::try_from(ebpf.map_mut(netboot_common::LAB_LOSS_MAP).context("no LAB_LOSS map")?)?;
            Ok(map.set(0, share, 0)?)
        })?;
        // The link keeps the program; the map lives as long as the program references it.
        std::mem::forget(ebpf);
        Ok(())
    }

    /// AF_XDP sockets on the client end, one per RX queue, for a load generator: IPv4/UDP
    /// frames to a port in `ports` that arrive there (the servers' replies) go to them instead
    /// of the bridge. The pass-through program comes back when the value is dropped.
    pub fn client_xsk(&self, ports: std::ops::RangeInclusive<u16>, sizes: netboot::xsk::XskSizes) -> anyhow::Result<ClientXsk> {
        self.client_xsk_on(&self.link_if.clone(), "peer_pass", ports, sizes)
    }

    /// As [`Lab::client_xsk`], on the client end's link to the server host of
    /// [`Lab::add_server`] with tag `tag` (its frames reach that host only).
    pub fn server_host_xsk(&self, tag: char, ports: std::ops::RangeInclusive<u16>, sizes: netboot::xsk::XskSizes) -> anyhow::Result<ClientXsk> {
        self.client_xsk_on(&self.segment_port(tag), &format!("peer_pass_{tag}"), ports, sizes)
    }

    /// AF_XDP sockets on `dev`, a link of the client end whose program is pinned as `pin`.
    fn client_xsk_on(&self, dev: &str, pin: &str, ports: std::ops::RangeInclusive<u16>, sizes: netboot::xsk::XskSizes) -> anyhow::Result<ClientXsk> {
        let dev = dev.to_string();
        let queues = self.client.run(|| netboot::iface::rx_queues(&dev))?;
        let open = |q| -> anyhow::Result<netboot::xsk::Xsk> {
            // A closed socket's queue stays busy until the kernel has freed the last frame it
            // sent; wait (bounded) for a previous generator's sockets to let go.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match self.client.run(|| netboot::xsk::Xsk::open(&dev, q, sizes))? {
                    Err(e) if format!("{e:#}").contains("busy") && std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    r => return r,
                }
            }
        };
        let socks = (0..queues).map(open).collect::<anyhow::Result<Vec<_>>>()?;
        let ebpf = replace_client_program(&self.pin_dir().join(pin), netboot_common::LAB_CLIENT_PROGRAM_NAME, |ebpf| {
            let mut xsks = aya::maps::XskMap::try_from(ebpf.map_mut(netboot_common::LAB_CLIENT_XSKS_MAP).context("no client XSKMAP")?)?;
            for (q, x) in socks.iter().enumerate() {
                xsks.set(q as u32, x.raw_fd(), 0)?;
            }
            let mut range: aya::maps::Array<_, [u16; 2]> =
                aya::maps::Array::try_from(ebpf.map_mut(netboot_common::LAB_CLIENT_PORTS_MAP).context("no client ports map")?)?;
            range.set(0, [*ports.start(), *ports.end()], 0)?;
            let mut loss: aya::maps::Array<_, u32> =
                aya::maps::Array::try_from(ebpf.map_mut(netboot_common::LAB_LOSS_MAP).context("no LAB_LOSS map")?)?;
            Ok(loss.set(0, self.loss_share.load(std::sync::atomic::Ordering::Relaxed), 0)?)
        })?;
        Ok(ClientXsk { socks, _ebpf: ebpf, link_pin: self.pin_dir().join(pin) })
    }

    /// Loads `program` (after `setup` has filled its maps) and puts it in place of the client
    /// end's program, inside the pinned link.
    fn replace_client_program(&self, program: &str, setup: impl FnOnce(&mut aya::Ebpf) -> anyhow::Result<()>) -> anyhow::Result<aya::Ebpf> {
        replace_client_program(&self.pin_dir().join("peer_pass"), program, setup)
    }

    /// A directory for this lab's files (configs, state, roots, logs of peers), named
    /// `netboot-<what>-<lab id>` under the system's temporary directory, empty, removed when
    /// dropped.
    pub fn scratch_dir(&self, what: &str) -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("netboot-{what}-{}", self.id));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    fn pin_dir(&self) -> PathBuf {
        lab_pin_dir(&self.id)
    }

    /// The server end's address.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.server_addr.addr()
    }

    /// Leaves the lab in place when this value is dropped (for `xtask lab up`).
    pub fn keep(mut self) {
        self.owned = false;
        LIVE.lock().unwrap().retain(|i| *i != self.id);
    }

    /// Removes the lab `id`: its namespaces (which takes the veth pairs along) and its pins.
    pub fn destroy(id: &str) -> anyhow::Result<()> {
        let mut first_err = None;
        let prefix = format!("nbx-{id}-");
        let mut names: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(&prefix)).collect())
            .unwrap_or_default();
        names.sort();
        // Processes left in the lab's namespaces (servers under test, clients) were started
        // for it: SIGTERM (an agent detaches and removes its pins), then SIGKILL after 2 s.
        let pids = |ns: &str| -> Vec<i32> {
            let out = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
            let me = std::process::id() as i32;
            String::from_utf8_lossy(&out).split_whitespace().filter_map(|p| p.parse().ok()).filter(|p| *p != me).collect()
        };
        let mut left: Vec<i32> = names.iter().flat_map(|n| pids(n)).collect();
        if !left.is_empty() {
            left.iter().for_each(|p| unsafe { libc::kill(*p, libc::SIGTERM); });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !left.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
                left.retain(|p| unsafe { libc::kill(*p, 0) } == 0);
            }
            left.iter().for_each(|p| unsafe { libc::kill(*p, libc::SIGKILL); });
        }
        for ns in names {
            if let Err(e) = NetNs::named(&ns).delete() {
                first_err.get_or_insert(e);
            }
        }
        // Pins an agent of this lab could not remove (it was killed with -9 on purpose: its pins
        // outlive it, invariant 4), on interfaces that are gone with the namespaces.
        let ours = format!("nbx{id}");
        for iface in netboot::fastpath::pins::pinned_ifaces().into_iter().filter(|i| i.starts_with(&ours)) {
            if let Err(e) = netboot::fastpath::pins::remove_iface_dir(&iface) {
                first_err.get_or_insert(anyhow::anyhow!("pins of {iface}: {e}"));
            }
        }
        let dir = lab_pin_dir(id);
        if dir.exists() {
            for e in std::fs::read_dir(&dir)?.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            let _ = std::fs::remove_dir(&dir);
        }
        LIVE.lock().unwrap().retain(|i| i != id);
        first_err.map_or(Ok(()), Err)
    }

    /// Ids of the labs present on this machine (namespaces named `nbx-<id>-srv`).
    pub fn list() -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.filter_map(|e| {
                    let n = e.ok()?.file_name().into_string().ok()?;
                    Some(n.strip_prefix("nbx-")?.strip_suffix("-srv")?.to_string())
                })
                .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned && let Err(e) = Lab::destroy(&self.id) {
            eprintln!("lab {}: teardown: {e:#}", self.id);
        }
    }
}

/// Loads `program` and puts it in place of the one in the pinned link `link_pin`.
fn replace_client_program(link_pin: &std::path::Path, program: &str, setup: impl FnOnce(&mut aya::Ebpf) -> anyhow::Result<()>) -> anyhow::Result<aya::Ebpf> {
    use aya::programs::{Xdp, links::{FdLink, PinnedLink}, xdp::XdpLink};
    let mut ebpf = aya::EbpfLoader::new().load(OBJECT)?;
    setup(&mut ebpf)?;
    let prog: &mut Xdp = ebpf.program_mut(program).with_context(|| format!("no {program} program"))?.try_into()?;
    prog.load()?;
    let pinned = PinnedLink::from_pin(link_pin).with_context(|| format!("the lab's link pin {}", link_pin.display()))?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    prog.attach_to_link(link)?;
    Ok(ebpf)
}

/// The bench's AF_XDP sockets on the lab's client end ([`Lab::client_xsk`]), by RX queue.
pub struct ClientXsk {
    pub socks: Vec<netboot::xsk::Xsk>,
    /// Holds the maps the program uses.
    _ebpf: aya::Ebpf,
    /// The link whose pass-through program comes back on drop.
    link_pin: PathBuf,
}

impl Drop for ClientXsk {
    fn drop(&mut self) {
        if let Err(e) = replace_client_program(&self.link_pin, netboot_common::PASS_PROGRAM_NAME, |_| Ok(())) {
            tracing::warn!("restoring the lab's pass-through program: {e:#}");
        }
    }
}

/// A lab's directory of files ([`Lab::scratch_dir`]); removed with everything in it when dropped.
pub struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A host added to the client bridge by [`Lab::add_segment`].
#[derive(Debug)]
pub struct Segment {
    pub ns: NetNs,
    pub iface: String,
    /// Its tag (see [`Lab::add_segment`]).
    pub tag: char,
}

/// A locally administered MAC derived from the lab id.
fn lab_mac(id: &str, n: u8) -> String {
    let h = id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let b = h.to_be_bytes();
    format!("02:6e:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], n)
}

fn lab_pin_dir(id: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/netboot-lab").join(id)
}

/// Deterministic test bytes with no short period (xorshift), for files the lab serves and
/// checks byte for byte.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A short id unique among concurrent runs: pid, time and a counter, base 36.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let mut x = (u64::from(std::process::id()) << 20) ^ u64::from(nanos) ^ (u64::from(SEQ.fetch_add(1, Ordering::Relaxed)) << 40);
    let mut s = String::new();
    for _ in 0..7 {
        let d = (x % 36) as u32;
        s.push(char::from_digit(d, 36).expect("digit < 36"));
        x /= 36;
    }
    s
}

/// On SIGINT, SIGTERM or SIGHUP: remove every lab this process owns, then exit.
fn install_signal_teardown() {
    SIGNALS.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            eprintln!("lab: cannot install signal handlers; labs are removed on drop only");
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let ids: Vec<String> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
                for id in ids {
                    let _ = Lab::destroy(&id);
                }
                std::process::exit(128 + sig);
            }
        });
    });
}
