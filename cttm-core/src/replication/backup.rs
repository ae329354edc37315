//! The backup's side of the protocol, sans-IO: applies the primary's sequenced messages to
//! its replica in order, acknowledges, asks for resynchronisation on every new link and
//! after a gap, and detects a silent primary.
//!
//! The endpoint is generic over the replica it applies to: anything implementing
//! [`BackupReplica`]. [`SequencedReplica`] is the plain one (a [`Replica`] and its sequence
//! position, owned by the endpoint); `cttm-replicate`'s `ReplicaStore` is the one shared with
//! readers on other threads.

use super::message::{Payload, ResyncRequest, WireMessage};
use crate::endpoint::ConnectionId;
use crate::message::MessageV1;
use crate::record::Applied;
use crate::replica::{Holding, ReplicaError};
use crate::time::Instant;
use crate::{Replica, ReplicaConfig, ReplicationMessage, Side};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// What the backup endpoint needs from the replica it applies to.
///
/// The contract:
/// - [`apply_sequenced`](Self::apply_sequenced) applies the message numbered `seq` only if
///   it is the next one (`applied_seq() + 1`), and then moves the position to `seq` even when
///   the replica rejects it ([`SequencedOutcome::Rejected`]: the number is consumed, the
///   connection needs a whole record). A number already applied is a
///   [`SequencedOutcome::Duplicate`], one further ahead a [`SequencedOutcome::Gap`]; neither
///   changes anything.
/// - [`set_applied_seq`](Self::set_applied_seq) moves the position without applying anything
///   (the primary announced a resynchronisation).
/// - [`holdings`](Self::holdings) says what the replica holds per connection
///   ([`Replica::holdings`]).
/// - [`take_consumed`](Self::take_consumed) returns, once each, the connections whose client
///   bytes were released since the last call (their shadow sessions consumed them), with the
///   offset released up to.
pub trait BackupReplica {
    /// Applies the message numbered `seq` if it is the next one.
    fn apply_sequenced(&mut self, seq: u64, payload: &Payload) -> SequencedOutcome;

    /// The highest sequence number applied (every one below it is applied too).
    fn applied_seq(&self) -> u64;

    /// Moves the sequence position (after the primary announced a resynchronisation).
    fn set_applied_seq(&mut self, seq: u64);

    /// What the replica holds, per connection.
    fn holdings(&self) -> Vec<Holding>;

    /// Client-consumption positions changed since the last call (for acknowledgements).
    fn take_consumed(&mut self) -> Vec<(ConnectionId, u64)>;
}

/// What applying one sequenced message did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SequencedOutcome {
    /// It was the next message and was applied.
    Applied(Applied),
    /// Its sequence number was already applied; nothing changed.
    Duplicate,
    /// Messages before it are missing; nothing changed. Resynchronise.
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
    /// It was the next message but the replica rejected it (the connection diverged). Its
    /// sequence number is consumed; the connection needs a whole record.
    Rejected {
        /// The connection concerned.
        id: Option<ConnectionId>,
        /// Why.
        error: ReplicaError,
    },
}

/// A [`Replica`] applying sequenced messages strictly in sequence order: the plain
/// [`BackupReplica`], with the position and the client-consumption changes it reports.
#[derive(Clone, Debug)]
pub struct SequencedReplica {
    replica: Replica,
    applied_seq: u64,
    consumed_dirty: BTreeSet<ConnectionId>,
}

impl SequencedReplica {
    /// An empty replica at position 0.
    pub fn new(config: ReplicaConfig) -> SequencedReplica {
        SequencedReplica {
            replica: Replica::new(config),
            applied_seq: 0,
            consumed_dirty: BTreeSet::new(),
        }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Releases a connection's client bytes below `upto` (its shadow session consumed them);
    /// reported by the next [`take_consumed`](BackupReplica::take_consumed).
    pub fn consume_client(&mut self, id: &ConnectionId, upto: u64) {
        self.replica.consume_client(id, upto);
        self.consumed_dirty.insert(*id);
    }
}

impl BackupReplica for SequencedReplica {
    fn apply_sequenced(&mut self, seq: u64, payload: &Payload) -> SequencedOutcome {
        if seq <= self.applied_seq {
            return SequencedOutcome::Duplicate;
        }
        if seq != self.applied_seq + 1 {
            return SequencedOutcome::Gap {
                expected: self.applied_seq + 1,
                got: seq,
            };
        }
        self.applied_seq = seq;
        match apply_payload(&mut self.replica, payload) {
            Ok(a) => SequencedOutcome::Applied(a),
            Err(error) => SequencedOutcome::Rejected {
                id: payload.connection(),
                error,
            },
        }
    }

    fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    fn set_applied_seq(&mut self, seq: u64) {
        self.applied_seq = seq;
    }

    fn holdings(&self) -> Vec<Holding> {
        self.replica.holdings()
    }

    fn take_consumed(&mut self) -> Vec<(ConnectionId, u64)> {
        let dirty = std::mem::take(&mut self.consumed_dirty);
        dirty
            .into_iter()
            .filter_map(|id| {
                Some((
                    id,
                    self.replica
                        .record(&id)?
                        .stream(Side::Client)
                        .retained_from(),
                ))
            })
            .collect()
    }
}

/// Applies one payload. A whole record replacing one of the same incarnation keeps the
/// client bytes already consumed released (the primary's copy may still hold them).
fn apply_payload(replica: &mut Replica, payload: &Payload) -> Result<Applied, ReplicaError> {
    match payload {
        Payload::Message(m @ ReplicationMessage::V1(MessageV1::Record(record))) => {
            let consumed = replica.record(&record.id()).and_then(|old| {
                (old.handshake() == record.handshake())
                    .then(|| old.stream(Side::Client).retained_from())
            });
            let applied = replica.apply_message(m)?;
            if let Some(upto) = consumed {
                replica.consume_client(&record.id(), upto);
            }
            Ok(applied)
        }
        Payload::Message(m) => replica.apply_message(m),
        Payload::Retain(keep) => {
            let keep: BTreeSet<_> = keep.iter().copied().collect();
            let drop: Vec<_> = replica
                .records()
                .map(|r| r.id())
                .filter(|id| !keep.contains(id))
                .collect();
            for id in &drop {
                replica.forget(id);
            }
            Ok(if drop.is_empty() {
                Applied::Duplicate
            } else {
                Applied::Changed
            })
        }
    }
}

/// Backup settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupConfig {
    /// How often a heartbeat is sent (default 100 ms).
    pub heartbeat_interval: Duration,
    /// The primary is declared failed after this many heartbeat intervals without hearing
    /// from it (default 5).
    pub failure_misses: u32,
    /// A resynchronisation request without answer is repeated after this long (default 1 s).
    pub resync_retry: Duration,
    /// An acknowledgement is sent at the latest after this many applied messages (sooner when
    /// the link goes idle).
    pub ack_every: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            heartbeat_interval: Duration::from_millis(100),
            failure_misses: 5,
            resync_retry: Duration::from_secs(1),
            ack_every: 64,
        }
    }
}

/// Something the backup reports (drain with [`Backup::take_reports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupReport {
    /// A message could not be applied; the connection's whole record was requested.
    Rejected(Option<ConnectionId>, String),
    /// A gap in the sequence was found; resynchronisation was requested.
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
    /// The primary announced a resynchronisation starting at `from`.
    Resynchronised {
        /// The next sequence number.
        from: u64,
    },
}

/// The backup's protocol state, applying to the replica `R`.
#[derive(Debug)]
pub struct Backup<R> {
    config: BackupConfig,
    store: R,
    backup_epoch: u64,
    primary_epoch: Option<u64>,
    last_resync: u64,
    requests: u64,
    resync_sent: Option<Instant>,
    acked: Option<u64>,
    ack_due: bool,
    need_record: Vec<ConnectionId>,
    outbox: VecDeque<WireMessage>,
    reports: Vec<BackupReport>,
    last_heard: Option<Instant>,
    last_heartbeat: Option<Instant>,
}

impl<R: BackupReplica> Backup<R> {
    /// A backup incarnation named `backup_epoch` (random: a restarted backup must not reuse
    /// its predecessor's; `cttm-replicate` has `random_epoch` for this) applying to `store`.
    pub fn new(config: BackupConfig, store: R, backup_epoch: u64) -> Backup<R> {
        Backup {
            config,
            store,
            backup_epoch,
            primary_epoch: None,
            last_resync: 0,
            requests: 0,
            resync_sent: None,
            acked: None,
            ack_due: false,
            need_record: Vec::new(),
            outbox: VecDeque::new(),
            reports: Vec::new(),
            last_heard: None,
            last_heartbeat: None,
        }
    }

    /// The replica this backup applies to.
    pub fn store(&self) -> &R {
        &self.store
    }

