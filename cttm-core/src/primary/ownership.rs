//! Who serves the service address: a primary that comes back after a takeover must not serve
//! it (split brain), and a primary cut off from its backup that finds the address served
//! elsewhere (the partition healed after a takeover) must stop serving it.
//!
//! The check rests on probes of every service address on the service network: an RFC 5227
//! §2.1.1 ARP probe, an RFC 4862 §5.4 duplicate address detection neighbour solicitation. A
//! host answers them only for an address it holds, and Linux does not loop a probe back to its
//! sender, so an answer means *another* host holds the address. The rules:
//!
//! 1. **At start**, before capturing anything, the agent probes. Silence: it serves. An
//!    answer: it releases the addresses (removes them from its interface, so its old sockets
//!    can send nothing beside the host that took over) and becomes **non-serving**.
//! 2. **Non-serving**, it waits for the operator's rejoin request. A rejoin probes again:
//!    still answered, it is refused (the agent stays non-serving and says why); silent, the
//!    agent claims the addresses (adds and announces them, RFC 5227 §2.3) and serves again,
//!    unless the claim fails, which leaves it non-serving until the next request.
//! 3. **While serving**, the agent watches: while the backup is silent (the failure
//!    detector's verdict), it probes once every [`OwnershipConfig::watch_interval`]. An
//!    answer **demotes** it: it stops serving, releases the addresses and becomes
//!    non-serving (rule 2). An answer demotes even if the backup was heard again while the
//!    probe was out: the answer is a fact about the address, the heartbeats only say the
//!    backup agent runs.
//!
//! A probe that cannot be made counts as silence here (unlike the backup's
//! [`TakeoverGuard`](crate::backup::TakeoverGuard), which refuses): a primary must not stop
//! serving its clients because its probe socket failed, and the backup's own probe still
//! keeps the two hosts from serving at once. The failure is reported for the log.
//!
//! [`OwnershipCheck`] reads no clock and touches no interface: the driver feeds it the
//! backup's liveness with the time ([`OwnershipCheck::observe_backup`]) and the operator's
//! rejoin requests ([`OwnershipCheck::on_rejoin_request`]), carries out the commands of
//! [`OwnershipCheck::poll`] (probe, release, claim, serve, demote) and reports their results
//! ([`OwnershipCheck::on_probe`], [`OwnershipCheck::on_claim`]); it waits at most until
//! [`OwnershipCheck::next_deadline`].

use crate::backup::guard::{ProbeResult, mac_text};
use crate::time::Instant;
use std::net::IpAddr;
use std::time::Duration;

/// The default time between two probes of the watch while the backup is silent.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What the ownership check probes, and how often it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnershipConfig {
    /// The service addresses.
    pub addresses: Vec<IpAddr>,
    /// Probe the addresses (off: every check counts as silence, and nothing is watched).
    pub probe: bool,
    /// Time between two probes of the watch while the backup is silent.
    pub watch_interval: Duration,
}

impl OwnershipConfig {
    /// Probing on, [`DEFAULT_WATCH_INTERVAL`].
    pub fn new(addresses: Vec<IpAddr>) -> OwnershipConfig {
        OwnershipConfig {
            addresses,
            probe: true,
            watch_interval: DEFAULT_WATCH_INTERVAL,
        }
    }
}

/// Another host answered for a service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtherHolder {
    /// The service address it answered for.
    pub address: IpAddr,
    /// Its MAC address.
    pub mac: [u8; 6],
}

impl std::fmt::Display for OtherHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is served by {}", self.address, mac_text(self.mac))
    }
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnershipCommand {
    /// Probe these addresses; report with [`OwnershipCheck::on_probe`].
    Probe(Vec<IpAddr>),
    /// Serve: capture, track, replicate (the addresses are this host's).
    Serve,
    /// Stop serving now: another host serves the address.
    Demote(OtherHolder),
    /// Remove these addresses from the interface (those it carries).
    Release(Vec<IpAddr>),
    /// Add these addresses to the interface and announce them; report with
    /// [`OwnershipCheck::on_claim`].
    Claim(Vec<IpAddr>),
}

/// What a result decided, for the driver's log and the operator's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnershipEvent {
    /// Another host serves a service address: this agent does not serve it (at start), or
    /// stops serving it (while serving: [`OwnershipCommand::Demote`] follows).
    ServedElsewhere(OtherHolder),
    /// The probe could not be made (its error); counted as silence.
    ProbeFailed(String),
    /// The rejoin is refused: another host still serves a service address.
    RejoinRefused(OtherHolder),
    /// The rejoin found the addresses free but could not claim them (the claim's error).
    ClaimFailed(String),
    /// The rejoin claimed the addresses: [`OwnershipCommand::Serve`] follows.
    Rejoined,
}

