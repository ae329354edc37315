//! Sync mode: NFQUEUE on INPUT and OUTPUT, outgoing segments held by output commit, until
//! the degrade policy gives the hold up for a backup that is gone or too slow. Every decision
//! (hold or pass, release, give up, degrade, hold times) is [`cttm_core::primary::hold`]'s;
//! this is its driver: it reads the queue, tracks each packet, feeds the machine, and gives
//! the verdicts it says.

use super::agent::{Agent, service_set};
use super::clock::CoreClock;
use super::ownership::OwnershipWatch;
use super::{HoldTimes, PrimaryError, RunEnd, RunInputs};
use super::{LinkFactory, PrimarySettings};
use crate::CaptureSource;
use crate::nfqueue::{NfqueueConfig, NfqueueError, NfqueueSource, PacketId, QueueDirections};
use cttm_core::primary::OtherHolder;
use cttm_core::primary::degrade::{BackupHealth, Transition};
use cttm_core::primary::hold::{
    Ending, HoldChange, HoldCommand, HoldConfig, HoldDecision, OutputHold, decide_checkpointed,
};
use cttm_core::wire::parse_frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a read waits for the first packet while nothing is held (the stop latency).
const IDLE_READ_TIMEOUT: Duration = Duration::from_millis(20);
/// While packets are held, the loop reads the queue without waiting, then waits at most
/// this long for the backup's next acknowledgement (woken the moment it arrives), so a
/// held packet leaves about one replication round trip after its events were shipped, and
/// newly queued packets wait at most this long to be read.
const HOLDING_ACK_WAIT: Duration = Duration::from_micros(100);

/// The hold with the clock that times its inputs (it reads none).
struct Hold {
    machine: OutputHold<PacketId>,
    clock: CoreClock,
}

pub(super) fn run(
    options: &PrimarySettings,
    link: &mut LinkFactory,
    stop: &AtomicBool,
    inputs: RunInputs,
    watch: Option<OwnershipWatch>,
) -> Result<RunEnd, PrimaryError> {
    let mut config = NfqueueConfig::new(options.queue, service_set(options));
    config.directions = QueueDirections::Both;
    let mut source = NfqueueSource::open(config).map_err(|source| PrimaryError::OpenQueue {
        queue: options.queue,
        source,
    })?;
    let service = link(source.bypass_mark());
    let mut agent = Agent::new(options, service, inputs, watch);
    let mut hold = Hold {
        machine: OutputHold::new(HoldConfig::new(options.degrade_after)),
        clock: CoreClock::start(),
    };
    tracing::info!(
        queue = options.queue,
        degrade_after_ms = options.degrade_after.as_millis() as u64,
        "sync mode: outgoing segments are held until the backup holds what they reveal"
    );
    let result = serve(&mut source, &mut agent, &mut hold, stop);
    // Stopping: no new packet is queued once the rules are gone; what is held leaves, or is
    // dropped when demoted (see `Ending`).
    if let Err(e) = source.remove_rules() {
        tracing::warn!(error = %e, "removing the queue rules failed");
    }
    let mut late = Vec::new();
    let _ = source.read_held(Duration::ZERO, &mut |held| late.push(held.id));
    let demoted = matches!(result, Ok(Some(_)));
    let ending = if demoted {
        Ending::Demoted
    } else {
        Ending::Stopped
    };
    hold.machine.end(ending, late);
    if let Err(e) = carry_out(&mut source, &mut agent, &mut hold) {
        tracing::warn!(error = %e, demoted, "settling the held packets at stop failed");
    }
    count(&mut agent, &hold.machine);
    agent.stats.hold_time = HoldTimes::from_samples(&mut hold.machine.take_hold_samples());
    agent.finish_recording();
    agent.publish_status(Some(&hold.machine));
    let watch = agent.take_watch();
    result.map(|demoted| RunEnd {
        exit: agent.stats,
        demoted,
        watch,
    })
}

