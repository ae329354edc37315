//! The driver of the takeover guard ([`cttm_core::backup::guard`], where every decision is
//! made, with the rules and their reasons): it feeds the guard the failure detector's verdict,
//! carries out its commands (the probe on the service interface, the operator's fencing
//! command) and logs and counts its refusals.

use super::view::BackupView;
use cttm_core::backup::{
    GuardCommand, GuardConfig, Liveness, ProbeResult, Refusal, Refused, TakeoverGuard, mac_text,
};
use cttm_core::io::fence::Fence;
use cttm_core::io::probe::NeighbourProbe;
use cttm_core::time::MonotonicOrigin;
use std::net::IpAddr;
use std::time::Instant;

#[cfg(test)]
use cttm_core::backup::guard::DEFAULT_RETRY as RETRY;

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Take over now.
    TakeOver,
    /// Do not take over (refused; checked again after the guard's retry time).
    Refused,
}

/// The guard with its probe and fencing command.
pub(crate) struct Guard {
    guard: TakeoverGuard,
    probe: Option<Box<dyn NeighbourProbe + Send>>,
    fence: Option<Box<dyn Fence + Send>>,
    /// The times the guard is given (it reads no clock).
    clock: MonotonicOrigin,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// A guard of `addresses` probing with `probe` (none: probing is off) and fencing with
    /// `fence` (none: no fencing).
    pub(crate) fn new(
        addresses: Vec<IpAddr>,
        probe: Option<Box<dyn NeighbourProbe + Send>>,
        fence: Option<Box<dyn Fence + Send>>,
    ) -> Guard {
        if probe.is_none() {
            tracing::warn!(
                "probing is off: a takeover will not check that the primary stopped serving"
            );
        }
        let config = GuardConfig {
            probe: probe.is_some(),
            fence: fence.is_some(),
            ..GuardConfig::new(addresses)
        };
        Guard {
            guard: TakeoverGuard::new(config),
            probe,
            fence,
            clock: MonotonicOrigin::new(Instant::now()),
        }
    }

    /// When the primary was last seen alive.
    pub(crate) fn last_alive(&self) -> Option<Instant> {
        self.guard.last_alive().map(|t| self.clock.instant(t))
    }

    /// Takes the failure detector's verdict at `now`.
    pub(crate) fn observe(&mut self, alive: bool, now: Instant) -> Liveness {
        let now = self.clock.at(now);
        let liveness = self.guard.observe(alive, now);
        match liveness {
            Liveness::Unchanged => {}
            Liveness::Heard => tracing::info!("primary heard on the replication link"),
            Liveness::Resumed { refused } => {
                tracing::info!(refused, "primary heard again: protection resumes")
            }
            Liveness::Silent => tracing::warn!(
                "primary declared dead (heartbeats missed): checking that no host serves the service address before taking over"
            ),
        }
        liveness
    }

    /// True when a check is due (the primary is silent and the retry time came).
    pub(crate) fn check_due(&self, now: Instant) -> bool {
        self.guard
            .next_deadline()
            .is_some_and(|t| self.clock.at(now) >= t)
    }

    /// Runs the guard's commands until it decides: probes, then fences (may take a while:
    /// probe waits, the fencing command).
    pub(crate) fn check(&mut self, view: &mut BackupView) -> Verdict {
        // Each check is at most probe, fence, take over: the bound only guards the loop.
        for _ in 0..4 {
            let now = self.clock.at(Instant::now());
            let refused = match self.guard.poll(now) {
                None => return Verdict::Refused,
                Some(GuardCommand::TakeOver) => return Verdict::TakeOver,
                Some(GuardCommand::Probe(addresses)) => {
                    let result = self.probe_all(&addresses);
                    let now = self.clock.at(Instant::now());
                    self.guard.on_probe(now, result)
                }
                Some(GuardCommand::Fence) => {
                    let result = self.fence();
                    let now = self.clock.at(Instant::now());
                    self.guard.on_fence(now, result)
                }
            };
            if let Some(refused) = refused {
                report(&refused, view);
                return Verdict::Refused;
            }
        }
        Verdict::Refused
    }

    /// Probes every address: the first answer, or silence.
    fn probe_all(&mut self, addresses: &[IpAddr]) -> ProbeResult {
        let Some(probe) = &mut self.probe else {
            return ProbeResult::Silent;
        };
        let result = probe.probe(addresses);
        if result == ProbeResult::Silent {
            tracing::info!(?addresses, "service addresses silent: nobody serves them");
        }
        result
    }

