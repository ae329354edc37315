//! Sync mode's output-commit loop, sans-IO: what becomes of each packet the primary's queue
//! hands over, given what the tracker knows of its connection, what the backup acknowledged,
//! and the degrade policy.
//!
//! The rules, per packet (decided by [`decide`] once the tracker has seen the segment):
//!
//! - **Pass** at once what needs no waiting: a frame that is not a TCP segment we can read,
//!   a segment of no service connection, an incoming segment (the server's acknowledgement
//!   of its bytes goes out through OUTPUT and is held there), a segment of a connection the
//!   tracker does not follow (nothing the backup could restore).
//! - **Pass after the held packets** of its connection a segment of a connection whose
//!   output protects nothing any more ([`gives_up_output`]): it was reset or evicted, or can
//!   no longer be restored. Its held packets leave first, so the connection's segments keep
//!   their order. A graceful close keeps holding: its last segments reveal FINs, which take
//!   one sequence number each (RFC 9293 §3.4) and must reach the backup before the client
//!   sees them.
//! - **Hold** every other outgoing segment in the [`OutputCommit`] gate: a SYN-ACK until the
//!   backup holds the handshake, any other until it holds every client byte the segment
//!   acknowledges and every server byte up to its end; on a connection the application
//!   checkpoints ([`decide_checkpointed`]), also until the backup holds a checkpoint that
//!   covers those server bytes ([`crate::checkpoint`]).
//!
//! After each batch ([`OutputHold::release`]): the held packets of connections that ended
//! badly, were forgotten, or became unrestorable leave (unprotected), then those the
//! backup's acknowledgements now cover (each hold time measured). Every
//! [`HoldConfig::degrade_check_interval`] the machine asks for the backup's health
//! ([`HoldCommand::CheckBackup`], answered with [`OutputHold::on_backup_health`]) and runs
//! the degrade policy ([`super::degrade`]) with the time the longest-held packet has waited:
//! on degrading every held packet leaves and nothing is held until the backup has
//! resynchronised. When the agent stops, what is still held leaves; when it was demoted
//! (another host serves the address now), it is dropped instead: this host's output must not
//! reach the clients beside the new server's.
//!
//! [`OutputHold`] reads no clock and keeps no packet contents: `P` is the driver's packet
//! handle (an NFQUEUE packet id), every input comes with its time, and the verdicts come out
//! of [`OutputHold::poll`] as [`HoldCommand`]s.

use crate::commit::{BackupHolds, CommitRequirement, CommitStats, OutputCommit};
use crate::endpoint::ConnectionId;
use crate::event::{CloseHow, Side};
use crate::observe::Histogram;
use crate::primary::degrade::{BackupHealth, DegradePolicy, Transition};
use crate::record::ConnectionRecord;
use crate::time::Instant;
use crate::track::Tracker;
use crate::wire::SegmentRepr;
use std::time::Duration;

/// The default time between two looks of the degrade policy at the backup (the agent
/// degrades at most this long after `degrade_after` passed).
pub const DEFAULT_DEGRADE_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// The default number of hold times kept for the run's percentiles (8 bytes each).
pub const DEFAULT_MAX_HOLD_SAMPLES: usize = 1 << 20;

/// How the hold runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldConfig {
    /// How long a held packet may wait, or the backup be unreachable, before the hold is
    /// given up ([`DegradePolicy::new`]).
    pub degrade_after: Duration,
    /// Time between two looks of the degrade policy at the backup.
    pub degrade_check_interval: Duration,
    /// Hold times kept at most for [`OutputHold::take_hold_samples`].
    pub max_hold_samples: usize,
}

impl HoldConfig {
    /// [`DEFAULT_DEGRADE_CHECK_INTERVAL`], [`DEFAULT_MAX_HOLD_SAMPLES`].
    pub fn new(degrade_after: Duration) -> HoldConfig {
        HoldConfig {
            degrade_after,
            degrade_check_interval: DEFAULT_DEGRADE_CHECK_INTERVAL,
            max_hold_samples: DEFAULT_MAX_HOLD_SAMPLES,
        }
    }
}

/// What to do with one packet the queue handed over, once tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldDecision {
    /// Let it through now: nothing needs to wait for it.
    Pass,
    /// Let it through now, after the packets of its connection still held: the connection
    /// just ended badly or can no longer be restored, so holding protects nothing.
    PassAfterHeld(ConnectionId),
    /// Hold it until the backup meets the requirement.
    Hold(ConnectionId, CommitRequirement),
}

/// The decision for a segment the tracker has just seen (`tracker` already includes it),
/// for connections that are not checkpointed.
pub fn decide(tracker: &Tracker, segment: &SegmentRepr<'_>) -> HoldDecision {
    decide_checkpointed(tracker, segment, |_| false)
}

