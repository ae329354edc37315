//! Robustness: untrusted bytes and arbitrary segment or event sequences never panic (and the
//! tracker's `debug_assert!` that its own record accepts every event it emits holds).

mod common;

use common::{Seg, config, id4, id6};
use cttm_core::event::{CloseHow, ConnectionEvent, EventKind, Handshake, Side, UnsafeReason};
use cttm_core::record::ClientRetention;
use cttm_core::time::Instant;
use cttm_core::wire::{LinkType, TcpFlags, TcpTimestamps, emit_frame, parse_frame};
use cttm_core::{MessageV1, Replica, ReplicaConfig, ReplicationMessage, SeqNumber, Tracker};
use proptest::prelude::*;

const LINKS: [LinkType; 3] = [LinkType::Ethernet, LinkType::LinuxSll, LinkType::RawIp];

const CISN: u32 = u32::MAX - 100;
const SISN: u32 = 7_000;

/// One segment of an arbitrary conversation: sequence and ack numbers mostly near the ISNs
/// (so they hit the interesting paths), sometimes anywhere.
#[derive(Clone, Debug)]
struct FuzzSegment {
    v6: bool,
    client: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    len: usize,
    wscale: Option<u8>,
    ts: Option<(u32, u32)>,
    advance_ms: u64,
    /// Added to the client port: a few connections per address family, more than the
    /// tracker's table holds, so that eviction (closed connections, pending handshakes) runs.
    client_port_offset: u16,
}

fn near(isn: u32) -> impl Strategy<Value = u32> {
    prop_oneof![
        1 => Just(isn),
        2 => Just(isn.wrapping_add(1)),
        6 => (-3i64..400).prop_map(move |d| isn.wrapping_add(d as u32)),
        1 => any::<u32>(),
    ]
}

fn fuzz_segment() -> impl Strategy<Value = FuzzSegment> {
    (
        any::<bool>(),
        any::<bool>(),
        near(CISN),
        near(SISN),
        prop_oneof![
            3 => Just(TcpFlags::ACK.bits()),
            1 => Just(TcpFlags::SYN.bits()),
            1 => Just(TcpFlags::SYN.with(TcpFlags::ACK).bits()),
            1 => Just(TcpFlags::FIN.with(TcpFlags::ACK).bits()),
            1 => Just(TcpFlags::RST.bits()),
            1 => any::<u8>(),
        ],
        any::<u16>(),
        prop_oneof![3 => 0usize..80, 1 => 0usize..2000],
        proptest::option::of(0u8..20),
        proptest::option::of((any::<u32>(), any::<u32>())),
        0u64..5000,
        0u16..3,
    )
        .prop_map(
            |(
                v6,
                client,
                cseq,
                sseq,
                flags,
                window,
                len,
                wscale,
                ts,
                advance_ms,
                client_port_offset,
            )| {
                // Client segments carry client sequence numbers and server acks, and vice versa.
                let (seq, ack) = if client { (cseq, sseq) } else { (sseq, cseq) };
                FuzzSegment {
                    v6,
                    client,
                    seq,
                    ack,
                    flags,
                    window,
                    len,
                    wscale,
                    ts,
                    advance_ms,
                    client_port_offset,
                }
            },
        )
}

impl FuzzSegment {
    fn seg(&self) -> Seg {
        let mut id = if self.v6 { id6() } else { id4() };
        id.client
            .set_port(id.client.port() + self.client_port_offset);
        let mut seg = if self.client {
            Seg::client(id, self.seq)
        } else {
            Seg::server(id, self.seq)
        };
        seg.ack = self.ack;
        seg.flags = TcpFlags::from_bits(self.flags);
        seg.window = self.window;
        seg.options.window_scale = self.wscale;
        seg.options.timestamps = self.ts.map(|(tsval, tsecr)| TcpTimestamps { tsval, tsecr });
        seg.payload = (0..self.len)
            .map(|i| (i as u32).wrapping_add(self.seq) as u8)
            .collect();
        seg
    }
}

fn tracker(limit: usize, retention: ClientRetention) -> Tracker {
    let mut cfg = config();
    cfg.reassembly_limit = limit;
    cfg.client_retention = retention;
    cfg.max_connections = 2;
    Tracker::new(cfg)
}

