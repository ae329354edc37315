//! Property tests of the core: the tracker and the replica against generated conversations
//! whose ground truth is known (`cttm_tests::conversation`), and robustness against
//! arbitrary and mutated frames.

use cttm_core::event::ConnectionEvent;
use cttm_core::snapshot::{ConnectionSnapshot, Restorability};
use cttm_core::{
    ConnectionId, EventKind, Instant, LinkType, MessageV1, Replica, ReplicaConfig,
    ReplicationMessage, Tracker, TrackerConfig,
};
use cttm_tests::conversation::{
    ConnectionTruth, FaultConfig, FaultCounts, GeneratedCapture, GeneratorConfig,
    conversation_strategy, generate,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::HashMap;

/// The tracker settings of these tests: the replica's default retention, so tracker and
/// replica snapshots are comparable and the receive queue holds every client byte.
fn tracker_config(capture: &GeneratedCapture) -> TrackerConfig {
    let mut config = TrackerConfig::new(capture.services.clone());
    config.client_retention = ReplicaConfig::default().client_retention;
    config
}

/// Feeds every frame to a tracker; returns it with the events it emitted.
fn track(capture: &GeneratedCapture, config: TrackerConfig) -> (Tracker, Vec<ConnectionEvent>) {
    let mut tracker = Tracker::new(config);
    let mut events = Vec::new();
    for (at, link, frame) in &capture.frames {
        tracker
            .on_frame(*at, *link, frame, &mut events)
            .unwrap_or_else(|e| panic!("a generated frame did not parse: {e}"));
    }
    (tracker, events)
}

/// Per connection, the client's and the server's byte streams.
type Streams = HashMap<ConnectionId, (Vec<u8>, Vec<u8>)>;

/// Both streams of every connection, rebuilt from the events; checks that data events are
/// in order without gaps or overlaps.
fn streams(events: &[ConnectionEvent]) -> Result<Streams, TestCaseError> {
    let mut streams = Streams::new();
    for e in events {
        let (stream, offset, bytes) = match &e.kind {
            EventKind::ClientData { offset, bytes } => {
                (&mut streams.entry(e.id).or_default().0, *offset, bytes)
            }
            EventKind::ServerData { offset, bytes } => {
                (&mut streams.entry(e.id).or_default().1, *offset, bytes)
            }
            _ => continue,
        };
        prop_assert_eq!(
            offset,
            stream.len() as u64,
            "{}: data event not contiguous",
            e.id
        );
        stream.extend_from_slice(bytes);
    }
    Ok(streams)
}

fn expected_restorability(truth: &ConnectionTruth) -> Restorability {
    if truth.closed.is_some() {
        Restorability::Closed
    } else if truth.endpoint.state == cttm_core::TcpState::SynReceived {
        Restorability::HandshakeIncomplete
    } else {
        Restorability::Restorable
    }
}

/// Compares a snapshot with the ground truth, field by field.
fn check_snapshot(
    snapshot: &ConnectionSnapshot,
    truth: &ConnectionTruth,
) -> Result<(), TestCaseError> {
    let id = truth.id;
    let want = &truth.endpoint;
    prop_assert_eq!(snapshot.id, id);
    prop_assert_eq!(snapshot.state, want.state, "{}: state", id);
    prop_assert_eq!(
        snapshot.restorability,
        expected_restorability(truth),
        "{}: restorability",
        id
    );
    prop_assert_eq!(snapshot.client_isn, want.client_isn, "{}: client ISN", id);
    prop_assert_eq!(snapshot.server_isn, want.server_isn, "{}: server ISN", id);
    prop_assert_eq!(snapshot.options, want.options, "{}: options", id);
    prop_assert_eq!(snapshot.send.una, want.send_una, "{}: send.una", id);
    prop_assert!(
        snapshot.send.bytes == want.send_unacked,
        "{}: send.bytes: {} bytes, expected {}",
        id,
        snapshot.send.bytes.len(),
        want.send_unacked.len()
    );
    prop_assert_eq!(snapshot.send.unsent, 0, "{}: send.unsent", id);
    prop_assert_eq!(snapshot.send.fin, want.send_fin, "{}: send.fin", id);
    prop_assert_eq!(
        snapshot.receive.next,
        want.receive_next,
        "{}: receive.next",
        id
    );
    prop_assert_eq!(
        snapshot.receive.fin,
        want.receive_fin,
        "{}: receive.fin",
        id
    );
    prop_assert!(
        snapshot.receive.bytes == truth.client_stream,
        "{}: receive.bytes: {} bytes, expected {}",
        id,
        snapshot.receive.bytes.len(),
        truth.client_stream.len()
    );
    prop_assert_eq!(snapshot.window, want.window, "{}: window", id);
    match (&snapshot.clock, &want.clock) {
        (None, None) => {}
        (Some(got), Some(want)) => {
            prop_assert_eq!(got.server_tsval, want.server_tsval, "{}: server TSval", id);
            prop_assert_eq!(got.client_tsval, want.client_tsval, "{}: client TSval", id);
            prop_assert!(
                (want.server_tsval_first_seen..=want.server_tsval_last_seen)
                    .contains(&got.observed_at),
                "{}: server TSval observed at {}, it was on the wire from {} to {}",
                id,
                got.observed_at,
                want.server_tsval_first_seen,
                want.server_tsval_last_seen
            );
        }
        (got, want) => prop_assert!(false, "{}: clock {:?}, expected {:?}", id, got, want),
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// (a) The tracker's reconstructed streams are what the server received and sent.
    #[test]
    fn reconstructed_streams_equal_what_the_server_received_and_sent(case in conversation_strategy(4, 300)) {
        let capture = case.generate();
        // The default settings (client bytes dropped once acknowledged) emit the same events.
        let (_, events) = track(&capture, TrackerConfig::new(capture.services.clone()));
        let streams = streams(&events)?;
        for truth in &capture.truths {
            let empty = (Vec::new(), Vec::new());
            let (client, server) = streams.get(&truth.id).unwrap_or(&empty);
            prop_assert!(
                *client == truth.client_stream,
                "{}: client stream of {} bytes, the server received {}",
                truth.id, client.len(), truth.client_stream.len()
            );
            prop_assert!(
                *server == truth.server_stream,
                "{}: server stream of {} bytes, the server sent {}",
                truth.id, server.len(), truth.server_stream.len()
            );
        }
    }

    /// (b) The tracker's snapshot of every connection is the server socket's state.
    #[test]
    fn snapshots_equal_the_server_socket_state(case in conversation_strategy(4, 300)) {
        let capture = case.generate();
        let (tracker, _) = track(&capture, tracker_config(&capture));
        for truth in &capture.truths {
            let snapshot = tracker.snapshot(&truth.id);
            if !truth.syn_ack_sent {
                prop_assert!(snapshot.is_none(), "{}: tracked without a SYN-ACK", truth.id);
                continue;
            }
            let snapshot = snapshot.ok_or_else(|| TestCaseError::fail(format!("{}: not tracked", truth.id)))?;
            check_snapshot(&snapshot, truth)?;
        }
        prop_assert_eq!(tracker.stats().malformed, 0);
        prop_assert_eq!(tracker.stats().unsafe_connections, 0, "no capture hole can occur here");
    }

    /// (c) A replica fed the tracker's events through postcard yields the tracker's snapshots.
    #[test]
    fn replica_fed_serialised_events_yields_the_tracker_snapshots(case in conversation_strategy(4, 300)) {
        let capture = case.generate();
        let (tracker, events) = track(&capture, tracker_config(&capture));
        let mut replica = Replica::new(ReplicaConfig::default());
        for event in events {
            let message = ReplicationMessage::V1(MessageV1::Event(event));
            let bytes = postcard::to_stdvec(&message).expect("every message serialises");
            let decoded: ReplicationMessage = postcard::from_bytes(&bytes).expect("every message deserialises");
            prop_assert_eq!(&decoded, &message);
            replica.apply_message(&decoded).map_err(|e| TestCaseError::fail(format!("replica rejected {message:?}: {e}")))?;
        }
        prop_assert_eq!(replica.snapshots(), tracker.snapshots());
    }

    /// (d) Arbitrary bytes never panic the parser or the tracker.
    #[test]
    fn arbitrary_bytes_never_panic(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..20),
        link in prop_oneof![Just(LinkType::Ethernet), Just(LinkType::LinuxSll), Just(LinkType::RawIp)],
    ) {
        let services = generate(&GeneratorConfig { connections: 1, target_frames: 8, ..GeneratorConfig::default() }, 0).services;
        let mut tracker = Tracker::new(TrackerConfig::new(services));
        let mut events = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let _ = cttm_core::wire::parse_frame(link, frame);
            let _ = tracker.on_frame(Instant::from_millis(i as u64), link, frame, &mut events);
        }
        prop_assert_eq!(tracker.stats().frames, frames.len() as u64);
    }

    /// (d) Bit flips, byte changes and truncations of generated frames never panic the tracker
    /// (nor a replica fed its events).
    #[test]
    fn mutated_frames_never_panic(
        case in conversation_strategy(3, 150),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0..3u8, any::<u8>()), 1..30),
    ) {
        let mut capture = case.generate();
        for (frame, position, kind, value) in &mutations {
            let count = capture.frames.len();
            let (_, _, bytes) = &mut capture.frames[frame.index(count)];
            if bytes.is_empty() {
                continue;
            }
            let at = position.index(bytes.len());
            match kind {
                0 => bytes[at] ^= 1 << (value % 8),
                1 => bytes[at] = *value,
                _ => bytes.truncate(at),
            }
        }
        let mut tracker = Tracker::new(tracker_config(&capture));
        let mut replica = Replica::new(ReplicaConfig::default());
        let mut events = Vec::new();
        for (at, link, frame) in &capture.frames {
            let _ = tracker.on_frame(*at, *link, frame, &mut events);
        }
        for event in &events {
            let _ = replica.apply_event(event);
        }
        let _ = tracker.snapshots();
        let _ = replica.snapshots();
        prop_assert_eq!(tracker.stats().frames, capture.frames.len() as u64);
    }
}

