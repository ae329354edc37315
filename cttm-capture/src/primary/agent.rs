//! The part both modes share: the tracker, the replication service, the logs, and the
//! periodic housekeeping.

use super::PrimaryExit;
use super::capture_file::CaptureRecorder;
use super::checkpoint::Checkpointer;
use super::ownership::OwnershipWatch;
use super::status::{ConnectionStatus, PrimaryMonitor, PrimaryStatus};
use super::view::{ViewInputs, ViewState};
use super::{CommitMode, PrimarySettings, RunInputs};
use crate::CapturedFrame;
use crate::nfqueue::PacketId;
use cttm_core::commit::BackupHolds;
use cttm_core::event::UnsafeReason;
use cttm_core::io::link::PrimaryLink;
use cttm_core::observe::CommitState;
use cttm_core::primary::OtherHolder;
use cttm_core::primary::hold::OutputHold;
use cttm_core::record::ConnectionRecord;
use cttm_core::replication::{PrimaryReport, Submitted};
use cttm_core::{
    ConnectionEvent, ConnectionId, EventKind, Instant, MessageV1, ReplicationMessage, SegmentRepr,
    ServiceEndpoint, ServiceSet, Tracker, TrackerConfig,
};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// How often the tracker and the replication state are tidied (closed connections
/// forgotten, reports logged).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(500);
/// How often the published status is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_millis(10);

