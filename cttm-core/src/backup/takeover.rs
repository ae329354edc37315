//! The takeover, sans-IO: its order, and what happens to each connection.
//!
//! # The order ([`TakeoverPlan`])
//! 1. **Neighbours**: resolve every client's link-layer address first. A restored socket
//!    sends at once (window probe, reset); without a neighbour entry the kernel would solicit
//!    the client *from the service address*, teaching it that the address lives here before
//!    every connection is restored (RFC 826 merge, RFC 4861 §7.2.3), and its next segment on a
//!    connection not restored yet would draw a reset.
//! 2. **Lock**: from before the claim until the last restore, client segments are dropped on
//!    arrival, so none is delivered before its connection's socket exists (one that met no
//!    socket would be answered with a reset by the standby's listener, RFC 9293 §3.10.7.1).
//! 3. **Claim** the service addresses. The address must be local before a half-closed
//!    connection is restored (the client's FIN is replayed through the local stack).
//! 4. **Each connection**: restore it and splice it to its shadow session, or reset it
//!    ([`plan_connection`]).
//! 5. **Answers**: still under the lock, wait (bounded) for each client's answer to its
//!    restored socket's window probe, then **re-seat** the sockets whose client lacks server
//!    bytes (see [`watch::reseat`](super::watch::reseat)).
//! 6. **Unlock**, then **announce** the addresses (gratuitous ARP, unsolicited neighbour
//!    advertisement), last: every connection exists by then.
//!
//! A failed claim aborts: the lock is released and the takeover reports the failure.

use super::shadow::{Protection, ShadowSession};
use crate::event::Side;
use crate::record::ConnectionRecord;
use crate::seq::SeqNumber;
use crate::snapshot::{ConnectionSnapshot, Restorability, TcpState};
use crate::time::Instant;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Why a connection was ended with a reset at takeover instead of being continued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The standby's output differed from the primary's at this server stream offset.
    Diverged {
        /// The first differing byte.
        offset: u64,
    },
    /// The replica cannot restore the connection exactly (picked up mid-stream, capture
    /// hole, retention exceeded, ...).
    NotRestorable(String),
    /// The handshake had not completed: there is no state to continue (no reset is needed:
    /// the client's next segment is answered with one by the kernel).
    HandshakeIncomplete,
    /// No shadow session could follow the connection (standby unreachable, the backup
    /// joined late, events were missed, ...).
    NoShadow(String),
    /// The primary acknowledged client bytes the backup does not hold.
    MissingClientBytes {
        /// The first missing client stream offset.
        from: u64,
        /// The first offset held again.
        to: u64,
    },
    /// The restore failed.
    RestoreFailed(String),
    /// The client acknowledged server bytes past the last checkpoint the backup holds
    /// (output was not held: async mode, or sync mode degraded): the application cannot
    /// account for what the client saw.
    ClientAheadOfCheckpoint {
        /// The checkpoint's `server_produced`.
        checkpoint: u64,
        /// The server offset the client acknowledged.
        acked: u64,
    },
    /// The connection is checkpointed, but no application takes resumed connections (the
    /// backup was built without `on_resume`).
    NoApplication,
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetReason::Diverged { offset } => {
                write!(
                    f,
                    "diverged: the standby's output differs at server offset {offset}"
                )
            }
            ResetReason::NotRestorable(why) => write!(f, "not restorable: {why}"),
            ResetReason::HandshakeIncomplete => write!(f, "handshake incomplete"),
            ResetReason::NoShadow(why) => write!(f, "no shadow session: {why}"),
            ResetReason::MissingClientBytes { from, to } => write!(
                f,
                "the backup misses client bytes {from}..{to} the primary acknowledged"
            ),
            ResetReason::RestoreFailed(why) => write!(f, "restore failed: {why}"),
            ResetReason::ClientAheadOfCheckpoint { checkpoint, acked } => write!(
                f,
                "the client acknowledged server bytes up to {acked}, past the last checkpoint at {checkpoint}"
            ),
            ResetReason::NoApplication => {
                write!(f, "checkpointed, but no application resumes connections")
            }
        }
    }
}

/// What the replica holds of a connection's two streams, for [`plan_connection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaEnds {
    /// Client bytes the primary acknowledged (and the replica received).
    pub client_acked: u64,
    /// End of the client bytes the replica received.
    pub client_end: u64,
    /// End of the server bytes the primary sent.
    pub server_end: u64,
}

impl ReplicaEnds {
    /// The ends of `record`.
    pub fn of(record: &ConnectionRecord) -> ReplicaEnds {
        let client = record.stream(Side::Client);
        ReplicaEnds {
            client_acked: client.acked().min(client.received_end()),
            client_end: client.received_end(),
            server_end: record.stream(Side::Server).received_end(),
        }
    }
}