/// Every generator feature and fault occurs over a modest number of seeds, so the properties
/// above really exercise them.
#[test]
fn every_fault_kind_occurs_in_generated_captures() {
    let config = GeneratorConfig {
        connections: 8,
        target_frames: 800,
        ipv6_share: 0.5,
        faults: FaultConfig {
            client_loss: 0.1,
            server_loss: 0.1,
            reorder: 0.2,
            duplicate: 0.1,
            syn_loss: 0.3,
            syn_ack_loss: 0.3,
            zero_window: 0.3,
            fin: 0.7,
            reset: 0.3,
            forged: 0.1,
        },
    };
    let mut total = FaultCounts::default();
    for seed in 0..40 {
        total.add(&generate(&config, seed).faults);
    }
    let missing: Vec<_> = total
        .named()
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(name, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "never generated: {missing:?} (totals {total:?})"
    );
}

/// The proptest strategy's configurations exercise the faults too (not only the hand-picked
/// configuration above).
#[test]
fn strategy_cases_cover_every_fault_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = conversation_strategy(4, 300);
    let mut total = FaultCounts::default();
    for _ in 0..256 {
        let case = strategy
            .new_tree(&mut runner)
            .expect("strategy yields cases")
            .current();
        total.add(&case.generate().faults);
    }
    let missing: Vec<_> = total
        .named()
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(name, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "never generated in 256 strategy cases: {missing:?} (totals {total:?})"
    );
}

