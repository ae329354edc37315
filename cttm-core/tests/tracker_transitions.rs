//! The tracker, one transition at a time: crafted segments at explicit instants in, the exact
//! events out, and snapshot fields compared with values computed by hand.

mod common;

use common::{CISN, Harness, SISN, Seg, config, id4, id6, plain_handshake};
use cttm_core::event::{CloseHow, EventKind, Handshake, Side, UnsafeReason};
use cttm_core::record::ClientRetention;
use cttm_core::snapshot::{Restorability, TcpState, TimestampClock, WindowScale};
use cttm_core::time::Instant;
use cttm_core::track::FrameDisposition;
use cttm_core::wire::TcpTimestamps;
use cttm_core::{ConnectionId, SeqNumber};
use std::time::Duration;

fn data(offset: u64, bytes: &[u8]) -> EventKind {
    EventKind::ClientData {
        offset,
        bytes: bytes.to_vec(),
    }
}

fn sdata(offset: u64, bytes: &[u8]) -> EventKind {
    EventKind::ServerData {
        offset,
        bytes: bytes.to_vec(),
    }
}

fn cack(offset: u64, seq_offset: u64, window: u32) -> EventKind {
    EventKind::ClientAck {
        offset,
        seq_offset,
        window,
        timestamps: None,
    }
}

fn sack(offset: u64, window: u32) -> EventKind {
    EventKind::ServerAck {
        offset,
        window,
        timestamps: None,
    }
}

fn fin(side: Side, offset: u64) -> EventKind {
    EventKind::Fin { side, offset }
}

/// The handshake of the single `Opened` event in `kinds`.
fn opened(kinds: Vec<EventKind>) -> Handshake {
    match kinds.as_slice() {
        [EventKind::Opened(hs)] => *hs,
        other => panic!("expected one Opened, got {other:?}"),
    }
}

fn state(h: &Harness, id: ConnectionId) -> TcpState {
    h.tracker.snapshot(&id).expect("connection tracked").state
}

fn established() -> (Harness, ConnectionId) {
    let mut h = Harness::new(config());
    let id = id4();
    plain_handshake(&mut h, id);
    (h, id)
}

/// Client sequence number of client stream offset `o`.
fn c(o: u32) -> u32 {
    CISN + 1 + o
}

/// Server sequence number of server stream offset `o`.
fn s(o: u32) -> u32 {
    SISN + 1 + o
}

// ---------------------------------------------------------------- handshake

fn full_syn(id: ConnectionId) -> Seg {
    Seg::client(id, CISN)
        .syn()
        .win(64_240)
        .mss(1460)
        .sack_ok()
        .ts(100, 0)
        .wscale(7)
}

fn full_syn_ack(id: ConnectionId) -> Seg {
    Seg::server(id, SISN)
        .syn()
        .ack(CISN + 1)
        .win(65_160)
        .mss(1400)
        .sack_ok()
        .ts(7000, 100)
        .wscale(9)
}

