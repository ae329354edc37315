//! The open phase: both ISNs are known, a [`ConnectionRecord`] exists, and each segment is
//! split into its data (reassembled per direction), its FIN, its RST and its acknowledgement.
//! Every event is applied to the record before it is emitted.

use super::TrackerConfig;
use super::reassembly::{Delivered, Reassembler};
use crate::endpoint::ConnectionId;
use crate::event::{CloseHow, ConnectionEvent, EventKind, Handshake, Side, UnsafeReason};
use crate::record::ConnectionRecord;
use crate::seq::SeqNumber;
use crate::time::Instant;
use crate::wire::{SegmentRepr, TcpTimestamps};

/// The acknowledgement fields last emitted for one side, to skip repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AckFields {
    offset: u64,
    seq_offset: u64,
    window: u32,
    timestamps: Option<TcpTimestamps>,
}

/// A connection whose ISNs are known.
#[derive(Debug)]
pub(super) struct OpenConnection {
    record: ConnectionRecord,
    /// Client → server reassembly.
    client: Reassembler,
    /// Server → client reassembly.
    server: Reassembler,
    last_client_ack: Option<AckFields>,
    last_server_ack: Option<AckFields>,
}

impl OpenConnection {
    /// Creates the record and emits `Opened`.
    pub(super) fn open(
        id: ConnectionId,
        at: Instant,
        handshake: Handshake,
        config: &TrackerConfig,
        out: &mut Vec<ConnectionEvent>,
    ) -> Self {
        let record = ConnectionRecord::open(id, at, handshake, config.client_retention);
        out.push(ConnectionEvent { id, at, kind: EventKind::Opened(handshake) });
        OpenConnection {
            record,
            client: Reassembler::default(),
            server: Reassembler::default(),
            last_client_ack: None,
            last_server_ack: None,
        }
    }

    pub(super) fn record(&self) -> &ConnectionRecord {
        &self.record
    }

    /// Out-of-order bytes discarded so far, both directions.
    pub(super) fn dropped(&self) -> u64 {
        self.client.dropped() + self.server.dropped()
    }

    /// True when `segment` is a client SYN starting a new incarnation of this 4-tuple.
    pub(super) fn is_new_incarnation(&self, side: Side, segment: &SegmentRepr<'_>) -> bool {
        side == Side::Client
            && segment.flags.syn()
            && !segment.flags.ack()
            && segment.seq != self.record.handshake().client_isn
    }

    fn emit(&mut self, at: Instant, kind: EventKind, out: &mut Vec<ConnectionEvent>) {
        let event = ConnectionEvent { id: self.record.id(), at, kind };
        let applied = self.record.apply(&event);
        debug_assert!(applied.is_ok(), "tracker emitted an event its own record rejects: {applied:?} {event:?}");
        if applied.is_ok() {
            out.push(event);
        }
    }

    /// Processes one segment of this connection.
    pub(super) fn on_segment(
        &mut self,
        config: &TrackerConfig,
        side: Side,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) {
        // Closed connections linger for queries only; retransmitted SYNs and SYN-ACKs carry
        // nothing new (RFC 9293 §3.10.7.4 checks the SYN bit before anything else).
        if self.record.closed().is_some() || segment.flags.syn() {
            return;
        }
        if segment.flags.rst() {
            self.on_reset(side, at, segment, out);
            return;
        }
        self.on_payload(config, side, at, segment, out);
        if segment.flags.ack() {
            self.on_ack(side, at, segment, out);
        }
        self.close_if_done(at, out);
    }

    fn base(&self, side: Side) -> SeqNumber {
        let h = self.record.handshake();
        match side {
            Side::Client => h.client_isn.add(1),
            Side::Server => h.server_isn.add(1),
        }
    }

