//! What an agent shows the operator: the [`AgentView`] each agent publishes while it runs
//! (role, mode, replication lag, every connection with its protection state, counters, the
//! hold-time histogram), and the handle ([`Observer`]) through which the agent publishes it,
//! readers subscribe to it ([`ViewSubscription`]), and the operator's requests (`rejoin`)
//! reach the agent.
//!
//! `cttmd status`, the Prometheus endpoint and an embedding server all read this one view, so
//! they always agree. The handle is shared state, not I/O: it never blocks and reads no clock.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What an agent is doing for the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRole {
    /// The primary agent on the host serving the service address, replicating to the backup.
    Primary,
    /// The backup agent, standing by: it holds a replica and takes over if the primary dies.
    Backup,
    /// The backup agent after a takeover: it serves the service address.
    Serving,
    /// A primary agent that found the service address served by another host (the backup
    /// took over): it does not serve until the operator tells it to rejoin.
    NonServing,
}

impl AgentRole {
    /// The role's name as shown by `cttmd status` and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            AgentRole::Primary => "primary",
            AgentRole::Backup => "backup",
            AgentRole::Serving => "serving",
            AgentRole::NonServing => "non-serving",
        }
    }
}

/// How output is committed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitState {
    /// Outgoing segments are held until the backup holds what they reveal.
    Sync,
    /// Configured async: nothing is held; bytes at risk are reported.
    Async,
    /// Configured sync, but the backup was unreachable or too slow: nothing is held until
    /// the backup has resynchronised. Connections are not protected meanwhile.
    Degraded,
}

impl CommitState {
    /// The mode's name as shown by `cttmd status` and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CommitState::Sync => "sync",
            CommitState::Async => "async",
            CommitState::Degraded => "degraded",
        }
    }
}

/// Whether a connection would survive a failover now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtectionState {
    /// The backup can restore it (in async or degraded mode: up to its lag).
    Protected,
    /// The backup cannot restore it (not replicated yet, picked up mid-stream, capture hole,
    /// retention exceeded, ...): a failover now resets it.
    Unprotected,
    /// The standby daemon's output differed from the primary's: it will be reset.
    Diverged,
    /// It was reset at or after a takeover.
    Lost,
    /// It was restored by a takeover and is served by this host.
    Restored,
}

impl ProtectionState {
    /// Every state, in the order metrics list them.
    pub const ALL: [ProtectionState; 5] = [
        ProtectionState::Protected,
        ProtectionState::Unprotected,
        ProtectionState::Diverged,
        ProtectionState::Lost,
        ProtectionState::Restored,
    ];

    /// The state's name as shown by `cttmd status` and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ProtectionState::Protected => "protected",
            ProtectionState::Unprotected => "unprotected",
            ProtectionState::Diverged => "diverged",
            ProtectionState::Lost => "lost",
            ProtectionState::Restored => "restored",
        }
    }
}

/// One connection as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The service address and port.
    pub server: SocketAddr,
    /// Whether it would survive a failover now.
    pub state: ProtectionState,
    /// Bytes of the connection (both directions) the client has seen or the server has
    /// acknowledged that the backup does not hold yet (the replication lag).
    pub lag_bytes: u64,
    /// How long the backup has been behind on this connection (0 when it holds everything).
    pub lag_ms: u64,
    /// Outgoing packets of the connection held now (sync mode).
    pub held_packets: u64,
    /// Why it is unprotected, diverged or lost, when it is.
    pub detail: Option<String>,
}

/// A histogram in the Prometheus sense: counts per upper bound, plus sum and count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Upper bounds of the buckets, in microseconds, increasing (`+Inf` is implied).
    pub bounds_us: Vec<u64>,
    /// Observations per bucket (not cumulative): `bounds_us.len() + 1` entries, the last for
    /// observations above every bound.
    pub counts: Vec<u64>,
    /// Sum of every observation, in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

/// The hold-time histogram's bucket bounds: 50 µs to 1 s.
pub const HOLD_TIME_BOUNDS_US: [u64; 12] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
];

impl Histogram {
    /// An empty histogram with these bucket bounds (microseconds, increasing).
    pub fn new(bounds_us: &[u64]) -> Histogram {
        Histogram {
            bounds_us: bounds_us.to_vec(),
            counts: vec![0; bounds_us.len() + 1],
            sum_us: 0,
            count: 0,
        }
    }

    /// Counts one observation of `micros`.
    pub fn observe(&mut self, micros: u64) {
        let bucket = self
            .bounds_us
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(self.bounds_us.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum_us = self.sum_us.saturating_add(micros);
        self.count += 1;
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&HOLD_TIME_BOUNDS_US)
    }
}

/// Running totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Segments of service connections tracked (primary).
    pub segments: u64,
    /// Connections opened (primary) or replicated (backup).
    pub connections_opened: u64,
    /// Client stream bytes the backup acknowledged holding (primary) or received (backup).
    pub bytes_replicated_client: u64,
    /// Server stream bytes the backup acknowledged holding (primary) or received (backup).
    pub bytes_replicated_server: u64,
    /// Outgoing packets held by output commit.
    pub held_packets: u64,
    /// Held packets released without the backup's acknowledgement (connection ended or
    /// unprotected, degraded, agent stopping).
    pub released_unprotected: u64,
    /// Frames the capture reported dropped.
    pub dropped_frames: u64,
    /// Times the primary degraded from sync to async.
    pub degradations: u64,
    /// Takeovers completed (backup).
    pub takeovers: u64,
    /// Takeovers not done because the service address answered a probe or the fencing
    /// command failed (backup).
    pub takeovers_refused: u64,
}

