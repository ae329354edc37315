//! One test per checkpoint rule: crafted checkpoints and acknowledgements, exact outcomes.

use super::*;
use crate::commit::{BackupHolds, CommitRequirement, OutputCommit};
use crate::event::{ConnectionEvent, EventKind};
use crate::message::MessageV1;
use crate::record::{Applied, ClientRetention, ConnectionRecord};
use crate::replica::{Replica, ReplicaConfig, ReplicaError};
use crate::replication::testing::{acknowledge, client_data, ev, id, opened};
use crate::replication::{AckedOffsets, Primary, PrimaryConfig, Submitted};
use crate::{ReplicationMessage, Side};

fn checkpoint(client_consumed: u64, server_produced: u64, state: &[u8], at_ms: u64) -> Checkpoint {
    Checkpoint {
        id: id(1),
        client_consumed,
        server_produced,
        state: state.to_vec(),
        output: Vec::new(),
        at: Instant::from_millis(at_ms),
    }
}

fn message(c: &Checkpoint) -> ReplicationMessage {
    MessageV1::Checkpoint(c.clone()).into()
}

fn server_data(offset: u64, len: usize) -> ReplicationMessage {
    ev(
        1,
        EventKind::ServerData {
            offset,
            bytes: vec![9; len],
        },
    )
}

/// A backup replica holding connection 1 with 100 client bytes and 40 server bytes.
fn replica() -> Replica {
    let mut r = Replica::new(ReplicaConfig::default());
    for m in [opened(1), client_data(1, 0, 100), server_data(0, 40)] {
        r.apply_message(&m).unwrap();
    }
    r
}

#[test]
fn a_later_checkpoint_replaces_the_one_held() {
    let mut r = replica();
    let first = checkpoint(10, 20, b"one", 5);
    let second = checkpoint(30, 40, b"two", 6);
    assert_eq!(r.apply_message(&message(&first)), Ok(Applied::Changed));
    assert_eq!(r.record(&id(1)).unwrap().checkpoint(), Some(&first));
    assert_eq!(r.apply_message(&message(&second)), Ok(Applied::Changed));
    assert_eq!(r.record(&id(1)).unwrap().checkpoint(), Some(&second));
}

#[test]
fn a_checkpoint_not_later_than_the_one_held_is_ignored() {
    let mut r = replica();
    let held = checkpoint(30, 40, b"two", 6);
    r.apply_message(&message(&held)).unwrap();
    // Stale (earlier) and equal (a duplicate, even with other contents) are both ignored.
    let stale = checkpoint(10, 20, b"one", 5);
    let same_time = checkpoint(50, 60, b"other", 6);
    assert_eq!(r.apply_message(&message(&stale)), Ok(Applied::Duplicate));
    assert_eq!(
        r.apply_message(&message(&same_time)),
        Ok(Applied::Duplicate)
    );
    assert_eq!(r.apply_message(&message(&held)), Ok(Applied::Duplicate));
    assert_eq!(r.record(&id(1)).unwrap().checkpoint(), Some(&held));
    assert_eq!(
        r.record(&id(1))
            .unwrap()
            .stream(Side::Client)
            .retained_from(),
        30
    );
}

#[test]
fn a_later_checkpoint_with_offsets_going_backwards_is_refused() {
    let mut r = replica();
    let held = checkpoint(30, 40, b"two", 6);
    r.apply_message(&message(&held)).unwrap();
    let server_back = checkpoint(30, 39, b"three", 7);
    assert_eq!(
        r.apply_message(&message(&server_back)),
        Err(ReplicaError::Checkpoint(
            CheckpointError::OffsetsBackwards {
                id: id(1),
                held_client: 30,
                held_server: 40,
                got_client: 30,
                got_server: 39,
            }
        ))
    );
    let client_back = checkpoint(29, 40, b"three", 7);
    assert_eq!(
        client_back.follows(Some(&held)),
        Err(CheckpointError::OffsetsBackwards {
            id: id(1),
            held_client: 30,
            held_server: 40,
            got_client: 29,
            got_server: 40,
        })
    );
    assert_eq!(r.record(&id(1)).unwrap().checkpoint(), Some(&held));
    // Equal offsets later on are fine: the state may change without I/O.
    assert_eq!(
        checkpoint(30, 40, b"four", 8).follows(Some(&held)),
        Ok(CheckpointOutcome::Replaced)
    );
}

#[test]
fn a_checkpoint_of_an_unknown_connection_is_refused() {
    let mut r = Replica::new(ReplicaConfig::default());
    assert_eq!(
        r.apply_message(&message(&checkpoint(0, 0, b"", 1))),
        Err(ReplicaError::Apply {
            id: id(1),
            source: crate::record::ApplyError::Unknown,
        })
    );
}

#[test]
fn a_checkpoint_releases_the_client_bytes_it_consumed() {
    let mut r = replica();
    let client = |r: &Replica| {
        let s = r.record(&id(1)).unwrap().stream(Side::Client);
        (s.retained_from(), s.retained_len())
    };
    assert_eq!(client(&r), (0, 100));
    r.apply_message(&message(&checkpoint(60, 40, b"", 5)))
        .unwrap();
    assert_eq!(client(&r), (60, 40));
    // Beyond the bytes held, it releases what is held and no more.
    r.apply_message(&message(&checkpoint(150, 40, b"", 6)))
        .unwrap();
    assert_eq!(client(&r), (100, 0));
}

