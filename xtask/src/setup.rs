//! The prerequisite step shared by `setup`, `build`, `test` and `demo`. Each item is checked
//! first and skipped when present; each failure is one line with the fix. See TOOLCHAIN.md.

use anyhow::bail;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Debian packages: the LLVM that bpf-linker links against, BPF and network tools, and the
/// real clients and peers the tests and the bench run.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",     // bpf-linker's LLVM: must match nightly rustc's LLVM major (22)
    "libpolly-22-dev", // llvm-22's cmake/config exports reference Polly
    "libzstd-dev",
    "bpftool",
    "iproute2",
    "ethtool",
    "tcpdump",
    "util-linux",
    "isc-dhcp-client", // dhclient
    "udhcpc",
    "ndisc6",          // rdisc6: a real router-solicitation client for the RA test
    "kea-admin", // perfdhcp
    "kea-dhcp4-server", // a peer of the bench
    "postgresql",       // the cluster's shared lease store: tests start their own servers
    "nginx",            // the HTTP peer of `netboot-bench http-rate` (started per run, in the lab)
    "libwrap0",         // tftpd-hpa and atftpd (bench peers, unpacked from their packages)
    "tftp-hpa",
    "atftp",
    "curl",
    "dnsmasq-base",
    "qemu-system-x86",
    "ipxe-qemu",
    "ipxe",
    "ovmf",
    "chromium",         // headless: the dashboard test renders the page for real
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    let t = Instant::now();
    packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    eprintln!("setup: ok ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        bail!("missing Debian packages {}: run `sudo cargo xtask setup` (needs root for apt-get)", missing.join(" "));
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["update", "-q"]) {
        bail!("`apt-get update` failed: check network access to the Debian mirrors and /etc/apt/sources.list");
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    if !apt(&args) {
        bail!(
            "`apt-get install {}` failed: llvm-22-dev comes from bookworm-security/updates; check that those suites are in /etc/apt/sources.list",
            missing.join(" ")
        );
    }
    Ok(())
}

fn nightly() -> anyhow::Result<()> {
    if quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing the nightly toolchain (builds the eBPF crate)");
    if !quiet(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"])) {
        bail!("no nightly toolchain and `rustup toolchain install nightly` failed: install a nightly whose LLVM is 22 (rustc +nightly -vV)");
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if installed {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly (for -Z build-std=core)");
    if !quiet(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"])) {
        bail!("`rustup component add rust-src --toolchain nightly` failed: check network access to static.rust-lang.org");
    }
    Ok(())
}

/// bpf-linker must exist, be the pinned version and link LLVM 22 (TOOLCHAIN.md P1).
fn bpf_linker() -> anyhow::Result<()> {
    let version_ok = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let llvm_ok = which("bpf-linker")
        .and_then(|p| output(Command::new("ldd").arg(p)))
        .is_some_and(|l| l.contains("libLLVM.so.22") || l.contains("libLLVM-22"));
    if version_ok && llvm_ok {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 1.5 min)");
    if !cargo_install(&["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", "llvm-22"], &[("LLVM_PREFIX", LLVM_PREFIX)]) {
        bail!("building bpf-linker failed: it needs llvm-22-dev ({LLVM_PREFIX}); run `LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --no-default-features --features llvm-22` to see why");
    }
    Ok(())
}

/// cargo-deb, for `cargo xtask deb` (and the packaging test).
fn cargo_deb() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["deb", "--version"])).is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building cargo-deb {CARGO_DEB_VERSION} (about 2 min)");
    if !cargo_install(&["cargo-deb", "--locked", "--version", CARGO_DEB_VERSION], &[]) {
        bail!("`cargo install cargo-deb --version {CARGO_DEB_VERSION}` failed: check network access to crates.io");
    }
    Ok(())
}

/// `cargo install --force ARGS` with `env`; whether it succeeded.
fn cargo_install(args: &[&str], env: &[(&str, &str)]) -> bool {
    Command::new("cargo")
        .args(["install", "--force"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn which(bin: &str) -> Option<String> {
    output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).map(|s| s.trim().to_string())
}

fn euid() -> u32 {
    output(Command::new("id").arg("-u")).and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX)
}