fn retention() -> impl Strategy<Value = ClientRetention> {
    prop_oneof![
        Just(ClientRetention::DropOnAck),
        (0usize..500).prop_map(|limit| ClientRetention::UntilConsumed { limit })
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser_or_the_tracker(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut t = tracker(1000, ClientRetention::DropOnAck);
        let mut out = Vec::new();
        for link in LINKS {
            let _ = parse_frame(link, &bytes);
            let _ = t.on_frame(Instant::ZERO, link, &bytes, &mut out);
        }
        prop_assert_eq!(t.stats().frames, 3);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        segment in fuzz_segment(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let seg = segment.seg();
        let mut t = tracker(1000, ClientRetention::DropOnAck);
        let mut out = Vec::new();
        for link in [LinkType::Ethernet, LinkType::RawIp] {
            let Ok(mut frame) = emit_frame(link, &seg.repr()) else { continue };
            for (at, value) in &flips {
                let i = at % frame.len();
                frame[i] ^= value;
            }
            frame.truncate(cut % (frame.len() + 1));
            let _ = parse_frame(link, &frame);
            let _ = t.on_frame(Instant::ZERO, link, &frame, &mut out);
            let mut sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
            sll.extend_from_slice(&frame);
            let _ = parse_frame(LinkType::LinuxSll, &sll);
        }
    }

    #[test]
    fn arbitrary_segment_sequences_keep_the_tracker_consistent(
        segments in proptest::collection::vec(fuzz_segment(), 1..80),
        limit in 0usize..300,
        retention in retention(),
    ) {
        let mut t = tracker(limit, retention);
        let mut replica = Replica::new(ReplicaConfig { client_retention: retention, max_connections: 16 });
        let mut now = 0u64;
        let mut out = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            now += s.advance_ms;
            let seg = s.seg();
            let start = out.len();
            t.on_segment(Instant::from_millis(now), &seg.repr(), &mut out);
            for e in &out[start..] {
                prop_assert!(replica.apply_event(e).is_ok(), "replica rejected {:?}", e);
            }
            if i % 7 == 0 {
                t.poll(Instant::from_millis(now));
            }
            if i % 5 == 0 {
                t.consume_client(&id4(), (i as u64) * 10);
                replica.consume_client(&id4(), (i as u64) * 10);
            }
        }
        // The replica, fed every event, agrees with every connection the tracker still holds.
        for snap in t.snapshots() {
            let replicated = replica.snapshot(&snap.id);
            prop_assert_eq!(Some(snap), replicated);
        }
        for e in &out {
            let bytes = postcard::to_stdvec(e).unwrap();
            prop_assert_eq!(&postcard::from_bytes::<ConnectionEvent>(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn arbitrary_events_never_panic_the_replica(
        events in proptest::collection::vec(arbitrary_event(), 0..60),
        limit in 0usize..100,
    ) {
        let mut replica = Replica::new(ReplicaConfig {
            client_retention: ClientRetention::UntilConsumed { limit },
            max_connections: 2,
        });
        for (i, e) in events.iter().enumerate() {
            let _ = replica.apply_event(e);
            if i % 4 == 0 {
                replica.consume_client(&e.id, e.at.micros());
            }
            let _ = replica.snapshots();
            let _ = replica.holdings();
        }
        let msg = ReplicationMessage::V1(MessageV1::Forget(id4()));
        let _ = replica.apply_message(&msg);
        prop_assert!(replica.len() <= 2);
    }

    #[test]
    fn arbitrary_bytes_never_panic_message_decoding(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(msg) = postcard::from_bytes::<ReplicationMessage>(&bytes) {
            let mut replica = Replica::new(ReplicaConfig::default());
            let _ = replica.apply_message(&msg);
        }
    }
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Server)]
}

fn handshake() -> impl Strategy<Value = Handshake> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(0u8..16),
        any::<bool>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(c, s, wscale, ts, mid_stream, window)| Handshake {
            client_isn: SeqNumber(c),
            server_isn: SeqNumber(s),
            client_mss: Some(1460),
            server_mss: None,
            client_window_scale: wscale,
            server_window_scale: wscale,
            sack_permitted: ts,
            timestamps: ts,
            client_syn_tsval: ts.then_some(c),
            server_syn_tsval: ts.then_some(s),
            client_syn_window: window,
            server_syn_window: window,
            mid_stream,
        })
}

fn arbitrary_event() -> impl Strategy<Value = ConnectionEvent> {
    let offset = || prop_oneof![4 => 0u64..64, 1 => any::<u64>()];
    let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
    let ts = || {
        proptest::option::of(
            (any::<u32>(), any::<u32>()).prop_map(|(tsval, tsecr)| TcpTimestamps { tsval, tsecr }),
        )
    };
    let kind = prop_oneof![
        1 => handshake().prop_map(EventKind::Opened),
        3 => (offset(), bytes()).prop_map(|(offset, bytes)| EventKind::ClientData { offset, bytes }),
        3 => (offset(), bytes()).prop_map(|(offset, bytes)| EventKind::ServerData { offset, bytes }),
        2 => (offset(), offset(), any::<u32>(), ts())
            .prop_map(|(offset, seq_offset, window, timestamps)| EventKind::ClientAck { offset, seq_offset, window, timestamps }),
        2 => (offset(), any::<u32>(), ts()).prop_map(|(offset, window, timestamps)| EventKind::ServerAck { offset, window, timestamps }),
        1 => (side(), offset()).prop_map(|(side, offset)| EventKind::Fin { side, offset }),
        1 => prop_oneof![
            Just(UnsafeReason::MidStream),
            (side(), offset()).prop_map(|(side, offset)| UnsafeReason::CaptureHole { side, offset }),
            side().prop_map(|side| UnsafeReason::ReassemblyOverflow { side }),
            side().prop_map(|side| UnsafeReason::RetentionExceeded { side }),
        ].prop_map(EventKind::Unsafe),
        1 => prop_oneof![
            Just(CloseHow::Graceful),
            Just(CloseHow::Evicted),
            side().prop_map(CloseHow::Reset),
        ].prop_map(EventKind::Closed),
    ];
    (any::<bool>(), 0u64..1_000_000, kind).prop_map(|(v6, at, kind)| ConnectionEvent {
        id: if v6 { id6() } else { id4() },
        at: Instant::from_micros(at),
        kind,
    })
}