    /// The replica this backup applies to, for changes outside the protocol (a shadow
    /// session consuming client bytes).
    pub fn store_mut(&mut self) -> &mut R {
        &mut self.store
    }

    /// A new link to the primary is up: say what we hold.
    pub fn on_link_up(&mut self, now: Instant) {
        self.resync_sent = None;
        self.request_resync(now);
    }

    fn request_resync(&mut self, now: Instant) {
        if self
            .resync_sent
            .is_some_and(|t| now.saturating_since(t) < self.config.resync_retry)
        {
            return;
        }
        self.requests += 1;
        self.resync_sent = Some(now);
        self.outbox
            .push_back(WireMessage::ResyncRequest(ResyncRequest {
                backup_epoch: self.backup_epoch,
                request: self.requests,
                primary_epoch: self.primary_epoch,
                applied: self.store.applied_seq(),
                holdings: self.store.holdings(),
            }));
    }

    /// Bytes from the primary arrived (part of a message): it is alive.
    pub fn on_activity(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// Handles a message from the primary.
    pub fn on_message(&mut self, message: WireMessage, now: Instant) {
        self.last_heard = Some(now);
        match message {
            WireMessage::Data {
                epoch,
                seq,
                payload,
            } => {
                if self.primary_epoch != Some(epoch) {
                    self.request_resync(now);
                    return;
                }
                match self.store.apply_sequenced(seq, &payload) {
                    SequencedOutcome::Applied(_) => {
                        self.resync_sent = None;
                        self.ack_due = true;
                    }
                    SequencedOutcome::Duplicate => self.ack_due = true,
                    SequencedOutcome::Gap { expected, got } => {
                        if self.resync_sent.is_none() {
                            self.reports.push(BackupReport::Gap { expected, got });
                        }
                        self.request_resync(now);
                    }
                    SequencedOutcome::Rejected { id, error } => {
                        self.reports
                            .push(BackupReport::Rejected(id, error.to_string()));
                        self.need_record.extend(id);
                        self.ack_due = true;
                    }
                }
            }
            WireMessage::Resync {
                epoch,
                resync,
                from,
            } => {
                let from_prev = from.saturating_sub(1);
                if self.primary_epoch == Some(epoch) {
                    if resync <= self.last_resync {
                        return;
                    }
                    self.store
                        .set_applied_seq(self.store.applied_seq().max(from_prev));
                } else {
                    self.primary_epoch = Some(epoch);
                    self.store.set_applied_seq(from_prev);
                }
                self.last_resync = resync;
                self.resync_sent = None;
                self.acked = None;
                self.ack_due = true;
                self.reports.push(BackupReport::Resynchronised { from });
            }
            _ => {}
        }
    }

    /// Advances time: heartbeats, resynchronisation retries.
    pub fn poll(&mut self, now: Instant) {
        if self
            .last_heartbeat
            .is_none_or(|t| now.saturating_since(t) >= self.config.heartbeat_interval)
        {
            self.last_heartbeat = Some(now);
            self.outbox
                .push_back(WireMessage::Heartbeat { sent_at: now });
            // An idle link still learns what we hold.
            self.ack_due |= self.acked != Some(self.store.applied_seq());
        }
        if self.resync_sent.is_some() {
            self.request_resync(now);
        }
    }

    /// The next message to send. `idle` is true when nothing more is waiting to be received
    /// right now: a pending acknowledgement is then sent at once instead of after
    /// [`BackupConfig::ack_every`] messages.
    pub fn poll_transmit(&mut self, idle: bool) -> Option<WireMessage> {
        if let Some(m) = self.outbox.pop_front() {
            return Some(m);
        }
        let epoch = self.primary_epoch?;
        if !self.need_record.is_empty() {
            return Some(WireMessage::NeedRecord {
                epoch,
                ids: std::mem::take(&mut self.need_record),
            });
        }
        let applied = self.store.applied_seq();
        let behind = applied.saturating_sub(self.acked.unwrap_or(0));
        if self.ack_due && (idle || behind >= self.config.ack_every) {
            self.ack_due = false;
            self.acked = Some(applied);
            return Some(WireMessage::Ack {
                epoch,
                applied,
                consumed: self.store.take_consumed(),
            });
        }
        None
    }

    /// The failure detector: true while the primary was heard from within the last
    /// `failure_misses` heartbeat intervals.
    pub fn primary_alive(&self, now: Instant) -> bool {
        let limit = self.config.heartbeat_interval * self.config.failure_misses;
        self.last_heard
            .is_some_and(|t| now.saturating_since(t) < limit)
    }

    /// Drains what happened since the last call.
    pub fn take_reports(&mut self) -> Vec<BackupReport> {
        std::mem::take(&mut self.reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::testing::{client_data, id, opened};

    #[test]
    fn data_before_any_resync_asks_what_to_do_and_resync_sets_the_position() {
        let store = SequencedReplica::new(ReplicaConfig::default());
        let mut b = Backup::new(BackupConfig::default(), store, 3);
        let now = Instant::ZERO;
        b.on_message(
            WireMessage::Data {
                epoch: 9,
                seq: 5,
                payload: Payload::Retain(vec![]),
            },
            now,
        );
        match b.poll_transmit(true) {
            Some(WireMessage::ResyncRequest(r)) => {
                assert_eq!(
                    (r.backup_epoch, r.request, r.primary_epoch, r.applied),
                    (3, 1, None, 0)
                );
            }
            other => panic!("expected a resync request, got {other:?}"),
        }
        b.on_message(
            WireMessage::Resync {
                epoch: 9,
                resync: 1,
                from: 5,
            },
            now,
        );
        b.on_message(
            WireMessage::Data {
                epoch: 9,
                seq: 5,
                payload: Payload::Retain(vec![]),
            },
            now,
        );
        assert_eq!(b.store().applied_seq(), 5);
        assert_eq!(
            b.poll_transmit(true),
            Some(WireMessage::Ack {
                epoch: 9,
                applied: 5,
                consumed: vec![]
            })
        );
        // A delayed duplicate resync does not move the position back.
        b.on_message(
            WireMessage::Resync {
                epoch: 9,
                resync: 1,
                from: 2,
            },
            now,
        );
        assert_eq!(b.store().applied_seq(), 5);
        assert!(b.primary_alive(now));
        assert!(!b.primary_alive(now + Duration::from_secs(10)));
    }

    #[test]
    fn a_record_of_the_same_incarnation_keeps_consumed_bytes_released() {
        let mut store = SequencedReplica::new(ReplicaConfig::default());
        store.apply_sequenced(1, &Payload::Message(opened(1)));
        store.apply_sequenced(2, &Payload::Message(client_data(1, 0, 6)));
        let record = store.replica().record(&id(1)).unwrap().clone();
        store.consume_client(&id(1), 4);
        assert_eq!(store.take_consumed(), vec![(id(1), 4)]);
        assert_eq!(store.take_consumed(), vec![]);
        store.apply_sequenced(
            3,
            &Payload::Message(MessageV1::Record(Box::new(record)).into()),
        );
        let client = store.replica().record(&id(1)).unwrap().stream(Side::Client);
        assert_eq!((client.retained_from(), client.received_end()), (4, 6));
        store.apply_sequenced(4, &Payload::Retain(vec![]));
        assert!(store.replica().is_empty());
    }

    #[test]
    fn a_sequenced_checkpoint_is_applied_and_a_backwards_one_rejected() {
        use crate::checkpoint::{Checkpoint, CheckpointError};
        let checkpoint = |server_produced, at| {
            Payload::Message(
                MessageV1::Checkpoint(Checkpoint {
                    id: id(1),
                    client_consumed: 4,
                    server_produced,
                    state: vec![1, 2],
                    // The write of `server_produced` bytes this checkpoint precedes.
                    output: vec![7; server_produced as usize],
                    at: Instant::from_millis(at),
                })
                .into(),
            )
        };
        let mut store = SequencedReplica::new(ReplicaConfig::default());
        store.apply_sequenced(1, &Payload::Message(opened(1)));
        store.apply_sequenced(2, &Payload::Message(client_data(1, 0, 6)));
        assert_eq!(
            store.apply_sequenced(3, &checkpoint(10, 5)),
            SequencedOutcome::Applied(Applied::Changed)
        );
        let record = store.replica().record(&id(1)).unwrap();
        assert_eq!(record.checkpoint().map(|c| c.server_produced), Some(10));
        assert_eq!(record.stream(Side::Client).retained_from(), 4);
        assert_eq!(
            store.apply_sequenced(4, &checkpoint(9, 6)),
            SequencedOutcome::Rejected {
                id: Some(id(1)),
                error: ReplicaError::Checkpoint(CheckpointError::OffsetsBackwards {
                    id: id(1),
                    held_client: 4,
                    held_server: 10,
                    got_client: 4,
                    got_server: 9,
                }),
            }
        );
    }
}
