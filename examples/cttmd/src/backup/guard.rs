//! No split brain: the backup does not take over just because the primary's heartbeats
//! stopped. A silent primary may be alive and serving behind a cut replication link, so
//! before claiming anything the backup checks:
//!
//! 1. Probe every service address on the service network (RFC 5227 ARP probe, RFC 4862 DAD
//!    neighbour solicitation: `AddressProbe`). Any answer means another host (the primary)
//!    still serves: no takeover. Logged once per silence (`warn!`), counted once per silence
//!    in `takeovers_refused`, an alert while it lasts; the check is repeated every
//!    [`RETRY`] while the primary stays silent. `probe.count == 0` skips probing.
//! 2. If a fencing command is configured, run it (`fence`). A failure (non-zero status,
//!    timeout) aborts the takeover: `error!`, counted each time, an alert; probe and fence
//!    are retried after [`RETRY`].
//! 3. Otherwise (or once fencing succeeded): take over.
//!
//! A probe that cannot be sent (interface down, ...) counts as a refusal too (the address
//! cannot be shown free), retried the same way. When the primary's heartbeats return during
//! all this, the backup goes back to protecting as before (`info!`), alerts cleared.

use super::fence::run_fence;
use super::view::BackupView;
use crate::options::{BackupOptions, FenceOptions};
use cttm_restore::takeover::probe::{
    AddressProbe, ProbeConfig, ProbeError, ProbeOutcome, mac_text,
};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Time between two checks while the primary stays silent and the takeover is refused.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// Why the last check refused the takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A host answered for a service address.
    Answered {
        /// The address.
        address: IpAddr,
        /// Who answered.
        mac: [u8; 6],
    },
    /// The fencing command failed.
    FenceFailed(String),
    /// The probe could not be made.
    ProbeFailed(String),
}

impl Refusal {
    /// The operator's alert for it.
    fn alert(&self) -> String {
        match self {
            Refusal::Answered { address, mac } => format!(
                "takeover refused: the service address {address} is answered by {}: the primary still serves (is the replication link cut?); probing again every second",
                mac_text(*mac)
            ),
            Refusal::FenceFailed(why) => {
                format!("takeover aborted: fencing failed: {why}; retrying every second")
            }
            Refusal::ProbeFailed(why) => format!(
                "takeover refused: the service address could not be probed: {why}; retrying every second"
            ),
        }
    }
}

/// What changed in the primary's liveness at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Nothing.
    Unchanged,
    /// The primary was heard for the first time, or again after a silence.
    Heard,
    /// The primary went silent.
    Silent,
}

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Take over now.
    TakeOver,
    /// Do not take over (refused; checked again after [`RETRY`]).
    Refused,
}

/// The backup's guard against split brain (see the module documentation).
#[derive(Debug)]
pub(crate) struct Guard {
    addresses: Vec<IpAddr>,
    probe: Option<AddressProbe>,
    probe_config: ProbeConfig,
    fence: Option<FenceOptions>,
    heard: bool,
    last_alive: Option<Instant>,
    silent_since: Option<Instant>,
    next_check: Option<Instant>,
    refusal: Option<Refusal>,
    /// An answer was already logged and counted in this silence.
    answer_reported: bool,
}

impl Guard {
    /// Opens the probe on the service interface (in the calling thread's network
    /// namespace) unless probing is off (`probe.count == 0`).
    pub(crate) fn new(
        options: &BackupOptions,
        addresses: Vec<IpAddr>,
    ) -> Result<Guard, ProbeError> {
        let probe = if options.probe.count == 0 {
            tracing::warn!(
                "probing is off (probe count 0): a takeover will not check that the primary stopped serving"
            );
            None
        } else {
            Some(AddressProbe::open(&options.interface)?)
        };
        Ok(Guard {
            addresses,
            probe,
            probe_config: ProbeConfig {
                count: options.probe.count,
                wait: options.probe.wait,
            },
            fence: options.fence.clone(),
            heard: false,
            last_alive: None,
            silent_since: None,
            next_check: None,
            refusal: None,
            answer_reported: false,
        })
    }

    /// When the primary was last seen alive.
    pub(crate) fn last_alive(&self) -> Option<Instant> {
        self.last_alive
    }

    /// Takes the failure detector's verdict at `now`.
    pub(crate) fn observe(&mut self, alive: bool, now: Instant) -> Liveness {
        if alive {
            self.last_alive = Some(now);
            if !self.heard {
                self.heard = true;
                tracing::info!("primary heard on the replication link");
                return Liveness::Heard;
            }
            if self.silent_since.take().is_some() {
                tracing::info!(
                    refused = self.refusal.is_some(),
                    "primary heard again: protection resumes"
                );
                self.next_check = None;
                self.refusal = None;
                self.answer_reported = false;
                return Liveness::Heard;
            }
            return Liveness::Unchanged;
        }
        if self.heard && self.silent_since.is_none() {
            self.silent_since = Some(now);
            self.next_check = Some(now);
            tracing::warn!(
                "primary declared dead (heartbeats missed): checking that no host serves the service address before taking over"
            );
            return Liveness::Silent;
        }
        Liveness::Unchanged
    }

