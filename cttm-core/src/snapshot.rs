//! [`ConnectionSnapshot`]: everything needed to recreate the server's socket of a connection
//! with TCP_REPAIR (the fields of CRIU's `libsoccr_sk_data` plus the queue contents), as a
//! plain serializable value.
//!
//! The snapshot is the *server* socket's view: "send" is server → client, "receive" is
//! client → server.

use crate::endpoint::ConnectionId;
use crate::event::UnsafeReason;
use crate::seq::SeqNumber;
use crate::time::Instant;
use serde::{Deserialize, Serialize};

/// The server socket's TCP state (RFC 9293 §3.3.2), as far as a restore cares.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum TcpState {
    /// SYN received, SYN-ACK sent, not yet acknowledged.
    SynReceived,
    /// Both directions open.
    Established,
    /// The server sent a FIN that is not acknowledged yet; the client's stream is open.
    FinWait1,
    /// The server's FIN is acknowledged; the client's stream is open.
    FinWait2,
    /// The client's FIN was received; the server may still send.
    CloseWait,
    /// Both FINs sent, the server's not yet acknowledged, the client's received.
    Closing,
    /// The client's FIN was received, then the server sent its FIN, not yet acknowledged.
    LastAck,
    /// Both FINs exchanged and acknowledged, the server closed first.
    TimeWait,
    /// Nothing left (reset, or fully closed from the server's side).
    Closed,
}

impl TcpState {
    /// The state given which FINs exist and are acknowledged. `server_fin_first` tells who
    /// closed first when both FINs exist (it picks TIME-WAIT vs CLOSED, CLOSING vs LAST-ACK).
    pub fn from_fins(
        client_fin_received: bool,
        server_fin_sent: bool,
        server_fin_acked: bool,
        server_fin_first: bool,
    ) -> TcpState {
        match (client_fin_received, server_fin_sent, server_fin_acked) {
            (false, false, _) => TcpState::Established,
            (false, true, false) => TcpState::FinWait1,
            (false, true, true) => TcpState::FinWait2,
            (true, false, _) => TcpState::CloseWait,
            (true, true, false) if server_fin_first => TcpState::Closing,
            (true, true, false) => TcpState::LastAck,
            (true, true, true) if server_fin_first => TcpState::TimeWait,
            (true, true, true) => TcpState::Closed,
        }
    }

    /// True when the server has sent its FIN in this state.
    pub fn server_fin_sent(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::Closing
                | TcpState::LastAck
                | TcpState::TimeWait
        )
    }

    /// True when the server has received the client's FIN in this state.
    pub fn client_fin_received(self) -> bool {
        matches!(
            self,
            TcpState::CloseWait | TcpState::Closing | TcpState::LastAck | TcpState::TimeWait
        )
    }
}

/// Whether a snapshot can be restored exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Restorability {
    /// Every field is known.
    Restorable,
    /// The handshake is not finished (no socket to restore yet).
    HandshakeIncomplete,
    /// Something is missing; restoring would corrupt the stream or violate the options.
    Unsafe(UnsafeReason),
    /// The connection is over; nothing to restore.
    Closed,
}

/// The options a restored socket must use (`TCP_REPAIR_OPTIONS`, `TCP_MAXSEG`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct NegotiatedOptions {
    /// The largest segment the server may send (the client's announced MSS, or the RFC 9293
    /// §3.7.1 default of 536 for IPv4 / 1220 for IPv6 when absent).
    pub mss: u16,
    /// Window scaling, when both sides agreed to it.
    pub window_scale: Option<WindowScale>,
    /// SACK is permitted both ways.
    pub sack: bool,
    /// Timestamps are on both ways.
    pub timestamps: bool,
}

/// The two shifts of RFC 7323 window scaling, as `TCP_REPAIR_OPTIONS` takes them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct WindowScale {
    /// The shift applied to windows the client advertises (the server's `snd_wscale`).
    pub send: u8,
    /// The shift the server applies to the windows it advertises (its `rcv_wscale`).
    pub receive: u8,
}

/// The server's send queue: bytes from `una` on, the first `bytes.len() - unsent` already sent.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SendQueue {
    /// `snd_una`: the first byte not acknowledged by the client.
    pub una: SeqNumber,
    /// The bytes from `una`: sent-but-unacknowledged, then unsent.
    pub bytes: Vec<u8>,
    /// How many of the trailing bytes have never been sent (always 0 when built from a capture).
    pub unsent: usize,
    /// The server has sent a FIN after the last byte (it occupies one sequence number).
    pub fin: bool,
}

