//! One AF_XDP socket with its own UMEM, bound to one RX queue of an interface, in copy mode
//! (veth and most NICs have no zero-copy). Frames are received in batches and handed out as
//! byte slices; frames to send are written in place into free UMEM frames and sent in batches.
//! Used by the TFTP engine (`tftp/afxdp.rs`) and by the bench's load generators.

use anyhow::Context;
use std::os::fd::RawFd;
use xdp::slab::{HeapSlab, Slab};

/// Frames handed out per [`Xsk::recv`].
const RX_BATCH: usize = 64;
/// Frames queued per TX wakeup: what the kernel transmits per wakeup in copy mode, so that the
/// TX ring does not fill with frames that wait (and time out) behind each other.
const TX_BATCH: usize = 32;

/// UMEM and ring sizes (2 KiB frames).
#[derive(Debug, Clone, Copy)]
pub struct XskSizes {
    /// UMEM frames.
    pub frames: u32,
    /// Of which lent to the kernel for receiving.
    pub fill: u32,
    /// Entries of each ring (a power of two).
    pub ring: u32,
}

impl XskSizes {
    /// 8192 frames (16 MiB), 2048 lent for RX, rings of 4096.
    pub const DEFAULT: XskSizes = XskSizes { frames: 8192, fill: 2048, ring: 4096 };
}

/// What a socket's kernel side dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskDrops {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_empty: u64,
}

/// The longest frame [`Xsk::push`] sends: a UMEM frame is 2 KiB, and the xdp crate starts a
/// frame it hands out for sending after the kernel's XDP_PACKET_HEADROOM (256 bytes). Checked by
/// the lab test `a_large_blksize_on_a_jumbo_link_fits_the_afxdp_frames`.
pub const MAX_FRAME: usize = 2048 - 256;

pub struct Xsk {
    sock: xdp::socket::XdpSocket,
    umem: xdp::Umem,
    fill: xdp::WakableFillRing,
    rx: xdp::RxRing,
    tx: xdp::WakableTxRing,
    completion: xdp::CompletionRing,
    ring: u32,
    rx_slab: HeapSlab,
    tx_slab: HeapSlab,
}

// SAFETY: the slabs hold only frames of this socket's own UMEM (raw pointers into its mapping),
// and the socket moves between threads as a whole, with its UMEM and rings.
unsafe impl Send for Xsk {}

