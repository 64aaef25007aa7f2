use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // Builds netboot-ebpf for bpfel-unknown-none with nightly, -Z build-std=core, BTF on, and
    // leaves the object at $OUT_DIR/netboot. AYA_BUILD_SKIP=1 skips it (clippy without nightly).
    aya_build::build_ebpf(
        [Package {
            name: "netboot-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../netboot-ebpf"),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
