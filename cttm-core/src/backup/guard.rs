//! No split brain: the backup does not take over just because the primary's heartbeats
//! stopped. A silent primary may be alive and serving behind a cut replication link, so
//! before claiming anything the backup checks, in this order:
//!
//! 1. **Probe** every service address on the service network (an RFC 5227 §2.1.1 ARP probe,
//!    an RFC 4862 §5.4 duplicate address detection neighbour solicitation). Any answer means
//!    another host (the primary) still serves: no takeover. A probe that cannot be sent
//!    (interface down, ...) refuses too: the address cannot be shown free.
//! 2. **Fence**, if a fencing command is configured (keepalived's and Pacemaker's answer to a
//!    primary cut off the service network, which a probe cannot tell from a dead one). A
//!    failure aborts the takeover.
//! 3. Otherwise, or once fencing succeeded: **take over**.
//!
//! A refused check is repeated every [`GuardConfig::retry`] while the primary stays silent;
//! an answer is counted once per silence (it is the same fact each time), a failed probe or
//! fence each time. When the primary's heartbeats return, the backup goes back to protecting
//! and any check in flight is disregarded.
//!
//! [`TakeoverGuard`] reads no clock and touches no socket: the driver feeds it the failure
//! detector's verdict with the time ([`TakeoverGuard::observe`]), carries out the commands of
//! [`TakeoverGuard::poll`] (probe, fence, take over) and reports their results
//! ([`TakeoverGuard::on_probe`], [`TakeoverGuard::on_fence`]); it waits at most until
//! [`TakeoverGuard::next_deadline`].

use crate::time::Instant;
use std::net::IpAddr;
use std::time::Duration;

/// The default time between two checks while the primary stays silent and the takeover is
/// refused.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// What the guard checks before a takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// The service addresses to show free.
    pub addresses: Vec<IpAddr>,
    /// Probe the addresses (off: every check counts as silence; the operator was warned).
    pub probe: bool,
    /// A fencing command is configured: run it after a silent probe.
    pub fence: bool,
    /// Time between two checks after a refusal.
    pub retry: Duration,
}

impl GuardConfig {
    /// Probing on, no fencing, [`DEFAULT_RETRY`].
    pub fn new(addresses: Vec<IpAddr>) -> GuardConfig {
        GuardConfig {
            addresses,
            probe: true,
            fence: false,
            retry: DEFAULT_RETRY,
        }
    }
}

/// `02:00:5e:10:20:30`: a MAC address as operators write it.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a check refused the takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A host answered for a service address.
    Answered {
        /// The address.
        address: IpAddr,
        /// Who answered.
        mac: [u8; 6],
    },
    /// The fencing command failed (its error).
    FenceFailed(String),
    /// The probe could not be made (its error).
    ProbeFailed(String),
}

impl Refusal {
    /// The operator's alert for it.
    pub fn alert(&self, retry: Duration) -> String {
        let every = every(retry);
        match self {
            Refusal::Answered { address, mac } => format!(
                "takeover refused: the service address {address} is answered by {}: the primary still serves (is the replication link cut?); probing again {every}",
                mac_text(*mac)
            ),
            Refusal::FenceFailed(why) => {
                format!("takeover aborted: fencing failed: {why}; retrying {every}")
            }
            Refusal::ProbeFailed(why) => format!(
                "takeover refused: the service address could not be probed: {why}; retrying {every}"
            ),
        }
    }
}

/// `every second`, `every 250 ms`.
fn every(retry: Duration) -> String {
    if retry == Duration::from_secs(1) {
        "every second".to_string()
    } else {
        format!("every {} ms", retry.as_millis())
    }
}

/// A refusal just decided, for the driver's log and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// It counts as one more refused takeover (an answer counts once per silence).
    pub counted: bool,
    /// When the next check is due.
    pub retry_at: Instant,
}

/// What changed in the primary's liveness at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing.
    Unchanged,
    /// The primary was heard for the first time.
    Heard,
    /// The primary was heard again after a silence: protection resumes.
    Resumed {
        /// A takeover had been refused in that silence.
        refused: bool,
    },
    /// The primary went silent (declared dead): a check is due now.
    Silent,
}

/// The result of a probe of every service address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// No address answered.
    Silent,
    /// This address answered from this MAC.
    Answered {
        /// The address.
        address: IpAddr,
        /// Who answered.
        mac: [u8; 6],
    },
    /// The probe could not be made (its error).
    Failed(String),
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardCommand {
    /// Probe these addresses; report with [`TakeoverGuard::on_probe`].
    Probe(Vec<IpAddr>),
    /// Run the fencing command; report with [`TakeoverGuard::on_fence`].
    Fence,
    /// Take over now.
    TakeOver,
}

