//! One simulated machine's network boot, with real client behaviour:
//!
//! 1. DHCP as its PXE ROM (options 53, 55, 57, 60 `PXEClient:Arch:…`, 93, 94, 97), broadcast,
//!    retransmitted after 4, 8, 16, 32 s (PXE 2.1); it takes the first OFFER with a boot file;
//!    a REQUEST that gets neither ACK nor NAK after the same retransmissions starts over.
//! 2. TFTP of the boot file the ACK names (`blksize` as asked, `tsize`, `windowsize` for UEFI
//!    when asked), byte-exact, through the bench's AF_XDP TFTP client (a port of the client
//!    address per read).
//! 3. DHCP as iPXE (user class `iPXE`, option 175, client id 01:mac), retransmitted after 1, 2,
//!    4, 8 s as iPXE does; without 175.176 = 1 in the OFFER it waits for ProxyDHCP offers until
//!    3 s after its first DISCOVER, as iPXE does.
//! 4. HTTP GET of the script URL the ACK names (and optionally the files the script names).

use super::link::DhcpLink;
use crate::tftp_xsk::XskService;
use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable};
use netboot::dhcp::classify::raw_option;
use netboot::mac::MacAddr;
use netboot::tftp::client::Request;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

pub const PXE_TIMEOUTS: [u64; 4] = [4, 8, 16, 32];
pub const IPXE_TIMEOUTS: [u64; 5] = [1, 2, 4, 8, 16];
pub const IPXE_PROXY_WAIT: Duration = Duration::from_secs(3);
pub const TFTP_GIVE_UP: Duration = Duration::from_secs(20);
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A kernel or initrd: a storm shares the link, so this is long.
const FILE_TIMEOUT: Duration = Duration::from_secs(600);

/// Failure reasons that are correctness violations (wrong address, file or bytes) start so;
/// the rest are timeouts and refusals.
pub const VIOLATION: &str = "violation: ";

/// The stages of a boot, in order.
pub const STAGES: [&str; 5] = ["dhcp", "tftp", "ipxe_dhcp", "script", "files"];

#[derive(Debug, Clone)]
pub struct Identity {
    pub index: u32,
    pub mac: MacAddr,
    /// Option 93: 0 BIOS, 7 UEFI x64.
    pub arch: u16,
    /// The address its reservation says.
    pub ip: Ipv4Addr,
}

/// What the machine must get, per arch (checked on every run).
#[derive(Debug, Clone)]
pub struct Expect {
    pub bios_file: String,
    pub uefi_file: String,
    pub bios_bytes: Arc<Vec<u8>>,
    pub uefi_bytes: Arc<Vec<u8>>,
    /// The script URLs a machine may be given: one per boot server (each names itself).
    pub script_urls: Vec<String>,
    /// Whether each machine's address is its reservation (`false`: from the pool, `--pool`).
    pub reserved: bool,
    /// The kernel and the initrd, by file name.
    pub files: Arc<Vec<(String, crate::http_fetch::Expect)>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Behaviour {
    pub rom_blksize: u16,
    pub uefi_windowsize: Option<u16>,
    /// Also fetch the kernel and initrd the script names.
    pub fetch_files: bool,
    /// Times a machine whose boot failed (not a violation) starts over from DHCP, as firmware
    /// that retries network boot does after a server died under it (`--member-fault`).
    pub reboots: u32,
}

/// Completed stages per kind, for the progress bar.
#[derive(Default)]
pub struct Progress {
    pub done: [AtomicU32; 5],
    /// Kernel and initrd bytes received.
    pub file_bytes: std::sync::atomic::AtomicU64,
    pub failed: AtomicU32,
}

/// Stages completed by one machine, readable when its boot is cut off by the deadline.
pub type Reached = std::sync::atomic::AtomicUsize;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub index: u32,
    pub mac: String,
    /// When it was powered on, seconds after the start of the storm (`--ramp`).
    pub power_on: f64,
    /// Seconds from power-on to the end of each stage reached.
    pub stage_end: Vec<f64>,
    /// The stage that failed, and why.
    pub failure: Option<(String, String)>,
    pub ip: Option<Ipv4Addr>,
    pub dhcp_retransmits: u32,
    pub tftp_retransmits: u64,
    /// File requests answered "503, come back later" (`--max-downloads`).
    pub http_deferred: u32,
    /// Boots started over after a failure ([`Behaviour::reboots`]).
    pub reboots: u32,
}

