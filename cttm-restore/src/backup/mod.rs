//! The backup host's driver: runs the core's backup machines
//! ([`cttm_core::backup`]: guard, shadow comparison, takeover plan, splice, watch) over real
//! backends. It keeps a replica of every protected connection (the link applies what the
//! primary replicates), runs a shadow session per connection on the standby daemon, watches
//! the primary's liveness, and when the primary is declared dead makes sure it no longer
//! serves (the service addresses answer no probe, the fencing command succeeded; otherwise it
//! refuses, keeps protecting and checks again every second) and takes over: claims the
//! service addresses, restores every connection that can be continued with `TCP_REPAIR` and
//! splices it to its shadow session, resets the others at once, announces the addresses, and
//! keeps serving the spliced connections. From before the claim until the last restore a
//! network lock drops the clients' segments (`lock`); meanwhile each client's answer to its
//! restored socket's window probe (seen by a capture) shows which server bytes it lacks, and
//! the socket is re-seated so they go out at once as new data.
//!
//! Embed it with [`BackupAgent::builder`]: the link (`cttm-replicate`'s `BackupService`),
//! the standby daemon, the probe, the fence and the capture for the watch come in as the
//! core's trait objects ([`cttm_core::io`]).
//!
//! | module | concern |
//! |---|---|
//! | `shadow` | the standby sockets of the shadow sessions |
//! | `lock` | the network lock: client segments dropped while the connections are restored |
//! | `takeover` | claim, restore, reset, announce |
//! | `resume` | checkpointed connections restored at their checkpoint, handed to the application |
//! | `splice` | restored socket ↔ shadow session after takeover; re-seating a restored socket |
//! | `watch` | after takeover: the capture of the clients' segments, the resets |
//! | `guard` | the probe and the fence carried out for the takeover guard |
//! | `view` | what the agent publishes to its observer (`cttmd status`, metrics) |
//!
//! The agent runs in the calling thread (or the one [`BackupAgent::spawn`] starts), in that
//! thread's network namespace: the standby connections, the restored sockets and the address
//! changes all happen there.

mod guard;
mod lock;
mod resume;
mod shadow;
mod splice;
mod takeover;
mod view;
mod watch;

use crate::takeover::{AnnounceConfig, NetlinkTakeover, OpenError};
use cttm_core::backup::Liveness;
use cttm_core::backup::takeover::{TakeoverPlan, TakeoverStep, connections_to_take_over};
use cttm_core::endpoint::ConnectionId;
use cttm_core::io::capture::{CaptureError, CaptureSource};
use cttm_core::io::fence::Fence;
use cttm_core::io::link::{BackupLink, ReplicaAccess, ReplicaSubscription};
use cttm_core::io::probe::NeighbourProbe;
use cttm_core::io::standby::StandbyConnector;
use cttm_core::observe::{AgentRole, AgentView, CommitState, Observer, ViewSubscription};
use cttm_core::snapshot::ConnectionSnapshot;
use cttm_core::time::MonotonicOrigin;
use guard::{Guard, Verdict};
use shadow::ShadowSet;
use splice::{SpliceEnd, SpliceSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use takeover::Outcome;
use thiserror::Error;
use view::{BackupView, LinkState};

/// Changes queued for the shadow sessions before the replication thread starts dropping
/// them (then every connection becomes unprotected).
const SUBSCRIPTION_CAPACITY: usize = 1 << 16;
/// How long one round of the protect loop waits for a standby socket.
const PROTECT_POLL: Duration = Duration::from_millis(2);
/// How long one round of the serve loop waits for a spliced socket.
const SERVE_POLL: Duration = Duration::from_millis(50);
/// Changes applied to the shadows per round at most (so sockets are served in between).
const EVENTS_PER_ROUND: usize = 4096;
/// Time between frames of one announcement.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(50);
/// How long after takeover the clients' segments are watched for connections the backup
/// fell behind on (async mode).
const WATCH_FOR: Duration = Duration::from_secs(30);
/// How long a client may stay ahead of a restored connection before it is reset: longer
/// than the client's retransmission timeout, which fills holes that are only in flight.
const AHEAD_GRACE: Duration = Duration::from_secs(3);
/// How long one round of the serve loop waits while the watch lasts.
const WATCH_POLL: Duration = Duration::from_millis(10);
/// When, after the first announcement, every restored socket probes its client again (the
/// probe sent at restore went out before the neighbours learned the address moved, so the
/// answer went to the dead primary).
const PROBE_DELAY: Duration = Duration::from_millis(20);
/// How long the takeover waits, under the network lock, for the clients' answers to the
/// restored sockets' window probes (a round trip on the service network).
const ANSWER_WAIT: Duration = Duration::from_millis(50);
/// How often replication link errors and reports are logged.
const REPORT_INTERVAL: Duration = Duration::from_millis(500);

pub use cttm_core::backup::takeover::ResetReason;
pub use resume::{ResumeHandler, ResumedConnection};

/// What a backup run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupExit {
    /// How long the takeover took (from the verdict to the first announcement: shadow
    /// sessions drained, addresses claimed, connections restored or reset), if it happened.
    pub takeover: Option<Duration>,
    /// Connections restored and spliced to their shadow sessions.
    pub restored: Vec<ConnectionId>,
    /// Checkpointed connections restored at their last checkpoint and handed to the
    /// application ([`BackupBuilder::on_resume`]).
    pub resumed: Vec<ConnectionId>,
    /// Server bytes produced after the last checkpoint of a resumed connection and never
    /// released, discarded at takeover (all connections together).
    pub discarded_bytes: u64,
    /// Connections ended with a reset at takeover, with the reason.
    pub reset: Vec<(ConnectionId, ResetReason)>,
    /// Connections whose standby output differed from the primary's, with the first
    /// differing server offset (before or after the takeover).
    pub diverged: Vec<(ConnectionId, u64)>,
    /// Spliced connections that ended after the takeover, and how (`None`: closed normally;
    /// `Some(reason)`: ended abruptly).
    pub ended: Vec<(ConnectionId, Option<String>)>,
    /// Connections still spliced when the agent stopped.
    pub still_spliced: usize,
    /// Restored connections whose client had never received the SYN-ACK (it sent its SYN
    /// again): withdrawn silently, so that its next SYN opened them afresh on the standby
    /// daemon (they are no longer in `restored`).
    pub handshake_restarted: Vec<ConnectionId>,
}

