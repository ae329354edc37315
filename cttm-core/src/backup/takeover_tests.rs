use super::*;
use crate::event::UnsafeReason;
use crate::event::{ConnectionEvent, EventKind, Handshake};
use crate::record::ClientRetention;
use crate::{ConnectionId, Instant};

fn id() -> ConnectionId {
    ConnectionId {
        client: "198.18.0.1:40000".parse().expect("addr"),
        server: "198.18.0.10:7000".parse().expect("addr"),
    }
}

fn event(kind: EventKind) -> ConnectionEvent {
    ConnectionEvent {
        id: id(),
        at: Instant::from_millis(1),
        kind,
    }
}

fn handshake() -> Handshake {
    Handshake {
        client_mss: Some(1460),
        client_syn_window: 64240,
        server_syn_window: 65160,
        ..Handshake::without_options(SeqNumber(1000), SeqNumber(5000))
    }
}

fn record(events: &[EventKind]) -> ConnectionRecord {
    let mut record = ConnectionRecord::open(
        id(),
        Instant::ZERO,
        handshake(),
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    for kind in events {
        record.apply(&event(kind.clone())).expect("apply");
    }
    record
}

fn third_ack() -> EventKind {
    EventKind::ClientAck {
        offset: 0,
        seq_offset: 0,
        window: 64240,
        timestamps: None,
    }
}

fn server_ack(offset: u64) -> EventKind {
    EventKind::ServerAck {
        offset,
        window: 65160,
        timestamps: None,
    }
}

/// An established connection: the client sent "request" (acknowledged), the server "reply".
fn established() -> ConnectionRecord {
    record(&[
        third_ack(),
        EventKind::ClientData {
            offset: 0,
            bytes: b"request".to_vec(),
        },
        server_ack(7),
        EventKind::ServerData {
            offset: 0,
            bytes: b"reply".to_vec(),
        },
    ])
}

/// A shadow that has seen what `record` holds, with `written` client bytes written.
fn shadow_of(record: &ConnectionRecord, written: usize) -> ShadowSession {
    let mut sessions = super::super::shadow::ShadowSessions::new();
    sessions.on_record(record);
    let mut session = sessions.take(&id()).expect("session");
    session.client_written(written);
    session
}

fn plan(record: &ConnectionRecord, shadow: Option<&ShadowSession>) -> ConnectionPlan {
    plan_connection(&record.snapshot(), shadow, Some(ReplicaEnds::of(record)))
}

fn reason(plan: ConnectionPlan) -> ResetReason {
    match plan {
        ConnectionPlan::Reset { reason, snapshot } => {
            assert!(snapshot.send.bytes.is_empty() && snapshot.receive.bytes.is_empty());
            assert_eq!(snapshot.state, TcpState::Established);
            reason
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn a_protected_connection_is_restored_where_the_shadow_stands() {
    let record = established();
    let shadow = shadow_of(&record, 7);
    match plan(&record, Some(&shadow)) {
        ConnectionPlan::Restore { snapshot, start } => {
            assert_eq!(snapshot, record.snapshot());
            assert_eq!(
                start,
                ClientStart {
                    skip: 7,
                    client_from: 0,
                    server_from: 5
                }
            );
        }
        other => panic!("expected a restore, got {other:?}"),
    }
}

#[test]
fn client_bytes_the_shadow_holds_beyond_the_primarys_ack_are_acknowledged() {
    let record = record(&[
        third_ack(),
        EventKind::ClientData {
            offset: 0,
            bytes: b"request".to_vec(),
        },
        server_ack(3),
    ]);
    let shadow = shadow_of(&record, 7);
    let ConnectionPlan::Restore { snapshot, start } = plan(&record, Some(&shadow)) else {
        panic!("expected a restore");
    };
    assert_eq!(snapshot.receive.next, SeqNumber(1001 + 7));
    assert!(snapshot.receive.bytes.is_empty());
    assert_eq!((start.skip, start.client_from), (0, 7));
}

#[test]
fn every_reason_to_reset_is_named() {
    let record = established();
    assert_eq!(
        reason(plan(&record, None)),
        ResetReason::NoShadow("no shadow session".into())
    );
    let mut diverged = shadow_of(&record, 7);
    diverged.diverge(3);
    assert_eq!(
        reason(plan(&record, Some(&diverged))),
        ResetReason::Diverged { offset: 3 }
    );
    let mut unprotected = shadow_of(&record, 7);
    unprotected.unprotect("standby unreachable");
    assert_eq!(
        reason(plan(&record, Some(&unprotected))),
        ResetReason::NoShadow("standby unreachable".into())
    );
    let shadow = shadow_of(&record, 7);
    assert_eq!(
        reason(plan_connection(&record.snapshot(), Some(&shadow), None)),
        ResetReason::NoShadow("connection left the replica".into())
    );
    let mut unsafe_record = established();
    unsafe_record
        .apply(&event(EventKind::Unsafe(UnsafeReason::CaptureDrops {
            frames: 1,
        })))
        .expect("apply");
    assert!(matches!(
        reason(plan(&unsafe_record, Some(&shadow))),
        ResetReason::NotRestorable(_)
    ));
}

#[test]
fn a_shadow_behind_the_primarys_server_bytes_is_no_protection() {
    let record = established();
    let shadow = shadow_of(&record, 7);
    let mut more = established();
    more.apply(&event(EventKind::ServerData {
        offset: 5,
        bytes: b"!".to_vec(),
    }))
    .expect("apply");
    assert_eq!(
        reason(plan(&more, Some(&shadow))),
        ResetReason::NoShadow(
            "the shadow compared server bytes up to 5 but the primary sent up to 6".into()
        )
    );
}

#[test]
fn client_bytes_acknowledged_but_never_held_are_missing() {
    let record = established();
    let mut sessions = super::super::shadow::ShadowSessions::new();
    sessions.on_event(&event(EventKind::Opened(handshake())));
    let shadow = sessions.take(&id()).expect("session");
    let snapshot = record.snapshot();
    let ends = ReplicaEnds {
        client_acked: 7,
        client_end: 7,
        server_end: 0,
    };
    let mut empty = snapshot.clone();
    empty.receive.bytes.clear();
    assert_eq!(
        reason(plan_connection(&empty, Some(&shadow), Some(ends))),
        ResetReason::MissingClientBytes { from: 0, to: 7 }
    );
}

#[test]
fn a_handshake_waiting_for_its_third_ack_is_restored_established() {
    let record = record(&[]);
    let snapshot = record.snapshot();
    assert_eq!(snapshot.state, TcpState::SynReceived);
    let promoted = established_after_syn_ack(&snapshot).expect("promoted");
    assert_eq!(promoted.state, TcpState::Established);
    assert_eq!(promoted.restorability, Restorability::Restorable);
    // ISS+1 and IRS+1: what the client's third ACK and first data segment carry.
    assert_eq!(promoted.send.una, SeqNumber(5001));
    assert_eq!(promoted.receive.next, SeqNumber(1001));
    let shadow = shadow_of(&record, 0);
    assert!(matches!(
        plan(&record, Some(&shadow)),
        ConnectionPlan::Restore { .. }
    ));
    assert_eq!(established_after_syn_ack(&established().snapshot()), None);
    let mid = ConnectionRecord::open(
        id(),
        Instant::ZERO,
        Handshake::mid_stream(SeqNumber(1), SeqNumber(2)),
        ClientRetention::DropOnAck,
    );
    assert_eq!(established_after_syn_ack(&mid.snapshot()), None);
}

#[test]
fn a_failed_restore_becomes_a_reset_at_the_primarys_last_byte() {
    let snapshot = established().snapshot();
    let ConnectionPlan::Reset {
        snapshot: reset,
        reason,
    } = ConnectionPlan::restore_failed(&snapshot, &"EPERM")
    else {
        panic!("expected a reset");
    };
    assert_eq!(reason, ResetReason::RestoreFailed("EPERM".into()));
    assert_eq!(reset.send.una, snapshot.send.next());
    assert!(reset.send.bytes.is_empty() && !reset.send.fin && !reset.receive.fin);
}

#[test]
fn closed_connections_are_not_taken_over() {
    let mut closed = established();
    closed
        .apply(&event(EventKind::Closed(crate::CloseHow::Graceful)))
        .expect("apply");
    let kept = connections_to_take_over([closed.snapshot(), established().snapshot()]);
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].restorability, Restorability::Restorable);
}

fn steps_until_end(plan: &mut TakeoverPlan, now: Instant) -> Vec<TakeoverStep> {
    let mut steps = Vec::new();
    for _ in 0..100 {
        let step = plan.poll(now);
        let end = matches!(step, TakeoverStep::Done | TakeoverStep::Failed(_));
        steps.push(step);
        if end {
            break;
        }
    }
    steps
}

#[test]
fn the_takeover_runs_in_its_order() {
    let address: IpAddr = "198.18.0.10".parse().expect("addr");
    let snapshot = established().snapshot();
    let mut plan = TakeoverPlan::new(
        vec![snapshot.clone()],
        vec![address],
        24,
        Duration::from_millis(50),
    );
    let t0 = Instant::from_millis(1000);
    assert_eq!(
        plan.poll(t0),
        TakeoverStep::ResolveNeighbours(vec![id().client.ip()])
    );
    assert_eq!(plan.poll(t0), TakeoverStep::EngageLock);
    assert_eq!(
        plan.poll(t0),
        TakeoverStep::Claim {
            addresses: vec![address],
            prefix_len: 24
        }
    );
    plan.on_claimed(Ok(()));
    assert_eq!(plan.poll(t0), TakeoverStep::Connection(snapshot));
    let until = t0 + Duration::from_millis(50);
    assert_eq!(plan.poll(t0), TakeoverStep::AwaitAnswers { until });
    // The wait is bounded: at its end, re-seat whatever was learned.
    assert_eq!(plan.poll(until), TakeoverStep::Reseat);
    assert_eq!(plan.poll(until), TakeoverStep::ReleaseLock);
    assert_eq!(plan.poll(until), TakeoverStep::Announce(vec![address]));
    assert_eq!(plan.poll(until), TakeoverStep::Done);
}

#[test]
fn every_answer_seen_ends_the_wait_at_once() {
    let mut plan = TakeoverPlan::new(
        vec![established().snapshot()],
        vec![],
        24,
        Duration::from_secs(1),
    );
    let now = Instant::from_millis(5);
    let steps: Vec<_> = (0..5).map(|_| plan.poll(now)).collect();
    assert!(
        matches!(steps[4], TakeoverStep::AwaitAnswers { .. }),
        "{steps:?}"
    );
    plan.on_answers_seen();
    assert_eq!(plan.poll(now), TakeoverStep::Reseat);
}

#[test]
fn a_failed_claim_restores_nothing_and_releases_the_lock() {
    let address: IpAddr = "2001:db8::10".parse().expect("addr");
    let mut plan = TakeoverPlan::new(
        vec![established().snapshot()],
        vec![address],
        64,
        Duration::ZERO,
    );
    let now = Instant::ZERO;
    let _ = plan.poll(now);
    assert_eq!(plan.poll(now), TakeoverStep::EngageLock);
    assert!(matches!(plan.poll(now), TakeoverStep::Claim { .. }));
    plan.on_claimed(Err("EPERM".into()));
    assert_eq!(plan.remaining(), 0);
    assert_eq!(
        steps_until_end(&mut plan, now),
        vec![
            TakeoverStep::ReleaseLock,
            TakeoverStep::Failed("claiming the service address failed: EPERM".into())
        ]
    );
}

#[test]
fn no_connections_means_no_neighbours_to_resolve() {
    let mut plan = TakeoverPlan::new(vec![], vec![], 24, Duration::ZERO);
    let steps = steps_until_end(&mut plan, Instant::ZERO);
    assert_eq!(steps[0], TakeoverStep::EngageLock);
    assert_eq!(steps.last(), Some(&TakeoverStep::Done));
}
