//! One test per rule of sync mode's hold: crafted segments and acknowledgements at explicit
//! times, exact verdicts.

use super::*;
use crate::endpoint::{ServiceEndpoint, ServiceSet};
use crate::event::UnsafeReason;
use crate::primary::degrade::DegradeReason;
use crate::primary::degrade::tests::{down, healthy};
use crate::seq::SeqNumber;
use crate::track::TrackerConfig;
use crate::wire::{TcpFlags, TcpOptions};
use std::net::SocketAddr;

const SERVICE: &str = "198.18.0.1:80";
const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 5_000_000;
const DEGRADE_AFTER: Duration = Duration::from_millis(300);

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn client(n: u16) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 2], 40_000 + n))
}

fn id(n: u16) -> ConnectionId {
    ConnectionId {
        client: client(n),
        server: SERVICE.parse().expect("service"),
    }
}

/// Payload bytes for the crafted segments.
static BYTES: [u8; 256] = [b'x'; 256];

/// An acknowledging segment from `src` to `dst`, as the queue would hand it over.
fn segment(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32) -> SegmentRepr<'static> {
    SegmentRepr {
        src,
        dst,
        seq: SeqNumber(seq),
        ack: SeqNumber(ack),
        flags: TcpFlags::ACK,
        window: 1000,
        options: TcpOptions::default(),
        payload: &[],
    }
}

/// The crafted segments of connection `id`.
struct Seg;

impl Seg {
    fn server(id: ConnectionId, seq: u32, ack: u32) -> SegmentRepr<'static> {
        segment(id.server, id.client, seq, ack)
    }

    fn client(id: ConnectionId, seq: u32, ack: u32) -> SegmentRepr<'static> {
        segment(id.client, id.server, seq, ack)
    }
}

/// Builds on a crafted segment.
trait Craft {
    /// With `flag` set too.
    fn flag(self, flag: TcpFlags) -> Self;
    /// Carrying `len` bytes.
    fn data(self, len: usize) -> Self;
}

impl Craft for SegmentRepr<'static> {
    fn flag(mut self, flag: TcpFlags) -> Self {
        self.flags = self.flags.with(flag);
        self
    }

    fn data(mut self, len: usize) -> Self {
        self.payload = &BYTES[..len];
        self
    }
}

/// The tracker of the service, fed segment by segment.
struct Service {
    tracker: Tracker,
}

impl Service {
    fn new() -> Service {
        Service::with(|_| {})
    }

    /// A tracker configured by `tweak`.
    fn with(tweak: impl FnOnce(&mut TrackerConfig)) -> Service {
        let services = ServiceSet::new([ServiceEndpoint::new(SERVICE.parse().expect("service"))]);
        let mut config = TrackerConfig::new(services);
        tweak(&mut config);
        Service {
            tracker: Tracker::new(config),
        }
    }

    /// Tracks `seg` at `now` and decides what becomes of it.
    fn feed(&mut self, now: Instant, seg: &SegmentRepr<'_>) -> HoldDecision {
        self.tracker.on_segment(now, seg, &mut Vec::new());
        decide(&self.tracker, seg)
    }

    /// Client SYN, server SYN-ACK (its decision returned), client ACK on connection `n`.
    fn handshake(&mut self, n: u16) -> HoldDecision {
        let c = id(n);
        let syn = SegmentRepr {
            flags: TcpFlags::SYN,
            ..Seg::client(c, CLIENT_ISN, 0)
        };
        assert_eq!(self.feed(at(0), &syn), HoldDecision::Pass);
        let syn_ack = Seg::server(c, SERVER_ISN, CLIENT_ISN + 1).flag(TcpFlags::SYN);
        let decision = self.feed(at(1), &syn_ack);
        let ack = Seg::client(c, CLIENT_ISN + 1, SERVER_ISN + 1);
        assert_eq!(self.feed(at(2), &ack), HoldDecision::Pass);
        decision
    }

    /// `len` server bytes at server offset `offset` on connection `n`, acknowledging
    /// `client_acked` client bytes.
    fn server_data(&mut self, n: u16, offset: u32, len: usize, client_acked: u32) -> HoldDecision {
        let seg = Seg::server(
            id(n),
            SERVER_ISN + 1 + offset,
            CLIENT_ISN + 1 + client_acked,
        )
        .data(len);
        self.feed(at(3), &seg)
    }
}

