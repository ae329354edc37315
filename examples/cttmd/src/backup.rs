//! The backup agent of `cttmd`: the library's backup driver
//! ([`cttm_restore::backup::BackupAgent`]) built from the resolved options, with the
//! authenticated TCP replication link (`cttm-replicate`), the ARP/NDP probe and the fencing
//! command (`cttm-restore`), the standby daemon over TCP and an AF_PACKET capture for the
//! watch after takeover (`cttm-capture`).

use crate::options::BackupOptions;
use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource};
use cttm_core::endpoint::{ServiceEndpoint, ServiceSet};
use cttm_core::io::capture::CaptureSource;
use cttm_core::observe::{AgentRole, AgentView, CommitState, Observer};
use cttm_replicate::{BackupConfig, BackupService, PreSharedKey, TransportError};
use cttm_restore::backup::{BackupAgent, BackupBuilder};
pub use cttm_restore::backup::{BackupExit, ResetReason};
use cttm_restore::fence::CommandFence;
use cttm_restore::standby::TcpStandby;
use cttm_restore::takeover::probe::{AddressProbe, ProbeCheck, ProbeConfig, ProbeError};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use thiserror::Error;

/// Why the backup agent could not run.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The replication listener could not be opened.
    #[error(
        "cannot listen for the primary on {listen}: {source}; check `listen` (a local address and a free port)"
    )]
    Listen {
        /// The configured address.
        listen: std::net::SocketAddr,
        /// Why.
        #[source]
        source: TransportError,
    },
    /// The probe of the service addresses could not be opened on the takeover interface.
    #[error(
        "cannot probe the service addresses: {0}; check `interface`, or set `probe_count = 0` to take over without probing (split brain is then possible)"
    )]
    Probe(#[from] ProbeError),
    /// The agent stopped with an error.
    #[error(transparent)]
    Agent(#[from] cttm_restore::backup::BackupError),
}

/// Runs the backup agent until `stop` is set (see [`cttm_restore::backup`]).
pub fn run_backup(
    options: BackupOptions,
    stop: Arc<AtomicBool>,
) -> Result<BackupExit, BackupError> {
    let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
    run_backup_observed(options, stop, observer)
}

/// [`run_backup`], publishing what it does (role, connections, counters, alerts) to
/// `observer`.
pub fn run_backup_observed(
    options: BackupOptions,
    stop: Arc<AtomicBool>,
    observer: Observer,
) -> Result<BackupExit, BackupError> {
    let agent = backup_agent(&options)?.observer(observer).build()?;
    tracing::info!(listen = %options.listen, standby = %options.standby, "backup agent configured");
    Ok(agent.run(&stop)?)
}

/// The agent of `options`, with every backend opened (in the calling thread's network
/// namespace).
fn backup_agent(options: &BackupOptions) -> Result<BackupBuilder, BackupError> {
    let services = ServiceSet::new(options.services.iter().copied().map(ServiceEndpoint::new));
    let mut builder = BackupAgent::builder(options.services.clone(), options.interface.clone())
        .service_prefix_len(options.service_prefix_len)
        .announce_count(options.announce_count)
        .standby(TcpStandby::new(options.standby))
        .watch_capture(watch_capture(options.interface.clone(), services.clone()));
    if options.probe.count > 0 {
        let config = ProbeConfig {
            count: options.probe.count,
            wait: options.probe.wait,
        };
        builder = builder.probe(ProbeCheck::new(
            AddressProbe::open(&options.interface)?,
            config,
        ));
    }
    if let Some(fence) = &options.fence {
        builder = builder.fence(CommandFence {
            command: fence.command.clone(),
            timeout: fence.timeout,
        });
    }
    Ok(builder.link(replication_link(options, services)?))
}

/// Listens for the primary and starts applying what it replicates.
fn replication_link(
    options: &BackupOptions,
    services: ServiceSet,
) -> Result<BackupService, BackupError> {
    let config = BackupConfig {
        heartbeat_interval: options.heartbeat.interval,
        failure_misses: options.heartbeat.misses.max(1),
        ..BackupConfig::default()
    };
    BackupService::listen_tcp(
        options.listen,
        PreSharedKey::new(options.key),
        services,
        config,
    )
    .map_err(|source| BackupError::Listen {
        listen: options.listen,
        source,
    })
}

/// Opens, at the takeover, an AF_PACKET capture of the services' segments on `interface`.
fn watch_capture(
    interface: String,
    services: ServiceSet,
) -> impl FnMut() -> Result<Box<dyn CaptureSource + Send>, cttm_core::io::capture::CaptureError>
+ Send
+ 'static {
    move || {
        AfPacketSource::open(AfPacketConfig::new(&interface, services.clone()))
            .map(|s| Box::new(s) as Box<dyn CaptureSource + Send>)
    }
}
