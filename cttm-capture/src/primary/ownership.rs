//! The driver of the ownership check ([`cttm_core::primary::ownership`], where every decision
//! is made, with the rules and their reasons): it probes the service addresses on the
//! service network ([`AddressProbe`]: RFC 5227 §2.1.1 ARP probes, RFC 4862 §5.4.2 duplicate
//! address detection), removes them from the interface and claims them back (netlink, then
//! RFC 5227 §2.3 announcements), takes the operator's `cttmd rejoin` requests, and publishes
//! the non-serving view.
//!
//! - [`Ownership`] drives the check on the agent's thread before and between serving runs:
//!   the start probe, the non-serving wait, the rejoins.
//! - [`OwnershipWatch`] drives it during a serving run: the capture loop feeds it the
//!   backup's liveness and polls it. A probe takes `count x wait`, which must not stall the
//!   capture loop, so the watch's probes run on a thread of their own and their results come
//!   back over a channel.
//!
//! Removing the addresses is what keeps a returning host quiet: its old sockets can then
//! send nothing (Linux routes no packet from a source address that is not local,
//! `ip_route_output_key` `-ENETUNREACH`), so it cannot disturb the connections the backup
//! continues. A non-serving agent also installs no queue rule and captures nothing.
//!
//! `ProbeOptions::count == 0` turns all of this off (nothing is probed).

use super::ProbeFactory;
use super::clock::CoreClock;
use super::{CommitMode, PrimarySettings};
use cttm_core::backup::ProbeResult;
use cttm_core::io::probe::NeighbourProbe;
use cttm_core::io::takeover::AddressTakeover;
use cttm_core::observe::{AgentRole, AgentView, CommitState, Observer};
use cttm_core::primary::ownership::{
    OtherHolder, OwnershipCheck, OwnershipCommand, OwnershipConfig, OwnershipEvent,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the non-serving wait looks for a rejoin request and the stop flag.
const FLAG_POLL: Duration = Duration::from_millis(20);

/// The service addresses on the interface: probing, removing and claiming them.
struct ServiceAddresses {
    interface: String,
    /// `None`: probing is off, or the probe could not be opened.
    probe: Option<Box<dyn NeighbourProbe + Send>>,
    /// Opens another probe (for the watch's thread).
    open_probe: Option<ProbeFactory>,
    /// `None`: the address takeover could not be opened (releases and claims are logged as
    /// impossible).
    takeover: Option<Box<dyn AddressTakeover + Send>>,
    /// Prefix lengths the addresses had when released, to claim them back the same.
    prefixes: HashMap<IpAddr, u8>,
}

impl std::fmt::Debug for ServiceAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAddresses")
            .field("interface", &self.interface)
            .field("prefixes", &self.prefixes)
            .finish_non_exhaustive()
    }
}

impl ServiceAddresses {
    /// Probes `addresses` (silence when probing is off).
    fn probe(&mut self, addresses: &[IpAddr]) -> ProbeResult {
        match &mut self.probe {
            Some(probe) => probe.probe(addresses),
            None => ProbeResult::Silent,
        }
    }

    /// Removes those of `addresses` the interface carries, remembering their prefix lengths.
    fn release(&mut self, addresses: &[IpAddr]) {
        let Some(takeover) = self.takeover.as_mut() else {
            tracing::error!(
                "cannot remove the service address from the interface: remove it by hand (`ip addr del`)"
            );
            return;
        };
        for address in addresses {
            let prefix_len = match takeover.local_prefix_len(*address) {
                Ok(Some(prefix_len)) => prefix_len,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(%address, error = %e, "cannot read the interface's addresses: remove the service address by hand (`ip addr del`)");
                    continue;
                }
            };
            self.prefixes.insert(*address, prefix_len);
            match takeover.release(*address, prefix_len) {
                Ok(()) => {
                    tracing::warn!(%address, prefix_len, interface = %self.interface, "service address removed: another host serves it")
                }
                Err(e) => {
                    tracing::error!(%address, error = %e, "removing the service address failed: remove it by hand (`ip addr del`)")
                }
            }
        }
    }

    /// Adds every one of `addresses` to the interface and announces it. An address never
    /// seen here gets the full prefix length (/32, /128): it is reachable through the
    /// interface's own subnet route.
    fn claim(&mut self, addresses: &[IpAddr]) -> Result<(), String> {
        let takeover = self
            .takeover
            .as_mut()
            .ok_or_else(|| format!("no address takeover on {}", self.interface))?;
        for address in addresses {
            let full = if address.is_ipv4() { 32 } else { 128 };
            let prefix_len = self.prefixes.get(address).copied().unwrap_or(full);
            takeover
                .claim(*address, prefix_len)
                .map_err(|e| e.to_string())?;
            takeover.announce(*address).map_err(|e| e.to_string())?;
            tracing::info!(%address, prefix_len, "service address claimed and announced");
        }
        Ok(())
    }
}

