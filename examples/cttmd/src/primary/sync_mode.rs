//! Sync mode: NFQUEUE on INPUT and OUTPUT, outgoing segments held by output commit, until
//! the degrade policy ([`cttm_core::primary::degrade`]) gives the hold up for a backup that is gone or too slow.

use super::agent::{Agent, service_set, start_replication};
use super::ownership::{OtherHolder, Ownership};
use super::{HoldTimes, PrimaryError, PrimaryMonitor, RunEnd};
use crate::clock::CoreClock;
use crate::options::PrimaryOptions;
use cttm_capture::CaptureSource;
use cttm_capture::nfqueue::{NfqueueConfig, NfqueueSource, PacketId, QueueDirections};
use cttm_core::commit::{CommitRequirement, OutputCommit};
use cttm_core::event::{CloseHow, Side};
use cttm_core::primary::degrade::{BackupHealth, DegradePolicy, Transition};
use cttm_core::record::ConnectionRecord;
use cttm_core::wire::parse_frame;
use cttm_core::{SegmentRepr, ServiceSet};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a read waits for the first packet while nothing is held (the stop latency).
const IDLE_READ_TIMEOUT: Duration = Duration::from_millis(20);
/// While packets are held, the loop reads the queue without waiting, then waits at most
/// this long for the backup's next acknowledgement (woken the moment it arrives), so a
/// held packet leaves about one replication round trip after its events were shipped, and
/// newly queued packets wait at most this long to be read.
const HOLDING_ACK_WAIT: Duration = Duration::from_micros(100);
/// How often the degrade policy looks at the backup (it degrades at most this long after
/// `degrade_after` passed).
const DEGRADE_CHECK_INTERVAL: Duration = Duration::from_millis(10);

pub(super) fn run(
    options: &PrimaryOptions,
    stop: &AtomicBool,
    monitor: PrimaryMonitor,
    ownership: &Ownership,
) -> Result<RunEnd, PrimaryError> {
    let services = service_set(options);
    let mut config = NfqueueConfig::new(options.queue, services.clone());
    config.directions = QueueDirections::Both;
    let mut source = NfqueueSource::open(config).map_err(|source| PrimaryError::OpenQueue {
        queue: options.queue,
        source,
    })?;
    let service = start_replication(options, source.bypass_mark());
    let mut agent = Agent::new(options, service, monitor, ownership.watch());
    let mut gate: OutputCommit<PacketId> = OutputCommit::new();
    let mut hold = Hold::new(DegradePolicy::new(options.degrade_after));
    tracing::info!(
        queue = options.queue,
        degrade_after_ms = options.degrade_after.as_millis() as u64,
        "sync mode: outgoing segments are held until the backup holds what they reveal"
    );
    let result = serve(
        &mut source,
        &mut agent,
        &mut gate,
        &mut hold,
        &services,
        stop,
    );
    // Stopping: no new packet is queued once the rules are gone; what is held leaves (the
    // service keeps running, unprotected, rather than stall). Demoted: another host serves
    // these connections now, so what this host still holds is dropped instead: its output
    // must not reach the clients beside the new server's (and once the address is removed,
    // TCP cannot retransmit it).
    if let Err(e) = source.remove_rules() {
        tracing::warn!(error = %e, "removing the queue rules failed");
    }
    let mut late = Vec::new();
    let _ = source.read_held(Duration::ZERO, &mut |held| late.push(held.id));
    let mut leftover = gate.release_all();
    leftover.extend(late);
    let demoted = matches!(result, Ok(Some(_)));
    let settled = if demoted {
        leftover
            .iter()
            .try_for_each(|packet| source.drop_packet(*packet))
    } else {
        source.accept_batch(&leftover)
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, demoted, "settling the held packets at stop failed");
    }
    agent.stats.held = gate.stats().held;
    agent.stats.released = gate.stats().released;
    agent.stats.released_unprotected = gate.stats().released_unprotected;
    agent.stats.hold_time = HoldTimes::from_samples(&mut hold.samples);
    agent.finish_recording();
    agent.publish_status(&|_| 0, 0);
    result.map(|demoted| RunEnd {
        exit: agent.stats,
        demoted,
    })
}

