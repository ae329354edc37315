//! The primary agent: captures the service's traffic, tracks every connection, replicates the
//! events to the backup, and (sync mode) commits output only once the backup holds it.
//!
//! The service daemon on the primary is untouched: the agent only watches its segments and,
//! in sync mode, delays the outgoing ones.
//!
//! - **Sync mode** ([`CommitMode::Sync`], the default): one NFQUEUE queue receives the
//!   service's incoming segments (INPUT, accepted right after tracking) and its outgoing
//!   segments (OUTPUT, held). Each outgoing segment waits ([`cttm_core::primary::hold`],
//!   where every decision of the loop is made) in a [`cttm_core::commit::OutputCommit`]
//!   gate until the backup acknowledged every client byte the segment acknowledges and
//!   every server byte up to its end, each FIN counting as one more offset (a SYN-ACK:
//!   until the backup holds the handshake), then leaves, in order per connection, in
//!   batches. Nothing the client has seen can be unknown to the
//!   backup, the end of a stream included. When the backup is unreachable the
//!   segments stay held only for a while: once a held packet has waited longer than
//!   `degrade_after`, or the backup has been unreachable that long, the agent **degrades**
//!   ([`cttm_core::primary::degrade`]): it releases every held packet and accepts every packet at once,
//!   still shipping events, until the backup has resynchronised; then it holds again. The
//!   service never stalls because the backup is gone; the transition is logged (`error!`
//!   once), shown as mode `degraded` with an alert, and counted.
//! - **Async mode** ([`CommitMode::Async`]): AF_PACKET capture on the service interface; no
//!   segment is held. The [`PrimaryStatus`] reports, per connection, the bytes a crash now
//!   would lose (those the backup does not hold yet).
//!
//! Either way: before capturing, the agent checks that no other host serves the service
//! address, and stops serving it if another host takes it over while the backup is silent
//! (`ownership.rs`, the driver of [`cttm_core::primary::ownership`]: a returning primary
//! never serves beside the backup that took over).
//! It publishes its operator view ([`cttm_core::observe::AgentView`]) through the monitor's
//! observer every 10 ms, and can write every captured frame to a pcapng file
//! (`capture_file`). When it stops, async mode first reads what the capture still holds, so
//! the final status covers every frame that left before a crash.
//!
//! Frames the capture dropped make every open connection unsafe (never restored
//! with a hole); closed connections are forgotten on both sides after the tracker's linger
//! time; the replication link (Noise, pre-shared key, `SO_MARK` = the queue's bypass mark)
//! reconnects by itself. One log line per connection protected, unprotected or closed.

mod agent;
mod async_mode;
mod capture_file;
mod checkpoint;
mod clock;
mod error;
mod ownership;
mod status;
mod sync_mode;
mod view;

pub use checkpoint::Checkpointer;
pub use error::PrimaryError;
pub use status::{ConnectionStatus, PrimaryMonitor, PrimaryStatus};

use cttm_core::io::link::PrimaryLink;
use cttm_core::io::probe::NeighbourProbe;
use cttm_core::io::takeover::AddressTakeover;
use cttm_core::observe::ViewSubscription;
use cttm_core::primary::OtherHolder;
use ownership::{Ownership, OwnershipWatch};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Whether the primary holds its output until the backup has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Output commit: NFQUEUE holds every outgoing segment until the backup acknowledged what
    /// it reveals (degrading when the backup is gone or too slow).
    Sync,
    /// AF_PACKET capture, nothing held; the bytes a crash would lose are reported.
    Async,
}

/// How long a held packet may wait for an unreachable or slow backup before sync mode
/// degrades, by default.
pub const DEFAULT_DEGRADE_AFTER: Duration = Duration::from_secs(1);

