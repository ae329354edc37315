//! The resolved settings each agent runs with. The [`config`](crate::config) module builds
//! them from a TOML file and command-line flags; tests build them directly.

use std::net::SocketAddr;
use std::time::Duration;

/// The pre-shared key of the replication link (32 bytes).
pub type ReplicationKey = [u8; 32];

/// Output commit mode of the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Hold each outgoing service segment until the backup holds every client byte it
    /// acknowledges and every server byte it carries (NFQUEUE). No byte is ever lost.
    Sync,
    /// Do not hold; report per connection the bytes a crash now would lose.
    Async,
}

/// Heartbeats on the replication link and failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatOptions {
    /// Interval between heartbeats, both ways.
    pub interval: Duration,
    /// Missed heartbeats after which the peer is declared dead.
    pub misses: u32,
}

/// Everything the primary agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryOptions {
    /// The service endpoints (the service address and each port), IPv4 and/or IPv6.
    pub services: Vec<SocketAddr>,
    /// The interface the service traffic crosses (for AF_PACKET capture in async mode).
    pub interface: String,
    /// The backup agent's replication address.
    pub backup: SocketAddr,
    /// The replication link's pre-shared key.
    pub key: ReplicationKey,
    /// Sync (default) or async output commit.
    pub mode: CommitMode,
    /// Heartbeat settings.
    pub heartbeat: HeartbeatOptions,
    /// The most bytes retained for the backup before connections become unprotected.
    pub retention_limit: usize,
    /// NFQUEUE queue number used in sync mode.
    pub queue: u16,
}

/// Everything the backup agent needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupOptions {
    /// The service endpoints (the service address and each port) to take over.
    pub services: Vec<SocketAddr>,
    /// Prefix length the service address gets when claimed.
    pub service_prefix_len: u8,
    /// The interface on the service network where the address is claimed and announced.
    pub interface: String,
    /// Where the backup listens for the primary's replication link.
    pub listen: SocketAddr,
    /// The replication link's pre-shared key.
    pub key: ReplicationKey,
    /// The standby daemon (the same server program, running on the backup), e.g.
    /// `127.0.0.1:7000`: shadow sessions connect here.
    pub standby: SocketAddr,
    /// Heartbeat settings (failure detection).
    pub heartbeat: HeartbeatOptions,
    /// Gratuitous ARP / unsolicited NA repetitions after the claim.
    pub announce_count: u32,
}
