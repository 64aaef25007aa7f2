//! TFTP packets (RFC 1350, options RFC 2347): parse and emit, symmetric. (No crate of the field
//! parses TFTP options and windowsize (RFC 7440) as a typed view; the few existing servers keep
//! theirs private.)

use std::fmt;

pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// RFC 1350 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    /// RFC 2347: option negotiation refused.
    BadOptions = 8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read or write request: file name, mode, options (name lowercased, value).
    Request { write: bool, file: String, mode: String, options: Vec<(String, String)> },
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: u16, message: String },
    OptionAck { options: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// NUL-terminated strings from `b`: at most `max` of them.
fn strings(b: &[u8], max: usize) -> Result<Vec<String>, ParseError> {
    if b.last() != Some(&0) {
        return Err(ParseError("string not NUL-terminated"));
    }
    let parts: Vec<&[u8]> = b[..b.len() - 1].split(|c| *c == 0).collect();
    if parts.len() > max {
        return Err(ParseError("too many fields"));
    }
    parts.into_iter().map(|p| String::from_utf8(p.to_vec()).map_err(|_| ParseError("field is not UTF-8"))).collect()
}

fn pairs(fields: &[String]) -> Result<Vec<(String, String)>, ParseError> {
    if !fields.len().is_multiple_of(2) {
        return Err(ParseError("option without a value"));
    }
    Ok(fields.chunks(2).map(|c| (c[0].to_ascii_lowercase(), c[1].clone())).collect())
}

impl<'a> Packet<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if b.len() < 4 {
            return Err(ParseError("shorter than 4 bytes"));
        }
        let op = u16::from_be_bytes([b[0], b[1]]);
        let rest = &b[2..];
        match op {
            RRQ | WRQ => {
                let f = strings(rest, 2 + 2 * 16)?;
                if f.len() < 2 || f[0].is_empty() {
                    return Err(ParseError("request without file name and mode"));
                }
                Ok(Packet::Request { write: op == WRQ, file: f[0].clone(), mode: f[1].to_ascii_lowercase(), options: pairs(&f[2..])? })
            }
            DATA => Ok(Packet::Data { block: u16::from_be_bytes([rest[0], rest[1]]), data: &rest[2..] }),
            ACK if rest.len() == 2 => Ok(Packet::Ack { block: u16::from_be_bytes([rest[0], rest[1]]) }),
            ERROR => {
                let msg = strings(&rest[2..], 1).map(|mut v| v.pop().unwrap_or_default()).unwrap_or_default();
                Ok(Packet::Error { code: u16::from_be_bytes([rest[0], rest[1]]), message: msg })
            }
            OACK => Ok(Packet::OptionAck { options: pairs(&strings(rest, 32)?)? }),
            _ => Err(ParseError("unknown opcode")),
        }
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let cstr = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        match self {
            Packet::Request { write, file, mode, options } => {
                out.extend_from_slice(&(if *write { WRQ } else { RRQ }).to_be_bytes());
                cstr(out, file);
                cstr(out, mode);
                for (k, v) in options {
                    cstr(out, k);
                    cstr(out, v);
                }
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&DATA.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                cstr(out, message);
            }
            Packet::OptionAck { options } => {
                out.extend_from_slice(&OACK.to_be_bytes());
                for (k, v) in options {
                    cstr(out, k);
                    cstr(out, v);
                }
            }
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }

    pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
        Packet::Error { code: code as u16, message: message.into() }.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_emit_are_symmetric() {
        let cases = [
            Packet::Request { write: false, file: "undionly.kpxe".into(), mode: "octet".into(), options: vec![("blksize".into(), "1432".into()), ("tsize".into(), "0".into())] },
            Packet::Request { write: true, file: "x".into(), mode: "netascii".into(), options: vec![] },
            Packet::Data { block: 65535, data: b"abc" },
            Packet::Ack { block: 7 },
            Packet::Error { code: 1, message: "File not found".into() },
            Packet::OptionAck { options: vec![("windowsize".into(), "8".into())] },
        ];
        for p in cases {
            let b = p.to_vec();
            assert_eq!(Packet::parse(&b).unwrap(), p);
        }
    }

    #[test]
    fn ipxe_style_rrq_with_mixed_case_options() {
        // What iPXE sends (src/net/udp/tftp.c): "blksize" 1432 and "tsize" 0.
        let b = b"\x00\x01undionly.kpxe\x00octet\x00BLKSIZE\x001432\x00tsize\x000\x00";
        match Packet::parse(b).unwrap() {
            Packet::Request { options, .. } => assert_eq!(options[0], ("blksize".into(), "1432".into())),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for b in [&b""[..], b"\x00", b"\x00\x01", b"\x00\x01abc", b"\x00\x09\x00\x00", b"\x00\x04\x00", b"\x00\x01\x00\x00", b"\x00\x01a\x00b\x00c\x00"] {
            assert!(Packet::parse(b).is_err(), "{b:?}");
        }
    }
}
