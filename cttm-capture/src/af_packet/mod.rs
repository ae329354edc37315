//! Live capture with AF_PACKET on one interface of the caller's network namespace.
//!
//! The socket is an AF_PACKET `SOCK_RAW` socket bound to the interface, so frames start with
//! their Ethernet header ([`LinkType::Ethernet`]). A classic BPF program generated from the
//! [`ServiceSet`] (see [`crate::bpf`]) runs in the kernel and passes only TCP segments to and
//! from the services, both directions, IPv4 and IPv6. It is attached before the socket is
//! bound, so no unfiltered frame is ever queued.
//!
//! Two receive paths ([`CaptureMode`]):
//! - [`CaptureMode::Ring`] (default): a memory-mapped TPACKET_V3 ring. Frames of a block are
//!   visited in place, without a copy per frame, and the block goes back to the kernel right
//!   after the visit. Timestamps come from the ring (`tp_sec`/`tp_nsec`).
//! - [`CaptureMode::Recv`]: one `recvmsg` per frame into a reusable buffer, with
//!   `SO_TIMESTAMPNS` timestamps. Used on request, and automatically when the ring cannot be
//!   set up ([`AfPacketSource::ring_fallback`] says why).
//!
//! Directions: AF_PACKET sees the host's outgoing frames (`PACKET_OUTGOING`) as well as the
//! incoming ones, which is what the tracker needs (DESIGN.md: every server segment is seen as
//! sent). On a veth or any real device bound by index each frame is seen exactly once. On the
//! loopback device the kernel shows every frame twice (once outgoing, once incoming), so the
//! outgoing copy is skipped there.
//!
//! Outgoing frames can be GSO super-segments larger than the MTU with checksums not filled in
//! (offload); the ring's blocks are sized for them (1 MiB by default) and they are handed out
//! whole. Drops: the kernel counts frames that found the ring (or the socket buffer) full;
//! [`CaptureStats::dropped`] reports them after each batch, and any drop means the caller must
//! mark connections unsafe.
//!
//! Timestamps are [`Instant`]s in microseconds since the Unix epoch.

mod recv;
mod ring;
mod socket;

pub use socket::KernelCounters;

use crate::bpf::{self, FilterOptions};
use crate::{CaptureError, CaptureSource, CaptureStats, CapturedFrame};
use cttm_core::{Instant, LinkType, ServiceSet};
use recv::{Received, Receiver};
use ring::Ring;
use socket::PacketSocket;
use std::io;
use std::time::Duration;

/// `ARPHRD_ETHER` and `ARPHRD_LOOPBACK` (include/uapi/linux/if_arp.h): the link types whose
/// frames start with a 14-byte Ethernet header.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_LOOPBACK: u16 = 772;

/// How frames are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// The memory-mapped TPACKET_V3 ring (falls back to [`CaptureMode::Recv`] if the ring
    /// cannot be set up).
    Ring,
    /// One receive system call per frame.
    Recv,
}

/// Geometry of the TPACKET_V3 ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block: a power of two, a multiple of the page size, and larger than the
    /// largest frame (GSO super-segments reach 64 KiB). Default 1 MiB.
    pub block_size: u32,
    /// Blocks in the ring. Default 64 (64 MiB: about a thousand 64 KiB GSO super-segments,
    /// the burst the ring absorbs while the reader is busy).
    pub block_count: u32,
    /// The nominal frame size the kernel sizes its bookkeeping with (V3 packs frames of any
    /// length into blocks). Default 2048.
    pub frame_size: u32,
    /// How long the kernel keeps a partly filled block before handing it over
    /// (`tp_retire_blk_tov`, whole milliseconds, at least 1, rounded up to jiffies by the
    /// kernel's retire timer): the latency bound of the ring while traffic is too light to
    /// fill blocks. Default 10 ms; see [`RingConfig::low_latency`].
    pub block_timeout: Duration,
}