    fn reassembler(&mut self, side: Side) -> &mut Reassembler {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Signed stream position of `seq` in `side`'s stream, near that stream's next offset.
    fn position(&self, side: Side, seq: SeqNumber) -> i64 {
        let r = match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        let next = r.next();
        let delta = seq.distance_from(SeqNumber::from_offset(self.base(side), next));
        next as i64 + i64::from(delta)
    }

    fn on_payload(
        &mut self,
        config: &TrackerConfig,
        side: Side,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) {
        let fin = segment.flags.fin();
        if segment.payload.is_empty() && !fin {
            return;
        }
        let start = self.position(side, segment.seq);
        // Bytes before the stream start (a data-carrying SYN retransmitted) are not stream bytes.
        let skip = usize::try_from(-start).unwrap_or(0);
        if skip > segment.payload.len() {
            return;
        }
        let offset = start.max(0) as u64;
        let payload = &segment.payload[skip..];
        let delivered = self.reassembler(side).insert(offset, payload, fin, config.reassembly_limit);
        self.emit_delivered(side, at, delivered, out);
    }

    fn emit_delivered(&mut self, side: Side, at: Instant, delivered: Delivered, out: &mut Vec<ConnectionEvent>) {
        let Delivered { bytes, offset, fin } = delivered;
        if !bytes.is_empty() {
            let kind = match side {
                Side::Client => EventKind::ClientData { offset, bytes },
                Side::Server => EventKind::ServerData { offset, bytes },
            };
            self.emit(at, kind, out);
        }
        if let Some(offset) = fin
            && self.record.stream(side).fin().is_none()
        {
            self.emit(at, EventKind::Fin { side, offset }, out);
        }
    }

    fn on_ack(&mut self, side: Side, at: Instant, segment: &SegmentRepr<'_>, out: &mut Vec<ConnectionEvent>) {
        let peer = side.peer();
        let acked_ref = self.record.stream(peer).acked();
        let Some(offset) = segment.ack.unwrap_near(self.base(peer), acked_ref) else {
            return;
        };
        let peer_stream = match peer {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        let known_end = peer_stream.next() + u64::from(peer_stream.fin() == Some(peer_stream.next()));
        let hole = offset > known_end;
        if hole && self.record.unsafe_reason().is_none() {
            let reason = if peer_stream.dropped() > 0 {
                UnsafeReason::ReassemblyOverflow { side: peer }
            } else {
                UnsafeReason::CaptureHole { side: peer, offset: peer_stream.next() }
            };
            self.emit(at, EventKind::Unsafe(reason), out);
        }
        let window = self.scaled_window(side, segment.window);
        let timestamps = segment.options.timestamps;
        let fields = AckFields {
            offset,
            seq_offset: self.position(side, segment.seq).max(0) as u64,
            window,
            timestamps,
        };
        let last = match side {
            Side::Client => &mut self.last_client_ack,
            Side::Server => &mut self.last_server_ack,
        };
        if *last != Some(fields) {
            *last = Some(fields);
            let kind = match side {
                Side::Client => EventKind::ClientAck { offset, seq_offset: fields.seq_offset, window, timestamps },
                Side::Server => EventKind::ServerAck { offset, window, timestamps },
            };
            self.emit(at, kind, out);
        }
        if hole {
            let delivered = self.reassembler(peer).skip_to(offset);
            self.emit_delivered(peer, at, delivered, out);
        }
    }

    /// The window in bytes: RFC 7323 §2.3 scales every window except in SYN segments.
    fn scaled_window(&self, side: Side, window: u16) -> u32 {
        let h = self.record.handshake();
        let shift = match side {
            Side::Client => h.client_window_scale,
            Side::Server => h.server_window_scale,
        };
        u32::from(window) << shift.unwrap_or(0)
    }

    fn on_reset(&mut self, side: Side, at: Instant, segment: &SegmentRepr<'_>, out: &mut Vec<ConnectionEvent>) {
        // The server's own RST always ends its socket. A client RST counts only if the server
        // would accept it: its sequence number within the receive window (RFC 9293
        // §3.10.7.4; RFC 5961 §3 narrows this, a blind RST outside is ignored).
        let acceptable = match side {
            Side::Server => true,
            Side::Client => {
                let position = self.position(Side::Client, segment.seq);
                let acked = self.record.stream(Side::Client).acked() as i64;
                let next = self.client.next() as i64;
                let window = i64::from(self.record.receive_window()).max(1);
                position + 1 >= acked && position <= next.max(acked) + window
            }
        };
        if acceptable {
            self.emit(at, EventKind::Closed(CloseHow::Reset(side)), out);
        }
    }

    fn close_if_done(&mut self, at: Instant, out: &mut Vec<ConnectionEvent>) {
        let both_fins_acked = [Side::Client, Side::Server].iter().all(|&s| {
            let stream = self.record.stream(s);
            stream.fin().is_some_and(|f| stream.acked() > f)
        });
        if both_fins_acked && self.record.closed().is_none() {
            self.emit(at, EventKind::Closed(CloseHow::Graceful), out);
        }
    }

    /// Ends the connection with `how` (eviction, new incarnation).
    pub(super) fn close(&mut self, at: Instant, how: CloseHow, out: &mut Vec<ConnectionEvent>) {
        if self.record.closed().is_none() {
            self.emit(at, EventKind::Closed(how), out);
        }
    }

    pub(super) fn mark_unsafe(&mut self, at: Instant, reason: UnsafeReason, out: &mut Vec<ConnectionEvent>) {
        if self.record.unsafe_reason().is_none() && self.record.closed().is_none() {
            self.emit(at, EventKind::Unsafe(reason), out);
        }
    }

    pub(super) fn consume_client(&mut self, upto: u64) {
        self.record.consume_client(upto);
    }
}