/// Why the last rejoin did not serve again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RejoinFailure {
    /// Another host still serves a service address.
    Refused(OtherHolder),
    /// Claiming the addresses failed (its error).
    ClaimFailed(String),
}

impl RejoinFailure {
    /// The operator's alert for it.
    fn alert(&self) -> String {
        match self {
            RejoinFailure::Refused(other) => {
                format!("rejoin refused: the service address {other}; stop the agent there first")
            }
            RejoinFailure::ClaimFailed(why) => {
                format!("rejoin failed: claiming the service address: {why}")
            }
        }
    }
}

/// Which check a probe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Before serving for the first time.
    Start,
    /// An operator's rejoin request.
    Rejoin,
}

/// What the watch knows while the agent serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Watch {
    /// Since when the backup has been silent (`None`: it is alive, or not known silent).
    silent_since: Option<Instant>,
    /// When the last probe was asked for.
    last_probe: Option<Instant>,
    /// A probe is out.
    probing: bool,
}

impl Watch {
    /// When the next probe is due (`None`: none while the backup is not silent).
    fn next_probe(&self, interval: Duration) -> Option<Instant> {
        let silent_since = self.silent_since?;
        Some(
            self.last_probe
                .map_or(silent_since, |t| (t + interval).max(silent_since)),
        )
    }
}

/// Where the agent stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// A check is due: the next poll probes (or, probing off, goes on as after silence).
    CheckDue(Check),
    /// The check's probe is out.
    Probing(Check),
    /// The addresses are this host's: the next poll serves.
    ToServe,
    /// Serving, watched.
    Serving(Watch),
    /// Another host answered while serving: the next poll demotes.
    ToDemote(OtherHolder),
    /// The next poll releases the addresses.
    ToRelease,
    /// Not serving: waiting for a rejoin request.
    NonServing,
    /// A rejoin found the addresses free: the next poll claims them.
    ToClaim,
    /// The claim is out.
    Claiming,
}

/// The primary's check that no other host serves its service addresses (see the module
/// documentation).
#[derive(Clone, Debug)]
pub struct OwnershipCheck {
    config: OwnershipConfig,
    phase: Phase,
    /// When the pending command became due (the deadline of a command ready now).
    due_since: Instant,
    /// The host whose answer made this agent non-serving.
    holder: Option<OtherHolder>,
    /// Why the last rejoin did not serve again.
    rejoin_failure: Option<RejoinFailure>,
}

impl OwnershipCheck {
    /// A check that probes at its first [`OwnershipCheck::poll`] (the start check).
    pub fn new(config: OwnershipConfig) -> OwnershipCheck {
        OwnershipCheck {
            config,
            phase: Phase::CheckDue(Check::Start),
            due_since: Instant::ZERO,
            holder: None,
            rejoin_failure: None,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &OwnershipConfig {
        &self.config
    }

    /// True while the agent serves (the watch runs).
    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Serving(_))
    }

    /// True while the agent is non-serving and no rejoin is under way: a rejoin request is
    /// taken now.
    pub fn awaits_rejoin(&self) -> bool {
        self.phase == Phase::NonServing
    }

    /// The host whose answer made this agent non-serving, until it serves again.
    pub fn holder(&self) -> Option<OtherHolder> {
        self.holder
    }

    /// Takes the failure detector's verdict on the backup (`alive`) at `now`. Only the
    /// watch of a serving agent uses it.
    pub fn observe_backup(&mut self, alive: bool, now: Instant) {
        let Phase::Serving(watch) = &mut self.phase else {
            return;
        };
        if alive {
            watch.silent_since = None;
        } else if watch.silent_since.is_none() {
            watch.silent_since = Some(now);
        }
    }

    /// The operator asks a non-serving agent at `now` to serve again: true when a rejoin
    /// starts (the next [`OwnershipCheck::poll`] probes), false when the agent is not
    /// waiting for one (it serves, or a rejoin is under way).
    pub fn on_rejoin_request(&mut self, now: Instant) -> bool {
        if !self.awaits_rejoin() {
            return false;
        }
        self.set(Phase::CheckDue(Check::Rejoin), now);
        true
    }