/// The decision for a segment the tracker has just seen (`tracker` already includes it);
/// `is_checkpointed(id)` says whether the application checkpoints the connection (it holds
/// a checkpoint in the primary's copy, [`crate::replication::Primary::mirror`]): a server
/// segment of such a connection also waits for an acknowledged checkpoint covering every
/// server byte sent ([`CommitRequirement::Offsets::checkpoint`]).
pub fn decide_checkpointed(
    tracker: &Tracker,
    segment: &SegmentRepr<'_>,
    is_checkpointed: impl FnOnce(&ConnectionId) -> bool,
) -> HoldDecision {
    let services = &tracker.config().services;
    let Some((id, side)) = services.classify(segment.src, segment.dst) else {
        return HoldDecision::Pass;
    };
    // Incoming segments only need tracking: the server's acknowledgement of their bytes
    // goes out through OUTPUT and is held there.
    if side == Side::Client {
        return HoldDecision::Pass;
    }
    let Some(record) = tracker.record(&id) else {
        // Not tracked (a stray segment, a full table): nothing the backup could restore.
        return HoldDecision::Pass;
    };
    if gives_up_output(record) {
        return HoldDecision::PassAfterHeld(id);
    }
    if segment.flags.syn() {
        return HoldDecision::Hold(id, CommitRequirement::Handshake);
    }
    let checkpointed = record.checkpoint().is_some() || is_checkpointed(&id);
    HoldDecision::Hold(id, requirement_of(record, checkpointed))
}

/// What the backup must hold before the connection's latest server segment may leave (the
/// record already includes it). Both ends are in sequence space, where a FIN takes one
/// offset (RFC 9293 §3.4): the client stream's acknowledged offset counts the client's FIN
/// once the server acknowledged it, and the server stream's sequence end counts the server's
/// FIN once sent. So the server's FIN, and its acknowledgement of the client's FIN, leave
/// only once the backup holds that FIN (its acknowledged offsets count FINs the same way),
/// and a close never waits for more than the backup can hold. A `checkpointed` connection
/// also requires a checkpoint covering every server byte sent, FIN excluded
/// ([`CommitRequirement::Offsets::checkpoint`]).
fn requirement_of(record: &ConnectionRecord, checkpointed: bool) -> CommitRequirement {
    let server = record.stream(Side::Server);
    CommitRequirement::Offsets {
        client: record.stream(Side::Client).acked(),
        server: server.sequence_end(),
        checkpoint: checkpointed.then(|| server.received_end()),
    }
}

/// True when holding the connection's output protects nothing any more: it was reset or
/// evicted, or can no longer be restored. A graceful close still holds (see [`decide`]).
pub fn gives_up_output(record: &ConnectionRecord) -> bool {
    record.unsafe_reason().is_some() || record.closed().is_some_and(|how| how != CloseHow::Graceful)
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldCommand<P> {
    /// Report what the backup's health is now with [`OutputHold::on_backup_health`].
    CheckBackup,
    /// Let these packets through, in this order.
    Accept(Vec<P>),
    /// Discard these packets (the agent was demoted: another host serves the address).
    Drop(Vec<P>),
}

/// A change of the commit state decided by [`OutputHold::on_backup_health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldChange {
    /// The degrade policy's transition.
    pub transition: Transition,
    /// Held packets it let go: every one on a degrade (they are in the next
    /// [`HoldCommand::Accept`]), none on a resynchronisation.
    pub released: usize,
}

/// How a sync-mode run ends ([`OutputHold::end`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The agent stops: what is held leaves (the service keeps running, unprotected, rather
    /// than stall).
    Stopped,
    /// Another host serves these connections now: what is held is dropped (once the address
    /// is gone TCP cannot retransmit it anyway, and it must not reach the clients beside
    /// the new server's output).
    Demoted,
}

/// Counters of an [`OutputHold`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// The gate's counters (held, released by acknowledgement, released unprotected).
    pub commit: CommitStats,
    /// Packets let through at once, without being held.
    pub passed: u64,
}

/// A held packet and when it entered the gate.
#[derive(Debug)]
struct Held<P> {
    packet: P,
    at: Instant,
}

/// Sync mode's output commit with its degrade policy (see the module documentation).
#[derive(Debug)]
pub struct OutputHold<P> {
    config: HoldConfig,
    gate: OutputCommit<Held<P>>,
    policy: DegradePolicy,
    /// When the degrade policy looks at the backup next.
    next_check: Instant,
    /// Packets to let through, in order.
    accept: Vec<P>,
    /// Packets to discard.
    drop: Vec<P>,
    /// The run ended: no more health checks.
    ended: bool,
    passed: u64,
    hold_time: Histogram,
    hold_samples: Vec<u64>,
}

impl<P> OutputHold<P> {
    /// Holding (sync), nothing held; the backup's health is asked for at the first
    /// [`OutputHold::poll`].
    pub fn new(config: HoldConfig) -> OutputHold<P> {
        OutputHold {
            config,
            gate: OutputCommit::new(),
            policy: DegradePolicy::new(config.degrade_after),
            next_check: Instant::ZERO,
            accept: Vec::new(),
            drop: Vec::new(),
            ended: false,
            passed: 0,
            hold_time: Histogram::default(),
            hold_samples: Vec::new(),
        }
    }

    /// True while output is not held (the backup is gone or too slow).
    pub fn is_degraded(&self) -> bool {
        self.policy.is_degraded()
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.gate.len()
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.gate.is_empty()
    }