/// Where the current check stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// No check running.
    Idle,
    /// A probe was asked for.
    Probing,
    /// The probe was silent (or probing is off): fence or take over next.
    ProbeSilent,
    /// Fencing was asked for.
    Fencing,
    /// Fencing succeeded: take over next.
    Fenced,
}

/// The backup's guard against split brain (see the module documentation).
#[derive(Clone, Debug)]
pub struct TakeoverGuard {
    config: GuardConfig,
    heard: bool,
    last_alive: Option<Instant>,
    silent_since: Option<Instant>,
    next_check: Option<Instant>,
    step: Step,
    refusal: Option<Refusal>,
    /// An answer was already counted in this silence.
    answer_reported: bool,
}

impl TakeoverGuard {
    /// A guard that has not heard the primary yet (silence before then is no failure).
    pub fn new(config: GuardConfig) -> TakeoverGuard {
        TakeoverGuard {
            config,
            heard: false,
            last_alive: None,
            silent_since: None,
            next_check: None,
            step: Step::Idle,
            refusal: None,
            answer_reported: false,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// When the primary was last seen alive.
    pub fn last_alive(&self) -> Option<Instant> {
        self.last_alive
    }

    /// The primary is silent (declared dead and not heard since).
    pub fn is_silent(&self) -> bool {
        self.silent_since.is_some()
    }

    /// The refusal of the last check, while the primary stays silent.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    /// Takes the failure detector's verdict (`alive`) at `now`.
    pub fn observe(&mut self, alive: bool, now: Instant) -> Liveness {
        if alive {
            self.last_alive = Some(now);
            if !self.heard {
                self.heard = true;
                return Liveness::Heard;
            }
            if self.silent_since.take().is_some() {
                let refused = self.refusal.is_some();
                self.next_check = None;
                self.refusal = None;
                self.answer_reported = false;
                // A probe or fence still running is disregarded when it reports.
                self.step = Step::Idle;
                return Liveness::Resumed { refused };
            }
            return Liveness::Unchanged;
        }
        if self.heard && self.silent_since.is_none() {
            self.silent_since = Some(now);
            self.next_check = Some(now);
            return Liveness::Silent;
        }
        Liveness::Unchanged
    }

    /// The next command at `now`, if any: a check is due, or the current one moves on.
    pub fn poll(&mut self, now: Instant) -> Option<GuardCommand> {
        match self.step {
            Step::Probing | Step::Fencing => None,
            Step::ProbeSilent => Some(self.after_probe()),
            Step::Fenced => Some(self.cleared()),
            Step::Idle => {
                let due = self.silent_since.is_some() && self.next_check.is_some_and(|t| now >= t);
                if !due {
                    return None;
                }
                self.next_check = None;
                if self.config.probe {
                    self.step = Step::Probing;
                    Some(GuardCommand::Probe(self.config.addresses.clone()))
                } else {
                    Some(self.after_probe())
                }
            }
        }
    }

    /// The addresses were shown free: fence, or take over.
    fn after_probe(&mut self) -> GuardCommand {
        if self.config.fence {
            self.step = Step::Fencing;
            GuardCommand::Fence
        } else {
            self.cleared()
        }
    }

    /// Nothing stands in the way.
    fn cleared(&mut self) -> GuardCommand {
        self.step = Step::Idle;
        self.refusal = None;
        self.next_check = None;
        GuardCommand::TakeOver
    }

    /// The probe asked for by [`GuardCommand::Probe`] found `result` at `now`. A refusal is
    /// returned for the driver's log; on silence the next [`TakeoverGuard::poll`] fences or
    /// takes over. A result that comes after the primary was heard again is ignored.
    pub fn on_probe(&mut self, now: Instant, result: ProbeResult) -> Option<Refused> {
        if self.step != Step::Probing {
            return None;
        }
        match result {
            ProbeResult::Silent => {
                self.step = Step::ProbeSilent;
                None
            }
            ProbeResult::Answered { address, mac } => {
                Some(self.refuse(now, Refusal::Answered { address, mac }))
            }
            ProbeResult::Failed(why) => Some(self.refuse(now, Refusal::ProbeFailed(why))),
        }
    }

    /// The fencing asked for by [`GuardCommand::Fence`] ended at `now` (`Err`: its error).
    /// `Ok` makes the next [`TakeoverGuard::poll`] take over.
    pub fn on_fence(&mut self, now: Instant, result: Result<(), String>) -> Option<Refused> {
        if self.step != Step::Fencing {
            return None;
        }
        match result {
            Ok(()) => {
                self.step = Step::Fenced;
                None
            }
            Err(why) => Some(self.refuse(now, Refusal::FenceFailed(why))),
        }
    }

    /// The check at `now` refused the takeover: retried after [`GuardConfig::retry`].
    fn refuse(&mut self, now: Instant, refusal: Refusal) -> Refused {
        let counted = match refusal {
            Refusal::Answered { .. } => !std::mem::replace(&mut self.answer_reported, true),
            Refusal::FenceFailed(_) | Refusal::ProbeFailed(_) => true,
        };
        let retry_at = now + self.config.retry;
        self.step = Step::Idle;
        self.next_check = Some(retry_at);
        self.refusal = Some(refusal.clone());
        Refused {
            refusal,
            counted,
            retry_at,
        }
    }

    /// When the driver must call [`TakeoverGuard::poll`] again at the latest (`None`: only
    /// after the next [`TakeoverGuard::observe`] or result).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.step {
            Step::Idle if self.silent_since.is_some() => self.next_check,
            Step::ProbeSilent | Step::Fenced => self.silent_since,
            _ => None,
        }
    }

