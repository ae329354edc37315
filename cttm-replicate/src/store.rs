//! The backup's replica store: the core's [`SequencedReplica`] (a [`Replica`] that applies
//! sequenced messages strictly in sequence order), shared between the replication thread and
//! readers (restore, shadow sessions) through a cloneable, thread-safe handle, with counters
//! and subscriptions to what it applies. It is the [`BackupReplica`] the
//! [`Backup`](crate::Backup) endpoint applies to.

use crate::wire::Payload;
use cttm_core::endpoint::ConnectionId;
use cttm_core::message::MessageV1;
use cttm_core::record::Applied;
use cttm_core::replica::Holding;
pub use cttm_core::replication::backup::SequencedOutcome;
use cttm_core::replication::backup::{BackupReplica, SequencedReplica};
use cttm_core::snapshot::ConnectionSnapshot;
use cttm_core::{Replica, ReplicaConfig, ReplicationMessage, Side};
use parking_lot::RwLock;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Counters of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages applied.
    pub applied: u64,
    /// Duplicates ignored.
    pub duplicates: u64,
    /// Messages that arrived after a gap (not applied).
    pub gaps: u64,
    /// Messages the replica rejected.
    pub rejected: u64,
}

/// What a subscriber learns about the store's connections ([`ReplicaStore::subscribe`]), in
/// the order the changes were applied (the core's
/// [`ReplicaChange`](cttm_core::io::link::ReplicaChange)).
pub use cttm_core::io::link::ReplicaChange as StoreEvent;

/// A subscription to the store's changes: a bounded queue filled by the replication thread,
/// which never waits for a slow subscriber. Changes that do not fit are dropped and counted
/// ([`lagged`](Self::lagged)); a subscriber that lagged has lost track of every connection.
#[derive(Debug)]
pub struct StoreSubscription {
    receiver: Receiver<StoreEvent>,
    lagged: Arc<AtomicU64>,
}

impl StoreSubscription {
    /// The next change, waiting at most `timeout`; `None` when nothing came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<StoreEvent> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// The next change already queued, without waiting.
    pub fn try_recv(&self) -> Option<StoreEvent> {
        self.receiver.try_recv().ok()
    }

    /// How many changes were dropped because the queue was full (0 while the subscriber
    /// keeps up).
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// The sending half of one subscription.
#[derive(Debug)]
struct Subscriber {
    sender: SyncSender<StoreEvent>,
    lagged: Arc<AtomicU64>,
}

#[derive(Debug)]
struct StoreInner {
    replica: SequencedReplica,
    stats: StoreStats,
    subscribers: Vec<Subscriber>,
}

impl StoreInner {
    /// Hands `event` to every subscriber without waiting; a full queue counts a lag, a
    /// dropped subscription is removed.
    fn publish(&mut self, event: impl FnOnce() -> StoreEvent) {
        if self.subscribers.is_empty() {
            return;
        }
        let event = event();
        self.subscribers
            .retain(|s| match s.sender.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.lagged.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }
}

/// The backup's replica, shared. Cloning gives another handle to the same store.
#[derive(Clone, Debug)]
pub struct ReplicaStore {
    inner: Arc<RwLock<StoreInner>>,
}

impl ReplicaStore {
    /// An empty store.
    pub fn new(config: ReplicaConfig) -> ReplicaStore {
        ReplicaStore {
            inner: Arc::new(RwLock::new(StoreInner {
                replica: SequencedReplica::new(config),
                stats: StoreStats::default(),
                subscribers: Vec::new(),
            })),
        }
    }

    /// Applies the message numbered `seq` if it is the next one (`applied_seq() + 1`), as
    /// [`SequencedReplica`] does, counting what happened and telling the subscribers what
    /// changed.
    pub fn apply_sequenced(&self, seq: u64, payload: &Payload) -> SequencedOutcome {
        let mut inner = self.inner.write();
        let forgotten = match payload {
            Payload::Retain(keep)
                if !inner.subscribers.is_empty() && seq == inner.replica.applied_seq() + 1 =>
            {
                let keep: BTreeSet<_> = keep.iter().copied().collect();
                inner
                    .replica
                    .replica()
                    .records()
                    .map(|r| r.id())
                    .filter(|id| !keep.contains(id))
                    .collect()
            }
            _ => Vec::new(),
        };
        let outcome = inner.replica.apply_sequenced(seq, payload);
        match &outcome {
            SequencedOutcome::Applied(a) => {
                inner.stats.applied += 1;
                if *a == Applied::Changed {
                    publish_applied(&mut inner, payload, forgotten);
                }
            }
            SequencedOutcome::Duplicate => inner.stats.duplicates += 1,
            SequencedOutcome::Gap { .. } => inner.stats.gaps += 1,
            SequencedOutcome::Rejected { .. } => inner.stats.rejected += 1,
        }
        outcome
    }

