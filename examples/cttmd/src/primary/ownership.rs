//! Who serves the service address: a primary that comes back after a takeover must not
//! serve it (split brain), and a primary cut off from its backup that finds the address
//! served elsewhere (the partition healed after a takeover) must stop serving it.
//!
//! - At start, before capturing, the agent probes every service address on the service
//!   network ([`AddressProbe`]: RFC 5227 §2.1.1 ARP probes, RFC 4862 §5.4.2 duplicate
//!   address detection). Linux does not loop a probe back to its sender, and a host answers
//!   only for addresses it holds, so an answer means *another* host holds the address.
//! - A primary that found the address served elsewhere becomes **non-serving**: it removes
//!   the service addresses from its interface (its old sockets can then send nothing: Linux
//!   routes no packet from a source address that is not local, `ip_route_output_key`
//!   `-ENETUNREACH`, so the returning host cannot disturb the connections the backup
//!   continues), installs no queue rule, captures nothing, and waits for the operator's
//!   `cttmd rejoin`. A rejoin probes again: still answered, it is refused; silent, the agent
//!   claims the addresses (netlink + announcements) and runs as primary.
//! - While it runs as primary and its backup is silent, [`OwnershipWatch`] probes the
//!   addresses once a second on a thread of its own (a check takes `count x wait`, which
//!   must not stall the capture loop); an answer demotes the agent to non-serving.
//!
//! `ProbeOptions::count == 0` turns all of this off (nothing is probed).

use crate::observe::{AgentRole, AgentView, CommitState, Observer};
use crate::options::{CommitMode, PrimaryOptions};
use cttm_restore::takeover::NetlinkTakeover;
use cttm_restore::takeover::probe::{AddressProbe, ProbeConfig, ProbeOutcome, mac_text};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a running primary whose backup is silent probes its addresses.
const WATCH_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the watch thread and the non-serving wait look at their flags.
const FLAG_POLL: Duration = Duration::from_millis(20);

/// Another host answered for a service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OtherHolder {
    /// The service address it answered for.
    pub(super) address: IpAddr,
    /// Its MAC address.
    pub(super) mac: [u8; 6],
}

impl std::fmt::Display for OtherHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is served by {}", self.address, mac_text(self.mac))
    }
}

/// The service addresses of one agent and how to probe, release and claim them.
#[derive(Debug)]
pub(super) struct Ownership {
    interface: String,
    addresses: Vec<IpAddr>,
    config: Option<ProbeConfig>,
    probe: Option<AddressProbe>,
    /// Prefix lengths the addresses had when released, to claim them back the same.
    prefixes: HashMap<IpAddr, u8>,
    mode: CommitMode,
}

impl Ownership {
    /// The ownership checks of `options`, with the probe socket opened in the calling
    /// thread's network namespace. A probe that cannot be opened is logged and the agent
    /// runs without probing (the backup's own probe still prevents a double claim).
    pub(super) fn open(options: &PrimaryOptions) -> Ownership {
        let mut addresses: Vec<IpAddr> = options.services.iter().map(|s| s.ip()).collect();
        addresses.sort();
        addresses.dedup();
        let config = (options.probe.count > 0).then_some(ProbeConfig {
            count: options.probe.count,
            wait: options.probe.wait,
        });
        let probe = config.and_then(|_| match AddressProbe::open(&options.interface) {
            Ok(probe) => Some(probe),
            Err(e) => {
                tracing::error!(error = %e, "cannot probe the service address: running without the check that no other host serves it");
                None
            }
        });
        Ownership {
            interface: options.interface.clone(),
            addresses,
            config,
            probe,
            prefixes: HashMap::new(),
            mode: options.mode,
        }
    }

    /// Probes every service address once (`count` probes each); the first other host that
    /// answers, if any. A failed probe is logged and counts as silence.
    pub(super) fn find_other_holder(&mut self) -> Option<OtherHolder> {
        let (probe, config) = (self.probe.as_mut()?, self.config?);
        probe_all(probe, &self.addresses, config)
    }

    /// A watch probing the addresses in the background while the backup is silent
    /// (`None` when probing is off). Opens its own probe socket in the calling thread's
    /// network namespace.
    pub(super) fn watch(&self) -> Option<OwnershipWatch> {
        let config = self.config?;
        self.probe.as_ref()?;
        match AddressProbe::open(&self.interface) {
            Ok(probe) => Some(OwnershipWatch::start(probe, self.addresses.clone(), config)),
            Err(e) => {
                tracing::error!(error = %e, "cannot probe the service address while the backup is silent");
                None
            }
        }
    }