/// Why the backup agent could not run.
#[derive(Debug, Error)]
pub enum BackupError {
    /// No service endpoint is configured.
    #[error("no service configured: set `services` (address:port of each protected service)")]
    NoServices,
    /// The service prefix length is too long for a service address.
    #[error(
        "the service prefix length /{prefix_len} does not fit {address}: set `service_prefix_len` to at most 32 (IPv4) or 128 (IPv6)"
    )]
    PrefixLength {
        /// A service address.
        address: IpAddr,
        /// The configured prefix length.
        prefix_len: u8,
    },
    /// The takeover interface could not be opened.
    #[error("cannot prepare the takeover: {0}; check `interface`")]
    Interface(#[from] OpenError),
    /// A required backend was not given to the builder.
    #[error("the backup agent needs {0}: give it to the builder")]
    Missing(&'static str),
    /// The agent's thread panicked (a bug: please report it with the log).
    #[error("the backup agent's thread panicked")]
    Panicked,
    /// The takeover could not complete (claiming a service address failed); the network
    /// lock was released and no connection was restored.
    #[error("the takeover failed: {0}; check the interface and the service addresses")]
    Takeover(String),
    /// Waiting on the shadow or spliced sockets failed.
    #[error(
        "poll(2) on the shadow and spliced sockets failed: {0}; check the open file limit (`ulimit -n`)"
    )]
    Poll(#[from] std::io::Error),
}

/// The capture the watch after takeover reads, opened at the takeover (on the service
/// interface, in the agent's network namespace).
pub type WatchCapture =
    Box<dyn FnMut() -> Result<Box<dyn CaptureSource + Send>, CaptureError> + Send>;

/// What the backup agent protects and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSettings {
    /// The protected services (address and port).
    pub services: Vec<SocketAddr>,
    /// The prefix length the service addresses are claimed with.
    pub service_prefix_len: u8,
    /// The interface on the service network (claims, announcements).
    pub interface: String,
    /// Frames per announcement of each address (gratuitous ARP, unsolicited NA).
    pub announce_count: u32,
}

/// A backup agent, ready to run: see [`BackupAgent::builder`].
pub struct BackupAgent {
    settings: BackupSettings,
    addresses: Vec<IpAddr>,
    link: Box<dyn BackupLink>,
    standby: Option<Box<dyn StandbyConnector>>,
    probe: Option<Box<dyn NeighbourProbe + Send>>,
    fence: Option<Box<dyn Fence + Send>>,
    watch: Option<WatchCapture>,
    resume: Option<ResumeHandler>,
    observer: Observer,
}

