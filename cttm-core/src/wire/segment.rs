//! The plain value a parsed segment becomes.

use crate::seq::SeqNumber;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// TCP header flags (RFC 9293 §3.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, Serialize, Deserialize)]
pub struct TcpFlags(u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// Acknowledgement field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Flags from the header's flag byte.
    pub const fn from_bits(bits: u8) -> TcpFlags {
        TcpFlags(bits)
    }

    /// The flag byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the flags of `other` added.
    #[must_use]
    pub const fn with(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    /// True when SYN is set.
    pub const fn syn(self) -> bool {
        self.contains(TcpFlags::SYN)
    }
    /// True when ACK is set.
    pub const fn ack(self) -> bool {
        self.contains(TcpFlags::ACK)
    }
    /// True when FIN is set.
    pub const fn fin(self) -> bool {
        self.contains(TcpFlags::FIN)
    }
    /// True when RST is set.
    pub const fn rst(self) -> bool {
        self.contains(TcpFlags::RST)
    }
}

/// The RFC 7323 timestamps option.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct TcpTimestamps {
    /// The sender's clock.
    pub tsval: u32,
    /// The echoed clock of the peer.
    pub tsecr: u32,
}

/// Up to four SACK blocks (RFC 2018 §3), each `[left, right)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, Serialize, Deserialize)]
pub struct SackBlocks {
    blocks: [(SeqNumber, SeqNumber); 4],
    len: u8,
}

impl SackBlocks {
    /// Adds a block; blocks past the fourth are ignored (the option holds at most four).
    pub fn push(&mut self, left: SeqNumber, right: SeqNumber) {
        if usize::from(self.len) < self.blocks.len() {
            self.blocks[usize::from(self.len)] = (left, right);
            self.len += 1;
        }
    }

    /// The blocks present.
    pub fn as_slice(&self) -> &[(SeqNumber, SeqNumber)] {
        &self.blocks[..usize::from(self.len)]
    }

    /// True when there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The TCP options the tracker cares about. Unknown options are skipped.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug, Serialize, Deserialize)]
pub struct TcpOptions {
    /// Maximum segment size (only meaningful on SYN segments).
    pub mss: Option<u16>,
    /// Window scale shift (only meaningful on SYN segments, RFC 7323 §2).
    pub window_scale: Option<u8>,
    /// SACK-permitted (only meaningful on SYN segments).
    pub sack_permitted: bool,
    /// SACK blocks.
    pub sack: SackBlocks,
    /// Timestamps.
    pub timestamps: Option<TcpTimestamps>,
}

/// One TCP segment as a plain value: what the tracker sees.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SegmentRepr<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number of the first byte (or of the SYN/FIN when no payload).
    pub seq: SeqNumber,
    /// Acknowledgement number (meaningful when `flags.ack()`).
    pub ack: SeqNumber,
    /// Header flags.
    pub flags: TcpFlags,
    /// The window field as carried (unscaled).
    pub window: u16,
    /// Options.
    pub options: TcpOptions,
    /// The payload (may exceed the MSS for GSO/GRO segments).
    pub payload: &'a [u8],
}

impl SegmentRepr<'_> {
    /// Sequence space occupied: payload bytes plus one for SYN and one for FIN.
    pub fn seq_len(&self) -> u64 {
        self.payload.len() as u64 + u64::from(self.flags.syn()) + u64::from(self.flags.fin())
    }
}