fn offsets(client: u64, server: u64) -> CommitRequirement {
    CommitRequirement::Offsets {
        client,
        server,
        checkpoint: None,
    }
}

fn holds(client: u64, server: u64) -> Option<BackupHolds> {
    Some(BackupHolds {
        client,
        server,
        checkpoint: None,
    })
}

fn hold() -> OutputHold<u32> {
    OutputHold::new(HoldConfig::new(DEGRADE_AFTER))
}

/// The verdicts until `None`, a look at the backup answered with a healthy one.
fn verdicts(h: &mut OutputHold<u32>, now: Instant) -> Vec<HoldCommand<u32>> {
    let mut out = Vec::new();
    while let Some(command) = h.poll(now) {
        match command {
            HoldCommand::CheckBackup => assert_eq!(h.on_backup_health(now, healthy(0, 0)), None),
            verdict => out.push(verdict),
        }
    }
    out
}

/// The holds of one connection, as the gate looks them up.
fn backup(n: u16, client: u64, server: u64) -> impl FnMut(&ConnectionId) -> Option<BackupHolds> {
    move |c| {
        if *c == id(n) {
            holds(client, server)
        } else {
            None
        }
    }
}

#[test]
fn what_needs_no_waiting_passes() {
    let mut s = Service::with(|config| config.pick_up_mid_stream = false);
    let foreign = segment(client(1), "198.18.0.9:22".parse().expect("other"), 1, 1);
    assert_eq!(s.feed(at(0), &foreign), HoldDecision::Pass, "no service");
    let untracked = Seg::server(id(1), SERVER_ISN, CLIENT_ISN).data(10);
    assert_eq!(s.feed(at(0), &untracked), HoldDecision::Pass, "not tracked");
    s.handshake(1);
    let incoming = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1).data(10);
    assert_eq!(s.feed(at(3), &incoming), HoldDecision::Pass, "incoming");
}

#[test]
fn a_syn_ack_waits_for_the_handshake() {
    let mut s = Service::new();
    assert_eq!(
        s.handshake(1),
        HoldDecision::Hold(id(1), CommitRequirement::Handshake)
    );
}

#[test]
fn a_server_segment_waits_for_what_it_acknowledges_and_carries() {
    let mut s = Service::new();
    s.handshake(1);
    let incoming = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1).data(10);
    s.feed(at(3), &incoming);
    assert_eq!(
        s.server_data(1, 0, 100, 10),
        HoldDecision::Hold(id(1), offsets(10, 100))
    );
}

#[test]
fn fins_count_one_offset_each() {
    let mut s = Service::new();
    s.handshake(1);
    let client_fin = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1)
        .data(10)
        .flag(TcpFlags::FIN);
    s.feed(at(3), &client_fin);
    // The server acknowledges the client's FIN (offset 10) and sends its own after 5 bytes.
    let server_fin = Seg::server(id(1), SERVER_ISN + 1, CLIENT_ISN + 12)
        .data(5)
        .flag(TcpFlags::FIN);
    assert_eq!(
        s.feed(at(4), &server_fin),
        HoldDecision::Hold(id(1), offsets(11, 6))
    );
}

#[test]
fn a_graceful_close_keeps_holding() {
    let mut s = Service::new();
    s.handshake(1);
    let client_fin = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1).flag(TcpFlags::FIN);
    s.feed(at(3), &client_fin);
    let server_fin = Seg::server(id(1), SERVER_ISN + 1, CLIENT_ISN + 2).flag(TcpFlags::FIN);
    s.feed(at(4), &server_fin);
    let last_ack = Seg::client(id(1), CLIENT_ISN + 2, SERVER_ISN + 2);
    s.feed(at(5), &last_ack);
    let record = s.tracker.record(&id(1)).expect("lingers");
    assert_eq!(record.closed(), Some(CloseHow::Graceful));
    assert!(!gives_up_output(record));
    // A retransmitted FIN of the server still waits for the backup.
    assert_eq!(
        s.feed(at(6), &server_fin),
        HoldDecision::Hold(id(1), offsets(1, 1))
    );
}

