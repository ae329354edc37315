//! The replica: fed the tracker's events it yields the tracker's snapshots; gaps, duplicates,
//! overlaps, resynchronisation, retention, and the postcard wire form of every message.

mod common;

use common::{CISN, Harness, SISN, Seg, config, id4, id6};
use cttm_core::event::{CloseHow, ConnectionEvent, EventKind, Side, UnsafeReason};
use cttm_core::record::{Applied, ApplyError, ClientRetention};
use cttm_core::replica::{Holding, ReplicaError};
use cttm_core::snapshot::{Restorability, TcpState};
use cttm_core::time::Instant;
use cttm_core::{
    ConnectionId, MessageV1, Replica, ReplicaConfig, ReplicationMessage, TrackerConfig,
};

fn c(o: u32) -> u32 {
    CISN + 1 + o
}

fn s(o: u32) -> u32 {
    SISN + 1 + o
}

/// A conversation on two connections: handshakes with options, data both ways with a
/// retransmission, reordering and an overlap, a capture hole on the IPv6 one, a half close
/// and a graceful close on the IPv4 one.
fn conversation() -> Vec<(u64, Seg)> {
    let a = id4();
    let b = id6();
    // Every segment of `a` after the handshake: (sequence offset, acknowledgement offset,
    // tsval, tsecr), with the window each side advertises there.
    let a_client = |seq: u32, ack: u32, tsval: u32, tsecr: u32| {
        Seg::client(a, c(seq)).ack(s(ack)).win(502).ts(tsval, tsecr)
    };
    let a_server = |seq: u32, ack: u32, tsval: u32, tsecr: u32| {
        Seg::server(a, s(seq)).ack(c(ack)).win(300).ts(tsval, tsecr)
    };
    vec![
        (
            0,
            Seg::client(a, CISN)
                .syn()
                .win(64_240)
                .mss(1460)
                .sack_ok()
                .ts(100, 0)
                .wscale(7),
        ),
        (1, Seg::client(b, CISN).syn().win(1000)),
        (
            2,
            Seg::server(a, SISN)
                .syn()
                .ack(c(0))
                .win(65_160)
                .mss(1400)
                .sack_ok()
                .ts(7000, 100)
                .wscale(9),
        ),
        (3, Seg::server(b, SISN).syn().ack(c(0)).win(2000)),
        (4, a_client(0, 0, 101, 7000)),
        (5, Seg::client(b, c(0)).ack(s(0)).win(1000)),
        (6, a_client(0, 0, 102, 7000).data(b"GET / HTTP/1.1\r\n")),
        (7, a_client(20, 0, 103, 7000).data(b"tail")),
        (8, a_client(16, 0, 103, 7000).data(b"\r\n\r\n")),
        (9, a_client(14, 0, 103, 7000).data(b"\r\n\r\n")),
        (10, a_server(0, 20, 7005, 103).data(b"HTTP/1.1 200 OK\r\n")),
        (11, a_server(17, 24, 7006, 103).data(b"body")),
        (12, a_client(24, 10, 104, 7006)),
        (13, Seg::client(b, c(0)).ack(s(0)).data(b"abc")),
        (14, Seg::client(b, c(6)).ack(s(0)).data(b"ghi")),
        (15, Seg::server(b, s(0)).ack(c(7)).data(b"reply")),
        (16, Seg::client(b, c(9)).ack(s(5)).data(b"jkl").fin()),
        (17, Seg::server(b, s(5)).ack(c(13))),
        (18, a_client(24, 21, 105, 7006).fin()),
        (19, a_server(21, 25, 7010, 105).data(b"late")),
        (20, a_client(25, 25, 106, 7010)),
        (21, a_server(25, 25, 7011, 106).fin()),
        (22, a_client(25, 26, 107, 7011)),
    ]
}