impl RingConfig {
    /// A ring for consumers that must see each frame within about a millisecond (async
    /// replication, whose loss window this delay is part of): blocks retire after 1 ms, and
    /// are 256 KiB (still four 64 KiB GSO super-segments) so that the many part-filled
    /// blocks a short timeout retires waste little; 256 of them keep the default's 64 MiB
    /// of burst room.
    pub fn low_latency() -> Self {
        RingConfig {
            block_size: 256 << 10,
            block_count: 256,
            block_timeout: Duration::from_millis(1),
            ..RingConfig::default()
        }
    }
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_size: 1 << 20,
            block_count: 64,
            frame_size: 2048,
            block_timeout: Duration::from_millis(10),
        }
    }
}

/// Settings of an [`AfPacketSource`].
#[derive(Clone, Debug)]
pub struct AfPacketConfig {
    /// The interface to capture on (in the calling thread's network namespace).
    pub interface: String,
    /// The services whose segments pass the kernel filter.
    pub services: ServiceSet,
    /// How frames are received. Default [`CaptureMode::Ring`].
    pub mode: CaptureMode,
    /// Ring geometry (ring mode).
    pub ring: RingConfig,
    /// Filter generation options.
    pub filter: FilterOptions,
    /// Most frames visited per [`CaptureSource::read_batch`] in receive mode. Default 256.
    pub recv_batch: usize,
    /// Receive buffer per frame in receive mode; longer frames are cut. Default 256 KiB.
    pub recv_buffer: usize,
    /// The socket's receive queue in receive mode (`SO_RCVBUFFORCE`, else `SO_RCVBUF`,
    /// which `net.core.rmem_max` caps): frames arriving while it is full are kernel drops.
    /// Default 16 MiB.
    pub recv_socket_buffer: usize,
    /// Receive mode: ask the kernel for each frame's arrival time (`SO_TIMESTAMPNS`).
    /// Default true. Asking turns on receive timestamps for every packet of the host for as
    /// long as the socket lives (the switch is global: `net_enable_timestamp`,
    /// net/core/dev.c), which other programs notice (NFQUEUE messages, for one, then carry
    /// `NFQA_TIMESTAMP`). When false, a frame's time is the wall clock when it is received,
    /// microseconds later.
    pub recv_kernel_timestamps: bool,
}

impl AfPacketConfig {
    /// Defaults for capturing `services` on `interface`.
    pub fn new(interface: impl Into<String>, services: ServiceSet) -> Self {
        AfPacketConfig {
            interface: interface.into(),
            services,
            mode: CaptureMode::Ring,
            ring: RingConfig::default(),
            filter: FilterOptions::default(),
            recv_batch: 256,
            recv_buffer: 256 << 10,
            recv_socket_buffer: 16 << 20,
            recv_kernel_timestamps: true,
        }
    }
}

/// One frame as a receive path reports it, before the loopback check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame<'a> {
    sec: u64,
    nsec: u64,
    packet_type: u8,
    hardware_type: u16,
    data: &'a [u8],
}

#[derive(Debug)]
enum Backend {
    Ring(Ring),
    Recv(Receiver),
}

/// Live capture on one interface. See the module documentation.
#[derive(Debug)]
pub struct AfPacketSource {
    // The ring is declared (so dropped) before the socket: unmap, then close.
    backend: Backend,
    socket: PacketSocket,
    ring_fallback: Option<String>,
    recv_batch: usize,
    stats: CaptureStats,
    kernel: KernelCounters,
}