/// Publishes the non-serving agent's view: its role and the check's alerts.
fn publish_non_serving(observer: &Observer, mode: CommitState, check: &OwnershipCheck) {
    let mut view = AgentView::new(AgentRole::NonServing, mode);
    view.alerts = check.alerts();
    observer.publish(view);
}

/// The ownership check of one agent with its service addresses, between serving runs.
#[derive(Debug)]
pub(super) struct Ownership {
    /// `None` while a serving run's [`OwnershipWatch`] holds it.
    check: Option<OwnershipCheck>,
    addresses: ServiceAddresses,
    mode: CommitMode,
    /// The times the check is given (it reads no clock).
    clock: CoreClock,
}

impl Ownership {
    /// The ownership check of `settings`, probing with what `open_probe` opens (in the
    /// calling thread's network namespace; `None`: probing is off) and releasing and claiming
    /// with `takeover`. A probe that cannot be opened is logged and the agent runs without
    /// probing (the backup's own probe still prevents a double claim).
    pub(super) fn open(
        settings: &PrimarySettings,
        mut open_probe: Option<ProbeFactory>,
        takeover: Option<Box<dyn AddressTakeover + Send>>,
    ) -> Ownership {
        let mut addresses: Vec<IpAddr> = settings.services.iter().map(|s| s.ip()).collect();
        addresses.sort();
        addresses.dedup();
        let probe = open_probe
            .as_mut()
            .map(|open| open())
            .and_then(|opened| match opened {
                Ok(probe) => Some(probe),
                Err(e) => {
                    tracing::error!(error = %e, "cannot probe the service address: running without the check that no other host serves it");
                    None
                }
            });
        let config = OwnershipConfig {
            probe: probe.is_some(),
            ..OwnershipConfig::new(addresses)
        };
        Ownership {
            check: Some(OwnershipCheck::new(config)),
            addresses: ServiceAddresses {
                interface: settings.interface.clone(),
                probe,
                open_probe,
                takeover,
                prefixes: HashMap::new(),
            },
            mode: settings.mode,
            clock: CoreClock::start(),
        }
    }

    /// Runs the check until it says serve (true) or until `stop` (false): the start probe,
    /// then, while another host serves the address, the non-serving wait for a rejoin.
    pub(super) fn until_serving(&mut self, stop: &AtomicBool, observer: &Observer) -> bool {
        let Some(check) = self.check.as_mut() else {
            tracing::error!(
                "the ownership check did not come back from the serving run: not serving"
            );
            return false;
        };
        let mode = match self.mode {
            CommitMode::Sync => CommitState::Sync,
            CommitMode::Async => CommitState::Async,
        };
        let publish = |check: &OwnershipCheck| publish_non_serving(observer, mode, check);
        while !stop.load(Ordering::SeqCst) {
            let now = self.clock.now();
            match check.poll(now) {
                Some(OwnershipCommand::Serve) => return !stop.load(Ordering::SeqCst),
                Some(command) => {
                    carry_out(check, &mut self.addresses, &self.clock, &publish, command)
                }
                None if check.awaits_rejoin() && observer.take_rejoin_request() => {
                    check.on_rejoin_request(now);
                }
                None => std::thread::sleep(FLAG_POLL),
            }
        }
        false
    }

    /// A watch for one serving run (`None` when probing is off or the watch cannot probe):
    /// it holds the check until [`Ownership::end_watch`]. Opens its own probe socket in the
    /// calling thread's network namespace.
    pub(super) fn watch(&mut self) -> Option<OwnershipWatch> {
        self.addresses.probe.as_ref()?;
        let open = self.addresses.open_probe.as_mut()?;
        let worker = open().and_then(|probe| ProbeWorker::start(probe).map_err(|e| e.to_string()));
        let worker = match worker {
            Ok(worker) => worker,
            Err(e) => {
                tracing::error!(error = %e, "cannot probe the service address while the backup is silent");
                return None;
            }
        };
        Some(OwnershipWatch {
            check: self.check.take()?,
            clock: self.clock,
            worker,
            demoted: None,
        })
    }

    /// The serving run ended: the check comes back from its watch.
    pub(super) fn end_watch(&mut self, watch: Option<OwnershipWatch>) {
        if let Some(watch) = watch {
            self.check = Some(watch.check);
        }
    }
}

