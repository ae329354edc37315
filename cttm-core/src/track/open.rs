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
    /// Client segments, or their data, that the server socket drops (see
    /// [`OpenConnection::rejected`]).
    rejected: u64,
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
        out.push(ConnectionEvent {
            id,
            at,
            kind: EventKind::Opened(handshake),
        });
        OpenConnection {
            record,
            client: Reassembler::default(),
            server: Reassembler::default(),
            last_client_ack: None,
            last_server_ack: None,
            rejected: 0,
        }
    }

    pub(super) fn record(&self) -> &ConnectionRecord {
        &self.record
    }

    /// Out-of-order bytes discarded so far, both directions.
    pub(super) fn dropped(&self) -> u64 {
        self.client.dropped() + self.server.dropped()
    }

    /// Client segments the server drops whole, or whose data or FIN it drops, so far.
    pub(super) fn rejected(&self) -> u64 {
        self.rejected
    }

    /// True when `segment` is a client SYN starting a new incarnation of this 4-tuple.
    pub(super) fn is_new_incarnation(&self, side: Side, segment: &SegmentRepr<'_>) -> bool {
        side == Side::Client
            && segment.flags.syn()
            && !segment.flags.ack()
            && segment.seq != self.record.handshake().client_isn
    }

    fn emit(&mut self, at: Instant, kind: EventKind, out: &mut Vec<ConnectionEvent>) {
        let event = ConnectionEvent {
            id: self.record.id(),
            at,
            kind,
        };
        let applied = self.record.apply(&event);
        debug_assert!(
            applied.is_ok(),
            "tracker emitted an event its own record rejects: {applied:?} {event:?}"
        );
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
        if side == Side::Client && !self.server_accepts_client_segment(segment) {
            self.rejected += 1;
            return;
        }
        self.on_payload(config, side, at, segment, out);
        if segment.flags.ack() {
            self.on_ack(side, at, segment, out);
        }
        self.close_if_done(at, out);
    }

    /// Whether the server socket processes a (non-SYN, non-RST) client segment at all, in the
    /// order of Linux `tcp_rcv_established()` / `tcp_rcv_state_process()`. A segment the
    /// server drops changes nothing in its socket, so it must change nothing in the record:
    /// a forged or stale segment must not put its bytes, FIN, acknowledgement or window in
    /// place of the real ones.
    /// - Outside the receive window (`tcp_sequence()`, RFC 9293 §3.10.7.4 first check).
    /// - Without ACK (RFC 9293 §3.10.7.4 fifth check: "if the ACK bit is off, drop the
    ///   segment"; Linux discards it with `SKB_DROP_REASON_TCP_FLAGS`).
    /// - Acknowledging server bytes never sent (SEG.ACK > SND.NXT: RFC 9293 §3.10.7.4 "If the
    ///   ACK acks something not yet sent ... drop the segment"; Linux `tcp_ack()` returns
    ///   `SKB_DROP_REASON_TCP_ACK_UNSENT_DATA` and the whole segment, data included, is
    ///   discarded). Every server segment is captured at the server host, so SND.NXT is the
    ///   end of the server sequence space seen; capture drops are reported by the capture
    ///   layer, not inferred here. A connection picked up mid-stream has not seen every
    ///   server segment, so there an acknowledgement beyond what was seen stays a hole.
    fn server_accepts_client_segment(&self, segment: &SegmentRepr<'_>) -> bool {
        if self.outside_receive_window(segment) || !segment.flags.ack() {
            return false;
        }
        if self.record.handshake().mid_stream {
            return true;
        }
        let acked_ref = self.record.stream(Side::Server).acked();
        segment
            .ack
            .unwrap_near(self.base(Side::Server), acked_ref)
            .is_none_or(|offset| offset <= self.server.seen_end())
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
        if side == Side::Client && !self.client_data_fits_window(start, segment) {
            self.rejected += 1;
            return;
        }
        let offset = start.max(0) as u64;
        let payload = &segment.payload[skip..];
        let delivered =
            self.reassembler(side)
                .insert(offset, payload, fin, config.reassembly_limit);
        self.emit_delivered(side, at, delivered, out);
    }

    fn emit_delivered(
        &mut self,
        side: Side,
        at: Instant,
        delivered: Delivered,
        out: &mut Vec<ConnectionEvent>,
    ) {
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

    fn on_ack(
        &mut self,
        side: Side,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) {
        let peer = side.peer();
        let acked_ref = self.record.stream(peer).acked();
        let Some(offset) = segment.ack.unwrap_near(self.base(peer), acked_ref) else {
            return;
        };
        let peer_stream = match peer {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        let known_end =
            peer_stream.next() + u64::from(peer_stream.fin() == Some(peer_stream.next()));
        let hole = offset > known_end;
        if hole && self.record.unsafe_reason().is_none() {
            let reason = if peer_stream.dropped() > 0 {
                UnsafeReason::ReassemblyOverflow { side: peer }
            } else {
                UnsafeReason::CaptureHole {
                    side: peer,
                    offset: peer_stream.next(),
                }
            };
            self.emit(at, EventKind::Unsafe(reason), out);
        }
        if hole {
            // Continue the stream past the hole before the acknowledgement, so the record
            // sees what follows the hole (a buffered FIN included) ahead of the ack that
            // covers it: acknowledging first would make the record take a FIN for data.
            let delivered = self.reassembler(peer).skip_to(offset);
            self.emit_delivered(peer, at, delivered, out);
        }
        let window = self.scaled_window(side, segment.window);
        let timestamps = segment.options.timestamps;
        let fields = AckFields {
            offset,
            // Only client acknowledgements carry their sequence position (for SND.WL1);
            // keeping it out of the server's fields avoids a redundant ServerAck per
            // server data segment.
            seq_offset: match side {
                Side::Client => self.position(side, segment.seq).max(0) as u64,
                Side::Server => 0,
            },
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
                Side::Client => EventKind::ClientAck {
                    offset,
                    seq_offset: fields.seq_offset,
                    window,
                    timestamps,
                },
                Side::Server => EventKind::ServerAck {
                    offset,
                    window,
                    timestamps,
                },
            };
            self.emit(at, kind, out);
        }
    }

    /// The server's receive window over the client stream, as stream positions: RCV.WUP (what
    /// the server acknowledged in its last segment, Linux `tcp_select_window()`), RCV.NXT (a
    /// received FIN included) and the right edge RCV.WUP + RCV.WND, never left of RCV.NXT
    /// (Linux `tcp_receive_window()` is clamped at zero).
    fn client_receive_window(&self) -> (i64, i64, i64) {
        let rcv_wup = self.last_server_ack.map_or(0, |a| a.offset) as i64;
        let rcv_nxt =
            (self.client.next() + u64::from(self.client.fin() == Some(self.client.next()))) as i64;
        let right_edge = (rcv_wup + i64::from(self.record.receive_window())).max(rcv_nxt);
        (rcv_wup, rcv_nxt, right_edge)
    }

    /// Whether the data (and FIN) of an acceptable client segment starting at stream position
    /// `start` is queued by the server, as Linux `tcp_data_queue()` decides: nothing new
    /// (END.SEQ at or before RCV.NXT) is a duplicate; new data is dropped when the receive
    /// window is zero, or when it starts at or beyond the window's right edge (out of order
    /// past the window). A bare FIN exactly at RCV.NXT is taken even into a zero window
    /// (Linux 6.x: "Some stacks are known to send bare FIN packets in a loop"). Without this,
    /// bytes the server dropped (a forged segment ahead of the real data) would be kept by
    /// the reassembler in place of the real bytes that follow. Connections picked up
    /// mid-stream know no window: everything is taken.
    fn client_data_fits_window(&self, start: i64, segment: &SegmentRepr<'_>) -> bool {
        if self.record.handshake().mid_stream {
            return true;
        }
        let (_, rcv_nxt, right_edge) = self.client_receive_window();
        let end = start + segment.seq_len() as i64;
        if end <= rcv_nxt {
            return true;
        }
        let bare_fin_in_order = segment.payload.is_empty() && start == rcv_nxt;
        bare_fin_in_order || (right_edge > rcv_nxt && start < right_edge)
    }

    /// True when a client segment lies outside the window the server last advertised:
    /// wholly before it (END.SEQ before RCV.WUP) or starting after its right edge (SEQ after
    /// RCV.WUP + RCV.WND, or after RCV.NXT when that is further). Linux
    /// `tcp_validate_incoming()` (`tcp_sequence()`, RFC 9293 §3.10.7.4 first check) answers
    /// such a segment with a duplicate ACK and drops it, so its acknowledgement, window and
    /// timestamps never reach the server socket. Zero-window probes (SEQ = SND.UNA - 1, no
    /// data), stale retransmissions and a pure ACK that overtook the data before it into a
    /// closed window are such segments.
    fn outside_receive_window(&self, segment: &SegmentRepr<'_>) -> bool {
        let (rcv_wup, _, right_edge) = self.client_receive_window();
        let start = self.position(Side::Client, segment.seq);
        let end = start + segment.seq_len() as i64;
        // A connection picked up mid-stream has seen no window yet: only the left edge holds.
        let beyond = !self.record.handshake().mid_stream && start > right_edge;
        end < rcv_wup || beyond
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

    fn on_reset(
        &mut self,
        side: Side,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) {
        // The server's own RST always ends its socket. A client RST counts only if the server
        // accepts it (RFC 5961 §3.2, as Linux does).
        let acceptable = match side {
            Side::Server => true,
            Side::Client => self.server_accepts_client_reset(segment),
        };
        if acceptable {
            self.emit(at, EventKind::Closed(CloseHow::Reset(side)), out);
        }
    }

    /// Whether the server socket takes a client RST (Linux `tcp_validate_incoming()`, RFC 5961
    /// §3.2): outside the receive window it is ignored; inside, it resets only exactly at
    /// RCV.NXT, at RCV.NXT - 1 once the client's FIN arrived (`tcp_reset_check()`), or at the
    /// end of the highest SACK block. Any other in-window RST only draws a challenge ACK and
    /// the connection stays open.
    fn server_accepts_client_reset(&self, segment: &SegmentRepr<'_>) -> bool {
        let position = self.position(Side::Client, segment.seq);
        let fin_received = self.client.fin() == Some(self.client.next());
        let (rcv_wup, rcv_nxt, right_edge) = self.client_receive_window();
        if position < rcv_wup || position > right_edge {
            return false;
        }
        let highest_sack = self
            .client
            .pending_end()
            .filter(|_| self.record.handshake().sack_permitted);
        position == rcv_nxt
            || (fin_received && position == rcv_nxt - 1)
            || highest_sack.is_some_and(|end| position == end as i64)
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

    pub(super) fn mark_unsafe(
        &mut self,
        at: Instant,
        reason: UnsafeReason,
        out: &mut Vec<ConnectionEvent>,
    ) {
        if self.record.unsafe_reason().is_none() && self.record.closed().is_none() {
            self.emit(at, EventKind::Unsafe(reason), out);
        }
    }

    pub(super) fn consume_client(&mut self, upto: u64) {
        self.record.consume_client(upto);
    }
}
