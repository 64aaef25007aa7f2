//! Bearer tokens of the API (`[api] tokens_file`): one per line, `NAME SCOPE SHA256-HEX`; the
//! token itself is printed once by `netboot-xdp token add` and never stored. Scopes nest:
//! read < write < admin.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        [Scope::Read, Scope::Write, Scope::Admin].into_iter().find(|x| x.name() == s)
    }

    /// The scope a request needs over `http.listen`: reads `read` (the audit log `admin`),
    /// writes `write`; `None` outside `/api/v1/` (scripts, files, metrics: no token). The
    /// token check and the OpenAPI document both ask this.
    pub fn needed(method: &axum::http::Method, path: &str) -> Option<Scope> {
        use axum::http::Method;
        if !path.starts_with("/api/v1/") {
            return None;
        }
        Some(match (matches!(*method, Method::GET | Method::HEAD), path) {
            (true, "/api/v1/audit") => Scope::Admin,
            (true, _) => Scope::Read,
            (false, _) => Scope::Write,
        })
    }
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A line of `tokens_file`: the token's name, its scope and its hash.
type TokenRow = (String, Scope, String);

/// The tokens of `tokens_file`, read again when the file changes.
pub struct Tokens {
    path: Option<PathBuf>,
    /// The file's modification time when read, and its tokens.
    cache: Mutex<(Option<SystemTime>, Vec<TokenRow>)>,
}

impl Tokens {
    pub fn new(path: Option<PathBuf>) -> Tokens {
        Tokens { path, cache: Mutex::new((None, Vec::new())) }
    }

    /// Whether a tokens file is configured (without one, `/api/v1` reads are public and writes
    /// go through the control socket only).
    pub fn configured(&self) -> bool {
        self.path.is_some()
    }

    /// The name and scope of `token`, if it is one of the file's.
    pub fn check(&self, token: &str) -> Option<(String, Scope)> {
        let path = self.path.as_ref()?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != mtime || mtime.is_none() {
            match read(path) {
                Ok(v) => *cache = (mtime, v),
                Err(e) => {
                    tracing::error!("api: cannot read tokens_file {}: {e:#}; no token is accepted", path.display());
                    *cache = (None, Vec::new());
                }
            }
        }
        let h = hash(token);
        // Constant time in the token's bytes is moot: what is compared is its hash.
        cache.1.iter().find(|(_, _, stored)| *stored == h).map(|(n, s, _)| (n.clone(), *s))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<TokenRow>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        match (f.as_slice(), f.get(1).and_then(|s| Scope::parse(s))) {
            ([name, _, h], Some(scope)) if h.len() == 64 => out.push((name.to_string(), scope, h.to_ascii_lowercase())),
            _ => anyhow::bail!("{}:{}: expected NAME read|write|admin SHA256-HEX", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Adds a token named `name` with `scope` to `path` (created mode 0600); returns the token.
pub fn add(path: &Path, name: &str, scope: Scope) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)) {
        anyhow::bail!("token name {name:?}: use A-Z a-z 0-9 . _ - @");
    }
    if path.exists() && read(path)?.iter().any(|(n, _, _)| n == name) {
        anyhow::bail!("{}: a token named {name} exists already", path.display());
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let token: String = format!("nbx_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    writeln!(f, "{name} {} {}", scope.name(), hash(&token))?;
    f.sync_all()?;
    Ok(token)
}

/// A random token for one install boot's phone-home.
pub fn boot_token() -> String {
    let mut raw = [0u8; 16];
    let _ = getrandom::fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_checked_by_scope() {
        let dir = crate::scratch::ScratchDir::new("tokens");
        let path = dir.join("tokens");
        let _ = std::fs::remove_file(&path);
        let w = add(&path, "ci", Scope::Write).unwrap();
        let r = add(&path, "grafana", Scope::Read).unwrap();
        assert!(add(&path, "ci", Scope::Admin).is_err(), "a name twice");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&w) && !text.contains(&r), "a token stored in clear");
        let t = Tokens::new(Some(path.clone()));
        assert_eq!(t.check(&w), Some(("ci".into(), Scope::Write)));
        assert_eq!(t.check(&r), Some(("grafana".into(), Scope::Read)));
        assert_eq!(t.check("nbx_00"), None);
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
    }
}
