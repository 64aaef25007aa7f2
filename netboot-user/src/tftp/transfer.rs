//! One read transfer as a sans-IO state machine: packets and the time in, packets out.
//!
//! Option negotiation (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349),
//! windowsize (RFC 7440). Windows are lock-step as RFC 7440 describes: the client ACKs the last
//! block of a window (or the last block it got in order), and the next window starts after the
//! block it acknowledged. A duplicate or old ACK is ignored (no Sorcerer's Apprentice); only the
//! retransmission timer resends. Block numbers roll over from 65535 to 0, as tftp-hpa and iPXE
//! expect. The timer adapts to the measured round trip (a lost block costs hundreds of
//! milliseconds, not the peers' 1–5 s) and backs off exponentially.

use super::packet::{ErrorCode, Packet};
use super::files::Content;
use std::time::{Duration, Instant};

/// Limits from the config and the interface.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Largest UDP payload the link (and the engine's frame buffers) carries.
    pub max_payload: u16,
    /// Concurrent transfers in total and per client address (0 = unlimited).
    pub max_transfers: u32,
    pub max_transfers_per_client: u32,
}

impl Limits {
    /// The limits for one client: `max_payload` is what fits an IPv4 datagram; an IPv6 header is
    /// 20 bytes longer, and a fragmented DATA block is one firmware may never reassemble.
    pub fn for_client(self, client: std::net::SocketAddr) -> Limits {
        match client {
            std::net::SocketAddr::V4(_) => self,
            std::net::SocketAddr::V6(_) => Limits { max_payload: self.max_payload.saturating_sub(20).max(516), ..self },
        }
    }
}

/// Limits for the unit tests: a 1500-byte link, the config's defaults, no admission limits.
#[cfg(test)]
pub(crate) const TEST_LIMITS: Limits =
    Limits { max_blksize: 1468, max_windowsize: 32, max_payload: 1472, max_transfers: 0, max_transfers_per_client: 0 };

/// Negotiated transfer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub blksize: usize,
    pub windowsize: u64,
    /// Longest retransmission timeout (the client's `timeout` option, else 1 s).
    pub max_rto: Duration,
}

const INITIAL_RTO: Duration = Duration::from_millis(250);
/// The longest retransmission timeout when the client asks for no `timeout`.
pub const DEFAULT_MAX_RTO: Duration = Duration::from_secs(1);
const MIN_RTO: Duration = Duration::from_millis(100);
const MAX_TRIES: u32 = 12;
/// Sends of DATA block 1 (a request without options) before the client has answered once: its
/// source address may be forged, and 512 bytes for a 30-byte request is a reflection, or
/// nobody is listening; either way a few tries are enough. An OACK is as small as the request
/// (no amplification) and is retried like any packet: a client slow to answer in a storm is
/// not dropped for it.
const UNCONFIRMED_TRIES: u32 = 3;
/// The longest retransmission timeout whatever `timeout` the client asks for: the option is
/// acknowledged (it sets the client's own timer), but a transfer whose client is gone ends
/// within MAX_TRIES × this, not hours.
const MAX_RTO: Duration = Duration::from_secs(5);

/// Parses the request's options; returns the parameters and the OACK options (empty: no OACK).
pub fn negotiate(requested: &[(String, String)], file_len: u64, limits: Limits) -> (Params, Vec<(String, String)>) {
    let mut p = Params { blksize: 512, windowsize: 1, max_rto: DEFAULT_MAX_RTO };
    let mut oack = Vec::new();
    for (k, v) in requested {
        let Ok(n) = v.parse::<u64>() else { continue };
        match k.as_str() {
            "blksize" if (8..=65464).contains(&n) => {
                let b = n.min(u64::from(limits.max_blksize)).min(u64::from(limits.max_payload) - 4);
                p.blksize = b as usize;
                oack.push((k.clone(), b.to_string()));
            }
            "tsize" => oack.push((k.clone(), file_len.to_string())),
            "timeout" if (1..=255).contains(&n) => {
                p.max_rto = Duration::from_secs(n).min(MAX_RTO);
                oack.push((k.clone(), n.to_string()));
            }
            "windowsize" if (1..=65535).contains(&n) => {
                let w = n.min(u64::from(limits.max_windowsize)).max(1);
                p.windowsize = w;
                oack.push((k.clone(), w.to_string()));
            }
            _ => {} // unknown or out of range: not acknowledged, the default applies
        }
    }
    (p, oack)
}