    /// True when a check is due (the primary is silent and the retry time came).
    pub(crate) fn check_due(&self, now: Instant) -> bool {
        self.next_check.is_some_and(|t| now >= t)
    }

    /// Probes, then fences: may take a while (probe waits, the fencing command).
    pub(crate) fn check(&mut self, view: &mut BackupView) -> Verdict {
        match self.refusal_now() {
            None => {
                self.next_check = None;
                self.refusal = None;
                Verdict::TakeOver
            }
            Some(refusal) => {
                match &refusal {
                    Refusal::Answered { address, mac } => {
                        if !self.answer_reported {
                            self.answer_reported = true;
                            view.count_refused();
                            tracing::warn!(
                                %address,
                                holder = %mac_text(*mac),
                                "takeover refused: the service address answers probes, so the primary still serves; probing again every second"
                            );
                        } else {
                            tracing::debug!(%address, "the service address still answers");
                        }
                    }
                    Refusal::FenceFailed(why) => {
                        view.count_refused();
                        tracing::error!(error = %why, "takeover aborted: fencing failed; retrying in 1 s");
                    }
                    Refusal::ProbeFailed(why) => {
                        view.count_refused();
                        tracing::error!(error = %why, "takeover refused: probing the service address failed; retrying in 1 s");
                    }
                }
                self.refusal = Some(refusal);
                self.next_check = Some(std::time::Instant::now() + RETRY);
                Verdict::Refused
            }
        }
    }

    /// Runs one check: `None` when the takeover may go ahead.
    fn refusal_now(&mut self) -> Option<Refusal> {
        if let Some(probe) = &mut self.probe {
            for &address in &self.addresses {
                match probe.probe(address, self.probe_config) {
                    Ok(ProbeOutcome::Silent) => {
                        tracing::info!(%address, "service address silent: nobody serves it");
                    }
                    Ok(ProbeOutcome::Answered { mac }) => {
                        return Some(Refusal::Answered { address, mac });
                    }
                    Err(e) => return Some(Refusal::ProbeFailed(e.to_string())),
                }
            }
        }
        if let Some(fence) = &self.fence {
            tracing::warn!(command = %fence.command, "fencing the primary before the takeover");
            match run_fence(fence, &self.addresses) {
                Ok(()) => tracing::info!("fencing succeeded"),
                Err(e) => return Some(Refusal::FenceFailed(e.to_string())),
            }
        }
        None
    }

    /// The alerts of the guard's state at `now`.
    pub(crate) fn alerts(&self, now: Instant) -> Vec<String> {
        let mut alerts = Vec::new();
        if let Some(since) = self.silent_since {
            let silent = self
                .last_alive
                .map_or(now.saturating_duration_since(since), |t| {
                    now.saturating_duration_since(t)
                });
            alerts.push(format!(
                "primary silent for {} ms (heartbeats missed: the primary died or the replication link is cut)",
                silent.as_millis()
            ));
        }
        if let Some(refusal) = &self.refusal {
            alerts.push(refusal.alert());
        }
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{AgentRole, AgentView, CommitState, Observer};
    use crate::options::{HeartbeatOptions, ObserveOptions, ProbeOptions};

    fn options(fence: Option<FenceOptions>) -> BackupOptions {
        BackupOptions {
            services: vec!["198.18.0.10:7000".parse().expect("service")],
            service_prefix_len: 24,
            interface: "does-not-matter".into(),
            listen: "127.0.0.1:0".parse().expect("listen"),
            key: [0; 32],
            standby: "127.0.0.1:7000".parse().expect("standby"),
            heartbeat: HeartbeatOptions {
                interval: Duration::from_millis(50),
                misses: 8,
            },
            announce_count: 1,
            // No probing: these tests need no network namespace.
            probe: ProbeOptions {
                count: 0,
                ..ProbeOptions::DEFAULT
            },
            fence,
            observe: ObserveOptions::default(),
        }
    }

    fn view() -> (BackupView, Observer) {
        let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
        (BackupView::new(observer.clone()), observer)
    }

    fn guard(fence: Option<FenceOptions>) -> Guard {
        let addresses = vec!["198.18.0.10".parse().expect("address")];
        Guard::new(&options(fence), addresses).expect("no probe to open")
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
        let mut guard = guard(Some(FenceOptions {
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
        // Each failed fencing counts.
        assert_eq!(guard.check(&mut view), Verdict::Refused);
        view.publish_serving(Vec::new());
        assert_eq!(observer.view().counters.takeovers_refused, 2);
        // The primary comes back: nothing is due, alerts are gone.
        assert_eq!(guard.observe(true, Instant::now()), Liveness::Heard);
        assert!(!guard.check_due(Instant::now() + RETRY));
        assert!(guard.alerts(Instant::now()).is_empty());
    }

    #[test]
    fn a_successful_fence_or_none_lets_the_takeover_go() {
        let (mut view, _) = view();
        for fence in [
            None,
            Some(FenceOptions {
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

    #[test]
    fn an_answer_names_the_holder() {
        let refusal = Refusal::Answered {
            address: "198.18.0.10".parse().expect("address"),
            mac: [0x02, 0, 0x5e, 0x10, 0x20, 0x30],
        };
        assert!(
            refusal
                .alert()
                .contains("198.18.0.10 is answered by 02:00:5e:10:20:30")
        );
    }
}