impl SendQueue {
    /// `snd_nxt`: the sequence number after the last byte sent (FIN included).
    pub fn next(&self) -> SeqNumber {
        let sent = (self.bytes.len() - self.unsent.min(self.bytes.len())) as u32;
        self.una.add(sent).add(u32::from(self.fin))
    }

    /// The bytes sent and not yet acknowledged.
    pub fn sent_unacked(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - self.unsent.min(self.bytes.len())]
    }

    /// The bytes not yet sent.
    pub fn unsent_bytes(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - self.unsent.min(self.bytes.len())..]
    }
}

/// The server's receive queue: bytes the kernel acknowledged that the application has not
/// read, ending at `next`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReceiveQueue {
    /// `rcv_nxt`: the next client sequence number expected (after the FIN if `fin`).
    pub next: SeqNumber,
    /// The unread bytes, which end just before `next` (or before the FIN).
    pub bytes: Vec<u8>,
    /// The client's FIN has been received.
    pub fin: bool,
}

impl ReceiveQueue {
    /// The sequence number of the first queued byte (what `TCP_QUEUE_SEQ` takes on restore).
    pub fn first_seq(&self) -> SeqNumber {
        self.next
            .sub(self.bytes.len() as u32)
            .sub(u32::from(self.fin))
    }
}

/// The window state `TCP_REPAIR_WINDOW` restores (`struct tcp_repair_window`, kernel
/// `include/uapi/linux/tcp.h`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct RepairWindow {
    /// Sequence number of the client segment that last updated `snd_wnd` (RFC 9293 SND.WL1).
    pub snd_wl1: u32,
    /// The client's receive window in bytes (scaled).
    pub snd_wnd: u32,
    /// The largest `snd_wnd` seen.
    pub max_window: u32,
    /// The server's advertised receive window in bytes (scaled).
    pub rcv_wnd: u32,
    /// `rcv_nxt` when the server last advertised its window.
    pub rcv_wup: u32,
}

/// The RFC 7323 timestamp clocks at the snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct TimestampClock {
    /// The server's latest TSval. A restore must continue the clock from here plus the time
    /// elapsed since `observed_at`, never below it, or the client drops segments (PAWS,
    /// RFC 7323 §5).
    pub server_tsval: u32,
    /// When `server_tsval` was observed.
    pub observed_at: Instant,
    /// The client's latest TSval (what the server echoes, `ts_recent`).
    pub client_tsval: u32,
}

/// Everything a restore needs to recreate the server socket of one connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConnectionSnapshot {
    /// The connection's 4-tuple.
    pub id: ConnectionId,
    /// The server socket's state.
    pub state: TcpState,
    /// Whether a restore may use this snapshot.
    pub restorability: Restorability,
    /// The client's ISN (client stream offset 0 is `client_isn + 1`).
    pub client_isn: SeqNumber,
    /// The server's ISN (server stream offset 0 is `server_isn + 1`).
    pub server_isn: SeqNumber,
    /// The negotiated options.
    pub options: NegotiatedOptions,
    /// Server → client queue.
    pub send: SendQueue,
    /// Client → server queue.
    pub receive: ReceiveQueue,
    /// Window state.
    pub window: RepairWindow,
    /// Timestamp clocks, when timestamps are on and a TSval has been seen.
    pub clock: Option<TimestampClock>,
    /// When the state was last updated.
    pub updated_at: Instant,
}

impl ConnectionSnapshot {
    /// True when a restore may use this snapshot.
    pub fn is_restorable(&self) -> bool {
        self.restorability == Restorability::Restorable
    }

    /// The server's timestamp clock to install at `now` (`TCP_TIMESTAMP`): the snapshot's
    /// TSval plus the milliseconds elapsed since it was observed (Linux ticks its TCP
    /// timestamp clock at 1 kHz), so the clock never runs backwards.
    pub fn server_tsval_at(&self, now: Instant) -> Option<u32> {
        let clock = self.clock?;
        let elapsed_ms = now.saturating_since(clock.observed_at).as_millis();
        Some(clock.server_tsval.wrapping_add(elapsed_ms as u32))
    }
}