    /// Subscribes to the store's changes from now on: every applied change, through a queue
    /// of at most `capacity` changes (see [`StoreSubscription`]). Dropping the subscription
    /// ends it.
    pub fn subscribe(&self, capacity: usize) -> StoreSubscription {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity.max(1));
        let lagged = Arc::new(AtomicU64::new(0));
        self.inner.write().subscribers.push(Subscriber {
            sender,
            lagged: lagged.clone(),
        });
        StoreSubscription { receiver, lagged }
    }

    /// The highest sequence number applied (every one below it is applied too).
    pub fn applied_seq(&self) -> u64 {
        self.inner.read().replica.applied_seq()
    }

    /// What the replica holds, per connection ([`Replica::holdings`]: stream ends in
    /// sequence space, a FIN held counting one offset).
    pub fn holdings(&self) -> Vec<Holding> {
        self.inner.read().replica.holdings()
    }

    /// Snapshots of every connection, ordered by identity.
    pub fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        self.inner.read().replica.replica().snapshots()
    }

    /// The snapshot of one connection.
    pub fn snapshot(&self, id: &ConnectionId) -> Option<ConnectionSnapshot> {
        self.inner.read().replica.replica().snapshot(id)
    }

    /// The retained client bytes of a connection, with the offset of the first one.
    pub fn client_bytes(&self, id: &ConnectionId) -> Option<(u64, Vec<u8>)> {
        self.retained(id, Side::Client)
    }

    /// The retained server bytes of a connection (sent, not yet acknowledged by the client),
    /// with the offset of the first one.
    pub fn server_bytes(&self, id: &ConnectionId) -> Option<(u64, Vec<u8>)> {
        self.retained(id, Side::Server)
    }

    fn retained(&self, id: &ConnectionId, side: Side) -> Option<(u64, Vec<u8>)> {
        let inner = self.inner.read();
        let stream = inner.replica.replica().record(id)?.stream(side);
        let from = stream.retained_from();
        Some((from, stream.bytes_between(from, stream.received_end())))
    }

    /// Releases a connection's client bytes below `upto` (its shadow session consumed them);
    /// the primary learns it with the next acknowledgement and releases its copies.
    pub fn consume_client(&self, id: &ConnectionId, upto: u64) {
        self.inner.write().replica.consume_client(id, upto);
    }

    /// How many connections are held.
    pub fn len(&self) -> usize {
        self.inner.read().replica.replica().len()
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.inner.read().replica.replica().is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> StoreStats {
        self.inner.read().stats
    }

    /// Runs `f` with read access to the replica.
    pub fn with_replica<T>(&self, f: impl FnOnce(&Replica) -> T) -> T {
        f(self.inner.read().replica.replica())
    }
}

/// The store as the backup endpoint's replica ([`Backup`](crate::Backup) applies to it).
impl BackupReplica for ReplicaStore {
    fn apply_sequenced(&mut self, seq: u64, payload: &Payload) -> SequencedOutcome {
        ReplicaStore::apply_sequenced(self, seq, payload)
    }

    fn applied_seq(&self) -> u64 {
        ReplicaStore::applied_seq(self)
    }

    fn set_applied_seq(&mut self, seq: u64) {
        self.inner.write().replica.set_applied_seq(seq);
    }

    fn holdings(&self) -> Vec<Holding> {
        ReplicaStore::holdings(self)
    }

    fn take_consumed(&mut self) -> Vec<(ConnectionId, u64)> {
        self.inner.write().replica.take_consumed()
    }
}

/// Tells the subscribers what an applied payload changed (`forgotten`: the connections a
/// `Retain` dropped).
fn publish_applied(inner: &mut StoreInner, payload: &Payload, forgotten: Vec<ConnectionId>) {
    match payload {
        Payload::Message(ReplicationMessage::V1(m)) => match m {
            MessageV1::Event(e) => inner.publish(|| StoreEvent::Event(e.clone())),
            MessageV1::Record(r) => inner.publish(|| StoreEvent::Record(r.id())),
            MessageV1::Forget(id) => inner.publish(|| StoreEvent::Forgotten(*id)),
            // A checkpoint only replaces the state a takeover resumes from: nothing for the
            // subscribers (shadow sessions replay deterministic daemons, which do not
            // checkpoint).
            MessageV1::Heartbeat { .. } | MessageV1::Checkpoint(_) => {}
        },
        Payload::Retain(_) => {
            for id in forgotten {
                inner.publish(|| StoreEvent::Forgotten(id));
            }
        }
    }
}

impl cttm_core::io::link::ReplicaAccess for ReplicaStore {
    fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        ReplicaStore::snapshots(self)
    }

    fn inspect(&self, read: &mut dyn FnMut(&Replica)) {
        self.with_replica(|r| read(r));
    }

    fn consume_client(&self, id: &ConnectionId, upto: u64) {
        ReplicaStore::consume_client(self, id, upto);
    }