impl Outcome {
    pub fn booted(&self) -> bool {
        self.failure.is_none()
    }

    pub fn violation(&self) -> bool {
        self.failure.as_ref().is_some_and(|(_, why)| why.starts_with(VIOLATION))
    }

    /// Seconds from the start of the storm to the end of the boot, if it booted.
    pub fn booted_at(&self) -> Option<f64> {
        self.booted().then(|| self.power_on + self.stage_end.last().copied().unwrap_or(0.0))
    }
}

struct Machine<'a> {
    id: &'a Identity,
    link: &'a DhcpLink,
    tftp: &'a XskService,
    replies: &'a mut UnboundedReceiver<Vec<u8>>,
    t0: Instant,
    out: Outcome,
    reached: &'a Reached,
}

/// A DHCP ACK: what the machine keeps.
struct Bound {
    ip: Ipv4Addr,
    file: String,
    next_server: Ipv4Addr,
}

type Fail = (String, String);

/// Boots one machine; never panics on what the server sends.
#[allow(clippy::too_many_arguments)]
pub async fn boot(
    id: &Identity,
    link: &DhcpLink,
    tftp: &XskService,
    mut replies: UnboundedReceiver<Vec<u8>>,
    expect: &Expect,
    how: Behaviour,
    progress: &Progress,
    reached: &Reached,
) -> Outcome {
    let out = Outcome { index: id.index, mac: id.mac.to_string(), ..Default::default() };
    let mut m = Machine { id, link, tftp, replies: &mut replies, t0: Instant::now(), out, reached };
    loop {
        match m.chain(expect, how, progress).await {
            Ok(()) => return m.out,
            Err((_, why)) if !why.starts_with(VIOLATION) && m.out.reboots < how.reboots => {
                // Power-cycled: the same machine, from the first stage, its times from now.
                m.out.reboots += 1;
                for (i, _) in m.out.stage_end.iter().enumerate() {
                    progress.done[i].fetch_sub(1, Ordering::Relaxed);
                }
                m.out.stage_end.clear();
                m.reached.store(0, Ordering::Relaxed);
            }
            Err((stage, why)) => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                m.out.failure = Some((stage, why));
                return m.out;
            }
        }
    }
}

