//! The primary's operator view ([`AgentView`]) built from its status: each open connection
//! with its protection state and lag, the counters, the hold-time histogram and the alerts.
//!
//! - A connection is **protected** when the backup acknowledged holding it (its handshake
//!   at least) and it can be restored; otherwise **unprotected**, with the reason: the
//!   tracker's (`UnsafeReason`: mid-stream, capture hole, ...), the replication's (queue
//!   full, resending its record, ...) or "not replicated yet". Closed connections, which
//!   linger in the tracker for a while, are left out.
//! - `lag_bytes` is the connection's bytes at risk ([`ConnectionStatus::at_risk`]);
//!   `lag_ms` how long it has had bytes at risk without interruption.
//! - `bytes_replicated_*` sum the increases of the backup's acknowledged offsets per
//!   connection (a FIN counts one, as in sequence space). A new backup that is sent a
//!   connection's record again acknowledges its bytes again, and they count again: they
//!   were replicated again.

use super::PrimaryStatus;
use super::status::ConnectionStatus;
use cttm_core::ConnectionId;
use cttm_core::event::{Side, UnsafeReason};
use cttm_core::observe::{
    AgentRole, AgentView, CommitState, ConnectionView, Counters, Histogram, ProtectionState,
};
use cttm_core::replication::{AckedOffsets, UnprotectedReason};
use std::collections::HashMap;
use std::time::Instant;

/// What the view remembers between two publications.
#[derive(Debug, Default)]
pub(super) struct ViewState {
    /// Since when each connection has had bytes at risk.
    at_risk_since: HashMap<ConnectionId, Instant>,
    /// The backup's acknowledged offsets last seen per connection.
    acked_seen: HashMap<ConnectionId, AckedOffsets>,
    replicated_client: u64,
    replicated_server: u64,
    /// How long output commit held the packets the backup's acknowledgement released.
    pub(super) hold_time: Histogram,
}

/// The inputs of one view besides the status.
pub(super) struct ViewInputs<'a> {
    /// The commit state now.
    pub(super) mode: CommitState,
    /// Connections the replication reports unprotected, with why.
    pub(super) unprotected: &'a HashMap<ConnectionId, UnprotectedReason>,
    /// Times the agent degraded.
    pub(super) degradations: u64,
    /// What the operator must know now.
    pub(super) alerts: Vec<String>,
}

impl ViewState {
    /// The view of `status` at `now`.
    pub(super) fn build(
        &mut self,
        now: Instant,
        status: &PrimaryStatus,
        inputs: ViewInputs<'_>,
    ) -> AgentView {
        self.count_replicated(status);
        let mut connections = Vec::with_capacity(status.connections.len());
        let mut lag_ms = 0;
        for c in status.connections.iter().filter(|c| !c.closed) {
            let lag_bytes = c.at_risk();
            let since = if lag_bytes > 0 {
                Some(*self.at_risk_since.entry(c.id).or_insert(now))
            } else {
                self.at_risk_since.remove(&c.id);
                None
            };
            let lag = since.map_or(0, |t| now.saturating_duration_since(t).as_millis() as u64);
            lag_ms = lag_ms.max(lag);
            let (state, detail) = protection(c, inputs.unprotected.get(&c.id));
            connections.push(ConnectionView {
                client: c.id.client,
                server: c.id.server,
                state,
                lag_bytes,
                lag_ms: lag,
                held_packets: c.held_packets as u64,
                detail,
            });
        }
        self.at_risk_since
            .retain(|id, _| status.connection(id).is_some_and(|c| !c.closed));
        connections.sort_by_key(|c| (c.client, c.server));
        let stats = &status.stats;
        AgentView {
            role: AgentRole::Primary,
            mode: inputs.mode,
            link_up: status.link_up,
            lag_bytes: connections.iter().map(|c| c.lag_bytes).sum(),
            lag_ms,
            held_packets: status.held_packets as u64,
            connections,
            counters: Counters {
                segments: stats.segments,
                connections_opened: stats.connections,
                bytes_replicated_client: self.replicated_client,
                bytes_replicated_server: self.replicated_server,
                held_packets: stats.held,
                released_unprotected: stats.released_unprotected,
                dropped_frames: stats.dropped_frames,
                degradations: inputs.degradations,
                takeovers: 0,
                takeovers_refused: 0,
            },
            hold_time: self.hold_time.clone(),
            failover_ms: None,
            alerts: inputs.alerts,
        }
    }

    /// Adds the increases of the backup's acknowledged offsets since the last look.
    fn count_replicated(&mut self, status: &PrimaryStatus) {
        for c in &status.connections {
            let Some(now) = c.backup else {
                continue;
            };
            let before = self.acked_seen.insert(c.id, now).unwrap_or_default();
            self.replicated_client += now.client.saturating_sub(before.client);
            self.replicated_server += now.server.saturating_sub(before.server);
        }
        self.acked_seen
            .retain(|id, _| status.connection(id).is_some_and(|c| c.backup.is_some()));
    }
}

/// The protection state of one connection, and why it is unprotected.
fn protection(
    c: &ConnectionStatus,
    replication: Option<&UnprotectedReason>,
) -> (ProtectionState, Option<String>) {
    if let Some(reason) = c.unsafe_reason {
        return (ProtectionState::Unprotected, Some(describe_unsafe(reason)));
    }
    if let Some(reason) = replication {
        return (
            ProtectionState::Unprotected,
            Some(describe_unprotected(*reason).to_string()),
        );
    }
    if c.backup_holds_nothing() {
        return (
            ProtectionState::Unprotected,
            Some("the backup does not hold it yet".to_string()),
        );
    }
    (ProtectionState::Protected, None)
}

