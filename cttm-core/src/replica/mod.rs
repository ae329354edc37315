//! [`Replica`]: the backup's pure state. It applies replication messages in order to one
//! [`ConnectionRecord`] per connection, detects gaps and duplicates by stream offset, and
//! yields the same [`ConnectionSnapshot`] the primary's tracker would.

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::endpoint::ConnectionId;
use crate::event::{ConnectionEvent, EventKind};
use crate::message::{MessageV1, ReplicationMessage};
use crate::record::{Applied, ApplyError, ClientRetention, ConnectionRecord};
use crate::snapshot::ConnectionSnapshot;
use crate::time::Instant;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use thiserror::Error;

/// Replica settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// How long client bytes are kept (default: until a shadow session consumes them, at most
    /// 16 MiB per connection).
    pub client_retention: ClientRetention,
    /// The most connections held (default 100,000). Closed connections are dropped first.
    pub max_connections: usize,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            client_retention: ClientRetention::UntilConsumed { limit: 16 << 20 },
            max_connections: 100_000,
        }
    }
}

/// Why a message was not applied. Nothing already held is lost.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReplicaError {
    /// The event does not fit the connection's record (gap, conflict, unknown connection).
    #[error("connection {id}: {source}")]
    Apply {
        /// The connection.
        id: ConnectionId,
        /// What did not fit.
        #[source]
        source: ApplyError,
    },
    /// The table is full of open connections; the new one is not protected. Raise
    /// `max_connections`.
    #[error("replica full ({0} connections); raise max_connections")]
    Full(usize),
    /// An application checkpoint was refused (its offsets go backwards); the connection keeps
    /// the checkpoint it held.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What one connection's replica holds, for resynchronisation ("what do you hold").
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Holding {
    /// The connection.
    pub id: ConnectionId,
    /// End of the client stream held, in sequence space: the bytes, plus one once the
    /// client's FIN is held (a FIN takes one sequence number, RFC 9293 §3.4), as
    /// [`StreamState::sequence_end`](crate::record::StreamState::sequence_end).
    pub client_end: u64,
    /// End of the server stream held, in sequence space (bytes, plus one for its FIN).
    pub server_end: u64,
    /// The connection is closed.
    pub closed: bool,
}

/// The backup's state: one record per replicated connection.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    config: ReplicaConfig,
    records: HashMap<ConnectionId, ConnectionRecord>,
    last_heartbeat: Option<Instant>,
}

impl Replica {
    /// An empty replica.
    pub fn new(config: ReplicaConfig) -> Self {
        Replica {
            config,
            records: HashMap::new(),
            last_heartbeat: None,
        }
    }

    /// Applies one replication message.
    pub fn apply_message(&mut self, message: &ReplicationMessage) -> Result<Applied, ReplicaError> {
        match message {
            ReplicationMessage::V1(m) => self.apply_v1(m),
        }
    }

    fn apply_v1(&mut self, message: &MessageV1) -> Result<Applied, ReplicaError> {
        match message {
            MessageV1::Event(event) => self.apply_event(event),
            MessageV1::Record(record) => {
                self.make_room(record.id())?;
                self.records.insert(record.id(), (**record).clone());
                Ok(Applied::Changed)
            }
            MessageV1::Forget(id) => Ok(if self.records.remove(id).is_some() {
                Applied::Changed
            } else {
                Applied::Duplicate
            }),
            MessageV1::Heartbeat { sent_at } => {
                self.last_heartbeat = Some(*sent_at);
                Ok(Applied::Changed)
            }
            MessageV1::Checkpoint(checkpoint) => self.apply_checkpoint(checkpoint),
        }
    }

    /// Applies an application checkpoint to its connection's record
    /// ([`ConnectionRecord::apply_checkpoint`]): a later one replaces the one held and
    /// releases the client bytes below its `client_consumed`, one not later is ignored, one
    /// whose offsets go backwards is refused.
    pub fn apply_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<Applied, ReplicaError> {
        let id = checkpoint.id;
        let record = self.records.get_mut(&id).ok_or(ReplicaError::Apply {
            id,
            source: ApplyError::Unknown,
        })?;
        Ok(record.apply_checkpoint(checkpoint)?)
    }

    /// Applies one event.
    pub fn apply_event(&mut self, event: &ConnectionEvent) -> Result<Applied, ReplicaError> {
        let id = event.id;
        if let EventKind::Opened(handshake) = &event.kind {
            let reopen = self.records.get(&id).is_none_or(|r| r.closed().is_some());
            if reopen {
                self.make_room(id)?;
                let record =
                    ConnectionRecord::open(id, event.at, *handshake, self.config.client_retention);
                self.records.insert(id, record);
                return Ok(Applied::Changed);
            }
        }
        let record = self.records.get_mut(&id).ok_or(ReplicaError::Apply {
            id,
            source: ApplyError::Unknown,
        })?;
        record
            .apply(event)
            .map_err(|source| ReplicaError::Apply { id, source })
    }

    fn make_room(&mut self, incoming: ConnectionId) -> Result<(), ReplicaError> {
        if self.records.len() < self.config.max_connections || self.records.contains_key(&incoming)
        {
            return Ok(());
        }
        let oldest_closed = self
            .records
            .values()
            .filter(|r| r.closed().is_some())
            .min_by_key(|r| r.updated_at())
            .map(ConnectionRecord::id);
        match oldest_closed {
            Some(id) => {
                self.records.remove(&id);
                Ok(())
            }
            None => Err(ReplicaError::Full(self.records.len())),
        }
    }

    /// The snapshot of one connection.
    pub fn snapshot(&self, id: &ConnectionId) -> Option<ConnectionSnapshot> {
        self.records.get(id).map(ConnectionRecord::snapshot)
    }

    /// Snapshots of every connection, ordered by identity.
    pub fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        let mut v: Vec<_> = self
            .records
            .values()
            .map(ConnectionRecord::snapshot)
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The record of one connection (retained bytes, stream positions).
    pub fn record(&self, id: &ConnectionId) -> Option<&ConnectionRecord> {
        self.records.get(id)
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.records.values()
    }

    /// Releases a connection's client bytes below `upto` (its shadow session consumed them).
    pub fn consume_client(&mut self, id: &ConnectionId, upto: u64) {
        if let Some(r) = self.records.get_mut(id) {
            r.consume_client(upto);
        }
    }

    /// What the replica holds, per connection, ordered by identity.
    pub fn holdings(&self) -> Vec<Holding> {
        let mut v: Vec<_> = self
            .records
            .values()
            .map(|r| Holding {
                id: r.id(),
                client_end: r.stream(crate::Side::Client).sequence_end(),
                server_end: r.stream(crate::Side::Server).sequence_end(),
                closed: r.closed().is_some(),
            })
            .collect();
        v.sort_by_key(|h| h.id);
        v
    }

    /// Drops a connection.
    pub fn forget(&mut self, id: &ConnectionId) {
        self.records.remove(id);
    }

    /// How many connections are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The sender time of the last heartbeat applied.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.last_heartbeat
    }
}
