use super::*;
use std::io::Write;

const FULL: &str = r#"
[server]
address = "10.0.0.1"
state_dir = "/var/lib/netboot-xdp"

[dhcp]
mode = "authoritative"
subnet = "10.0.0.0/16"
pools = ["10.0.1.1-10.0.9.254"]
lease_time = "1h"
ipv6_ra = true
router = "10.0.0.1"
dns = ["10.0.0.1"]
domain = "lab.example"

[[dhcp.host]]
mac = "52:54:00:00:00:01"
ip = "10.0.0.51"
hostname = "node-001"
vars = { rack = "r1" }

[boot]
bios = "undionly.kpxe"
uefi_x64 = "ipxe.efi"
uefi_arm64 = "ipxe-arm64.efi"
http_client = "http://{server}:8080/ipxe.efi"
ipxe_script = "http://{server}:8080/boot.ipxe"

[tftp]
root = "/srv/tftp"
max_blksize = 1468
max_windowsize = 32
engine = "afxdp"

[http]
listen = "0.0.0.0:8080"
root = "/srv/http"
script = "boot.ipxe.j2"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("netboot.toml"), text)
}

#[test]
fn the_design_example_parses_with_every_key() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.server.address, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
    assert_eq!(c.dhcp.subnet.as_ref().unwrap().get_ref().to_string(), "10.0.0.0/16");
    assert_eq!(c.dhcp.pools[0].get_ref().len(), 9 * 256 - 2);
    assert_eq!(c.dhcp.lease_time.0.as_secs(), 3600);
    assert!(c.dhcp.ipv6_ra);
    assert_eq!(c.dhcp.dns, vec![Ipv4Addr::new(10, 0, 0, 1)]);
    let h = c.dhcp.reservations().next().unwrap();
    assert_eq!(h.hostname.as_deref(), Some("node-001"));
    assert_eq!(h.vars["rack"], "r1");
    assert_eq!(c.tftp.engine, TftpEngine::Afxdp);
    assert_eq!(*c.tftp.max_blksize.get_ref(), 1468);
    assert_eq!(c.http.listen.port(), 8080);
    assert_eq!(Config::expand(&c.boot.ipxe_script, Ipv4Addr::new(10, 0, 0, 1)), "http://10.0.0.1:8080/boot.ipxe");
}

#[test]
fn defaults_fill_a_minimal_config() {
    let c = parse("[dhcp]\nsubnet = \"10.1.0.0/24\"\n").unwrap();
    assert_eq!(c.boot.bios, "undionly.kpxe");
    assert_eq!(c.tftp.engine, TftpEngine::Afxdp);
    assert_eq!(c.dhcp.lease_time.0.as_secs(), 3600);
    assert!(c.dhcp.ipv6_ra);
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_keys_are_errors_with_position() {
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\nleasetime = \"1h\"\n");
    assert!(e.starts_with("netboot.toml:3:1: unknown field `leasetime`"), "{e}");
    let e = err("[dhcpp]\n");
    assert!(e.starts_with("netboot.toml:1:2: unknown field `dhcpp`"), "{e}");
}

#[test]
fn bad_values_name_line_and_column() {
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\nlease_time = \"1 fortnight\"\n");
    assert!(e.starts_with("netboot.toml:3:14: invalid duration"), "{e}");
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\npools = [\"10.1.0.9-10.1.0.1\"]\n");
    assert!(e.starts_with("netboot.toml:3:11:") && e.contains("first address is after the last"), "{e}");
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\n[[dhcp.host]]\nmac = \"52:54:00:00:00\"\nip = \"10.1.0.5\"\n");
    assert!(e.starts_with("netboot.toml:4:7:") && e.contains("invalid MAC"), "{e}");
    let e = err("[tftp]\nengine = \"dpdk\"\n[dhcp]\nsubnet = \"10.1.0.0/24\"\n");
    assert!(e.starts_with("netboot.toml:2:10:"), "{e}");
    let e = err("[dhcp\n");
    assert!(e.starts_with("netboot.toml:1:"), "{e}");
}

