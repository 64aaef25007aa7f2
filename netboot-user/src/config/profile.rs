//! `[[profile]]`: a script template and variables that a group of machines shares, and the
//! selector that says which machines are in the group.
//!
//! Precedence is explicit and has three steps, the first that applies wins:
//! 1. a host's own `profile` names one;
//! 2. a machine no host describes gets the profile named `discover`, if there is one;
//! 3. the first profile, in file order, whose selector matches (every condition it sets
//!    holds; an empty selector matches every known machine; `discover` is not a candidate).
//!
//! Otherwise `http.script` serves with no profile. [`choose`] says which step decided and why
//! each candidate did or did not match (`GET /api/v1/nodes/{mac}/explain`).

use crate::mac::MacAddr;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use toml::Spanned;

/// The profile unknown machines boot (with `[dhcp] unknown = "discover"`).
pub const DISCOVER: &str = "discover";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: Spanned<String>,
    /// Template relative to `http.root`; absent: `http.script`.
    pub script: Option<PathBuf>,
    /// Template variables; a host's own `vars` override them.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub selector: Selector,
    /// The iPXE commands that boot the local disk for intent `local` (absent: SAN-boot the
    /// first BIOS disk, or `exit` to the UEFI boot order).
    pub local_boot: Option<String>,
    /// Its machines run UEFI Secure Boot: their PXE firmware gets `[boot] secure_x64` (or
    /// `secure_arm64`), a signed shim, instead of iPXE.
    #[serde(default)]
    pub secure_boot: bool,
    /// Template (relative to `http.root`) of the GRUB config that the signed network GRUB
    /// fetches as `grub/grub.cfg` over TFTP, rendered per node like the iPXE script.
    pub grub: Option<PathBuf>,
}

/// Which machines boot the Secure Boot chain: those the profile that serves them marks
/// `secure_boot` (the same choice as their script's, [`choose`]). Empty, and free to ask,
/// when no profile does.
#[derive(Debug, Clone, Default)]
pub struct SecureBoot(Option<std::sync::Arc<[Profile]>>);

impl SecureBoot {
    pub fn from_config(cfg: &crate::config::Config) -> SecureBoot {
        SecureBoot(cfg.profiles.iter().any(|p| p.secure_boot).then(|| cfg.profiles.clone().into()))
    }

    /// Whether the machine `host` describes (if any) with the `facts` it shows boots signed.
    pub fn wants(&self, host: Option<&crate::config::Host>, facts: impl FnOnce() -> Facts) -> bool {
        let Some(profiles) = &self.0 else { return false };
        choose(profiles, host.and_then(|h| h.profile.as_deref()), &facts()).index.is_some_and(|i| profiles[i].secure_boot)
    }
}

/// Conditions on a machine; all that are set must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Client architectures (option 93): numbers, or `bios`, `efi-ia32`, `efi-x64`,
    /// `efi-arm64`, `http-x64`, `http-arm64`.
    #[serde(default)]
    pub arch: Vec<Arch>,
    /// MAC prefixes like `"52:54:00"`.
    #[serde(default)]
    pub mac_prefix: Vec<MacPrefix>,
    /// The machine's address, or the relay (giaddr) it came through, is in one of these.
    #[serde(default)]
    pub subnet: Vec<Ipv4Net>,
    /// Option 60 starts with this (`"PXEClient:Arch:00007"`, `"HTTPClient"`).
    pub vendor_class: Option<String>,
    /// Host variables with these values.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// Option 93 values one selector entry stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch(pub Vec<u16>);

impl Arch {
    fn named(s: &str) -> Option<Vec<u16>> {
        Some(match s {
            "bios" => vec![0],
            "efi-ia32" => vec![6],
            "efi-x64" => vec![7, 9],
            "efi-arm64" => vec![11],
            "http-x64" => vec![16],
            "http-arm64" => vec![19],
            _ => return s.parse().ok().map(|n| vec![n]),
        })
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u16),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Arch(vec![n])),
            Raw::Name(s) => Arch::named(&s).map(Arch).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown arch {s:?}: use an option 93 number or bios, efi-ia32, efi-x64, efi-arm64, http-x64, http-arm64"
                ))
            }),
        }
    }
}

