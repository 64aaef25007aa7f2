//! The client side of a TFTP read, sans-IO: what a PXE ROM or iPXE does, for the bench's
//! simulated machines and the tests. Sends the RRQ with options, accepts an OACK, ACKs each
//! window's last block (every block with windowsize 1), resends its last ACK when the server
//! goes quiet, and follows block-number rollover.

use super::packet::Packet;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub file: String,
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    pub tsize: bool,
}

impl Request {
    pub fn rrq(&self) -> Vec<u8> {
        let mut options = Vec::new();
        if let Some(b) = self.blksize {
            options.push(("blksize".to_string(), b.to_string()));
        }
        if self.tsize {
            options.push(("tsize".to_string(), "0".to_string()));
        }
        if let Some(w) = self.windowsize {
            options.push(("windowsize".to_string(), w.to_string()));
        }
        Packet::Request { write: false, file: self.file.clone(), mode: "octet".into(), options }.to_vec()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    Send(Vec<u8>),
    Wait,
    /// The whole file arrived; a final ACK to send.
    Done(Vec<u8>),
    Failed(String),
}

pub struct ClientTransfer {
    pub data: Vec<u8>,
    blksize: usize,
    window: u64,
    /// Blocks received in order.
    received: u64,
    since_ack: u64,
    last_ack: Vec<u8>,
    last_activity: Instant,
    pub retransmits: u64,
    pub tsize: Option<u64>,
}

impl ClientTransfer {
    pub fn new(now: Instant) -> ClientTransfer {
        ClientTransfer {
            data: Vec::new(),
            blksize: 512,
            window: 1,
            received: 0,
            since_ack: 0,
            last_ack: Vec::new(),
            last_activity: now,
            retransmits: 0,
            tsize: None,
        }
    }

    fn ack(&mut self, block: u64) -> Vec<u8> {
        self.since_ack = 0;
        self.last_ack = Packet::Ack { block: (block % 65536) as u16 }.to_vec();
        self.last_ack.clone()
    }

    pub fn on_packet(&mut self, bytes: &[u8], now: Instant) -> ClientStep {
        match Packet::parse(bytes) {
            Ok(Packet::OptionAck { options }) if self.received == 0 => {
                self.last_activity = now;
                for (k, v) in options {
                    match (k.as_str(), v.parse::<u64>()) {
                        ("blksize", Ok(n)) => self.blksize = n as usize,
                        ("windowsize", Ok(n)) => self.window = n.max(1),
                        ("tsize", Ok(n)) => self.tsize = Some(n),
                        _ => {}
                    }
                }
                ClientStep::Send(self.ack(0))
            }
            Ok(Packet::Data { block, data }) => {
                self.last_activity = now;
                let expected = (self.received + 1) % 65536;
                if u64::from(block) != expected {
                    // A block again (our ACK was lost: the server resent it) or out of order (a
                    // lost block): ACK the last in-order one at once (RFC 1350, RFC 7440). Without
                    // it a lost ACK deadlocks a lock-step transfer: the server resends, and each
                    // resend keeps the client's own timer from firing.
                    return ClientStep::Send(self.ack(self.received));
                }
                self.received += 1;
                self.since_ack += 1;
                self.data.extend_from_slice(data);
                if data.len() < self.blksize {
                    return ClientStep::Done(self.ack(self.received));
                }
                if self.since_ack >= self.window {
                    return ClientStep::Send(self.ack(self.received));
                }
                ClientStep::Wait
            }
            Ok(Packet::Error { code, message }) => ClientStep::Failed(format!("error {code}: {message}")),
            _ => ClientStep::Wait,
        }
    }

    /// Called when nothing arrived for `timeout`: resend the last ACK (or the RRQ, `rrq`).
    pub fn on_timeout(&mut self, rrq: &[u8], now: Instant) -> ClientStep {
        self.last_activity = now;
        self.retransmits += 1;
        if self.last_ack.is_empty() { ClientStep::Send(rrq.to_vec()) } else { ClientStep::Send(self.last_ack.clone()) }
    }

    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_activity)
    }
}

#[cfg(test)]
mod tests {
    use super::super::transfer::{Step, Transfer, negotiate};
    use super::*;

    /// A lost ACK: the server resends the block, and the client must ACK it again.
    #[test]
    fn a_resent_block_is_acknowledged_again() {
        let now = Instant::now();
        let mut c = ClientTransfer::new(now);
        let block1 = Packet::Data { block: 1, data: &[7u8; 512] }.to_vec();
        assert_eq!(c.on_packet(&block1, now), ClientStep::Send(Packet::Ack { block: 1 }.to_vec()));
        assert_eq!(c.on_packet(&block1, now), ClientStep::Send(Packet::Ack { block: 1 }.to_vec()), "the duplicate is ACKed");
        assert_eq!(c.data.len(), 512, "and not stored twice");
    }

    /// The client and the server core against each other, with every 7th server packet lost.
    #[test]
    fn client_and_server_cores_complete_through_loss() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
        for (blksize, window) in [(None, None), (Some(1432), None), (Some(1468), Some(8))] {
            let req = Request { file: "f".into(), blksize, windowsize: window, tsize: true };
            let rrq = req.rrq();
            let Ok(Packet::Request { options, .. }) = Packet::parse(&rrq) else { panic!() };
            let limits = crate::tftp::transfer::TEST_LIMITS;
            let (p, oack) = negotiate(&options, data.len() as u64, limits);
            let mut now = Instant::now();
            let mut server = Transfer::new(data.clone().into(), p, oack, now);
            let mut client = ClientTransfer::new(now);
            let mut to_client = server.start(now);
            let mut n = 0u64;
            let mut done = false;
            for _ in 0..100_000 {
                let mut to_server = Vec::new();
                for pkt in to_client.drain(..) {
                    n += 1;
                    if n.is_multiple_of(7) {
                        continue; // lost
                    }
                    match client.on_packet(&pkt, now) {
                        ClientStep::Send(a) => to_server.push(a),
                        ClientStep::Done(a) => {
                            to_server.push(a);
                            done = true;
                        }
                        ClientStep::Failed(e) => panic!("{e}"),
                        ClientStep::Wait => {}
                    }
                }
                for a in to_server {
                    match server.on_packet(&a, now) {
                        Step::Send(v) => to_client.extend(v),
                        Step::Done => {}
                        Step::Wait => {}
                        Step::Abort(_, why) => panic!("{why}"),
                    }
                }
                if done {
                    break;
                }
                if to_client.is_empty() {
                    now = server.deadline();
                    match server.on_timeout(now) {
                        Step::Send(v) => to_client.extend(v),
                        s => panic!("{s:?}"),
                    }
                }
            }
            assert!(done, "{blksize:?}/{window:?} did not finish");
            assert_eq!(client.data, data);
            assert_eq!(client.tsize, Some(data.len() as u64));
        }
    }
}