    /// Removes every service address from the interface (those it carries), remembering
    /// their prefix lengths.
    pub(super) fn release_all(&mut self) {
        let mut takeover = match NetlinkTakeover::open(&self.interface) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot remove the service address from the interface: remove it by hand (`ip addr del`)");
                return;
            }
        };
        let present = interface_prefixes(&self.interface);
        for address in &self.addresses {
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

    /// Adds every service address to the interface and announces it (a rejoin). An
    /// address never seen here gets the full prefix length (/32, /128): it is reachable
    /// through the interface's own subnet route.
    pub(super) fn claim_all(&mut self) -> Result<(), String> {
        let mut takeover = NetlinkTakeover::open(&self.interface).map_err(|e| e.to_string())?;
        for address in &self.addresses {
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

    /// Non-serving: publishes the role and the alert, then waits until `stop` (false) or
    /// until the operator's rejoin finds the addresses free and claims them (true).
    pub(super) fn wait_for_rejoin(
        &mut self,
        holder: OtherHolder,
        stop: &AtomicBool,
        observer: &Observer,
    ) -> bool {
        let mode = match self.mode {
            CommitMode::Sync => CommitState::Sync,
            CommitMode::Async => CommitState::Async,
        };
        let waiting = format!("the service address {holder}: not serving until `cttmd rejoin`");
        tracing::warn!(%holder, "another host serves the service address: this agent does not serve it until `cttmd rejoin`");
        let publish = |alerts: Vec<String>| {
            let mut view = AgentView::new(AgentRole::NonServing, mode);
            view.alerts = alerts;
            observer.publish(view);
        };
        publish(vec![waiting.clone()]);
        while !stop.load(Ordering::SeqCst) {
            if !observer.take_rejoin_request() {
                std::thread::sleep(FLAG_POLL);
                continue;
            }
            match self.find_other_holder() {
                Some(other) => {
                    tracing::warn!(holder = %other, "rejoin refused: another host still serves the service address");
                    publish(vec![
                        waiting.clone(),
                        format!(
                            "rejoin refused: the service address {other}; stop the agent there first"
                        ),
                    ]);
                }
                None => match self.claim_all() {
                    Ok(()) => {
                        tracing::info!(
                            "rejoin: no other host serves the service address; serving it again"
                        );
                        return true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "rejoin failed: the service address could not be claimed");
                        publish(vec![
                            waiting.clone(),
                            format!("rejoin failed: claiming the service address: {e}"),
                        ]);
                    }
                },
            }
        }
        false
    }
}

/// Probes each of `addresses`; the first answer.
fn probe_all(
    probe: &mut AddressProbe,
    addresses: &[IpAddr],
    config: ProbeConfig,
) -> Option<OtherHolder> {
    for &address in addresses {
        match probe.probe(address, config) {
            Ok(ProbeOutcome::Answered { mac }) => return Some(OtherHolder { address, mac }),
            Ok(ProbeOutcome::Silent) => {}
            Err(e) => tracing::warn!(%address, error = %e, "probing the service address failed"),
        }
    }
    None
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

#[derive(Debug, Default)]
struct WatchShared {
    stop: AtomicBool,
    backup_silent: AtomicBool,
    holder: Mutex<Option<OtherHolder>>,
}

/// Probes the service addresses once a second, on its own thread, while the agent says the
/// backup is silent; remembers the first other host that answered. Stops when dropped.
#[derive(Debug)]
pub(super) struct OwnershipWatch {
    shared: Arc<WatchShared>,
    thread: Option<JoinHandle<()>>,
}

impl OwnershipWatch {
    fn start(mut probe: AddressProbe, addresses: Vec<IpAddr>, config: ProbeConfig) -> Self {
        let shared = Arc::new(WatchShared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cttm-ownership".into())
                .spawn(move || {
                    let mut last: Option<Instant> = None;
                    while !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(FLAG_POLL);
                        let due = last.is_none_or(|t| t.elapsed() >= WATCH_PROBE_INTERVAL);
                        if !due || !shared.backup_silent.load(Ordering::SeqCst) {
                            continue;
                        }
                        last = Some(Instant::now());
                        if let Some(holder) = probe_all(&mut probe, &addresses, config) {
                            *shared.holder.lock() = Some(holder);
                            return;
                        }
                    }
                })
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the service address watch");
                None
            }
        };
        OwnershipWatch { shared, thread }
    }

    /// Tells the watch whether the backup is silent now (it probes only then).
    pub(super) fn set_backup_silent(&self, silent: bool) {
        self.shared.backup_silent.store(silent, Ordering::SeqCst);
    }

    /// Another host answered for a service address.
    pub(super) fn other_holder(&self) -> Option<OtherHolder> {
        *self.shared.holder.lock()
    }
}

impl Drop for OwnershipWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