#[test]
fn a_reset_connection_passes_after_its_held_packets() {
    let mut s = Service::new();
    s.handshake(1);
    let reset = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1).flag(TcpFlags::RST);
    s.feed(at(3), &reset);
    assert!(gives_up_output(s.tracker.record(&id(1)).expect("record")));
    assert_eq!(
        s.server_data(1, 0, 10, 0),
        HoldDecision::PassAfterHeld(id(1))
    );
}

#[test]
fn an_unrestorable_connection_passes_after_its_held_packets() {
    let mut s = Service::new();
    s.handshake(1);
    let drops = UnsafeReason::CaptureDrops { frames: 3 };
    s.tracker.mark_unsafe(&id(1), at(3), drops, &mut Vec::new());
    assert_eq!(
        s.server_data(1, 0, 10, 0),
        HoldDecision::PassAfterHeld(id(1))
    );
}

#[test]
fn a_connection_picked_up_mid_stream_passes_after_its_held_packets() {
    let mut s = Service::new();
    let untracked = Seg::server(id(1), SERVER_ISN, CLIENT_ISN).data(10);
    assert_eq!(
        s.feed(at(0), &untracked),
        HoldDecision::PassAfterHeld(id(1)),
        "its options are unknown: it can never be restored"
    );
}

#[test]
fn a_held_packet_leaves_once_the_backup_holds_it_and_its_hold_time_is_counted() {
    let mut s = Service::new();
    let mut h = hold();
    assert_eq!(h.poll(at(0)), Some(HoldCommand::CheckBackup));
    let syn_ack = s.handshake(1);
    h.on_packet(at(1_000), 7, syn_ack);
    let data = s.server_data(1, 0, 100, 0);
    h.on_packet(at(1_001), 8, data);
    assert_eq!(h.len(), 2);
    assert_eq!(h.held_for(&id(1)), 2);
    // The backup holds the handshake and 50 bytes: the SYN-ACK leaves, the data waits.
    h.release(at(1_003), &s.tracker, backup(1, 0, 50));
    assert_eq!(
        verdicts(&mut h, at(1_003)),
        vec![HoldCommand::Accept(vec![7])]
    );
    h.release(at(1_005), &s.tracker, backup(1, 0, 100));
    assert_eq!(
        verdicts(&mut h, at(1_005)),
        vec![HoldCommand::Accept(vec![8])]
    );
    assert!(h.is_empty());
    assert_eq!(h.hold_time().count, 2);
    assert_eq!(h.hold_time().sum_us, 3_000 + 4_000);
    assert_eq!(h.take_hold_samples(), vec![3_000, 4_000]);
    let stats = h.stats();
    assert_eq!(
        (stats.commit.held, stats.commit.released, stats.passed),
        (2, 2, 0)
    );
}

#[test]
fn a_packet_passing_after_the_held_ones_keeps_the_connections_order() {
    let mut s = Service::new();
    let mut h = hold();
    verdicts(&mut h, at(0));
    let syn_ack = s.handshake(1);
    h.on_packet(at(1), 1, syn_ack);
    let data = s.server_data(1, 0, 10, 0);
    h.on_packet(at(2), 2, data);
    h.on_packet(at(3), 3, HoldDecision::PassAfterHeld(id(1)));
    h.on_packet(at(3), 4, HoldDecision::Pass);
    assert_eq!(
        verdicts(&mut h, at(3)),
        vec![HoldCommand::Accept(vec![1, 2, 3, 4])]
    );
    let stats = h.stats();
    assert_eq!((stats.commit.released_unprotected, stats.passed), (2, 2));
    assert_eq!(h.hold_time().count, 0, "no acknowledgement released them");
}

#[test]
fn the_held_packets_of_a_connection_reset_meanwhile_leave_unprotected() {
    let mut s = Service::new();
    let mut h = hold();
    verdicts(&mut h, at(0));
    for n in [1, 2] {
        let syn_ack = s.handshake(n);
        h.on_packet(at(1), u32::from(n), syn_ack);
    }
    // Connection 1 is reset by its client in the same batch; the backup holds nothing.
    let reset = Seg::client(id(1), CLIENT_ISN + 1, SERVER_ISN + 1).flag(TcpFlags::RST);
    s.feed(at(2), &reset);
    h.release(at(3), &s.tracker, |_| None);
    assert_eq!(verdicts(&mut h, at(3)), vec![HoldCommand::Accept(vec![1])]);
    assert_eq!(h.held_for(&id(2)), 1, "the other connection still waits");
    assert_eq!(h.stats().commit.released_unprotected, 1);
}

