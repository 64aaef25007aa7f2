//! The Debian package (issue 15): `cargo deb` (what `cargo xtask deb` runs) builds it from the
//! release binary; dpkg installs it into a scratch root, its postinst makes the netboot-xdp
//! system user there, and the packaged binary accepts the packaged example config.

use std::path::Path;
use std::process::Command;
use tests::require_root;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_deb_installs_into_a_scratch_root_and_its_example_config_checks() {
    if !require_root("the_deb_installs_into_a_scratch_root_and_its_example_config_checks") {
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let scratch = std::env::temp_dir().join(format!("nbx-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let deb = scratch.join("netboot-xdp.deb");
    // The binary the other tests run; no build here (the suite's build made it).
    let bin = tests::bin("netboot-xdp");
    assert!(bin.starts_with(workspace.join("target")) || std::env::var_os("NETBOOT_BIN_DIR").is_some());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(workspace).args(["deb", "-p", "netboot-user", "--no-build", "--strip", "--fast", "--output"]).arg(&deb));

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: netboot-xdp") && info.contains("postinst"), "{info}");
    let files = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for f in ["./usr/bin/netboot-xdp", "./lib/systemd/system/netboot-xdp@.service", "./etc/netboot-xdp/netboot.toml"] {
        assert!(files.contains(f), "{f} not packaged:\n{files}");
    }

    // A scratch root with an empty dpkg database and only root in its user tables.
    let root = scratch.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (f, text) in [
        ("var/lib/dpkg/status", ""),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join(f), text).unwrap();
    }
    let _ = std::fs::copy("/etc/login.defs", root.join("etc/login.defs"));
    // Maintainer scripts outside a chroot (DPKG_ROOT set); the scratch root has no libc6.
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display())).arg(format!("--log={}", scratch.join("dpkg.log").display()));
        c.args(["--force-script-chrootless", "--force-depends"]).args(args);
        c
    };
    run(dpkg(&["-i"]).arg(&deb));
    assert!(run(&mut dpkg(&["-s", "netboot-xdp"])).contains("Status: install ok installed"));

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("netboot-xdp:")).unwrap_or_else(|| panic!("no system user:\n{passwd}"));
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000 && user.ends_with(":/usr/sbin/nologin"), "not a system user: {user}");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let gid: u32 = group.lines().find(|l| l.starts_with("netboot-xdp:")).unwrap().split(':').nth(2).unwrap().parse().unwrap();
    use std::os::unix::fs::MetadataExt;
    let etc = std::fs::metadata(root.join("etc/netboot-xdp")).unwrap();
    assert_eq!((etc.gid(), etc.mode() & 0o7777), (gid, 0o2750), "the config directory's group and mode");
    assert!(root.join("var/lib/netboot-xdp").is_dir());

    let check = run(Command::new(root.join("usr/bin/netboot-xdp")).args(["check", "-c"]).arg(root.join("etc/netboot-xdp/netboot.toml")));
    assert!(check.contains(": ok"), "{check}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/netboot-xdp@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/netboot-xdp attach %i"), "{unit}");

    // Installed twice (an upgrade) the user is not made again; removed, the conffiles stay.
    run(dpkg(&["-i"]).arg(&deb));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert_eq!(passwd.lines().filter(|l| l.starts_with("netboot-xdp:")).count(), 1, "{passwd}");
    run(&mut dpkg(&["-r", "netboot-xdp"]));
    assert!(!root.join("usr/bin/netboot-xdp").exists() && root.join("etc/netboot-xdp/netboot.toml").exists());
    let _ = std::fs::remove_dir_all(&scratch);
}