    /// Runs the fencing command.
    fn fence(&mut self) -> Result<(), String> {
        let Some(fence) = &mut self.fence else {
            return Ok(());
        };
        tracing::warn!("fencing the primary before the takeover");
        let addresses = self.guard.config().addresses.clone();
        let result = fence.fence(&addresses);
        match &result {
            Ok(()) => tracing::info!("fencing succeeded"),
            Err(e) => tracing::error!(error = %e, "fencing failed"),
        }
        result
    }

    /// The alerts of the guard's state at `now`.
    pub(crate) fn alerts(&self, now: Instant) -> Vec<String> {
        self.guard.alerts(self.clock.at(now))
    }
}

/// Logs a refusal and counts it in the view.
fn report(refused: &Refused, view: &mut BackupView) {
    if refused.counted {
        view.count_refused();
    }
    match &refused.refusal {
        Refusal::Answered { address, mac } if refused.counted => tracing::warn!(
            %address,
            holder = %mac_text(*mac),
            "takeover refused: the service address answers probes, so the primary still serves; probing again every second"
        ),
        Refusal::Answered { address, .. } => {
            tracing::debug!(%address, "the service address still answers")
        }
        Refusal::FenceFailed(why) => {
            tracing::error!(error = %why, "takeover aborted: fencing failed; retrying in 1 s")
        }
        Refusal::ProbeFailed(why) => tracing::error!(
            error = %why,
            "takeover refused: probing the service address failed; retrying in 1 s"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::CommandFence;
    use cttm_core::observe::{AgentRole, AgentView, CommitState, Observer};
    use std::time::Duration;

    fn view() -> (BackupView, Observer) {
        let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
        (BackupView::new(observer.clone()), observer)
    }

    /// A guard without probing (these tests need no network namespace).
    fn guard(fence: Option<CommandFence>) -> Guard {
        let addresses = vec!["198.18.0.10".parse().expect("address")];
        let fence = fence.map(|f| Box::new(f) as Box<dyn Fence + Send>);
        Guard::new(addresses, None, fence)
    }

    #[test]
    fn silence_before_the_primary_was_ever_heard_is_not_a_failure() {
        let mut guard = guard(None);
        let now = Instant::now();
        assert_eq!(guard.observe(false, now), Liveness::Unchanged);
        assert!(!guard.check_due(now));
        assert_eq!(guard.observe(true, now), Liveness::Heard);
        assert_eq!(guard.observe(true, now), Liveness::Unchanged);
        assert_eq!(guard.observe(false, now), Liveness::Silent);
        assert!(guard.check_due(now));
        assert_eq!(guard.alerts(now).len(), 1);
    }

    #[test]
    fn a_failing_fence_refuses_then_retries_and_heartbeats_cancel_it() {
        let (mut view, observer) = view();
        let mut guard = guard(Some(CommandFence {
            command: "echo 'BMC unreachable' >&2; exit 1".into(),
            timeout: Duration::from_secs(10),
        }));
        let now = Instant::now();
        guard.observe(true, now);
        guard.observe(false, now);
        assert_eq!(guard.check(&mut view), Verdict::Refused);
        assert!(!guard.check_due(Instant::now()), "the retry waits a second");
        assert!(guard.check_due(Instant::now() + RETRY));
        let alerts = guard.alerts(Instant::now());
        assert!(
            alerts
                .iter()
                .any(|a| a.contains("fencing failed") && a.contains("BMC unreachable")),
            "{alerts:?}"
        );
        // Each failed fencing counts (the agent checks again once the retry is due).
        std::thread::sleep(RETRY);
        assert!(guard.check_due(Instant::now()));
        assert_eq!(guard.check(&mut view), Verdict::Refused);
        view.publish_serving(Vec::new());
        assert_eq!(observer.view().counters.takeovers_refused, 2);
        // The primary comes back: nothing is due, alerts are gone.
        assert!(matches!(
            guard.observe(true, Instant::now()),
            Liveness::Resumed { refused: true }
        ));
        assert!(!guard.check_due(Instant::now() + RETRY));
        assert!(guard.alerts(Instant::now()).is_empty());
    }

    #[test]
    fn a_successful_fence_or_none_lets_the_takeover_go() {
        let (mut view, _) = view();
        for fence in [
            None,
            Some(CommandFence {
                command: "test -n \"$CTTM_SERVICE_ADDRESSES\"".into(),
                timeout: Duration::from_secs(10),
            }),
        ] {
            let mut guard = guard(fence);
            guard.observe(true, Instant::now());
            guard.observe(false, Instant::now());
            assert_eq!(guard.check(&mut view), Verdict::TakeOver);
        }
    }
}
