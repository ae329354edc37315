//! Events: what the tracker learns about a connection, in the order it learns it.
//!
//! Every event a [`Tracker`](crate::Tracker) emits is also applied to its own
//! [`ConnectionRecord`](crate::record::ConnectionRecord); the [`Replica`](crate::Replica)
//! applies the same events to the same record type. So the events carry everything a
//! [`ConnectionSnapshot`](crate::ConnectionSnapshot) holds, and a replica fed every event
//! yields exactly the tracker's snapshot.
//!
//! Positions are stream offsets (`u64`, see [`seq`](crate::seq)): offset 0 is the first data
//! byte of a direction (ISN + 1).

use crate::endpoint::ConnectionId;
use crate::seq::SeqNumber;
use crate::time::Instant;
use crate::wire::TcpTimestamps;
use serde::{Deserialize, Serialize};

/// Which end of a connection sent something.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Side {
    /// The client (the unmodified peer that connected to the service).
    Client,
    /// The server (the service host).
    Server,
}

impl Side {
    /// The other side.
    pub const fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// What the three-way handshake negotiated (RFC 9293 §3.5, RFC 7323 §2–3, RFC 2018 §2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Handshake {
    /// The client's initial sequence number (its SYN's sequence number).
    pub client_isn: SeqNumber,
    /// The server's initial sequence number (its SYN-ACK's sequence number).
    pub server_isn: SeqNumber,
    /// The MSS the client announced: the largest segment the server may send.
    pub client_mss: Option<u16>,
    /// The MSS the server announced.
    pub server_mss: Option<u16>,
    /// The client's window scale shift, when both sides sent the option (RFC 7323 §2.2:
    /// scaling is on only if both SYNs carry it).
    pub client_window_scale: Option<u8>,
    /// The server's window scale shift, when both sides sent the option.
    pub server_window_scale: Option<u8>,
    /// Both SYNs carried SACK-permitted.
    pub sack_permitted: bool,
    /// Both SYNs carried timestamps (RFC 7323 §3.2).
    pub timestamps: bool,
    /// The TSval of the client's SYN, when it carried timestamps.
    pub client_syn_tsval: Option<u32>,
    /// The TSval of the server's SYN-ACK, when it carried timestamps.
    pub server_syn_tsval: Option<u32>,
    /// The window the client's SYN announced (never scaled, RFC 7323 §2.2).
    pub client_syn_window: u16,
    /// The window the server's SYN-ACK announced (never scaled).
    pub server_syn_window: u16,
    /// True when the handshake was not seen: ISNs are inferred from the first segments and the
    /// options are unknown, so the connection cannot be restored.
    pub mid_stream: bool,
}

impl Handshake {
    /// A handshake that negotiated no option (no MSS, scaling, SACK or timestamps) and
    /// announced zero windows: the base for hand-built events (`Handshake { client_mss:
    /// Some(1460), ..Handshake::without_options(a, b) }`).
    pub const fn without_options(client_isn: SeqNumber, server_isn: SeqNumber) -> Handshake {
        Handshake {
            client_isn,
            server_isn,
            client_mss: None,
            server_mss: None,
            client_window_scale: None,
            server_window_scale: None,
            sack_permitted: false,
            timestamps: false,
            client_syn_tsval: None,
            server_syn_tsval: None,
            client_syn_window: 0,
            server_syn_window: 0,
            mid_stream: false,
        }
    }

    /// The handshake of a connection picked up mid-stream: ISNs inferred, options unknown.
    pub const fn mid_stream(client_isn: SeqNumber, server_isn: SeqNumber) -> Handshake {
        let mut h = Handshake::without_options(client_isn, server_isn);
        h.mid_stream = true;
        h
    }
}

/// How a connection ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum CloseHow {
    /// Both FINs were sent and acknowledged (the server side then sits in TIME-WAIT or CLOSED).
    Graceful,
    /// A RST from the given side.
    Reset(Side),
    /// The tracker evicted it (table full or idle); nothing more will be reported about it.
    Evicted,
}

/// Why a connection cannot be restored exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum UnsafeReason {
    /// The handshake was not seen, so the options (MSS, window scale, SACK, timestamps) are
    /// unknown.
    MidStream,
    /// The peer acknowledged bytes of `side`'s stream that the capture never saw (capture
    /// drop): the stream has a hole at `offset`.
    CaptureHole {
        /// The direction with the hole.
        side: Side,
        /// The first missing byte.
        offset: u64,
    },
    /// The capture source reported frames it dropped (kernel ring overrun) while this
    /// connection was open: which bytes are missing is unknown.
    CaptureDrops {
        /// Frames the source reported dropped.
        frames: u64,
    },
    /// Out-of-order data exceeded the configured reassembly limit and was discarded.
    ReassemblyOverflow {
        /// The direction that overflowed.
        side: Side,
    },
    /// The retained bytes exceeded the configured retention limit.
    RetentionExceeded {
        /// The direction whose retained bytes overflowed.
        side: Side,
    },
}

/// One thing learned about one connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConnectionEvent {
    /// The connection.
    pub id: ConnectionId,
    /// Capture time of the segment that taught it.
    pub at: Instant,
    /// What was learned.
    pub kind: EventKind,
}

/// The kinds of [`ConnectionEvent`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EventKind {
    /// The handshake completed far enough to know both ISNs and the options (the SYN-ACK was
    /// seen), or a connection was picked up mid-stream.
    Opened(Handshake),
    /// Client bytes at `offset`, in order: the first `ClientData` after `Opened` has offset 0
    /// and each next one starts where the previous ended.
    ClientData {
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Server bytes at `offset`, in order, like `ClientData`.
    ServerData {
        /// Stream offset of the first byte.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A client segment's acknowledgement, window and timestamps.
    ClientAck {
        /// Server bytes acknowledged: every server offset below this one.
        offset: u64,
        /// The sequence position of the segment (client stream offset), for `snd_wl1`.
        seq_offset: u64,
        /// The client's receive window in bytes, already scaled.
        window: u32,
        /// The segment's timestamps, when the option is in use.
        timestamps: Option<TcpTimestamps>,
    },
    /// A server segment's acknowledgement, window and timestamps.
    ServerAck {
        /// Client bytes acknowledged: every client offset below this one.
        offset: u64,
        /// The server's receive window in bytes, already scaled.
        window: u32,
        /// The segment's timestamps, when the option is in use.
        timestamps: Option<TcpTimestamps>,
    },
    /// `side` sent a FIN occupying stream offset `offset` (just after its last data byte).
    Fin {
        /// Who sent it.
        side: Side,
        /// Its position in that side's stream.
        offset: u64,
    },
    /// The connection is no longer exactly restorable.
    Unsafe(UnsafeReason),
    /// The connection ended; no further events follow for this incarnation.
    Closed(CloseHow),
}