#[test]
fn syn_then_syn_ack_opens_with_negotiated_options() {
    let mut h = Harness::new(config());
    let id = id4();
    assert!(h.feed(0, &full_syn(id)).is_empty());
    assert_eq!(h.tracker.pending_handshakes(), 1);
    assert!(
        h.tracker.snapshot(&id).is_none(),
        "no record before the SYN-ACK"
    );
    let expected = Handshake {
        client_isn: SeqNumber(CISN),
        server_isn: SeqNumber(SISN),
        client_mss: Some(1460),
        server_mss: Some(1400),
        client_window_scale: Some(7),
        server_window_scale: Some(9),
        sack_permitted: true,
        timestamps: true,
        client_syn_tsval: Some(100),
        server_syn_tsval: Some(7000),
        client_syn_window: 64_240,
        server_syn_window: 65_160,
        mid_stream: false,
    };
    assert_eq!(
        h.feed(1, &full_syn_ack(id)),
        vec![EventKind::Opened(expected)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.state, TcpState::SynReceived);
    assert_eq!(snap.restorability, Restorability::HandshakeIncomplete);

    // Third ACK: the client's window is scaled by its own shift (RFC 7323 §2.3).
    let third = Seg::client(id, c(0)).ack(s(0)).win(502).ts(101, 7000);
    let ts = Some(TcpTimestamps {
        tsval: 101,
        tsecr: 7000,
    });
    assert_eq!(
        h.feed(2, &third),
        vec![EventKind::ClientAck {
            offset: 0,
            seq_offset: 0,
            window: 502 << 7,
            timestamps: ts
        }]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.state, TcpState::Established);
    assert_eq!(snap.restorability, Restorability::Restorable);
    assert_eq!(snap.options.mss, 1460);
    assert_eq!(
        snap.options.window_scale,
        Some(WindowScale {
            send: 7,
            receive: 9
        })
    );
    assert!(snap.options.sack && snap.options.timestamps);
    assert_eq!(snap.send.una, SeqNumber(s(0)));
    assert_eq!(snap.send.next(), SeqNumber(s(0)));
    assert!(snap.send.bytes.is_empty() && !snap.send.fin);
    assert_eq!(snap.receive.next, SeqNumber(c(0)));
    assert!(snap.receive.bytes.is_empty() && !snap.receive.fin);
    assert_eq!(snap.window.snd_wl1, c(0));
    assert_eq!(snap.window.snd_wnd, 502 << 7);
    assert_eq!(snap.window.max_window, 502 << 7);
    assert_eq!(
        snap.window.rcv_wnd, 65_160,
        "the SYN-ACK's window is never scaled"
    );
    assert_eq!(snap.window.rcv_wup, c(0));
    assert_eq!(
        snap.clock,
        Some(TimestampClock {
            server_tsval: 7000,
            observed_at: Instant::from_millis(1),
            client_tsval: 101
        })
    );
    assert_eq!(snap.server_tsval_at(Instant::from_millis(2501)), Some(9500));
    assert_eq!(
        snap.server_tsval_at(Instant::ZERO),
        Some(7000),
        "the clock never runs backwards"
    );
    assert_eq!(snap.updated_at, Instant::from_millis(2));

    // The server's windows in later segments are scaled by the server's shift.
    let reply = Seg::server(id, s(0))
        .ack(c(0))
        .win(300)
        .ts(7010, 101)
        .data(b"hi");
    let ts = Some(TcpTimestamps {
        tsval: 7010,
        tsecr: 101,
    });
    assert_eq!(
        h.feed(40, &reply),
        vec![
            sdata(0, b"hi"),
            EventKind::ServerAck {
                offset: 0,
                window: 300 << 9,
                timestamps: ts
            }
        ]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.window.rcv_wnd, 300 << 9);
    let clock = snap.clock.unwrap();
    assert_eq!(
        (clock.server_tsval, clock.observed_at),
        (7010, Instant::from_millis(40))
    );
    assert_eq!(snap.server_tsval_at(Instant::from_millis(1040)), Some(8010));
}

#[test]
fn options_count_only_when_both_sides_offer_them() {
    let mut h = Harness::new(config());
    let id = id4();
    h.feed(0, &full_syn(id));
    let bare = Seg::server(id, SISN).syn().ack(CISN + 1).win(100).mss(1200);
    let hs = opened(h.feed(1, &bare));
    assert_eq!(
        (hs.client_window_scale, hs.server_window_scale),
        (None, None)
    );
    assert!(!hs.sack_permitted && !hs.timestamps);
    assert_eq!((hs.client_syn_tsval, hs.server_syn_tsval), (None, None));
    assert_eq!((hs.client_mss, hs.server_mss), (Some(1460), Some(1200)));
    // Without scaling the client's windows are taken as carried.
    assert_eq!(
        h.feed(2, &Seg::client(id, c(0)).ack(s(0)).win(502)),
        vec![cack(0, 0, 502)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.options.window_scale, None);
    assert_eq!(snap.clock, None);
}

#[test]
fn window_scale_above_14_is_clamped() {
    let mut h = Harness::new(config());
    let id = id4();
    h.feed(0, &Seg::client(id, CISN).syn().wscale(15));
    let hs = opened(h.feed(1, &Seg::server(id, SISN).syn().ack(CISN + 1).wscale(200)));
    assert_eq!(
        (hs.client_window_scale, hs.server_window_scale),
        (Some(14), Some(14))
    );
    assert_eq!(
        h.feed(2, &Seg::client(id, c(0)).ack(s(0)).win(1)),
        vec![cack(0, 0, 1 << 14)]
    );
}

#[test]
fn retransmitted_syn_and_syn_ack_change_nothing() {
    let mut h = Harness::new(config());
    let id = id4();
    assert!(h.feed(0, &full_syn(id)).is_empty());
    assert!(h.feed(1000, &full_syn(id)).is_empty());
    assert_eq!(h.tracker.pending_handshakes(), 1);
    assert!(matches!(
        h.feed(1001, &full_syn_ack(id)).as_slice(),
        [EventKind::Opened(_)]
    ));
    assert!(
        h.feed(2001, &full_syn_ack(id)).is_empty(),
        "no second Opened"
    );
    assert!(
        h.feed(2002, &full_syn(id)).is_empty(),
        "a late SYN copy is not a new incarnation"
    );
    h.feed(2003, &Seg::client(id, c(0)).ack(s(0)).win(10));
    assert!(h.feed(3003, &full_syn_ack(id)).is_empty());
    assert_eq!(state(&h, id), TcpState::Established);
    assert_eq!(h.tracker.stats().opened, 1);
}

#[test]
fn syn_with_a_new_isn_starts_over() {
    let mut h = Harness::new(config());
    let id = id4();
    h.feed(0, &Seg::client(id, CISN).syn());
    h.feed(1, &Seg::client(id, CISN + 777).syn());
    assert!(
        h.feed(2, &Seg::server(id, SISN).syn().ack(CISN + 1))
            .is_empty(),
        "answers the old SYN"
    );
    let hs = opened(h.feed(3, &Seg::server(id, SISN).syn().ack(CISN + 778)));
    assert_eq!(hs.client_isn, SeqNumber(CISN + 777));
}

#[test]
fn rst_refusing_a_syn_forgets_it() {
    let mut h = Harness::new(config());
    let id = id4();
    h.feed(0, &Seg::client(id, CISN).syn());
    // A RST that does not acknowledge the SYN is not an answer to it.
    assert!(
        h.feed(1, &Seg::server(id, 0).rst().ack(CISN + 5))
            .is_empty()
    );
    assert_eq!(h.tracker.pending_handshakes(), 1);
    assert!(
        h.feed(2, &Seg::server(id, 0).rst().ack(CISN + 1))
            .is_empty()
    );
    assert_eq!(h.tracker.pending_handshakes(), 0);
    assert!(h.tracker.is_empty());
    assert_eq!(h.tracker.stats().opened, 0);
}

// ---------------------------------------------------------------- client data

#[test]
fn client_data_in_order_retransmitted_overlapping_and_out_of_order() {
    let (mut h, id) = established();
    let ack = s(0);
    // In order: the ack fields equal the third ACK's, so no ClientAck.
    assert_eq!(
        h.feed(10, &Seg::client(id, c(0)).ack(ack).data(b"hello")),
        vec![data(0, b"hello")]
    );
    assert_eq!(
        h.feed(11, &Seg::server(id, s(0)).ack(c(5)).win(2000)),
        vec![sack(5, 2000)]
    );
    // Retransmitted: nothing new.
    assert!(
        h.feed(12, &Seg::client(id, c(0)).ack(ack).data(b"hello"))
            .is_empty()
    );
    // Overlapping: only the new tail; the segment's sequence updates SND.WL1.
    assert_eq!(
        h.feed(13, &Seg::client(id, c(2)).ack(ack).data(b"llo world")),
        vec![data(5, b" world"), cack(0, 2, 1000)]
    );
    // Out of order: buffered, then delivered with what fills the hole.
    assert_eq!(
        h.feed(14, &Seg::client(id, c(14)).ack(ack).data(b"DEF")),
        vec![cack(0, 14, 1000)]
    );
    assert_eq!(
        h.feed(15, &Seg::client(id, c(17)).ack(ack).data(b"GH")),
        vec![cack(0, 17, 1000)]
    );
    assert_eq!(
        h.feed(16, &Seg::client(id, c(11)).ack(ack).data(b"ABC")),
        vec![data(11, b"ABCDEFGH"), cack(0, 11, 1000)]
    );
    assert_eq!(
        h.feed(17, &Seg::server(id, s(0)).ack(c(19)).win(2000)),
        vec![sack(19, 2000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.next, SeqNumber(c(19)));
    assert!(
        snap.receive.bytes.is_empty(),
        "the primary drops acknowledged client bytes"
    );
    // SND.WL1 stays at the newest sequence seen (17), not the in-order fill (11).
    assert_eq!(snap.window.snd_wl1, c(17));
    assert_eq!(snap.window.rcv_wup, c(19));
    assert_eq!(snap.restorability, Restorability::Restorable);
    let stream: Vec<u8> = h
        .events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ClientData { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stream, b"hello worldABCDEFGH");
}

#[test]
fn retained_client_bytes_form_the_receive_queue() {
    let mut cfg = config();
    cfg.client_retention = ClientRetention::UntilConsumed { limit: 1 << 20 };
    let mut h = Harness::new(cfg);
    let id = id4();
    plain_handshake(&mut h, id);
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"request"));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert!(
        snap.receive.bytes.is_empty(),
        "unacknowledged bytes are not in the kernel's queue"
    );
    h.feed(11, &Seg::server(id, s(0)).ack(c(4)).win(2000));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.bytes, b"requ");
    assert_eq!(snap.receive.first_seq(), SeqNumber(c(0)));
    h.tracker.consume_client(&id, 3);
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.bytes, b"u");
    assert_eq!(snap.receive.first_seq(), SeqNumber(c(3)));
}

