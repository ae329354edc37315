//! One test per rule of resuming a checkpointed connection: crafted records, exact plans.

use super::*;
use crate::event::{ConnectionEvent, EventKind, Handshake, UnsafeReason};
use crate::record::ClientRetention;
use crate::{ConnectionId, Instant};

fn id() -> ConnectionId {
    ConnectionId {
        client: "198.18.0.1:40000".parse().expect("addr"),
        server: "198.18.0.10:7000".parse().expect("addr"),
    }
}

fn apply(record: &mut ConnectionRecord, kind: EventKind) {
    let event = ConnectionEvent {
        id: id(),
        at: Instant::from_millis(1),
        kind,
    };
    record.apply(&event).expect("apply");
}

fn client_data(offset: u64, bytes: &[u8]) -> EventKind {
    EventKind::ClientData {
        offset,
        bytes: bytes.to_vec(),
    }
}

fn server_data(offset: u64, bytes: &[u8]) -> EventKind {
    EventKind::ServerData {
        offset,
        bytes: bytes.to_vec(),
    }
}

fn client_ack(offset: u64) -> EventKind {
    EventKind::ClientAck {
        offset,
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

fn checkpoint(consumed: u64, produced: u64, output: &[u8], at_ms: u64) -> Checkpoint {
    Checkpoint {
        id: id(),
        client_consumed: consumed,
        server_produced: produced,
        state: format!("replies={at_ms}").into_bytes(),
        output: output.to_vec(),
        at: Instant::from_millis(at_ms),
    }
}

/// An established connection: the client sent "one\ntwo\n" (the primary acknowledged
/// "one\n"), the application consumed "one\n" and checkpointed before writing "A1\n",
/// which the client has not acknowledged.
fn checkpointed() -> ConnectionRecord {
    let mut record = ConnectionRecord::open(
        id(),
        Instant::ZERO,
        Handshake::without_options(SeqNumber(1000), SeqNumber(5000)),
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    apply(&mut record, client_ack(0));
    apply(&mut record, client_data(0, b"one\ntwo\n"));
    apply(&mut record, server_ack(4));
    record
        .apply_checkpoint(&checkpoint(4, 3, b"A1\n", 1))
        .expect("checkpoint");
    record
}

fn resumed(plan: ConnectionPlan) -> ResumePlan {
    match plan {
        ConnectionPlan::Resume(plan) => *plan,
        other => panic!("expected a resume, got {other:?}"),
    }
}

fn reset_reason(plan: ConnectionPlan) -> ResetReason {
    match plan {
        ConnectionPlan::Reset { reason, snapshot } => {
            assert!(snapshot.send.bytes.is_empty() && snapshot.receive.bytes.is_empty());
            reason
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[test]
fn the_socket_receives_from_the_checkpoint_and_sends_the_checkpointed_write() {
    let record = checkpointed();
    let plan = resumed(plan_resume(&record));
    assert_eq!(plan.checkpoint, *record.checkpoint().expect("held"));
    assert_eq!(plan.discarded, 0);
    let s = &plan.snapshot;
    // Every client byte after the consumed ones, acknowledged by the restored socket.
    assert_eq!(s.receive.bytes, b"two\n");
    assert_eq!(s.receive.next, SeqNumber(1001 + 8));
    // The write the checkpoint carried, none of it acknowledged by the client yet.
    assert_eq!(s.send.bytes, b"A1\n");
    assert_eq!(s.send.una, SeqNumber(5001));
    assert!(!s.send.fin);
    assert_eq!(s.state, TcpState::Established);
}

#[test]
fn server_bytes_after_the_checkpoint_are_discarded_with_a_fin_after_them() {
    let mut record = checkpointed();
    // Captured after the checkpoint, never covered by one (so never released): a second
    // reply and the FIN after it.
    apply(&mut record, server_data(0, b"A1\nB2\n"));
    apply(
        &mut record,
        EventKind::Fin {
            side: Side::Server,
            offset: 6,
        },
    );
    let plan = resumed(plan_resume(&record));
    assert_eq!(plan.discarded, 3);
    assert_eq!(plan.snapshot.send.bytes, b"A1\n");
    assert!(!plan.snapshot.send.fin);
    assert_eq!(plan.snapshot.state, TcpState::Established);
}

#[test]
fn a_fin_right_after_the_checkpointed_write_is_kept() {
    let mut record = checkpointed();
    apply(
        &mut record,
        EventKind::Fin {
            side: Side::Server,
            offset: 3,
        },
    );
    let plan = resumed(plan_resume(&record));
    assert_eq!(plan.discarded, 0);
    assert!(plan.snapshot.send.fin);
    assert_eq!(plan.snapshot.state, TcpState::FinWait1);
}

#[test]
fn bytes_the_client_acknowledged_leave_the_send_queue() {
    let mut record = checkpointed();
    apply(&mut record, client_ack(2));
    let plan = resumed(plan_resume(&record));
    assert_eq!(plan.snapshot.send.bytes, b"\n");
    assert_eq!(plan.snapshot.send.una, SeqNumber(5003));
}

#[test]
fn a_client_ahead_of_the_checkpoint_is_reset() {
    let mut record = checkpointed();
    // Released without a covering checkpoint (degraded), and acknowledged.
    apply(&mut record, server_data(3, b"B2\n"));
    apply(&mut record, client_ack(5));
    assert_eq!(
        reset_reason(plan_resume(&record)),
        ResetReason::ClientAheadOfCheckpoint {
            checkpoint: 3,
            acked: 5
        }
    );
}

#[test]
fn a_shadow_consuming_does_not_release_a_checkpointed_connections_bytes() {
    let mut record = checkpointed();
    // A shadow session (a standby configured beside the application) consumed further
    // than the application's state reflects: the bytes stay for the application.
    record.consume_client(6);
    let plan = resumed(plan_resume(&record));
    assert_eq!(plan.snapshot.receive.bytes, b"two\n");
}

#[test]
fn an_unsafe_connection_is_reset_and_one_without_checkpoint_too() {
    let mut record = checkpointed();
    apply(
        &mut record,
        EventKind::Unsafe(UnsafeReason::CaptureDrops { frames: 1 }),
    );
    assert!(matches!(
        reset_reason(plan_resume(&record)),
        ResetReason::NotRestorable(_)
    ));
    let plain = ConnectionRecord::open(
        id(),
        Instant::ZERO,
        Handshake::without_options(SeqNumber(1), SeqNumber(2)),
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    assert!(matches!(
        plan_resume(&plain),
        ConnectionPlan::Reset { .. } | ConnectionPlan::Abandon(_)
    ));
}

#[test]
fn a_checkpoint_whose_output_does_not_continue_the_stream_is_refused() {
    let mut record = checkpointed();
    // 3 server bytes are held: an output starting at 5 leaves a hole.
    assert_eq!(
        record.apply_checkpoint(&checkpoint(4, 7, b"XY", 2)),
        Err(CheckpointError::OutputGap {
            id: id(),
            output_from: 5,
            held_end: 3
        })
    );
    assert_eq!(
        record.apply_checkpoint(&checkpoint(4, 1, b"XY", 2)),
        Err(CheckpointError::OutputBeforeStart {
            id: id(),
            server_produced: 1,
            len: 2
        })
    );
    // The record kept its checkpoint and its bytes.
    assert_eq!(
        record.checkpoint().map(|c| c.at),
        Some(Instant::from_millis(1))
    );
    assert_eq!(record.stream(Side::Server).received_end(), 3);
}