#[test]
fn the_held_packets_of_a_connection_the_tracker_forgot_leave_unprotected() {
    let s = Service::new();
    let mut h = hold();
    verdicts(&mut h, at(0));
    h.on_packet(
        at(1),
        1,
        HoldDecision::Hold(id(5), CommitRequirement::Handshake),
    );
    h.release(at(2), &s.tracker, |_| holds(0, 0));
    assert_eq!(verdicts(&mut h, at(2)), vec![HoldCommand::Accept(vec![1])]);
    assert_eq!(h.stats().commit.released, 0);
}

#[test]
fn the_backup_is_looked_at_once_per_check_interval() {
    let mut h = hold();
    assert_eq!(h.next_deadline(), Some(Instant::ZERO));
    assert_eq!(h.poll(at(100)), Some(HoldCommand::CheckBackup));
    assert_eq!(h.on_backup_health(at(100), healthy(0, 0)), None);
    assert_eq!(h.poll(at(100)), None);
    assert_eq!(h.next_deadline(), Some(at(110)));
    assert_eq!(h.poll(at(109)), None);
    assert_eq!(h.poll(at(110)), Some(HoldCommand::CheckBackup));
}

#[test]
fn degrading_while_holding_releases_everything_and_holds_nothing_until_resynchronised() {
    let mut s = Service::new();
    let mut h = hold();
    let syn_ack = s.handshake(1);
    let data = s.server_data(1, 0, 10, 0);
    assert_eq!(h.poll(at(0)), Some(HoldCommand::CheckBackup));
    assert_eq!(h.on_backup_health(at(0), down()), None);
    h.on_packet(at(5), 1, syn_ack);
    h.on_packet(at(6), 2, data);
    assert_eq!(h.poll(at(300)), Some(HoldCommand::CheckBackup));
    assert_eq!(h.on_backup_health(at(300), down()), None, "not yet");
    assert_eq!(h.poll(at(310)), Some(HoldCommand::CheckBackup));
    let change = h.on_backup_health(at(310), down()).expect("degraded");
    assert_eq!(
        change,
        HoldChange {
            transition: Transition::Degrade(DegradeReason::Unreachable { down_for: ms(310) }),
            released: 2,
        }
    );
    assert!(h.is_degraded());
    assert_eq!(
        verdicts(&mut h, at(310)),
        vec![HoldCommand::Accept(vec![1, 2])]
    );
    // Degraded: what would be held passes.
    let more = s.server_data(1, 10, 10, 0);
    h.on_packet(at(320), 3, more);
    assert!(h.is_empty());
    assert_eq!(h.stats().passed, 1);
    // The backup is back and acknowledges what was submitted when it came back.
    assert_eq!(h.poll(at(320)), Some(HoldCommand::CheckBackup));
    assert_eq!(h.on_backup_health(at(320), healthy(4, 9)), None);
    assert_eq!(
        verdicts(&mut h, at(320)),
        vec![HoldCommand::Accept(vec![3])]
    );
    assert_eq!(h.poll(at(330)), Some(HoldCommand::CheckBackup));
    assert_eq!(
        h.on_backup_health(at(330), healthy(9, 12)),
        Some(HoldChange {
            transition: Transition::Resynchronised {
                degraded_for: ms(20)
            },
            released: 0,
        })
    );
    let again = s.server_data(1, 20, 10, 0);
    h.on_packet(at(331), 4, again);
    assert_eq!(h.len(), 1, "holding again");
}