#[test]
fn zero_window_probe_then_window_opens() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"0123456789"));
    assert_eq!(
        h.feed(11, &Seg::server(id, s(0)).ack(c(10)).win(0)),
        vec![sack(10, 0)]
    );
    assert_eq!(h.tracker.snapshot(&id).unwrap().window.rcv_wnd, 0);
    // The probe: one byte into the zero window. It is acceptable (SEQ = RCV.NXT), so its ACK
    // is processed, but Linux `tcp_data_queue()` drops the byte (TCPZEROWINDOWDROP) and
    // repeats its ACK: the byte is not received.
    assert_eq!(
        h.feed(200, &Seg::client(id, c(10)).ack(s(0)).data(b"X")),
        vec![cack(0, 10, 1000)]
    );
    assert!(
        h.feed(201, &Seg::server(id, s(0)).ack(c(10)).win(0))
            .is_empty()
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        snap.receive.next,
        SeqNumber(c(10)),
        "the probe byte is not acknowledged"
    );
    // The window opens; the client resends the byte with what follows.
    assert_eq!(
        h.feed(300, &Seg::server(id, s(0)).ack(c(10)).win(4000)),
        vec![sack(10, 4000)]
    );
    assert_eq!(
        h.feed(301, &Seg::client(id, c(10)).ack(s(0)).data(b"XYZ")),
        vec![data(10, b"XYZ")]
    );
    assert_eq!(
        h.feed(302, &Seg::server(id, s(0)).ack(c(13)).win(4000)),
        vec![sack(13, 4000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.next, SeqNumber(c(13)));
    assert_eq!(snap.window.rcv_wnd, 4000);
    assert_eq!(snap.restorability, Restorability::Restorable);
}

#[test]
fn sequence_wrap_around_carries_100_kb_both_ways() {
    let mut cfg = config();
    cfg.client_retention = ClientRetention::UntilConsumed { limit: 1 << 20 };
    let mut h = Harness::new(cfg);
    let id = id4();
    let cisn = u32::MAX - 1000;
    let sisn = u32::MAX - 30_000;
    h.feed(0, &Seg::client(id, cisn).syn());
    h.feed(1, &Seg::server(id, sisn).syn().ack(cisn.wrapping_add(1)));
    h.feed(
        2,
        &Seg::client(id, cisn.wrapping_add(1)).ack(sisn.wrapping_add(1)),
    );
    let upload: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let download: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let mut t = 10;
    for (i, (up, down)) in upload.chunks(1000).zip(download.chunks(1000)).enumerate() {
        let o = (i * 1000) as u32;
        let cseq = cisn.wrapping_add(1).wrapping_add(o);
        let sseq = sisn.wrapping_add(1).wrapping_add(o);
        // Client data carrying an ACK of the server bytes so far.
        h.feed(
            t,
            &Seg::client(id, cseq)
                .ack(sisn.wrapping_add(1).wrapping_add(o))
                .data(up),
        );
        // Server data acknowledging the client chunk.
        h.feed(
            t + 1,
            &Seg::server(id, sseq)
                .ack(cseq.wrapping_add(1000))
                .data(down),
        );
        t += 2;
    }
    let collect = |server: bool| -> Vec<u8> {
        let mut next = 0u64;
        let mut out = Vec::new();
        for e in &h.events {
            let (offset, bytes) = match (&e.kind, server) {
                (EventKind::ClientData { offset, bytes }, false) => (offset, bytes),
                (EventKind::ServerData { offset, bytes }, true) => (offset, bytes),
                _ => continue,
            };
            assert_eq!(*offset, next, "in-order offsets");
            next += bytes.len() as u64;
            out.extend_from_slice(bytes);
        }
        out
    };
    assert_eq!(collect(false), upload);
    assert_eq!(collect(true), download);
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.next, SeqNumber(cisn.wrapping_add(100_001)));
    assert_eq!(
        snap.receive.bytes, upload,
        "every acknowledged client byte is retained"
    );
    assert_eq!(snap.receive.first_seq(), SeqNumber(cisn.wrapping_add(1)));
    // The client acknowledged all but the last server chunk.
    assert_eq!(snap.send.una, SeqNumber(sisn.wrapping_add(99_001)));
    assert_eq!(snap.send.bytes, &download[99_000..]);
    assert_eq!(snap.send.next(), SeqNumber(sisn.wrapping_add(100_001)));
    assert_eq!(snap.restorability, Restorability::Restorable);
}

// ---------------------------------------------------------------- server data

#[test]
fn server_data_and_client_acks_shrink_the_send_queue() {
    let (mut h, id) = established();
    assert_eq!(
        h.feed(
            10,
            &Seg::server(id, s(0)).ack(c(0)).win(2000).data(b"response")
        ),
        vec![sdata(0, b"response"), sack(0, 2000)]
    );
    assert_eq!(
        h.feed(
            11,
            &Seg::server(id, s(8)).ack(c(0)).win(2000).data(b"-more")
        ),
        vec![sdata(8, b"-more")]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.send.una, SeqNumber(s(0)));
    assert_eq!(snap.send.bytes, b"response-more");
    assert_eq!(snap.send.sent_unacked(), b"response-more");
    assert_eq!(snap.send.next(), SeqNumber(s(13)));
    assert_eq!(
        h.feed(20, &Seg::client(id, c(0)).ack(s(4)).win(900)),
        vec![cack(4, 0, 900)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.send.una, SeqNumber(s(4)));
    assert_eq!(snap.send.bytes, b"onse-more");
    // The ACK advanced, so the smaller window is taken (tcp_may_update_window).
    assert_eq!(
        (
            snap.window.snd_wnd,
            snap.window.max_window,
            snap.window.snd_wl1
        ),
        (900, 1000, c(0))
    );
    // A duplicate ACK changes nothing and is not re-emitted.
    assert!(
        h.feed(21, &Seg::client(id, c(0)).ack(s(4)).win(900))
            .is_empty()
    );
    assert_eq!(
        h.feed(22, &Seg::client(id, c(0)).ack(s(13)).win(3000)),
        vec![cack(13, 0, 3000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert!(snap.send.bytes.is_empty());
    assert_eq!(snap.send.una, SeqNumber(s(13)));
    assert_eq!((snap.window.snd_wnd, snap.window.max_window), (3000, 3000));
    assert_eq!(snap.updated_at, Instant::from_millis(22));
}

#[test]
fn client_ack_of_server_bytes_never_sent_is_ignored() {
    let (mut h, id) = established();
    h.feed(10, &Seg::server(id, s(0)).ack(c(0)).win(2000).data(b"abc"));
    // Every server segment is captured at the server host: an ACK of 6 acknowledges bytes
    // the server never sent. Linux `tcp_ack()` drops such a segment, data included
    // (RFC 9293 §3.10.7.4), so nothing changes: no hole, no acknowledgement, no data.
    assert!(h.feed(11, &Seg::client(id, c(0)).ack(s(6))).is_empty());
    assert!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(6)).data(b"forged"))
            .is_empty()
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.restorability, Restorability::Restorable);
    assert_eq!(snap.send.una, SeqNumber(s(0)));
    assert_eq!(snap.send.bytes, b"abc");
    assert_eq!(h.tracker.stats().unsafe_connections, 0);
    assert_eq!(h.tracker.stats().client_segments_rejected, 2);
    // The real segment at the same sequence with a valid ACK is taken in full.
    assert_eq!(
        h.feed(13, &Seg::client(id, c(0)).ack(s(3)).data(b"real")),
        vec![data(0, b"real"), cack(3, 0, 1000)]
    );
    assert_eq!(h.tracker.snapshot(&id).unwrap().send.una, SeqNumber(s(3)));
}

#[test]
fn client_ack_over_server_bytes_the_capture_missed_is_a_capture_hole() {
    let (mut h, id) = established();
    h.feed(10, &Seg::server(id, s(0)).ack(c(0)).win(2000).data(b"abc"));
    // Server bytes 3..6 were sent but not captured (a capture drop): 6..9 were.
    h.feed(11, &Seg::server(id, s(6)).ack(c(0)).win(2000).data(b"ghi"));
    assert_eq!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(9))),
        vec![
            EventKind::Unsafe(UnsafeReason::CaptureHole {
                side: Side::Server,
                offset: 3
            }),
            cack(9, 0, 1000)
        ]
    );
    assert_eq!(
        h.feed(13, &Seg::server(id, s(9)).ack(c(0)).win(2000).data(b"jkl")),
        vec![sdata(9, b"jkl")]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.send.una, SeqNumber(s(9)));
    assert_eq!(snap.send.bytes, b"jkl");
}