    fn connection_count(&self) -> usize {
        self.len()
    }

    fn subscribe(&self, capacity: usize) -> Box<dyn cttm_core::io::link::ReplicaSubscription> {
        Box::new(ReplicaStore::subscribe(self, capacity))
    }
}

impl cttm_core::io::link::ReplicaSubscription for StoreSubscription {
    fn try_recv(&mut self) -> Option<StoreEvent> {
        StoreSubscription::try_recv(self)
    }

    fn lagged(&self) -> u64 {
        StoreSubscription::lagged(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::event::{ConnectionEvent, EventKind, Handshake};

    fn id() -> ConnectionId {
        ConnectionId {
            client: "198.18.0.2:4000".parse().unwrap(),
            server: "198.18.0.1:80".parse().unwrap(),
        }
    }

    fn ev(kind: EventKind) -> Payload {
        Payload::Message(
            MessageV1::Event(ConnectionEvent {
                id: id(),
                at: cttm_core::Instant::ZERO,
                kind,
            })
            .into(),
        )
    }

    fn opened() -> Payload {
        ev(EventKind::Opened(Handshake {
            client_isn: cttm_core::SeqNumber(10),
            server_isn: cttm_core::SeqNumber(20),
            client_mss: Some(1460),
            server_mss: Some(1460),
            client_window_scale: None,
            server_window_scale: None,
            sack_permitted: false,
            timestamps: false,
            client_syn_tsval: None,
            server_syn_tsval: None,
            client_syn_window: 1000,
            server_syn_window: 1000,
            mid_stream: false,
        }))
    }

    #[test]
    fn messages_apply_in_sequence_order_only() {
        let store = ReplicaStore::new(ReplicaConfig::default());
        let data = ev(EventKind::ClientData {
            offset: 0,
            bytes: b"hello".to_vec(),
        });
        assert_eq!(
            store.apply_sequenced(2, &data),
            SequencedOutcome::Gap {
                expected: 1,
                got: 2
            }
        );
        assert!(store.is_empty());
        assert_eq!(
            store.apply_sequenced(1, &opened()),
            SequencedOutcome::Applied(Applied::Changed)
        );
        assert_eq!(
            store.apply_sequenced(1, &opened()),
            SequencedOutcome::Duplicate
        );
        assert_eq!(
            store.apply_sequenced(2, &data),
            SequencedOutcome::Applied(Applied::Changed)
        );
        assert_eq!(store.client_bytes(&id()), Some((0, b"hello".to_vec())));
        let gap = ev(EventKind::ClientData {
            offset: 50,
            bytes: b"x".to_vec(),
        });
        assert!(matches!(
            store.apply_sequenced(3, &gap),
            SequencedOutcome::Rejected { id: Some(_), .. }
        ));
        assert_eq!(store.applied_seq(), 3);
        let s = store.stats();
        assert_eq!((s.applied, s.duplicates, s.gaps, s.rejected), (2, 1, 1, 1));
    }

    #[test]
    fn subscribers_learn_every_change_in_order_and_a_full_queue_counts_a_lag() {
        let store = ReplicaStore::new(ReplicaConfig::default());
        let sub = store.subscribe(16);
        let small = store.subscribe(1);
        store.apply_sequenced(1, &opened());
        let data = ev(EventKind::ClientData {
            offset: 0,
            bytes: b"abc".to_vec(),
        });
        store.apply_sequenced(2, &data);
        // A duplicate changes nothing and is not published.
        store.apply_sequenced(3, &data);
        let record = store.with_replica(|r| r.record(&id()).unwrap().clone());
        store.apply_sequenced(
            4,
            &Payload::Message(MessageV1::Record(Box::new(record)).into()),
        );
        store.apply_sequenced(5, &Payload::Retain(vec![]));
        let mut got = Vec::new();
        while let Some(e) = sub.try_recv() {
            got.push(e);
        }
        let Payload::Message(ReplicationMessage::V1(MessageV1::Event(first))) = opened() else {
            unreachable!()
        };
        let Payload::Message(ReplicationMessage::V1(MessageV1::Event(second))) = data else {
            unreachable!()
        };
        assert_eq!(
            got,
            vec![
                StoreEvent::Event(first.clone()),
                StoreEvent::Event(second),
                StoreEvent::Record(id()),
                StoreEvent::Forgotten(id()),
            ]
        );
        assert_eq!(sub.lagged(), 0);
        assert_eq!(small.try_recv(), Some(StoreEvent::Event(first)));
        assert_eq!(small.try_recv(), None);
        assert_eq!(small.lagged(), 3);
        // A dropped subscription is removed at the next change.
        drop(small);
        store.apply_sequenced(6, &opened());
        assert_eq!(store.inner.read().subscribers.len(), 1);
        assert!(sub.recv_timeout(Duration::from_millis(10)).is_some());
    }
}