impl std::fmt::Debug for BackupAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupAgent")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Builds a [`BackupAgent`]. The link is required, and at least one of the standby daemon
/// (shadow sessions continue the connections of a deterministic daemon) and the resume
/// handler (an application continues its checkpointed connections, [`cttm_core::checkpoint`]).
/// Without a probe the takeover does not check that the primary stopped serving (split
/// brain is then possible: a warning is logged), without a fence none is run, without a
/// watch capture the clients are not watched after the takeover.
pub struct BackupBuilder {
    settings: BackupSettings,
    link: Option<Box<dyn BackupLink>>,
    standby: Option<Box<dyn StandbyConnector>>,
    probe: Option<Box<dyn NeighbourProbe + Send>>,
    fence: Option<Box<dyn Fence + Send>>,
    watch: Option<WatchCapture>,
    resume: Option<ResumeHandler>,
    observer: Option<Observer>,
}

impl BackupAgent {
    /// A builder for an agent protecting `services` on `interface`, claiming the addresses
    /// as /24 (IPv4) or /64 (IPv6) unless told otherwise, announcing each 3 times.
    pub fn builder(
        services: impl IntoIterator<Item = SocketAddr>,
        interface: impl Into<String>,
    ) -> BackupBuilder {
        let services: Vec<SocketAddr> = services.into_iter().collect();
        let service_prefix_len = if services.iter().all(SocketAddr::is_ipv4) {
            24
        } else {
            64
        };
        BackupBuilder {
            settings: BackupSettings {
                services,
                service_prefix_len,
                interface: interface.into(),
                announce_count: 3,
            },
            link: None,
            standby: None,
            probe: None,
            fence: None,
            watch: None,
            resume: None,
            observer: None,
        }
    }

    /// The operator's view of this agent, updated as it runs.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// Runs the agent in the calling thread until `stop` is set (see the module docs).
    pub fn run(self, stop: &AtomicBool) -> Result<BackupExit, BackupError> {
        let BackupAgent {
            settings,
            addresses,
            link,
            standby,
            probe,
            fence,
            watch,
            resume,
            observer,
        } = self;
        let netlink =
            NetlinkTakeover::open(&settings.interface)?.with_announce_config(AnnounceConfig {
                count: settings.announce_count.max(1),
                interval: ANNOUNCE_INTERVAL,
            });
        let mut guard = Guard::new(addresses.clone(), probe, fence);
        let mut view = BackupView::new(observer);
        let mut protect = Protect::start(link, standby);
        tracing::info!(services = ?settings.services, "backup agent started");
        if !protect.until_takeover(stop, &mut guard, &mut view)? {
            tracing::info!("backup agent stopped before any takeover");
            return Ok(BackupExit::default());
        }
        let watch = watch.and_then(|mut open| open_watch(&mut open));
        let (serving, resumed) = take_over(
            &settings,
            netlink,
            &addresses,
            protect,
            watch,
            resume.is_some(),
        )?;
        view.on_takeover(&serving.exit);
        // The takeover is complete (the lock released, the addresses announced): the
        // application carries on with its connections.
        if let Some(mut handler) = resume {
            for connection in resumed {
                handler(connection);
            }
        }
        serve(stop, serving, &mut view)
    }

    /// Runs the agent on a thread of its own (in the calling thread's network namespace
    /// only if the caller is in it: threads inherit it on Linux).
    pub fn spawn(self) -> BackupHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let observer = self.observer.clone();
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || self.run(&stop))
        };
        BackupHandle {
            stop,
            observer,
            thread,
        }
    }
}

impl BackupBuilder {
    /// The replication link (`cttm_replicate::BackupService`, or any [`BackupLink`]).
    pub fn link(mut self, link: impl BackupLink + 'static) -> Self {
        self.link = Some(Box::new(link));
        self
    }

    /// The standby daemon (`crate::standby::TcpStandby`, or any [`StandbyConnector`]):
    /// a shadow session on it follows every connection.
    pub fn standby(mut self, standby: impl StandbyConnector + 'static) -> Self {
        self.standby = Some(Box::new(standby));
        self
    }