#[test]
fn client_data_outside_the_receive_window_is_dropped() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    assert_eq!(
        h.feed(11, &Seg::server(id, s(0)).ack(c(3)).win(10)),
        vec![sack(3, 10)]
    );
    // The window is [3, 13). A forged segment starting at the right edge or beyond is
    // dropped by Linux (`tcp_sequence()` past it; at it, `tcp_data_queue()` drops the bytes
    // after `tcp_ack()` took the acknowledgement): its bytes must not be buffered ahead of
    // the real ones.
    assert_eq!(
        h.feed(12, &Seg::client(id, c(13)).ack(s(0)).data(b"EVIL")),
        vec![cack(0, 13, 1000)]
    );
    assert!(
        h.feed(12, &Seg::client(id, c(14)).ack(s(0)).data(b"EVIL"))
            .is_empty()
    );
    assert!(
        h.feed(12, &Seg::client(id, c(500)).ack(s(0)).data(b"x").fin())
            .is_empty()
    );
    // Wholly before RCV.WUP: a stale segment, ignored with its ACK and window.
    assert!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(0)).win(9).data(b"ab"))
            .is_empty()
    );
    // Without ACK: dropped (RFC 9293 §3.10.7.4, "if the ACK bit is off drop the segment").
    let mut no_ack = Seg::client(id, c(3)).data(b"forged");
    no_ack.ack = s(0);
    assert!(h.feed(12, &no_ack).is_empty());
    // Starting inside the window: taken whole, even past the right edge (Linux queues the
    // whole segment; it does not trim to the window).
    assert_eq!(
        h.feed(13, &Seg::client(id, c(12)).ack(s(0)).data(b"MNOPQ")),
        vec![cack(0, 12, 1000)]
    );
    assert_eq!(
        h.feed(14, &Seg::client(id, c(3)).ack(s(0)).data(b"defghijkl")),
        vec![data(3, b"defghijklMNOPQ"), cack(0, 3, 1000)]
    );
    assert_eq!(
        h.tracker.snapshot(&id).unwrap().state,
        TcpState::Established
    );
    // At the right edge (its data only), beyond it twice, before RCV.WUP, without ACK.
    assert_eq!(h.tracker.stats().client_segments_rejected, 5);
}

#[test]
fn client_data_and_fin_into_a_zero_window() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(3)).win(0));
    // New data into a zero window is dropped, also when it overlaps received bytes
    // (Linux `tcp_data_queue()`, partial and in-order cases); its ACK still counts.
    assert_eq!(
        h.feed(12, &Seg::client(id, c(2)).ack(s(0)).win(900).data(b"cD")),
        vec![cack(0, 2, 900)]
    );
    assert_eq!(
        h.feed(
            13,
            &Seg::client(id, c(3)).ack(s(0)).win(900).data(b"D").fin()
        ),
        vec![cack(0, 3, 900)]
    );
    // A bare FIN at RCV.NXT is taken even so (Linux 6.x accepts it into a zero window).
    assert_eq!(
        h.feed(14, &Seg::client(id, c(3)).ack(s(0)).win(900).fin()),
        vec![fin(Side::Client, 3)]
    );
    assert_eq!(
        h.feed(15, &Seg::server(id, s(0)).ack(c(4)).win(0)),
        vec![sack(4, 0)]
    );
    assert_eq!(state(&h, id), TcpState::CloseWait);
}

#[test]
fn client_segments_outside_the_window_move_neither_snd_wl1_nor_snd_una() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"0123456789"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(10)).win(0).data(b"abcdef"));
    assert_eq!(
        h.feed(12, &Seg::client(id, c(10)).ack(s(3)).win(700)),
        vec![cack(3, 10, 700)]
    );
    let window = |h: &Harness| h.tracker.snapshot(&id).unwrap().window;
    let before = window(&h);
    assert_eq!((before.snd_wl1, before.snd_wnd), (c(10), 700));
    // A zero-window probe (Linux `tcp_xmit_probe_skb()`: SEQ = SND.UNA - 1, no data) ends
    // before RCV.WUP: the server answers with a duplicate ACK and ignores its fields.
    assert!(
        h.feed(13, &Seg::client(id, c(9)).ack(s(6)).win(5000))
            .is_empty()
    );
    // The client sent one byte at 10, then a pure ACK at 11; the ACK overtakes the byte and
    // lands beyond the closed window (right edge 10): ignored as well.
    assert!(
        h.feed(14, &Seg::client(id, c(11)).ack(s(6)).win(4000))
            .is_empty()
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.window, before);
    assert_eq!(snap.send.una, SeqNumber(s(3)));
    assert_eq!(snap.send.bytes, b"def");
    // An acceptable pure ACK at RCV.NXT moves both.
    assert_eq!(
        h.feed(15, &Seg::client(id, c(10)).ack(s(6)).win(4000)),
        vec![cack(6, 10, 4000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!((snap.window.snd_wl1, snap.window.snd_wnd), (c(10), 4000));
    assert_eq!(snap.send.una, SeqNumber(s(6)));
}

// ---------------------------------------------------------------- closing

#[test]
fn fin_from_client_then_server() {
    let (mut h, id) = established();
    assert_eq!(
        h.feed(10, &Seg::client(id, c(0)).ack(s(0)).fin()),
        vec![fin(Side::Client, 0)]
    );
    assert_eq!(
        state(&h, id),
        TcpState::Established,
        "the FIN is not received until acknowledged"
    );
    assert_eq!(
        h.feed(11, &Seg::server(id, s(0)).ack(c(1)).win(2000)),
        vec![sack(1, 2000)]
    );
    assert_eq!(state(&h, id), TcpState::CloseWait);
    let snap = h.tracker.snapshot(&id).unwrap();
    assert!(snap.receive.fin);
    assert_eq!(snap.receive.next, SeqNumber(c(1)));
    assert_eq!(snap.receive.first_seq(), SeqNumber(c(0)));
    assert_eq!(snap.restorability, Restorability::Restorable);
    assert_eq!(
        h.feed(12, &Seg::server(id, s(0)).ack(c(1)).win(2000).fin()),
        vec![fin(Side::Server, 0)]
    );
    assert_eq!(state(&h, id), TcpState::LastAck);
    let snap = h.tracker.snapshot(&id).unwrap();
    assert!(snap.send.fin);
    assert_eq!(snap.send.next(), SeqNumber(s(1)));
    assert_eq!(
        h.feed(13, &Seg::client(id, c(1)).ack(s(1))),
        vec![cack(1, 1, 1000), EventKind::Closed(CloseHow::Graceful)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.state, TcpState::Closed);
    assert_eq!(snap.restorability, Restorability::Closed);
    assert!(
        !snap.send.fin,
        "an acknowledged FIN is no longer in the send queue"
    );
    // Nothing follows a close.
    assert!(
        h.feed(14, &Seg::client(id, c(1)).ack(s(1)).data(b"late"))
            .is_empty()
    );
    assert_eq!(h.tracker.stats().closed, 1);
}

#[test]
fn fin_from_server_first_ends_in_time_wait() {
    let (mut h, id) = established();
    assert_eq!(
        h.feed(10, &Seg::server(id, s(0)).ack(c(0)).win(2000).fin()),
        vec![fin(Side::Server, 0), sack(0, 2000)]
    );
    assert_eq!(state(&h, id), TcpState::FinWait1);
    assert_eq!(
        h.feed(11, &Seg::client(id, c(0)).ack(s(1))),
        vec![cack(1, 0, 1000)]
    );
    assert_eq!(state(&h, id), TcpState::FinWait2);
    assert_eq!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(1)).fin()),
        vec![fin(Side::Client, 0)]
    );
    assert_eq!(state(&h, id), TcpState::FinWait2);
    assert_eq!(
        h.feed(13, &Seg::server(id, s(1)).ack(c(1)).win(2000)),
        vec![sack(1, 2000), EventKind::Closed(CloseHow::Graceful)]
    );
    assert_eq!(state(&h, id), TcpState::TimeWait);
    assert_eq!(
        h.tracker.snapshot(&id).unwrap().restorability,
        Restorability::Closed
    );
}

