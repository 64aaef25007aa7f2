//! `cargo xtask`: the project's own automation. Depends on nothing but std, anyhow and clap so
//! that it builds on a machine where the eBPF toolchain is not installed yet.
//!
//! - `setup`  installs what building and testing need, idempotently (each item checked first).
//! - `build`  setup, then builds everything (the eBPF object is built by netboot-user's build.rs).
//! - `test`   setup, build, then every test (unit, BPF_PROG_TEST_RUN, namespace integration).
//! - `demo`   setup, build, then the demo on the lab (`netboot-bench demo`).
//! - `deb`    setup, build, then the Debian package (cargo-deb) under target/debian/.
//! - `lab`    `up` / `down` / `list` a lab by hand.
//! - `fuzz`   the fuzz targets (DHCP, frames, TFTP, HTTP) for SECONDS each from a random seed,
//!   and the proptest properties with 50 times their cases.

mod setup;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netboot-xdp build, test and demo automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the prerequisites (Debian packages, rust-src for nightly, bpf-linker on LLVM 22).
    Setup,
    /// Setup, then build every binary in release mode.
    Build,
    /// Setup, build, then run every test. Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then run only the QEMU end-to-end boots (tests/tests/e2e_qemu.rs; they
    /// are part of `test` too). Extra arguments go to the test binary, e.g. a test name.
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then run the demo on a lab of network namespaces.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run each fuzz target (DHCP core, frames, TFTP, HTTP) for SECONDS (default 60) from a
    /// random seed; inputs that panic are saved under target/fuzz-crashes/.
    Fuzz {
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Setup, build, then the Debian package: target/debian/netboot-xdp_VERSION-1_ARCH.deb
    /// (binary, systemd unit, example config, a netboot-xdp system user).
    Deb,
    /// Create, list or remove a lab by hand (`lab up`, `lab list`, `lab down ID`).
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.cmd) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build => {
            setup::run()?;
            build()
        }
        Cmd::Test { args } => {
            setup::run()?;
            build()?;
            test(&[], &args)
        }
        Cmd::E2e { args } => {
            setup::run()?;
            build()?;
            let mut args = args;
            args.push("--nocapture".into()); // the figures
            test(&["-p", "tests", "--test", "e2e_qemu"], &[["--".to_string()].as_slice(), &args].concat())
        }
        Cmd::Demo { args } => {
            setup::run()?;
            build()?;
            status(Command::new(bin_dir().join("netboot-bench")).arg("demo").args(&args))
        }
        Cmd::Fuzz { seconds } => {
            setup::run()?;
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
            let mut c = cargo();
            c.args(["test", "--release", "-p", "tests", "--test", "fuzz", "--test", "proptest_parsers", "--", "--nocapture"]);
            c.env("NETBOOT_FUZZ_SECONDS", seconds.to_string()).env("NETBOOT_FUZZ_SEED", seed.to_string());
            eprintln!("xtask: fuzzing {seconds} s per target, seed {seed} (NETBOOT_FUZZ_SEED={seed} reproduces the run)");
            status(&mut c)
        }
        Cmd::Deb => {
            setup::run()?;
            build()?;
            status(cargo().args(["deb", "-p", "netboot-user", "--no-build", "--strip"]))
        }
        Cmd::Lab { args } => {
            build()?;
            status(Command::new(bin_dir().join("netboot-bench")).arg("lab").args(&args))
        }
    }
}

/// `cargo test --release SELECT ARGS`; integration tests run the release binaries built above.
fn test(select: &[&str], args: &[String]) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["test", "--release"]).args(select).args(args);
    c.env("NETBOOT_BIN_DIR", bin_dir());
    status(&mut c)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("release")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> anyhow::Result<()> {
    status(cargo().args(["build", "--release", "--bins"]))
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{:?} failed ({st})", cmd.get_program());
    }
    Ok(())
}