    /// Where checkpointed connections go after the takeover: each is restored at its last
    /// checkpoint and passed to `handler` once the takeover is complete, in the agent's
    /// thread (hand it on quickly: to a thread of its own, or a channel, a tokio one
    /// included). Without it a checkpointed connection is reset at takeover
    /// ([`ResetReason::NoApplication`]).
    pub fn on_resume(mut self, handler: impl FnMut(ResumedConnection) + Send + 'static) -> Self {
        self.resume = Some(Box::new(handler));
        self
    }

    /// The probe of the service addresses before a takeover
    /// (`crate::takeover::probe::AddressProbe`).
    pub fn probe(mut self, probe: impl NeighbourProbe + Send + 'static) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// The fence run before a takeover (`crate::fence::CommandFence`).
    pub fn fence(mut self, fence: impl Fence + Send + 'static) -> Self {
        self.fence = Some(Box::new(fence));
        self
    }

    /// How to open the capture of the clients' segments after the takeover (AF_PACKET on
    /// the service interface, from `cttm-capture`).
    pub fn watch_capture(
        mut self,
        open: impl FnMut() -> Result<Box<dyn CaptureSource + Send>, CaptureError> + Send + 'static,
    ) -> Self {
        self.watch = Some(Box::new(open));
        self
    }

    /// The prefix length the service addresses are claimed with.
    pub fn service_prefix_len(mut self, prefix_len: u8) -> Self {
        self.settings.service_prefix_len = prefix_len;
        self
    }

    /// Frames per announcement of each address.
    pub fn announce_count(mut self, count: u32) -> Self {
        self.settings.announce_count = count;
        self
    }

    /// Publish the agent's view to `observer` (default: a new one, see
    /// [`BackupAgent::observer`]).
    pub fn observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The agent, once the settings hold together.
    pub fn build(self) -> Result<BackupAgent, BackupError> {
        let addresses = service_addresses(&self.settings)?;
        Ok(BackupAgent {
            addresses,
            link: self
                .link
                .ok_or(BackupError::Missing("a replication link"))?,
            standby: match (self.standby, &self.resume) {
                (None, None) => {
                    return Err(BackupError::Missing(
                        "a standby daemon or a resume handler (`on_resume`)",
                    ));
                }
                (standby, _) => standby,
            },
            probe: self.probe,
            fence: self.fence,
            watch: self.watch,
            resume: self.resume,
            observer: self.observer.unwrap_or_else(|| {
                Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async))
            }),
            settings: self.settings,
        })
    }
}

/// A backup agent running on its own thread ([`BackupAgent::spawn`]).
#[derive(Debug)]
pub struct BackupHandle {
    stop: Arc<AtomicBool>,
    observer: Observer,
    thread: std::thread::JoinHandle<Result<BackupExit, BackupError>>,
}

impl BackupHandle {
    /// What the agent shows now.
    pub fn view(&self) -> AgentView {
        self.observer.view()
    }

    /// A subscription to the agent's view.
    pub fn subscribe(&self) -> ViewSubscription {
        self.observer.subscribe()
    }

    /// Tells the agent to stop (it stops within a round of its loop).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops the agent and waits for it.
    pub fn join(self) -> Result<BackupExit, BackupError> {
        self.stop();
        self.thread.join().unwrap_or(Err(BackupError::Panicked))
    }
}

/// Opens the watch's capture; `None` (logged) when it cannot be opened: the takeover goes on
/// without the check.
fn open_watch(open: &mut WatchCapture) -> Option<watch::Watch> {
    match open() {
        Ok(source) => Some(watch::Watch::new(source, WATCH_FOR)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot watch the clients after takeover; connections the backup fell behind on may hang"
            );
            None
        }
    }
}

/// Protecting: the replication link, the replica and the shadow sessions following it.
struct Protect {
    link: Box<dyn BackupLink>,
    store: Arc<dyn ReplicaAccess>,
    subscription: Box<dyn ReplicaSubscription>,
    shadows: ShadowSet,
    lagged: u64,
    last_report: std::time::Instant,
}

impl Protect {
    /// Follows what `link` applies to its replica with shadow sessions on `standby`.
    fn start(link: Box<dyn BackupLink>, standby: Option<Box<dyn StandbyConnector>>) -> Protect {
        let store = link.replica();
        let subscription = store.subscribe(SUBSCRIPTION_CAPACITY);
        Protect {
            link,
            shadows: ShadowSet::new(standby, Arc::clone(&store)),
            store,
            subscription,
            lagged: 0,
            last_report: std::time::Instant::now(),
        }
    }

