//! The primary's side of the protocol, sans-IO: it numbers and retains what it ships, learns
//! from acknowledgements what the backup holds, resends after a break, resynchronises, and
//! bounds its memory.
//!
//! Drive it with [`Primary::submit`] (messages from the tracker), [`Primary::on_message`]
//! (what the backup sent), [`Primary::poll`] (time passing) and [`Primary::poll_transmit`]
//! (what to send now). It reads no clock and touches no socket.
//!
//! # Delivery
//! Every message gets a sequence number and stays in the retained queue until the backup
//! acknowledges it. After a break the backup sends a [`ResyncRequest`]; if the backup
//! follows this primary incarnation and holds at least what was acknowledged, the primary
//! goes back to the first message the backup lacks (go-back-N). Otherwise (a new or
//! restarted backup, a restarted primary) it resynchronises fully: a
//! [`Payload::Retain`] listing its connections, then the whole record of each.
//!
//! # Memory
//! The retained queue is bounded by [`PrimaryConfig::max_retained_bytes`]. A message that
//! does not fit is not queued: its connection becomes *unprotected*
//! ([`Primary::unprotected`]) until its whole record fits in the queue again.

use super::message::{Payload, ResyncRequest, WireMessage};
use crate::endpoint::ConnectionId;
use crate::message::MessageV1;
use crate::record::{Applied, ClientRetention};
use crate::replica::{Holding, ReplicaError};
use crate::time::Instant;
use crate::{EventKind, Replica, ReplicaConfig, ReplicationMessage, Side};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use thiserror::Error;

/// Primary settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryConfig {
    /// The most bytes of unacknowledged messages retained (default 64 MiB).
    pub max_retained_bytes: usize,
    /// How often a heartbeat is sent (default 100 ms).
    pub heartbeat_interval: Duration,
    /// The backup is declared failed after this many heartbeat intervals without hearing
    /// from it (default 5).
    pub failure_misses: u32,
    /// Unacknowledged messages are sent again after this long without progress (default 1 s).
    pub retransmit_timeout: Duration,
    /// Client-byte retention of the primary's copy of each connection; use the backup's
    /// [`ReplicaConfig::client_retention`] so both compute the same records.
    pub client_retention: ClientRetention,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        PrimaryConfig {
            max_retained_bytes: 64 << 20,
            heartbeat_interval: Duration::from_millis(100),
            failure_misses: 5,
            retransmit_timeout: Duration::from_secs(1),
            client_retention: ReplicaConfig::default().client_retention,
        }
    }
}

/// Why a connection is not protected right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnprotectedReason {
    /// The retained queue was full (the backup is slow or unreachable).
    QueueFull,
    /// The backup could not apply a message of it (diverged).
    BackupRejected,
    /// The backup's holdings disagree with the primary's copy.
    Diverged,
    /// A full resynchronisation is sending its record.
    Resynchronising,
}

/// What [`Primary::submit`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Queued with this sequence number.
    Queued(u64),
    /// Not queued: its connection is unprotected until its whole record is resent.
    Unprotected,
    /// Not queued, and nothing is lost: a heartbeat message that did not fit, or captured
    /// server bytes a checkpoint already carried to the backup.
    Skipped,
}

/// The primary's copy rejected a message: the caller's events are inconsistent.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// The message does not fit the primary's copy of the connection (events out of order
    /// or lost between the tracker and the replicator).
    #[error("message rejected by the primary's copy: {0}; submit every tracker event in order")]
    Inconsistent(#[from] ReplicaError),
}

