//! What the backup agent shows the operator: the [`AgentView`] it publishes to its
//! [`Observer`] every [`PUBLISH_INTERVAL`] and at every transition.
//!
//! - Role `backup` while protecting, `serving` after a takeover. Mode `async`: the backup
//!   cannot tell the primary's commit mode (the replication protocol does not carry it).
//! - Connections while protecting, from the replica store and the shadow sessions:
//!   `protected` (restorable, its shadow session follows it), `unprotected` (not restorable,
//!   or no shadow can follow it: the reason in `detail`), `diverged` (the standby's output
//!   differed). Closed connections still held are not listed. After a takeover: `restored`
//!   (spliced and still open) and `lost` (reset at takeover or ended abruptly after it, with
//!   the reason); those that closed normally leave the list.
//! - `lag_ms`: while the primary is not heard (link down or heartbeats missed), the time since
//!   it was last seen alive; 0 otherwise. `lag_bytes` is 0: what the primary has and the
//!   backup lacks is only known on the primary.
//! - Counters, from the replica's change stream (every change the shadow sessions see):
//!   `connections_opened` counts `Opened` events; `bytes_replicated_client` / `_server` add
//!   up the bytes of every applied `ClientData` / `ServerData` event, so they only grow.
//!   Whole records sent at a resynchronisation are not events and are not counted, nor are
//!   changes a lagging subscription dropped (both logged elsewhere). `takeovers` and
//!   `takeovers_refused` come from the agent.

use super::shadow::{Protection, ShadowSet};
use super::{BackupExit, ResetReason};
use cttm_core::endpoint::ConnectionId;
use cttm_core::event::EventKind;
use cttm_core::io::link::ReplicaAccess;
use cttm_core::io::link::ReplicaChange as StoreEvent;
use cttm_core::observe::{
    AgentRole, AgentView, CommitState, ConnectionView, Counters, Observer, ProtectionState,
};
use cttm_core::snapshot::Restorability;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the view is published while nothing changes.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

/// The replication link as the agent sees it at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkState {
    /// The transport is connected.
    pub(crate) up: bool,
    /// When the primary was last seen alive (`None`: never).
    pub(crate) last_alive: Option<Instant>,
    /// The primary is alive now (heartbeats arriving).
    pub(crate) alive: bool,
}