/// The time now as the capture sources give it: microseconds since the Unix epoch.
pub(super) fn epoch_now() -> Instant {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The service set of the options.
pub(super) fn service_set(options: &PrimarySettings) -> ServiceSet {
    ServiceSet::new(options.services.iter().copied().map(ServiceEndpoint::new))
}

/// Tracker, replication and bookkeeping of one agent run.
pub(super) struct Agent {
    pub(super) tracker: Tracker,
    pub(super) service: Box<dyn PrimaryLink>,
    mode: CommitMode,
    events: Vec<ConnectionEvent>,
    pub(super) stats: PrimaryExit,
    /// Opened connections whose handshake the backup has not acknowledged yet.
    awaiting_protection: HashSet<ConnectionId>,
    drops_seen: u64,
    link_up: bool,
    last_housekeeping: std::time::Instant,
    last_status: Option<std::time::Instant>,
    monitor: PrimaryMonitor,
    /// Why the agent is degraded, while it is (an alert).
    degraded_alert: Option<String>,
    view: ViewState,
    recorder: CaptureRecorder,
    /// Probes the service address while the backup is silent (`None`: probing off).
    watch: Option<OwnershipWatch>,
    /// The application's checkpoints.
    pub(super) checkpointer: Checkpointer,
}

impl Agent {
    pub(super) fn new(
        options: &PrimarySettings,
        service: Box<dyn PrimaryLink>,
        inputs: RunInputs,
        watch: Option<OwnershipWatch>,
    ) -> Agent {
        let RunInputs {
            monitor,
            checkpointer,
        } = inputs;
        // The primary ships client bytes once; its tracker drops them when acknowledged.
        let tracker = Tracker::new(TrackerConfig::new(service_set(options)));
        Agent {
            tracker,
            service,
            mode: options.mode,
            events: Vec::new(),
            stats: PrimaryExit {
                mode: options.mode,
                ..PrimaryExit::default()
            },
            awaiting_protection: HashSet::new(),
            drops_seen: 0,
            link_up: false,
            last_housekeeping: std::time::Instant::now(),
            last_status: None,
            monitor,
            degraded_alert: None,
            view: ViewState::default(),
            recorder: CaptureRecorder::create(options.capture_file.as_deref()),
            watch,
            checkpointer,
        }
    }

    /// Writes a captured frame to the capture file, if one is configured.
    pub(super) fn record(&mut self, frame: &CapturedFrame<'_>) {
        self.recorder.record(frame.at, frame.link, frame.data);
    }

    /// Flushes the capture file (the agent stops).
    pub(super) fn finish_recording(&mut self) {
        self.recorder.finish();
    }

    /// Sync mode: output commit given up (`Some(why)`) or taken up again (`None`).
    pub(super) fn set_degraded(&mut self, why: Option<String>) {
        if why.is_some() {
            self.stats.degradations += 1;
        }
        self.degraded_alert = why;
    }

    /// How output is committed now (what the view shows).
    fn commit_state(&self) -> CommitState {
        match (self.mode, &self.degraded_alert) {
            (CommitMode::Async, _) => CommitState::Async,
            (CommitMode::Sync, Some(_)) => CommitState::Degraded,
            (CommitMode::Sync, None) => CommitState::Sync,
        }
    }

    /// Another host answered for the service address while the backup was silent: the
    /// agent must stop serving. Runs the ownership watch.
    pub(super) fn other_holder(&mut self) -> Option<OtherHolder> {
        self.watch.as_mut().and_then(OwnershipWatch::poll)
    }

    /// The ownership watch back, at the end of the run.
    pub(super) fn take_watch(&mut self) -> Option<OwnershipWatch> {
        self.watch.take()
    }

    /// Tracks one parsed segment; its events wait for [`Agent::ship`].
    pub(super) fn track(&mut self, at: Instant, segment: &SegmentRepr<'_>) {
        self.stats.segments += 1;
        self.tracker.on_segment(at, segment, &mut self.events);
    }

    /// What the backup holds of a connection, for the output-commit gate.
    pub(super) fn backup_holds(&self, id: &ConnectionId) -> Option<BackupHolds> {
        self.service.acknowledged(id).map(|o| BackupHolds {
            client: o.client,
            server: o.server,
            checkpoint: o.checkpoint,
        })
    }

    /// The capture reported `dropped` frames lost so far: if that rose, any connection may
    /// have a hole, so every one becomes unsafe (never restored with wrong bytes).
    pub(super) fn on_capture_drops(&mut self, dropped: u64) {
        if dropped > self.drops_seen {
            if self.mode == CommitMode::Sync {
                // NFQUEUE without fail-open: a packet the queue dropped never reached the
                // socket or the wire either (TCP retransmits it), so the tracker saw every
                // segment the connection really carried and no stream has a hole.
                let frames = dropped - self.drops_seen;
                self.drops_seen = dropped;
                self.stats.dropped_frames += frames;
                tracing::debug!(frames, "queue full: packets dropped, TCP retransmits them");
                return;
            }
            let frames = dropped - self.drops_seen;
            self.drops_seen = dropped;
            tracing::warn!(
                frames,
                "capture dropped frames: every open connection is now unprotected"
            );
            self.stats.dropped_frames += frames;
            let reason = UnsafeReason::CaptureDrops { frames };
            self.tracker
                .mark_all_unsafe(epoch_now(), reason, &mut self.events);
        }
    }

    /// Logs the events tracked since the last call and submits them for replication, then
    /// the application's checkpoints reported since.
    pub(super) fn ship(&mut self) {
        self.ship_events();
        self.ship_checkpoints();
    }

    /// Submits the application's checkpoints, one at a time: one the primary's copy refuses
    /// (its output leaves a hole in the server stream) is logged and counted, the others go.
    fn ship_checkpoints(&mut self) {
        for checkpoint in self.checkpointer.take() {
            let id = checkpoint.id;
            let message = ReplicationMessage::V1(MessageV1::Checkpoint(checkpoint));
            match self.service.submit_all(vec![message]) {
                Ok(_) => self.stats.checkpoints += 1,
                Err(e) => {
                    self.stats.checkpoints_refused += 1;
                    tracing::error!(connection = %id, error = %e, "checkpoint refused: its connection's output stays held until a checkpoint covers it");
                }
            }
        }
    }

    fn ship_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        for e in &events {
            self.log_event(e);
        }
        let messages = events
            .into_iter()
            .map(|e| ReplicationMessage::V1(MessageV1::Event(e)))
            .collect();
        match self.service.submit_all(messages) {
            Ok(submitted) => {
                let unprotected = submitted
                    .iter()
                    .filter(|s| matches!(s, Submitted::Unprotected))
                    .count();
                self.stats.unprotected_messages += unprotected as u64;
            }
            // The tracker's own events always fit the primary's copy; if not, the
            // connection is resent whole later, so this is worth a log, not a stop.
            Err(e) => tracing::error!(error = %e, "replication refused the tracker's events"),
        }
    }

    fn log_event(&mut self, e: &ConnectionEvent) {
        match &e.kind {
            EventKind::Opened(h) => {
                self.stats.connections += 1;
                if h.mid_stream {
                    tracing::warn!(connection = %e.id, "connection picked up mid-stream: unprotected (options unknown)");
                } else {
                    tracing::debug!(connection = %e.id, "connection opened");
                    self.awaiting_protection.insert(e.id);
                }
            }
            EventKind::Unsafe(reason) => {
                self.awaiting_protection.remove(&e.id);
                tracing::warn!(connection = %e.id, ?reason, "connection unprotected: it can no longer be restored");
            }
            EventKind::Closed(how) => {
                self.awaiting_protection.remove(&e.id);
                tracing::info!(connection = %e.id, ?how, "connection closed");
            }
            _ => {}
        }
    }

    /// Periodic work: protection and link changes logged, closed connections forgotten,
    /// the status refreshed with what output commit holds (`hold`, sync mode).
    pub(super) fn housekeeping(&mut self, hold: Option<&OutputHold<PacketId>>) {
        if !self.awaiting_protection.is_empty() {
            let service = &self.service;
            self.awaiting_protection.retain(|id| {
                let protected = service.acknowledged(id).is_some();
                if protected {
                    tracing::info!(connection = %id, "connection protected: the backup holds it");
                }
                !protected
            });
        }
        let due_status = self
            .last_status
            .is_none_or(|t| t.elapsed() >= STATUS_INTERVAL);
        if due_status {
            self.publish_status(hold);
        }
        if self.last_housekeeping.elapsed() < HOUSEKEEPING_INTERVAL {
            return;
        }
        self.last_housekeeping = std::time::Instant::now();
        if let Some(watch) = &mut self.watch {
            // Silent longer than heartbeat interval x misses (the failure detector).
            watch.observe_backup(self.service.backup_alive());
        }
        let link_up = self.service.link_up();
        if link_up != self.link_up {
            self.link_up = link_up;
            if link_up {
                tracing::info!("replication link to the backup is up");
            } else {
                tracing::warn!("replication link to the backup is down");
            }
        }
        for report in self.service.take_reports() {
            match report {
                PrimaryReport::Unprotected(id, reason) => {
                    tracing::warn!(connection = %id, ?reason, "connection unprotected: the backup does not hold it")
                }
                PrimaryReport::Reprotected(id) => {
                    tracing::info!(connection = %id, "connection protected again: its whole record is on its way")
                }
                PrimaryReport::Resynchronised { full, from } => {
                    tracing::info!(full, from, "backup resynchronised")
                }
            }
        }
        let (errors, discarded) = self.service.take_errors();
        for e in errors {
            tracing::warn!(error = %e, "replication link error");
        }
        if discarded > 0 {
            tracing::warn!(discarded, "replication link errors discarded");
        }
        // Closed connections linger in the tracker (TIME-WAIT); once it forgets them, the
        // backup is told to forget them too.
        let now = epoch_now();
        self.tracker.poll(now);
        let linger = self.tracker.config().closed_linger;
        let cutoff = Instant::from_micros(
            now.micros()
                .saturating_sub(u64::try_from(linger.as_micros()).unwrap_or(u64::MAX)),
        );
        let forgotten = self.service.forget_closed(cutoff);
        let tracker = &self.tracker;
        self.checkpointer.retain(|id| tracker.record(id).is_some());
        if forgotten > 0 {
            tracing::debug!(forgotten, "closed connections forgotten");
        }
    }

    /// Publishes the status now, with what output commit holds (`hold`, sync mode).
    pub(super) fn publish_status(&mut self, hold: Option<&OutputHold<PacketId>>) {
        self.last_status = Some(std::time::Instant::now());
        let mut connections: Vec<ConnectionStatus> = self
            .tracker
            .records()
            .map(|r: &ConnectionRecord| {
                ConnectionStatus::of(
                    r,
                    self.service.acknowledged(&r.id()),
                    hold.map_or(0, |h| h.held_for(&r.id())),
                )
            })
            .collect();
        connections.sort_by_key(|c| c.id);
        let stats = self.stats;
        let status = PrimaryStatus {
            mode: self.mode,
            link_up: self.service.link_up(),
            connections,
            held_packets: hold.map_or(0, OutputHold::len),
            stats,
        };
        if let Some(hold) = hold {
            self.view.hold_time.clone_from(hold.hold_time());
        }
        let unprotected: HashMap<_, _> = self.service.unprotected().into_iter().collect();
        let view = self.view.build(
            std::time::Instant::now(),
            &status,
            ViewInputs {
                mode: self.commit_state(),
                unprotected: &unprotected,
                degradations: self.stats.degradations,
                alerts: self.alerts(status.link_up),
            },
        );
        self.monitor.observer().publish(view);
        self.monitor.publish(status);
    }

    /// What the operator must know now.
    fn alerts(&self, link_up: bool) -> Vec<String> {
        let mut alerts = Vec::new();
        if let Some(why) = &self.degraded_alert {
            alerts.push(format!(
                "degraded: output is not held because {why}; connections are not protected until the backup has resynchronised"
            ));
        }
        if !link_up {
            alerts.push(
                "the replication link to the backup is down: check the backup agent and the replication network"
                    .to_string(),
            );
        } else if !self.service.backup_alive() {
            alerts.push("the backup's heartbeats stopped".to_string());
        }
        if let Some(failure) = self.recorder.failure() {
            alerts.push(format!("capture file: {failure}"));
        }
        alerts
    }
}