    /// The operator's alerts for the guard's state at `now`.
    pub fn alerts(&self, now: Instant) -> Vec<String> {
        let mut alerts = Vec::new();
        if let Some(since) = self.silent_since {
            let silent = now.saturating_since(self.last_alive.unwrap_or(since));
            alerts.push(format!(
                "primary silent for {} ms (heartbeats missed: the primary died or the replication link is cut)",
                silent.as_millis()
            ));
        }
        if let Some(refusal) = &self.refusal {
            alerts.push(refusal.alert(self.config.retry));
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "198.18.0.10";
    const HOLDER: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0x20, 0x30];

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn address() -> IpAddr {
        ADDRESS.parse().expect("address")
    }

    fn guard(probe: bool, fence: bool) -> TakeoverGuard {
        TakeoverGuard::new(GuardConfig {
            probe,
            fence,
            ..GuardConfig::new(vec![address()])
        })
    }

    /// A guard whose primary was heard at 0 ms and declared dead at 400 ms.
    fn silent(probe: bool, fence: bool) -> TakeoverGuard {
        let mut g = guard(probe, fence);
        assert_eq!(g.observe(true, at(0)), Liveness::Heard);
        assert_eq!(g.observe(false, at(400)), Liveness::Silent);
        g
    }

    #[test]
    fn silence_before_the_primary_was_ever_heard_is_not_a_failure() {
        let mut g = guard(true, false);
        assert_eq!(g.observe(false, at(0)), Liveness::Unchanged);
        assert_eq!(g.poll(at(5_000)), None);
        assert_eq!(g.next_deadline(), None);
        assert_eq!(g.observe(true, at(10)), Liveness::Heard);
        assert_eq!(g.observe(true, at(20)), Liveness::Unchanged);
        assert_eq!(g.last_alive(), Some(at(20)));
    }

    #[test]
    fn a_silent_primary_is_probed_at_once_then_taken_over_when_nobody_answers() {
        let mut g = silent(true, false);
        assert_eq!(g.next_deadline(), Some(at(400)));
        assert_eq!(g.poll(at(400)), Some(GuardCommand::Probe(vec![address()])));
        // In flight: nothing more until the result.
        assert_eq!(g.poll(at(450)), None);
        assert_eq!(g.on_probe(at(600), ProbeResult::Silent), None);
        assert_eq!(g.poll(at(600)), Some(GuardCommand::TakeOver));
        assert_eq!(g.refusal(), None);
    }

    #[test]
    fn an_answer_refuses_and_is_counted_once_per_silence() {
        let mut g = silent(true, false);
        assert!(matches!(g.poll(at(400)), Some(GuardCommand::Probe(_))));
        let answered = ProbeResult::Answered {
            address: address(),
            mac: HOLDER,
        };
        let refused = g.on_probe(at(600), answered.clone()).expect("refused");
        assert!(refused.counted);
        assert_eq!(refused.retry_at, at(1_600));
        assert_eq!(g.next_deadline(), Some(at(1_600)));
        assert_eq!(g.poll(at(1_599)), None, "the retry waits a second");
        assert!(matches!(g.poll(at(1_600)), Some(GuardCommand::Probe(_))));
        let again = g.on_probe(at(1_800), answered).expect("still refused");
        assert!(!again.counted, "the same answer is not counted twice");
        let alerts = g.alerts(at(1_800));
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert!(
            alerts[0].contains("primary silent for 1800 ms"),
            "{alerts:?}"
        );
        assert!(
            alerts[1].contains("198.18.0.10 is answered by 02:00:5e:10:20:30"),
            "{alerts:?}"
        );
    }

    #[test]
    fn a_failed_probe_refuses_and_counts_each_time() {
        let mut g = silent(true, false);
        for round in 0..3u64 {
            let now = at(400 + round * 1_000);
            assert!(matches!(g.poll(now), Some(GuardCommand::Probe(_))));
            let refused = g
                .on_probe(now, ProbeResult::Failed("interface down".into()))
                .expect("refused");
            assert!(refused.counted);
            assert_eq!(
                refused.refusal,
                Refusal::ProbeFailed("interface down".into())
            );
        }
    }

    #[test]
    fn fencing_follows_a_silent_probe_and_its_failure_aborts_the_takeover() {
        let mut g = silent(true, true);
        assert!(matches!(g.poll(at(400)), Some(GuardCommand::Probe(_))));
        assert_eq!(g.on_probe(at(600), ProbeResult::Silent), None);
        assert_eq!(g.poll(at(600)), Some(GuardCommand::Fence));
        assert_eq!(g.poll(at(700)), None, "fencing in flight");
        let refused = g
            .on_fence(at(900), Err("BMC unreachable".into()))
            .expect("aborted");
        assert!(refused.counted);
        assert!(
            g.alerts(at(900))
                .iter()
                .any(|a| a.contains("fencing failed: BMC unreachable")),
        );
        // Retried from the probe on.
        assert!(matches!(g.poll(at(1_900)), Some(GuardCommand::Probe(_))));
        assert_eq!(g.on_probe(at(2_000), ProbeResult::Silent), None);
        assert_eq!(g.poll(at(2_000)), Some(GuardCommand::Fence));
        assert_eq!(g.on_fence(at(2_100), Ok(())), None);
        assert_eq!(g.poll(at(2_100)), Some(GuardCommand::TakeOver));
        assert!(g.alerts(at(2_100)).iter().all(|a| !a.contains("fencing")));
    }

    #[test]
    fn without_probing_the_check_goes_straight_to_fencing_or_the_takeover() {
        let mut g = silent(false, true);
        assert_eq!(g.poll(at(400)), Some(GuardCommand::Fence));
        assert_eq!(g.on_fence(at(410), Ok(())), None);
        assert_eq!(g.poll(at(410)), Some(GuardCommand::TakeOver));
        let mut g = silent(false, false);
        assert_eq!(g.poll(at(400)), Some(GuardCommand::TakeOver));
    }

    #[test]
    fn returning_heartbeats_cancel_the_check_and_disregard_its_result() {
        let mut g = silent(true, true);
        assert!(matches!(g.poll(at(400)), Some(GuardCommand::Probe(_))));
        let answered = ProbeResult::Answered {
            address: address(),
            mac: HOLDER,
        };
        assert!(g.on_probe(at(500), answered).is_some());
        assert_eq!(
            g.observe(true, at(900)),
            Liveness::Resumed { refused: true }
        );
        assert!(g.alerts(at(900)).is_empty());
        assert_eq!(g.poll(at(5_000)), None, "nothing is due");
        // A check in flight when the primary comes back is disregarded.
        assert_eq!(g.observe(false, at(6_000)), Liveness::Silent);
        assert!(matches!(g.poll(at(6_000)), Some(GuardCommand::Probe(_))));
        assert_eq!(
            g.observe(true, at(6_100)),
            Liveness::Resumed { refused: false }
        );
        assert_eq!(g.on_probe(at(6_200), ProbeResult::Silent), None);
        assert_eq!(
            g.poll(at(6_200)),
            None,
            "no takeover after the primary returned"
        );
        // A new silence counts an answer again.
        assert_eq!(g.observe(false, at(7_000)), Liveness::Silent);
        assert!(matches!(g.poll(at(7_000)), Some(GuardCommand::Probe(_))));
        let refused = g
            .on_probe(
                at(7_100),
                ProbeResult::Answered {
                    address: address(),
                    mac: HOLDER,
                },
            )
            .expect("refused");
        assert!(refused.counted);
    }

    #[test]
    fn macs_are_written_as_operators_write_them() {
        assert_eq!(mac_text(HOLDER), "02:00:5e:10:20:30");
        assert!(
            Refusal::FenceFailed("x".into())
                .alert(Duration::from_millis(250))
                .ends_with("retrying every 250 ms")
        );
    }
}