impl AfPacketSource {
    /// Opens the capture: filter attached, ring mapped (or receive mode), bound to the
    /// interface. Needs CAP_NET_RAW in the calling thread's network namespace, which is the
    /// namespace captured.
    pub fn open(config: AfPacketConfig) -> Result<AfPacketSource, CaptureError> {
        let program =
            bpf::service_filter(&config.services, config.filter).map_err(|e| CaptureError::Io {
                what: "generating the service filter",
                source: io::Error::new(io::ErrorKind::InvalidInput, e),
            })?;
        let ifindex = PacketSocket::interface_index(&config.interface)?;
        let socket = PacketSocket::open()?;
        let hardware_type = socket.hardware_type(&config.interface)?;
        if hardware_type != ARPHRD_ETHER && hardware_type != ARPHRD_LOOPBACK {
            return Err(CaptureError::UnsupportedLinkType(u32::from(hardware_type)));
        }
        socket.attach_filter(&program)?;
        let mut ring_fallback = None;
        let backend = match config.mode {
            CaptureMode::Recv => None,
            CaptureMode::Ring => match Ring::map(&socket, &config.ring) {
                Ok(ring) => Some(Backend::Ring(ring)),
                Err(e) => {
                    ring_fallback =
                        Some(format!("TPACKET_V3 ring unavailable ({e}); using recvmsg"));
                    None
                }
            },
        };
        let backend = match backend {
            Some(b) => b,
            None => {
                if config.recv_kernel_timestamps {
                    socket.enable_timestamps()?;
                }
                socket.set_receive_buffer(config.recv_socket_buffer)?;
                Backend::Recv(Receiver::new(config.recv_buffer))
            }
        };
        socket.bind(ifindex)?;
        Ok(AfPacketSource {
            backend,
            socket,
            ring_fallback,
            recv_batch: config.recv_batch.max(1),
            stats: CaptureStats::default(),
            kernel: KernelCounters::default(),
        })
    }

    /// The receive path in use.
    pub fn mode(&self) -> CaptureMode {
        match self.backend {
            Backend::Ring(_) => CaptureMode::Ring,
            Backend::Recv(_) => CaptureMode::Recv,
        }
    }

    /// Why the ring was asked for but not used, if it was not.
    pub fn ring_fallback(&self) -> Option<&str> {
        self.ring_fallback.as_deref()
    }

    /// The kernel's counters, summed since the socket was opened (updated by each batch).
    pub fn kernel_counters(&self) -> KernelCounters {
        self.kernel
    }

    /// Reads the kernel counters now (they reset on read, so they are summed here).
    pub fn refresh_counters(&mut self) -> Result<(), CaptureError> {
        let taken = self
            .socket
            .take_statistics()
            .map_err(|source| CaptureError::Io {
                what: "reading PACKET_STATISTICS",
                source,
            })?;
        self.kernel.packets += taken.packets;
        self.kernel.drops += taken.drops;
        self.kernel.ring_freezes += taken.ring_freezes;
        self.stats.dropped = self.kernel.drops;
        Ok(())
    }
}

/// Hands a frame to the caller unless it is the loopback device's outgoing copy.
fn deliver(frame: Frame<'_>, visit: &mut dyn FnMut(CapturedFrame<'_>)) -> bool {
    if frame.hardware_type == ARPHRD_LOOPBACK && frame.packet_type == libc::PACKET_OUTGOING {
        return false;
    }
    let micros = frame
        .sec
        .saturating_mul(1_000_000)
        .saturating_add(frame.nsec / 1000);
    visit(CapturedFrame {
        at: Instant::from_micros(micros),
        link: LinkType::Ethernet,
        data: frame.data,
    });
    true
}