/// Plays the conversation through a tracker and a replica with the same retention, and checks
/// after every segment that both hold the same snapshots.
fn replica_matches_tracker(retention: ClientRetention) -> (Harness, Replica) {
    let mut cfg: TrackerConfig = config();
    cfg.client_retention = retention;
    let mut h = Harness::new(cfg);
    let mut replica = Replica::new(ReplicaConfig {
        client_retention: retention,
        max_connections: 10,
    });
    for (ms, seg) in conversation() {
        let before = h.events.len();
        h.feed(ms, &seg);
        for event in &h.events[before..] {
            replica
                .apply_event(event)
                .unwrap_or_else(|e| panic!("{event:?} rejected: {e}"));
        }
        assert_eq!(
            replica.snapshots(),
            h.tracker.snapshots(),
            "after the segment at {ms} ms"
        );
    }
    (h, replica)
}

#[test]
fn replica_fed_the_events_matches_the_tracker_dropping_acked_bytes() {
    let (h, replica) = replica_matches_tracker(ClientRetention::DropOnAck);
    let a = replica.snapshot(&id4()).unwrap();
    assert_eq!(a.state, TcpState::Closed);
    assert_eq!(a.restorability, Restorability::Closed);
    let b = replica.snapshot(&id6()).unwrap();
    assert_eq!(b.state, TcpState::CloseWait);
    assert_eq!(
        b.restorability,
        Restorability::Unsafe(UnsafeReason::CaptureHole {
            side: Side::Client,
            offset: 3
        })
    );
    assert!(h.tracker.snapshot(&id6()).unwrap().receive.bytes.is_empty());
}

#[test]
fn replica_fed_the_events_matches_the_tracker_retaining_client_bytes() {
    let (_, replica) = replica_matches_tracker(ClientRetention::UntilConsumed { limit: 1 << 20 });
    let a = replica.record(&id4()).unwrap();
    assert_eq!(
        a.stream(Side::Client).bytes_between(0, 24),
        b"GET / HTTP/1.1\r\n\r\n\r\ntail".to_vec()
    );
    assert_eq!(a.stream(Side::Client).fin(), Some(24));
    // Holdings are in sequence space: each FIN held counts one offset past its stream's
    // bytes (24 client bytes + FIN, 25 server bytes + FIN; 12 client bytes + FIN).
    assert_eq!(
        replica.holdings(),
        vec![
            Holding {
                id: id4(),
                client_end: 25,
                server_end: 26,
                closed: true
            },
            Holding {
                id: id6(),
                client_end: 13,
                server_end: 5,
                closed: false
            },
        ]
    );
}

/// The events of the conversation's IPv4 connection up to the server's first response.
fn opened_with_data() -> (Vec<ConnectionEvent>, Replica) {
    let mut h = Harness::new(config());
    for (ms, seg) in conversation().into_iter().filter(|(ms, _)| *ms <= 10) {
        h.feed(ms, &seg);
    }
    let events: Vec<_> = h.events.into_iter().filter(|e| e.id == id4()).collect();
    let mut replica = Replica::new(ReplicaConfig::default());
    for e in &events {
        replica.apply_event(e).unwrap();
    }
    (events, replica)
}

fn event(id: ConnectionId, ms: u64, kind: EventKind) -> ConnectionEvent {
    ConnectionEvent {
        id,
        at: Instant::from_millis(ms),
        kind,
    }
}

