//! What the core takes from the configuration, resolved once per config: the mode, the pools' facts,
//! reservations, and the boot file or URL each client class gets (DESIGN.md §2).

use super::*;

/// Everything the core needs from the configuration, resolved (server address known).
#[derive(Debug, Clone)]
pub struct ServerParams {
    pub mode: DhcpMode,
    pub server_ip: Ipv4Addr,
    pub subnet: Option<Ipv4Net>,
    pub lease_secs: u32,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub boot: BootFiles,
    pub reservations: HashMap<MacAddr, Host>,
    /// Addresses allocated from the pools per second, at most (`[dhcp] new_clients_per_s`;
    /// 0 = unlimited): a flood of invented clients cannot take the pool faster.
    pub new_clients_per_s: u32,
    /// What a client without a reservation gets.
    pub unknown: UnknownPolicy,
    /// Which machines boot the Secure Boot chain.
    pub secure_boot: SecureBoot,
}

/// Boot file names and URLs, `{server}` already expanded.
#[derive(Debug, Clone, Default)]
pub struct BootFiles {
    pub bios: String,
    pub uefi_ia32: String,
    pub uefi_x64: String,
    pub uefi_arm64: String,
    /// The first file of the Secure Boot chain (a signed shim) per UEFI architecture.
    pub secure_x64: String,
    pub secure_arm64: String,
    pub http_client: String,
    pub ipxe_script: String,
}

impl BootFiles {
    /// The boot file or URL for a class and architecture; `None` for plain clients and unknown
    /// PXE architectures. A `secure` machine's UEFI firmware gets the signed shim: it would
    /// refuse iPXE, which no Secure Boot key signs.
    pub fn for_client(&self, c: Classification, secure: bool) -> Option<&str> {
        let file: &String = match c.class {
            ClientClass::Plain => return None,
            ClientClass::Ipxe => &self.ipxe_script,
            ClientClass::Http => &self.http_client,
            ClientClass::Pxe => match c.arch.unwrap_or(arch::BIOS) {
                arch::BIOS => &self.bios,
                arch::EFI_IA32 => &self.uefi_ia32,
                arch::EFI_X64 | arch::EFI_BC if secure => &self.secure_x64,
                arch::EFI_X64 | arch::EFI_BC => &self.uefi_x64,
                arch::EFI_ARM64 if secure => &self.secure_arm64,
                arch::EFI_ARM64 => &self.uefi_arm64,
                _ => return None,
            },
        };
        Some(file.as_str()).filter(|s| !s.is_empty())
    }
}

impl ServerParams {
    /// `dhcp.lease_time` in seconds, as option 51 carries it (u32, "infinity" excluded).
    pub fn lease_secs(cfg: &Config) -> u32 {
        cfg.dhcp.lease_time.0.as_secs().min(u64::from(u32::MAX - 1)) as u32
    }

    pub fn from_config(cfg: &Config, server_ip: Ipv4Addr) -> ServerParams {
        let b = &cfg.boot;
        let x = |s: &str| Config::expand(s, server_ip);
        ServerParams {
            mode: cfg.dhcp.mode,
            server_ip,
            subnet: cfg.dhcp.subnet.as_ref().map(|s| *s.get_ref()),
            lease_secs: ServerParams::lease_secs(cfg),
            router: cfg.dhcp.router,
            dns: cfg.dhcp.dns.clone(),
            domain: cfg.dhcp.domain.clone(),
            boot: BootFiles {
                bios: x(&b.bios),
                uefi_ia32: x(&b.uefi_ia32),
                uefi_x64: x(&b.uefi_x64),
                uefi_arm64: x(&b.uefi_arm64),
                secure_x64: x(&b.secure_x64),
                secure_arm64: x(&b.secure_arm64),
                http_client: x(&b.http_client),
                ipxe_script: x(&b.ipxe_script),
            },
            reservations: cfg.dhcp.reservations().map(|h| (h.mac, h.clone())).collect(),
            new_clients_per_s: cfg.dhcp.new_clients_per_s,
            unknown: cfg.dhcp.unknown,
            secure_boot: SecureBoot::from_config(cfg),
        }
    }
}