fn side(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

fn describe_unsafe(reason: UnsafeReason) -> String {
    match reason {
        UnsafeReason::MidStream => {
            "picked up mid-stream: its handshake options are unknown".to_string()
        }
        UnsafeReason::CaptureHole { side: s, offset } => {
            format!("the capture missed {} bytes from offset {offset}", side(s))
        }
        UnsafeReason::CaptureDrops { frames } => {
            format!("the capture dropped {frames} frames while it was open")
        }
        UnsafeReason::ReassemblyOverflow { side: s } => {
            format!("too much out-of-order {} data to reassemble", side(s))
        }
        UnsafeReason::RetentionExceeded { side: s } => {
            format!(
                "its retained {} bytes exceeded the retention limit",
                side(s)
            )
        }
    }
}

fn describe_unprotected(reason: UnprotectedReason) -> &'static str {
    match reason {
        UnprotectedReason::QueueFull => {
            "the replication queue was full (the backup is slow or unreachable)"
        }
        UnprotectedReason::BackupRejected => "the backup could not apply one of its events",
        UnprotectedReason::Diverged => "the backup's copy disagrees with the primary's",
        UnprotectedReason::Resynchronising => "its record is being resent to the backup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::CommitMode;
    use crate::primary::PrimaryExit;
    use std::time::Duration;

    fn id(port: u16) -> ConnectionId {
        ConnectionId {
            client: std::net::SocketAddr::from(([198, 18, 0, 1], port)),
            server: std::net::SocketAddr::from(([198, 18, 0, 10], 7000)),
        }
    }

    fn connection(
        port: u16,
        acked: u64,
        sent: u64,
        backup: Option<(u64, u64)>,
    ) -> ConnectionStatus {
        let backup = backup.map(|(client, server)| AckedOffsets {
            client,
            server,
            checkpoint: None,
        });
        let holds = backup.unwrap_or_default();
        ConnectionStatus {
            id: id(port),
            client_acked: acked,
            server_sent: sent,
            backup,
            client_at_risk: acked.saturating_sub(holds.client),
            server_at_risk: sent.saturating_sub(holds.server),
            unsafe_reason: None,
            closed: false,
            held_packets: 0,
        }
    }

    fn status(connections: Vec<ConnectionStatus>) -> PrimaryStatus {
        PrimaryStatus {
            mode: CommitMode::Async,
            link_up: true,
            connections,
            held_packets: 0,
            stats: PrimaryExit::default(),
        }
    }

    fn inputs(unprotected: &HashMap<ConnectionId, UnprotectedReason>) -> ViewInputs<'_> {
        ViewInputs {
            mode: CommitState::Async,
            unprotected,
            degradations: 0,
            alerts: Vec::new(),
        }
    }

    #[test]
    fn states_lag_and_replicated_bytes() {
        let none = HashMap::new();
        let mut state = ViewState::default();
        let t0 = Instant::now();
        let mut unsafe_one = connection(3, 10, 10, Some((10, 10)));
        unsafe_one.unsafe_reason = Some(UnsafeReason::MidStream);
        let mut closed = connection(4, 0, 0, Some((0, 0)));
        closed.closed = true;
        let first = status(vec![
            connection(1, 100, 50, Some((80, 50))),
            connection(2, 0, 0, None),
            unsafe_one,
            closed,
        ]);
        let v = state.build(t0, &first, inputs(&none));
        assert_eq!(v.connections.len(), 3, "the closed connection is left out");
        assert_eq!(v.connections[0].state, ProtectionState::Protected);
        assert_eq!(v.connections[0].lag_bytes, 20);
        assert_eq!(v.connections[1].state, ProtectionState::Unprotected);
        assert!(
            v.connections[1]
                .detail
                .as_deref()
                .unwrap()
                .contains("does not hold")
        );
        assert_eq!(v.connections[2].state, ProtectionState::Unprotected);
        assert!(
            v.connections[2]
                .detail
                .as_deref()
                .unwrap()
                .contains("mid-stream")
        );
        assert_eq!(v.lag_bytes, 20);
        assert_eq!(v.counters.bytes_replicated_client, 80 + 10);
        assert_eq!(v.counters.bytes_replicated_server, 50 + 10);

        // 30 ms later the first connection is still behind: its lag lasts; then caught up.
        let later = status(vec![connection(1, 120, 60, Some((100, 60)))]);
        let v = state.build(t0 + Duration::from_millis(30), &later, inputs(&none));
        assert_eq!(v.connections[0].lag_ms, 30);
        assert_eq!(v.lag_ms, 30);
        assert_eq!(v.counters.bytes_replicated_client, 100 + 10);
        assert_eq!(v.counters.bytes_replicated_server, 60 + 10);
        let caught_up = status(vec![connection(1, 120, 60, Some((120, 60)))]);
        let v = state.build(t0 + Duration::from_millis(40), &caught_up, inputs(&none));
        assert_eq!((v.lag_bytes, v.lag_ms), (0, 0));
        assert_eq!(v.counters.bytes_replicated_client, 120 + 10);
    }

    #[test]
    fn a_replication_reason_makes_a_connection_unprotected() {
        let mut unprotected = HashMap::new();
        unprotected.insert(id(1), UnprotectedReason::QueueFull);
        let mut state = ViewState::default();
        let s = status(vec![connection(1, 0, 0, Some((0, 0)))]);
        let v = state.build(Instant::now(), &s, inputs(&unprotected));
        assert_eq!(v.connections[0].state, ProtectionState::Unprotected);
        assert!(
            v.connections[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("queue was full")
        );
    }
}
