//! # cttm-restore: the backup host's side of CTTM
//!
//! Everything that continues a connection on the host that takes over: turning a
//! [`ConnectionSnapshot`](cttm_core::ConnectionSnapshot) back into a live server socket
//! (`TCP_REPAIR`), taking over the service address, probing and fencing before a takeover,
//! and the backup driver that runs the core's machines over them ([`backup::BackupAgent`]).
//!
//! ## Embedding a backup
//!
//! A server that wants to continue its primary's connections adds `cttm-restore` (this
//! role) and `cttm-replicate` (the link), then:
//!
//! ```no_run
//! use cttm_core::{ServiceEndpoint, ServiceSet};
//! use cttm_replicate::{BackupConfig, BackupService, PreSharedKey};
//! use cttm_restore::backup::BackupAgent;
//! use cttm_restore::standby::TcpStandby;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = "198.18.0.10:7000".parse()?;
//! let services = ServiceSet::new([ServiceEndpoint::new(service)]);
//! let key = PreSharedKey::new([7; 32]); // the primary's key
//! let link = BackupService::listen_tcp("198.19.0.2:7700".parse()?, key, services, BackupConfig::default())?;
//! let backup = BackupAgent::builder([service], "eth0")
//!     .link(link) // what the primary replicates
//!     .standby(TcpStandby::new("127.0.0.1:7000".parse()?)) // the standby daemon
//!     .build()?
//!     .spawn(); // protects, and takes over when the primary dies
//! let view = backup.subscribe(); // what `cttmd status` shows
//! # let _ = view;
//! let exit = backup.join()?; // stop
//! println!("{} connections restored", exit.restored.len());
//! # Ok(())
//! # }
//! ```
//!
//! Add a probe ([`takeover::probe::ProbeCheck`]) and a fence ([`fence::CommandFence`]) so
//! that a primary cut off from the backup but still serving is never joined by a second
//! server (split brain), and a capture of the service interface
//! ([`backup::BackupBuilder::watch_capture`], AF_PACKET from `cttm-capture`) so that clients
//! the backup fell behind on are reset at once instead of hanging.
//!
//! ## The edges
//!
//! The traits are the core's ([`cttm_core::io`]); this crate implements:
//!
//! - [`RestoreBackend`]: recreate the server side of one connection from a snapshot. The Linux
//!   backend ([`repair::KernelRepairBackend`], cargo feature `tcp-repair`) uses `TCP_REPAIR`
//!   in CRIU libsoccr's order; [`simulated::SimulatedRestoreBackend`] only records what it was
//!   asked to restore, for tests of the code that drives restores.
//! - [`AddressTakeover`]: claim, release and announce the service address
//!   ([`takeover::NetlinkTakeover`]).
//! - [`NeighbourProbe`](cttm_core::io::probe::NeighbourProbe) ([`takeover::probe::ProbeCheck`]),
//!   [`Fence`](cttm_core::io::fence::Fence) ([`fence::CommandFence`]) and
//!   [`StandbyConnector`](cttm_core::io::standby::StandbyConnector) ([`standby::TcpStandby`]).
//!
//! Backend-independent rules shared by every backend are the core's, re-exported here:
//! [`check_restorable`] (refuse snapshots that cannot be restored exactly) and
//! [`plan_server_tsval`] (the RFC 7323 timestamp clock to install, never running backwards).

pub use cttm_core::io::restore::{
    ClockPolicy, RestoreBackend, RestoreError, RestoreOptions, check_restorable, plan_server_tsval,
};
pub use cttm_core::io::takeover::{AddressTakeover, TakeoverError};

pub mod simulated;

#[cfg(all(feature = "tcp-repair", target_os = "linux"))]
pub mod repair;

#[cfg(all(feature = "takeover", target_os = "linux"))]
pub mod takeover;

#[cfg(all(feature = "tcp-repair", feature = "takeover", target_os = "linux"))]
pub mod migrate;

#[cfg(all(feature = "tcp-repair", feature = "takeover", target_os = "linux"))]
pub mod backup;

#[cfg(target_os = "linux")]
pub mod fence;

pub mod standby;
