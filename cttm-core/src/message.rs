//! Replication messages: what the primary ships to the backup. Versioned serde types: the
//! outer [`ReplicationMessage`] enum has one variant per protocol version, so a transport only
//! frames and ships them, and a receiver can tell a message of another version from garbage.

use crate::checkpoint::Checkpoint;
use crate::endpoint::ConnectionId;
use crate::event::ConnectionEvent;
use crate::record::ConnectionRecord;
use crate::time::Instant;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A replication message of some protocol version.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ReplicationMessage {
    /// Protocol version 1.
    V1(MessageV1),
}

impl ReplicationMessage {
    /// The protocol version of this message.
    pub fn version(&self) -> u16 {
        match self {
            ReplicationMessage::V1(_) => 1,
        }
    }
}

impl From<MessageV1> for ReplicationMessage {
    fn from(m: MessageV1) -> Self {
        ReplicationMessage::V1(m)
    }
}

/// The messages of protocol version 1.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MessageV1 {
    /// One tracker event.
    Event(ConnectionEvent),
    /// The whole state of one connection (resynchronisation after a reconnect): replaces what
    /// the backup holds for that connection.
    Record(Box<ConnectionRecord>),
    /// The primary no longer tracks this connection; the backup may drop it.
    Forget(ConnectionId),
    /// Liveness, with the sender's clock.
    Heartbeat {
        /// The sender's time when it sent the heartbeat.
        sent_at: Instant,
    },
    /// An application checkpoint of one connection (a non-deterministic daemon's state,
    /// [`crate::checkpoint`]): the backup keeps the latest one with the connection's record.
    Checkpoint(Checkpoint),
}
