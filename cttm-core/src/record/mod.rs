//! [`ConnectionRecord`]: the state of one connection built from its events.
//!
//! Both the [`Tracker`](crate::Tracker) (primary) and the [`Replica`](crate::Replica)
//! (backup) keep one record per connection and change it only through
//! [`ConnectionRecord::apply`], so both sides compute identical snapshots from identical
//! events.

mod stream;

pub use stream::StreamState;

use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointOutcome};
use crate::endpoint::ConnectionId;
use crate::event::{CloseHow, ConnectionEvent, EventKind, Handshake, Side, UnsafeReason};
use crate::seq::SeqNumber;
use crate::snapshot::{
    ConnectionSnapshot, NegotiatedOptions, ReceiveQueue, RepairWindow, Restorability, SendQueue,
    TcpState, TimestampClock, WindowScale,
};
use crate::time::Instant;
use crate::wire::TcpTimestamps;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use thiserror::Error;

/// How long a record keeps the client's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ClientRetention {
    /// Drop client bytes once the server acknowledged them (the primary: they are already in
    /// the events it shipped). Snapshots then have an empty receive queue.
    DropOnAck,
    /// Keep client bytes until [`ConnectionRecord::consume_client`] releases them (the backup:
    /// a shadow session consumes them). Past `limit` retained bytes the connection becomes
    /// unsafe ([`UnsafeReason::RetentionExceeded`]) and its bytes are released.
    UntilConsumed {
        /// The most client bytes retained per connection.
        limit: usize,
    },
}

/// Why an event could not be applied to a record. The record is unchanged.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// Data arrived beyond the end of what the record holds: events were lost in between.
    /// (A connection already unsafe skips such a gap instead: it is never restored.)
    /// Resynchronise the connection (a [`MessageV1::Record`](crate::MessageV1::Record)).
    #[error(
        "{side:?} data gap: expected offset {expected}, got {got}; resynchronise the connection"
    )]
    Gap {
        /// The direction.
        side: Side,
        /// The next offset the record expected.
        expected: u64,
        /// The offset that arrived.
        got: u64,
    },
    /// An acknowledgement covers bytes the record never received, and no capture hole was
    /// reported: events were lost. Resynchronise the connection.
    #[error(
        "{side:?} stream acknowledged up to {acked} but only {held} bytes are held; resynchronise"
    )]
    AckBeyondData {
        /// The direction whose bytes are acknowledged.
        side: Side,
        /// The acknowledged offset.
        acked: u64,
        /// The end of the bytes held (FIN included).
        held: u64,
    },
    /// `Opened` for a connection that is already open with other ISNs (its events would mix).
    #[error("connection is already open with different sequence numbers")]
    Conflict,
    /// The event is for a connection the receiver has no record of.
    #[error("no record for this connection; it must be opened or resynchronised first")]
    Unknown,
}

/// What applying an event did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Applied {
    /// The record changed.
    Changed,
    /// The event carried nothing new (a duplicate).
    Duplicate,
}

/// The state of one connection, built from its events.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConnectionRecord {
    id: ConnectionId,
    handshake: Handshake,
    retention: ClientRetention,
    opened_at: Instant,
    updated_at: Instant,
    /// Client → server.
    client: StreamState,
    /// Server → client.
    server: StreamState,
    /// The client acknowledged the SYN-ACK (the handshake is complete).
    syn_acked: bool,
    /// Which FIN came first, when both exist.
    first_fin: Option<Side>,
    window: WindowState,
    client_ts: Option<TcpTimestamps>,
    server_ts: Option<(TcpTimestamps, Instant)>,
    unsafe_reason: Option<UnsafeReason>,
    closed: Option<CloseHow>,
    /// The last application checkpoint applied, if the connection is checkpointed.
    checkpoint: Option<Checkpoint>,
}