#[test]
fn simultaneous_close_passes_through_closing() {
    let (mut h, id) = established();
    h.feed(10, &Seg::server(id, s(0)).ack(c(0)).win(2000).fin());
    // The client's FIN crossed the server's: it does not acknowledge it.
    assert_eq!(
        h.feed(11, &Seg::client(id, c(0)).ack(s(0)).fin()),
        vec![fin(Side::Client, 0)]
    );
    assert_eq!(
        h.feed(12, &Seg::server(id, s(1)).ack(c(1)).win(2000)),
        vec![sack(1, 2000)]
    );
    assert_eq!(state(&h, id), TcpState::Closing);
    let snap = h.tracker.snapshot(&id).unwrap();
    assert!(snap.send.fin && snap.receive.fin);
    assert_eq!(
        h.feed(13, &Seg::client(id, c(1)).ack(s(1))),
        vec![cack(1, 1, 1000), EventKind::Closed(CloseHow::Graceful)]
    );
    assert_eq!(state(&h, id), TcpState::TimeWait);
}

#[test]
fn half_close_with_data_still_flowing_to_the_client() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"bye").fin());
    assert_eq!(h.events.last().unwrap().kind, fin(Side::Client, 3));
    h.feed(11, &Seg::server(id, s(0)).ack(c(4)).win(2000));
    assert_eq!(state(&h, id), TcpState::CloseWait);
    assert_eq!(
        h.feed(
            12,
            &Seg::server(id, s(0)).ack(c(4)).win(2000).data(b"still")
        ),
        vec![sdata(0, b"still")]
    );
    assert_eq!(
        h.feed(13, &Seg::client(id, c(4)).ack(s(5))),
        vec![cack(5, 4, 1000)]
    );
    assert_eq!(
        h.feed(
            14,
            &Seg::server(id, s(5)).ack(c(4)).win(2000).data(b"going")
        ),
        vec![sdata(5, b"going")]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.state, TcpState::CloseWait);
    assert_eq!(snap.restorability, Restorability::Restorable);
    assert_eq!(snap.send.una, SeqNumber(s(5)));
    assert_eq!(snap.send.bytes, b"going");
    assert_eq!(snap.receive.next, SeqNumber(c(4)));
    // Client data beyond its FIN is invalid and ignored.
    assert!(
        h.feed(15, &Seg::client(id, c(4)).ack(s(5)).data(b"zzz"))
            .is_empty()
    );
}

#[test]
fn rst_from_the_server_closes() {
    let (mut h, id) = established();
    assert_eq!(
        h.feed(10, &Seg::server(id, s(0)).rst()),
        vec![EventKind::Closed(CloseHow::Reset(Side::Server))]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        (snap.state, snap.restorability),
        (TcpState::Closed, Restorability::Closed)
    );
}

#[test]
fn client_rst_counts_only_inside_the_window() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(3)).win(2000));
    // A blind RST far outside the server's receive window is ignored (RFC 5961 §3).
    assert!(h.feed(12, &Seg::client(id, c(50_000)).rst()).is_empty());
    assert!(
        h.feed(12, &Seg::client(id, c(3).wrapping_sub(100)).rst())
            .is_empty()
    );
    assert_eq!(state(&h, id), TcpState::Established);
    assert_eq!(
        h.feed(13, &Seg::client(id, c(3)).rst()),
        vec![EventKind::Closed(CloseHow::Reset(Side::Client))]
    );
    assert_eq!(state(&h, id), TcpState::Closed);
    assert!(
        h.feed(14, &Seg::server(id, s(0)).rst()).is_empty(),
        "already closed"
    );
}

#[test]
fn client_rst_inside_the_window_but_not_at_rcv_nxt_is_ignored() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(3)).win(2000));
    // In the window [3, 2003) but not at RCV.NXT: Linux sends a challenge ACK and keeps the
    // connection (RFC 5961 §3.2).
    for seq in [c(4), c(1000), c(2003), c(2)] {
        assert!(h.feed(12, &Seg::client(id, seq).rst()).is_empty());
    }
    assert_eq!(state(&h, id), TcpState::Established);
    assert_eq!(h.tracker.stats().closed, 0);
    // After the client's FIN, RCV.NXT - 1 resets too (`tcp_reset_check()`), while it is not
    // yet before RCV.WUP (the server has not acknowledged the FIN).
    h.feed(13, &Seg::client(id, c(3)).ack(s(0)).fin());
    assert_eq!(
        h.feed(15, &Seg::client(id, c(3)).rst()),
        vec![EventKind::Closed(CloseHow::Reset(Side::Client))]
    );
}

#[test]
fn client_rst_at_the_end_of_the_highest_sack_block_resets() {
    let mut h = Harness::new(config());
    let id = id4();
    assert!(
        h.feed(0, &Seg::client(id, CISN).syn().win(1000).sack_ok())
            .is_empty()
    );
    h.feed(
        1,
        &Seg::server(id, SISN)
            .syn()
            .ack(CISN + 1)
            .win(2000)
            .sack_ok(),
    );
    h.feed(2, &Seg::client(id, c(0)).ack(s(0)));
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    // 5..8 buffered out of order: the server's highest SACK block ends at 8.
    h.feed(11, &Seg::client(id, c(5)).ack(s(0)).data(b"fgh"));
    assert!(h.feed(12, &Seg::client(id, c(7)).rst()).is_empty());
    assert_eq!(state(&h, id), TcpState::Established);
    assert_eq!(
        h.feed(13, &Seg::client(id, c(8)).rst()),
        vec![EventKind::Closed(CloseHow::Reset(Side::Client))]
    );
}

// ---------------------------------------------------------------- unsafe connections

