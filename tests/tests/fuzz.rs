//! The fuzz targets of `tests::fuzz` (DHCP core, frames, TFTP, HTTP) over their corpus and
//! mutations of it: no input panics. Deterministic here (a fixed seed, a fixed number of inputs
//! per target); `cargo xtask fuzz [SECONDS]` sets NETBOOT_FUZZ_SECONDS and a random
//! NETBOOT_FUZZ_SEED for a longer run.

use std::time::Duration;
use tests::fuzz::{Budget, fuzz, targets};

#[test]
fn network_input_never_panics_the_parsers_or_the_cores() {
    let dir = std::env::temp_dir().join(format!("nbx-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::env::var("NETBOOT_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6e62_7864_6675_7a7a);
    let seconds = std::env::var("NETBOOT_FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok());
    let mut crashes = Vec::new();
    for mut t in targets(&dir) {
        let budget = match seconds {
            Some(s) => Budget::Time(Duration::from_secs(s)),
            // HTTP inputs each run a connection through hyper: fewer of them.
            None => Budget::Inputs(if t.name() == "http" { 10_000 } else { 200_000 }),
        };
        let r = fuzz(t.as_mut(), seed, budget);
        eprintln!("fuzz {}: {} inputs, {} panics (seed {seed})", r.target, r.inputs, r.crashes.len());
        crashes.extend(r.crashes);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(crashes.is_empty(), "inputs that panicked (seed {seed}): {crashes:?}");
}