impl Machine<'_> {
    fn stage_done(&mut self, i: usize, progress: &Progress) {
        self.out.stage_end.push(self.t0.elapsed().as_secs_f64());
        self.reached.store(i + 1, Ordering::Relaxed);
        progress.done[i].fetch_add(1, Ordering::Relaxed);
    }

    async fn chain(&mut self, expect: &Expect, how: Behaviour, progress: &Progress) -> Result<(), Fail> {
        let fail = |stage: &str, why: String| (stage.to_string(), why);
        // 1. The ROM.
        let rom = self.dhcp(false).await.map_err(|e| fail("dhcp", e))?;
        let (want_file, want_bytes) = if self.id.arch == 0 { (&expect.bios_file, &expect.bios_bytes) } else { (&expect.uefi_file, &expect.uefi_bytes) };
        if expect.reserved && rom.ip != self.id.ip {
            return Err(fail("dhcp", format!("{VIOLATION}got {} but the reservation says {}", rom.ip, self.id.ip)));
        }
        if &rom.file != want_file {
            return Err(fail("dhcp", format!("{VIOLATION}boot file {:?} for arch {}, expected {want_file:?}", rom.file, self.id.arch)));
        }
        self.out.ip = Some(rom.ip);
        self.stage_done(0, progress);

        // 2. TFTP of the iPXE binary from the next server.
        let tftp_server = if rom.next_server.is_unspecified() { return Err(fail("tftp", "no next-server (siaddr)".into())) } else { rom.next_server };
        let req = Request {
            file: rom.file.clone(),
            blksize: Some(how.rom_blksize),
            windowsize: if self.id.arch == 0 { None } else { how.uefi_windowsize },
            tsize: true,
        };
        let got = self.tftp.fetch(SocketAddrV4::new(tftp_server, 69), &req, TFTP_GIVE_UP).await;
        self.out.tftp_retransmits = got.retransmits;
        if let Some(e) = got.error {
            return Err(fail("tftp", e));
        }
        if got.data != **want_bytes {
            return Err(fail("tftp", format!("{VIOLATION}{}: {} bytes, not the file's {}", rom.file, got.data.len(), want_bytes.len())));
        }
        self.stage_done(1, progress);

        // 3. iPXE asks again.
        let ipxe = self.dhcp(true).await.map_err(|e| fail("ipxe_dhcp", e))?;
        if ipxe.ip != rom.ip {
            return Err(fail("ipxe_dhcp", format!("{VIOLATION}iPXE got {}, the ROM got {}", ipxe.ip, rom.ip)));
        }
        if !expect.script_urls.contains(&ipxe.file) {
            return Err(fail("ipxe_dhcp", format!("{VIOLATION}script URL {:?}, expected one of {:?}", ipxe.file, expect.script_urls)));
        }
        self.stage_done(2, progress);

        // 4. The script.
        let script = http_get(&ipxe.file).await.map_err(|e| fail("script", e))?;
        let text = String::from_utf8_lossy(&script);
        if !text.starts_with("#!ipxe") {
            return Err(fail("script", format!("{VIOLATION}not an iPXE script: {:?}", text.chars().take(60).collect::<String>())));
        }
        self.stage_done(3, progress);

        // 5. Optionally the files it names (`kernel URL …`, `initrd URL`).
        if how.fetch_files {
            // As iPXE: one connection for both, kept alive, each file checked.
            let mut conn: Option<crate::http_fetch::Connection> = None;
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("kernel" | "initrd"), Some(url)) = (words.next(), words.next()) {
                    let (authority, path) = url.strip_prefix("http://").and_then(|r| r.split_once('/')).ok_or_else(|| fail("files", format!("not an http URL: {url}")))?;
                    let name = path.rsplit('/').next().unwrap_or_default();
                    let want = expect.files.iter().find(|(f, _)| f == name).map(|(_, e)| e).ok_or_else(|| fail("files", format!("{VIOLATION}the script names {url}, not a file of the bench")))?;
                    let fetched = async {
                        loop {
                            if conn.is_none() {
                                conn = Some(crate::http_fetch::Connection::open(authority).await?);
                            }
                            let c = conn.as_mut().expect("opened above");
                            match c.fetch(&format!("/{path}"), want, &progress.file_bytes).await? {
                                crate::http_fetch::Fetched::Done => return Ok::<(), String>(()),
                                crate::http_fetch::Fetched::ComeBack(after) => {
                                    // As iPXE: wait what the server says, then a new connection.
                                    self.out.http_deferred += 1;
                                    conn = None;
                                    tokio::time::sleep(after).await;
                                }
                            }
                        }
                    };
                    let got = tokio::time::timeout(FILE_TIMEOUT, fetched).await;
                    got.map_err(|_| fail("files", format!("{url}: not fetched within {FILE_TIMEOUT:?}")))?.map_err(|e| fail("files", format!("{url}: {e}")))?;
                }
            }
        }
        self.stage_done(4, progress);
        Ok(())
    }

    /// DISCOVER → OFFER → REQUEST → ACK, as the ROM (`ipxe` false) or as iPXE.
    async fn dhcp(&mut self, ipxe: bool) -> Result<Bound, String> {
        let timeouts: &[u64] = if ipxe { &IPXE_TIMEOUTS } else { &PXE_TIMEOUTS };
        let xid = (self.id.index << 8) | if ipxe { 0x80 } else { 0x10 };
        let started = Instant::now();
        'restart: for attempt in 0..timeouts.len() {
            // Discover until an acceptable OFFER (each retransmission waits longer).
            let mut offer = None;
            for (n, t) in timeouts.iter().enumerate().skip(attempt) {
                if n > 0 {
                    self.out.dhcp_retransmits += 1;
                }
                self.send(ipxe, xid, MessageType::Discover, n as u16, None);
                let until = Instant::now() + Duration::from_secs(*t);
                while let Some(m) = self.reply(xid, until).await {
                    if netboot::dhcp::classify::message_type(&m.0) == Some(MessageType::Offer) && (ipxe || !boot_file(&m.0, &m.1).is_empty()) {
                        offer = Some(m);
                        break;
                    }
                }
                if offer.is_some() {
                    break;
                }
            }
            let Some((offer, raw)) = offer else { return Err(format!("no OFFER after {} DISCOVERs", timeouts.len())) };
            if ipxe && !no_proxy_wait(&raw) {
                // iPXE keeps listening for ProxyDHCP offers until its proxy timeout.
                let until = started + IPXE_PROXY_WAIT;
                while self.reply(xid, until).await.is_some() {}
            }
            let server = match offer.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s,
                _ => return Err("OFFER without server identifier".into()),
            };
            for (n, t) in timeouts.iter().enumerate() {
                if n > 0 {
                    self.out.dhcp_retransmits += 1;
                }
                self.send(ipxe, xid, MessageType::Request, n as u16, Some((offer.yiaddr(), server)));
                let until = Instant::now() + Duration::from_secs(*t);
                while let Some((m, raw)) = self.reply(xid, until).await {
                    match netboot::dhcp::classify::message_type(&m) {
                        Some(MessageType::Ack) if m.yiaddr() == offer.yiaddr() => {
                            let next_server = if m.siaddr().is_unspecified() { server } else { m.siaddr() };
                            return Ok(Bound { ip: m.yiaddr(), file: boot_file(&m, &raw), next_server });
                        }
                        Some(MessageType::Nak) => continue 'restart,
                        _ => {}
                    }
                }
            }
            // No ACK: start over with a DISCOVER, as firmware does.
        }
        Err("no ACK after every DISCOVER/REQUEST round".into())
    }

    fn send(&self, ipxe: bool, xid: u32, kind: MessageType, secs: u16, requested: Option<(Ipv4Addr, Ipv4Addr)>) {
        let msg = message(self.id, ipxe, xid, kind, secs, requested);
        self.link.broadcast(self.id.mac, &msg.to_vec().expect("encode"));
    }

    /// The next reply with `xid` before `until`, decoded (and its raw bytes).
    async fn reply(&mut self, xid: u32, until: Instant) -> Option<(Message, Vec<u8>)> {
        loop {
            let raw = tokio::time::timeout_at(until.into(), self.replies.recv()).await.ok()??;
            let Ok(m) = Message::decode(&mut Decoder::new(&raw)) else { continue };
            if m.xid() == xid {
                return Some((m, raw));
            }
        }
    }
}