/// Many interleaved connections in one capture (the shape of the benchmark, smaller): every
/// stream and every snapshot matches the ground truth; with the default retention the receive
/// queues are empty (client bytes are dropped once acknowledged) and nothing else differs.
#[test]
fn many_interleaved_connections_match_the_ground_truth() {
    let config = GeneratorConfig {
        connections: 300,
        target_frames: 30_000,
        ..GeneratorConfig::default()
    };
    let capture = generate(&config, 2026);
    assert!(
        capture.frames.len() > 20_000,
        "only {} frames",
        capture.frames.len()
    );
    let (tracker, events) = track(&capture, tracker_config(&capture));
    let (default_tracker, default_events) =
        track(&capture, TrackerConfig::new(capture.services.clone()));
    let streams = streams(&events).expect("contiguous data events");
    let default_streams = streams_of(&default_events);
    let mut opened = 0;
    for truth in &capture.truths {
        if !truth.syn_ack_sent {
            assert!(tracker.snapshot(&truth.id).is_none(), "{}", truth.id);
            continue;
        }
        opened += 1;
        let (client, server) = &streams.get(&truth.id).cloned().unwrap_or_default();
        assert!(
            *client == truth.client_stream,
            "{}: client stream",
            truth.id
        );
        assert!(
            *server == truth.server_stream,
            "{}: server stream",
            truth.id
        );
        assert!(
            default_streams.get(&truth.id).cloned().unwrap_or_default()
                == (client.clone(), server.clone()),
            "{}",
            truth.id
        );
        let snapshot = tracker.snapshot(&truth.id).expect("tracked");
        check_snapshot(&snapshot, truth).unwrap_or_else(|e| panic!("{e}"));
        let mut dropped = default_tracker.snapshot(&truth.id).expect("tracked");
        assert!(
            dropped.receive.bytes.is_empty(),
            "{}: default retention keeps bytes",
            truth.id
        );
        dropped.receive.bytes = snapshot.receive.bytes.clone();
        assert_eq!(dropped, snapshot, "{}", truth.id);
    }
    assert!(opened > 250, "only {opened} connections opened");
}

fn streams_of(events: &[ConnectionEvent]) -> Streams {
    streams(events).expect("contiguous data events")
}

/// The same seed gives the same capture; another seed another one.
#[test]
fn generation_is_deterministic_per_seed() {
    let config = GeneratorConfig {
        connections: 20,
        target_frames: 2_000,
        ..GeneratorConfig::default()
    };
    let a = generate(&config, 7);
    let b = generate(&config, 7);
    let c = generate(&config, 8);
    assert_eq!(a.frames, b.frames);
    assert_eq!(a.truths, b.truths);
    assert_ne!(a.frames, c.frames);
    assert!(
        a.frames.len() > 1_000,
        "only {} frames of 2,000 wanted",
        a.frames.len()
    );
    // Capture order is time order, with connections interleaved.
    assert!(a.frames.windows(2).all(|w| w[0].0 <= w[1].0));
}
