//! The primary agent of `cttmd`: the library's primary driver
//! ([`cttm_capture::primary::PrimaryAgent`]: capture, track, replicate, output commit,
//! ownership) built from the resolved options, with the authenticated TCP replication link
//! (`cttm-replicate`) and the ARP/NDP probe and netlink address takeover (`cttm-restore`).

use crate::options::PrimaryOptions;
pub use cttm_capture::primary::{
    ConnectionStatus, HoldTimes, PrimaryError, PrimaryExit, PrimaryMonitor, PrimaryStatus,
};
use cttm_capture::primary::{PrimaryAgent, PrimaryBuilder};
use cttm_core::ReplicaConfig;
use cttm_core::endpoint::{ServiceEndpoint, ServiceSet};
use cttm_core::io::link::PrimaryLink;
use cttm_core::io::probe::NeighbourProbe;
use cttm_replicate::{PreSharedKey, PrimaryConfig, PrimaryService};
use cttm_restore::takeover::NetlinkTakeover;
use cttm_restore::takeover::probe::{AddressProbe, ProbeCheck, ProbeConfig};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Runs the primary agent until `stop` is set. The capture (and, in sync mode, the queue
/// rules) is set up in the calling thread's network namespace.
pub fn run_primary(
    options: PrimaryOptions,
    stop: Arc<AtomicBool>,
) -> Result<PrimaryExit, PrimaryError> {
    run_primary_monitored(options, stop, PrimaryMonitor::new())
}

/// [`run_primary`], publishing its status to `monitor` while it runs.
pub fn run_primary_monitored(
    options: PrimaryOptions,
    stop: Arc<AtomicBool>,
    monitor: PrimaryMonitor,
) -> Result<PrimaryExit, PrimaryError> {
    tracing::info!(backup = %options.backup, "primary agent configured");
    primary_agent(&options).monitor(monitor).build()?.run(&stop)
}

/// The agent of `options`: the link started per serving run, the probe opened on the
/// service interface (unless `probe.count` is 0), the address takeover for stepping down and
/// rejoining.
fn primary_agent(options: &PrimaryOptions) -> PrimaryBuilder {
    let mut builder = PrimaryAgent::builder(options.services.clone(), options.interface.clone())
        .mode(options.mode)
        .queue(options.queue)
        .degrade_after(options.degrade_after)
        .link(replication_link(options));
    if let Some(path) = &options.capture_file {
        builder = builder.capture_file(path.clone());
    }
    if options.probe.count > 0 {
        let interface = options.interface.clone();
        let config = ProbeConfig {
            count: options.probe.count,
            wait: options.probe.wait,
        };
        builder = builder.probe(move || {
            AddressProbe::open(&interface)
                .map(|p| Box::new(ProbeCheck::new(p, config)) as Box<dyn NeighbourProbe + Send>)
                .map_err(|e| e.to_string())
        });
    }
    match NetlinkTakeover::open(&options.interface) {
        Ok(takeover) => builder.address_takeover(takeover),
        Err(e) => {
            tracing::error!(error = %e, "cannot manage the service address on the interface: stepping down after a takeover elsewhere will need `ip addr del`");
            builder
        }
    }
}

/// Starts replication to the backup over the authenticated TCP link, its sockets carrying
/// the mark the capture gives.
fn replication_link(
    options: &PrimaryOptions,
) -> impl FnMut(u32) -> Box<dyn PrimaryLink> + Send + use<> {
    let (backup, key) = (options.backup, options.key);
    let services = ServiceSet::new(options.services.iter().copied().map(ServiceEndpoint::new));
    let config = PrimaryConfig {
        max_retained_bytes: options.retention_limit,
        heartbeat_interval: options.heartbeat.interval,
        failure_misses: options.heartbeat.misses,
        // The primary's copy must keep client bytes as the backup's replica does.
        client_retention: ReplicaConfig::default().client_retention,
        ..PrimaryConfig::default()
    };
    move |mark| {
        Box::new(PrimaryService::connect_tcp(
            backup,
            PreSharedKey::new(key),
            services.clone(),
            config,
            Some(mark),
        ))
    }
}