#[test]
fn a_gap_is_rejected_and_leaves_the_record_unchanged() {
    let (_, mut replica) = opened_with_data();
    let id = id4();
    let before = replica.record(&id).unwrap().clone();
    let end = before.stream(Side::Client).received_end();
    assert_eq!(end, 24);
    let gap = event(
        id,
        50,
        EventKind::ClientData {
            offset: end + 1,
            bytes: b"x".to_vec(),
        },
    );
    assert_eq!(
        replica.apply_event(&gap),
        Err(ReplicaError::Apply {
            id,
            source: ApplyError::Gap {
                side: Side::Client,
                expected: 24,
                got: 25
            }
        })
    );
    let server_gap = event(
        id,
        50,
        EventKind::ServerData {
            offset: 100,
            bytes: b"x".to_vec(),
        },
    );
    assert!(matches!(
        replica.apply_event(&server_gap),
        Err(ReplicaError::Apply {
            source: ApplyError::Gap {
                side: Side::Server,
                expected: 17,
                got: 100
            },
            ..
        })
    ));
    let fin_gap = event(
        id,
        50,
        EventKind::Fin {
            side: Side::Client,
            offset: 30,
        },
    );
    assert!(matches!(
        replica.apply_event(&fin_gap),
        Err(ReplicaError::Apply {
            source: ApplyError::Gap { .. },
            ..
        })
    ));
    let ack_beyond = event(
        id,
        50,
        EventKind::ClientAck {
            offset: 99,
            seq_offset: 24,
            window: 1,
            timestamps: None,
        },
    );
    assert!(matches!(
        replica.apply_event(&ack_beyond),
        Err(ReplicaError::Apply {
            source: ApplyError::AckBeyondData {
                side: Side::Server,
                acked: 99,
                held: 17
            },
            ..
        })
    ));
    assert_eq!(
        replica.record(&id).unwrap(),
        &before,
        "no rejected event changed the record"
    );
}

#[test]
fn duplicates_are_ignored_and_overlaps_apply_only_the_new_tail() {
    let (events, mut replica) = opened_with_data();
    let id = id4();
    let before = replica.record(&id).unwrap().clone();
    for e in &events {
        assert_eq!(replica.apply_event(e), Ok(Applied::Duplicate), "{e:?}");
    }
    assert_eq!(replica.record(&id).unwrap(), &before);
    let mut replica = Replica::new(ReplicaConfig::default());
    replica.apply_event(&events[0]).unwrap();
    let data = |offset, bytes: &[u8]| {
        event(
            id,
            30,
            EventKind::ClientData {
                offset,
                bytes: bytes.to_vec(),
            },
        )
    };
    assert_eq!(
        replica.apply_event(&data(0, b"hello")),
        Ok(Applied::Changed)
    );
    assert_eq!(
        replica.apply_event(&data(3, b"lo world")),
        Ok(Applied::Changed)
    );
    assert_eq!(
        replica.apply_event(&data(6, b"wor")),
        Ok(Applied::Duplicate)
    );
    let stream = replica.record(&id).unwrap().stream(Side::Client);
    assert_eq!(stream.received_end(), 11);
    assert_eq!(stream.bytes_between(0, 11), b"hello world");
}

#[test]
fn unknown_connections_and_conflicting_opens_are_errors() {
    let (events, mut replica) = opened_with_data();
    let stranger = id6();
    let e = event(
        stranger,
        1,
        EventKind::ClientData {
            offset: 0,
            bytes: b"?".to_vec(),
        },
    );
    assert_eq!(
        replica.apply_event(&e),
        Err(ReplicaError::Apply {
            id: stranger,
            source: ApplyError::Unknown
        })
    );
    let EventKind::Opened(mut hs) = events[0].kind.clone() else {
        panic!("first event is Opened")
    };
    hs.server_isn = hs.server_isn.add(1);
    let conflict = event(id4(), 60, EventKind::Opened(hs));
    assert_eq!(
        replica.apply_event(&conflict),
        Err(ReplicaError::Apply {
            id: id4(),
            source: ApplyError::Conflict
        })
    );
    // Once closed, an Opened with other ISNs is a new incarnation.
    replica
        .apply_event(&event(
            id4(),
            61,
            EventKind::Closed(CloseHow::Reset(Side::Client)),
        ))
        .unwrap();
    assert_eq!(replica.apply_event(&conflict), Ok(Applied::Changed));
    let snap = replica.snapshot(&id4()).unwrap();
    assert_eq!(snap.server_isn, hs.server_isn);
    assert_eq!(snap.state, TcpState::SynReceived);
}

