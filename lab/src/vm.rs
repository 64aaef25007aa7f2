//! QEMU virtual machines with real firmware on a lab's boot network: each VM's NIC is a tap
//! device, a port of the client bridge, as a machine's NIC is a port of a boot network switch.
//! TCG only (this machine kind's nested /dev/kvm cannot run firmware).

use super::{Lab, run_checked};
use netboot::mac::MacAddr;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

/// The firmware a VM network-boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's own NIC option ROM (iPXE, from ipxe-qemu): its first DHCP is
    /// already iPXE's.
    SeaBiosIpxeRom,
    /// OVMF with the NIC ROM disabled: EDK2's own PXE client (PXEClient, arch 7) fetches
    /// ipxe.efi over TFTP, then iPXE asks again.
    OvmfPxe,
    /// OVMF with IPv4 PXE switched off (fw_cfg `opt/org.tianocore/IPv4PXESupport`): EDK2's
    /// PXEv6 client (DHCPv6, `tftp://[addr]/file`) is the first to boot.
    OvmfPxe6,
    /// OVMF with IPv4 and IPv6 PXE off: UEFI HTTP boot (HTTPv4, then HTTPv6) is the first to
    /// boot, as on a fleet configured for HTTP boot.
    OvmfHttp,
    /// OVMF built with Secure Boot and SMM, its variables holding Microsoft's keys with Secure
    /// Boot enforced (Debian's `OVMF_CODE_4M.secboot.fd` + `OVMF_VARS_4M.ms.fd`): only
    /// Microsoft-signed loaders run, so the chain is shim, then what shim's Debian key
    /// allows. PXEv4 only (IPv6 PXE off).
    OvmfSecureBoot,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::SeaBiosIpxeRom => "seabios-ipxe-rom",
            Firmware::OvmfPxe => "ovmf-pxe",
            Firmware::OvmfPxe6 => "ovmf-pxe6",
            Firmware::OvmfHttp => "ovmf-http",
            Firmware::OvmfSecureBoot => "ovmf-secureboot",
        }
    }
}

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// A running VM; killed, and its tap removed, on drop.
pub struct Vm {
    child: Child,
    lab_client: super::NetNs,
    pub tap: String,
    pub mac: MacAddr,
    pub firmware: Firmware,
    /// When QEMU was started (wall clock, Unix milliseconds), and the same as an Instant.
    pub started_ms: u64,
    pub started: Instant,
    /// The VM's serial console (firmware and iPXE messages).
    pub console: PathBuf,
}

impl Vm {
    /// Starts VM number `n` (0..=99) of `lab` with `firmware` and `mac`; files go to `dir`.
    /// It has no disk, and exits instead of rebooting.
    pub fn start(lab: &Lab, n: u32, firmware: Firmware, mac: MacAddr, dir: &Path) -> anyhow::Result<Vm> {
        Vm::start_with(lab, n, firmware, mac, dir, None)
    }

    /// As [`Vm::start`], with `disk` (a raw image) as its first hard disk; it reboots when its
    /// software reboots (network first again, as a data-center machine's boot order says).
    pub fn start_with_disk(lab: &Lab, n: u32, firmware: Firmware, mac: MacAddr, dir: &Path, disk: &Path) -> anyhow::Result<Vm> {
        Vm::start_with(lab, n, firmware, mac, dir, Some(disk))
    }