/// The ends of a connection's streams the backup is known to hold (for output commit), in
/// sequence space: stream offsets of the bytes, where a FIN counts as one more offset once
/// the backup holds it (RFC 9293 §3.4: the FIN takes a sequence number), as
/// [`StreamState::sequence_end`](crate::record::StreamState::sequence_end). A segment
/// that carries or acknowledges a FIN may leave only once the backup holds that FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AckedOffsets {
    /// Every client byte below this offset is held by the backup (and the client's FIN when
    /// this is one past its last byte).
    pub client: u64,
    /// Every server byte below this offset is held by the backup (and the server's FIN when
    /// this is one past its last byte).
    pub server: u64,
    /// The `server_produced` of the last application checkpoint of the connection the
    /// backup acknowledged ([`crate::checkpoint::Checkpoint`]); `None` when it holds none.
    pub checkpoint: Option<u64>,
}

/// Something the primary reports (drain with [`Primary::take_reports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrimaryReport {
    /// A connection became unprotected.
    Unprotected(ConnectionId, UnprotectedReason),
    /// A connection's whole record was queued; it is protected again.
    Reprotected(ConnectionId),
    /// The backup asked for resynchronisation; `full` when every record is resent.
    Resynchronised {
        /// Every record is resent (the backup did not follow this primary).
        full: bool,
        /// The first sequence number resent or sent.
        from: u64,
    },
}

/// What a retained message changes once acknowledged.
#[derive(Clone, Debug)]
enum Effect {
    None,
    Ends(ConnectionId, AckedOffsets),
    Forget(ConnectionId),
}

#[derive(Clone, Debug)]
struct Retained {
    seq: u64,
    payload: Payload,
    size: usize,
    effect: Effect,
    /// The payload opens or replaces the connection (an `Opened` event or a record).
    creates: bool,
}

/// The primary's protocol state.
#[derive(Debug)]
pub struct Primary {
    config: PrimaryConfig,
    epoch: u64,
    mirror: Replica,
    next_seq: u64,
    acked_seq: u64,
    send_from: u64,
    queue: VecDeque<Retained>,
    queued_bytes: usize,
    needs_record: BTreeMap<ConnectionId, UnprotectedReason>,
    acknowledged: HashMap<ConnectionId, AckedOffsets>,
    outbox: VecDeque<WireMessage>,
    reports: Vec<PrimaryReport>,
    last_heard: Option<Instant>,
    last_heartbeat: Option<Instant>,
    last_progress: Instant,
    resyncs: u64,
    last_request: Option<(u64, u64)>,
}

