//! The hosts file: one reservation per CSV row, `mac,ip,hostname[,key=value;key=value]`, for
//! inventories of tens of thousands of nodes. `#` starts a comment line; an optional first row
//! `mac,ip,hostname,...` is a header.

use super::{ConfigError, Host};
use crate::mac::MacAddr;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub enum Error {
    /// The file cannot be read: reported at the `hosts_file` key.
    Io(String),
    /// A row is wrong: reported at the row.
    Row(ConfigError),
}

/// Where a row is, to report errors about it after parsing.
pub struct RowPos {
    file: PathBuf,
    line: usize,
}

impl RowPos {
    pub fn error(&self, message: String) -> ConfigError {
        ConfigError::at_line(&self.file, self.line, 1, message)
    }

    pub fn location(&self) -> String {
        format!("{}:{}:1", self.file.display(), self.line)
    }
}

pub fn load(file: &Path) -> Result<Vec<(RowPos, Host)>, Error> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Io(format!("cannot read hosts_file {}: {e}", file.display())))?;
    parse(file, &text).map_err(Error::Row)
}

/// Parses hosts-file rows from `text` (`file` names it in errors: a path, or what an import
/// came from).
pub fn parse(file: &Path, text: &str) -> Result<Vec<(RowPos, Host)>, ConfigError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            ConfigError::at_line(file, line, 1, format!("bad CSV: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if out.is_empty() && record.get(0).is_some_and(|f| f.eq_ignore_ascii_case("mac")) {
            continue; // header row
        }
        let (host, bad) = parse_row(&record);
        if let Some((field, message)) = bad {
            let column = column_of(text, line, field);
            return Err(ConfigError::at_line(file, line, column, message));
        }
        out.push((RowPos { file: file.to_path_buf(), line }, host.expect("no error means a host")));
    }
    Ok(out)
}

/// Parses one row; on error returns the index of the bad field and the message.
fn parse_row(r: &csv::StringRecord) -> (Option<Host>, Option<(usize, String)>) {
    if r.len() < 2 || r.len() > 4 {
        return (None, Some((0, format!("expected mac,ip,hostname[,vars], found {} fields", r.len()))));
    }
    let mac: MacAddr = match r[0].parse() {
        Ok(m) => m,
        Err(e) => return (None, Some((0, e.to_string()))),
    };
    let ip = match r[1].parse() {
        Ok(ip) => ip,
        Err(_) => return (None, Some((1, format!("invalid IPv4 address {:?}", &r[1])))),
    };
    let hostname = r.get(2).filter(|h| !h.is_empty()).map(str::to_string);
    let mut vars = BTreeMap::new();
    if let Some(v) = r.get(3) {
        for kv in v.split(';').filter(|s| !s.trim().is_empty()) {
            match kv.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    vars.insert(k.trim().to_string(), v.trim().to_string());
                }
                _ => return (None, Some((3, format!("invalid variable {kv:?}: expected key=value")))),
            }
        }
    }
    (Some(Host { mac, ip, ip6: None, hostname, vars, profile: None }), None)
}

/// 1-based column where field `field` starts on line `line` (plain CSV rows have no quotes in
/// these fields, so splitting at commas finds it).
fn column_of(text: &str, line: usize, field: usize) -> usize {
    let Some(l) = text.lines().nth(line.saturating_sub(1)) else { return 1 };
    let mut col = 1;
    for (i, part) in l.split(',').enumerate() {
        if i == field {
            return col + (part.len() - part.trim_start().len());
        }
        col += part.chars().count() + 1;
    }
    1
}
