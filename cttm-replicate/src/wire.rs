//! The messages of the replication protocol and their byte encoding.
//!
//! Every message travels as [`WireMessage`], encoded with postcard. The first message of a
//! link in each direction is a [`Hello`], whose encoding starts with a fixed magic and the
//! protocol version in big-endian *before* any postcard data, so a peer of another version is
//! recognised (and named) even if the rest of its encoding changed.

use cttm_core::ReplicationMessage;
use cttm_core::endpoint::{ConnectionId, ServiceSet};
use cttm_core::message::MessageV1;
use cttm_core::replica::Holding;
use cttm_core::time::Instant;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Magic that starts every [`Hello`].
pub const HELLO_MAGIC: [u8; 4] = *b"CTRP";

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
                            cttm_core::EventKind::ClientData { bytes, .. }
                            | cttm_core::EventKind::ServerData { bytes, .. } => bytes.len(),
                            _ => 64,
                        },
                        MessageV1::Record(r) => {
                            256 + r.stream(cttm_core::Side::Client).retained_len()
                                + r.stream(cttm_core::Side::Server).retained_len()
                        }
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
    /// What the replica holds per connection ([`cttm_core::Replica::holdings`]).
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
    /// The sender's protocol version ([`cttm_core::PROTOCOL_VERSION`]).
    pub version: u16,
    /// What the sender is.
    pub role: Role,
    /// The services the sender protects; both ends must protect the same set.
    pub services: ServiceSet,
}

/// Which end of a replication link.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Role {
    /// The host that tracks and ships.
    Primary,
    /// The host that holds the replica.
    Backup,
}

/// A message could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not a valid message of this protocol version (corrupted, or a bug in the
    /// peer). The link is closed and resynchronised.
    #[error("malformed replication message ({0}); the link will be reset and resynchronised")]
    Malformed(String),
    /// A hello did not start with the protocol's magic: the peer is not a CTTM replication
    /// endpoint (check the address and port).
    #[error(
        "the peer is not a CTTM replication endpoint (bad hello magic); check the configured address and port"
    )]
    NotReplication,
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks replication protocol version {theirs}, this build speaks version {ours}; run the same CTTM release on primary and backup"
    )]
    VersionMismatch {
        /// This build's version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
}

impl WireMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail (no maps with non-string keys, no
        // unsized sequences).
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a message received from the peer.
    pub fn decode(bytes: &[u8]) -> Result<WireMessage, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

impl Hello {
    /// A hello of this build's version.
    pub fn new(role: Role, services: ServiceSet) -> Hello {
        Hello {
            version: cttm_core::PROTOCOL_VERSION,
            role,
            services,
        }
    }

    /// Encodes: magic, version (u16 big-endian), then the postcard body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&HELLO_MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend(postcard::to_allocvec(&(self.role, &self.services)).unwrap_or_default());
        out
    }

    /// Decodes a hello, checking the magic and that the version is this build's.
    pub fn decode(bytes: &[u8]) -> Result<Hello, DecodeError> {
        if bytes.len() < 6 || bytes[..4] != HELLO_MAGIC {
            return Err(DecodeError::NotReplication);
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != cttm_core::PROTOCOL_VERSION {
            return Err(DecodeError::VersionMismatch {
                ours: cttm_core::PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let (role, services): (Role, ServiceSet) =
            postcard::from_bytes(&bytes[6..]).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(Hello {
            version,
            role,
            services,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_messages_round_trip() {
        let m = WireMessage::Ack {
            epoch: 7,
            applied: 42,
            consumed: vec![],
        };
        assert_eq!(WireMessage::decode(&m.encode()), Ok(m));
        let h = WireMessage::Heartbeat {
            sent_at: Instant::from_millis(5),
        };
        assert_eq!(WireMessage::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 3][..], &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9][..]] {
            assert!(matches!(
                WireMessage::decode(bytes),
                Err(DecodeError::Malformed(_))
            ));
            assert!(Hello::decode(bytes).is_err());
        }
    }

    #[test]
    fn hello_of_another_version_names_both_versions() {
        let mut bytes = Hello::new(Role::Primary, ServiceSet::default()).encode();
        bytes[4..6].copy_from_slice(&7u16.to_be_bytes());
        let err = Hello::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::VersionMismatch {
                ours: cttm_core::PROTOCOL_VERSION,
                theirs: 7
            }
        );
        let text = err.to_string();
        assert!(text.contains("version 7"), "{text}");
        assert!(
            text.contains(&format!("version {}", cttm_core::PROTOCOL_VERSION)),
            "{text}"
        );
    }

    #[test]
    fn hello_round_trips() {
        let h = Hello::new(Role::Backup, ServiceSet::default());
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
    }
}