    /// Protects until the guard lets a takeover go (`true`) or `stop` (`false`).
    fn until_takeover(
        &mut self,
        stop: &AtomicBool,
        guard: &mut Guard,
        view: &mut BackupView,
    ) -> Result<bool, BackupError> {
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            self.round(view)?;
            let now = std::time::Instant::now();
            let changed = guard.observe(self.link.primary_alive(), now) != Liveness::Unchanged;
            if changed || view.due(now) {
                self.publish(guard, view);
            }
            if guard.check_due(now) {
                let verdict = guard.check(view);
                // The check may have taken a while: show its outcome at once.
                self.publish(guard, view);
                if verdict == Verdict::TakeOver {
                    return Ok(true);
                }
            }
        }
    }

    /// One round: shadow sockets served, replica changes applied to the shadows (and
    /// counted), link errors logged now and then.
    fn round(&mut self, view: &mut BackupView) -> Result<(), BackupError> {
        self.shadows.pump(PROTECT_POLL)?;
        for _ in 0..EVENTS_PER_ROUND {
            let Some(event) = self.subscription.try_recv() else {
                break;
            };
            view.on_store_event(&event);
            self.shadows.on_store_event(event);
        }
        if self.subscription.lagged() > self.lagged {
            self.lagged = self.subscription.lagged();
            tracing::error!(
                lost = self.lagged,
                "the shadow sessions fell behind the replica; every connection is unprotected"
            );
            self.shadows
                .unprotect_all("the shadow sessions missed replica changes");
        }
        if self.last_report.elapsed() >= REPORT_INTERVAL {
            self.last_report = std::time::Instant::now();
            log_link(self.link.as_ref());
        }
        Ok(())
    }

    fn publish(&self, guard: &Guard, view: &mut BackupView) {
        let link = LinkState {
            up: self.link.link_up(),
            last_alive: guard.last_alive(),
            alive: self.link.primary_alive(),
        };
        let alerts = guard.alerts(std::time::Instant::now());
        view.publish_protecting(self.store.as_ref(), &self.shadows, link, alerts);
    }
}

/// After the takeover: what serves the connections.
struct Serving {
    exit: BackupExit,
    splices: SpliceSet,
    watch: Option<watch::Watch>,
    announcing: Option<std::thread::JoinHandle<()>>,
}

