//! The backup's side of the protocol, sans-IO: applies the primary's sequenced messages to
//! the [`ReplicaStore`] in order, acknowledges, asks for resynchronisation on every new link
//! and after a gap, and detects a silent primary.

use crate::store::{ReplicaStore, SequencedOutcome};
use crate::wire::{ResyncRequest, WireMessage};
use cttm_core::endpoint::ConnectionId;
use cttm_core::time::Instant;
use std::collections::VecDeque;
use std::time::Duration;

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

/// The backup's protocol state.
#[derive(Debug)]
pub struct Backup {
    config: BackupConfig,
    store: ReplicaStore,
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

impl Backup {
    /// A backup incarnation named `backup_epoch` (random, see
    /// [`random_epoch`](crate::random_epoch)) applying to `store`.
    pub fn new(config: BackupConfig, store: ReplicaStore, backup_epoch: u64) -> Backup {
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

    /// The store this backup applies to.
    pub fn store(&self) -> &ReplicaStore {
        &self.store
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
    use crate::wire::Payload;
    use cttm_core::ReplicaConfig;

    #[test]
    fn data_before_any_resync_asks_what_to_do_and_resync_sets_the_position() {
        let store = ReplicaStore::new(ReplicaConfig::default());
        let mut b = Backup::new(BackupConfig::default(), store.clone(), 3);
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
        assert_eq!(store.applied_seq(), 5);
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
        assert_eq!(store.applied_seq(), 5);
        assert!(b.primary_alive(now));
        assert!(!b.primary_alive(now + Duration::from_secs(10)));
    }
}