/// The boot file of a reply: option 67, else the BOOTP `file` field.
fn boot_file(m: &Message, raw: &[u8]) -> String {
    if let Some(f) = raw_option(raw, 67) {
        return String::from_utf8_lossy(f).trim_end_matches('\0').to_string();
    }
    String::from_utf8_lossy(m.fname().unwrap_or_default()).trim_end_matches('\0').to_string()
}

/// Whether the reply carries 175.176 = 1 (iPXE's "no ProxyDHCP" setting).
fn no_proxy_wait(raw: &[u8]) -> bool {
    let Some(mut enc) = raw_option(raw, 175) else { return false };
    while enc.len() >= 2 {
        let (code, len) = (enc[0], usize::from(enc[1]));
        let Some(val) = enc.get(2..2 + len) else { return false };
        if code == 176 && val.first().is_some_and(|v| *v != 0) {
            return true;
        }
        enc = &enc[2 + len..];
    }
    false
}

/// The request the machine sends, as its ROM or as iPXE.
pub fn message(id: &Identity, ipxe: bool, xid: u32, kind: MessageType, secs: u16, requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth).set_xid(xid).set_secs(secs).set_flags(Flags::default()).set_chaddr(&id.mac.0);
    let unknown = |code: u8, data: Vec<u8>| DhcpOption::Unknown(UnknownOption::new(OptionCode::from(code), data));
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::MaxMessageSize(if ipxe { 1472 } else { 1260 }));
    o.insert(DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{:05}:UNDI:002001", id.arch).into_bytes()));
    o.insert(DhcpOption::ClientSystemArchitecture(id.arch.into()));
    o.insert(unknown(94, vec![1, 2, 1]));
    let mut uuid = vec![0u8];
    uuid.extend_from_slice(&[0x4e, 0x42, 0x58, 0x00, 0, 0, 0, 0, 0, 0]);
    uuid.extend_from_slice(&id.mac.0);
    o.insert(unknown(97, uuid));
    let mut prl = vec![1, 3, 6, 12, 15, 17, 43, 54, 60, 66, 67];
    if ipxe {
        let mut cid = vec![1];
        cid.extend_from_slice(&id.mac.0);
        o.insert(DhcpOption::ClientIdentifier(cid));
        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        // iPXE's feature indicators (175.19 HTTP, 175.16 PXE extensions).
        o.insert(unknown(175, vec![19, 1, 1, 16, 1, 2]));
        prl.extend_from_slice(&[119, 175, 203]);
    } else {
        prl.extend_from_slice(&[128, 129, 130, 131, 132, 133, 134, 135]);
    }
    o.insert(DhcpOption::ParameterRequestList(prl.into_iter().map(OptionCode::from).collect()));
    if let Some((ip, server)) = requested {
        o.insert(DhcpOption::RequestedIpAddress(ip));
        o.insert(DhcpOption::ServerIdentifier(server));
    }
    m
}