impl CaptureSource for AfPacketSource {
    fn read_batch(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(CapturedFrame<'_>),
    ) -> Result<usize, CaptureError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut delivered = 0usize;
        let mut deliver_counting = |frame: Frame<'_>| {
            if deliver(frame, visit) {
                delivered += 1;
            }
        };
        match &mut self.backend {
            Backend::Ring(ring) => {
                // Wait for the first block, then take every ready block (one lap at most).
                loop {
                    if ring.next_block_ready() {
                        break;
                    }
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    self.socket.wait_readable(left)?;
                }
                for _ in 0..ring.block_count() {
                    if !ring.next_block_ready() {
                        break;
                    }
                    ring.visit_next_block(&mut deliver_counting);
                }
            }
            Backend::Recv(receiver) => {
                let mut received = 0usize;
                loop {
                    match receiver.receive_one(&self.socket, &mut deliver_counting)? {
                        Received::Frame => {
                            received += 1;
                            if received >= self.recv_batch {
                                break;
                            }
                        }
                        // Wait only while nothing was received yet.
                        Received::Empty if received == 0 => {
                            let left =
                                deadline.saturating_duration_since(std::time::Instant::now());
                            if left.is_zero() || !self.socket.wait_readable(left)? {
                                break;
                            }
                        }
                        Received::Empty => break,
                    }
                }
            }
        }
        self.stats.frames += delivered as u64;
        self.refresh_counters()?;
        Ok(delivered)
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::ServiceEndpoint;

    fn services() -> ServiceSet {
        ServiceSet::new([ServiceEndpoint::new("127.0.0.1:1".parse().expect("addr"))])
    }

    #[test]
    fn unknown_interface_is_reported_by_name() {
        let err = AfPacketSource::open(AfPacketConfig::new("cttm-no-such0", services()))
            .expect_err("no such interface");
        assert!(
            matches!(err, CaptureError::NoSuchInterface(ref n) if n == "cttm-no-such0"),
            "{err}"
        );
        let err = AfPacketSource::open(AfPacketConfig::new("bad\0name", services()))
            .expect_err("bad name");
        assert!(matches!(err, CaptureError::NoSuchInterface(_)), "{err}");
    }

    #[test]
    fn low_latency_ring_is_a_valid_geometry_with_the_default_burst_room() {
        let fast = RingConfig::low_latency();
        let default = RingConfig::default();
        assert_eq!(fast.block_timeout, Duration::from_millis(1));
        assert!(fast.block_size.is_power_of_two() && fast.block_size.is_multiple_of(4096));
        assert!(
            fast.block_size > 64 << 10,
            "a GSO super-segment must fit a block"
        );
        assert!(fast.block_size.is_multiple_of(fast.frame_size));
        assert_eq!(
            u64::from(fast.block_size) * u64::from(fast.block_count),
            u64::from(default.block_size) * u64::from(default.block_count)
        );
    }

    #[test]
    fn empty_service_set_is_refused_before_any_socket() {
        let err = AfPacketSource::open(AfPacketConfig::new("lo", ServiceSet::default()))
            .expect_err("no services");
        assert!(err.to_string().contains("no service endpoint"), "{err}");
    }

    #[test]
    fn bad_ring_geometry_falls_back_to_recv() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root (AF_PACKET, a private network namespace)");
            return;
        }
        // On a thread of its own in a fresh network namespace: nothing of the host is seen.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let mut config = AfPacketConfig::new("lo", services());
            config.ring.block_size = 12345;
            let source = AfPacketSource::open(config).expect("open on lo");
            assert_eq!(source.mode(), CaptureMode::Recv);
            assert!(
                source
                    .ring_fallback()
                    .is_some_and(|r| r.contains("power of two"))
            );
            let mut good = AfPacketConfig::new("lo", services());
            good.ring.block_count = 2;
            assert_eq!(
                AfPacketSource::open(good).expect("open on lo").mode(),
                CaptureMode::Ring
            );
            let mut no_stamps = AfPacketConfig::new("lo", services());
            no_stamps.mode = CaptureMode::Recv;
            no_stamps.recv_kernel_timestamps = false;
            assert_eq!(
                AfPacketSource::open(no_stamps).expect("open on lo").mode(),
                CaptureMode::Recv
            );
            let mut fast = AfPacketConfig::new("lo", services());
            fast.ring = RingConfig::low_latency();
            assert_eq!(
                AfPacketSource::open(fast).expect("open on lo").mode(),
                CaptureMode::Ring
            );
        })
        .join()
        .expect("test thread");
    }
}