/// What the I/O layer does next.
/// The reason of [`Step::Abort`] when a client ends the transfer right after the OACK.
pub const SIZE_PROBE: &str = "size probe: the client stopped after the option acknowledgement";

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these packets (in order).
    Send(Vec<Vec<u8>>),
    /// Nothing to do (duplicate or stray packet).
    Wait,
    /// The last block is acknowledged.
    Done,
    /// Give up: send this ERROR (if any) and stop.
    Abort(Option<Vec<u8>>, &'static str),
}

pub struct Transfer {
    data: Content,
    p: Params,
    /// Data blocks in the file (the last is shorter than blksize, possibly empty).
    blocks: u64,
    /// An OACK waiting for its ACK 0.
    oack: Option<Vec<u8>>,
    /// Blocks acknowledged so far.
    acked: u64,
    last_send: Instant,
    rto: Duration,
    srtt: Option<Duration>,
    tries: u32,
    /// Whether the client has acknowledged anything yet (its address is real).
    confirmed: bool,
    /// Taken over from an engine that stopped: where the client is is learnt from its next ACK.
    resumed: bool,
    /// A block of the file could not be read: the window stopped before it, and the transfer
    /// ends with an ERROR at its next step.
    unreadable: bool,
    /// Packets resent because of the timer.
    pub retransmits: u64,
}

impl Transfer {
    /// Whether every block has been sent and only the last ACK is awaited: a client that got
    /// the last block closes its port, so a new request from that port is a new client.
    pub fn awaiting_final_ack(&self) -> bool {
        self.oack.is_none() && self.acked + self.p.windowsize >= self.blocks
    }

    pub fn new(data: Content, p: Params, oack: Vec<(String, String)>, now: Instant) -> Transfer {
        let blocks = data.len() / p.blksize as u64 + 1;
        let oack = (!oack.is_empty()).then(|| Packet::OptionAck { options: oack }.to_vec());
        Transfer { data, p, blocks, oack, acked: 0, last_send: now, rto: INITIAL_RTO.min(p.max_rto), srtt: None, tries: 0, confirmed: false, resumed: false, unreadable: false, retransmits: 0 }
    }

    /// A transfer another engine (an agent that crashed) started, going on from the client's
    /// next ACK: whatever block it acknowledges, the window after it is sent. Block numbers
    /// are taken as the first ones that match on the wire (a file of more than 65535 blocks
    /// resumed after a rollover would restart from the wrong block: the client then fails on
    /// a block out of order, as it would have with the crash).
    pub fn resumed(data: Content, p: Params, now: Instant) -> Transfer {
        Transfer { resumed: true, confirmed: true, ..Transfer::new(data, p, Vec::new(), now) }
    }

    pub fn params(&self) -> Params {
        self.p
    }

    /// Whether the client has acknowledged anything yet (its address is real).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The first packets: the OACK, or the first window.
    pub fn start(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.last_send = now;
        match self.oack.clone() {
            Some(o) => vec![o],
            None => self.window(),
        }
    }

    /// The window to send now, or the end if a block of it cannot be read.
    fn send_window(&mut self) -> Step {
        let w = self.window();
        if w.is_empty() && self.unreadable {
            return Self::unreadable_step();
        }
        Step::Send(w)
    }

    /// When the retransmission timer fires.
    pub fn deadline(&self) -> Instant {
        self.last_send + self.rto
    }

    fn block(&self, n: u64) -> Option<Vec<u8>> {
        let start = (n - 1) * self.p.blksize as u64;
        let data = self.data.read(start, start + self.p.blksize as u64)?;
        Some(Packet::Data { block: (n % 65536) as u16, data: &data }.to_vec())
    }

    /// The window after the last acknowledged block (up to a block that cannot be read).
    fn window(&mut self) -> Vec<Vec<u8>> {
        let last = (self.acked + self.p.windowsize).min(self.blocks);
        let mut out = Vec::new();
        for n in self.acked + 1..=last {
            match self.block(n) {
                Some(b) => out.push(b),
                None => {
                    self.unreadable = true;
                    break;
                }
            }
        }
        out
    }

