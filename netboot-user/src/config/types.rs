//! Value types of the config that validate themselves while deserializing, so the TOML parser
//! reports the exact position of a bad value.

use serde::Deserialize;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A duration written like `"1h"`, `"90s"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Duration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"1h\", \"90s\", \"500ms\"")))
    }
}

/// An inclusive IPv4 range `"10.0.1.1-10.0.9.254"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl std::str::FromStr for Pool {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (start, end) = parse_range(s, "10.0.1.1-10.0.9.254")?;
        Ok(Pool { start, end })
    }
}

/// `"FIRST-LAST"` with FIRST ≤ LAST; `example` is shown in the error.
fn parse_range<A: std::str::FromStr + Ord>(s: &str, example: &str) -> Result<(A, A), String> {
    let bad = || format!("invalid pool {s:?}: expected \"FIRST-LAST\" like \"{example}\"");
    // IPv6 addresses hold no '-', so the first one splits.
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: A = a.trim().parse().map_err(|_| bad())?;
    let end: A = b.trim().parse().map_err(|_| bad())?;
    if start > end {
        return Err(format!("invalid pool {s:?}: first address is after the last"));
    }
    Ok((start, end))
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive IPv6 range `"fd00:77::1000-fd00:77::1fff"` (`[dhcp6] pools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool6 {
    pub start: Ipv6Addr,
    pub end: Ipv6Addr,
}

impl Pool6 {
    /// Addresses in the pool (saturating: a /64 pool has 2^64). Never 0: the config checks
    /// start <= end.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u128 {
        (u128::from(self.end) - u128::from(self.start)).saturating_add(1)
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }

    pub fn overlaps(&self, other: &Pool6) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl fmt::Display for Pool6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl std::str::FromStr for Pool6 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (start, end) = parse_range(s, "fd00:77::1000-fd00:77::1fff")?;
        Ok(Pool6 { start, end })
    }
}