#[test]
fn record_message_replaces_and_forget_drops() {
    let (_, mut tracker_side) = opened_with_data();
    let full = tracker_side.record(&id4()).unwrap().clone();
    // A replica that only saw the Opened event is resynchronised with the whole record.
    let (events, _) = opened_with_data();
    let mut replica = Replica::new(ReplicaConfig::default());
    replica.apply_event(&events[0]).unwrap();
    assert_ne!(replica.record(&id4()).unwrap(), &full);
    let msg = ReplicationMessage::V1(MessageV1::Record(Box::new(full.clone())));
    assert_eq!(replica.apply_message(&msg), Ok(Applied::Changed));
    assert_eq!(replica.record(&id4()).unwrap(), &full);
    assert_eq!(replica.snapshot(&id4()), tracker_side.snapshot(&id4()));
    // The events after the resynchronisation apply as usual.
    let next = event(
        id4(),
        70,
        EventKind::ClientData {
            offset: 24,
            bytes: b"more".to_vec(),
        },
    );
    assert_eq!(replica.apply_event(&next), Ok(Applied::Changed));
    assert_eq!(tracker_side.apply_event(&next), Ok(Applied::Changed));
    assert_eq!(replica.snapshots(), tracker_side.snapshots());

    let forget = ReplicationMessage::V1(MessageV1::Forget(id4()));
    assert_eq!(replica.apply_message(&forget), Ok(Applied::Changed));
    assert_eq!(replica.apply_message(&forget), Ok(Applied::Duplicate));
    assert!(replica.snapshot(&id4()).is_none());
    assert!(replica.is_empty());

    let beat = ReplicationMessage::V1(MessageV1::Heartbeat {
        sent_at: Instant::from_millis(99),
    });
    assert_eq!(replica.apply_message(&beat), Ok(Applied::Changed));
    assert_eq!(replica.last_heartbeat(), Some(Instant::from_millis(99)));
    assert_eq!(beat.version(), cttm_core::PROTOCOL_VERSION);
}

#[test]
fn until_consumed_keeps_client_bytes_until_consumed_and_enforces_the_limit() {
    let id = id4();
    let (events, _) = opened_with_data();
    let mut replica = Replica::new(ReplicaConfig {
        client_retention: ClientRetention::UntilConsumed { limit: 30 },
        max_connections: 4,
    });
    for e in &events {
        replica.apply_event(e).unwrap();
    }
    // 24 client bytes held, the server acknowledged 20 of them.
    let snap = replica.snapshot(&id).unwrap();
    assert_eq!(snap.receive.bytes, b"GET / HTTP/1.1\r\n\r\n\r\n");
    assert_eq!(snap.receive.first_seq(), cttm_core::SeqNumber(c(0)));
    assert_eq!(
        replica
            .record(&id)
            .unwrap()
            .stream(Side::Client)
            .retained_len(),
        24
    );
    replica.consume_client(&id, 16);
    let snap = replica.snapshot(&id).unwrap();
    assert_eq!(snap.receive.bytes, b"\r\n\r\n");
    assert_eq!(snap.receive.first_seq(), cttm_core::SeqNumber(c(16)));
    assert_eq!(snap.restorability, Restorability::Restorable);
    // 8 retained + 22 = 30: at the limit, still fine.
    let more = event(
        id,
        40,
        EventKind::ClientData {
            offset: 24,
            bytes: vec![b'x'; 22],
        },
    );
    replica.apply_event(&more).unwrap();
    assert_eq!(
        replica.snapshot(&id).unwrap().restorability,
        Restorability::Restorable
    );
    // One byte more is past the limit: the bytes are released and the connection is unsafe.
    let over = event(
        id,
        41,
        EventKind::ClientData {
            offset: 46,
            bytes: vec![b'y'],
        },
    );
    assert_eq!(replica.apply_event(&over), Ok(Applied::Changed));
    let record = replica.record(&id).unwrap();
    assert_eq!(record.stream(Side::Client).retained_len(), 0);
    assert_eq!(record.stream(Side::Client).received_end(), 47);
    assert_eq!(
        replica.snapshot(&id).unwrap().restorability,
        Restorability::Unsafe(UnsafeReason::RetentionExceeded { side: Side::Client })
    );
    // The same through the tracker: it emits nothing for it, its record just says so.
    let mut cfg = config();
    cfg.client_retention = ClientRetention::UntilConsumed { limit: 10 };
    let mut h = Harness::new(cfg);
    common::plain_handshake(&mut h, id);
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(&[7; 11]));
    assert_eq!(
        h.tracker.snapshot(&id).unwrap().restorability,
        Restorability::Unsafe(UnsafeReason::RetentionExceeded { side: Side::Client })
    );
}