    /// The step after a block could not be read.
    fn unreadable_step() -> Step {
        Step::Abort(Some(Packet::error(ErrorCode::NotDefined, "read error")), "the file could not be read")
    }

    /// The block a wire number acknowledges, if it is in the window in flight.
    fn resolve_ack(&self, wire: u16) -> Option<u64> {
        let last = (self.acked + self.p.windowsize).min(self.blocks);
        (self.acked + 1..=last).find(|n| n % 65536 == u64::from(wire))
    }

    pub fn on_packet(&mut self, bytes: &[u8], now: Instant) -> Step {
        if self.unreadable {
            return Self::unreadable_step();
        }
        match Packet::parse(bytes) {
            Ok(Packet::Ack { block }) => {
                if self.oack.is_some() {
                    if block != 0 {
                        return Step::Wait;
                    }
                    self.oack = None;
                    self.sample(now);
                    self.last_send = now;
                    return self.send_window();
                }
                if self.resumed {
                    self.resumed = false;
                    self.acked = u64::from(block).min(self.blocks);
                    self.last_send = now;
                    if self.acked == self.blocks {
                        return Step::Done;
                    }
                    return self.send_window();
                }
                let Some(n) = self.resolve_ack(block) else { return Step::Wait };
                self.sample(now);
                self.acked = n;
                if self.acked == self.blocks {
                    return Step::Done;
                }
                self.last_send = now;
                self.send_window()
            }
            // After our OACK and before any data: a client that only wanted `tsize` (EDK2 and
            // others ask for the size first, then read in a second request).
            Ok(Packet::Error { .. }) if self.acked == 0 && self.oack.is_some() => Step::Abort(None, SIZE_PROBE),
            Ok(Packet::Error { .. }) => Step::Abort(None, "client sent an error"),
            Ok(_) => Step::Abort(Some(Packet::error(ErrorCode::IllegalOperation, "unexpected packet")), "unexpected packet"),
            Err(_) => Step::Wait,
        }
    }

