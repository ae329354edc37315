//! Sync mode: NFQUEUE on INPUT and OUTPUT, outgoing segments held by output commit.

use super::agent::{Agent, service_set, start_replication};
use super::{PrimaryError, PrimaryExit, PrimaryMonitor};
use crate::options::PrimaryOptions;
use cttm_capture::CaptureSource;
use cttm_capture::nfqueue::{NfqueueConfig, NfqueueSource, PacketId, QueueDirections};
use cttm_core::commit::{CommitRequirement, OutputCommit};
use cttm_core::event::Side;
use cttm_core::wire::parse_frame;
use cttm_core::{SegmentRepr, ServiceSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a read waits for the first packet while nothing is held (the stop latency).
const IDLE_READ_TIMEOUT: Duration = Duration::from_millis(20);
/// How long a read waits while packets are held: acknowledgements from the backup do not
/// wake the reader, so it looks at them at least this often.
const HOLDING_READ_TIMEOUT: Duration = Duration::from_micros(200);

pub(super) fn run(
    options: &PrimaryOptions,
    stop: &AtomicBool,
    monitor: PrimaryMonitor,
) -> Result<PrimaryExit, PrimaryError> {
    let services = service_set(options);
    let mut config = NfqueueConfig::new(options.queue, services.clone());
    config.directions = QueueDirections::Both;
    let mut source = NfqueueSource::open(config).map_err(|source| PrimaryError::OpenQueue {
        queue: options.queue,
        source,
    })?;
    let service = start_replication(options, source.bypass_mark());
    let mut agent = Agent::new(options, service, monitor);
    let mut gate: OutputCommit<PacketId> = OutputCommit::new();
    tracing::info!(
        queue = options.queue,
        "sync mode: outgoing segments are held until the backup holds what they reveal"
    );
    let result = serve(&mut source, &mut agent, &mut gate, &services, stop);
    // Stopping: no new packet is queued once the rules are gone; what is held leaves (the
    // service keeps running, unprotected, rather than stall).
    if let Err(e) = source.remove_rules() {
        tracing::warn!(error = %e, "removing the queue rules failed");
    }
    let mut late = Vec::new();
    let _ = source.read_held(Duration::ZERO, &mut |held| late.push(held.id));
    let mut leftover = gate.release_all();
    leftover.extend(late);
    if let Err(e) = source.accept_batch(&leftover) {
        tracing::warn!(error = %e, "releasing the held packets at stop failed");
    }
    agent.stats.held = gate.stats().held;
    agent.stats.released = gate.stats().released;
    agent.stats.released_unprotected = gate.stats().released_unprotected;
    agent.publish_status(&|_| 0, 0);
    result.map(|()| agent.stats)
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

fn serve(
    source: &mut NfqueueSource,
    agent: &mut Agent,
    gate: &mut OutputCommit<PacketId>,
    services: &ServiceSet,
    stop: &AtomicBool,
) -> Result<(), PrimaryError> {
    let mut accept_now: Vec<PacketId> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let timeout = if gate.is_empty() {
            IDLE_READ_TIMEOUT
        } else {
            HOLDING_READ_TIMEOUT
        };
        source
            .read_held(timeout, &mut |held| {
                let decision = match parse_frame(held.frame.link, held.frame.data) {
                    Ok(segment) => {
                        agent.track(held.frame.at, &segment);
                        decide(agent, services, &segment)
                    }
                    // Not a TCP segment we can read: nothing to protect.
                    Err(_) => Decision::Accept,
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
                    Decision::Hold(id, requirement) => gate.hold(held.id, id, requirement),
                }
            })
            .map_err(PrimaryError::Capture)?;
        agent.on_capture_drops(source.stats().dropped);
        agent.ship();
        // Connections that closed or can no longer be restored give up their packets.
        let finished: Vec<_> = gate
            .connections()
            .filter(|id| {
                agent
                    .tracker
                    .record(id)
                    .is_none_or(|r| r.closed().is_some() || r.unsafe_reason().is_some())
            })
            .copied()
            .collect();
        for id in finished {
            accept_now.extend(gate.release_connection(&id));
        }
        accept_now.extend(gate.release(|id| agent.backup_holds(id)));
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
    }
    Ok(())
}

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
    if record.closed().is_some() || record.unsafe_reason().is_some() {
        return Decision::AcceptAfterHeld(id);
    }
    if segment.flags.syn() {
        return Decision::Hold(id, CommitRequirement::Handshake);
    }
    // The record already includes this segment. A FIN takes a sequence offset but is not a
    // byte (RFC 9293 §3.4); the backup's acknowledged offsets count bytes only, so both ends
    // are taken in bytes. Consequence: a FIN (the server's, or the acknowledgement of the
    // client's) may leave before the backup holds it; a connection restored from that state
    // closes again when the standby closes, or is reset.
    let client = record.stream(Side::Client);
    let server = record.stream(Side::Server);
    Decision::Hold(
        id,
        CommitRequirement::Offsets {
            client: client.acked().min(client.received_end()),
            server: server.received_end(),
        },
    )
}