/// Serves until `stop`; `Some` when another host turned out to serve the service address.
fn serve(
    source: &mut NfqueueSource,
    agent: &mut Agent,
    hold: &mut Hold,
    stop: &AtomicBool,
) -> Result<Option<OtherHolder>, PrimaryError> {
    while !stop.load(Ordering::SeqCst) {
        if let Some(holder) = agent.other_holder() {
            return Ok(Some(holder));
        }
        let timeout = if hold.machine.is_empty() {
            IDLE_READ_TIMEOUT
        } else {
            Duration::ZERO
        };
        let read = source
            .read_held(timeout, &mut |held| {
                agent.record(&held.frame);
                let decision = match parse_frame(held.frame.link, held.frame.data) {
                    Ok(segment) => {
                        agent.track(held.frame.at, &segment);
                        let checkpoints = &agent.checkpointer;
                        decide_checkpointed(&agent.tracker, &segment, |id| {
                            checkpoints.is_checkpointed(id)
                        })
                    }
                    // Not a TCP segment we can read: nothing to protect.
                    Err(_) => HoldDecision::Pass,
                };
                hold.machine.on_packet(hold.clock.now(), held.id, decision);
            })
            .map_err(PrimaryError::Capture)?;
        agent.on_capture_drops(source.stats().dropped);
        agent.ship();
        let now = hold.clock.now();
        hold.machine
            .release(now, &agent.tracker, |id| agent.backup_holds(id));
        carry_out(source, agent, hold).map_err(PrimaryError::Verdict)?;
        count(agent, &hold.machine);
        agent.housekeeping(Some(&hold.machine));
        if read == 0 && !hold.machine.is_empty() {
            // Nothing new queued and packets still wait for the backup: sleep until its
            // next acknowledgement (or a short while), not a fixed polling interval.
            let acked = agent.service.acked_seq();
            agent.service.wait_acked(acked + 1, HOLDING_ACK_WAIT);
        }
    }
    Ok(None)
}

/// Carries out the hold's commands until it has none: looks at the backup when asked,
/// gives the verdicts.
fn carry_out(
    source: &mut NfqueueSource,
    agent: &mut Agent,
    hold: &mut Hold,
) -> Result<(), NfqueueError> {
    while let Some(command) = hold.machine.poll(hold.clock.now()) {
        match command {
            HoldCommand::CheckBackup => {
                let health = backup_health(agent);
                let now = hold.clock.now();
                if let Some(change) = hold.machine.on_backup_health(now, health) {
                    report(agent, change);
                }
            }
            HoldCommand::Accept(packets) => source.accept_batch(&packets)?,
            HoldCommand::Drop(packets) => {
                packets.iter().try_for_each(|p| source.drop_packet(*p))?
            }
        }
    }
    Ok(())
}

/// What the agent knows of the backup now, for the degrade policy.
fn backup_health(agent: &Agent) -> BackupHealth {
    let progress = agent.service.progress();
    let (acked_seq, last_seq, all_reprotected) = (
        progress.acked_seq,
        progress.last_seq,
        progress.all_protected,
    );
    BackupHealth {
        link_up: agent.service.link_up(),
        backup_alive: agent.service.backup_alive(),
        acked_seq,
        last_seq,
        all_reprotected,
    }
}

/// Logs a change of the commit state and shows it in the view.
fn report(agent: &mut Agent, change: HoldChange) {
    match change.transition {
        Transition::Degrade(reason) => {
            tracing::error!(
                %reason,
                released = change.released,
                "DEGRADED to async: output is no longer held, connections are not protected until the backup has resynchronised"
            );
            agent.set_degraded(Some(reason.to_string()));
        }
        Transition::Resynchronised { degraded_for } => {
            tracing::info!(
                degraded_ms = degraded_for.as_millis() as u64,
                "backup resynchronised: sync again"
            );
            agent.set_degraded(None);
        }
    }
}

/// The hold's counters into the run's.
fn count(agent: &mut Agent, hold: &OutputHold<PacketId>) {
    let stats = hold.stats();
    agent.stats.held = stats.commit.held;
    agent.stats.released = stats.commit.released;
    agent.stats.released_unprotected = stats.commit.released_unprotected;
    agent.stats.passed = stats.passed;
}
