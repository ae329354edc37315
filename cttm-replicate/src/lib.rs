//! # cttm-replicate: shipping tracker state from the primary to the backup
//!
//! The primary's tracker emits [`cttm_core::ConnectionEvent`]s; this crate carries them, as
//! [`cttm_core::ReplicationMessage`]s, to the backup's [`ReplicaStore`], so the backup can
//! restore every connection at the exact byte.
//!
//! The protocol's two endpoints are sans-IO state machines of the core
//! ([`cttm_core::replication`], whose documentation describes the protocol); this crate holds
//! what touches bytes and threads: the encoding, framing, authentication, transports, the
//! shared replica store and the services that drive the endpoints. The endpoints' types are
//! re-exported here under their former paths.
//!
//! | module | concept | lives in |
//! |---|---|---|
//! | [`transport`] | the [`ReplicationTransport`] trait (the I/O edge) and its in-memory, fault-injecting and TCP implementations | here |
//! | [`frame`] | length-prefixed frames with a bounded size | here |
//! | [`noise`] | Noise (pre-shared key) authentication and encryption of every frame, the handshake, message chunking | here |
//! | [`wire`] | the protocol's messages (re-exported) and their postcard encoding ([`wire::encode`], [`wire::decode`]), the version-checked hello ([`wire::encode_hello`], [`wire::decode_hello`]) | messages: [`cttm_core::replication::message`]; encoding: here |
//! | [`primary`] | the primary's protocol state (sans-IO): sequence numbers, retained queue, acknowledgements, resynchronisation | [`cttm_core::replication::primary`] (re-exported) |
//! | [`backup`] | the backup's protocol state (sans-IO): in-order application, acknowledgements, resync requests; [`Backup`] applies to a [`ReplicaStore`] | [`cttm_core::replication::backup`] (re-exported) |
//! | [`store`] | the backup's replica store, shared with readers; implements [`cttm_core::replication::BackupReplica`] | here |
//! | [`service`] | threads that run the protocol over a transport | here |
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