#[test]
fn mid_stream_pick_up_is_flagged_unsafe() {
    let mut h = Harness::new(config());
    let id = id4();
    let kinds = h.feed(5, &Seg::client(id, 7000).ack(9000).data(b"abc"));
    let expected = Handshake::mid_stream(SeqNumber(6999), SeqNumber(8999));
    assert_eq!(
        kinds,
        vec![
            EventKind::Opened(expected),
            data(0, b"abc"),
            cack(0, 0, 1000)
        ]
    );
    assert_eq!(
        h.feed(6, &Seg::server(id, 9000).ack(7003).data(b"xy")),
        vec![sdata(0, b"xy"), sack(3, 1000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        snap.restorability,
        Restorability::Unsafe(UnsafeReason::MidStream)
    );
    assert!(!snap.is_restorable());
    assert_eq!(snap.state, TcpState::Established);
    assert_eq!(snap.receive.next, SeqNumber(7003));
    assert_eq!(h.tracker.stats().mid_stream, 1);

    // A SYN seen but its SYN-ACK missed: picked up from the next segment.
    let mut h = Harness::new(config());
    h.feed(0, &Seg::client(id, CISN).syn());
    let kinds = h.feed(1, &Seg::client(id, c(0)).ack(s(0)));
    assert!(
        matches!(kinds.as_slice(), [EventKind::Opened(hs), _] if hs.mid_stream && hs.client_isn == SeqNumber(CISN))
    );

    // Without pick-up, a stray segment is ignored.
    let mut cfg = config();
    cfg.pick_up_mid_stream = false;
    let mut h = Harness::new(cfg);
    assert!(
        h.feed(0, &Seg::client(id, 7000).ack(9000).data(b"abc"))
            .is_empty()
    );
    assert!(h.tracker.is_empty());
}

#[test]
fn capture_hole_in_client_bytes_is_unsafe_and_the_stream_continues() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    // "def" at 3 is never captured; "ghi" at 6 is buffered.
    assert_eq!(
        h.feed(12, &Seg::client(id, c(6)).ack(s(0)).data(b"ghi")),
        vec![cack(0, 6, 1000)]
    );
    // The server acknowledges up to 7: the hole is reported, the stream resumes at 7.
    assert_eq!(
        h.feed(13, &Seg::server(id, s(0)).ack(c(7)).win(2000)),
        vec![
            EventKind::Unsafe(UnsafeReason::CaptureHole {
                side: Side::Client,
                offset: 3
            }),
            data(7, b"hi"),
            sack(7, 2000),
        ]
    );
    assert_eq!(
        h.feed(14, &Seg::client(id, c(9)).ack(s(0)).data(b"jkl")),
        vec![data(9, b"jkl"), cack(0, 9, 1000)]
    );
    assert_eq!(
        h.feed(15, &Seg::server(id, s(0)).ack(c(12)).win(2000)),
        vec![sack(12, 2000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        snap.restorability,
        Restorability::Unsafe(UnsafeReason::CaptureHole {
            side: Side::Client,
            offset: 3
        })
    );
    assert_eq!(snap.receive.next, SeqNumber(c(12)));
    assert_eq!(h.tracker.stats().unsafe_connections, 1);
}

#[test]
fn capture_hole_acknowledged_through_the_client_fin() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    // "def" lost; "ghi" + FIN captured, so the FIN sits at 9 beyond the hole.
    h.feed(11, &Seg::client(id, c(6)).ack(s(0)).data(b"ghi").fin());
    let kinds = h.feed(12, &Seg::server(id, s(0)).ack(c(10)).win(2000));
    assert_eq!(
        kinds,
        vec![
            EventKind::Unsafe(UnsafeReason::CaptureHole {
                side: Side::Client,
                offset: 3
            }),
            // The stream resumes at the acknowledged point; buffered bytes below it are
            // dropped with the hole (the connection is unsafe anyway).
            fin(Side::Client, 9),
            sack(10, 2000),
        ]
    );
    assert_eq!(state(&h, id), TcpState::CloseWait);
    // The server closes too and the client acknowledges: a graceful close.
    h.feed(13, &Seg::server(id, s(0)).ack(c(10)).win(2000).fin());
    let kinds = h.feed(14, &Seg::client(id, c(10)).ack(s(1)));
    assert_eq!(kinds.last(), Some(&EventKind::Closed(CloseHow::Graceful)));
}

#[test]
fn reassembly_overflow_is_reported_when_the_server_acknowledges_the_dropped_bytes() {
    let mut cfg = config();
    cfg.reassembly_limit = 4;
    let mut h = Harness::new(cfg);
    let id = id4();
    plain_handshake(&mut h, id);
    // "abc" at 0 is late; "defgh" at 3 does not fit the 4-byte buffer.
    h.feed(10, &Seg::client(id, c(3)).ack(s(0)).data(b"defgh"));
    assert_eq!(h.tracker.stats().reassembly_dropped, 5);
    assert_eq!(
        h.feed(11, &Seg::server(id, s(0)).ack(c(8)).win(2000)),
        vec![
            EventKind::Unsafe(UnsafeReason::ReassemblyOverflow { side: Side::Client }),
            sack(8, 2000)
        ]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        snap.restorability,
        Restorability::Unsafe(UnsafeReason::ReassemblyOverflow { side: Side::Client })
    );
    assert_eq!(snap.receive.next, SeqNumber(c(8)));
    // The late bytes arrive: already acknowledged, nothing new.
    assert!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"))
            .iter()
            .all(|k| !matches!(k, EventKind::ClientData { .. }))
    );
    assert_eq!(
        h.feed(13, &Seg::client(id, c(8)).ack(s(0)).data(b"ij")),
        vec![data(8, b"ij"), cack(0, 8, 1000)]
    );
}

// ---------------------------------------------------------------- table and lifetime

fn other_client(port: u16) -> ConnectionId {
    let mut id = id4();
    id.client.set_port(port);
    id
}

#[test]
fn table_full_tracks_no_more_until_a_closed_connection_is_evicted() {
    let mut cfg = config();
    cfg.max_connections = 1;
    let mut h = Harness::new(cfg);
    let a = id4();
    let b = other_client(40_001);
    plain_handshake(&mut h, a);
    let mut out = Vec::new();
    let syn_b = Seg::client(b, 77).syn();
    assert_eq!(
        h.tracker
            .on_segment(Instant::from_millis(10), &syn_b.repr(), &mut out),
        FrameDisposition::Ignored
    );
    assert_eq!(h.tracker.stats().untracked_table_full, 1);
    assert_eq!(h.tracker.len(), 1);
    h.feed(11, &Seg::server(a, s(0)).rst());
    assert_eq!(
        h.tracker
            .on_segment(Instant::from_millis(12), &syn_b.repr(), &mut out),
        FrameDisposition::Tracked
    );
    assert!(out.is_empty());
    assert_eq!(h.tracker.len(), 1);
    assert!(
        h.tracker.snapshot(&a).is_none(),
        "the closed connection made room"
    );
    assert_eq!(h.tracker.pending_handshakes(), 1);
    assert_eq!(h.tracker.stats().evicted, 1);
    // A foreign segment is not counted against the table.
    let mut foreign = syn_b.clone();
    foreign.dst.set_port(8080);
    assert_eq!(
        h.tracker
            .on_segment(Instant::from_millis(13), &foreign.repr(), &mut out),
        FrameDisposition::Foreign
    );
}

#[test]
fn syn_flood_evicts_the_oldest_pending_handshake_never_an_open_connection() {
    let mut cfg = config();
    cfg.max_connections = 3;
    let mut h = Harness::new(cfg);
    let a = id4();
    plain_handshake(&mut h, a);
    let mut out = Vec::new();
    let mut syn = |h: &mut Harness, ms: u64, port: u16| {
        h.tracker.on_segment(
            Instant::from_millis(ms),
            &Seg::client(other_client(port), 7_000 + u32::from(port))
                .syn()
                .repr(),
            &mut out,
        )
    };
    assert_eq!(syn(&mut h, 10, 1), FrameDisposition::Tracked);
    assert_eq!(syn(&mut h, 11, 2), FrameDisposition::Tracked);
    assert_eq!(h.tracker.len(), 3);
    // Full: each new SYN pushes out the oldest pending one.
    for port in 3..=40 {
        assert_eq!(
            syn(&mut h, 10 + u64::from(port), port),
            FrameDisposition::Tracked
        );
        assert_eq!(h.tracker.len(), 3);
    }
    assert_eq!(h.tracker.pending_handshakes(), 2);
    let stats = h.tracker.stats();
    assert_eq!((stats.evicted_handshakes, stats.evicted), (38, 38));
    assert_eq!(stats.untracked_table_full, 0);
    assert!(
        h.tracker.snapshot(&a).is_some(),
        "the open connection stays"
    );
    // The two newest SYNs survived: their SYN-ACKs open them.
    for port in [39u16, 40] {
        let b = other_client(port);
        let opened = h.feed(
            60,
            &Seg::server(b, SISN)
                .syn()
                .ack(7_001 + u32::from(port))
                .win(2000),
        );
        assert!(matches!(opened.as_slice(), [EventKind::Opened(_)]));
    }
    // A table full of open connections refuses new ones.
    assert_eq!(syn(&mut h, 61, 41), FrameDisposition::Ignored);
    assert_eq!(h.tracker.stats().untracked_table_full, 1);
    // A closed connection goes before any pending handshake.
    h.feed(62, &Seg::server(a, s(0)).rst());
    assert_eq!(syn(&mut h, 63, 42), FrameDisposition::Tracked);
    assert!(h.tracker.snapshot(&a).is_none());
    assert_eq!(h.tracker.stats().evicted_handshakes, 38);
    assert_eq!(syn(&mut h, 64, 43), FrameDisposition::Tracked);
    assert_eq!(h.tracker.stats().evicted_handshakes, 39);
    assert_eq!(h.tracker.pending_handshakes(), 1);
    // The survivor is the newest SYN: its SYN-ACK opens it.
    let newest = other_client(43);
    let opened = h.feed(70, &Seg::server(newest, SISN).syn().ack(7_044).win(2000));
    assert!(matches!(opened.as_slice(), [EventKind::Opened(_)]));
}

#[test]
fn poll_forgets_closed_connections_after_the_linger_and_stale_syns() {
    let mut cfg = config();
    cfg.closed_linger = Duration::from_secs(60);
    cfg.handshake_timeout = Duration::from_secs(75);
    let mut h = Harness::new(cfg);
    let a = id4();
    plain_handshake(&mut h, a);
    h.feed(1000, &Seg::server(a, s(0)).rst());
    let b = other_client(40_002);
    h.feed(2000, &Seg::client(b, 5).syn());
    h.tracker.poll(Instant::from_millis(60_999));
    assert!(h.tracker.snapshot(&a).is_some(), "still lingering");
    h.tracker.poll(Instant::from_millis(61_000));
    assert!(h.tracker.snapshot(&a).is_none());
    assert_eq!(h.tracker.pending_handshakes(), 1);
    h.tracker.poll(Instant::from_millis(77_000));
    assert!(h.tracker.is_empty());
    assert_eq!(h.tracker.stats().evicted, 2);
    // Open connections are never forgotten by time alone.
    let c_id = other_client(40_003);
    plain_handshake(&mut h, c_id);
    h.tracker.poll(Instant::from_millis(10_000_000));
    assert!(h.tracker.snapshot(&c_id).is_some());
}

#[test]
fn a_new_syn_on_a_tracked_tuple_is_a_new_incarnation_once_the_server_answers() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"old"));
    // Linux answers a SYN on an established connection with a challenge ACK (RFC 5961 §4):
    // the connection goes on, so a stray or spoofed SYN changes nothing.
    assert!(h.feed(20, &Seg::client(id, 9_999).syn()).is_empty());
    assert!(
        h.feed(21, &Seg::server(id, s(0)).ack(c(3)))
            .iter()
            .all(|k| matches!(k, EventKind::ServerAck { .. }))
    );
    assert_eq!(
        h.feed(22, &Seg::client(id, c(3)).ack(s(0)).data(b"go on")),
        vec![data(3, b"go on"), cack(0, 3, 1000)]
    );
    assert_eq!(state(&h, id), TcpState::Established);
    assert_eq!(
        h.tracker.snapshot(&id).unwrap().restorability,
        Restorability::Restorable
    );
    // The server accepts the new SYN (it had lost the old connection): a new incarnation.
    let kinds = h.feed(23, &Seg::server(id, 123).syn().ack(10_000));
    assert!(
        matches!(kinds.as_slice(), [EventKind::Closed(CloseHow::Evicted), EventKind::Opened(hs)]
            if hs.client_isn == SeqNumber(9_999) && hs.server_isn == SeqNumber(123)),
        "{kinds:?}"
    );
    assert_eq!(
        h.feed(24, &Seg::client(id, 10_000).ack(124).data(b"new")),
        vec![data(0, b"new"), cack(0, 0, 1000)]
    );
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.client_isn, SeqNumber(9_999));
    assert_eq!(snap.state, TcpState::Established);

    // After a graceful close, the next SYN opens a new incarnation at once.
    h.feed(30, &Seg::client(id, 10_003).ack(124).fin());
    h.feed(31, &Seg::server(id, 124).ack(10_004).fin());
    h.feed(32, &Seg::client(id, 10_004).ack(125));
    assert_eq!(state(&h, id), TcpState::Closed);
    assert!(h.feed(40, &Seg::client(id, 50_000).syn()).is_empty());
    assert!(
        h.tracker.snapshot(&id).is_none(),
        "the closed record made way for the SYN"
    );
    assert!(matches!(
        h.feed(41, &Seg::server(id, 1).syn().ack(50_001)).as_slice(),
        [EventKind::Opened(_)]
    ));

    // A pending SYN the server never answers expires with the handshake timeout.
    let (mut h, id) = established();
    h.feed(50, &Seg::client(id, 77).syn());
    h.tracker
        .poll(Instant::from_millis(50) + Duration::from_secs(76));
    assert!(
        h.feed(100_000, &Seg::server(id, 5).syn().ack(78))
            .is_empty(),
        "no longer pending"
    );
    assert_eq!(state(&h, id), TcpState::Established);
}

