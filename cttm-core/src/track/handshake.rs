//! The handshake phase (RFC 9293 §3.5): a client SYN waits for the server's SYN-ACK; a
//! segment of a connection whose handshake was not seen is picked up mid-stream.

use super::open::OpenConnection;
use super::{Tracked, TrackerConfig};
use crate::endpoint::ConnectionId;
use crate::event::{ConnectionEvent, Handshake, Side};
use crate::seq::SeqNumber;
use crate::time::Instant;
use crate::wire::{SegmentRepr, TcpOptions};

/// A client SYN seen, waiting for the SYN-ACK.
#[derive(Clone, Debug)]
pub(super) struct SynSeen {
    isn: SeqNumber,
    options: TcpOptions,
    window: u16,
    /// When the SYN was first seen.
    pub(super) at: Instant,
}

impl SynSeen {
    pub(super) fn from_segment(segment: &SegmentRepr<'_>, at: Instant) -> Self {
        SynSeen {
            isn: segment.seq,
            options: segment.options,
            window: segment.window,
            at,
        }
    }
}

impl SynSeen {
    /// The client's initial sequence number.
    pub(super) fn isn(&self) -> SeqNumber {
        self.isn
    }

    /// True when `segment` is the server's SYN-ACK to this SYN.
    pub(super) fn is_answered_by(&self, side: Side, segment: &SegmentRepr<'_>) -> bool {
        let flags = segment.flags;
        side == Side::Server
            && flags.syn()
            && flags.ack()
            && !flags.rst()
            && segment.ack == self.isn.add(1)
    }
}

/// A segment of a connection the tracker does not know yet.
pub(super) fn on_untracked(
    config: &TrackerConfig,
    id: ConnectionId,
    side: Side,
    at: Instant,
    segment: &SegmentRepr<'_>,
    out: &mut Vec<ConnectionEvent>,
) -> Option<Tracked> {
    let flags = segment.flags;
    if flags.rst() {
        return None;
    }
    match (side, flags.syn(), flags.ack()) {
        (Side::Client, true, false) => Some(Tracked::SynSeen(SynSeen::from_segment(segment, at))),
        (_, _, true) if config.pick_up_mid_stream => {
            Some(pick_up_mid_stream(config, id, side, at, segment, out))
        }
        _ => None,
    }
}

/// A segment while the client's SYN waits for its SYN-ACK. Returns the next phase, or `None`
/// when the connection attempt ended (refused).
pub(super) fn on_syn_seen(
    config: &TrackerConfig,
    syn: &SynSeen,
    id: ConnectionId,
    side: Side,
    at: Instant,
    segment: &SegmentRepr<'_>,
    out: &mut Vec<ConnectionEvent>,
) -> Option<Tracked> {
    let flags = segment.flags;
    let keep = || Some(Tracked::SynSeen(syn.clone()));
    if flags.rst() {
        // A RST answering the SYN: the connection was refused (RFC 9293 §3.10.7.3).
        let refuses = side == Side::Server && segment.ack == syn.isn.add(1);
        return if refuses || side == Side::Client {
            None
        } else {
            keep()
        };
    }
    match (side, flags.syn(), flags.ack()) {
        // A retransmitted SYN keeps the first one; a SYN with another ISN starts over.
        (Side::Client, true, false) if segment.seq == syn.isn => keep(),
        (Side::Client, true, false) => Some(Tracked::SynSeen(SynSeen::from_segment(segment, at))),
        (Side::Server, true, true) if segment.ack == syn.isn.add(1) => {
            let handshake = negotiate(syn, segment);
            Some(Tracked::Open(Box::new(OpenConnection::open(
                id, at, handshake, config, out,
            ))))
        }
        // The SYN-ACK was not captured but the connection goes on: its options are unknown.
        (_, false, true) if config.pick_up_mid_stream => {
            Some(pick_up_mid_stream(config, id, side, at, segment, out))
        }
        _ => keep(),
    }
}

/// The options both SYNs agreed on (RFC 7323 §1.3 and §2.2: window scaling and timestamps
/// only when both sides sent them; RFC 2018 §2 likewise for SACK).
fn negotiate(syn: &SynSeen, syn_ack: &SegmentRepr<'_>) -> Handshake {
    let c = &syn.options;
    let s = &syn_ack.options;
    let scaling = c.window_scale.is_some() && s.window_scale.is_some();
    let timestamps = c.timestamps.is_some() && s.timestamps.is_some();
    Handshake {
        client_isn: syn.isn,
        server_isn: syn_ack.seq,
        client_mss: c.mss,
        server_mss: s.mss,
        // RFC 7323 §2.3: a shift above 14 is treated as 14.
        client_window_scale: c.window_scale.filter(|_| scaling).map(|w| w.min(14)),
        server_window_scale: s.window_scale.filter(|_| scaling).map(|w| w.min(14)),
        sack_permitted: c.sack_permitted && s.sack_permitted,
        timestamps,
        client_syn_tsval: c.timestamps.filter(|_| timestamps).map(|t| t.tsval),
        server_syn_tsval: s.timestamps.filter(|_| timestamps).map(|t| t.tsval),
        client_syn_window: syn.window,
        server_syn_window: syn_ack.window,
        mid_stream: false,
    }
}

/// Starts tracking a connection from a segment in its middle: sequence bases are inferred
/// from this segment, the options are unknown, and the connection is never restorable.
fn pick_up_mid_stream(
    config: &TrackerConfig,
    id: ConnectionId,
    side: Side,
    at: Instant,
    segment: &SegmentRepr<'_>,
    out: &mut Vec<ConnectionEvent>,
) -> Tracked {
    // A SYN-ACK without its SYN: the server's ISN is exact.
    let own_isn = if segment.flags.syn() {
        segment.seq
    } else {
        segment.seq.sub(1)
    };
    let peer_isn = segment.ack.sub(1);
    let (client_isn, server_isn) = match side {
        Side::Client => (own_isn, peer_isn),
        Side::Server => (peer_isn, own_isn),
    };
    let handshake = Handshake::mid_stream(client_isn, server_isn);
    let mut conn = OpenConnection::open(id, at, handshake, config, out);
    if !segment.flags.syn() {
        conn.on_segment(config, side, at, segment, out);
    }
    Tracked::Open(Box::new(conn))
}