/// The first 1 to 6 bytes of a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacPrefix(pub Vec<u8>);

impl<'de> Deserialize<'de> for MacPrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: Option<Vec<u8>> = s.split([':', '-']).map(|b| (b.len() == 2).then(|| u8::from_str_radix(b, 16).ok()).flatten()).collect();
        match bytes {
            Some(b) if (1..=6).contains(&b.len()) => Ok(MacPrefix(b)),
            _ => Err(serde::de::Error::custom(format!("invalid MAC prefix {s:?}: expected 1 to 6 hex bytes like \"52:54:00\""))),
        }
    }
}

/// What is known of a machine when its script is asked for.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Facts {
    pub mac: Option<MacAddr>,
    /// A host (config or API) describes it.
    pub known: bool,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub ip: Option<Ipv4Addr>,
    pub arch: Option<u16>,
    pub vendor_class: Option<String>,
    #[schema(value_type = Option<String>, format = Ipv4)]
    pub relay: Option<Ipv4Addr>,
    pub vars: BTreeMap<String, String>,
}

/// One candidate's verdict.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub profile: String,
    pub matched: bool,
    /// The first condition that failed, or what matched.
    pub why: String,
}

/// Which profile serves a machine, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// Its index in the config's profiles.
    #[serde(skip)]
    pub index: Option<usize>,
    pub profile: Option<String>,
    /// `host`, `discover`, `selector` or `default`.
    pub by: &'static str,
    pub reason: String,
    pub candidates: Vec<Verdict>,
}

