//! The backup's side of the protocol: the sans-IO endpoint is
//! [`cttm_core::replication::backup`], here applying to the shared [`ReplicaStore`] (which
//! implements [`BackupReplica`]); [`BackupService`](crate::BackupService) runs it over a
//! transport.

use crate::store::ReplicaStore;
pub use cttm_core::replication::backup::{BackupConfig, BackupReplica, BackupReport};

/// The backup's protocol state, applying to a [`ReplicaStore`].
pub type Backup = cttm_core::replication::Backup<ReplicaStore>;
