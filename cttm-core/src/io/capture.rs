//! The capture edge: frames in, in capture order, each with its capture time and link type,
//! borrowed from the source for the duration of a visit; and, for a source that holds packets
//! until told (NFQUEUE in sync mode), the deferred verdicts ([`HeldPacketQueue`]).

use crate::time::Instant;
use crate::wire::LinkType;
use std::time::Duration;
use thiserror::Error;

/// One captured frame, borrowed from the source for the duration of a visit.
#[derive(Clone, Copy, Debug)]
pub struct CapturedFrame<'a> {
    /// Capture time (microseconds; the origin is the source's, e.g. the Unix epoch for live
    /// and pcap sources).
    pub at: Instant,
    /// Link type of `data`.
    pub link: LinkType,
    /// The frame as captured, starting with its link-layer header.
    pub data: &'a [u8],
}

/// Counters every source keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames handed out.
    pub frames: u64,
    /// Frames the kernel (or the source) dropped before they could be handed out. Any drop
    /// means some connection may have a hole: the caller must mark connections unsafe.
    pub dropped: u64,
}

/// Why a capture operation failed.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// A finite source (file, memory) has no more frames.
    #[error("end of capture")]
    EndOfCapture,
    /// The operation needs CAP_NET_ADMIN / CAP_NET_RAW; run as root or grant the capability.
    #[error("{what} needs CAP_NET_RAW/CAP_NET_ADMIN: run as root or grant the capability")]
    PermissionDenied {
        /// What was attempted.
        what: &'static str,
    },
    /// No interface of that name in this network namespace.
    #[error("no network interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    /// A file is not a pcap or pcapng capture, or is corrupted.
    #[error("bad capture file: {0}")]
    BadFile(String),
    /// The capture file uses a link type CTTM cannot parse.
    #[error("unsupported link type {0} (supported: Ethernet, Linux SLL, raw IP)")]
    UnsupportedLinkType(u32),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A source of captured frames.
///
/// Contract: frames are visited in capture order; `read_batch` waits at most `timeout` for
/// the first frame, then visits what is available without waiting more, and returns how many
/// frames it visited (0 on timeout). A finite source returns [`CaptureError::EndOfCapture`]
/// once exhausted. The borrowed data is valid only during the visit. [`CaptureSource::stats`]
/// reports drops so the caller can mark affected connections unsafe; a source never hides a
/// drop.
pub trait CaptureSource {
    /// Visits the next batch of frames.
    fn read_batch(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(CapturedFrame<'_>),
    ) -> Result<usize, CaptureError>;

    /// Counters so far.
    fn stats(&self) -> CaptureStats;
}

/// The kernel's id of one queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(pub u32);

impl std::fmt::Display for PacketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A queued packet being visited: it stays held after the visit.
#[derive(Clone, Copy, Debug)]
pub struct HeldFrame<'a> {
    /// Its id, for the verdict.
    pub id: PacketId,
    /// The packet (raw IP).
    pub frame: CapturedFrame<'a>,
}

/// A source whose packets wait for a verdict: each packet visited by
/// [`read_held`](Self::read_held) stays held until [`accept`](Self::accept) lets it out or
/// [`discard`](Self::discard) drops it (output commit holds a server segment until the backup
/// holds what it reveals).
///
/// Contract: packets are visited in queue order; a verdict on an id not held fails with the
/// source's error and changes nothing; packets accepted together leave in the order given;
/// when the source is dropped every packet still held is accepted (fail-open: the service
/// never stalls because its agent stopped).
pub trait HeldPacketQueue: CaptureSource {
    /// Why a verdict failed.
    type VerdictError: std::error::Error + Send + Sync + 'static;

    /// Visits queued packets, waiting at most `timeout` for the first; each stays held.
    fn read_held(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(HeldFrame<'_>),
    ) -> Result<usize, CaptureError>;

    /// Lets these held packets out, in the order given (stops at the first error; the
    /// packets before it are out).
    fn accept(&mut self, ids: &[PacketId]) -> Result<(), Self::VerdictError>;

    /// Drops one held packet (TCP retransmits it).
    fn discard(&mut self, id: PacketId) -> Result<(), Self::VerdictError>;

    /// Ids of the packets held, in queue order.
    fn held_ids(&self) -> Vec<PacketId>;
}
