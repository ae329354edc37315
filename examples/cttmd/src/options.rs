//! The resolved settings each agent runs with. The [`config`](crate::config) module builds
//! them from a TOML file and command-line flags; tests build them directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The pre-shared key of the replication link (32 bytes).
pub type ReplicationKey = [u8; 32];

pub use cttm_capture::primary::{CommitMode, DEFAULT_DEGRADE_AFTER};

/// Heartbeats on the replication link and failure detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatOptions {
    /// Interval between heartbeats, both ways.
    pub interval: Duration,
    /// Missed heartbeats after which the peer is declared dead.
    pub misses: u32,
}

/// Probing the service address on the service network before claiming or serving it: an
/// ARP probe (RFC 5227 §2.1.1: sender address 0.0.0.0) for IPv4, a duplicate address
/// detection neighbour solicitation (RFC 4862 §5.4.2: source `::`) for IPv6. Any answer
/// means another host holds the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Probes sent per check; 0 means "do not probe" (every check counts as silence).
    pub count: u32,
    /// How long each probe waits for an answer.
    pub wait: Duration,
}

impl ProbeOptions {
    /// The default: 2 probes, 100 ms each (a check costs 200 ms when nobody answers).
    pub const DEFAULT: ProbeOptions = ProbeOptions {
        count: 2,
        wait: Duration::from_millis(100),
    };
}

/// Where an agent lets the operator look at it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObserveOptions {
    /// The Unix socket `cttmd status` talks to (`None`: no socket).
    pub status_socket: Option<PathBuf>,
    /// The local address serving Prometheus text metrics at `/metrics` (`None`: none).
    pub metrics: Option<SocketAddr>,
}

/// A command the backup runs before claiming the service address (fencing: e.g. power off
/// the primary through its management controller). A failure aborts the takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceOptions {
    /// The command line, run with `sh -c`.
    pub command: String,
    /// The longest it may run; past it, it is killed and counts as failed.
    pub timeout: Duration,
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
    /// Sync mode: when the backup is unreachable, or a held packet has waited this long,
    /// the agent stops holding (degraded: async) until the backup has resynchronised.
    pub degrade_after: Duration,
    /// Checking, at start and while the backup is silent, that no other host serves the
    /// service address (a primary that finds it served elsewhere stops serving).
    pub probe: ProbeOptions,
    /// Status socket and metrics.
    pub observe: ObserveOptions,
    /// Write every frame the agent captured to this pcapng file.
    pub capture_file: Option<PathBuf>,
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
    /// Before claiming: the service address must not answer probes.
    pub probe: ProbeOptions,
    /// Before claiming: the fencing command, if any.
    pub fence: Option<FenceOptions>,
    /// Status socket and metrics.
    pub observe: ObserveOptions,
}