/// Window bookkeeping (RFC 9293 §3.10.7.4; Linux `tcp_may_update_window`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct WindowState {
    /// Client stream offset of the segment that last updated `snd_wnd`; `None` = the SYN.
    snd_wl1: Option<u64>,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    /// Client stream offset the server acknowledged when it last advertised a window.
    rcv_wup: u64,
}

impl ConnectionRecord {
    /// A record for a connection whose handshake (or mid-stream pick-up) was just seen.
    pub fn open(
        id: ConnectionId,
        at: Instant,
        handshake: Handshake,
        retention: ClientRetention,
    ) -> Self {
        ConnectionRecord {
            id,
            handshake,
            retention,
            opened_at: at,
            updated_at: at,
            client: StreamState::default(),
            server: StreamState::default(),
            syn_acked: handshake.mid_stream,
            first_fin: None,
            window: WindowState {
                snd_wl1: None,
                snd_wnd: u32::from(handshake.client_syn_window),
                max_window: u32::from(handshake.client_syn_window),
                rcv_wnd: u32::from(handshake.server_syn_window),
                rcv_wup: 0,
            },
            client_ts: handshake
                .client_syn_tsval
                .map(|tsval| TcpTimestamps { tsval, tsecr: 0 }),
            server_ts: handshake.server_syn_tsval.map(|tsval| {
                (
                    TcpTimestamps {
                        tsval,
                        tsecr: handshake.client_syn_tsval.unwrap_or(0),
                    },
                    at,
                )
            }),
            unsafe_reason: if handshake.mid_stream {
                Some(UnsafeReason::MidStream)
            } else {
                None
            },
            closed: None,
            checkpoint: None,
        }
    }

