//! The first moments after takeover, sans-IO: what the clients' segments (seen by a capture)
//! show about each restored connection.
//!
//! - **Ahead** (async loss): the primary may have exchanged bytes with the client that never
//!   reached the backup. The client then acknowledges server bytes this host never sent (the
//!   restored socket drops those segments as acknowledging unsent data) or waits for answers
//!   to client bytes the primary acknowledged and this host never received. Such a connection
//!   would hang: it is ended with a reset carrying the client's own `RCV.NXT` (taken from its
//!   acknowledgements), which the client accepts (RFC 9293 §3.10.7.4, RFC 5961 §3.2): at the
//!   first segment that acknowledges server bytes this host never held, or once client bytes
//!   beyond a hole have not been filled within a grace period (a hole may be bytes in flight
//!   the client retransmits). See [`ClientWatch::lost`].
//! - **Never got the SYN-ACK**: the client sends its SYN again; the restored socket is
//!   withdrawn silently so the next SYN opens the connection afresh on the standby
//!   ([`ClientWatch::never_got_syn_ack`]).
//! - **Its acknowledgement**: the client's answer to the restored socket's window probe shows
//!   its `RCV.NXT`; a socket whose client lacks server bytes is re-seated there ([`reseat`]).
//!
//! Two clocks: segments carry their capture time (the capture clock, the one snapshots use),
//! and the grace period runs on the driver's monotonic `now`.

use crate::seq::SeqNumber;
use crate::snapshot::{ConnectionSnapshot, TcpState};
use crate::time::Instant;
use crate::wire::SegmentRepr;
use std::time::Duration;

/// Evidence that the client is ahead of the restored socket: it acknowledged server bytes
/// this host never sent, or sent client bytes beyond a hole this host cannot fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClientAhead {
    /// First seen (monotonic clock).
    since: Instant,
    /// Client offset the restored socket must read up to for the evidence to go away.
    client: u64,
    /// Server offset the restored socket must send up to.
    server: u64,
    /// The client's latest acknowledgement number: its `RCV.NXT`, the sequence number a
    /// reset must carry to be accepted (RFC 5961 §3.2).
    rcv_nxt: SeqNumber,
    /// The client acknowledged server bytes up to this offset while this host had sent
    /// only up to the second one: proof that it got bytes this host never held.
    acked_unsent: Option<(u64, u64)>,
}

/// What the capture showed of one restored connection's client since its restore.
#[derive(Clone, Debug)]
pub struct ClientWatch {
    /// The client stream's first sequence number (client ISN + 1).
    client_base: SeqNumber,
    /// The server stream's first sequence number (server ISN + 1).
    server_base: SeqNumber,
    /// When the restore began (capture clock).
    restored_at: Instant,
    ahead: Option<ClientAhead>,
    /// The client's latest acknowledgement since the restore (server stream offset), with the
    /// window it advertised then (unscaled, as on the wire).
    client_acked: Option<(u64, u16)>,
    /// The client sent its SYN again after the restore.
    client_in_syn_sent: bool,
}

/// Where the splice stands, for [`ClientWatch::observe`]: the client offset read from the
/// restored socket and the server offset handed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpliceEnds {
    /// Client stream offset after the last byte read.
    pub read_end: u64,
    /// Server stream offset after the last byte sent.
    pub sent_end: u64,
}

impl ClientWatch {
    /// A watch of the connection of `snapshot`, restored at `restored_at` (capture clock).
    pub fn new(snapshot: &ConnectionSnapshot, restored_at: Instant) -> ClientWatch {
        Self::with_bases(
            snapshot.client_isn.add(1),
            snapshot.server_isn.add(1),
            restored_at,
        )
    }

    /// A watch of a connection whose client and server streams start at these sequence
    /// numbers (ISN + 1), restored at `restored_at` (capture clock).
    pub fn with_bases(
        client_base: SeqNumber,
        server_base: SeqNumber,
        restored_at: Instant,
    ) -> ClientWatch {
        ClientWatch {
            client_base,
            server_base,
            restored_at,
            ahead: None,
            client_acked: None,
            client_in_syn_sent: false,
        }
    }

    /// The server stream's first sequence number.
    pub fn server_base(&self) -> SeqNumber {
        self.server_base
    }

    /// The client's latest acknowledgement since the restore (server offset) and window.
    pub fn client_acked(&self) -> Option<(u64, u16)> {
        self.client_acked
    }

    /// The client sent its SYN again after the restore: it is still in SYN-SENT (sync mode
    /// held the SYN-ACK until the backup held the handshake, and the primary died before
    /// releasing it). A client in SYN-SENT drops every segment without SYN (RFC 9293
    /// §3.10.7.3), so the restored socket can never reach it: withdraw it silently (close
    /// it in repair mode) and its next SYN reaches the standby's listener. No byte was ever
    /// exchanged on it, so nothing is lost.
    pub fn never_got_syn_ack(&self) -> bool {
        self.client_in_syn_sent
    }

