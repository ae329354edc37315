//! The real agents in a [`FailoverLab`], shared by the failover tests (`mod
//! failover_agents;`) and the cttmd blackout benchmark (through `#[path]`: `cttm-tests`
//! cannot depend on `cttmd`, so this cttmd-aware part lives beside the tests, not in the
//! library): the options both agents run with, and [`start`], which runs them in sync mode
//! (output commit) on an [`AgentPair`].

use cttm_tests::failover_lab::{AgentPair, FailoverLab, REPLICATION_KEY};
use cttm_tests::lab::LabError;
use cttmd::backup::{BackupError, BackupExit, run_backup_observed};
use cttmd::observe::{AgentRole, AgentView, CommitState, Observer};
use cttmd::options::{
    BackupOptions, CommitMode, DEFAULT_DEGRADE_AFTER, HeartbeatOptions, ObserveOptions,
    PrimaryOptions, ProbeOptions,
};
use cttmd::primary::{PrimaryError, PrimaryExit, PrimaryMonitor, run_primary_monitored};
use std::time::{Duration, Instant};

/// Heartbeats every 50 ms; 8 missed (400 ms) declare the primary dead.
pub(crate) const HEARTBEAT: HeartbeatOptions = HeartbeatOptions {
    interval: Duration::from_millis(50),
    misses: 8,
};

/// The longest the agents may take to bring the replication link up.
const LINK_UP_LIMIT: Duration = Duration::from_secs(20);

/// The lab with both agents running and the replication link up.
pub(crate) type Rig = AgentPair<Result<PrimaryExit, PrimaryError>, Result<BackupExit, BackupError>>;

/// Starts the backup agent, then the primary agent (sync mode, NFQUEUE `queue`), in `lab`,
/// and returns once the replication link is up. The takeover happens on the service
/// network (`eth0`), whichever network replication runs on.
pub(crate) fn start(lab: FailoverLab, queue: u16) -> Result<Rig, LabError> {
    start_in_mode(lab, CommitMode::Sync, queue)
}

/// [`start`] in either output-commit mode (`queue` only matters in sync mode).
pub(crate) fn start_in_mode(
    lab: FailoverLab,
    mode: CommitMode,
    queue: u16,
) -> Result<Rig, LabError> {
    start_observed(lab, mode, queue, |_, _| {}).map(|(rig, _)| rig)
}

/// The backup agent's options in `lab`, as the rig starts it.
pub(crate) fn backup_options(lab: &FailoverLab) -> BackupOptions {
    BackupOptions {
        services: vec![lab.service()],
        service_prefix_len: lab.service_prefix_len(),
        interface: "eth0".into(),
        listen: lab.replication(),
        key: REPLICATION_KEY,
        standby: lab.standby(),
        heartbeat: HEARTBEAT,
        announce_count: 3,
        probe: ProbeOptions::DEFAULT,
        fence: None,
        observe: ObserveOptions::default(),
    }
}

/// The primary agent's options in `lab`, as the rig starts it.
pub(crate) fn primary_options(lab: &FailoverLab, mode: CommitMode, queue: u16) -> PrimaryOptions {
    PrimaryOptions {
        services: vec![lab.service()],
        interface: "eth0".into(),
        backup: lab.replication(),
        key: REPLICATION_KEY,
        mode,
        heartbeat: HEARTBEAT,
        retention_limit: 64 << 20,
        queue,
        degrade_after: DEFAULT_DEGRADE_AFTER,
        probe: ProbeOptions::DEFAULT,
        observe: ObserveOptions::default(),
        capture_file: None,
    }
}

/// What the operator (and a test) can see of the running agents.
#[derive(Clone, Debug)]
pub(crate) struct Watchers {
    /// The primary agent's status (final status included once it stopped) and its view.
    pub(crate) primary: PrimaryMonitor,
    /// The backup agent's view.
    pub(crate) backup: Observer,
}

/// [`start_in_mode`] with the options changed by `customize` first, returning the agents'
/// status handles too.
pub(crate) fn start_observed(
    lab: FailoverLab,
    mode: CommitMode,
    queue: u16,
    customize: impl FnOnce(&mut PrimaryOptions, &mut BackupOptions),
) -> Result<(Rig, Watchers), LabError> {
    let mut backup_options = backup_options(&lab);
    let mut primary_options = primary_options(&lab, mode, queue);
    customize(&mut primary_options, &mut backup_options);
    let watchers = Watchers {
        primary: PrimaryMonitor::new(),
        backup: Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async)),
    };
    let (primary_monitor, backup_observer) = (watchers.primary.clone(), watchers.backup.clone());
    let monitor = watchers.primary.clone();
    let rig = AgentPair::start(
        lab,
        move |stop| run_backup_observed(backup_options, stop, backup_observer),
        move |stop| run_primary_monitored(primary_options, stop, primary_monitor),
        LINK_UP_LIMIT,
        || monitor.status().is_some_and(|s| s.link_up),
    )?;
    Ok((rig, watchers))
}

/// The crash of the primary; the primary agent must have run without error. Returns when
/// the service port went down.
pub(crate) fn crash(rig: &mut Rig) -> Result<Instant, String> {
    let (at, exit) = rig.crash().map_err(|e| e.to_string())?;
    exit.map_err(|e| format!("the primary agent failed: {e:?}"))?;
    Ok(at)
}

/// Stops the backup agent; it must have run without error.
pub(crate) fn finish(rig: Rig) -> Result<BackupExit, String> {
    rig.stop_backup()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the backup agent failed: {e:?}"))
}
