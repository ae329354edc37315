//! # A token server that survives the crash of its host, by embedding CTTM
//!
//! Every reply of this server carries a random token and the time
//! ([`protocol`]): it is not deterministic, so a standby daemon fed the same requests could
//! never reproduce it. Instead of being shadowed, the server embeds the library and
//! checkpoints each connection before every write ([`cttm_core::checkpoint`]):
//!
//! - **primary side** ([`start_primary`]): the CTTM primary agent (`cttm-capture`) runs in
//!   the server's process, in sync mode. Right after accepting a connection and before
//!   each reply the server reports `checkpoint(connection, client bytes consumed, server
//!   bytes produced, state, the reply)` through the agent's
//!   [`Checkpointer`](cttm_capture::primary::Checkpointer); no reply leaves the host before
//!   the backup holds a checkpoint covering it.
//! - **backup side** ([`start_backup`]): the CTTM backup agent (`cttm-restore`) with no
//!   standby daemon. When the primary dies it claims the service address and hands each
//!   connection back restored at its last checkpoint
//!   ([`BackupBuilder::on_resume`](cttm_restore::backup::BackupBuilder::on_resume)): the
//!   socket delivers the client's requests after the checkpoint and still sends the reply
//!   the checkpoint carried; the server carries on from the checkpointed state with new
//!   tokens. Replies the primary made after its last acknowledged checkpoint never left
//!   it and are discarded, so the client sees one stream with every reply exactly once.
//!
//! `embedded-token-server primary|backup …` runs a side as a program; the kernel test
//! `tests/crash.rs` crashes the primary mid-stream in network namespaces.

#![forbid(unsafe_code)]

mod backup;
mod connection;
mod primary;
pub mod protocol;
mod server;

pub use backup::{BackupSide, RunningBackup, start_backup};
pub use connection::{ReplyJournal, ServeContext, ServeError, Session, connection_id, serve};
pub use primary::{PrimarySide, RunningPrimary, start_primary};

use thiserror::Error;

/// A side could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The primary agent could not be built.
    #[error("primary agent: {0}")]
    Primary(#[from] cttm_capture::primary::PrimaryError),
    /// The backup agent could not be built.
    #[error("backup agent: {0}")]
    Backup(#[from] cttm_restore::backup::BackupError),
    /// The replication listener could not be opened.
    #[error("replication listener: {0}; check the listen address")]
    Replication(#[from] cttm_replicate::TransportError),
    /// The service interface could not be opened for address changes.
    #[error("service interface: {0}; run as root with CAP_NET_ADMIN")]
    Interface(#[from] cttm_restore::takeover::OpenError),
    /// The service interface could not be opened for probes.
    #[error("service address probe: {0}")]
    Probe(#[from] cttm_restore::takeover::probe::ProbeError),
    /// The service address could not be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The service address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