    /// The next command at `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<OwnershipCommand> {
        match &mut self.phase {
            Phase::Probing(_) | Phase::Claiming | Phase::NonServing => None,
            Phase::CheckDue(check) => {
                let check = *check;
                if self.config.probe {
                    self.phase = Phase::Probing(check);
                    Some(OwnershipCommand::Probe(self.config.addresses.clone()))
                } else {
                    self.on_free(check, now);
                    self.poll(now)
                }
            }
            Phase::ToServe => {
                self.phase = Phase::Serving(Watch::default());
                self.holder = None;
                self.rejoin_failure = None;
                Some(OwnershipCommand::Serve)
            }
            Phase::Serving(watch) => {
                let due = !watch.probing
                    && watch
                        .next_probe(self.config.watch_interval)
                        .is_some_and(|t| now >= t);
                if !due || !self.config.probe {
                    return None;
                }
                watch.probing = true;
                watch.last_probe = Some(now);
                Some(OwnershipCommand::Probe(self.config.addresses.clone()))
            }
            Phase::ToDemote(holder) => {
                let holder = *holder;
                self.set(Phase::ToRelease, now);
                Some(OwnershipCommand::Demote(holder))
            }
            Phase::ToRelease => {
                self.phase = Phase::NonServing;
                Some(OwnershipCommand::Release(self.config.addresses.clone()))
            }
            Phase::ToClaim => {
                self.phase = Phase::Claiming;
                Some(OwnershipCommand::Claim(self.config.addresses.clone()))
            }
        }
    }

    /// The probe asked for by [`OwnershipCommand::Probe`] found `result` at `now`. Returns
    /// what it decided, for the driver's log; the next [`OwnershipCheck::poll`] carries it
    /// out. A result nobody asked for is ignored.
    pub fn on_probe(&mut self, now: Instant, result: ProbeResult) -> Option<OwnershipEvent> {
        let (holder, failed) = match result {
            ProbeResult::Answered { address, mac } => (Some(OtherHolder { address, mac }), None),
            ProbeResult::Silent => (None, None),
            ProbeResult::Failed(why) => (None, Some(OwnershipEvent::ProbeFailed(why))),
        };
        let decided = match &mut self.phase {
            Phase::Probing(check) => {
                let check = *check;
                match holder {
                    Some(holder) => Some(self.on_answer(check, holder, now)),
                    None => {
                        self.on_free(check, now);
                        None
                    }
                }
            }
            Phase::Serving(watch) if watch.probing => {
                watch.probing = false;
                holder.map(|holder| {
                    self.holder = Some(holder);
                    self.set(Phase::ToDemote(holder), now);
                    OwnershipEvent::ServedElsewhere(holder)
                })
            }
            _ => return None,
        };
        decided.or(failed)
    }

    /// The claim asked for by [`OwnershipCommand::Claim`] ended at `now` (`Err`: its error).
    /// `Ok` makes the next [`OwnershipCheck::poll`] serve. A result nobody asked for is
    /// ignored.
    pub fn on_claim(&mut self, now: Instant, result: Result<(), String>) -> Option<OwnershipEvent> {
        if self.phase != Phase::Claiming {
            return None;
        }
        match result {
            Ok(()) => {
                self.set(Phase::ToServe, now);
                Some(OwnershipEvent::Rejoined)
            }
            Err(why) => {
                self.phase = Phase::NonServing;
                self.rejoin_failure = Some(RejoinFailure::ClaimFailed(why.clone()));
                Some(OwnershipEvent::ClaimFailed(why))
            }
        }
    }

    /// Nobody answered (or the probe failed) in `check`: serve, or claim the addresses.
    fn on_free(&mut self, check: Check, now: Instant) {
        let next = match check {
            Check::Start => Phase::ToServe,
            Check::Rejoin => Phase::ToClaim,
        };
        self.set(next, now);
    }

    /// `holder` answered in `check`: not serving, or the rejoin refused.
    fn on_answer(&mut self, check: Check, holder: OtherHolder, now: Instant) -> OwnershipEvent {
        match check {
            Check::Start => {
                self.holder = Some(holder);
                self.set(Phase::ToRelease, now);
                OwnershipEvent::ServedElsewhere(holder)
            }
            Check::Rejoin => {
                self.phase = Phase::NonServing;
                self.rejoin_failure = Some(RejoinFailure::Refused(holder));
                OwnershipEvent::RejoinRefused(holder)
            }
        }
    }

    /// Moves to `phase`, whose command (if any) is due from `now`.
    fn set(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.due_since = now;
    }

    /// When the driver must call [`OwnershipCheck::poll`] again at the latest (`None`: only
    /// after the next input or result). A time already past means at once.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::CheckDue(_)
            | Phase::ToServe
            | Phase::ToDemote(_)
            | Phase::ToRelease
            | Phase::ToClaim => Some(self.due_since),
            Phase::Serving(watch) if self.config.probe && !watch.probing => {
                watch.next_probe(self.config.watch_interval)
            }
            Phase::Serving(_) | Phase::Probing(_) | Phase::NonServing | Phase::Claiming => None,
        }
    }

    /// The operator's alerts: why the agent does not serve, and why the last rejoin did not
    /// serve again (none while it serves).
    pub fn alerts(&self) -> Vec<String> {
        let Some(holder) = self.holder else {
            return Vec::new();
        };
        let mut alerts = vec![format!(
            "the service address {holder}: not serving until `cttmd rejoin`"
        )];
        alerts.extend(self.rejoin_failure.as_ref().map(RejoinFailure::alert));
        alerts
    }
}

#[cfg(test)]
#[path = "ownership_tests.rs"]
mod tests;