/// The takeover: the replication stopped, the shadows brought up to date, the addresses
/// claimed under the network lock, every connection restored and spliced, restored for the
/// application (returned, `resumable`: an application takes them) or reset, the addresses
/// announced.
fn take_over(
    settings: &BackupSettings,
    netlink: NetlinkTakeover,
    addresses: &[IpAddr],
    protect: Protect,
    mut watch: Option<watch::Watch>,
    resumable: bool,
) -> Result<(Serving, Vec<ResumedConnection>), BackupError> {
    let Protect {
        link,
        store,
        mut subscription,
        mut shadows,
        lagged,
        ..
    } = protect;
    let started = std::time::Instant::now();
    tracing::warn!(
        connections = store.connection_count(),
        shadows = shadows.len(),
        "takeover starts"
    );
    // The replication stops: nothing the primary sends counts any more.
    drop(link);
    while let Some(event) = subscription.try_recv() {
        shadows.on_store_event(event);
    }
    if subscription.lagged() > lagged {
        shadows.unprotect_all("the shadow sessions missed replica changes");
    }
    shadows.pump(Duration::ZERO)?;
    let connections = connections_to_take_over(store.snapshots());
    let clock = MonotonicOrigin::new(std::time::Instant::now());
    let mut plan = TakeoverPlan::new(
        connections,
        addresses.to_vec(),
        settings.service_prefix_len,
        ANSWER_WAIT,
    );
    // Released on every exit path when dropped.
    let mut network_lock = None;
    let mut netlink = Some(netlink);
    let mut exit = BackupExit::default();
    let mut splices = SpliceSet::new();
    let mut resumed = Vec::new();
    let mut announcing = None;
    loop {
        match plan.poll(clock.at(std::time::Instant::now())) {
            TakeoverStep::ResolveNeighbours(clients) => takeover::resolve_clients(&clients),
            TakeoverStep::EngageLock => {
                network_lock = Some(lock::NetworkLock::engage(&settings.services));
            }
            TakeoverStep::Claim {
                addresses,
                prefix_len,
            } => {
                let result = match netlink.as_mut() {
                    Some(n) => {
                        takeover::claim(n, &addresses, prefix_len).map_err(|e| e.to_string())
                    }
                    None => Err("the takeover interface is closed".to_string()),
                };
                plan.on_claimed(result);
            }
            TakeoverStep::Connection(snapshot) => {
                let connections = Connections {
                    splices: &mut splices,
                    resumed: &mut resumed,
                    resumable,
                };
                take_over_one(
                    store.as_ref(),
                    &mut shadows,
                    &mut watch,
                    connections,
                    &mut exit,
                    &snapshot,
                );
            }
            TakeoverStep::AwaitAnswers { until } => match &mut watch {
                Some(w) => {
                    w.observe(&mut splices);
                    if splices.all_acks_seen() {
                        plan.on_answers_seen();
                    } else {
                        let left = clock
                            .instant(until)
                            .saturating_duration_since(std::time::Instant::now());
                        std::thread::sleep(left.min(Duration::from_millis(2)));
                    }
                }
                // Without a capture no answer can be seen: nothing to wait for.
                None => plan.on_answers_seen(),
            },
            TakeoverStep::Reseat => {
                if watch.is_some() {
                    reseat(&mut splices, &mut exit);
                }
            }
            TakeoverStep::ReleaseLock => {
                if let Some(lock) = &mut network_lock {
                    lock.release();
                }
            }
            TakeoverStep::Announce(addresses) => {
                if let Some(n) = netlink.take() {
                    announcing = takeover::announce(n, &addresses);
                }
            }
            TakeoverStep::Done => break,
            TakeoverStep::Failed(why) => return Err(BackupError::Takeover(why)),
        }
    }
    let took = started.elapsed();
    exit.takeover = Some(took);
    tracing::warn!(
        took_ms = took.as_secs_f64() * 1e3,
        restored = exit.restored.len(),
        resumed = exit.resumed.len(),
        discarded_bytes = exit.discarded_bytes,
        reset = exit.reset.len(),
        "takeover complete"
    );
    let serving = Serving {
        exit,
        splices,
        watch,
        announcing,
    };
    Ok((serving, resumed))
}

/// Serves the spliced connections until `stop`.
fn serve(
    stop: &AtomicBool,
    serving: Serving,
    view: &mut BackupView,
) -> Result<BackupExit, BackupError> {
    let Serving {
        mut exit,
        mut splices,
        mut watch,
        announcing,
    } = serving;
    let mut probe_at = Some(std::time::Instant::now() + PROBE_DELAY);
    while !stop.load(Ordering::SeqCst) {
        if probe_at.is_some_and(|t| std::time::Instant::now() >= t) {
            probe_at = None;
            splices.probe_all();
        }
        let watching = watch.as_ref().is_some_and(watch::Watch::active);
        if !watching {
            watch = None;
        }
        let ended = splices.pump(if watching { WATCH_POLL } else { SERVE_POLL })?;
        let mut changed = !ended.is_empty();
        if let Some(w) = &mut watch {
            w.observe(&mut splices);
            for id in splices.take_unborn() {
                tracing::info!(connection = %id, "the client never received the SYN-ACK: restored socket withdrawn, its next SYN opens the connection afresh");
                exit.restored.retain(|r| *r != id);
                exit.handshake_restarted.push(id);
                changed = true;
            }
            for (id, seq, reason) in splices.take_lost(AHEAD_GRACE) {
                match watch::send_reset(&id, seq) {
                    Ok(()) => tracing::warn!(connection = %id, %reason, "connection lost: reset"),
                    Err(e) => {
                        tracing::error!(connection = %id, %reason, error = %e, "connection lost; sending the reset failed")
                    }
                }
                exit.ended.push((id, Some(reason)));
                changed = true;
            }
        }
        for (id, end) in ended {
            record_end(&mut exit, id, end);
        }
        if changed || view.due(std::time::Instant::now()) {
            view.apply_ended(&exit);
            view.publish_serving(Vec::new());
        }
    }
    exit.still_spliced = splices.len();
    if let Some(a) = announcing {
        let _ = a.join();
    }
    view.apply_ended(&exit);
    view.publish_serving(Vec::new());
    tracing::info!(still_spliced = exit.still_spliced, "backup agent stopped");
    Ok(exit)
}