/// Everything an agent shows: `cttmd status` prints it, `/metrics` renders it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    /// What the agent is doing for the service.
    pub role: AgentRole,
    /// How output is committed now (the backup reports the primary's configured mode as
    /// it last knew it, or `async` when it cannot know).
    pub mode: CommitState,
    /// The replication link is up.
    pub link_up: bool,
    /// Bytes the backup does not hold yet, over every connection.
    pub lag_bytes: u64,
    /// The longest any connection's lag has lasted, in milliseconds.
    pub lag_ms: u64,
    /// Outgoing packets held now (sync mode).
    pub held_packets: u64,
    /// Every connection, ordered by client address.
    pub connections: Vec<ConnectionView>,
    /// Running totals.
    pub counters: Counters,
    /// How long output commit held the packets the backup's acknowledgement released.
    pub hold_time: Histogram,
    /// How long the last takeover took, from the verdict to the first announcement
    /// (backup, after a takeover).
    pub failover_ms: Option<f64>,
    /// Conditions the operator must know about now, one sentence each (degraded, the
    /// backup unreachable, a refused takeover, waiting for `rejoin`, ...).
    pub alerts: Vec<String>,
}

impl AgentView {
    /// The view of an agent that has just started in `role` and `mode`.
    pub fn new(role: AgentRole, mode: CommitState) -> AgentView {
        AgentView {
            role,
            mode,
            link_up: false,
            lag_bytes: 0,
            lag_ms: 0,
            held_packets: 0,
            connections: Vec::new(),
            counters: Counters::default(),
            hold_time: Histogram::default(),
            failover_ms: None,
            alerts: Vec::new(),
        }
    }

    /// Connections in `state`.
    pub fn count(&self, state: ProtectionState) -> usize {
        self.connections.iter().filter(|c| c.state == state).count()
    }
}

/// The handle between a running agent and whoever looks at it (the status socket, the
/// metrics endpoint, an embedding server, tests). Clones share the same view.
#[derive(Clone, Debug)]
pub struct Observer {
    view: Arc<Mutex<AgentView>>,
    /// How many times the view was published or changed.
    version: Arc<AtomicU64>,
    rejoin: Arc<AtomicBool>,
}

impl Observer {
    /// A handle holding `initial` until the agent publishes.
    pub fn new(initial: AgentView) -> Observer {
        Observer {
            view: Arc::new(Mutex::new(initial)),
            version: Arc::new(AtomicU64::new(0)),
            rejoin: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The view, even if a publisher panicked while changing it (a view is plain data: the
    /// last complete write is still worth showing).
    fn lock(&self) -> MutexGuard<'_, AgentView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest view.
    pub fn view(&self) -> AgentView {
        self.lock().clone()
    }

    /// Replaces the view (the agent, every few milliseconds).
    pub fn publish(&self, view: AgentView) {
        *self.lock() = view;
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Changes the view in place (the agent, for one field).
    pub fn update(&self, change: impl FnOnce(&mut AgentView)) {
        change(&mut self.lock());
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A reader that is told when the view changed since it last looked.
    pub fn subscribe(&self) -> ViewSubscription {
        ViewSubscription {
            observer: self.clone(),
            seen: None,
        }
    }

    /// The operator asked a non-serving primary to rejoin (`cttmd rejoin`).
    pub fn request_rejoin(&self) {
        self.rejoin.store(true, Ordering::SeqCst);
    }

    /// A rejoin request is waiting for the agent to take it (the status socket, to tell
    /// whether the agent acted on it).
    pub fn rejoin_requested(&self) -> bool {
        self.rejoin.load(Ordering::SeqCst)
    }

    /// Takes the operator's rejoin request, if one came (the agent).
    pub fn take_rejoin_request(&self) -> bool {
        self.rejoin.swap(false, Ordering::SeqCst)
    }
}

/// A subscription to an agent's view: [`ViewSubscription::changed`] yields the view each
/// time it was published since the last call (intermediate versions are skipped: a reader
/// only ever needs the latest). Poll it from the embedder's own loop or timer.
#[derive(Clone, Debug)]
pub struct ViewSubscription {
    observer: Observer,
    /// The version last returned (`None`: nothing returned yet, so the first call yields).
    seen: Option<u64>,
}

impl ViewSubscription {
    /// The latest view if it changed since the last call (the first call always yields).
    pub fn changed(&mut self) -> Option<AgentView> {
        let version = self.observer.version.load(Ordering::Acquire);
        if self.seen == Some(version) {
            return None;
        }
        self.seen = Some(version);
        Some(self.observer.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_yields_each_new_version_once() {
        let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
        let mut subscription = observer.subscribe();
        assert_eq!(
            subscription.changed().map(|v| v.role),
            Some(AgentRole::Backup)
        );
        assert!(subscription.changed().is_none(), "nothing new");
        observer.update(|v| v.counters.takeovers += 1);
        observer.update(|v| v.counters.takeovers += 1);
        // Two changes, one look: the latest.
        assert_eq!(
            subscription.changed().map(|v| v.counters.takeovers),
            Some(2)
        );
        assert!(subscription.changed().is_none());
        let mut serving = AgentView::new(AgentRole::Serving, CommitState::Async);
        serving.failover_ms = Some(12.5);
        observer.publish(serving);
        let view = subscription.changed().expect("published");
        assert_eq!(
            (view.role, view.failover_ms),
            (AgentRole::Serving, Some(12.5))
        );
    }

    #[test]
    fn the_rejoin_request_is_taken_once() {
        let observer = Observer::new(AgentView::new(AgentRole::NonServing, CommitState::Sync));
        assert!(!observer.take_rejoin_request());
        observer.clone().request_rejoin();
        assert!(observer.rejoin_requested());
        assert!(observer.take_rejoin_request());
        assert!(!observer.rejoin_requested() && !observer.take_rejoin_request());
    }
}