    /// Packets held now for connection `id`.
    pub fn held_for(&self, id: &ConnectionId) -> usize {
        self.gate.held_for(id)
    }

    /// The counters.
    pub fn stats(&self) -> HoldStats {
        HoldStats {
            commit: self.gate.stats(),
            passed: self.passed,
        }
    }

    /// How long the packets the backup's acknowledgements released were held (every one).
    pub fn hold_time(&self) -> &Histogram {
        &self.hold_time
    }

    /// The hold times measured so far, in microseconds (the first
    /// [`HoldConfig::max_hold_samples`]); the machine keeps none after.
    pub fn take_hold_samples(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.hold_samples)
    }

    /// The queue handed over `packet` at `now`; [`decide`] said `decision`. Degraded,
    /// nothing is held.
    pub fn on_packet(&mut self, now: Instant, packet: P, decision: HoldDecision) {
        match decision {
            HoldDecision::Hold(id, requirement) if !self.is_degraded() => {
                self.gate.hold(Held { packet, at: now }, id, requirement);
            }
            HoldDecision::Hold(..) | HoldDecision::Pass => {
                self.passed += 1;
                self.accept.push(packet);
            }
            HoldDecision::PassAfterHeld(id) => {
                self.passed += 1;
                self.release_connection(&id);
                self.accept.push(packet);
            }
        }
    }

    /// After a batch, at `now`: the held packets of connections that `tracker` no longer
    /// follows or whose output protects nothing ([`gives_up_output`]) leave, then those the
    /// backup now holds enough for (`holds(id)`: what it holds of connection `id`).
    pub fn release(
        &mut self,
        now: Instant,
        tracker: &Tracker,
        holds: impl FnMut(&ConnectionId) -> Option<BackupHolds>,
    ) {
        let finished: Vec<ConnectionId> = self
            .gate
            .connections()
            .filter(|id| tracker.record(id).is_none_or(gives_up_output))
            .copied()
            .collect();
        for id in finished {
            self.release_connection(&id);
        }
        for held in self.gate.release(holds) {
            self.count_hold_time(now.saturating_since(held.at));
            self.accept.push(held.packet);
        }
    }

    /// Lets the held packets of `id` go, unprotected.
    fn release_connection(&mut self, id: &ConnectionId) {
        let released = self.gate.release_connection(id);
        self.accept
            .extend(released.into_iter().map(|held| held.packet));
    }

    /// Counts the hold time of a packet the backup's acknowledgement released.
    fn count_hold_time(&mut self, held_for: Duration) {
        let micros = u64::try_from(held_for.as_micros()).unwrap_or(u64::MAX);
        self.hold_time.observe(micros);
        if self.hold_samples.len() < self.config.max_hold_samples {
            self.hold_samples.push(micros);
        }
    }

    /// The next command at `now`: a look at the backup when due, then the verdicts decided.
    /// Poll until `None` after every input.
    pub fn poll(&mut self, now: Instant) -> Option<HoldCommand<P>> {
        if !self.ended && now >= self.next_check {
            self.next_check = now + self.config.degrade_check_interval;
            return Some(HoldCommand::CheckBackup);
        }
        if !self.accept.is_empty() {
            return Some(HoldCommand::Accept(std::mem::take(&mut self.accept)));
        }
        if !self.drop.is_empty() {
            return Some(HoldCommand::Drop(std::mem::take(&mut self.drop)));
        }
        None
    }

    /// The backup's health at `now`, as asked for by [`HoldCommand::CheckBackup`]: the
    /// degrade policy runs with the time the longest-held packet entered the gate. On a
    /// degrade every held packet leaves (in the next [`HoldCommand::Accept`]).
    pub fn on_backup_health(&mut self, now: Instant, health: BackupHealth) -> Option<HoldChange> {
        let oldest_held = self.gate.longest_held().map(|held| held.at);
        let transition = self.policy.tick(now, oldest_held, health)?;
        let released = match transition {
            Transition::Degrade(_) => {
                let released = self.gate.release_all();
                let count = released.len();
                self.accept
                    .extend(released.into_iter().map(|held| held.packet));
                count
            }
            Transition::Resynchronised { .. } => 0,
        };
        Some(HoldChange {
            transition,
            released,
        })
    }

    /// The run ends: every held packet, then `late` (packets the queue still handed over,
    /// never held), leaves or is dropped as `ending` says, in the next commands. Verdicts
    /// already decided stand. No health check follows.
    pub fn end(&mut self, ending: Ending, late: impl IntoIterator<Item = P>) {
        self.ended = true;
        let leftover = self.gate.release_all().into_iter().map(|held| held.packet);
        let out = match ending {
            Ending::Stopped => &mut self.accept,
            Ending::Demoted => &mut self.drop,
        };
        out.extend(leftover);
        out.extend(late);
    }

    /// When the driver must call [`OutputHold::poll`] again at the latest, besides right
    /// after each input (`None`: the run ended).
    pub fn next_deadline(&self) -> Option<Instant> {
        (!self.ended).then_some(self.next_check)
    }
}

#[cfg(test)]
#[path = "hold_tests.rs"]
mod tests;
