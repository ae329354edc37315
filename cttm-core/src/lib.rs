//! # cttm-core: the sans-IO heart of Client-Transparent TCP Migration
//!
//! Everything here is pure logic: no sockets, no clock reads, no threads. Inputs are values
//! (a captured frame with its capture time, a replication message); outputs are values (events
//! to replicate, snapshots to restore). This is what makes the tracker and the replica testable
//! deterministically and reusable by every backend.
//!
//! | module | concept |
//! |---|---|
//! | [`seq`] | [`SeqNumber`], the wrap-around 32-bit TCP sequence number, and stream offsets |
//! | [`time`] | [`Instant`], the capture-time type passed in by callers |
//! | [`endpoint`] | service endpoints and connection identities |
//! | [`wire`] | parse frames into [`SegmentRepr`] and emit frames from one |
//! | [`track`] | the [`Tracker`]: follows every connection to a service from captured segments |
//! | [`record`] | the per-connection state built from events, shared by tracker and replica |
//! | [`event`] | [`ConnectionEvent`]s the tracker emits and the replica applies |
//! | [`snapshot`] | [`ConnectionSnapshot`]: everything a socket restore needs |
//! | [`replica`] | the backup's pure state: [`Replica`] |
//! | [`message`] | versioned replication messages, [`ReplicationMessage`] |
//! | [`replication`] | the replication protocol's two endpoints ([`replication::Primary`], [`replication::Backup`]: numbering, acknowledgements, resynchronisation, heartbeats, failure detection, retention) and its messages ([`replication::WireMessage`]) |
//! | [`checkpoint`] | [`Checkpoint`]: a non-deterministic application's per-connection state, and its contract |
//! | [`commit`] | the output-commit gate: held output released once the backup holds what it reveals |
//! | [`primary`] | the primary host's decisions: ownership check (probe, non-serving, rejoin, watch), sync mode's hold and its degrade policy |
//! | [`backup`] | the backup host's decisions: the takeover guard (probe, fence, refuse, retry) |
//! | [`io`] | the traits at every I/O edge (capture with deferred verdicts, the replication link, restore, address takeover, probe, fencing, the standby daemon), with their contracts |
//! | [`observe`] | the operator's view of an agent ([`observe::AgentView`]) and its subscription |
#![forbid(unsafe_code)]

pub mod backup;
pub mod checkpoint;
pub mod commit;
pub mod endpoint;
pub mod event;
pub mod io;
pub mod message;
pub mod observe;
pub mod primary;
pub mod record;
pub mod replica;
pub mod replication;
pub mod seq;
pub mod snapshot;
pub mod time;
pub mod track;
pub mod wire;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use endpoint::{ConnectionId, ServiceEndpoint, ServiceSet};
pub use event::{CloseHow, ConnectionEvent, EventKind, Handshake, Side};
pub use message::{MessageV1, PROTOCOL_VERSION, ReplicationMessage};
pub use replica::{Replica, ReplicaConfig};
pub use seq::SeqNumber;
pub use snapshot::{ConnectionSnapshot, Restorability, TcpState};
pub use time::Instant;
pub use track::{Tracker, TrackerConfig};
pub use wire::{LinkType, SegmentRepr};