/// Carries out one command of the check on the agent's thread (not serving).
fn carry_out(
    check: &mut OwnershipCheck,
    addresses: &mut ServiceAddresses,
    clock: &CoreClock,
    publish: &dyn Fn(&OwnershipCheck),
    command: OwnershipCommand,
) {
    let event = match command {
        OwnershipCommand::Probe(list) => {
            let result = addresses.probe(&list);
            check.on_probe(clock.now(), result)
        }
        OwnershipCommand::Release(list) => {
            addresses.release(&list);
            if let Some(holder) = check.holder() {
                tracing::warn!(%holder, "another host serves the service address: this agent does not serve it until `cttmd rejoin`");
            }
            publish(check);
            None
        }
        OwnershipCommand::Claim(list) => {
            let result = addresses.claim(&list);
            check.on_claim(clock.now(), result)
        }
        // Serving starts in the caller; a demotion comes only from a serving run's watch.
        OwnershipCommand::Serve | OwnershipCommand::Demote(_) => None,
    };
    match event {
        // The release that follows logs it.
        None | Some(OwnershipEvent::ServedElsewhere(_)) => {}
        Some(OwnershipEvent::ProbeFailed(why)) => warn_probe_failed(&why),
        Some(OwnershipEvent::RejoinRefused(other)) => {
            tracing::warn!(holder = %other, "rejoin refused: another host still serves the service address");
            publish(check);
        }
        Some(OwnershipEvent::ClaimFailed(why)) => {
            tracing::error!(error = %why, "rejoin failed: the service address could not be claimed");
            publish(check);
        }
        Some(OwnershipEvent::Rejoined) => {
            tracing::info!("rejoin: no other host serves the service address; serving it again")
        }
    }
}

/// Logs a probe that could not be made (the check counts it as silence).
fn warn_probe_failed(why: &str) {
    tracing::warn!(error = %why, "probing the service address failed: counted as silence");
}

/// Probes on a thread of its own, one request at a time. Stops when dropped (after the
/// probe under way, at most `count x wait`).
#[derive(Debug)]
struct ProbeWorker {
    /// `None` once dropping: the thread ends when its requests end.
    requests: Option<Sender<Vec<IpAddr>>>,
    results: Receiver<ProbeResult>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeWorker {
    fn start(mut probe: Box<dyn NeighbourProbe + Send>) -> std::io::Result<ProbeWorker> {
        let (requests, inbox) = channel::<Vec<IpAddr>>();
        let (outbox, results) = channel();
        let thread = std::thread::Builder::new()
            .name("cttm-ownership".into())
            .spawn(move || {
                for addresses in inbox {
                    if outbox.send(probe.probe(&addresses)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(ProbeWorker {
            requests: Some(requests),
            results,
            thread: Some(thread),
        })
    }

    /// Asks for a probe of `addresses`; false if the thread is gone.
    fn request(&self, addresses: Vec<IpAddr>) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|r| r.send(addresses).is_ok())
    }
}

impl Drop for ProbeWorker {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The check during a serving run: fed the backup's liveness, its probes carried out by a
/// [`ProbeWorker`]; says when another host answered and the agent must stop serving.
#[derive(Debug)]
pub(super) struct OwnershipWatch {
    check: OwnershipCheck,
    clock: CoreClock,
    worker: ProbeWorker,
    /// The check demoted the agent: polled no more (what follows is for after the run).
    demoted: Option<OtherHolder>,
}

impl OwnershipWatch {
    /// The failure detector's verdict on the backup now (it probes only while silent).
    pub(super) fn observe_backup(&mut self, alive: bool) {
        self.check.observe_backup(alive, self.clock.now());
    }

    /// Feeds the check the probe results that came back and carries out its commands; the
    /// other host, once the agent must stop serving.
    pub(super) fn poll(&mut self) -> Option<OtherHolder> {
        if self.demoted.is_some() {
            return self.demoted;
        }
        let now = self.clock.now();
        while let Ok(result) = self.worker.results.try_recv() {
            self.on_probe(now, result);
        }
        // While serving the check asks only for probes, then for the demotion.
        match self.check.poll(now) {
            Some(OwnershipCommand::Probe(addresses)) => self.probe(now, addresses),
            Some(OwnershipCommand::Demote(holder)) => self.demoted = Some(holder),
            _ => {}
        }
        self.demoted
    }

    /// Hands a probe of `addresses` to the worker; a worker gone is a failed probe.
    fn probe(&mut self, now: cttm_core::Instant, addresses: Vec<IpAddr>) {
        if !self.worker.request(addresses) {
            self.on_probe(now, ProbeResult::Failed("the probe thread stopped".into()));
        }
    }

    /// Reports a probe's result; a failure is logged (an answer is, once the run ends).
    fn on_probe(&mut self, now: cttm_core::Instant, result: ProbeResult) {
        if let Some(OwnershipEvent::ProbeFailed(why)) = self.check.on_probe(now, result) {
            warn_probe_failed(&why);
        }
    }
}
