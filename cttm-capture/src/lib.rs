//! # cttm-capture: where the tracker's input comes from
//!
//! Every source implements [`CaptureSource`]: it hands out batches of captured frames, each
//! with its capture time and link type, without a copy per frame where the backend allows it.
//!
//! | source | module | feature |
//! |---|---|---|
//! | in-memory (tests, simulation) | [`memory`] | always |
//! | pcap and pcapng files (replay, and writing what an agent saw) | [`pcap`] | always |
//! | AF_PACKET live capture, TPACKET_V3 ring, kernel BPF filter | `af_packet` | `af-packet` |
//! | NFQUEUE, with verdicts the caller gives later (output commit) | `nfqueue` | `nfqueue` |
#![cfg_attr(
    not(any(feature = "af-packet", feature = "nfqueue")),
    forbid(unsafe_code)
)]

#[cfg(feature = "af-packet")]
pub mod af_packet;
pub mod bpf;
pub mod feed;
pub mod memory;
#[cfg(feature = "nfqueue")]
pub mod nfqueue;
pub mod pcap;

pub use feed::{DropWatch, FeedOutcome, feed_tracker};
pub use memory::MemorySource;

use cttm_core::{Instant, LinkType};
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