    /// Takes note of a segment the client sent, captured at `captured`, seen at `now`.
    pub fn observe(
        &mut self,
        segment: &SegmentRepr<'_>,
        captured: Instant,
        now: Instant,
        ends: SpliceEnds,
    ) {
        if segment.flags.syn() && !segment.flags.ack() {
            // The client's own SYN (its ISN is one before the client stream's base).
            if captured >= self.restored_at && segment.seq.add(1) == self.client_base {
                self.client_in_syn_sent = true;
            }
            return;
        }
        if segment.flags.rst() || !segment.flags.ack() {
            return;
        }
        let seq = segment.seq.unwrap_near(self.client_base, ends.read_end);
        let ack = segment.ack.unwrap_near(self.server_base, ends.sent_end);
        let (Some(seq), Some(ack)) = (seq, ack) else {
            return;
        };
        // Only a segment sent after the restore shows where the client stands now (one
        // captured before may be read later: a capture ring hands frames out in blocks).
        if captured >= self.restored_at && self.client_acked.is_none_or(|(a, _)| ack >= a) {
            self.client_acked = Some((ack, segment.window));
        }
        // A FIN occupies one sequence number after the data (tolerated on both streams).
        let client_ahead = seq > ends.read_end + 1;
        let server_ahead = ack > ends.sent_end + 1;
        if let Some(a) = &mut self.ahead {
            a.rcv_nxt = segment.ack;
        }
        if !client_ahead && !server_ahead {
            return;
        }
        let a = self.ahead.get_or_insert(ClientAhead {
            since: now,
            client: 0,
            server: 0,
            rcv_nxt: segment.ack,
            acked_unsent: None,
        });
        if client_ahead {
            a.client = a.client.max(seq);
        }
        if server_ahead {
            a.server = a.server.max(ack);
            // The primary sent these bytes and the client got them, but the backup never
            // did (async mode). The restored socket drops every segment acknowledging data
            // beyond its `SND.NXT` (net/ipv4/tcp_input.c, tcp_ack: "ack of unsent data"),
            // so the client's acknowledgements never move it again: the connection cannot
            // continue, whatever the standby produces later.
            a.acked_unsent.get_or_insert((ack, ends.sent_end));
        }
    }

    /// The client's `RCV.NXT` and the reason, when the connection cannot continue: at once
    /// when the client acknowledged server bytes this host never held; when the client's
    /// bytes have been ahead of this host for `grace` without the splice catching up (the
    /// backup lacks client bytes the primary acknowledged: they will never come; a shorter
    /// lead is only bytes in flight, which the client retransmits).
    pub fn lost(
        &mut self,
        now: Instant,
        grace: Duration,
        read_end: u64,
    ) -> Option<(SeqNumber, String)> {
        let a = self.ahead?;
        if let Some((acked, sent)) = a.acked_unsent {
            return Some((
                a.rcv_nxt,
                format!(
                    "the client acknowledged server bytes up to offset {} but the backup holds them only up to {sent}: the primary's bytes in between never reached the backup (async or degraded mode)",
                    acked.saturating_sub(1)
                ),
            ));
        }
        if read_end + 1 >= a.client {
            self.ahead = None;
            return None;
        }
        (now.saturating_since(a.since) >= grace).then(|| {
            (
                a.rcv_nxt,
                format!(
                    "the client sent bytes up to offset {} but the backup stayed at {read_end} for {} ms: client bytes the primary acknowledged never reached the backup (async or degraded mode)",
                    a.client.saturating_sub(1),
                    grace.as_millis()
                ),
            )
        })
    }
}

/// A restored socket to re-create at its client's acknowledgement (see [`reseat`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reseat {
    /// The snapshot to restore: `SND.UNA = SND.NXT` = the client's acknowledgement.
    pub snapshot: ConnectionSnapshot,
    /// The server bytes the client lacks, to send as new data.
    pub missing: Vec<u8>,
    /// The client's acknowledgement (server offset).
    pub acked: u64,
}

/// Whether to re-seat a restored socket, from its dump (`dumped`), the client's
/// acknowledgement and window (`client_acked`, [`ClientWatch::client_acked`]) and the server
/// offset handed to the socket (`sent_end`). `Err(why)` keeps the socket as it is.
///
/// A socket restored with sent-but-unacknowledged bytes (the primary's segments still held by
/// output commit, or lost with its link) has no RTT sample: the kernel probes the tail after
/// `TCP_TIMEOUT_INIT` (1 s) and retransmits after a 3 s timeout (net/ipv4/tcp_timer.c,
/// RFC 6298 §2.1), and as every queued segment counts in flight no new byte goes out
/// meanwhile: the client stalls for seconds. Once the client's answer to the restore's window
/// probe shows its `RCV.NXT`, every byte from there on is known to be missing on its side:
/// the socket is closed silently and restored with `SND.UNA = SND.NXT` = that
/// acknowledgement, and the bytes are sent as new data (immediate transmission, normal ACK
/// clocking).
pub fn reseat(
    mut dumped: ConnectionSnapshot,
    server_base: SeqNumber,
    client_acked: (u64, u16),
    sent_end: u64,
) -> Result<Reseat, String> {
    let (acked, window) = client_acked;
    let Some(una) = dumped.send.una.unwrap_near(server_base, acked) else {
        return Err("send sequence out of reach".into());
    };
    let end = una + dumped.send.bytes.len() as u64;
    if dumped.state != TcpState::Established
        || dumped.send.fin
        || dumped.send.sent_unacked().is_empty()
        || acked < una
        || acked > end
        || end != sent_end
    {
        return Err(format!(
            "nothing to re-send (state {:?}, client at {acked}, queue {una}..{end}, sent {sent_end})",
            dumped.state
        ));
    }
    let skip = usize::try_from(acked - una).unwrap_or(usize::MAX);
    let missing: Vec<u8> = dumped.send.bytes.drain(..).skip(skip).collect();
    dumped.send.una = SeqNumber::from_offset(server_base, acked);
    dumped.send.unsent = 0;
    // The window the client offers from its acknowledgement on (RFC 7323 §2.3 scaling): the
    // dumped one was offered from the old `SND.UNA`, and keeping it would move the right edge
    // past what the client accepts.
    let shift = dumped.options.window_scale.map_or(0, |w| w.send.min(14));
    dumped.window.snd_wnd = u32::from(window) << shift;
    dumped.window.max_window = dumped.window.max_window.max(dumped.window.snd_wnd);
    Ok(Reseat {
        snapshot: dumped,
        missing,
        acked,
    })
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