/// An HTTP GET over a fresh connection, as iPXE makes it; the body of a 200.
pub async fn http_get(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("not an http URL: {url}"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let work = async {
        let stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let (status, body) = netboot::http::client::get(stream, authority, &path, "iPXE/1.21.1 (netboot-bench)").await.map_err(|e| format!("{e:#}"))?;
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Ok(body)
    };
    tokio::time::timeout(HTTP_TIMEOUT, work).await.map_err(|_| format!("no answer within {HTTP_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use netboot::dhcp::classify;
    use netboot_common::wire::ClientClass;

    fn id(arch: u16) -> Identity {
        Identity { index: 7, mac: MacAddr([2, 0x5b, 0, 0, 0, 7]), arch, ip: Ipv4Addr::new(10, 77, 2, 8) }
    }

    #[test]
    fn the_rom_and_ipxe_are_classified_as_such() {
        for (arch, ipxe, class) in [(0, false, ClientClass::Pxe), (7, false, ClientClass::Pxe), (0, true, ClientClass::Ipxe)] {
            let raw = message(&id(arch), ipxe, 1, MessageType::Discover, 0, None).to_vec().unwrap();
            let msg = Message::decode(&mut Decoder::new(&raw)).unwrap();
            let c = classify(&msg);
            assert_eq!((c.class, c.arch), (class, Some(arch)));
        }
    }

    #[test]
    fn proxy_wait_is_skipped_only_with_175_176() {
        let with = |enc: Vec<u8>| {
            let mut m = Message::default();
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::from(175), enc)));
            m.to_vec().unwrap()
        };
        assert!(no_proxy_wait(&with(vec![176, 1, 1])));
        assert!(no_proxy_wait(&with(vec![19, 1, 1, 176, 1, 1])));
        assert!(!no_proxy_wait(&with(vec![176, 1, 0])));
        assert!(!no_proxy_wait(&with(vec![176, 5, 1])));
        let mut m = Message::default();
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Offer));
        assert!(!no_proxy_wait(&m.to_vec().unwrap()));
    }
}