#[test]
fn ipv6_connection_is_tracked_with_the_ipv6_default_mss() {
    let mut h = Harness::new(config());
    let id = id6();
    plain_handshake(&mut h, id);
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"v6 data"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(7)).data(b"ok"));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.options.mss, 1220, "RFC 9293 §3.7.1 default for IPv6");
    assert_eq!(snap.receive.next, SeqNumber(c(7)));
    assert_eq!(snap.send.bytes, b"ok");
    assert_eq!(snap.id, id);
    assert_eq!(h.tracker.snapshot(&id4()), None);
}

#[test]
fn frames_go_through_the_same_path_as_segments() {
    use cttm_core::wire::{LinkType, ParseError, emit_frame};
    let mut t = cttm_core::Tracker::new(config());
    let id = id4();
    let mut out = Vec::new();
    let segs = [
        Seg::client(id, CISN).syn(),
        Seg::server(id, SISN).syn().ack(CISN + 1),
        Seg::client(id, c(0)).ack(s(0)).data(b"framed"),
    ];
    for (i, seg) in segs.iter().enumerate() {
        let frame = emit_frame(LinkType::Ethernet, &seg.repr()).unwrap();
        assert_eq!(
            t.on_frame(
                Instant::from_millis(i as u64),
                LinkType::Ethernet,
                &frame,
                &mut out
            ),
            Ok(FrameDisposition::Tracked)
        );
    }
    let kinds: Vec<EventKind> = out.iter().map(|e| e.kind.clone()).collect();
    assert!(
        matches!(kinds.as_slice(), [EventKind::Opened(_), d, EventKind::ClientAck { .. }] if *d == data(0, b"framed"))
    );
    assert_eq!(
        t.on_frame(Instant::ZERO, LinkType::RawIp, &[0x45], &mut out),
        Err(ParseError::Truncated { layer: "IPv4" })
    );
    let stats = t.stats();
    assert_eq!((stats.frames, stats.malformed, stats.segments), (4, 1, 3));
}