#[test]
fn cross_field_rules_point_at_the_offending_value() {
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\npools = [\"10.2.0.1-10.2.0.9\"]\n");
    assert!(e.starts_with("netboot.toml:3:10:") && e.contains("not inside subnet"), "{e}");
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\npools = [\"10.1.0.1-10.1.0.9\", \"10.1.0.5-10.1.0.20\"]\n");
    assert!(e.contains("overlaps"), "{e}");
    let e = err("[dhcp]\nsubnet = \"10.1.0.1/24\"\n");
    assert!(e.contains("host bits"), "{e}");
    let e = err("[dhcp]\nmode = \"authoritative\"\n");
    assert!(e.contains("subnet is required"), "{e}");
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\n[tftp]\nmax_blksize = 100\n");
    assert!(e.starts_with("netboot.toml:4:15:"), "{e}");
    let two = "[dhcp]\nsubnet = \"10.1.0.0/24\"\n[[dhcp.host]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.1.0.5\"\n[[dhcp.host]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.1.0.6\"\n";
    let e = err(two);
    assert!(e.contains("reserved twice"), "{e}");
}

#[test]
fn proxy_mode_needs_no_subnet() {
    let c = parse("[dhcp]\nmode = \"proxy\"\n").unwrap();
    assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
}

#[test]
fn hosts_file_rows_load_and_errors_point_into_the_file() {
    let dir = crate::scratch::ScratchDir::new("cfg");
    let cfg = dir.join("netboot.toml");
    let hosts = dir.join("hosts.csv");
    let write = |p: &Path, s: &str| std::fs::File::create(p).unwrap().write_all(s.as_bytes()).unwrap();
    write(&cfg, "[dhcp]\nsubnet = \"10.1.0.0/16\"\nhosts_file = \"hosts.csv\"\n");

    write(&hosts, "mac,ip,hostname,vars\n# rack 1\n52:54:00:00:00:01,10.1.0.11,n1,rack=r1;role=worker\n52:54:00:00:00:02,10.1.0.12,n2\n");
    let c = Config::load(&cfg).unwrap();
    let all: Vec<_> = c.dhcp.reservations().collect();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].vars["role"], "worker");
    assert_eq!(all[1].hostname.as_deref(), Some("n2"));

    write(&hosts, "52:54:00:00:00:01,10.1.0.11,n1\n52:54:00:00:00:02, 10.1.0.x,n2\n");
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.ends_with("hosts.csv:2:20: invalid IPv4 address \"10.1.0.x\""), "{e}");

    write(&hosts, "52:54:00:00:00:01,10.1.0.11,n1\n52:54:00:00:00:01,10.1.0.12,n2\n");
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("hosts.csv:2:1: MAC 52:54:00:00:00:01 is reserved twice (first at"), "{e}");

    write(&hosts, "52:54:00:00:00:01,10.2.0.11,n1\n");
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("hosts.csv:1:1: reservation 10.2.0.11 is not inside subnet"), "{e}");

    std::fs::remove_file(&hosts).unwrap();
    let e = Config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("netboot.toml:3:14: cannot read hosts_file"), "{e}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/netboot.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.dhcp.reservations().count(), 3);
    assert_eq!(c.dhcp.hosts_path.as_deref(), Some(path.parent().unwrap().join("hosts.csv").as_path()));
}

#[test]
fn dhcp6_with_a_cluster_store_is_refused_where_it_is_enabled() {
    // DHCPv6 is not coordinated between members: two members would hand one address twice.
    let e = err("[dhcp]\nsubnet = \"10.1.0.0/24\"\n[cluster]\nstore = \"postgresql://u@localhost/db\"\nserver_id = \"a\"\n[dhcp6]\nenabled = true\nprefix = \"fd00:1::/64\"\n");
    assert!(e.starts_with("netboot.toml:7:1:") && e.contains("not coordinated"), "{e}");
    parse("[dhcp]\nsubnet = \"10.1.0.0/24\"\n[cluster]\nstore = \"postgresql://u@localhost/db\"\nserver_id = \"a\"\n[dhcp6]\nenabled = false\nprefix = \"fd00:1::/64\"\n").unwrap();
}
