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

use crate::clock::CoreClock;
use crate::observe::{AgentRole, AgentView, CommitState, Observer};
use crate::options::{CommitMode, PrimaryOptions};
use cttm_core::backup::ProbeResult;
use cttm_core::primary::ownership::{
    OtherHolder, OwnershipCheck, OwnershipCommand, OwnershipConfig, OwnershipEvent,
};
use cttm_restore::takeover::NetlinkTakeover;
use cttm_restore::takeover::probe::{AddressProbe, ProbeConfig, ProbeOutcome};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the non-serving wait looks for a rejoin request and the stop flag.
const FLAG_POLL: Duration = Duration::from_millis(20);

/// The service addresses on the interface: probing, removing and claiming them.
#[derive(Debug)]
struct ServiceAddresses {
    interface: String,
    /// `None`: probing is off, or the probe could not be opened.
    probe: Option<AddressProbe>,
    config: ProbeConfig,
    /// Prefix lengths the addresses had when released, to claim them back the same.
    prefixes: HashMap<IpAddr, u8>,
}

impl ServiceAddresses {
    /// Probes `addresses` (silence when probing is off).
    fn probe(&mut self, addresses: &[IpAddr]) -> ProbeResult {
        match &mut self.probe {
            Some(probe) => probe_all(probe, addresses, self.config),
            None => ProbeResult::Silent,
        }
    }

    /// Removes those of `addresses` the interface carries, remembering their prefix lengths.
    fn release(&mut self, addresses: &[IpAddr]) {
        let mut takeover = match NetlinkTakeover::open(&self.interface) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot remove the service address from the interface: remove it by hand (`ip addr del`)");
                return;
            }
        };
        let present = interface_prefixes(&self.interface);
        for address in addresses {
            let Some(&prefix_len) = present.get(address) else {
                continue;
            };
            self.prefixes.insert(*address, prefix_len);
            match takeover.release_address(*address, prefix_len) {
                Ok(outcome) => {
                    tracing::warn!(%address, prefix_len, ?outcome, interface = %self.interface, "service address removed: another host serves it")
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
        let mut takeover = NetlinkTakeover::open(&self.interface).map_err(|e| e.to_string())?;
        for address in addresses {
            let full = if address.is_ipv4() { 32 } else { 128 };
            let prefix_len = self.prefixes.get(address).copied().unwrap_or(full);
            takeover
                .claim_address(*address, prefix_len)
                .map_err(|e| e.to_string())?;
            takeover
                .announce_address(*address)
                .map_err(|e| e.to_string())?;
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
    /// The ownership check of `options`, with the probe socket opened in the calling
    /// thread's network namespace. A probe that cannot be opened is logged and the agent
    /// runs without probing (the backup's own probe still prevents a double claim).
    pub(super) fn open(options: &PrimaryOptions) -> Ownership {
        let mut addresses: Vec<IpAddr> = options.services.iter().map(|s| s.ip()).collect();
        addresses.sort();
        addresses.dedup();
        let probe = (options.probe.count > 0)
            .then(|| AddressProbe::open(&options.interface))
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
                interface: options.interface.clone(),
                probe,
                config: ProbeConfig {
                    count: options.probe.count,
                    wait: options.probe.wait,
                },
                prefixes: HashMap::new(),
            },
            mode: options.mode,
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
        let worker = AddressProbe::open(&self.addresses.interface)
            .map_err(|e| e.to_string())
            .and_then(|probe| {
                ProbeWorker::start(probe, self.addresses.config).map_err(|e| e.to_string())
            });
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

/// Probes each of `addresses`: the first answer, else the first failure, else silence. A
/// failure does not end the probe: another address may still answer.
fn probe_all(probe: &mut AddressProbe, addresses: &[IpAddr], config: ProbeConfig) -> ProbeResult {
    let mut failed = None;
    for &address in addresses {
        match probe.probe(address, config) {
            Ok(ProbeOutcome::Answered { mac }) => return ProbeResult::Answered { address, mac },
            Ok(ProbeOutcome::Silent) => {}
            Err(e) => {
                failed.get_or_insert_with(|| format!("{address}: {e}"));
            }
        }
    }
    failed.map_or(ProbeResult::Silent, ProbeResult::Failed)
}

/// The addresses `interface` carries in the calling thread's network namespace, with their
/// prefix lengths.
fn interface_prefixes(interface: &str) -> HashMap<IpAddr, u8> {
    let mut found = HashMap::new();
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return found;
    };
    for a in addresses.filter(|a| a.interface_name == interface) {
        let (Some(address), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        if let (Some(v4), Some(m)) = (address.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let bits = u32::from(m.ip()).count_ones() as u8;
            found.insert(IpAddr::V4(v4.ip()), bits);
        } else if let (Some(v6), Some(m)) = (address.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let bits = u128::from(m.ip()).count_ones() as u8;
            found.insert(IpAddr::V6(v6.ip()), bits);
        }
    }
    found
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
    fn start(mut probe: AddressProbe, config: ProbeConfig) -> std::io::Result<ProbeWorker> {
        let (requests, inbox) = channel::<Vec<IpAddr>>();
        let (outbox, results) = channel();
        let thread = std::thread::Builder::new()
            .name("cttm-ownership".into())
            .spawn(move || {
                for addresses in inbox {
                    if outbox
                        .send(probe_all(&mut probe, &addresses, config))
                        .is_err()
                    {
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