/// Records how a spliced connection ended.
fn record_end(exit: &mut BackupExit, id: ConnectionId, end: SpliceEnd) {
    match end {
        SpliceEnd::Closed => {
            tracing::info!(connection = %id, "spliced connection closed");
            exit.ended.push((id, None));
        }
        SpliceEnd::Diverged(offset) => {
            tracing::warn!(
                connection = %id,
                offset,
                "connection diverged after takeover: reset"
            );
            exit.diverged.push((id, offset));
            exit.ended
                .push((id, Some(format!("diverged at offset {offset}"))));
        }
        SpliceEnd::Failed(reason) => {
            tracing::warn!(connection = %id, %reason, "spliced connection lost");
            exit.ended.push((id, Some(reason)));
        }
    }
}

/// Where the takeover puts the connections it continues.
struct Connections<'a> {
    /// Restored connections spliced to their shadow sessions.
    splices: &'a mut SpliceSet,
    /// Checkpointed connections restored for the application.
    resumed: &'a mut Vec<ResumedConnection>,
    /// An application takes checkpointed connections.
    resumable: bool,
}

/// One connection of the takeover: restored and spliced, restored for the application, or
/// reset (see `takeover::take_over_connection`).
fn take_over_one(
    store: &dyn ReplicaAccess,
    shadows: &mut ShadowSet,
    watch: &mut Option<watch::Watch>,
    connections: Connections<'_>,
    exit: &mut BackupExit,
    snapshot: &ConnectionSnapshot,
) {
    let id = snapshot.id;
    let shadow = shadows.take(&id);
    // Segments captured so far predate this restore: they must not count as the client's
    // answer to its window probe (read them while the connection has no splice yet).
    if let Some(w) = watch {
        w.observe(connections.splices);
    }
    match takeover::take_over_connection(store, snapshot, shadow, connections.resumable) {
        Outcome::Restored(splice) => {
            tracing::info!(connection = %id, "connection restored and spliced to its shadow session");
            connections.splices.add(*splice);
            exit.restored.push(id);
        }
        Outcome::Resumed(connection) => {
            tracing::info!(
                connection = %id,
                client_consumed = connection.checkpoint.client_consumed,
                server_produced = connection.checkpoint.server_produced,
                discarded = connection.discarded,
                "connection restored at its last checkpoint for the application"
            );
            exit.resumed.push(id);
            exit.discarded_bytes += connection.discarded;
            connections.resumed.push(connection);
        }
        Outcome::Reset(reason) => {
            tracing::warn!(connection = %id, %reason, "connection lost: reset at takeover");
            if let ResetReason::Diverged { offset } = reason {
                exit.diverged.push((id, offset));
            }
            exit.reset.push((id, reason));
        }
    }
}

/// Under the network lock, once the clients' answers to the restored sockets' window probes
/// arrived (or the wait ended): re-seats the restored sockets whose client lacks server bytes
/// (see `Splice::reseat`).
fn reseat(splices: &mut SpliceSet, exit: &mut BackupExit) {
    let (lost, reseated) = splices.reseat_all();
    if reseated > 0 {
        tracing::info!(
            reseated,
            "restored sockets re-seated at their clients' acknowledgements"
        );
    }
    for (id, reason) in lost {
        tracing::warn!(connection = %id, %reason, "connection lost while re-seating its restored socket");
        exit.restored.retain(|r| *r != id);
        exit.ended.push((id, Some(reason)));
    }
}

/// The distinct service addresses, checked against the prefix length.
fn service_addresses(options: &BackupSettings) -> Result<Vec<IpAddr>, BackupError> {
    if options.services.is_empty() {
        return Err(BackupError::NoServices);
    }
    let mut addresses: Vec<IpAddr> = options.services.iter().map(|s| s.ip()).collect();
    addresses.sort();
    addresses.dedup();
    for &address in &addresses {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if options.service_prefix_len > max {
            return Err(BackupError::PrefixLength {
                address,
                prefix_len: options.service_prefix_len,
            });
        }
    }
    Ok(addresses)
}

/// Logs the replication link's errors and the protocol's reports since the last call.
fn log_link(service: &dyn BackupLink) {
    let (errors, dropped) = service.take_errors();
    for e in errors {
        tracing::warn!(error = %e, "replication link");
    }
    if dropped > 0 {
        tracing::warn!(dropped, "replication link errors not shown");
    }
    for report in service.take_reports() {
        tracing::info!(?report, "replication");
    }
}