#[test]
fn a_record_keeps_its_checkpoint_through_serde() {
    let mut record = ConnectionRecord::open(
        id(1),
        Instant::from_millis(1),
        match opened(1) {
            ReplicationMessage::V1(MessageV1::Event(ConnectionEvent {
                kind: EventKind::Opened(h),
                ..
            })) => h,
            _ => unreachable!("opened() is an Opened event"),
        },
        ClientRetention::UntilConsumed { limit: 1 << 20 },
    );
    let held = checkpoint(0, 0, b"state", 3);
    assert_eq!(record.apply_checkpoint(&held), Ok(Applied::Changed));
    let bytes = postcard::to_stdvec(&record).unwrap();
    let back: ConnectionRecord = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.checkpoint(), Some(&held));
    assert_eq!(back, record);
    // The replication message carrying the whole record keeps it too.
    let m: ReplicationMessage = MessageV1::Record(Box::new(record)).into();
    let bytes = postcard::to_stdvec(&m).unwrap();
    assert_eq!(
        postcard::from_bytes::<ReplicationMessage>(&bytes).unwrap(),
        m
    );
}

#[test]
fn the_primary_numbers_checkpoints_and_learns_which_one_the_backup_holds() {
    let mut p = Primary::new(PrimaryConfig::default(), 3);
    let now = Instant::ZERO;
    p.submit(opened(1), now).unwrap();
    p.submit(server_data(0, 40), now).unwrap();
    assert_eq!(
        p.submit(message(&checkpoint(0, 40, b"s", 5)), now),
        Ok(Submitted::Queued(3))
    );
    assert_eq!(
        p.mirror()
            .record(&id(1))
            .unwrap()
            .checkpoint()
            .map(|c| c.server_produced),
        Some(40)
    );
    let ack = |p: &mut Primary, applied| acknowledge(p, 3, applied, now);
    ack(&mut p, 2);
    assert_eq!(
        p.acknowledged(&id(1)),
        Some(AckedOffsets {
            client: 0,
            server: 40,
            checkpoint: None
        })
    );
    ack(&mut p, 3);
    assert_eq!(
        p.acknowledged(&id(1)),
        Some(AckedOffsets {
            client: 0,
            server: 40,
            checkpoint: Some(40)
        })
    );
    // A checkpoint going backwards is the caller's inconsistency: not queued.
    assert!(p.submit(message(&checkpoint(0, 10, b"s", 6)), now).is_err());
    assert_eq!(p.last_seq(), 3);
}

fn holds(server: u64, checkpoint: Option<u64>) -> Option<BackupHolds> {
    Some(BackupHolds {
        client: 0,
        server,
        checkpoint,
    })
}

#[test]
fn the_gate_holds_a_checkpointed_segment_until_a_checkpoint_covers_it() {
    let requirement = CommitRequirement::Offsets {
        client: 0,
        server: 100,
        checkpoint: Some(100),
    };
    let mut gate = OutputCommit::new();
    gate.hold(1u32, id(1), requirement);
    // Bytes held but no checkpoint, or one short of the segment's end: held.
    assert_eq!(gate.release(|_| holds(100, None)), Vec::<u32>::new());
    assert_eq!(gate.release(|_| holds(100, Some(99))), Vec::<u32>::new());
    // A covering checkpoint but the bytes not yet held: still held (today's rule).
    assert_eq!(gate.release(|_| holds(99, Some(100))), Vec::<u32>::new());
    assert_eq!(gate.release(|_| holds(100, Some(100))), vec![1]);
    // The FIN is not the checkpoint's business: a checkpoint counts bytes.
    let fin = CommitRequirement::Offsets {
        client: 0,
        server: 101,
        checkpoint: Some(100),
    };
    assert!(fin.is_met_by(holds(101, Some(100))));
}

#[test]
fn a_connection_without_checkpoints_is_gated_as_before() {
    let requirement = CommitRequirement::Offsets {
        client: 0,
        server: 100,
        checkpoint: None,
    };
    assert!(!requirement.is_met_by(holds(99, None)));
    assert!(requirement.is_met_by(holds(100, None)));
    // Whatever checkpoint the backup may hold does not matter.
    assert!(requirement.is_met_by(holds(100, Some(0))));
    assert!(!requirement.is_met_by(None));
}

#[test]
fn a_checkpoint_carries_its_write_and_the_captured_copy_is_not_shipped_again() {
    let mut p = Primary::new(PrimaryConfig::default(), 3);
    let now = Instant::ZERO;
    p.submit(opened(1), now).unwrap();
    p.submit(server_data(0, 40), now).unwrap();
    let with_write = Checkpoint {
        output: vec![9; 10],
        ..checkpoint(0, 50, b"s", 5)
    };
    assert_eq!(
        p.submit(message(&with_write), now),
        Ok(Submitted::Queued(3))
    );
    // The primary's copy (so the backup's) holds the write before the capture sees it.
    let server_end = |p: &Primary| {
        p.mirror()
            .record(&id(1))
            .unwrap()
            .stream(Side::Server)
            .received_end()
    };
    assert_eq!(server_end(&p), 50);
    // The capture's copy of the write adds nothing: not queued. Bytes past it are.
    assert_eq!(p.submit(server_data(40, 10), now), Ok(Submitted::Skipped));
    assert_eq!(p.submit(server_data(40, 12), now), Ok(Submitted::Queued(4)));
    assert_eq!(server_end(&p), 52);
    // Without a checkpoint a duplicate is shipped as before.
    p.submit(opened(2), now).unwrap();
    let duplicate = ev(
        2,
        EventKind::ServerData {
            offset: 0,
            bytes: vec![],
        },
    );
    assert!(matches!(p.submit(duplicate, now), Ok(Submitted::Queued(_))));
}