impl Xsk {
    /// Opens a socket on queue `queue` of `ifname` (call inside the interface's namespace).
    pub fn open(ifname: &str, queue: u32, sizes: XskSizes) -> anyhow::Result<Xsk> {
        let name = std::ffi::CString::new(ifname)?;
        let nic = xdp::nic::NicIndex::lookup_by_name(&name)?.with_context(|| format!("no interface {ifname}"))?;
        let cfg = xdp::umem::UmemCfgBuilder { frame_size: xdp::umem::FrameSize::TwoK, frame_count: sizes.frames, ..Default::default() }.build()?;
        let mut umem = xdp::Umem::map(cfg).context("UMEM")?;
        let mut builder = xdp::socket::XdpSocketBuilder::new().context("AF_XDP socket")?;
        let rings = xdp::RingConfigBuilder { rx_count: sizes.ring, tx_count: sizes.ring, fill_count: sizes.ring, completion_count: sizes.ring }.build()?;
        let (rings, mut flags) = builder.build_wakable_rings(&umem, rings).context("AF_XDP rings")?;
        flags.force_copy();
        let sock = builder.bind(nic, queue, flags).with_context(|| format!("binding AF_XDP to {ifname} queue {queue}"))?;
        let xdp::WakableRings { mut fill_ring, rx_ring, completion_ring, tx_ring } = rings;
        unsafe { fill_ring.enqueue(&mut umem, sizes.fill as usize, true)? };
        Ok(Xsk {
            sock,
            umem,
            fill: fill_ring,
            rx: rx_ring.context("no RX ring")?,
            tx: tx_ring.context("no TX ring")?,
            completion: completion_ring,
            ring: sizes.ring,
            rx_slab: HeapSlab::with_capacity(RX_BATCH),
            tx_slab: HeapSlab::with_capacity(TX_BATCH),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.sock.raw_fd()
    }

    pub fn drops(&self) -> XskDrops {
        self.sock
            .statistics()
            .map(|st| XskDrops { rx_dropped: st.rx_dropped, rx_ring_full: st.rx_ring_full, rx_fill_empty: st.rx_fill_ring_empty_descs })
            .unwrap_or_default()
    }

    /// Hands up to one batch of received frames to `f` and gives their UMEM frames back to the
    /// kernel. Returns how many there were (fewer than a batch: the ring is empty for now).
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let n = unsafe { self.rx.recv(&self.umem, &mut self.rx_slab) };
        if n == 0 {
            return 0;
        }
        while let Some(packet) = self.rx_slab.pop_back() {
            f(&packet);
            self.umem.free_packet(packet);
        }
        if let Err(e) = unsafe { self.fill.enqueue(&mut self.umem, n, true) } {
            tracing::warn!("AF_XDP fill ring: {e}");
        }
        n
    }

    /// Frames [`Xsk::recv`] hands out at most: a call that returns this many may have left
    /// more in the ring.
    pub const fn rx_batch() -> usize {
        RX_BATCH
    }

    /// [`Xsk::recv`] until the ring is empty; returns how many frames there were.
    pub fn recv_all(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut total = 0;
        loop {
            let n = self.recv(&mut f);
            total += n;
            if n < RX_BATCH {
                return total;
            }
        }
    }

    /// Writes one frame in place into a free UMEM frame (`write` gets the frame's buffer and
    /// returns the frame's length) and queues it; a full batch is sent at once. False when no
    /// frame was free or the ring did not take it (the frame is dropped: callers retransmit).
    pub fn push(&mut self, write: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let packet = match unsafe { self.umem.alloc() } {
            Some(p) => Some(p),
            None => {
                // Frames the kernel has sent come back through the completion ring.
                self.completion.dequeue(&mut self.umem, self.ring as usize);
                unsafe { self.umem.alloc() }
            }
        };
        let Some(mut packet) = packet else { return false };
        let room = packet.capacity();
        if packet.adjust_tail(room as i32).is_err() {
            self.umem.free_packet(packet);
            return false;
        }
        let len = write(&mut packet);
        if len == 0 || len > room || packet.adjust_tail(len as i32 - room as i32).is_err() {
            self.umem.free_packet(packet);
            return false;
        }
        if let Some(p) = self.tx_slab.push_front(packet) {
            self.umem.free_packet(p);
            return false;
        }
        if self.tx_slab.available() == 0 {
            return self.send() == 0;
        }
        true
    }

    /// Sends what [`Xsk::push`] queued; returns how many frames the ring did not take.
    pub fn flush(&mut self) -> usize {
        self.completion.dequeue(&mut self.umem, self.ring as usize);
        if self.tx_slab.is_empty() { 0 } else { self.send() }
    }

    fn send(&mut self) -> usize {
        // In copy mode one wakeup transmits at most 32 descriptors (the kernel's TX batch): one
        // wakeup per TX_BATCH frames. (Kicking again until the ring is empty overran the
        // 256-frame veth ring of the lab's receiving end and lost a third of a 10000-machine
        // storm.)
        if let Err(e) = unsafe { self.tx.send(&mut self.tx_slab, true) } {
            tracing::debug!("AF_XDP send: {e}");
        }
        let mut dropped = 0;
        while let Some(p) = self.tx_slab.pop_back() {
            dropped += 1;
            self.umem.free_packet(p);
        }
        dropped
    }
}

/// Waits until one of `socks` has a frame to receive, at most `timeout_ms`.
pub fn poll(socks: &[Xsk], timeout_ms: i32) {
    let mut fds: Vec<libc::pollfd> = socks.iter().map(|x| libc::pollfd { fd: x.raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
}

/// How a load generator's busy loop waits after a turn that found nothing: it yields for a
/// while (the next frame is usually microseconds away), then sleeps in [`poll`] for a
/// millisecond at a time, so that a slow server gets the CPUs.
#[derive(Debug, Default)]
pub struct IdleWait {
    idle: u32,
}

impl IdleWait {
    /// Idle turns spent yielding before sleeping.
    const SPINS: u32 = 200;

    pub fn after_turn(&mut self, busy: bool, socks: &[Xsk]) {
        if busy {
            self.idle = 0;
            return;
        }
        self.idle = self.idle.saturating_add(1);
        if self.idle < Self::SPINS {
            std::thread::yield_now();
        } else {
            poll(socks, 1);
        }
    }
}