/// The hold's bookkeeping besides the gate: when each held packet entered it, the hold
/// times measured, and the degrade policy.
struct Hold {
    /// When each held packet entered the gate.
    held_at: HashMap<PacketId, Instant>,
    /// Held packets in hold order (entries already released are skipped lazily): the
    /// front is the packet held longest.
    order: VecDeque<(PacketId, Instant)>,
    samples: Vec<u64>,
    policy: DegradePolicy,
    last_check: Option<Instant>,
    /// The times the degrade policy is given (it reads no clock).
    clock: CoreClock,
}

impl Hold {
    fn new(policy: DegradePolicy) -> Hold {
        Hold {
            held_at: HashMap::new(),
            order: VecDeque::new(),
            samples: Vec::new(),
            policy,
            last_check: None,
            clock: CoreClock::start(),
        }
    }

    fn held(&mut self, packet: PacketId, at: Instant) {
        self.held_at.insert(packet, at);
        self.order.push_back((packet, at));
    }

    /// When the packet held longest entered the gate.
    fn oldest(&mut self) -> Option<Instant> {
        while let Some((packet, at)) = self.order.front() {
            if self.held_at.contains_key(packet) {
                return Some(*at);
            }
            self.order.pop_front();
        }
        None
    }

    /// Packets that left without the backup's acknowledgement are no longer waited for.
    fn forget_released(&mut self, gate_len: usize, released: &[PacketId]) {
        if self.held_at.len() > gate_len {
            let released: HashSet<PacketId> = released.iter().copied().collect();
            self.held_at.retain(|packet, _| !released.contains(packet));
        }
        if self.held_at.is_empty() {
            self.order.clear();
        }
    }
}

/// What to do with one queued packet once tracked.
enum Decision {
    /// Let it through now.
    Accept,
    /// Let it through now, after the packets of its connection still held (the connection
    /// just ended or can no longer be restored: holding protects nothing).
    AcceptAfterHeld(cttm_core::ConnectionId),
    /// Hold it in the gate.
    Hold(cttm_core::ConnectionId, CommitRequirement),
}

/// Serves until `stop`; `Some` when another host turned out to serve the service address.
fn serve(
    source: &mut NfqueueSource,
    agent: &mut Agent,
    gate: &mut OutputCommit<PacketId>,
    hold: &mut Hold,
    services: &ServiceSet,
    stop: &AtomicBool,
) -> Result<Option<OtherHolder>, PrimaryError> {
    let mut accept_now: Vec<PacketId> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if let Some(holder) = agent.other_holder() {
            return Ok(Some(holder));
        }
        let degraded = hold.policy.is_degraded();
        let timeout = if gate.is_empty() {
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
                        decide(agent, services, &segment)
                    }
                    // Not a TCP segment we can read: nothing to protect.
                    Err(_) => Decision::Accept,
                };
                // Degraded: nothing is held (the events still go to the backup).
                let decision = match decision {
                    Decision::Hold(..) if degraded => Decision::Accept,
                    other => other,
                };
                match decision {
                    Decision::Accept => {
                        agent.stats.passed += 1;
                        accept_now.push(held.id);
                    }
                    Decision::AcceptAfterHeld(id) => {
                        agent.stats.passed += 1;
                        accept_now.extend(gate.release_connection(&id));
                        accept_now.push(held.id);
                    }
                    Decision::Hold(id, requirement) => {
                        hold.held(held.id, Instant::now());
                        gate.hold(held.id, id, requirement);
                    }
                }
            })
            .map_err(PrimaryError::Capture)?;
        agent.on_capture_drops(source.stats().dropped);
        agent.ship();
        // Connections reset, evicted, forgotten or no longer restorable give up their
        // packets. A graceful close keeps holding: its last segments reveal FINs.
        let finished: Vec<_> = gate
            .connections()
            .filter(|id| agent.tracker.record(id).is_none_or(gives_up_output))
            .copied()
            .collect();
        for id in finished {
            accept_now.extend(gate.release_connection(&id));
        }
        let committed = gate.release(|id| agent.backup_holds(id));
        let now = Instant::now();
        for packet in &committed {
            if let Some(since) = hold.held_at.remove(packet) {
                let micros = now.duration_since(since).as_micros() as u64;
                agent.observe_hold(micros);
                if hold.samples.len() < MAX_HOLD_SAMPLES {
                    hold.samples.push(micros);
                }
            }
        }
        accept_now.extend(committed);
        check_degrade(agent, gate, hold, &mut accept_now);
        hold.forget_released(gate.len(), &accept_now);
        source
            .accept_batch(&accept_now)
            .map_err(PrimaryError::Verdict)?;
        accept_now.clear();
        let stats = gate.stats();
        agent.stats.held = stats.held;
        agent.stats.released = stats.released;
        agent.stats.released_unprotected = stats.released_unprotected;
        let held_total = gate.len();
        agent.housekeeping(&|id| gate.held_for(id), held_total);
        if read == 0 && !gate.is_empty() {
            // Nothing new queued and packets still wait for the backup: sleep until its
            // next acknowledgement (or a short while), not a fixed polling interval.
            let acked = agent.service.acked_seq();
            agent.service.wait_acked(acked + 1, HOLDING_ACK_WAIT);
        }
    }
    Ok(None)
}