impl Primary {
    /// A primary incarnation named `epoch` (pick it at random: a restarted primary must not
    /// reuse its predecessor's; `cttm-replicate` has `random_epoch` for this).
    pub fn new(config: PrimaryConfig, epoch: u64) -> Primary {
        Primary {
            config,
            epoch,
            mirror: Replica::new(ReplicaConfig {
                client_retention: config.client_retention,
                max_connections: usize::MAX,
            }),
            next_seq: 1,
            acked_seq: 0,
            send_from: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            needs_record: BTreeMap::new(),
            acknowledged: HashMap::new(),
            outbox: VecDeque::new(),
            reports: Vec::new(),
            last_heard: None,
            last_heartbeat: None,
            last_progress: Instant::ZERO,
            resyncs: 0,
            last_request: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PrimaryConfig {
        &self.config
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ships one replication message (normally a tracker event). It is applied to the
    /// primary's copy of the connection and queued, or, when the queue is full, its
    /// connection becomes unprotected.
    pub fn submit(
        &mut self,
        message: ReplicationMessage,
        now: Instant,
    ) -> Result<Submitted, SubmitError> {
        let applied = self.mirror.apply_message(&message)?;
        if applied == Applied::Duplicate && self.carried_by_checkpoint(&message) {
            return Ok(Submitted::Skipped);
        }
        let payload = Payload::Message(message);
        let id = payload.connection();
        if let Some(id) = id
            && self.needs_record.contains_key(&id)
        {
            // The record sent later includes this message.
            self.repair(now);
            return Ok(if self.needs_record.contains_key(&id) {
                Submitted::Unprotected
            } else {
                Submitted::Queued(self.next_seq - 1)
            });
        }
        let size = payload.approximate_size();
        if self.queued_bytes + size > self.config.max_retained_bytes && !self.queue.is_empty() {
            return Ok(match id {
                Some(id) => {
                    self.mark_unprotected(id, UnprotectedReason::QueueFull);
                    Submitted::Unprotected
                }
                None => Submitted::Skipped,
            });
        }
        Ok(Submitted::Queued(self.enqueue(payload, size, now)))
    }

    /// Captured server bytes of a checkpointed connection that the primary's copy holds
    /// already: a checkpoint carried them ([`crate::checkpoint::Checkpoint::output`]), so
    /// the backup has them too and they are not shipped twice.
    fn carried_by_checkpoint(&self, message: &ReplicationMessage) -> bool {
        let ReplicationMessage::V1(MessageV1::Event(event)) = message else {
            return false;
        };
        matches!(event.kind, EventKind::ServerData { .. })
            && self
                .mirror
                .record(&event.id)
                .is_some_and(|r| r.checkpoint().is_some())
    }

    fn enqueue(&mut self, payload: Payload, size: usize, now: Instant) -> u64 {
        if self.queue.is_empty() {
            self.last_progress = now;
        }
        let (effect, creates) = match &payload {
            Payload::Message(ReplicationMessage::V1(MessageV1::Forget(id))) => {
                (Effect::Forget(*id), false)
            }
            Payload::Message(ReplicationMessage::V1(m)) => {
                let creates = matches!(m, MessageV1::Record(_))
                    || matches!(m, MessageV1::Event(e) if matches!(e.kind, EventKind::Opened(_)));
                let effect = payload
                    .connection()
                    .and_then(|id| self.mirror_ends(&id).map(|o| Effect::Ends(id, o)));
                (effect.unwrap_or(Effect::None), creates)
            }
            Payload::Retain(_) => (Effect::None, false),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queued_bytes += size;
        self.queue.push_back(Retained {
            seq,
            payload,
            size,
            effect,
            creates,
        });
        seq
    }

    fn mirror_ends(&self, id: &ConnectionId) -> Option<AckedOffsets> {
        let r = self.mirror.record(id)?;
        Some(AckedOffsets {
            client: r.stream(Side::Client).sequence_end(),
            server: r.stream(Side::Server).sequence_end(),
            checkpoint: r.checkpoint().map(|c| c.server_produced),
        })
    }

    fn mark_unprotected(&mut self, id: ConnectionId, reason: UnprotectedReason) {
        if self.needs_record.insert(id, reason).is_none() {
            self.reports.push(PrimaryReport::Unprotected(id, reason));
        }
    }

    /// Queues whole records for unprotected connections while they fit.
    fn repair(&mut self, now: Instant) {
        while let Some((&id, _)) = self.needs_record.first_key_value() {
            let payload = match self.mirror.record(&id) {
                Some(r) => Payload::Message(MessageV1::Record(Box::new(r.clone())).into()),
                None => Payload::Message(MessageV1::Forget(id).into()),
            };
            let size = payload.approximate_size();
            if self.queued_bytes + size > self.config.max_retained_bytes && !self.queue.is_empty() {
                return;
            }
            self.needs_record.remove(&id);
            self.enqueue(payload, size, now);
            self.reports.push(PrimaryReport::Reprotected(id));
        }
    }

    /// Bytes from the backup arrived (part of a message): it is alive.
    pub fn on_activity(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// Handles a message from the backup.
    pub fn on_message(&mut self, message: WireMessage, now: Instant) {
        self.last_heard = Some(now);
        match message {
            WireMessage::Ack {
                epoch,
                applied,
                consumed,
            } if epoch == self.epoch => {
                if applied > self.acked_seq && applied < self.next_seq {
                    self.advance(applied, now);
                }
                for (id, upto) in consumed {
                    self.mirror.consume_client(&id, upto);
                }
            }
            WireMessage::ResyncRequest(request) => self.on_resync_request(request, now),
            WireMessage::NeedRecord { epoch, ids } if epoch == self.epoch => {
                for id in ids {
                    self.mark_unprotected(id, UnprotectedReason::BackupRejected);
                }
                self.repair(now);
            }
            // Heartbeats only prove liveness; anything else from a backup is ignored.
            _ => {}
        }
    }

    fn advance(&mut self, applied: u64, now: Instant) {
        while self.queue.front().is_some_and(|r| r.seq <= applied) {
            let Some(r) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= r.size;
            match r.effect {
                Effect::Ends(id, o) => {
                    self.acknowledged.insert(id, o);
                }
                Effect::Forget(id) => {
                    self.acknowledged.remove(&id);
                }
                Effect::None => {}
            }
        }
        self.acked_seq = applied;
        self.send_from = self.send_from.max(applied + 1);
        self.last_progress = now;
        self.repair(now);
    }

    fn on_resync_request(&mut self, request: ResyncRequest, now: Instant) {
        if let Some((backup, last)) = self.last_request
            && backup == request.backup_epoch
            && request.request <= last
        {
            return;
        }
        self.last_request = Some((request.backup_epoch, request.request));
        self.resyncs += 1;
        let follows = request.primary_epoch == Some(self.epoch)
            && request.applied >= self.acked_seq
            && request.applied < self.next_seq;
        if follows {
            if request.applied > self.acked_seq {
                self.advance(request.applied, now);
            }
            self.send_from = request.applied + 1;
            self.last_progress = now;
            self.find_divergence(&request);
            self.outbox.push_back(WireMessage::Resync {
                epoch: self.epoch,
                resync: self.resyncs,
                from: request.applied + 1,
            });
            self.reports.push(PrimaryReport::Resynchronised {
                full: false,
                from: request.applied + 1,
            });
            self.repair(now);
        } else {
            self.queue.clear();
            self.queued_bytes = 0;
            self.acknowledged.clear();
            let from = self.next_seq;
            let mut ids: Vec<_> = self.mirror.records().map(|r| r.id()).collect();
            ids.sort();
            for id in &ids {
                self.needs_record
                    .entry(*id)
                    .or_insert(UnprotectedReason::Resynchronising);
            }
            let retain = Payload::Retain(ids);
            let size = retain.approximate_size();
            self.enqueue(retain, size, now);
            self.acked_seq = from - 1;
            self.send_from = from;
            self.last_progress = now;
            self.outbox.push_back(WireMessage::Resync {
                epoch: self.epoch,
                resync: self.resyncs,
                from,
            });
            self.reports
                .push(PrimaryReport::Resynchronised { full: true, from });
            self.repair(now);
        }
    }

    /// Marks connections whose backup holdings cannot be reached by resending the queue.
    fn find_divergence(&mut self, request: &ResyncRequest) {
        let held = holdings_by_id(&request.holdings);
        let mut diverged = Vec::new();
        for h in held.values() {
            match self.mirror_ends(&h.id) {
                Some(o) if h.client_end > o.client || h.server_end > o.server => {
                    diverged.push(h.id)
                }
                Some(_) => {}
                None => {
                    let forgotten = self
                        .queue
                        .iter()
                        .any(|r| matches!(r.effect, Effect::Forget(id) if id == h.id));
                    if !forgotten {
                        diverged.push(h.id);
                    }
                }
            }
        }
        for r in self.mirror.records() {
            let id = r.id();
            if !held.contains_key(&id)
                && !self
                    .queue
                    .iter()
                    .any(|q| q.creates && q.payload.connection() == Some(id))
            {
                diverged.push(id);
            }
        }
        for id in diverged {
            self.mark_unprotected(id, UnprotectedReason::Diverged);
        }
    }

    /// Forgets connections closed before `closed_before` (as the tracker forgets them after
    /// its linger time, without an event): a `Forget` is shipped for each, so neither the
    /// primary's copy nor the backup keeps them. Returns how many were forgotten.
    pub fn forget_closed(&mut self, closed_before: Instant, now: Instant) -> usize {
        let mut old: Vec<_> = self
            .mirror
            .records()
            .filter(|r| r.closed().is_some() && r.updated_at() < closed_before)
            .map(|r| r.id())
            .collect();
        old.sort();
        for id in &old {
            // A Forget always fits the primary's copy.
            let _ = self.submit(MessageV1::Forget(*id).into(), now);
        }
        old.len()
    }

    /// Advances time: heartbeats, retransmission after [`PrimaryConfig::retransmit_timeout`]
    /// without progress, records of unprotected connections once they fit.
    pub fn poll(&mut self, now: Instant) {
        if self
            .last_heartbeat
            .is_none_or(|t| now.saturating_since(t) >= self.config.heartbeat_interval)
        {
            self.last_heartbeat = Some(now);
            self.outbox
                .push_back(WireMessage::Heartbeat { sent_at: now });
        }
        let unacked = self.acked_seq + 1 < self.next_seq;
        if unacked
            && self.send_from > self.acked_seq + 1
            && now.saturating_since(self.last_progress) >= self.config.retransmit_timeout
        {
            self.send_from = self.acked_seq + 1;
            self.last_progress = now;
        }
        self.repair(now);
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<WireMessage> {
        if let Some(m) = self.outbox.pop_front() {
            return Some(m);
        }
        let front = self.queue.front()?.seq;
        let index = usize::try_from(self.send_from.checked_sub(front)?).ok()?;
        let r = self.queue.get(index)?;
        self.send_from += 1;
        Some(WireMessage::Data {
            epoch: self.epoch,
            seq: r.seq,
            payload: r.payload.clone(),
        })
    }

    /// True when something is waiting to be sent.
    pub fn wants_transmit(&self) -> bool {
        !self.outbox.is_empty() || self.queue.back().is_some_and(|r| r.seq >= self.send_from)
    }

    /// Forgets in-flight state after the link broke: everything unacknowledged is sent again
    /// once the backup says what it holds.
    pub fn on_link_down(&mut self) {
        self.send_from = self.acked_seq + 1;
        self.outbox
            .retain(|m| !matches!(m, WireMessage::Heartbeat { .. }));
    }

    /// The ends of the streams of `id` the backup has acknowledged (output commit: a segment
    /// may leave once everything it acknowledges or carries is below these).
    pub fn acknowledged(&self, id: &ConnectionId) -> Option<AckedOffsets> {
        if self.needs_record.contains_key(id) {
            return None;
        }
        self.acknowledged.get(id).copied()
    }

    /// The highest sequence number the backup acknowledged.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// The last sequence number assigned.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// True when the backup acknowledged everything and no connection is unprotected.
    pub fn is_synchronised(&self) -> bool {
        self.acked_seq + 1 == self.next_seq && self.needs_record.is_empty()
    }

    /// Connections not protected right now, with why.
    pub fn unprotected(&self) -> Vec<(ConnectionId, UnprotectedReason)> {
        self.needs_record.iter().map(|(id, r)| (*id, *r)).collect()
    }

    /// Bytes of messages retained (unacknowledged).
    pub fn retained_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Messages retained (unacknowledged).
    pub fn retained_messages(&self) -> usize {
        self.queue.len()
    }

    /// The failure detector: true while the backup was heard from within the last
    /// `failure_misses` heartbeat intervals.
    pub fn backup_alive(&self, now: Instant) -> bool {
        let limit = self.config.heartbeat_interval * self.config.failure_misses;
        self.last_heard
            .is_some_and(|t| now.saturating_since(t) < limit)
    }

    /// The primary's copy of the replicated state (what the backup converges to).
    pub fn mirror(&self) -> &Replica {
        &self.mirror
    }

    /// Drains what happened since the last call.
    pub fn take_reports(&mut self) -> Vec<PrimaryReport> {
        std::mem::take(&mut self.reports)
    }
}

/// Holdings keyed by connection, for comparisons.
fn holdings_by_id(holdings: &[Holding]) -> BTreeMap<ConnectionId, Holding> {
    holdings.iter().map(|h| (h.id, *h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CloseHow;
    use crate::replication::testing::{acknowledge, client_data, ev, id, opened};

    #[test]
    fn acknowledgements_give_per_connection_offsets() {
        let mut p = Primary::new(PrimaryConfig::default(), 9);
        let now = Instant::ZERO;
        assert_eq!(p.submit(opened(1), now), Ok(Submitted::Queued(1)));
        assert_eq!(
            p.submit(client_data(1, 0, 100), now),
            Ok(Submitted::Queued(2))
        );
        assert_eq!(
            p.submit(client_data(1, 100, 50), now),
            Ok(Submitted::Queued(3))
        );
        assert_eq!(p.acknowledged(&id(1)), None);
        p.on_message(
            WireMessage::Ack {
                epoch: 9,
                applied: 2,
                consumed: vec![],
            },
            now,
        );
        assert_eq!(
            p.acknowledged(&id(1)),
            Some(AckedOffsets {
                client: 100,
                server: 0,
                checkpoint: None
            })
        );
        // An acknowledgement of another primary incarnation, or of nothing new, is ignored.
        p.on_message(
            WireMessage::Ack {
                epoch: 8,
                applied: 3,
                consumed: vec![],
            },
            now,
        );
        p.on_message(
            WireMessage::Ack {
                epoch: 9,
                applied: 1,
                consumed: vec![],
            },
            now,
        );
        assert_eq!(p.acked_seq(), 2);
        p.on_message(
            WireMessage::Ack {
                epoch: 9,
                applied: 3,
                consumed: vec![],
            },
            now,
        );
        assert_eq!(
            p.acknowledged(&id(1)),
            Some(AckedOffsets {
                client: 150,
                server: 0,
                checkpoint: None
            })
        );
        assert!(p.is_synchronised());
        assert_eq!(p.retained_bytes(), 0);
    }

    #[test]
    fn acknowledged_offsets_count_a_fin_once_the_backup_holds_it() {
        let mut p = Primary::new(PrimaryConfig::default(), 4);
        let now = Instant::ZERO;
        p.submit(opened(1), now).unwrap();
        p.submit(client_data(1, 0, 10), now).unwrap();
        p.submit(
            ev(
                1,
                EventKind::Fin {
                    side: Side::Client,
                    offset: 10,
                },
            ),
            now,
        )
        .unwrap();
        p.submit(
            ev(
                1,
                EventKind::Fin {
                    side: Side::Server,
                    offset: 0,
                },
            ),
            now,
        )
        .unwrap();
        let ack = |p: &mut Primary, applied| acknowledge(p, 4, applied, now);
        // The bytes are held, the client's FIN not yet: one past the bytes is not reached.
        ack(&mut p, 2);
        assert_eq!(
            p.acknowledged(&id(1)),
            Some(AckedOffsets {
                client: 10,
                server: 0,
                checkpoint: None
            })
        );
        // Each FIN, once held, is one more offset of its stream (RFC 9293 §3.4).
        ack(&mut p, 3);
        assert_eq!(
            p.acknowledged(&id(1)),
            Some(AckedOffsets {
                client: 11,
                server: 0,
                checkpoint: None
            })
        );
        ack(&mut p, 4);
        assert_eq!(
            p.acknowledged(&id(1)),
            Some(AckedOffsets {
                client: 11,
                server: 1,
                checkpoint: None
            })
        );
    }

    #[test]
    fn a_full_queue_unprotects_the_connection_until_its_record_fits() {
        let config = PrimaryConfig {
            max_retained_bytes: 4096,
            ..PrimaryConfig::default()
        };
        let mut p = Primary::new(config, 1);
        let now = Instant::ZERO;
        p.submit(opened(1), now).unwrap();
        p.submit(client_data(1, 0, 3000), now).unwrap();
        assert_eq!(
            p.submit(client_data(1, 3000, 3000), now),
            Ok(Submitted::Unprotected)
        );
        assert_eq!(p.unprotected(), vec![(id(1), UnprotectedReason::QueueFull)]);
        assert_eq!(p.acknowledged(&id(1)), None);
        assert!(p.retained_bytes() <= 4096);
        // Later events of the connection are folded into the record to come.
        assert_eq!(
            p.submit(client_data(1, 6000, 10), now),
            Ok(Submitted::Unprotected)
        );
        p.on_message(
            WireMessage::Ack {
                epoch: 1,
                applied: 2,
                consumed: vec![],
            },
            now,
        );
        assert!(p.unprotected().is_empty());
        let reports = p.take_reports();
        assert!(reports.contains(&PrimaryReport::Unprotected(
            id(1),
            UnprotectedReason::QueueFull
        )));
        assert!(reports.contains(&PrimaryReport::Reprotected(id(1))));
        // The record is the next message sent, and holds all 6010 bytes.
        let mut sent = Vec::new();
        while let Some(m) = p.poll_transmit() {
            sent.push(m);
        }
        let record = sent.iter().find_map(|m| match m {
            WireMessage::Data {
                payload: Payload::Message(ReplicationMessage::V1(MessageV1::Record(r))),
                ..
            } => Some(r),
            _ => None,
        });
        assert_eq!(
            record
                .expect("record sent")
                .stream(Side::Client)
                .received_end(),
            6010
        );
    }

    #[test]
    fn closed_connections_are_forgotten_on_both_sides() {
        let mut p = Primary::new(PrimaryConfig::default(), 1);
        let now = Instant::from_millis(10);
        p.submit(opened(1), now).unwrap();
        p.submit(opened(2), now).unwrap();
        p.submit(ev(1, EventKind::Closed(CloseHow::Reset(Side::Client))), now)
            .unwrap();
        assert_eq!(p.forget_closed(Instant::from_millis(5), now), 1);
        assert_eq!(p.mirror().len(), 1);
        assert_eq!(p.last_seq(), 4);
    }

    #[test]
    fn a_backup_that_lost_its_state_gets_every_record() {
        let mut p = Primary::new(PrimaryConfig::default(), 5);
        let now = Instant::ZERO;
        p.submit(opened(1), now).unwrap();
        p.submit(opened(2), now).unwrap();
        p.on_message(
            WireMessage::Ack {
                epoch: 5,
                applied: 2,
                consumed: vec![],
            },
            now,
        );
        p.on_message(
            WireMessage::ResyncRequest(ResyncRequest {
                backup_epoch: 77,
                request: 1,
                primary_epoch: None,
                applied: 0,
                holdings: vec![],
            }),
            now,
        );
        let sent: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
        assert!(matches!(
            sent[0],
            WireMessage::Resync {
                epoch: 5,
                from: 3,
                ..
            }
        ));
        assert!(
            matches!(&sent[1], WireMessage::Data { seq: 3, payload: Payload::Retain(ids), .. } if ids.len() == 2)
        );
        let records = sent
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    WireMessage::Data {
                        payload: Payload::Message(ReplicationMessage::V1(MessageV1::Record(_))),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(records, 2);
        // The same request again (a delayed duplicate) changes nothing.
        p.on_message(
            WireMessage::ResyncRequest(ResyncRequest {
                backup_epoch: 77,
                request: 1,
                primary_epoch: None,
                applied: 0,
                holdings: vec![],
            }),
            now,
        );
        assert_eq!(p.poll_transmit(), None);
    }
}
