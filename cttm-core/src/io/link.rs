//! The replication link as the agents' drivers see it. The protocol's two endpoints are the
//! core's ([`crate::replication`]); `cttm-replicate` runs them over a transport (framing,
//! Noise, TCP) in threads and implements these traits (`PrimaryService`, `BackupService`,
//! `ReplicaStore`). A driver takes the link as a trait object, so the crate of a role never
//! depends on the crate of the link.

use crate::endpoint::ConnectionId;
use crate::event::ConnectionEvent;
use crate::message::ReplicationMessage;
use crate::replica::Replica;
use crate::replication::{
    AckedOffsets, BackupReport, PrimaryReport, SubmitError, Submitted, UnprotectedReason,
};
use crate::snapshot::ConnectionSnapshot;
use crate::time::Instant;
use std::time::Duration;

/// The primary's end of the link.
///
/// Contract: messages submitted are shipped in order, numbered and retained until the backup
/// acknowledges them; [`acknowledged`](Self::acknowledged) tells, per connection, which client
/// and server offsets the backup holds (what output commit waits for);
/// [`wait_acked`](Self::wait_acked) blocks at most `timeout` and returns as soon as the
/// backup acknowledged `seq`. Methods take `&self`: the link runs in threads of its own.
pub trait PrimaryLink: Send + Sync {
    /// Ships messages (the tracker's events), in order.
    fn submit_all(&self, messages: Vec<ReplicationMessage>) -> Result<Vec<Submitted>, SubmitError>;
    /// Forgets connections closed before `closed_before` (event time) on both ends.
    fn forget_closed(&self, closed_before: Instant) -> usize;
    /// What the backup holds of a connection.
    fn acknowledged(&self, id: &ConnectionId) -> Option<AckedOffsets>;
    /// Connections the link cannot protect now, with the reason.
    fn unprotected(&self) -> Vec<(ConnectionId, UnprotectedReason)>;
    /// The highest message number the backup acknowledged.
    fn acked_seq(&self) -> u64;
    /// The numbers shipped and acknowledged, in one consistent reading.
    fn progress(&self) -> LinkProgress;
    /// Waits at most `timeout` until the backup acknowledged message `seq`.
    fn wait_acked(&self, seq: u64, timeout: Duration) -> bool;
    /// A link is established now.
    fn link_up(&self) -> bool;
    /// The failure detector hears the backup.
    fn backup_alive(&self) -> bool;
    /// Link errors since the last call (as messages) and how many more were not kept.
    fn take_errors(&self) -> (Vec<String>, u64);
    /// The protocol's reports since the last call.
    fn take_reports(&self) -> Vec<PrimaryReport>;
}

/// Where the primary's end of the link stands ([`PrimaryLink::progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProgress {
    /// The highest message number the backup acknowledged.
    pub acked_seq: u64,
    /// The number of the last message shipped.
    pub last_seq: u64,
    /// No connection is unprotected (every one is in the retained queue whole).
    pub all_protected: bool,
}

/// The backup's end of the link. Dropping it stops the replication (at takeover); the replica
/// ([`replica`](Self::replica)) stays readable.
pub trait BackupLink: Send {
    /// The failure detector hears the primary.
    fn primary_alive(&self) -> bool;
    /// A link is established now.
    fn link_up(&self) -> bool;
    /// Link errors since the last call (as messages) and how many more were not kept.
    fn take_errors(&self) -> (Vec<String>, u64);
    /// The protocol's reports since the last call.
    fn take_reports(&self) -> Vec<BackupReport>;
    /// The replica the link applies to, shared.
    fn replica(&self) -> std::sync::Arc<dyn ReplicaAccess>;
}

/// A change of the backup's replica, in the order the changes were applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// An event was applied to its connection's record and changed it.
    Event(ConnectionEvent),
    /// A whole record replaced the connection's (a resynchronisation): read it from the
    /// replica.
    Record(ConnectionId),
    /// The connection was dropped from the replica (forgotten by the primary, or not
    /// retained by a full resynchronisation).
    Forgotten(ConnectionId),
}

/// The backup's replica, shared between the link (which applies to it) and the driver.
///
/// Contract: every read sees a consistent replica; [`subscribe`](Self::subscribe) delivers
/// every change applied after it, in order, through a bounded queue that never makes the
/// link wait: changes that do not fit are counted as lagged, and a subscriber that lagged
/// has lost track of every connection.
pub trait ReplicaAccess: Send + Sync {
    /// Every connection's snapshot.
    fn snapshots(&self) -> Vec<ConnectionSnapshot>;
    /// Reads the replica under its lock: calls `read` exactly once.
    fn inspect(&self, read: &mut dyn FnMut(&Replica));
    /// Releases a connection's client bytes below `upto` (a shadow session consumed them).
    fn consume_client(&self, id: &ConnectionId, upto: u64);
    /// Connections held.
    fn connection_count(&self) -> usize;
    /// Subscribes to the changes from now on, with room for `capacity` changes.
    fn subscribe(&self, capacity: usize) -> Box<dyn ReplicaSubscription>;
}

/// A subscription to a replica's changes (see [`ReplicaAccess::subscribe`]).
pub trait ReplicaSubscription: Send {
    /// The next change, without waiting.
    fn try_recv(&mut self) -> Option<ReplicaChange>;
    /// Changes dropped because the queue was full, so far.
    fn lagged(&self) -> u64;
}

impl dyn ReplicaAccess + '_ {
    /// Reads the replica under its lock: calls `read` exactly once.and returns what `read` returns (`None` only from a
    /// backend that broke [`ReplicaAccess::inspect`]'s contract and never called it).
    pub fn read<T>(&self, read: impl FnOnce(&Replica) -> T) -> Option<T> {
        let mut read = Some(read);
        let mut out = None;
        self.inspect(&mut |replica| {
            if let Some(read) = read.take() {
                out = Some(read(replica));
            }
        });
        out
    }
}