/// What the primary agent protects and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimarySettings {
    /// The protected services (address and port).
    pub services: Vec<SocketAddr>,
    /// The interface on the service network (AF_PACKET capture in async mode).
    pub interface: String,
    /// Sync or async.
    pub mode: CommitMode,
    /// The NFQUEUE queue number (sync mode).
    pub queue: u16,
    /// How long sync mode holds for an unreachable or slow backup before it degrades.
    pub degrade_after: Duration,
    /// Write every captured frame to this pcapng file.
    pub capture_file: Option<PathBuf>,
}

/// Starts the replication link for one serving run; its sockets must carry the given mark
/// (`SO_MARK`), so the NFQUEUE rules never hold the agent's own traffic.
pub type LinkFactory = Box<dyn FnMut(u32) -> Box<dyn PrimaryLink> + Send>;

/// Opens a probe of the service addresses (in the calling thread's network namespace).
pub type ProbeFactory = Box<dyn FnMut() -> Result<Box<dyn NeighbourProbe + Send>, String> + Send>;

/// What a primary agent run did, reported when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryExit {
    /// The output-commit mode it ran in.
    pub mode: CommitMode,
    /// Segments of service connections tracked (both directions).
    pub segments: u64,
    /// Connections opened (handshake seen or picked up mid-stream).
    pub connections: u64,
    /// Outgoing packets held by output commit (sync mode).
    pub held: u64,
    /// Held packets released because the backup acknowledged what they reveal.
    pub released: u64,
    /// Held packets released without that, because their connection was reset, evicted or
    /// forgotten, or became unprotectable, or because the agent stopped.
    pub released_unprotected: u64,
    /// Packets accepted at once (incoming segments, packets of unprotected connections).
    pub passed: u64,
    /// Frames the capture reported dropped.
    pub dropped_frames: u64,
    /// Tracker events not queued for the backup because its queue was full (their
    /// connections became unprotected until resent whole).
    pub unprotected_messages: u64,
    /// How long output commit held the packets it released because the backup acknowledged
    /// them (sync mode): the cost of the hold itself, without the queue's own traversal.
    pub hold_time: HoldTimes,
    /// Times sync mode degraded because the backup was unreachable or too slow.
    pub degradations: u64,
    /// Application checkpoints shipped to the backup ([`Checkpointer`]).
    pub checkpoints: u64,
    /// Application checkpoints the primary's copy of their connection refused (their
    /// output did not continue the server stream: a write went unreported).
    pub checkpoints_refused: u64,
}

/// Distribution of the time packets spent held, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HoldTimes {
    /// Packets measured.
    pub samples: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Longest.
    pub max_us: u64,
}

impl HoldTimes {
    /// The distribution of `micros` (sorted in place).
    pub fn from_samples(micros: &mut [u64]) -> HoldTimes {
        if micros.is_empty() {
            return HoldTimes::default();
        }
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
        HoldTimes {
            samples: micros.len() as u64,
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: micros[micros.len() - 1],
        }
    }
}

impl Default for PrimaryExit {
    fn default() -> Self {
        PrimaryExit {
            mode: CommitMode::Sync,
            segments: 0,
            connections: 0,
            held: 0,
            released: 0,
            released_unprotected: 0,
            passed: 0,
            dropped_frames: 0,
            unprotected_messages: 0,
            hold_time: HoldTimes::default(),
            degradations: 0,
            checkpoints: 0,
            checkpoints_refused: 0,
        }
    }
}

/// What a serving run reports to and hears from the application.
pub(super) struct RunInputs {
    /// Where the status goes.
    pub(super) monitor: PrimaryMonitor,
    /// The application's checkpoints.
    pub(super) checkpointer: Checkpointer,
}

fn run_inputs(monitor: &PrimaryMonitor, checkpointer: &Checkpointer) -> RunInputs {
    RunInputs {
        monitor: monitor.clone(),
        checkpointer: checkpointer.clone(),
    }
}

/// How one serving run of the agent ended.
pub(super) struct RunEnd {
    /// What the run did.
    exit: PrimaryExit,
    /// Another host serves the service address: the agent must stop serving.
    demoted: Option<OtherHolder>,
    /// The ownership watch the run was given, back.
    watch: Option<OwnershipWatch>,
}