    /// The connection's identity.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// What the handshake negotiated.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// One direction's stream.
    pub fn stream(&self, side: Side) -> &StreamState {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    /// How the connection ended, if it did.
    pub fn closed(&self) -> Option<CloseHow> {
        self.closed
    }

    /// Why the connection is not restorable, if it is not.
    pub fn unsafe_reason(&self) -> Option<UnsafeReason> {
        self.unsafe_reason
    }

    /// When the first event was applied.
    pub fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// When the last event was applied.
    pub fn updated_at(&self) -> Instant {
        self.updated_at
    }

    /// Applies one event. On error the record is unchanged.
    pub fn apply(&mut self, event: &ConnectionEvent) -> Result<Applied, ApplyError> {
        let applied = match &event.kind {
            EventKind::Opened(h) => self.apply_opened(h)?,
            EventKind::ClientData { offset, bytes } => {
                self.apply_data(Side::Client, *offset, bytes)?
            }
            EventKind::ServerData { offset, bytes } => {
                self.apply_data(Side::Server, *offset, bytes)?
            }
            EventKind::ClientAck {
                offset,
                seq_offset,
                window,
                timestamps,
            } => self.apply_client_ack(*offset, *seq_offset, *window, *timestamps)?,
            EventKind::ServerAck {
                offset,
                window,
                timestamps,
            } => self.apply_server_ack(*offset, *window, *timestamps, event.at)?,
            EventKind::Fin { side, offset } => self.apply_fin(*side, *offset)?,
            EventKind::Unsafe(reason) => self.apply_unsafe(*reason),
            EventKind::Closed(how) => self.apply_closed(*how),
        };
        if applied == Applied::Changed {
            self.updated_at = self.updated_at.max(event.at);
        }
        Ok(applied)
    }

    fn apply_opened(&mut self, h: &Handshake) -> Result<Applied, ApplyError> {
        if *h == self.handshake {
            Ok(Applied::Duplicate)
        } else {
            Err(ApplyError::Conflict)
        }
    }

    fn stream_mut(&mut self, side: Side) -> &mut StreamState {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// A connection already unsafe may jump over bytes that will never arrive (the data and
    /// FIN that follow a capture hole or an overflow); a safe one must receive every byte.
    fn skip_if_unsafe(&mut self, side: Side, offset: u64) {
        if self.unsafe_reason.is_some() {
            let stream = self.stream_mut(side);
            if stream.fin().is_none() && offset > stream.received_end() {
                stream.skip_to(offset);
            }
        }
    }

    fn apply_data(&mut self, side: Side, offset: u64, bytes: &[u8]) -> Result<Applied, ApplyError> {
        self.skip_if_unsafe(side, offset);
        let outcome = self.stream_mut(side).append(side, offset, bytes)?;
        if side == Side::Client {
            if self.retention == ClientRetention::DropOnAck {
                let acked = self.client.acked();
                self.client.release_until(acked);
            }
            self.enforce_retention_limit();
        }
        Ok(outcome)
    }

    fn enforce_retention_limit(&mut self) {
        if let ClientRetention::UntilConsumed { limit } = self.retention
            && self.client.retained_len() > limit
        {
            let end = self.client.received_end();
            self.client.release_until(end);
            self.apply_unsafe(UnsafeReason::RetentionExceeded { side: Side::Client });
        }
    }

    /// Validates and applies an acknowledgement of `side`'s stream.
    fn acknowledge(&mut self, side: Side, offset: u64) -> Result<bool, ApplyError> {
        // A connection already known to be unsafe (capture hole, overflow, mid-stream) may
        // skip bytes it will never see; otherwise an acknowledgement past the held bytes
        // means events were lost.
        let hole_reported = self.unsafe_reason.is_some();
        let stream = self.stream_mut(side);
        let held = stream.sequence_end();
        if offset > held {
            if !hole_reported {
                return Err(ApplyError::AckBeyondData {
                    side,
                    acked: offset,
                    held,
                });
            }
            stream.skip_to(offset);
        }
        let advanced = stream.acknowledge(offset);
        if side == Side::Server {
            // Server bytes are kept only until the client acknowledges them.
            stream.release_until(offset);
        }
        Ok(advanced)
    }

    fn apply_client_ack(
        &mut self,
        offset: u64,
        seq_offset: u64,
        window: u32,
        timestamps: Option<TcpTimestamps>,
    ) -> Result<Applied, ApplyError> {
        let before = (
            self.server.acked(),
            self.window,
            self.client_ts,
            self.syn_acked,
        );
        // Linux tcp_ack() ignores an acknowledgement older than SND.UNA (a reordered segment)
        // for the window: it goes to `old_ack` before tcp_ack_update_window().
        let old_ack = offset < self.server.acked();
        let ack_advanced = self.acknowledge(Side::Server, offset)?;
        self.syn_acked = true;
        // Linux tcp_may_update_window(): a segment updates the send window when it
        // acknowledges new data, is newer (SEG.SEQ after SND.WL1), or is as new and opens the
        // window further or closes it to zero.
        let newer = self.window.snd_wl1.is_none_or(|wl1| seq_offset > wl1);
        let same_and_wider = self.window.snd_wl1 == Some(seq_offset)
            && (window > self.window.snd_wnd || window == 0);
        if !old_ack && (ack_advanced || newer || same_and_wider) {
            self.window.snd_wnd = window;
            self.window.snd_wl1 = Some(seq_offset);
            self.window.max_window = self.window.max_window.max(window);
        }
        if let Some(ts) = timestamps {
            self.client_ts = Some(newer_timestamps(self.client_ts, ts));
        }
        if self.retention == ClientRetention::DropOnAck {
            let acked = self.client.acked();
            self.client.release_until(acked);
        }
        let after = (
            self.server.acked(),
            self.window,
            self.client_ts,
            self.syn_acked,
        );
        Ok(if before == after {
            Applied::Duplicate
        } else {
            Applied::Changed
        })
    }

    fn apply_server_ack(
        &mut self,
        offset: u64,
        window: u32,
        timestamps: Option<TcpTimestamps>,
        at: Instant,
    ) -> Result<Applied, ApplyError> {
        let before = (self.client.acked(), self.window, self.server_ts);
        self.acknowledge(Side::Client, offset)?;
        // Every segment the server sends advertises its window; Linux records rcv_wup =
        // rcv_nxt whenever it does (tcp_select_window()).
        self.window.rcv_wnd = window;
        self.window.rcv_wup = offset;
        if let Some(ts) = timestamps {
            let newest = newer_timestamps(self.server_ts.map(|(t, _)| t), ts);
            if self.server_ts.is_none_or(|(t, _)| t != newest) {
                self.server_ts = Some((newest, at));
            }
        }
        if self.retention == ClientRetention::DropOnAck {
            let acked = self.client.acked();
            self.client.release_until(acked);
        }
        let after = (self.client.acked(), self.window, self.server_ts);
        Ok(if before == after {
            Applied::Duplicate
        } else {
            Applied::Changed
        })
    }

    fn apply_fin(&mut self, side: Side, offset: u64) -> Result<Applied, ApplyError> {
        self.skip_if_unsafe(side, offset);
        let stream = self.stream_mut(side);
        let outcome = stream.set_fin(side, offset)?;
        if outcome == Applied::Changed && self.first_fin.is_none() {
            self.first_fin = Some(side);
        }
        Ok(outcome)
    }

    fn apply_unsafe(&mut self, reason: UnsafeReason) -> Applied {
        if self.unsafe_reason.is_none() {
            self.unsafe_reason = Some(reason);
            Applied::Changed
        } else {
            Applied::Duplicate
        }
    }

    fn apply_closed(&mut self, how: CloseHow) -> Applied {
        if self.closed.is_none() {
            self.closed = Some(how);
            Applied::Changed
        } else {
            Applied::Duplicate
        }
    }

    /// The server's advertised receive window in bytes (scaled), as last seen.
    pub fn receive_window(&self) -> u32 {
        self.window.rcv_wnd
    }

    /// The last application checkpoint of the connection, if it is checkpointed.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// Applies an application checkpoint of this connection: a later one replaces the one
    /// held, adds its [`output`](Checkpoint::output) to the server stream (bytes already
    /// held are kept as they are) and releases the retained client bytes below its
    /// `client_consumed` (the application's state reflects them, as
    /// [`consume_client`](Self::consume_client)); one not later is ignored
    /// ([`Applied::Duplicate`]); a later one whose offsets go backwards, or whose output does
    /// not continue the server stream, is refused and the record is unchanged
    /// ([`Checkpoint::follows`]).
    pub fn apply_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> Result<Applied, CheckpointError> {
        match checkpoint.follows(self.checkpoint.as_ref())? {
            CheckpointOutcome::Ignored => Ok(Applied::Duplicate),
            CheckpointOutcome::Replaced => {
                let output_from = checkpoint.output_from()?;
                if let Some(fin) = self.server.fin()
                    && checkpoint.server_produced > fin
                {
                    return Err(CheckpointError::OutputAfterFin { id: self.id, fin });
                }
                self.server
                    .append(Side::Server, output_from, &checkpoint.output)
                    .map_err(|_| CheckpointError::OutputGap {
                        id: self.id,
                        output_from,
                        held_end: self.server.received_end(),
                    })?;
                self.client.release_until(checkpoint.client_consumed);
                self.checkpoint = Some(checkpoint.clone());
                Ok(Applied::Changed)
            }
        }
    }

    /// Releases retained client bytes below `upto` (a shadow session consumed them). A
    /// checkpointed connection's client bytes are released by its checkpoints only: the
    /// application resumes from its last checkpoint, not from where a shadow stands.
    pub fn consume_client(&mut self, upto: u64) {
        if self.checkpoint.is_none() {
            self.client.release_until(upto);
        }
    }

    /// The server socket's state.
    pub fn state(&self) -> TcpState {
        if matches!(self.closed, Some(CloseHow::Reset(_) | CloseHow::Evicted)) {
            return TcpState::Closed;
        }
        if !self.syn_acked {
            return TcpState::SynReceived;
        }
        let client_fin_received = self.client.fin().is_some_and(|f| self.client.acked() > f);
        let server_fin_sent = self.server.fin().is_some();
        let server_fin_acked = self.server.fin().is_some_and(|f| self.server.acked() > f);
        TcpState::from_fins(
            client_fin_received,
            server_fin_sent,
            server_fin_acked,
            self.first_fin == Some(Side::Server),
        )
    }

    /// Whether a snapshot of this record may be restored.
    pub fn restorability(&self) -> Restorability {
        if self.closed.is_some() {
            Restorability::Closed
        } else if let Some(reason) = self.unsafe_reason {
            Restorability::Unsafe(reason)
        } else if !self.syn_acked {
            Restorability::HandshakeIncomplete
        } else {
            Restorability::Restorable
        }
    }

    fn client_base(&self) -> SeqNumber {
        self.handshake.client_isn.add(1)
    }

    fn server_base(&self) -> SeqNumber {
        self.handshake.server_isn.add(1)
    }

    /// The negotiated options as a restore applies them.
    pub fn options(&self) -> NegotiatedOptions {
        let h = &self.handshake;
        let default_mss = match self.id.server {
            SocketAddr::V4(_) => 536,
            SocketAddr::V6(_) => 1220,
        };
        NegotiatedOptions {
            mss: h.client_mss.unwrap_or(default_mss),
            window_scale: match (h.client_window_scale, h.server_window_scale) {
                (Some(send), Some(receive)) => Some(WindowScale { send, receive }),
                _ => None,
            },
            sack: h.sack_permitted,
            timestamps: h.timestamps,
        }
    }

    /// Everything a restore needs, as of the last applied event.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        let client_base = self.client_base();
        let server_base = self.server_base();
        let server_acked = self.server.acked();
        let server_fin_unacked = self.server.fin().is_some_and(|f| server_acked <= f);
        let send = SendQueue {
            una: SeqNumber::from_offset(server_base, server_acked),
            bytes: self
                .server
                .bytes_between(server_acked, self.server.received_end()),
            unsent: 0,
            fin: server_fin_unacked,
        };
        let client_acked = self.client.acked();
        let client_fin_received = self.client.fin().is_some_and(|f| client_acked > f);
        let data_acked = client_acked.min(self.client.received_end());
        let receive = ReceiveQueue {
            next: SeqNumber::from_offset(client_base, client_acked),
            bytes: self
                .client
                .bytes_between(self.client.retained_from(), data_acked),
            fin: client_fin_received,
        };
        let window = RepairWindow {
            snd_wl1: match self.window.snd_wl1 {
                Some(o) => SeqNumber::from_offset(client_base, o).0,
                None => self.handshake.client_isn.0,
            },
            snd_wnd: self.window.snd_wnd,
            max_window: self.window.max_window,
            rcv_wnd: self.window.rcv_wnd,
            rcv_wup: SeqNumber::from_offset(client_base, self.window.rcv_wup).0,
        };
        let clock = match (self.handshake.timestamps, self.server_ts) {
            (true, Some((ts, observed_at))) => Some(TimestampClock {
                server_tsval: ts.tsval,
                observed_at,
                client_tsval: self.client_ts.map_or(0, |t| t.tsval),
            }),
            _ => None,
        };
        ConnectionSnapshot {
            id: self.id,
            state: self.state(),
            restorability: self.restorability(),
            client_isn: self.handshake.client_isn,
            server_isn: self.handshake.server_isn,
            options: self.options(),
            send,
            receive,
            window,
            clock,
            updated_at: self.updated_at,
        }
    }
}

/// The later of two timestamp options by TSval (RFC 7323 §5.3: serial comparison).
fn newer_timestamps(current: Option<TcpTimestamps>, candidate: TcpTimestamps) -> TcpTimestamps {
    match current {
        Some(c) if SeqNumber(candidate.tsval).is_before(SeqNumber(c.tsval)) => c,
        _ => candidate,
    }
}