impl LinkState {
    /// `lag_ms`: how long the primary has not been heard, while it is not (0 otherwise).
    fn lag_ms(&self, now: Instant) -> u64 {
        if self.up && self.alive {
            return 0;
        }
        self.last_alive
            .map_or(0, |t| millis(now.saturating_duration_since(t)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The backup's view, kept up to date and published.
#[derive(Debug)]
pub(crate) struct BackupView {
    observer: Observer,
    counters: Counters,
    last_published: Option<Instant>,
    /// After a takeover: every connection it concerned, by identity.
    served: BTreeMap<ConnectionId, ConnectionView>,
    failover_ms: Option<f64>,
}

impl BackupView {
    /// Starts publishing to `observer`.
    pub(crate) fn new(observer: Observer) -> BackupView {
        BackupView {
            observer,
            counters: Counters::default(),
            last_published: None,
            served: BTreeMap::new(),
            failover_ms: None,
        }
    }

    /// Counts one change of the replica.
    pub(crate) fn on_store_event(&mut self, event: &StoreEvent) {
        let StoreEvent::Event(event) = event else {
            return;
        };
        let bytes = |b: &Vec<u8>| u64::try_from(b.len()).unwrap_or(u64::MAX);
        match &event.kind {
            EventKind::Opened(_) => self.counters.connections_opened += 1,
            EventKind::ClientData { bytes: b, .. } => {
                self.counters.bytes_replicated_client = self
                    .counters
                    .bytes_replicated_client
                    .saturating_add(bytes(b));
            }
            EventKind::ServerData { bytes: b, .. } => {
                self.counters.bytes_replicated_server = self
                    .counters
                    .bytes_replicated_server
                    .saturating_add(bytes(b));
            }
            _ => {}
        }
    }

    /// A takeover was refused (the address answered, fencing failed, probing failed).
    pub(crate) fn count_refused(&mut self) {
        self.counters.takeovers_refused += 1;
    }

    /// True when the periodic publication is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.last_published
            .is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_INTERVAL)
    }

    /// Publishes the protecting view (role `backup`).
    pub(crate) fn publish_protecting(
        &mut self,
        store: &dyn ReplicaAccess,
        shadows: &ShadowSet,
        link: LinkState,
        alerts: Vec<String>,
    ) {
        let now = Instant::now();
        let connections = protected_connections(store, shadows);
        let mut view = AgentView::new(AgentRole::Backup, CommitState::Async);
        view.link_up = link.up;
        view.lag_ms = link.lag_ms(now);
        view.connections = connections;
        view.counters = self.counters;
        view.alerts = alerts;
        self.observer.publish(view);
        self.last_published = Some(now);
    }

    /// Records the takeover's outcome (every connection restored or reset, how long it took)
    /// and publishes the serving view.
    pub(crate) fn on_takeover(&mut self, exit: &BackupExit) {
        self.counters.takeovers += 1;
        self.failover_ms = exit.takeover.map(|d| d.as_secs_f64() * 1e3);
        for id in &exit.restored {
            self.served
                .insert(*id, served(id, ProtectionState::Restored, None));
        }
        for (id, reason) in &exit.reset {
            self.served.insert(
                *id,
                served(id, ProtectionState::Lost, Some(reset_detail(reason))),
            );
        }
        self.apply_ended(exit);
        self.publish_serving(Vec::new());
    }

    /// Applies the connections that ended after the takeover (`exit.ended`, read in full
    /// each time: closed ones leave the list, abrupt ends become `lost`).
    pub(crate) fn apply_ended(&mut self, exit: &BackupExit) {
        for (id, end) in &exit.ended {
            match end {
                None => {
                    self.served.remove(id);
                }
                Some(reason) => {
                    self.served
                        .insert(*id, served(id, ProtectionState::Lost, Some(reason.clone())));
                }
            }
        }
    }

    /// Publishes the serving view (role `serving`).
    pub(crate) fn publish_serving(&mut self, alerts: Vec<String>) {
        let mut view = AgentView::new(AgentRole::Serving, CommitState::Async);
        view.connections = self.served.values().cloned().collect();
        view.counters = self.counters;
        view.failover_ms = self.failover_ms;
        view.alerts = alerts;
        self.observer.publish(view);
        self.last_published = Some(Instant::now());
    }
}

fn served(id: &ConnectionId, state: ProtectionState, detail: Option<String>) -> ConnectionView {
    ConnectionView {
        client: id.client,
        server: id.server,
        state,
        lag_bytes: 0,
        lag_ms: 0,
        held_packets: 0,
        detail,
    }
}

fn reset_detail(reason: &ResetReason) -> String {
    format!("reset at takeover: {reason}")
}

/// Every open connection of the replica with its protection state, ordered by client.
fn protected_connections(store: &dyn ReplicaAccess, shadows: &ShadowSet) -> Vec<ConnectionView> {
    let records: Vec<(ConnectionId, Restorability)> = store
        .read(|replica| {
            replica
                .records()
                .filter(|r| r.closed().is_none())
                .map(|r| (r.id(), r.restorability()))
                .collect()
        })
        .unwrap_or_default();
    let mut connections: Vec<ConnectionView> = records
        .into_iter()
        .map(|(id, restorability)| {
            let (state, detail) = protection_of(restorability, shadows.protection(&id));
            served(&id, state, detail)
        })
        .collect();
    connections.sort_by_key(|c| (c.client, c.server));
    connections
}

/// The state of one connection from what the replica and its shadow session say.
fn protection_of(
    restorability: Restorability,
    shadow: Option<&Protection>,
) -> (ProtectionState, Option<String>) {
    match shadow {
        Some(Protection::Diverged { offset }) => {
            return (
                ProtectionState::Diverged,
                Some(format!(
                    "the standby's output differs from the primary's at server offset {offset}"
                )),
            );
        }
        Some(Protection::Unprotected(reason)) => {
            return (ProtectionState::Unprotected, Some(reason.clone()));
        }
        Some(Protection::Protected) | None => {}
    }
    match restorability {
        Restorability::Restorable if shadow.is_some() => (ProtectionState::Protected, None),
        Restorability::Restorable => (
            ProtectionState::Unprotected,
            Some("no shadow session follows it".to_string()),
        ),
        Restorability::HandshakeIncomplete => (
            ProtectionState::Unprotected,
            Some("handshake incomplete".to_string()),
        ),
        Restorability::Unsafe(reason) => (
            ProtectionState::Unprotected,
            Some(format!("not restorable: {reason:?}")),
        ),
        Restorability::Closed => (ProtectionState::Unprotected, Some("closed".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::event::UnsafeReason;

    #[test]
    fn shadow_verdicts_win_over_restorability() {
        let diverged = Protection::Diverged { offset: 7 };
        let (state, detail) = protection_of(Restorability::Restorable, Some(&diverged));
        assert_eq!(state, ProtectionState::Diverged);
        assert!(detail.expect("detail").contains("offset 7"));
        let unprotected = Protection::Unprotected("standby unreachable".into());
        assert_eq!(
            protection_of(Restorability::Restorable, Some(&unprotected)),
            (
                ProtectionState::Unprotected,
                Some("standby unreachable".into())
            )
        );
        assert_eq!(
            protection_of(Restorability::Restorable, Some(&Protection::Protected)),
            (ProtectionState::Protected, None)
        );
        let (state, detail) = protection_of(
            Restorability::Unsafe(UnsafeReason::MidStream),
            Some(&Protection::Protected),
        );
        assert_eq!(state, ProtectionState::Unprotected);
        assert!(detail.expect("detail").contains("MidStream"));
        assert_eq!(
            protection_of(Restorability::Restorable, None).0,
            ProtectionState::Unprotected
        );
    }

    #[test]
    fn lag_counts_only_while_the_primary_is_not_heard() {
        let now = Instant::now();
        let before = now.checked_sub(Duration::from_millis(700)).unwrap_or(now);
        let heard = LinkState {
            up: true,
            last_alive: Some(before),
            alive: true,
        };
        assert_eq!(heard.lag_ms(now), 0);
        let silent = LinkState {
            up: false,
            last_alive: Some(before),
            alive: false,
        };
        assert_eq!(silent.lag_ms(now), millis(now - before));
        let never = LinkState {
            up: false,
            last_alive: None,
            alive: false,
        };
        assert_eq!(never.lag_ms(now), 0);
    }

    #[test]
    fn takeover_outcome_becomes_restored_and_lost_and_closed_ones_leave() {
        let id = |port| ConnectionId {
            client: format!("198.18.0.1:{port}").parse().expect("client"),
            server: "198.18.0.10:7000".parse().expect("server"),
        };
        let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
        let mut view = BackupView::new(observer.clone());
        let mut exit = BackupExit {
            takeover: Some(Duration::from_millis(12)),
            restored: vec![id(1), id(2)],
            reset: vec![(id(3), ResetReason::HandshakeIncomplete)],
            ..BackupExit::default()
        };
        view.on_takeover(&exit);
        let seen = observer.view();
        assert_eq!(seen.role, AgentRole::Serving);
        assert_eq!(seen.counters.takeovers, 1);
        assert_eq!(seen.failover_ms, Some(12.0));
        assert_eq!(seen.count(ProtectionState::Restored), 2);
        assert_eq!(seen.count(ProtectionState::Lost), 1);
        exit.ended.push((id(1), None));
        exit.ended.push((id(2), Some("peer reset".into())));
        view.apply_ended(&exit);
        view.publish_serving(Vec::new());
        let seen = observer.view();
        assert_eq!(seen.connections.len(), 2);
        assert_eq!(seen.count(ProtectionState::Lost), 2);
        assert!(
            seen.connections
                .iter()
                .any(|c| c.detail.as_deref() == Some("peer reset"))
        );
    }
}