    fn start_with(lab: &Lab, n: u32, firmware: Firmware, mac: MacAddr, dir: &Path, disk: Option<&Path>) -> anyhow::Result<Vm> {
        anyhow::ensure!(n < 100, "VM number {n} out of range");
        let tap = format!("nbx{}v{n}", lab.id);
        let ns = &lab.client;
        run_checked(ns.command("ip").args(["tuntap", "add", &tap, "mode", "tap"]))?;
        let cleanup = |e: anyhow::Error| {
            let _ = ns.command("ip").args(["link", "del", &tap]).status();
            e
        };
        run_checked(ns.command("ip").args(["link", "set", &tap, "master", &lab.client_if])).map_err(cleanup)?;
        run_checked(ns.command("ip").args(["link", "set", &tap, "up"])).map_err(cleanup)?;
        let console = dir.join(format!("vm{n}.console"));
        let mut cmd = ns.command("qemu-system-x86_64");
        // A Debian kernel unpacks itself: more than the 256 MiB a loader needs.
        let memory = if firmware == Firmware::OvmfSecureBoot { "512" } else { "256" };
        cmd.args(["-accel", "tcg,tb-size=64", "-m", memory, "-smp", "1", "-display", "none", "-monitor", "none"]);
        match disk {
            Some(d) => cmd.args(["-drive", &format!("file={},format=raw,if=ide", d.display())]),
            None => cmd.arg("-no-reboot"),
        };
        cmd.arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-netdev", &format!("tap,id=n0,ifname={tap},script=no,downscript=no")]);
        match firmware {
            Firmware::SeaBiosIpxeRom => {
                cmd.args(["-boot", "n", "-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")]);
            }
            Firmware::OvmfPxe | Firmware::OvmfPxe6 | Firmware::OvmfHttp | Firmware::OvmfSecureBoot => {
                let secure = firmware == Firmware::OvmfSecureBoot;
                let (code, template) = if secure { (OVMF_CODE_SECBOOT, OVMF_VARS_MS) } else { (OVMF_CODE, OVMF_VARS) };
                let vars = dir.join(format!("vm{n}.vars.fd"));
                std::fs::copy(template, &vars).with_context(|| format!("{template} (package ovmf)")).map_err(cleanup)?;
                if secure {
                    // The variable store is writable from SMM only: the OS cannot turn Secure
                    // Boot off.
                    cmd.args(["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]);
                } else {
                    cmd.args(["-machine", "q35"]);
                }
                cmd.args(["-drive", &format!("if=pflash,format=raw,readonly=on,file={code}")])
                    .args(["-drive", &format!("if=pflash,format=raw,file={}", vars.display())])
                    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=")]);
                if matches!(firmware, Firmware::OvmfPxe6 | Firmware::OvmfHttp) {
                    cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"]);
                }
                if matches!(firmware, Firmware::OvmfHttp | Firmware::OvmfSecureBoot) {
                    cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]);
                }
            }
        }
        let log = std::fs::File::create(dir.join(format!("vm{n}.qemu.log")))?;
        let started = Instant::now();
        let started_ms = netboot::timeline::unix_ms();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start qemu-system-x86_64 (package qemu-system-x86)")
            .map_err(cleanup)?;
        Ok(Vm { child, lab_client: ns.clone(), tap, mac, firmware, started_ms, started, console })
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.lab_client.command("ip").args(["link", "del", &self.tap]).status();
    }
}

/// Debian's signed network boot chain, unpacked from its packages (downloaded once, never
/// installed: their scripts would install a boot loader on this machine).
pub struct SignedChain {
    /// `shimx64.efi.signed`: signed by Microsoft's UEFI CA, it trusts Debian's key.
    pub shim: PathBuf,
    /// `grubnetx64.efi.signed`: GRUB for network boot, signed by Debian; prefix `/grub`.
    pub grub: PathBuf,
    /// A Debian kernel, signed by Debian.
    pub kernel: PathBuf,
}

impl SignedChain {
    /// Unpacks (and first downloads, with `apt-get download`) shim-signed,
    /// grub-efi-amd64-signed and the kernel linux-image-amd64 depends on, under `cache`.
    pub fn fetch(cache: &Path) -> anyhow::Result<SignedChain> {
        let tree = cache.join("tree");
        let found = |tree: &Path| -> Option<SignedChain> {
            let boot = std::fs::read_dir(tree.join("boot")).ok()?;
            let kernel = boot.flatten().map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))?;
            let chain = SignedChain {
                shim: tree.join("usr/lib/shim/shimx64.efi.signed"),
                grub: tree.join("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
                kernel,
            };
            (chain.shim.exists() && chain.grub.exists()).then_some(chain)
        };
        if let Some(c) = found(&tree) {
            return Ok(c);
        }
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs)?;
        let depends = std::process::Command::new("apt-cache").args(["depends", "linux-image-amd64"]).output().context("apt-cache")?;
        let kernel = String::from_utf8_lossy(&depends.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")).map(str::to_string))
            .context("apt-cache depends linux-image-amd64 names no kernel package")?;
        for package in ["shim-signed", "grub-efi-amd64-signed", &kernel] {
            run_checked(std::process::Command::new("apt-get").args(["download", "-q", package]).current_dir(&debs))
                .with_context(|| format!("apt-get download {package}"))?;
        }
        for deb in std::fs::read_dir(&debs)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "deb")) {
            run_checked(std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        }
        found(&tree).context("the signed chain is not in the unpacked packages")
    }
}
