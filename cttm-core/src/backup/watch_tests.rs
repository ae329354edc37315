use super::*;
use crate::ConnectionId;
use crate::event::{ConnectionEvent, EventKind, Handshake};
use crate::record::{ClientRetention, ConnectionRecord};
use crate::snapshot::WindowScale;
use crate::wire::{TcpFlags, TcpOptions};

fn id() -> ConnectionId {
    ConnectionId {
        client: "198.18.0.1:40000".parse().expect("addr"),
        server: "198.18.0.10:7000".parse().expect("addr"),
    }
}

/// Client ISN 1000 (stream base 1001), server ISN 5000 (base 5001); the server sent 10
/// bytes, none acknowledged.
fn snapshot() -> ConnectionSnapshot {
    let mut record = ConnectionRecord::open(
        id(),
        Instant::ZERO,
        Handshake::without_options(SeqNumber(1000), SeqNumber(5000)),
        ClientRetention::DropOnAck,
    );
    for kind in [
        EventKind::ClientAck {
            offset: 0,
            seq_offset: 0,
            window: 64240,
            timestamps: None,
        },
        EventKind::ServerData {
            offset: 0,
            bytes: b"0123456789".to_vec(),
        },
    ] {
        record
            .apply(&ConnectionEvent {
                id: id(),
                at: Instant::from_millis(1),
                kind,
            })
            .expect("apply");
    }
    record.snapshot()
}

fn segment(flags: TcpFlags, seq: u32, ack: u32) -> SegmentRepr<'static> {
    SegmentRepr {
        src: id().client,
        dst: id().server,
        seq: SeqNumber(seq),
        ack: SeqNumber(ack),
        flags,
        window: 500,
        options: TcpOptions::default(),
        payload: &[],
    }
}

const RESTORED: Instant = Instant::from_millis(100);
const ENDS: SpliceEnds = SpliceEnds {
    read_end: 0,
    sent_end: 10,
};

#[test]
fn the_clients_answer_after_the_restore_shows_its_acknowledgement() {
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    let ack = segment(TcpFlags::ACK, 1001, 5001 + 4);
    // Captured before the restore: it says nothing of where the client stands now.
    watch.observe(&ack, Instant::from_millis(99), Instant::ZERO, ENDS);
    assert_eq!(watch.client_acked(), None);
    watch.observe(&ack, RESTORED, Instant::ZERO, ENDS);
    assert_eq!(watch.client_acked(), Some((4, 500)));
    // An older acknowledgement does not move it back.
    watch.observe(
        &segment(TcpFlags::ACK, 1001, 5002),
        RESTORED,
        Instant::ZERO,
        ENDS,
    );
    assert_eq!(watch.client_acked(), Some((4, 500)));
    let mut watch_now = watch.clone();
    assert_eq!(
        watch_now.lost(Instant::from_millis(100_000), Duration::ZERO, 0),
        None
    );
}

#[test]
fn a_client_acknowledging_bytes_never_held_is_lost_at_once() {
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    watch.observe(
        &segment(TcpFlags::ACK, 1001, 5001 + 20),
        RESTORED,
        Instant::from_millis(5),
        ENDS,
    );
    let (rcv_nxt, why) = watch
        .lost(Instant::from_millis(5), Duration::from_secs(3), 0)
        .expect("lost");
    assert_eq!(
        rcv_nxt,
        SeqNumber(5021),
        "the reset carries the client's RCV.NXT"
    );
    assert!(why.contains("up to offset 19"), "{why}");
}

#[test]
fn client_bytes_beyond_a_hole_are_lost_only_after_the_grace() {
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    let grace = Duration::from_secs(3);
    let t0 = Instant::from_millis(10_000);
    watch.observe(&segment(TcpFlags::ACK, 1001 + 50, 5011), RESTORED, t0, ENDS);
    assert_eq!(watch.lost(t0 + Duration::from_secs(2), grace, 0), None);
    let (rcv_nxt, why) = watch.lost(t0 + grace, grace, 0).expect("lost");
    assert_eq!(rcv_nxt, SeqNumber(5011));
    assert!(why.contains("stayed at 0 for 3000 ms"), "{why}");
    // Had the splice caught up (the client retransmitted the hole), nothing is lost.
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    watch.observe(&segment(TcpFlags::ACK, 1001 + 50, 5011), RESTORED, t0, ENDS);
    assert_eq!(watch.lost(t0 + grace, grace, 49), None);
}

#[test]
fn a_fin_after_the_data_is_not_a_lead() {
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    let fin = segment(TcpFlags::ACK.with(TcpFlags::FIN), 1001 + 1, 5001 + 11);
    watch.observe(&fin, RESTORED, Instant::ZERO, ENDS);
    assert_eq!(
        watch.lost(Instant::from_millis(60_000), Duration::ZERO, 0),
        None
    );
}

#[test]
fn a_repeated_syn_after_the_restore_means_the_syn_ack_never_arrived() {
    let mut watch = ClientWatch::new(&snapshot(), RESTORED);
    let syn = segment(TcpFlags::SYN, 1000, 0);
    watch.observe(&syn, Instant::from_millis(50), Instant::ZERO, ENDS);
    assert!(!watch.never_got_syn_ack(), "a SYN from before the restore");
    watch.observe(&segment(TcpFlags::SYN, 7, 0), RESTORED, Instant::ZERO, ENDS);
    assert!(!watch.never_got_syn_ack(), "another connection's SYN");
    watch.observe(&syn, RESTORED, Instant::ZERO, ENDS);
    assert!(watch.never_got_syn_ack());
}

#[test]
fn a_socket_is_reseated_at_the_clients_acknowledgement() {
    let mut dumped = snapshot();
    dumped.options.window_scale = Some(WindowScale {
        send: 2,
        receive: 7,
    });
    let base = SeqNumber(5001);
    let reseat = reseat(dumped, base, (4, 1000), 10).expect("reseat");
    assert_eq!(reseat.missing, b"456789");
    assert_eq!(reseat.acked, 4);
    assert_eq!(reseat.snapshot.send.una, SeqNumber(5005));
    assert!(reseat.snapshot.send.bytes.is_empty());
    assert_eq!(
        reseat.snapshot.window.snd_wnd, 4000,
        "the client's window, scaled"
    );
}

#[test]
fn a_socket_with_nothing_to_resend_is_kept() {
    let base = SeqNumber(5001);
    assert!(
        reseat(snapshot(), base, (11, 1000), 10).is_err(),
        "acknowledges beyond"
    );
    assert!(
        reseat(snapshot(), base, (4, 1000), 12).is_err(),
        "the splice sent more"
    );
    let mut fin = snapshot();
    fin.send.fin = true;
    assert!(reseat(fin, base, (4, 1000), 10).is_err(), "a FIN is queued");
}
