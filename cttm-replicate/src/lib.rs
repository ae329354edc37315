//! # cttm-replicate: shipping tracker state from the primary to the backup
//!
//! The primary's tracker emits [`cttm_core::ConnectionEvent`]s; this crate carries them, as
//! [`cttm_core::ReplicationMessage`]s, to the backup's [`ReplicaStore`], so the backup can
//! restore every connection at the exact byte.
//!
//! | module | concept |
//! |---|---|
//! | [`transport`] | the [`ReplicationTransport`] trait (the I/O edge) and its in-memory, fault-injecting and TCP implementations |
//! | [`frame`] | length-prefixed frames with a bounded size |
//! | [`noise`] | Noise (pre-shared key) authentication and encryption of every frame, the handshake, message chunking |
//! | [`wire`] | the protocol's messages and their encoding, the version-checked hello |
//! | [`primary`] | the primary's protocol state (sans-IO): sequence numbers, retained queue, acknowledgements, resynchronisation |
//! | [`backup`] | the backup's protocol state (sans-IO): in-order application, acknowledgements, resync requests |
//! | [`store`] | the backup's replica store, shared with readers |
//! | [`service`] | threads that run the protocol over a transport |
//!
//! # Protocol in one paragraph
//! Each link starts with a handshake (mode byte, Noise `NNpsk0`, then one [`wire::Hello`] each
//! way agreeing on protocol version and services). The backup then sends a
//! [`wire::ResyncRequest`] (what it holds); the primary answers with a
//! [`wire::WireMessage::Resync`] and resends what is missing. Every message carrying state is
//! numbered; the backup applies them strictly in order and acknowledges; the primary keeps
//! what is unacknowledged within a bounded queue, and knows per connection which client and
//! server offsets the backup holds ([`Primary::acknowledged`]), for output commit. Heartbeats
//! flow both ways and a failure detector declares the peer dead after a configured number of
//! missed intervals.
#![forbid(unsafe_code)]

pub mod backup;
pub mod frame;
pub mod noise;
pub mod primary;
pub mod service;
pub mod store;
pub mod transport;
pub mod wire;

pub use backup::{Backup, BackupConfig, BackupReport};
pub use noise::{PreSharedKey, Security};
pub use primary::{
    AckedOffsets, Primary, PrimaryConfig, PrimaryReport, Submitted, UnprotectedReason,
};
pub use service::{BackupService, PrimaryService};
pub use store::ReplicaStore;
pub use transport::{ReplicationTransport, TransportError};
pub use wire::{Payload, WireMessage};

/// A random 64-bit number for naming a primary or backup incarnation (from the standard
/// library's randomly seeded hasher keys, mixed with the time and process id).
pub fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