    /// The timer fired: resend what is in flight, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if self.unreadable {
            return Self::unreadable_step();
        }
        self.tries += 1;
        if !self.confirmed && self.oack.is_none() && self.tries >= UNCONFIRMED_TRIES {
            return Step::Abort(None, "client never answered");
        }
        if self.tries > MAX_TRIES {
            return Step::Abort(Some(Packet::error(ErrorCode::NotDefined, "timed out")), "client stopped answering");
        }
        self.rto = (self.rto * 2).min(self.p.max_rto);
        self.last_send = now;
        let pkts = match self.oack.clone() {
            Some(o) => vec![o],
            None => match self.send_window() {
                Step::Send(w) => w,
                end => return end,
            },
        };
        self.retransmits += pkts.len() as u64;
        Step::Send(pkts)
    }

    /// Round-trip sample (Karn: not after a retransmission).
    fn sample(&mut self, now: Instant) {
        self.confirmed = true;
        if self.tries == 0 {
            let rtt = now.saturating_duration_since(self.last_send);
            let srtt = match self.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            };
            self.srtt = Some(srtt);
            self.rto = (srtt * 4).clamp(MIN_RTO, self.p.max_rto);
        }
        self.tries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = TEST_LIMITS;

    fn opts(o: &[(&str, &str)]) -> Vec<(String, String)> {
        o.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ack(n: u16) -> Vec<u8> {
        Packet::Ack { block: n }.to_vec()
    }

    /// Plays a perfect client; returns the received file and the packets sent by the server.
    fn fetch(data: &[u8], o: &[(&str, &str)]) -> (Vec<u8>, usize) {
        let (p, oack) = negotiate(&opts(o), data.len() as u64, LIMITS);
        let now = Instant::now();
        let mut t = Transfer::new(data.into(), p, oack, now);
        let mut got = Vec::new();
        let mut sent = 0;
        let mut pending = t.start(now);
        let mut expect: u64 = 1;
        loop {
            sent += pending.len();
            let mut last_block = None;
            for pkt in &pending {
                match Packet::parse(pkt).unwrap() {
                    Packet::OptionAck { .. } => last_block = Some(0u16),
                    Packet::Data { block, data } => {
                        assert_eq!(u64::from(block), expect % 65536);
                        got.extend_from_slice(data);
                        expect += 1;
                        last_block = Some(block);
                    }
                    p => panic!("{p:?}"),
                }
            }
            match t.on_packet(&ack(last_block.unwrap()), now) {
                Step::Send(p) => pending = p,
                Step::Done => return (got, sent),
                s => panic!("{s:?}"),
            }
        }
    }

    #[test]
    fn negotiation_caps_and_echoes() {
        let (p, oack) = negotiate(&opts(&[("blksize", "65464"), ("tsize", "0"), ("windowsize", "64"), ("timeout", "3"), ("bogus", "1")]), 1234, LIMITS);
        assert_eq!(p.blksize, 1468);
        assert_eq!(p.windowsize, 32);
        assert_eq!(p.max_rto, Duration::from_secs(3));
        assert_eq!(oack, opts(&[("blksize", "1468"), ("tsize", "1234"), ("windowsize", "32"), ("timeout", "3")]));
        let (p, oack) = negotiate(&opts(&[("blksize", "4")]), 1, LIMITS);
        assert_eq!((p.blksize, oack.len()), (512, 0));
    }

    #[test]
    fn files_arrive_whole_with_and_without_options() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        assert_eq!(fetch(&data, &[]).0, data);
        assert_eq!(fetch(&data, &[("blksize", "1432"), ("tsize", "0")]).0, data);
        let (got, sent) = fetch(&data, &[("blksize", "1468"), ("windowsize", "8")]);
        assert_eq!(got, data);
        assert_eq!(sent, 1 + data.len() / 1468 + 1);
        // A multiple of blksize ends with an empty block.
        let even = vec![1u8; 1024];
        let (got, sent) = fetch(&even, &[]);
        assert_eq!((got.len(), sent), (1024, 3));
        assert_eq!(fetch(&[], &[]).0, Vec::<u8>::new());
    }

    #[test]
    fn block_numbers_roll_over() {
        // 70,000 blocks of 8 bytes: past 65535 the numbers go on from 0.
        let data = vec![0x5a; 8 * 70_000 + 3];
        let (got, _) = fetch(&data, &[("blksize", "8"), ("windowsize", "16")]);
        assert_eq!(got, data);
    }

    #[test]
    fn duplicate_acks_are_not_answered_and_loss_costs_one_timer() {
        let data = vec![9u8; 512 * 10];
        let (p, oack) = negotiate(&[], data.len() as u64, LIMITS);
        let t0 = Instant::now();
        let mut t = Transfer::new(data.into(), p, oack, t0);
        assert_eq!(t.start(t0).len(), 1);
        assert!(matches!(t.on_packet(&ack(1), t0), Step::Send(ref v) if v.len() == 1));
        // The same ACK again (the Sorcerer's Apprentice trigger): nothing is sent.
        assert_eq!(t.on_packet(&ack(1), t0), Step::Wait);
        assert_eq!(t.on_packet(&ack(0), t0), Step::Wait);
        // Block 2 is lost: the timer resends it, well under a second later.
        assert!(t.deadline() - t0 <= Duration::from_millis(250));
        match t.on_timeout(t.deadline()) {
            Step::Send(v) => assert_eq!(Packet::parse(&v[0]).unwrap(), Packet::Data { block: 2, data: &[9u8; 512][..] }),
            s => panic!("{s:?}"),
        }
        assert_eq!(t.retransmits, 1);
    }

    #[test]
    fn windows_restart_after_the_last_block_in_order() {
        let data = vec![1u8; 512 * 20];
        let (p, oack) = negotiate(&opts(&[("windowsize", "4")]), data.len() as u64, LIMITS);
        let now = Instant::now();
        let mut t = Transfer::new(data.into(), p, oack, now);
        t.start(now);
        let w = match t.on_packet(&ack(0), now) { Step::Send(v) => v, s => panic!("{s:?}") };
        assert_eq!(w.len(), 4);
        // Block 3 lost: the client ACKs 2; the next window is 3..=6.
        match t.on_packet(&ack(2), now) {
            Step::Send(v) => {
                let blocks: Vec<u16> = v.iter().map(|p| match Packet::parse(p).unwrap() { Packet::Data { block, .. } => block, _ => 0 }).collect();
                assert_eq!(blocks, vec![3, 4, 5, 6]);
            }
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_resumed_transfer_goes_on_from_the_clients_next_ack() {
        let data: Vec<u8> = (0..512 * 10 + 7).map(|i| i as u8).collect();
        let (p, _) = negotiate(&opts(&[("windowsize", "2")]), data.len() as u64, LIMITS);
        let now = Instant::now();
        let mut t = Transfer::resumed(data.clone().into(), p, now);
        // The client had blocks 1..=4 and acknowledges 4: blocks 5 and 6 follow.
        match t.on_packet(&ack(4), now) {
            Step::Send(v) => {
                let got: Vec<(u16, usize)> = v.iter().map(|p| match Packet::parse(p).unwrap() { Packet::Data { block, data } => (block, data.len()), _ => (0, 0) }).collect();
                assert_eq!(got, [(5, 512), (6, 512)]);
            }
            s => panic!("{s:?}"),
        }
        // From then on it is an ordinary transfer to its end.
        assert!(matches!(t.on_packet(&ack(6), now), Step::Send(_)));
        assert!(matches!(t.on_packet(&ack(8), now), Step::Send(_)));
        assert!(matches!(t.on_packet(&ack(10), now), Step::Send(ref v) if v.len() == 1));
        assert_eq!(t.on_packet(&ack(11), now), Step::Done);
        // A client that had everything but the final ACK answered: done at once.
        let mut t = Transfer::resumed(data.into(), p, now);
        assert_eq!(t.on_packet(&ack(11), now), Step::Done);
    }

    /// Times the timer fires before the transfer is given up, and how long that takes.
    fn give_up(t: &mut Transfer, mut now: Instant) -> (u32, Duration) {
        let start = now;
        for steps in 1..=MAX_TRIES + 1 {
            now = t.deadline();
            if let Step::Abort(..) = t.on_timeout(now) {
                return (steps, now - start);
            }
        }
        panic!("never gave up");
    }

    #[test]
    fn a_client_that_never_answered_gets_three_data_blocks_and_a_bounded_time() {
        // Issue 13: a forged request got 12 resends of block 1 reflected to its victim, and
        // with `timeout 255` held its transfer for ~13 minutes.
        let (p, oack) = negotiate(&[], 10_000, LIMITS);
        let now = Instant::now();
        let mut t = Transfer::new(vec![0u8; 10_000].into(), p, oack, now);
        assert!(matches!(Packet::parse(&t.start(now)[0]), Ok(Packet::Data { block: 1, .. })));
        let (steps, took) = give_up(&mut t, now);
        assert_eq!((steps, t.retransmits), (UNCONFIRMED_TRIES, u64::from(UNCONFIRMED_TRIES - 1)));
        assert!(took <= MAX_RTO * UNCONFIRMED_TRIES, "{took:?}");
        // With options the first packet is an OACK, as small as the request: retried like any
        // packet (a client slow to answer in a storm keeps its transfer), in bounded time.
        for o in [&[("timeout", "255")][..], &[("timeout", "255"), ("blksize", "1468")][..]] {
            let (p, oack) = negotiate(&opts(o), 10_000, LIMITS);
            assert!(p.max_rto <= MAX_RTO);
            let mut t = Transfer::new(vec![0u8; 10_000].into(), p, oack, now);
            assert!(matches!(Packet::parse(&t.start(now)[0]), Ok(Packet::OptionAck { .. })));
            let (steps, took) = give_up(&mut t, now);
            assert_eq!(steps, MAX_TRIES + 1, "{o:?}");
            assert!(took <= MAX_RTO * (MAX_TRIES + 1), "{o:?}: {took:?}");
        }
    }

    #[test]
    fn a_client_that_goes_silent_mid_transfer_is_given_up_within_bounded_time() {
        let (p, oack) = negotiate(&opts(&[("timeout", "255")]), 10_000, LIMITS);
        assert_eq!(oack, opts(&[("timeout", "255")]), "the client's own timer is acknowledged as asked");
        let now = Instant::now();
        let mut t = Transfer::new(vec![0u8; 10_000].into(), p, oack, now);
        t.start(now);
        assert!(matches!(t.on_packet(&ack(0), now), Step::Send(_)));
        let (steps, took) = give_up(&mut t, now);
        assert_eq!(steps, MAX_TRIES + 1);
        assert!(took <= MAX_RTO * (MAX_TRIES + 1), "{took:?}");
    }
}
