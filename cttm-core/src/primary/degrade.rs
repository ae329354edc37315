//! The degrade policy of sync mode, as a small state machine that reads no clock (the
//! caller passes the time in): when is output commit given up because the backup is gone
//! or too slow, and when is it taken up again.
//!
//! - **Sync → Degraded** when a held packet has waited longer than `degrade_after` (the
//!   backup is too slow: holding longer would stall the service), or when the replication
//!   link has been down, or the backup silent, for longer than `degrade_after` (the backup
//!   is unreachable). The service must never stall forever because the backup is gone.
//! - **Degraded → Sync** once the link is up, the backup alive, and the backup has
//!   acknowledged every message submitted up to the moment it became healthy again, with no
//!   connection waiting to be resent whole: from then on the backup holds what the client
//!   saw (up to the messages in flight, which the gate waits for again). Comparing with the
//!   sequence number taken when the backup became healthy, not with the latest one, lets
//!   the agent resynchronise under a steady load, where the latest message is always one
//!   round trip ahead of the acknowledgement.

use crate::time::Instant;
use std::time::Duration;

/// What the agent knows of the backup at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupHealth {
    /// The replication link is up.
    pub link_up: bool,
    /// The backup's heartbeats arrive (the failure detector's verdict).
    pub backup_alive: bool,
    /// The highest message sequence number the backup acknowledged.
    pub acked_seq: u64,
    /// The last message sequence number submitted.
    pub last_seq: u64,
    /// No connection waits to be resent whole (the primary's copy owes the backup nothing
    /// beyond the retained messages).
    pub all_reprotected: bool,
}

impl BackupHealth {
    fn reachable(&self) -> bool {
        self.link_up && self.backup_alive
    }
}

/// Why the agent degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DegradeReason {
    /// A held packet waited longer than allowed for the backup's acknowledgement.
    SlowBackup {
        /// How long the oldest held packet had waited.
        held_for: Duration,
    },
    /// The link was down or the backup silent for longer than allowed.
    Unreachable {
        /// For how long.
        down_for: Duration,
    },
}

impl std::fmt::Display for DegradeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DegradeReason::SlowBackup { held_for } => write!(
                f,
                "the backup did not acknowledge a held packet within {} ms",
                held_for.as_millis()
            ),
            DegradeReason::Unreachable { down_for } => write!(
                f,
                "the backup has been unreachable for {} ms",
                down_for.as_millis()
            ),
        }
    }
}

/// A change of the commit state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Stop holding: release every held packet now, accept every packet from now on.
    Degrade(DegradeReason),
    /// The backup caught up: hold again.
    Resynchronised {
        /// How long the agent was degraded.
        degraded_for: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Holding. `unreachable_since`: when the backup was last seen becoming unreachable.
    Sync { unreachable_since: Option<Instant> },
    /// Not holding since `since`. `catch_up_to`: the last sequence number submitted when
    /// the backup became reachable again (what it must acknowledge to resynchronise).
    Degraded {
        since: Instant,
        reason: DegradeReason,
        catch_up_to: Option<u64>,
    },
}

/// The degrade policy of one sync-mode agent run (see the module documentation).
#[derive(Clone, Debug)]
pub struct DegradePolicy {
    degrade_after: Duration,
    state: State,
}

impl DegradePolicy {
    /// Starts in sync mode. An agent whose backup never becomes reachable degrades
    /// `degrade_after` after its first [`DegradePolicy::tick`].
    pub fn new(degrade_after: Duration) -> DegradePolicy {
        DegradePolicy {
            degrade_after,
            state: State::Sync {
                unreachable_since: None,
            },
        }
    }

    /// True while output is not held.
    pub fn is_degraded(&self) -> bool {
        matches!(self.state, State::Degraded { .. })
    }