#[test]
fn send_window_updates_follow_tcp_may_update_window() {
    let (mut h, id) = established();
    h.feed(
        10,
        &Seg::server(id, s(0))
            .ack(c(0))
            .win(2000)
            .data(b"0123456789"),
    );
    let window = |h: &Harness| h.tracker.snapshot(&id).unwrap().window;
    // Same SEG.SEQ, same ACK: a narrower window is ignored, a wider one taken.
    assert_eq!(
        h.feed(11, &Seg::client(id, c(0)).ack(s(0)).win(800)),
        vec![cack(0, 0, 800)]
    );
    assert_eq!(window(&h).snd_wnd, 1000);
    assert_eq!(
        h.feed(12, &Seg::client(id, c(0)).ack(s(0)).win(1500)),
        vec![cack(0, 0, 1500)]
    );
    assert_eq!((window(&h).snd_wnd, window(&h).max_window), (1500, 1500));
    // A window closing to zero is taken even without new data acknowledged.
    assert_eq!(
        h.feed(13, &Seg::client(id, c(0)).ack(s(0)).win(0)),
        vec![cack(0, 0, 0)]
    );
    assert_eq!((window(&h).snd_wnd, window(&h).max_window), (0, 1500));
    // The ACK advances: taken.
    assert_eq!(
        h.feed(14, &Seg::client(id, c(0)).ack(s(6)).win(700)),
        vec![cack(6, 0, 700)]
    );
    assert_eq!(window(&h).snd_wnd, 700);
    // A reordered older ACK with a wider window changes nothing (Linux `old_ack`).
    assert_eq!(
        h.feed(15, &Seg::client(id, c(0)).ack(s(3)).win(5000)),
        vec![cack(3, 0, 5000)]
    );
    let w = window(&h);
    assert_eq!((w.snd_wnd, w.max_window, w.snd_wl1), (700, 1500, c(0)));
    assert_eq!(h.tracker.snapshot(&id).unwrap().send.una, SeqNumber(s(6)));
    // A newer SEG.SEQ (client data) updates SND.WL1 and the window.
    h.feed(16, &Seg::client(id, c(0)).ack(s(6)).win(600).data(b"ab"));
    h.feed(17, &Seg::client(id, c(2)).ack(s(6)).win(400));
    let w = window(&h);
    assert_eq!((w.snd_wnd, w.snd_wl1), (400, c(2)));
}

#[test]
fn keepalive_probes_and_retransmitted_fins_carry_nothing_new() {
    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"abc"));
    h.feed(11, &Seg::server(id, s(0)).ack(c(3)).win(2000));
    // Linux keepalive: SEQ = RCV.NXT - 1 with one old byte (or none).
    let kinds = h.feed(7200, &Seg::client(id, c(2)).ack(s(0)).data(b"c"));
    assert!(
        kinds
            .iter()
            .all(|k| !matches!(k, EventKind::ClientData { .. })),
        "{kinds:?}"
    );
    h.feed(7201, &Seg::client(id, c(2)).ack(s(0)));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(snap.receive.next, SeqNumber(c(3)));
    assert_eq!(snap.restorability, Restorability::Restorable);
    // The client's FIN, then the same FIN retransmitted with its data.
    assert_eq!(
        h.feed(7300, &Seg::client(id, c(3)).ack(s(0)).data(b"de").fin()),
        vec![data(3, b"de"), fin(Side::Client, 5), cack(0, 3, 1000)]
    );
    assert!(
        h.feed(7301, &Seg::client(id, c(3)).ack(s(0)).data(b"de").fin())
            .is_empty()
    );
    assert!(
        h.feed(7302, &Seg::client(id, c(5)).ack(s(0)).fin())
            .iter()
            .all(|k| !matches!(k, EventKind::Fin { .. }))
    );
    assert_eq!(
        h.events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Fin { .. }))
            .count(),
        1
    );
}

#[test]
fn server_fin_with_data_is_acknowledged_piecewise() {
    let (mut h, id) = established();
    assert_eq!(
        h.feed(
            10,
            &Seg::server(id, s(0))
                .ack(c(0))
                .win(2000)
                .data(b"last words")
                .fin()
        ),
        vec![
            sdata(0, b"last words"),
            fin(Side::Server, 10),
            sack(0, 2000)
        ]
    );
    assert_eq!(state(&h, id), TcpState::FinWait1);
    h.feed(11, &Seg::client(id, c(0)).ack(s(5)));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        (snap.send.una, snap.send.bytes.as_slice(), snap.send.fin),
        (SeqNumber(s(5)), &b"words"[..], true)
    );
    assert_eq!(snap.send.next(), SeqNumber(s(11)));
    h.feed(12, &Seg::client(id, c(0)).ack(s(10)));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!(
        (snap.state, snap.send.bytes.len(), snap.send.fin),
        (TcpState::FinWait1, 0, true)
    );
    h.feed(13, &Seg::client(id, c(0)).ack(s(11)));
    let snap = h.tracker.snapshot(&id).unwrap();
    assert_eq!((snap.state, snap.send.fin), (TcpState::FinWait2, false));
    assert_eq!(snap.send.next(), SeqNumber(s(11)));
}

#[test]
fn tcp_fast_open_data_leaves_the_connection_unsafe() {
    // TCP Fast Open: the SYN carries data and the SYN-ACK acknowledges it. The tracker does
    // not take SYN data as stream bytes, so it must never call such a connection restorable.
    let mut h = Harness::new(config());
    let id = id4();
    h.feed(0, &Seg::client(id, CISN).syn().data(b"tfo"));
    let kinds = h.feed(1, &Seg::server(id, SISN).syn().ack(c(3)));
    assert!(
        kinds.is_empty(),
        "the SYN-ACK does not acknowledge the bare SYN: {kinds:?}"
    );
    let kinds = h.feed(2, &Seg::client(id, c(3)).ack(s(0)).data(b"more"));
    assert!(
        matches!(kinds.first(), Some(EventKind::Opened(hs)) if hs.mid_stream),
        "{kinds:?}"
    );
    assert!(!h.tracker.snapshot(&id).unwrap().is_restorable());
}

#[test]
fn mark_unsafe_reports_once_per_connection() {
    let (mut h, id) = established();
    let b = {
        let mut b = id;
        b.client.set_port(41_000);
        b
    };
    plain_handshake(&mut h, b);
    let mut out = Vec::new();
    let why = UnsafeReason::CaptureHole {
        side: Side::Client,
        offset: 0,
    };
    h.tracker
        .mark_unsafe(&id, Instant::from_millis(50), why, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, EventKind::Unsafe(why));
    h.tracker.mark_all_unsafe(
        Instant::from_millis(51),
        UnsafeReason::ReassemblyOverflow { side: Side::Server },
        &mut out,
    );
    assert_eq!(
        out.len(),
        2,
        "only the connection not yet unsafe reports: {out:?}"
    );
    assert_eq!(out[1].id, b);
    assert_eq!(
        h.tracker.snapshot(&id).unwrap().restorability,
        Restorability::Unsafe(why)
    );
}

#[test]
fn data_beyond_a_known_fin_is_never_delivered() {
    // Found by the fuzz test: a piece lying wholly past the FIN used to slice out of bounds,
    // and a piece buffered before the FIN was known used to be delivered past it.
    let (mut h, id) = established();
    assert_eq!(
        h.feed(10, &Seg::client(id, c(0)).ack(s(0)).data(b"a").fin()),
        vec![data(0, b"a"), fin(Side::Client, 1)]
    );
    assert!(
        h.feed(11, &Seg::client(id, c(2)).ack(s(0)).data(b"zz"))
            .iter()
            .all(|k| !matches!(k, EventKind::ClientData { .. }))
    );

    let (mut h, id) = established();
    h.feed(10, &Seg::client(id, c(5)).ack(s(0)).data(b"beyond"));
    h.feed(11, &Seg::client(id, c(2)).ack(s(0)).data(b"cde").fin());
    // Bytes 0..2 were never captured; the server acknowledges everything up to the FIN.
    assert_eq!(
        h.feed(12, &Seg::server(id, s(0)).ack(c(6)).win(2000)),
        vec![
            EventKind::Unsafe(UnsafeReason::CaptureHole {
                side: Side::Client,
                offset: 0
            }),
            fin(Side::Client, 5),
            sack(6, 2000),
        ]
    );
    let record = h.tracker.record(&id).unwrap();
    assert_eq!(record.stream(Side::Client).received_end(), 5);
    assert_eq!(state(&h, id), TcpState::CloseWait);
    let mut replica = cttm_core::Replica::new(cttm_core::ReplicaConfig {
        client_retention: ClientRetention::DropOnAck,
        max_connections: 4,
    });
    for e in &h.events {
        replica.apply_event(e).unwrap();
    }
    assert_eq!(replica.snapshots(), h.tracker.snapshots());
}
