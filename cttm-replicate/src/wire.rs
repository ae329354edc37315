//! The byte encoding of the replication protocol's messages.
//!
//! The messages themselves are plain types of the core ([`cttm_core::replication::message`],
//! re-exported here). Every message travels as a [`WireMessage`], encoded with postcard
//! ([`encode`], [`decode`]). The first message of a link in each direction is a [`Hello`],
//! whose encoding ([`encode_hello`], [`decode_hello`]) starts with a fixed magic and the
//! protocol version in big-endian *before* any postcard data, so a peer of another version is
//! recognised (and named) even if the rest of its encoding changed.

use cttm_core::PROTOCOL_VERSION;
use cttm_core::endpoint::ServiceSet;
pub use cttm_core::replication::message::{
    Hello, Payload, ResyncRequest, Role, WireMessage, message_connection,
};
use thiserror::Error;

/// Magic that starts every [`Hello`].
pub const HELLO_MAGIC: [u8; 4] = *b"CTRP";

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

/// Encodes a message.
pub fn encode(message: &WireMessage) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail (no maps with non-string keys, no
    // unsized sequences).
    postcard::to_allocvec(message).unwrap_or_default()
}

/// Decodes a message received from the peer.
pub fn decode(bytes: &[u8]) -> Result<WireMessage, DecodeError> {
    postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes a hello: magic, version (u16 big-endian), then the postcard body.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&HELLO_MAGIC);
    out.extend_from_slice(&hello.version.to_be_bytes());
    out.extend(postcard::to_allocvec(&(hello.role, &hello.services)).unwrap_or_default());
    out
}

/// Decodes a hello, checking the magic and that the version is this build's.
pub fn decode_hello(bytes: &[u8]) -> Result<Hello, DecodeError> {
    if bytes.len() < 6 || bytes[..4] != HELLO_MAGIC {
        return Err(DecodeError::NotReplication);
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
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

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::time::Instant;

    #[test]
    fn wire_messages_round_trip() {
        let m = WireMessage::Ack {
            epoch: 7,
            applied: 42,
            consumed: vec![],
        };
        assert_eq!(decode(&encode(&m)), Ok(m));
        let h = WireMessage::Heartbeat {
            sent_at: Instant::from_millis(5),
        };
        assert_eq!(decode(&encode(&h)), Ok(h));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 3][..], &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9][..]] {
            assert!(matches!(decode(bytes), Err(DecodeError::Malformed(_))));
            assert!(decode_hello(bytes).is_err());
        }
    }

    #[test]
    fn hello_of_another_version_names_both_versions() {
        let mut bytes = encode_hello(&Hello::new(Role::Primary, ServiceSet::default()));
        bytes[4..6].copy_from_slice(&7u16.to_be_bytes());
        let err = decode_hello(&bytes).unwrap_err();
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
        assert_eq!(decode_hello(&encode_hello(&h)), Ok(h));
    }
}