    /// One look at the backup at `now`; `oldest_held` is when the packet held longest
    /// entered the gate (`None`: nothing is held). Returns the transition to make, if any.
    pub fn tick(
        &mut self,
        now: Instant,
        oldest_held: Option<Instant>,
        health: BackupHealth,
    ) -> Option<Transition> {
        match &mut self.state {
            State::Sync { unreachable_since } => {
                let reason = if health.reachable() {
                    *unreachable_since = None;
                    None
                } else {
                    let since = *unreachable_since.get_or_insert(now);
                    let down_for = now.saturating_since(since);
                    (down_for > self.degrade_after)
                        .then_some(DegradeReason::Unreachable { down_for })
                };
                let held_for = oldest_held.map(|t| now.saturating_since(t));
                let reason = reason.or_else(|| {
                    held_for
                        .filter(|held_for| *held_for > self.degrade_after)
                        .map(|held_for| DegradeReason::SlowBackup { held_for })
                });
                let reason = reason?;
                self.state = State::Degraded {
                    since: now,
                    reason,
                    catch_up_to: None,
                };
                Some(Transition::Degrade(reason))
            }
            State::Degraded {
                since, catch_up_to, ..
            } => {
                if !health.reachable() {
                    *catch_up_to = None;
                    return None;
                }
                let target = *catch_up_to.get_or_insert(health.last_seq);
                if health.acked_seq < target || !health.all_reprotected {
                    return None;
                }
                let degraded_for = now.saturating_since(*since);
                self.state = State::Sync {
                    unreachable_since: None,
                };
                Some(Transition::Resynchronised { degraded_for })
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_millis(300);

    /// A reachable backup that acknowledged `acked_seq` of `last_seq` (shared with the hold's
    /// tests).
    pub(in crate::primary) fn healthy(acked_seq: u64, last_seq: u64) -> BackupHealth {
        BackupHealth {
            link_up: true,
            backup_alive: true,
            acked_seq,
            last_seq,
            all_reprotected: true,
        }
    }

    /// A backup neither linked nor heard.
    pub(in crate::primary) fn down() -> BackupHealth {
        BackupHealth {
            link_up: false,
            backup_alive: false,
            ..healthy(0, 0)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_healthy_backup_never_degrades() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        for i in 0..100 {
            let now = t0 + ms(i * 10);
            // Packets held for less than the limit.
            assert_eq!(p.tick(now, Some(now - ms(5)), healthy(i, i + 3)), None);
        }
        assert!(!p.is_degraded());
    }

    #[test]
    fn an_unreachable_backup_degrades_only_past_the_limit() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        assert_eq!(p.tick(t0, None, down()), None);
        assert_eq!(p.tick(t0 + ms(300), None, down()), None, "not yet past");
        assert_eq!(
            p.tick(t0 + ms(301), None, down()),
            Some(Transition::Degrade(DegradeReason::Unreachable {
                down_for: ms(301)
            }))
        );
        assert!(p.is_degraded());
        // Degrades once.
        assert_eq!(p.tick(t0 + ms(500), None, down()), None);
    }

    #[test]
    fn a_short_outage_is_forgiven() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        assert_eq!(p.tick(t0, None, down()), None);
        assert_eq!(p.tick(t0 + ms(200), None, healthy(1, 1)), None);
        // The clock restarts at the next outage.
        assert_eq!(p.tick(t0 + ms(250), None, down()), None);
        assert_eq!(p.tick(t0 + ms(540), None, down()), None);
        assert!(matches!(
            p.tick(t0 + ms(551), None, down()),
            Some(Transition::Degrade(DegradeReason::Unreachable { .. }))
        ));
    }

    #[test]
    fn a_link_up_without_heartbeats_counts_as_unreachable() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        let silent = BackupHealth {
            backup_alive: false,
            ..healthy(0, 0)
        };
        assert_eq!(p.tick(t0, None, silent), None);
        assert!(p.tick(t0 + ms(400), None, silent).is_some());
    }

    #[test]
    fn a_packet_held_too_long_degrades_even_with_the_link_up() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        assert_eq!(p.tick(t0 + ms(300), Some(t0), healthy(1, 5)), None);
        assert_eq!(
            p.tick(t0 + ms(302), Some(t0), healthy(1, 5)),
            Some(Transition::Degrade(DegradeReason::SlowBackup {
                held_for: ms(302)
            }))
        );
    }

    #[test]
    fn resynchronises_once_the_backup_acknowledged_what_was_submitted_when_it_came_back() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        p.tick(t0, None, down());
        assert!(p.tick(t0 + ms(400), None, down()).is_some());
        // Back, but behind: the target is the last sequence number now (50).
        assert_eq!(p.tick(t0 + ms(500), None, healthy(10, 50)), None);
        // New messages keep coming (a steady load): acknowledging the target is enough.
        assert_eq!(p.tick(t0 + ms(510), None, healthy(49, 60)), None);
        assert_eq!(
            p.tick(t0 + ms(520), None, healthy(50, 70)),
            Some(Transition::Resynchronised {
                degraded_for: ms(120)
            })
        );
        assert!(!p.is_degraded());
    }

    #[test]
    fn a_new_outage_while_catching_up_resets_the_target() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        p.tick(t0, None, down());
        assert!(p.tick(t0 + ms(400), None, down()).is_some());
        assert_eq!(p.tick(t0 + ms(500), None, healthy(10, 50)), None);
        assert_eq!(p.tick(t0 + ms(510), None, down()), None);
        // The target is taken again when it comes back (90), 50 is no longer enough.
        assert_eq!(p.tick(t0 + ms(600), None, healthy(50, 90)), None);
        assert!(p.tick(t0 + ms(610), None, healthy(90, 95)).is_some());
    }

    #[test]
    fn connections_awaiting_a_whole_resend_block_the_resynchronisation() {
        let t0 = Instant::from_millis(1_000);
        let mut p = DegradePolicy::new(AFTER);
        p.tick(t0, None, down());
        assert!(p.tick(t0 + ms(400), None, down()).is_some());
        let owing = BackupHealth {
            all_reprotected: false,
            ..healthy(50, 50)
        };
        assert_eq!(p.tick(t0 + ms(500), None, owing), None);
        assert!(p.tick(t0 + ms(510), None, healthy(50, 50)).is_some());
    }
}