/// A primary agent, ready to run: see [`PrimaryAgent::builder`].
pub struct PrimaryAgent {
    settings: PrimarySettings,
    link: LinkFactory,
    probe: Option<ProbeFactory>,
    takeover: Option<Box<dyn AddressTakeover + Send>>,
    monitor: PrimaryMonitor,
    checkpointer: Checkpointer,
}

impl std::fmt::Debug for PrimaryAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryAgent")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Builds a [`PrimaryAgent`]. The link is required; without a probe the agent does not check
/// that no other host serves the address (before serving, and while its backup is silent);
/// without an address takeover it cannot step down from, or rejoin, the service address.
pub struct PrimaryBuilder {
    settings: PrimarySettings,
    link: Option<LinkFactory>,
    probe: Option<ProbeFactory>,
    takeover: Option<Box<dyn AddressTakeover + Send>>,
    monitor: Option<PrimaryMonitor>,
}

impl PrimaryAgent {
    /// A builder for an agent protecting `services` on `interface`: sync mode, NFQUEUE queue
    /// 0, degrading after [`DEFAULT_DEGRADE_AFTER`].
    pub fn builder(
        services: impl IntoIterator<Item = SocketAddr>,
        interface: impl Into<String>,
    ) -> PrimaryBuilder {
        PrimaryBuilder {
            settings: PrimarySettings {
                services: services.into_iter().collect(),
                interface: interface.into(),
                mode: CommitMode::Sync,
                queue: 0,
                degrade_after: DEFAULT_DEGRADE_AFTER,
                capture_file: None,
            },
            link: None,
            probe: None,
            takeover: None,
            monitor: None,
        }
    }

    /// The agent's status and operator view, updated as it runs.
    pub fn monitor(&self) -> &PrimaryMonitor {
        &self.monitor
    }

    /// Where the application that embeds the agent reports its checkpoints (a daemon that
    /// is not deterministic, [`cttm_core::checkpoint`]).
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// Runs the agent in the calling thread until `stop` is set. The capture (and, in sync
    /// mode, the queue rules) is set up in the calling thread's network namespace.
    pub fn run(self, stop: &AtomicBool) -> Result<PrimaryExit, PrimaryError> {
        let PrimaryAgent {
            settings,
            mut link,
            probe,
            takeover,
            monitor,
            checkpointer,
        } = self;
        tracing::info!(
            mode = ?settings.mode,
            services = ?settings.services,
            "primary agent starting"
        );
        let mut ownership = Ownership::open(&settings, probe, takeover);
        let mut exit = PrimaryExit {
            mode: settings.mode,
            ..PrimaryExit::default()
        };
        // Before capturing: a primary that comes back after a takeover must not serve.
        while ownership.until_serving(stop, monitor.observer()) {
            let watch = ownership.watch();
            let run = match settings.mode {
                CommitMode::Sync => sync_mode::run(
                    &settings,
                    &mut link,
                    stop,
                    run_inputs(&monitor, &checkpointer),
                    watch,
                ),
                CommitMode::Async => async_mode::run(
                    &settings,
                    &mut link,
                    stop,
                    run_inputs(&monitor, &checkpointer),
                    watch,
                ),
            }?;
            exit = run.exit;
            ownership.end_watch(run.watch);
            match run.demoted {
                Some(holder) => {
                    tracing::error!(%holder, "another host serves the service address while the backup is silent (a partition healed after a takeover): this agent stops serving");
                }
                None => break,
            }
        }
        tracing::info!(
            segments = exit.segments,
            connections = exit.connections,
            held = exit.held,
            released = exit.released,
            "primary agent stopped"
        );
        Ok(exit)
    }