#[test]
fn a_packet_held_too_long_degrades_from_when_it_entered_the_gate() {
    let mut s = Service::new();
    let mut h = hold();
    let syn_ack = s.handshake(1);
    let data = s.server_data(1, 0, 10, 0);
    verdicts(&mut h, at(0));
    h.on_packet(at(1_000), 1, syn_ack);
    h.on_packet(at(1_200), 2, data);
    // Released by the backup, the first one no longer counts: the second is the oldest.
    h.release(at(1_250), &s.tracker, backup(1, 0, 0));
    assert_eq!(
        verdicts(&mut h, at(1_250)),
        vec![HoldCommand::Accept(vec![1])]
    );
    assert_eq!(h.poll(at(1_400)), Some(HoldCommand::CheckBackup));
    assert_eq!(h.on_backup_health(at(1_400), healthy(1, 5)), None);
    assert_eq!(h.poll(at(1_501)), Some(HoldCommand::CheckBackup));
    assert_eq!(
        h.on_backup_health(at(1_501), healthy(1, 5))
            .map(|c| c.transition),
        Some(Transition::Degrade(DegradeReason::SlowBackup {
            held_for: ms(301)
        }))
    );
}

#[test]
fn stopping_lets_the_held_and_the_late_packets_go_and_checks_no_more() {
    let mut s = Service::new();
    let mut h = hold();
    verdicts(&mut h, at(0));
    let syn_ack = s.handshake(1);
    h.on_packet(at(1), 1, syn_ack);
    h.end(Ending::Stopped, [9, 10]);
    assert_eq!(h.next_deadline(), None);
    assert_eq!(
        verdicts(&mut h, at(5_000)),
        vec![HoldCommand::Accept(vec![1, 9, 10])]
    );
    assert_eq!(h.stats().commit.released_unprotected, 1);
}

#[test]
fn a_demoted_run_drops_the_held_and_the_late_packets() {
    let mut s = Service::new();
    let mut h = hold();
    verdicts(&mut h, at(0));
    let syn_ack = s.handshake(1);
    h.on_packet(at(1), 1, syn_ack);
    h.on_packet(at(1), 2, HoldDecision::Pass);
    h.end(Ending::Demoted, [9]);
    assert_eq!(
        verdicts(&mut h, at(5_000)),
        vec![HoldCommand::Accept(vec![2]), HoldCommand::Drop(vec![1, 9])],
        "a verdict already decided stands"
    );
}

#[test]
fn hold_time_samples_are_bounded_but_the_histogram_counts_every_release() {
    let mut s = Service::new();
    let mut h: OutputHold<u32> = OutputHold::new(HoldConfig {
        max_hold_samples: 1,
        ..HoldConfig::new(DEGRADE_AFTER)
    });
    verdicts(&mut h, at(0));
    let syn_ack = s.handshake(1);
    let data = s.server_data(1, 0, 10, 0);
    h.on_packet(at(10), 1, syn_ack);
    h.on_packet(at(10), 2, data);
    h.release(at(12), &s.tracker, backup(1, 0, 10));
    assert_eq!(h.hold_time().count, 2);
    assert_eq!(h.take_hold_samples(), vec![2_000]);
}

#[test]
fn a_checkpointed_connection_also_waits_for_a_checkpoint_covering_its_server_bytes() {
    let mut s = Service::new();
    s.handshake(1);
    s.server_data(1, 0, 40, 0);
    let fin = Seg::server(id(1), SERVER_ISN + 1 + 40, CLIENT_ISN + 1).flag(TcpFlags::FIN);
    s.tracker.on_segment(at(4), &fin, &mut Vec::new());
    // Not checkpointed: today's requirement, the FIN counted in the server offset.
    assert_eq!(
        decide_checkpointed(&s.tracker, &fin, |_| false),
        HoldDecision::Hold(id(1), offsets(0, 41))
    );
    assert_eq!(
        decide(&s.tracker, &fin),
        HoldDecision::Hold(id(1), offsets(0, 41))
    );
    // Checkpointed: a checkpoint must also cover the 40 bytes (a checkpoint counts no FIN).
    let mut asked = None;
    assert_eq!(
        decide_checkpointed(&s.tracker, &fin, |c| {
            asked = Some(*c);
            true
        }),
        HoldDecision::Hold(
            id(1),
            CommitRequirement::Offsets {
                client: 0,
                server: 41,
                checkpoint: Some(40),
            }
        )
    );
    assert_eq!(asked, Some(id(1)));
}