/// Where the client's bytes of a restored connection start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientStart {
    /// Restored-stream bytes the shadow already has (the splice drops them).
    pub skip: u64,
    /// Client offset of the first byte the restored socket delivers.
    pub client_from: u64,
    /// Server offset after the restored send queue (the primary's last sent byte).
    pub server_from: u64,
}

/// What happens to one connection at takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionPlan {
    /// Restore this snapshot and splice the socket to the shadow session from `start`.
    Restore {
        /// The snapshot to restore (adjusted: see [`plan_connection`]).
        snapshot: ConnectionSnapshot,
        /// Where the splice starts.
        start: ClientStart,
    },
    /// End the connection with a reset carrying its exact sequence numbers: restore this
    /// snapshot (queues empty) and close it with `SO_LINGER` 0 ([`reset_snapshot`]).
    Reset {
        /// The socket that only exists to send the reset.
        snapshot: ConnectionSnapshot,
        /// Why.
        reason: ResetReason,
    },
    /// A checkpointed connection: restore this socket and hand it to the application with
    /// its checkpoint ([`super::resume::plan_resume`]).
    Resume(Box<super::resume::ResumePlan>),
    /// Nothing to continue and nothing to reset: the handshake had not completed. The
    /// client's next segment meets no socket and the kernel answers it with a reset
    /// (RFC 9293 §3.10.7.1).
    Abandon(ResetReason),
}

impl ConnectionPlan {
    /// The plan after the restore of a [`ConnectionPlan::Restore`] failed: a reset.
    pub fn restore_failed(snapshot: &ConnectionSnapshot, error: &dyn fmt::Display) -> Self {
        ConnectionPlan::Reset {
            snapshot: reset_snapshot(snapshot),
            reason: ResetReason::RestoreFailed(error.to_string()),
        }
    }
}

/// Decides what happens to the connection of `snapshot` at takeover, from its shadow session
/// and what the replica holds (`None`: the connection left the replica).
///
/// A connection waiting for its third ACK is restored ESTABLISHED
/// ([`established_after_syn_ack`]). The restore acknowledges every client byte the shadow
/// holds: the primary may have acknowledged them without the backup learning it (async
/// mode), and a client that believes them delivered would never send them again. One the
/// primary had not acknowledged is retransmitted by the client and dropped as a duplicate
/// (RFC 9293 §3.10.7.4).
pub fn plan_connection(
    snapshot: &ConnectionSnapshot,
    shadow: Option<&ShadowSession>,
    ends: Option<ReplicaEnds>,
) -> ConnectionPlan {
    let promoted = established_after_syn_ack(snapshot);
    let snapshot = promoted.as_ref().unwrap_or(snapshot);
    match client_start(snapshot, shadow, ends) {
        Ok((start, acknowledge_to)) => {
            let mut restore = snapshot.clone();
            if let Some(offset) = acknowledge_to {
                restore.receive.next = SeqNumber::from_offset(snapshot.client_isn.add(1), offset);
                restore.receive.bytes.clear();
            }
            ConnectionPlan::Restore {
                snapshot: restore,
                start,
            }
        }
        Err(ResetReason::HandshakeIncomplete) => {
            ConnectionPlan::Abandon(ResetReason::HandshakeIncomplete)
        }
        Err(reason) => ConnectionPlan::Reset {
            snapshot: reset_snapshot(snapshot),
            reason,
        },
    }
}

/// Where the restored connection's client bytes start, and the client offset to acknowledge
/// up to instead of the replica's (the shadow holds bytes the primary had not acknowledged).
fn client_start(
    snapshot: &ConnectionSnapshot,
    shadow: Option<&ShadowSession>,
    ends: Option<ReplicaEnds>,
) -> Result<(ClientStart, Option<u64>), ResetReason> {
    match snapshot.restorability {
        Restorability::Restorable => {}
        Restorability::HandshakeIncomplete => return Err(ResetReason::HandshakeIncomplete),
        Restorability::Closed => return Err(ResetReason::NotRestorable("closed".into())),
        Restorability::Unsafe(reason) => {
            return Err(ResetReason::NotRestorable(format!("{reason:?}")));
        }
    }
    let Some(shadow) = shadow else {
        return Err(ResetReason::NoShadow("no shadow session".into()));
    };
    match shadow.status() {
        Protection::Protected => {}
        Protection::Diverged { offset } => return Err(ResetReason::Diverged { offset: *offset }),
        Protection::Unprotected(reason) => return Err(ResetReason::NoShadow(reason.clone())),
    }
    let Some(ends) = ends else {
        return Err(ResetReason::NoShadow("connection left the replica".into()));
    };
    let primary_end = shadow.comparison().primary_end();
    if primary_end != ends.server_end {
        return Err(ResetReason::NoShadow(format!(
            "the shadow compared server bytes up to {primary_end} but the primary sent up to {}",
            ends.server_end
        )));
    }
    // The restored socket delivers client bytes from here on.
    let restored_from = ends
        .client_acked
        .saturating_sub(snapshot.receive.bytes.len() as u64);
    let shadow_end = shadow.client().end();
    if restored_from > shadow_end {
        return Err(ResetReason::MissingClientBytes {
            from: shadow_end,
            to: restored_from,
        });
    }
    if !snapshot.receive.fin && shadow_end > ends.client_acked {
        let start = ClientStart {
            skip: 0,
            client_from: shadow_end,
            server_from: ends.server_end,
        };
        return Ok((start, Some(shadow_end)));
    }
    let start = ClientStart {
        skip: shadow_end - restored_from,
        client_from: restored_from,
        server_from: ends.server_end,
    };
    Ok((start, None))
}

