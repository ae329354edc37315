//! The messages of the replication protocol, as plain serde types.
//!
//! Every message travels as a [`WireMessage`]. The first message of a link in each direction
//! is a [`Hello`] agreeing on protocol version and services. How they become bytes (postcard,
//! the hello's fixed magic and version prefix) is the transport's business: `cttm-replicate`'s
//! `wire` module.

use crate::endpoint::{ConnectionId, ServiceSet};
use crate::message::{MessageV1, PROTOCOL_VERSION, ReplicationMessage};
use crate::replica::Holding;
use crate::time::Instant;
use crate::{EventKind, Side};
use serde::{Deserialize, Serialize};

/// What a sequenced message carries.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Payload {
    /// A replication message to apply to the replica.
    Message(ReplicationMessage),
    /// Full resynchronisation: the backup forgets every connection not listed (the primary
    /// tracks exactly these; their records follow).
    Retain(Vec<ConnectionId>),
}

impl Payload {
    /// The connection this payload is about, if exactly one.
    pub fn connection(&self) -> Option<ConnectionId> {
        match self {
            Payload::Message(m) => message_connection(m),
            Payload::Retain(_) => None,
        }
    }

    /// An estimate of the payload's encoded size in bytes, used to bound the primary's
    /// retained queue (exact to within a few dozen bytes per message).
    pub fn approximate_size(&self) -> usize {
        const OVERHEAD: usize = 96;
        match self {
            Payload::Retain(ids) => OVERHEAD + ids.len() * 40,
            Payload::Message(ReplicationMessage::V1(m)) => {
                OVERHEAD
                    + match m {
                        MessageV1::Event(e) => match &e.kind {
                            EventKind::ClientData { bytes, .. }
                            | EventKind::ServerData { bytes, .. } => bytes.len(),
                            _ => 64,
                        },
                        MessageV1::Record(r) => {
                            256 + r.stream(Side::Client).retained_len()
                                + r.stream(Side::Server).retained_len()
                        }
                        MessageV1::Checkpoint(c) => 64 + c.state.len(),
                        MessageV1::Forget(_) | MessageV1::Heartbeat { .. } => 0,
                    }
            }
        }
    }
}

/// The connection a replication message is about (`None` for heartbeats).
pub fn message_connection(message: &ReplicationMessage) -> Option<ConnectionId> {
    match message {
        ReplicationMessage::V1(m) => match m {
            MessageV1::Event(e) => Some(e.id),
            MessageV1::Record(r) => Some(r.id()),
            MessageV1::Forget(id) => Some(*id),
            MessageV1::Checkpoint(c) => Some(c.id),
            MessageV1::Heartbeat { .. } => None,
        },
    }
}

/// The backup's answer to "what do you hold", sent on every new link and after a gap.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ResyncRequest {
    /// A random number naming this backup incarnation (a restarted backup has a new one).
    pub backup_epoch: u64,
    /// Counter of this backup's requests: the primary ignores one not newer than the last
    /// it answered (a delayed duplicate).
    pub request: u64,
    /// The primary incarnation whose sequence numbers `applied` counts, if any.
    pub primary_epoch: Option<u64>,
    /// Every sequenced message up to this one is applied.
    pub applied: u64,
    /// What the replica holds per connection ([`crate::Replica::holdings`]).
    pub holdings: Vec<Holding>,
}

/// One message of the replication protocol.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum WireMessage {
    /// Primary → backup: the sequenced message `seq` of primary incarnation `epoch`.
    Data {
        /// The primary incarnation.
        epoch: u64,
        /// The message's sequence number (1, 2, …; never reused within an epoch).
        seq: u64,
        /// What to apply.
        payload: Payload,
    },
    /// Backup → primary: what the backup holds.
    Ack {
        /// The primary incarnation the backup follows.
        epoch: u64,
        /// Every message up to this sequence number is applied.
        applied: u64,
        /// Client bytes the backup released (its shadow sessions consumed them), per
        /// connection: the primary may release its copies below these offsets.
        consumed: Vec<(ConnectionId, u64)>,
    },
    /// Liveness, both ways.
    Heartbeat {
        /// The sender's clock.
        sent_at: Instant,
    },
    /// Backup → primary: resynchronise me.
    ResyncRequest(ResyncRequest),
    /// Primary → backup: sequencing restarts at `from`; what was missing follows.
    Resync {
        /// The primary incarnation.
        epoch: u64,
        /// Counter of this primary's resyncs (a delayed duplicate is ignored).
        resync: u64,
        /// The next sequence number the backup will receive.
        from: u64,
    },
    /// Backup → primary: these connections' messages could not be applied (they diverged);
    /// send their whole records.
    NeedRecord {
        /// The primary incarnation.
        epoch: u64,
        /// The connections.
        ids: Vec<ConnectionId>,
    },
}

/// The first message of a link, in each direction: agrees on version and services.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// What the sender is.
    pub role: Role,
    /// The services the sender protects; both ends must protect the same set.
    pub services: ServiceSet,
}

impl Hello {
    /// A hello of this build's version.
    pub fn new(role: Role, services: ServiceSet) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            services,
        }
    }
}

/// Which end of a replication link.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Role {
    /// The host that tracks and ships.
    Primary,
    /// The host that holds the replica.
    Backup,
}