/// Runs the degrade policy (every [`DEGRADE_CHECK_INTERVAL`]); on degrading, every held
/// packet joins `accept_now`.
fn check_degrade(
    agent: &mut Agent,
    gate: &mut OutputCommit<PacketId>,
    hold: &mut Hold,
    accept_now: &mut Vec<PacketId>,
) {
    let now = Instant::now();
    if hold
        .last_check
        .is_some_and(|t| now.duration_since(t) < DEGRADE_CHECK_INTERVAL)
    {
        return;
    }
    hold.last_check = Some(now);
    let (acked_seq, last_seq, all_reprotected) = agent
        .service
        .with_primary(|p| (p.acked_seq(), p.last_seq(), p.unprotected().is_empty()));
    let health = BackupHealth {
        link_up: agent.service.link_up(),
        backup_alive: agent.service.backup_alive(),
        acked_seq,
        last_seq,
        all_reprotected,
    };
    let oldest = hold.oldest().map(|at| hold.clock.at(at));
    let now = hold.clock.at(now);
    match hold.policy.tick(now, oldest, health) {
        None => {}
        Some(Transition::Degrade(reason)) => {
            let released = gate.release_all();
            tracing::error!(
                %reason,
                released = released.len(),
                "DEGRADED to async: output is no longer held, connections are not protected until the backup has resynchronised"
            );
            accept_now.extend(released);
            agent.set_degraded(Some(reason.to_string()));
        }
        Some(Transition::Resynchronised { degraded_for }) => {
            tracing::info!(
                degraded_ms = degraded_for.as_millis() as u64,
                "backup resynchronised: sync again"
            );
            agent.set_degraded(None);
        }
    }
}

/// The most hold-time samples kept (8 bytes each).
const MAX_HOLD_SAMPLES: usize = 1 << 20;

/// The commit requirement of a just-tracked packet, or `Accept` when nothing needs to wait
/// for it.
fn decide(agent: &Agent, services: &ServiceSet, segment: &SegmentRepr<'_>) -> Decision {
    let Some((id, side)) = services.classify(segment.src, segment.dst) else {
        return Decision::Accept;
    };
    // Incoming segments only need tracking: the server's acknowledgement of their bytes
    // goes out through OUTPUT and is held there.
    if side == Side::Client {
        return Decision::Accept;
    }
    let Some(record) = agent.tracker.record(&id) else {
        // Not tracked (a stray segment, a full table): nothing the backup could restore.
        return Decision::Accept;
    };
    if gives_up_output(record) {
        return Decision::AcceptAfterHeld(id);
    }
    if segment.flags.syn() {
        return Decision::Hold(id, CommitRequirement::Handshake);
    }
    // The record already includes this segment. Both ends are in sequence space, where a FIN
    // takes one offset (RFC 9293 §3.4): the client stream's acknowledged offset counts the
    // client's FIN once the server acknowledged it, and the server stream's sequence end
    // counts the server's FIN once sent. So the server's FIN, and its acknowledgement of the
    // client's FIN, leave only once the backup holds that FIN (its acknowledged offsets
    // count FINs the same way), and a close never waits for more than the backup can hold.
    Decision::Hold(
        id,
        CommitRequirement::Offsets {
            client: record.stream(Side::Client).acked(),
            server: record.stream(Side::Server).sequence_end(),
        },
    )
}

/// True when holding the connection's output protects nothing any more: it was reset or
/// evicted, or can no longer be restored. A graceful close still holds (see [`decide`]).
fn gives_up_output(record: &ConnectionRecord) -> bool {
    record.unsafe_reason().is_some() || record.closed().is_some_and(|how| how != CloseHow::Graceful)
}