/// The snapshot to restore for a connection whose SYN-ACK the primary sent but whose third
/// ACK the backup never held (state SYN-RECEIVED, [`Restorability::HandshakeIncomplete`]).
///
/// The primary releases a SYN-ACK once the backup holds the handshake (output commit), so the
/// client may already be ESTABLISHED and about to send its first request: leaving the
/// connection unrestored would answer that request with a reset. It is restored ESTABLISHED
/// at ISS+1 / IRS+1 instead, as if the third ACK had arrived (RFC 9293 §3.10.7.3: that ACK
/// only moves SYN-RECEIVED to ESTABLISHED). A client that never got the SYN-ACK keeps
/// retransmitting its SYN, which the restored socket answers with an ACK that a SYN-SENT
/// client ignores; the watch after takeover then withdraws the socket
/// ([`watch::ClientWatch::never_got_syn_ack`](super::watch::ClientWatch::never_got_syn_ack)).
pub fn established_after_syn_ack(snapshot: &ConnectionSnapshot) -> Option<ConnectionSnapshot> {
    let waiting_for_third_ack = snapshot.restorability == Restorability::HandshakeIncomplete
        && snapshot.state == TcpState::SynReceived;
    waiting_for_third_ack.then(|| ConnectionSnapshot {
        state: TcpState::Established,
        restorability: Restorability::Restorable,
        ..snapshot.clone()
    })
}

/// The snapshot of a socket that only exists to send a reset: ESTABLISHED with empty queues
/// at `snd_nxt` = the primary's last sent byte and `rcv_nxt` = the client bytes acknowledged.
/// Closed with `SO_LINGER` 0, the kernel sends a RST with `SEG.SEQ = snd_nxt`, which the
/// client accepts (RFC 9293 §3.10.7.4, RFC 5961 §3.2). A client that did not get every byte
/// the primary sent answers with a challenge ACK, which meets no socket and is answered with
/// a reset at the exact sequence number.
pub fn reset_snapshot(snapshot: &ConnectionSnapshot) -> ConnectionSnapshot {
    let mut s = snapshot.clone();
    s.restorability = Restorability::Restorable;
    s.state = TcpState::Established;
    s.send.una = s.send.una.add(s.send.sent_unacked().len() as u32);
    s.send.bytes.clear();
    s.send.unsent = 0;
    s.send.fin = false;
    s.receive.bytes.clear();
    s.receive.fin = false;
    if s.clock.is_none() {
        s.options.timestamps = false;
    }
    s
}

/// The connections to take over: closed ones have nothing left to continue.
pub fn connections_to_take_over(
    snapshots: impl IntoIterator<Item = ConnectionSnapshot>,
) -> Vec<ConnectionSnapshot> {
    snapshots
        .into_iter()
        .filter(|s| !matches!(s.restorability, Restorability::Closed))
        .collect()
}

/// One step of the takeover for the driver to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TakeoverStep {
    /// Resolve the link-layer addresses of these clients (bounded by the driver's budget).
    ResolveNeighbours(Vec<IpAddr>),
    /// Engage the network lock: drop the clients' segments on arrival.
    EngageLock,
    /// Add these addresses with this prefix length; report with [`TakeoverPlan::on_claimed`].
    Claim {
        /// The service addresses.
        addresses: Vec<IpAddr>,
        /// Their prefix length.
        prefix_len: u8,
    },
    /// Take over this connection: decide with [`plan_connection`] and carry the plan out.
    Connection(ConnectionSnapshot),
    /// Under the lock, let the clients' answers to the window probes arrive until this time,
    /// or until every answer was seen ([`TakeoverPlan::on_answers_seen`]).
    AwaitAnswers {
        /// When to stop waiting.
        until: Instant,
    },
    /// Re-seat the restored sockets whose client lacks server bytes.
    Reseat,
    /// Release the network lock.
    ReleaseLock,
    /// Announce these addresses.
    Announce(Vec<IpAddr>),
    /// The takeover is complete.
    Done,
    /// The takeover failed (the lock is released already): why.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Neighbours,
    Lock,
    Claim,
    Connections,
    Answers,
    Reseat,
    Unlock,
    Announce,
    Done,
}