#[test]
fn a_full_replica_refuses_new_connections_until_one_closes() {
    let (events, _) = opened_with_data();
    let mut replica = Replica::new(ReplicaConfig {
        client_retention: ClientRetention::DropOnAck,
        max_connections: 1,
    });
    replica.apply_event(&events[0]).unwrap();
    let EventKind::Opened(hs) = events[0].kind.clone() else {
        panic!()
    };
    let other = event(id6(), 5, EventKind::Opened(hs));
    assert_eq!(replica.apply_event(&other), Err(ReplicaError::Full(1)));
    replica
        .apply_event(&event(id4(), 6, EventKind::Closed(CloseHow::Graceful)))
        .unwrap();
    assert_eq!(replica.apply_event(&other), Ok(Applied::Changed));
    assert_eq!(replica.len(), 1);
    assert!(replica.snapshot(&id4()).is_none());
}

fn postcard_round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = postcard::to_stdvec(value).expect("serializes");
    postcard::from_bytes(&bytes).expect("deserializes")
}

#[test]
fn every_event_and_message_survives_postcard_unchanged() {
    let (h, replica) = replica_matches_tracker(ClientRetention::UntilConsumed { limit: 1 << 20 });
    let mut kinds_seen = std::collections::BTreeSet::new();
    let mut via_wire = Replica::new(ReplicaConfig {
        client_retention: ClientRetention::UntilConsumed { limit: 1 << 20 },
        max_connections: 10,
    });
    for e in &h.events {
        kinds_seen.insert(
            format!("{:?}", e.kind)
                .split([' ', '(', '{'])
                .next()
                .unwrap()
                .to_string(),
        );
        assert_eq!(&postcard_round_trip(e), e);
        let msg = ReplicationMessage::V1(MessageV1::Event(e.clone()));
        let back = postcard_round_trip(&msg);
        assert_eq!(back, msg);
        via_wire.apply_message(&back).unwrap();
    }
    for kind in [
        "Opened",
        "ClientData",
        "ServerData",
        "ClientAck",
        "ServerAck",
        "Fin",
        "Unsafe",
        "Closed",
    ] {
        assert!(
            kinds_seen.contains(kind),
            "the conversation has no {kind} event: {kinds_seen:?}"
        );
    }
    assert_eq!(via_wire.snapshots(), replica.snapshots());
    for record in replica.records() {
        let msg = ReplicationMessage::V1(MessageV1::Record(Box::new(record.clone())));
        assert_eq!(postcard_round_trip(&msg), msg);
    }
    for snap in replica.snapshots() {
        assert_eq!(postcard_round_trip(&snap), snap);
    }
    for msg in [
        ReplicationMessage::V1(MessageV1::Forget(id6())),
        ReplicationMessage::V1(MessageV1::Heartbeat {
            sent_at: Instant::from_micros(u64::MAX),
        }),
    ] {
        assert_eq!(postcard_round_trip(&msg), msg);
    }
    // Garbage does not deserialize into a message (and does not panic).
    assert!(postcard::from_bytes::<ReplicationMessage>(&[7, 0, 0]).is_err());
    assert!(postcard::from_bytes::<ReplicationMessage>(&[]).is_err());
}