    /// Runs the agent on a thread of its own (which inherits the calling thread's network
    /// namespace).
    pub fn spawn(self) -> PrimaryHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let monitor = self.monitor.clone();
        let checkpointer = self.checkpointer.clone();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || self.run(&stop))
        };
        PrimaryHandle {
            stop,
            monitor,
            checkpointer,
            thread,
        }
    }
}

impl PrimaryBuilder {
    /// The replication link, started for each serving run with the mark its sockets carry
    /// (`cttm_replicate::PrimaryService::connect_tcp`, or any [`PrimaryLink`]).
    pub fn link(mut self, link: impl FnMut(u32) -> Box<dyn PrimaryLink> + Send + 'static) -> Self {
        self.link = Some(Box::new(link));
        self
    }

    /// Sync or async mode.
    pub fn mode(mut self, mode: CommitMode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// The NFQUEUE queue number (sync mode).
    pub fn queue(mut self, queue: u16) -> Self {
        self.settings.queue = queue;
        self
    }

    /// How long sync mode holds for an unreachable or slow backup before it degrades.
    pub fn degrade_after(mut self, degrade_after: Duration) -> Self {
        self.settings.degrade_after = degrade_after;
        self
    }

    /// Write every captured frame to a pcapng file.
    pub fn capture_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.capture_file = Some(path.into());
        self
    }

    /// How to open a probe of the service addresses (`cttm_restore`'s `ProbeCheck`).
    pub fn probe(
        mut self,
        open: impl FnMut() -> Result<Box<dyn NeighbourProbe + Send>, String> + Send + 'static,
    ) -> Self {
        self.probe = Some(Box::new(open));
        self
    }

    /// How the agent removes and claims the service addresses (`cttm_restore`'s
    /// `NetlinkTakeover`).
    pub fn address_takeover(mut self, takeover: impl AddressTakeover + Send + 'static) -> Self {
        self.takeover = Some(Box::new(takeover));
        self
    }

    /// Publish the status to `monitor` (default: a new one, see [`PrimaryAgent::monitor`]).
    pub fn monitor(mut self, monitor: PrimaryMonitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// The agent, once the settings hold together.
    pub fn build(self) -> Result<PrimaryAgent, PrimaryError> {
        if self.settings.services.is_empty() {
            return Err(PrimaryError::NoServices);
        }
        Ok(PrimaryAgent {
            link: self
                .link
                .ok_or(PrimaryError::Missing("a replication link"))?,
            probe: self.probe,
            takeover: self.takeover,
            monitor: self.monitor.unwrap_or_default(),
            checkpointer: Checkpointer::default(),
            settings: self.settings,
        })
    }
}

/// A primary agent running on its own thread ([`PrimaryAgent::spawn`]).
#[derive(Debug)]
pub struct PrimaryHandle {
    stop: Arc<AtomicBool>,
    monitor: PrimaryMonitor,
    checkpointer: Checkpointer,
    thread: std::thread::JoinHandle<Result<PrimaryExit, PrimaryError>>,
}

impl PrimaryHandle {
    /// What the agent reports now (`None` before its first report).
    pub fn status(&self) -> Option<PrimaryStatus> {
        self.monitor.status()
    }

    /// Where the application reports its checkpoints ([`PrimaryAgent::checkpointer`]).
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// A subscription to the agent's operator view.
    pub fn subscribe(&self) -> ViewSubscription {
        self.monitor.observer().subscribe()
    }

    /// Tells the agent to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the agent and waits for it.
    pub fn join(self) -> Result<PrimaryExit, PrimaryError> {
        self.stop();
        self.thread.join().unwrap_or(Err(PrimaryError::Panicked))
    }
}

#[cfg(test)]
mod hold_time_tests {
    use super::HoldTimes;

    #[test]
    fn percentiles_of_hold_samples() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let h = HoldTimes::from_samples(&mut samples);
        assert_eq!(
            (h.samples, h.p50_us, h.p99_us, h.max_us),
            (100, 51, 99, 100)
        );
        assert_eq!(HoldTimes::from_samples(&mut []), HoldTimes::default());
    }
}