/// The order of the takeover (see the module docs). The driver calls [`poll`](Self::poll)
/// and carries out each step until [`TakeoverStep::Done`] or [`TakeoverStep::Failed`].
#[derive(Debug)]
pub struct TakeoverPlan {
    stage: Stage,
    connections: std::collections::VecDeque<ConnectionSnapshot>,
    addresses: Vec<IpAddr>,
    prefix_len: u8,
    answer_wait: Duration,
    answers_until: Option<Instant>,
    answers_seen: bool,
    failed: Option<String>,
    locked: bool,
}

impl TakeoverPlan {
    /// A takeover of `connections` (see [`connections_to_take_over`]) claiming `addresses`
    /// with `prefix_len`, waiting at most `answer_wait` for the clients' answers under the
    /// lock.
    pub fn new(
        connections: Vec<ConnectionSnapshot>,
        addresses: Vec<IpAddr>,
        prefix_len: u8,
        answer_wait: Duration,
    ) -> TakeoverPlan {
        TakeoverPlan {
            stage: Stage::Neighbours,
            connections: connections.into(),
            addresses,
            prefix_len,
            answer_wait,
            answers_until: None,
            answers_seen: false,
            failed: None,
            locked: false,
        }
    }

    /// The next step at `now`.
    pub fn poll(&mut self, now: Instant) -> TakeoverStep {
        loop {
            if let Some(step) = self.step(now) {
                return step;
            }
        }
    }

    /// One stage's step, or `None` to move on to the next stage.
    fn step(&mut self, now: Instant) -> Option<TakeoverStep> {
        match self.stage {
            Stage::Neighbours => {
                self.stage = Stage::Lock;
                let mut clients: Vec<IpAddr> =
                    self.connections.iter().map(|s| s.id.client.ip()).collect();
                clients.sort();
                clients.dedup();
                (!clients.is_empty()).then_some(TakeoverStep::ResolveNeighbours(clients))
            }
            Stage::Lock => {
                self.stage = Stage::Claim;
                self.locked = true;
                Some(TakeoverStep::EngageLock)
            }
            Stage::Claim => {
                self.stage = Stage::Connections;
                Some(TakeoverStep::Claim {
                    addresses: self.addresses.clone(),
                    prefix_len: self.prefix_len,
                })
            }
            Stage::Connections => match self.connections.pop_front() {
                Some(snapshot) => Some(TakeoverStep::Connection(snapshot)),
                None => {
                    self.stage = Stage::Answers;
                    None
                }
            },
            Stage::Answers => {
                let until = *self.answers_until.get_or_insert(now + self.answer_wait);
                if self.answers_seen || now >= until {
                    self.stage = Stage::Reseat;
                    return None;
                }
                Some(TakeoverStep::AwaitAnswers { until })
            }
            Stage::Reseat => {
                self.stage = Stage::Unlock;
                Some(TakeoverStep::Reseat)
            }
            Stage::Unlock => {
                self.stage = if self.failed.is_some() {
                    Stage::Done
                } else {
                    Stage::Announce
                };
                std::mem::take(&mut self.locked).then_some(TakeoverStep::ReleaseLock)
            }
            Stage::Announce => {
                self.stage = Stage::Done;
                Some(TakeoverStep::Announce(self.addresses.clone()))
            }
            Stage::Done => Some(match &self.failed {
                Some(why) => TakeoverStep::Failed(why.clone()),
                None => TakeoverStep::Done,
            }),
        }
    }

    /// The result of [`TakeoverStep::Claim`]. A failure aborts the takeover: no connection
    /// is restored, the lock is released.
    pub fn on_claimed(&mut self, result: Result<(), String>) {
        if let Err(why) = result {
            self.failed = Some(format!("claiming the service address failed: {why}"));
            self.connections.clear();
            self.stage = Stage::Unlock;
        }
    }

    /// Every restored socket's client answered its window probe.
    pub fn on_answers_seen(&mut self) {
        self.answers_seen = true;
    }

    /// Connections not taken over yet.
    pub fn remaining(&self) -> usize {
        self.connections.len()
    }
}

#[cfg(test)]
#[path = "takeover_tests.rs"]
mod tests;