impl Selector {
    /// `Ok(what matched)` or `Err(the first condition that failed)`.
    pub fn check(&self, f: &Facts) -> Result<String, String> {
        let mut held = Vec::new();
        if !self.arch.is_empty() {
            match f.arch {
                Some(a) if self.arch.iter().any(|s| s.0.contains(&a)) => held.push(format!("arch {a}")),
                Some(a) => return Err(format!("arch {a} is not among the selector's")),
                None => return Err("arch not seen yet (no DHCP request with option 93)".into()),
            }
        }
        if !self.mac_prefix.is_empty() {
            let Some(mac) = f.mac else { return Err("MAC unknown".into()) };
            match self.mac_prefix.iter().find(|p| mac.0.starts_with(&p.0)) {
                Some(p) => held.push(format!("MAC prefix {}", hex(&p.0))),
                None => return Err(format!("MAC {mac} has none of the prefixes")),
            }
        }
        if !self.subnet.is_empty() {
            let hit = [f.ip, f.relay].into_iter().flatten().find_map(|a| self.subnet.iter().find(|n| n.contains(&a)).map(|n| (a, n)));
            match hit {
                Some((a, n)) => held.push(format!("{a} in {n}")),
                None => return Err("neither its address nor its relay is in the selector's subnets".into()),
            }
        }
        if let Some(prefix) = &self.vendor_class {
            match &f.vendor_class {
                Some(v) if v.starts_with(prefix.as_str()) => held.push(format!("vendor class {v}")),
                Some(v) => return Err(format!("vendor class {v:?} does not start with {prefix:?}")),
                None => return Err("no vendor class seen (option 60)".into()),
            }
        }
        for (k, want) in &self.vars {
            match f.vars.get(k) {
                Some(v) if v == want => held.push(format!("{k}={v}")),
                Some(v) => return Err(format!("var {k}={v}, not {want}")),
                None => return Err(format!("no var {k}")),
            }
        }
        Ok(if held.is_empty() { "empty selector: matches every known machine".into() } else { held.join(", ") })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// The profile for a machine with `facts`, whose host (if any) names `named`.
pub fn choose(profiles: &[Profile], named: Option<&str>, facts: &Facts) -> Choice {
    let find = |n: &str| profiles.iter().position(|p| p.name.get_ref() == n);
    let pick = |index: usize, by, reason: String, candidates| Choice {
        index: Some(index),
        profile: Some(profiles[index].name.get_ref().clone()),
        by,
        reason,
        candidates,
    };
    if let Some(n) = named && let Some(i) = find(n) {
        return pick(i, "host", format!("the host names profile {n}"), Vec::new());
    }
    if !facts.known && let Some(i) = find(DISCOVER) {
        return pick(i, "discover", "no host describes this machine: the discover profile".into(), Vec::new());
    }
    let mut candidates = Vec::new();
    if facts.known {
        for (i, p) in profiles.iter().enumerate().filter(|(_, p)| p.name.get_ref() != DISCOVER) {
            let verdict = p.selector.check(facts);
            let matched = verdict.is_ok();
            let why = verdict.unwrap_or_else(|e| e);
            candidates.push(Verdict { profile: p.name.get_ref().clone(), matched, why: why.clone() });
            if matched {
                return pick(i, "selector", format!("selector of {} matched: {why}", p.name.get_ref()), candidates);
            }
        }
    }
    let reason = match (named, facts.known) {
        (Some(n), _) => format!("the host names {n}, which no [[profile]] defines; no selector matched: http.script"),
        (None, false) => "no host describes this machine and there is no discover profile: http.script".into(),
        (None, true) => "no selector matched: http.script".into(),
    };
    Choice { index: None, profile: named.map(str::to_string), by: "default", reason, candidates }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(text: &str) -> Vec<Profile> {
        #[derive(Deserialize)]
        struct P {
            profile: Vec<Profile>,
        }
        toml::from_str::<P>(text).unwrap().profile
    }

    const PROFILES: &str = r#"
        [[profile]]
        name = "discover"
        [[profile]]
        name = "arm"
        selector = { arch = ["efi-arm64", 19] }
        [[profile]]
        name = "rack1"
        selector = { mac_prefix = ["52:54:00"], vars = { rack = "r1" } }
        [[profile]]
        name = "fallback"
    "#;

    #[test]
    fn precedence_is_host_then_discover_then_selectors_in_order() {
        let p = profiles(PROFILES);
        let mut f = Facts { mac: Some("52:54:00:00:00:01".parse().unwrap()), known: true, arch: Some(11), ..Facts::default() };
        assert_eq!(choose(&p, Some("rack1"), &f).by, "host");
        let c = choose(&p, None, &f);
        assert_eq!((c.profile.as_deref(), c.by), (Some("arm"), "selector"));
        f.arch = Some(7);
        f.vars.insert("rack".into(), "r1".into());
        let c = choose(&p, None, &f);
        assert_eq!(c.profile.as_deref(), Some("rack1"));
        assert!(!c.candidates[0].matched && c.candidates[0].why.contains("arch 7"), "{c:?}");
        f.vars.insert("rack".into(), "r2".into());
        assert_eq!(choose(&p, None, &f).profile.as_deref(), Some("fallback"));
        f.known = false;
        assert_eq!(choose(&p, None, &f).by, "discover");
        // A name no profile defines stays the template variable; the selectors still decide.
        f.known = true;
        let c = choose(&p, Some("nope"), &f);
        assert_eq!((c.profile.as_deref(), c.by), (Some("fallback"), "selector"));
    }

    #[test]
    fn bad_selectors_are_refused() {
        assert!(toml::from_str::<Selector>("arch = [\"sparc\"]").is_err());
        assert!(toml::from_str::<Selector>("mac_prefix = [\"52:54:0\"]").is_err());
        assert!(toml::from_str::<Selector>("colour = \"red\"").is_err());
    }
}
