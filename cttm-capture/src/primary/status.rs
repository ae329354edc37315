//! What the primary agent reports while it runs: per connection, what the backup holds and
//! how many bytes a crash now would lose.

use super::CommitMode;
use cttm_core::ConnectionId;
use cttm_core::event::{Side, UnsafeReason};
use cttm_core::observe::{AgentRole, AgentView, CommitState, Observer};
use cttm_core::record::ConnectionRecord;
use cttm_core::replication::AckedOffsets;
use parking_lot::Mutex;
use std::sync::Arc;

/// One protected (or formerly protected) connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The connection.
    pub id: ConnectionId,
    /// Client bytes the server acknowledged (the client will never send them again).
    pub client_acked: u64,
    /// Server bytes sent (the end of the server's stream as captured).
    pub server_sent: u64,
    /// What the backup acknowledged holding; `None` when it holds nothing of the connection
    /// (not replicated yet, or unprotected).
    pub backup: Option<AckedOffsets>,
    /// Client bytes the server acknowledged that the backup does not hold: a crash now
    /// would lose them (async mode; zero in sync mode once the held segments are out).
    pub client_at_risk: u64,
    /// Server bytes sent that the backup does not hold.
    pub server_at_risk: u64,
    /// Why the connection cannot be restored, if it cannot.
    pub unsafe_reason: Option<UnsafeReason>,
    /// The connection ended.
    pub closed: bool,
    /// Outgoing packets of the connection held now (sync mode).
    pub held_packets: usize,
}

impl ConnectionStatus {
    /// The status of `record` given what the backup holds of it.
    pub fn of(record: &ConnectionRecord, backup: Option<AckedOffsets>, held: usize) -> Self {
        let client = record.stream(Side::Client);
        let server = record.stream(Side::Server);
        // A FIN occupies one sequence offset but is not a byte (RFC 9293 §3.4).
        let client_acked = client.acked().min(client.received_end());
        let server_sent = server.received_end();
        let holds = backup.unwrap_or_default();
        ConnectionStatus {
            id: record.id(),
            client_acked,
            server_sent,
            backup,
            client_at_risk: client_acked.saturating_sub(holds.client),
            server_at_risk: server_sent.saturating_sub(holds.server),
            unsafe_reason: record.unsafe_reason(),
            closed: record.closed().is_some(),
            held_packets: held,
        }
    }

    /// Bytes a crash now would lose, both directions.
    ///
    /// A connection the backup holds nothing of ([`ConnectionStatus::backup_holds_nothing`])
    /// is lost whole by a crash even when this is 0 (a handshake not acknowledged yet, no
    /// byte exchanged): [`ConnectionStatus::is_at_risk`] counts it.
    pub fn at_risk(&self) -> u64 {
        self.client_at_risk + self.server_at_risk
    }

    /// The backup holds nothing of the connection (not replicated yet, or unprotected until
    /// its record is resent): a crash now loses it whatever [`ConnectionStatus::at_risk`]
    /// says.
    pub fn backup_holds_nothing(&self) -> bool {
        self.backup.is_none()
    }

    /// A crash now would lose something of the connection: bytes at risk, or the whole
    /// connection because the backup holds nothing of it, or it cannot be restored.
    pub fn is_at_risk(&self) -> bool {
        self.at_risk() > 0 || self.backup_holds_nothing() || self.unsafe_reason.is_some()
    }
}

/// A snapshot of the primary agent's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryStatus {
    /// The output-commit mode.
    pub mode: CommitMode,
    /// The replication link to the backup is up.
    pub link_up: bool,
    /// Every tracked connection, ordered by identity.
    pub connections: Vec<ConnectionStatus>,
    /// Outgoing packets held now (sync mode).
    pub held_packets: usize,
    /// The running counters.
    pub stats: super::PrimaryExit,
}

impl PrimaryStatus {
    /// The status of one connection.
    pub fn connection(&self, id: &ConnectionId) -> Option<&ConnectionStatus> {
        self.connections.iter().find(|c| c.id == *id)
    }

    /// Bytes a crash now would lose, over every connection.
    pub fn at_risk(&self) -> u64 {
        self.connections.iter().map(ConnectionStatus::at_risk).sum()
    }
}

/// A handle on a running primary agent's status: give a clone to
/// [`PrimaryBuilder::monitor`](super::PrimaryBuilder::monitor) and call
/// [`status`](PrimaryMonitor::status) from any thread. The agent refreshes it every few
/// milliseconds while it runs and once more when it stops.
///
/// It also carries the agent's [`Observer`] (what `cttmd status` and the metrics show).
#[derive(Clone, Debug)]
pub struct PrimaryMonitor {
    status: Arc<Mutex<Option<PrimaryStatus>>>,
    observer: Observer,
}

impl Default for PrimaryMonitor {
    fn default() -> Self {
        PrimaryMonitor::with_observer(Observer::new(AgentView::new(
            AgentRole::Primary,
            CommitState::Sync,
        )))
    }
}

impl PrimaryMonitor {
    /// A monitor no agent has reported to yet.
    pub fn new() -> Self {
        PrimaryMonitor::default()
    }

    /// A monitor whose agent publishes its operator view to `observer`.
    pub fn with_observer(observer: Observer) -> Self {
        PrimaryMonitor {
            status: Arc::new(Mutex::new(None)),
            observer,
        }
    }

    /// The agent's operator view (role, mode, connections, counters).
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The latest status; `None` until the agent is running.
    pub fn status(&self) -> Option<PrimaryStatus> {
        self.status.lock().clone()
    }

    pub(super) fn publish(&self, status: PrimaryStatus) {
        *self.status.lock() = Some(status);
    }
}
