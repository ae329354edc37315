//! A generator of random but valid TCP conversations that knows their ground truth.
//!
//! Each connection is simulated between two small but correct TCP endpoints (RFC 9293): a
//! client and a server, the server being the capture point. Client segments can be lost,
//! reordered or duplicated *before* the capture point (a lost client segment is never
//! captured); server segments are always captured when sent and can be lost *after* it, so the
//! server retransmits data that is then captured twice. Everything is deterministic per seed.
//!
//! What is modelled:
//! - random ISNs (often within a few kilobytes of the 2^32 wrap point) and timestamp clocks
//!   (1 kHz per host, RFC 7323 §5.4), sometimes near the wrap point too;
//! - options on or off independently per host: MSS, window scale 0–14, SACK-permitted,
//!   timestamps; negotiated as RFC 7323 §1.3/§2.2 and RFC 2018 §2 say;
//! - random segment sizes, server segments larger than the MSS (GSO super-segments);
//! - data both ways, receive windows that fill and open as applications read, a zero window
//!   and a window probe (Linux `tcp_xmit_probe_skb`: sequence `SND.UNA - 1`, no data);
//! - loss and retransmission, reordering and duplication of client segments; loss of server
//!   segments after the capture point (retransmitted by the server);
//! - SYN or SYN-ACK lost and retransmitted; FIN from either or both sides; RST from either
//!   side at a random point (a client RST not at RCV.NXT draws a challenge ACK, RFC 5961);
//! - SACK blocks on ACKs while out-of-order data is buffered (RFC 2018);
//! - several connections interleaved in capture order, IPv4 and IPv6.
//!
//! The server's receive processing follows Linux: a segment is acceptable when
//! `end_seq >= rcv_wup` and `seq <= rcv_nxt + receive window` (`tcp_sequence`), unacceptable
//! ones are answered with a duplicate ACK and otherwise ignored; an old ACK (before `snd_una`)
//! never updates the send window, other ACKs do when `tcp_may_update_window` says so; the
//! advertised window never shrinks (`tcp_select_window`).
//!
//! Not modelled (simplifications a tracker does not need to see): delayed ACKs (every
//! segment carrying data or a FIN is acknowledged at once, so "received" and "acknowledged"
//! coincide), PAWS drops (a reordered client segment whose TSval trails by more than 1 ms is
//! lost before the capture point instead), SYN-ACKs carrying data, urgent data, and the
//! client's own retransmission timer details (one RTO of 200 ms, go-back from SND.UNA).
//!
//! The ground truth of each connection ([`ConnectionTruth`]) is the server socket's state
//! when the capture ends, or when the connection closed (a closed connection's state is
//! frozen at the segment that closed it).

use crate::rng::{SplitMix64, mix64};
use cttm_core::event::{CloseHow, Side};
use cttm_core::snapshot::{NegotiatedOptions, RepairWindow, TcpState, WindowScale};
use cttm_core::wire::{TcpFlags, TcpOptions, TcpTimestamps, emit_frame};
use cttm_core::{
    ConnectionId, Instant, LinkType, SegmentRepr, SeqNumber, ServiceEndpoint, ServiceSet,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How often each fault or feature occurs. Probabilities are in `0.0..=1.0`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// A client segment is lost before the capture point (it is retransmitted later).
    pub client_loss: f64,
    /// A server segment is lost after the capture point (it is retransmitted, captured twice).
    pub server_loss: f64,
    /// A client segment overtakes the ones sent before it.
    pub reorder: f64,
    /// A client segment is duplicated in the network (captured twice).
    pub duplicate: f64,
    /// A connection's first SYN is lost (the client retransmits it).
    pub syn_loss: f64,
    /// A connection's first SYN-ACK is lost after the capture point.
    pub syn_ack_loss: f64,
    /// One side's application stops reading until its window is zero and it was probed
    /// (drawn per side).
    pub zero_window: f64,
    /// A side ends its stream with a FIN once its data is sent (drawn per side).
    pub fin: f64,
    /// One side resets the connection at a random point.
    pub reset: f64,
    /// At a step, a forged client segment (blind spoofing, RFC 5961) reaches the server: data
    /// beyond its receive window, or data at RCV.NXT acknowledging server bytes never sent.
    /// Linux drops both (`tcp_sequence()`, `tcp_ack()`); the capture sees them. Zero by
    /// default, so default captures (the benchmark's) stay as they were.
    pub forged: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            client_loss: 0.05,
            server_loss: 0.05,
            reorder: 0.05,
            duplicate: 0.03,
            syn_loss: 0.1,
            syn_ack_loss: 0.1,
            zero_window: 0.1,
            fin: 0.6,
            reset: 0.1,
            forged: 0.0,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorConfig {
    /// Connections, interleaved in capture order.
    pub connections: usize,
    /// Frames wanted in total (about; each connection gets an equal budget and may end
    /// earlier when its conversation is over).
    pub target_frames: usize,
    /// Share of connections over IPv6 (`0.0..=1.0`).
    pub ipv6_share: f64,
    /// Fault and feature probabilities.
    pub faults: FaultConfig,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            connections: 4,
            target_frames: 200,
            ipv6_share: 0.5,
            faults: FaultConfig::default(),
        }
    }
}

/// How often each fault and feature occurred in a generated capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Client segments lost before the capture point.
    pub client_segments_lost: u64,
    /// Server segments lost after the capture point.
    pub server_segments_lost: u64,
    /// Client segments delivered ahead of earlier ones.
    pub reordered: u64,
    /// Client segments duplicated.
    pub duplicated: u64,
    /// Client retransmissions (data or FIN).
    pub client_retransmissions: u64,
    /// Server retransmissions (data or FIN), captured again.
    pub server_retransmissions: u64,
    /// First SYNs lost.
    pub syn_lost: u64,
    /// First SYN-ACKs lost.
    pub syn_ack_lost: u64,
    /// Zero windows advertised by the server.
    pub server_zero_windows: u64,
    /// Zero windows advertised by the client.
    pub client_zero_windows: u64,
    /// Zero-window probes sent by the client.
    pub client_probes: u64,
    /// Zero-window probes sent by the server.
    pub server_probes: u64,
    /// Client FINs sent (first transmission).
    pub client_fins: u64,
    /// Server FINs sent (first transmission).
    pub server_fins: u64,
    /// Resets sent by the client.
    pub client_resets: u64,
    /// Resets sent by the server.
    pub server_resets: u64,
    /// Server segments larger than the MSS (GSO).
    pub gso_segments: u64,
    /// Connections whose client or server sequence space wraps past 2^32.
    pub sequence_wraps: u64,
    /// Connections with timestamps negotiated whose client or server clock wrapped past 2^32
    /// during the capture.
    pub timestamp_wraps: u64,
    /// IPv6 connections.
    pub ipv6_connections: u64,
    /// Connections with window scaling negotiated.
    pub window_scaling: u64,
    /// Connections with timestamps negotiated.
    pub timestamps: u64,
    /// Connections with SACK negotiated.
    pub sack: u64,
    /// Connections whose client announced no MSS.
    pub no_mss: u64,
    /// Connections closed gracefully.
    pub graceful_closes: u64,
    /// Segments the server found unacceptable (answered with a duplicate ACK).
    pub unacceptable_segments: u64,
    /// Segments carrying SACK blocks (either side).
    pub sack_blocks: u64,
    /// Challenge ACKs the server sent for a client RST not at RCV.NXT (RFC 5961 §3.2).
    pub challenge_acks: u64,
    /// Forged client segments the server dropped (see [`FaultConfig::forged`]).
    pub forged_segments: u64,
}

impl FaultCounts {
    /// Adds `other` to `self`, field by field.
    pub fn add(&mut self, other: &FaultCounts) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += other.$f; )* };
        }
        sum!(
            client_segments_lost,
            server_segments_lost,
            reordered,
            duplicated,
            client_retransmissions,
            server_retransmissions,
            syn_lost,
            syn_ack_lost,
            server_zero_windows,
            client_zero_windows,
            client_probes,
            server_probes,
            client_fins,
            server_fins,
            client_resets,
            server_resets,
            gso_segments,
            sequence_wraps,
            timestamp_wraps,
            ipv6_connections,
            window_scaling,
            timestamps,
            sack,
            no_mss,
            graceful_closes,
            unacceptable_segments,
            sack_blocks,
            challenge_acks,
            forged_segments
        );
    }

    /// The counters by name, for coverage checks.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("client_segments_lost", self.client_segments_lost),
            ("server_segments_lost", self.server_segments_lost),
            ("reordered", self.reordered),
            ("duplicated", self.duplicated),
            ("client_retransmissions", self.client_retransmissions),
            ("server_retransmissions", self.server_retransmissions),
            ("syn_lost", self.syn_lost),
            ("syn_ack_lost", self.syn_ack_lost),
            ("server_zero_windows", self.server_zero_windows),
            ("client_zero_windows", self.client_zero_windows),
            ("client_probes", self.client_probes),
            ("server_probes", self.server_probes),
            ("client_fins", self.client_fins),
            ("server_fins", self.server_fins),
            ("client_resets", self.client_resets),
            ("server_resets", self.server_resets),
            ("gso_segments", self.gso_segments),
            ("sequence_wraps", self.sequence_wraps),
            ("timestamp_wraps", self.timestamp_wraps),
            ("ipv6_connections", self.ipv6_connections),
            ("window_scaling", self.window_scaling),
            ("timestamps", self.timestamps),
            ("sack", self.sack),
            ("no_mss", self.no_mss),
            ("graceful_closes", self.graceful_closes),
            ("unacceptable_segments", self.unacceptable_segments),
            ("sack_blocks", self.sack_blocks),
            ("challenge_acks", self.challenge_acks),
            ("forged_segments", self.forged_segments),
        ]
    }
}

/// The server's timestamp clock as the capture shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockTruth {
    /// The server's latest TSval (SYN-ACK retransmissions aside: a tracker ignores SYNs once
    /// the handshake is known, RFC 9293 §3.10.7.4).
    pub server_tsval: u32,
    /// Capture time of the first server segment that carried `server_tsval`.
    pub server_tsval_first_seen: Instant,
    /// Capture time of the last server segment that carried `server_tsval`.
    pub server_tsval_last_seen: Instant,
    /// The highest client TSval the server accepted (its first SYN's, then those of
    /// acceptable segments).
    pub client_tsval: u32,
}

/// The server socket's state at the end of the capture (or when the connection closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointTruth {
    /// TCP state.
    pub state: TcpState,
    /// The client's ISN.
    pub client_isn: SeqNumber,
    /// The server's ISN.
    pub server_isn: SeqNumber,
    /// The negotiated options, as a restore applies them.
    pub options: NegotiatedOptions,
    /// `snd_una`.
    pub send_una: SeqNumber,
    /// The bytes sent and not acknowledged.
    pub send_unacked: Vec<u8>,
    /// The server's FIN is sent and not acknowledged.
    pub send_fin: bool,
    /// `rcv_nxt` (after the client's FIN when it was received).
    pub receive_next: SeqNumber,
    /// The client's FIN was received.
    pub receive_fin: bool,
    /// Window state (`snd_wl1`, `snd_wnd`, `max_window` per Linux `tcp_may_update_window`;
    /// `rcv_wnd`/`rcv_wup` as of the server's last segment, `tcp_select_window`).
    pub window: RepairWindow,
    /// Timestamp clocks, when timestamps are negotiated.
    pub clock: Option<ClockTruth>,
}

/// The ground truth of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionTruth {
    /// The connection.
    pub id: ConnectionId,
    /// The bytes the server application received (everything the server acknowledged).
    pub client_stream: Vec<u8>,
    /// The bytes the server sent.
    pub server_stream: Vec<u8>,
    /// The server socket's state.
    pub endpoint: EndpointTruth,
    /// How the connection ended, if it did within the capture.
    pub closed: Option<CloseHow>,
    /// The server sent its SYN-ACK (the connection was opened as far as a tracker can see).
    pub syn_ack_sent: bool,
}

/// A generated capture with its ground truth.
#[derive(Clone, Debug)]
pub struct GeneratedCapture {
    /// Frames in capture order.
    pub frames: Vec<(Instant, LinkType, Vec<u8>)>,
    /// The services the clients connect to.
    pub services: ServiceSet,
    /// Per connection, in connection order.
    pub truths: Vec<ConnectionTruth>,
    /// What occurred.
    pub faults: FaultCounts,
}

/// The IPv4 service clients connect to.
pub const SERVICE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 8080);
/// The IPv6 service clients connect to.
pub const SERVICE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    8080,
);

/// Generates a capture: deterministic per `(config, seed)`.
pub fn generate(config: &GeneratorConfig, seed: u64) -> GeneratedCapture {
    let mut rng = seeded(seed);
    let connections = config.connections.max(1);
    let budget = (config.target_frames / connections).max(8);
    let mut frames: Vec<(Instant, usize, LinkType, Vec<u8>)> =
        Vec::with_capacity(config.target_frames + 64);
    let mut truths = Vec::with_capacity(connections);
    let mut faults = FaultCounts::default();
    // Connections start within a span that makes them overlap.
    let span_micros = 20_000 * connections as u64;
    for index in 0..connections {
        let ipv6 = rng.chance(config.ipv6_share);
        let start = Instant::from_micros(1_000_000 + rng.below(span_micros));
        let conn_seed = rng.next_u64();
        let mut sim = Simulation::new(index, ipv6, start, budget, &config.faults, conn_seed);
        sim.run();
        faults.add(&sim.faults);
        let truth = sim.truth();
        for (at, frame) in sim.captured {
            frames.push((at, index, LinkType::Ethernet, frame));
        }
        truths.push(truth);
    }
    // Stable: each connection's frames stay in their order.
    frames.sort_by_key(|(at, _, _, _)| *at);
    GeneratedCapture {
        frames: frames
            .into_iter()
            .map(|(at, _, link, frame)| (at, link, frame))
            .collect(),
        services: ServiceSet::new([
            ServiceEndpoint::new(SERVICE_V4),
            ServiceEndpoint::new(SERVICE_V6),
        ]),
        truths,
        faults,
    }
}

/// One generated case: a configuration and a seed (small to print when a property fails).
#[derive(Clone, Debug)]
pub struct ConversationCase {
    /// The configuration.
    pub config: GeneratorConfig,
    /// The seed.
    pub seed: u64,
}

impl ConversationCase {
    /// Generates the capture of this case.
    pub fn generate(&self) -> GeneratedCapture {
        generate(&self.config, self.seed)
    }
}

/// A proptest strategy for conversations: 1–`max_connections` connections, up to
/// `max_frames` frames, fault probabilities drawn per case (sometimes zero, sometimes high).
pub fn conversation_strategy(
    max_connections: usize,
    max_frames: usize,
) -> impl Strategy<Value = ConversationCase> {
    let probability = prop_oneof![Just(0.0), 0.0..0.3f64];
    (
        1..=max_connections.max(1),
        8..=max_frames.max(8),
        0.0..=1.0f64,
        (
            probability.clone(),
            probability.clone(),
            probability.clone(),
            probability.clone(),
        ),
        (
            0.0..=1.0f64,
            0.0..=1.0f64,
            0.0..=1.0f64,
            0.0..=1.0f64,
            0.0..=0.5f64,
            probability.clone(),
        ),
        any::<u64>(),
    )
        .prop_map(
            |(
                connections,
                target_frames,
                ipv6_share,
                (cl, sl, ro, du),
                (syn, synack, zw, fin, rst, forged),
                seed,
            )| {
                ConversationCase {
                    config: GeneratorConfig {
                        connections,
                        target_frames,
                        ipv6_share,
                        faults: FaultConfig {
                            client_loss: cl,
                            server_loss: sl,
                            reorder: ro,
                            duplicate: du,
                            syn_loss: syn,
                            syn_ack_loss: synack,
                            zero_window: zw,
                            fin,
                            reset: rst,
                            forged,
                        },
                    },
                    seed,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Random numbers: SplitMix64, fast and deterministic (no dependency).

type Rng = SplitMix64;

/// The generator of a conversation's `seed`.
fn seeded(seed: u64) -> Rng {
    SplitMix64::new(seed ^ 0x5DEE_CE66_D1CE_4E5B)
}

/// Byte `offset` of a stream identified by `seed` (computed on demand, so long streams cost
/// nothing until sent).
fn stream_bytes(seed: u64, from: u64, len: usize) -> Vec<u8> {
    let word = |w: u64| mix64(seed ^ w.wrapping_mul(0x2545_F491_4F6C_DD1D)).to_le_bytes();
    let mut out = Vec::with_capacity(len + 16);
    let end = from + len as u64;
    let mut w = from >> 3;
    while (w << 3) < end {
        out.extend_from_slice(&word(w));
        w += 1;
    }
    let skip = (from & 7) as usize;
    out.drain(..skip.min(out.len()));
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------------
// One TCP endpoint.

/// A segment in flight.
#[derive(Clone, Debug)]
struct Segment {
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    window: u16,
    options: TcpOptions,
    payload: Vec<u8>,
}

impl Segment {
    fn tsval(&self) -> Option<u32> {
        self.options.timestamps.map(|t| t.tsval)
    }
}

/// What receiving a segment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Received {
    /// Processed; an ACK is due when `ack_now`.
    Accepted { ack_now: bool },
    /// Not acceptable (RFC 9293 §3.10.7.4, Linux `tcp_sequence`): answer with a duplicate ACK.
    Unacceptable,
    /// It acknowledges bytes never sent: dropped whole, data included (RFC 9293 §3.10.7.4,
    /// Linux `tcp_ack()` `SKB_DROP_REASON_TCP_ACK_UNSENT_DATA`).
    AckOfUnsentData,
}

#[derive(Clone, Debug)]
struct Endpoint {
    addr: SocketAddr,
    isn: u32,
    peer_isn: u32,
    /// What this host puts in its SYN.
    syn_options: TcpOptions,
    /// SYN window (unscaled, RFC 7323 §2.2).
    syn_window: u16,
    stream_seed: u64,
    /// Bytes the application has to send.
    data_len: u64,
    /// The application closes (FIN) once its data is sent.
    fin_planned: bool,
    // Send side, in stream offsets (the FIN occupies offset `data_len`).
    snd_una: u64,
    snd_nxt: u64,
    fin_sent: bool,
    snd_wnd: u32,
    snd_wl1: u32,
    max_window: u32,
    /// Largest payload per segment (the peer's MSS).
    mss: usize,
    // Receive side.
    rcv_nxt: u64,
    received: Vec<u8>,
    out_of_order: BTreeMap<u64, Vec<u8>>,
    out_of_order_fin: Option<u64>,
    fin_received: bool,
    capacity: u64,
    read: u64,
    reading: bool,
    /// Shift applied to the windows this host advertises (0 when scaling is off).
    rcv_scale: u8,
    /// Shift applied to the windows the peer advertises.
    snd_scale: u8,
    timestamps: bool,
    /// SACK is negotiated: ACKs carry SACK blocks for out-of-order data (RFC 2018 §4).
    sack: bool,
    ts_offset: u32,
    ts_recent: u32,
    rcv_wnd: u32,
    rcv_wup: u64,
    /// The handshake completed from this host's view (its SYN was acknowledged).
    established: bool,
    syn_acked_by_peer: bool,
}

impl Endpoint {
    fn seq_of(&self, offset: u64) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(offset as u32)
    }

    fn rcv_seq(&self) -> u32 {
        self.peer_isn
            .wrapping_add(1)
            .wrapping_add(self.rcv_nxt as u32)
    }

    fn tsval(&self, now: Instant) -> u32 {
        self.ts_offset.wrapping_add((now.micros() / 1000) as u32)
    }

    fn fin_acked(&self) -> bool {
        self.fin_sent && self.snd_una > self.data_len
    }

    /// Free receive space in bytes.
    fn free_space(&self) -> u64 {
        self.capacity
            .saturating_sub(self.received.len() as u64 - self.read)
    }

    /// The window field to advertise and the scaled window it means (Linux
    /// `tcp_select_window()`): the free space rounded down to the scale granularity, but never
    /// less than what is still offered from the last advertisement (RFC 9293 §3.8.6.2.2: the
    /// right edge never moves left), that one rounded up.
    fn advertised_window(&self) -> (u16, u32) {
        let granularity = 1u64 << self.rcv_scale;
        let mut window = self.free_space() & !(granularity - 1);
        let offered = self.offered_edge().saturating_sub(self.rcv_nxt);
        if window < offered {
            window = offered.div_ceil(granularity) * granularity;
        }
        let field = (window >> self.rcv_scale).min(65_535) as u16;
        (field, u32::from(field) << self.rcv_scale)
    }

    /// The right edge of the window last advertised (RCV.WUP + RCV.WND).
    fn offered_edge(&self) -> u64 {
        self.rcv_wup + u64::from(self.rcv_wnd)
    }

    /// Data (and FIN) not yet sent.
    fn unsent(&self) -> u64 {
        self.data_len.saturating_sub(self.snd_nxt)
    }

    fn wants_fin(&self) -> bool {
        self.fin_planned && !self.fin_sent
    }

    /// Usable send window (RFC 9293 §3.8.6: SND.UNA + SND.WND - SND.NXT).
    fn usable_window(&self) -> u64 {
        (self.snd_una + u64::from(self.snd_wnd)).saturating_sub(self.snd_nxt)
    }

    /// Builds a segment from this host. `from..from+len` are data offsets; `fin` adds a FIN.
    fn segment(&mut self, from: u64, len: usize, fin: bool, now: Instant) -> Segment {
        let (field, scaled) = self.advertised_window();
        // Linux tcp_select_window(): every non-SYN segment advertises the window and records
        // rcv_wup = rcv_nxt.
        self.rcv_wnd = scaled;
        self.rcv_wup = self.rcv_nxt;
        let mut flags = TcpFlags::ACK;
        if len > 0 {
            flags = flags.with(TcpFlags::PSH);
        }
        if fin {
            flags = flags.with(TcpFlags::FIN);
            self.fin_sent = true;
        }
        let end = from + len as u64 + u64::from(fin);
        self.snd_nxt = self.snd_nxt.max(end);
        let mut options = self.data_options(now);
        if self.sack {
            // Up to three blocks fit next to the timestamps option (RFC 2018 §3).
            let peer_base = self.peer_isn.wrapping_add(1);
            for (&offset, piece) in self.out_of_order.iter().take(3) {
                let left = peer_base.wrapping_add(offset as u32);
                options.sack.push(
                    SeqNumber(left),
                    SeqNumber(left.wrapping_add(piece.len() as u32)),
                );
            }
        }
        Segment {
            seq: self.seq_of(from),
            ack: self.rcv_seq(),
            flags,
            window: field,
            options,
            payload: stream_bytes(self.stream_seed, from, len),
        }
    }

    fn data_options(&self, now: Instant) -> TcpOptions {
        TcpOptions {
            timestamps: self.timestamps.then(|| TcpTimestamps {
                tsval: self.tsval(now),
                tsecr: self.ts_recent,
            }),
            ..TcpOptions::default()
        }
    }

    /// A pure ACK at `snd_nxt`.
    fn ack(&mut self, now: Instant) -> Segment {
        let mut s = self.segment(self.snd_nxt, 0, false, now);
        s.seq = self.seq_of(self.snd_nxt);
        s
    }

    /// A zero-window probe (Linux tcp_xmit_probe_skb: an old sequence number, no data, which
    /// makes the peer answer with its current window).
    fn probe(&mut self, now: Instant) -> Segment {
        let mut s = self.segment(self.snd_una, 0, false, now);
        s.seq = self.seq_of(self.snd_una).wrapping_sub(1);
        s
    }

    fn reset(&self, now: Instant) -> Segment {
        Segment {
            seq: self.seq_of(self.snd_nxt),
            ack: self.rcv_seq(),
            flags: TcpFlags::RST.with(TcpFlags::ACK),
            window: 0,
            options: self.data_options(now),
            payload: Vec::new(),
        }
    }

    /// Processes a non-SYN, non-RST segment from the peer.
    fn receive(&mut self, seg: &Segment) -> Received {
        let payload_len = seg.payload.len() as i64;
        let fin = seg.flags.fin();
        // Offsets relative to rcv_nxt, robust to the wrap of the 32-bit space.
        let seq_offset =
            self.rcv_nxt as i64 + i64::from(seg.seq.wrapping_sub(self.rcv_seq()) as i32);
        let end = seq_offset + payload_len + i64::from(fin);
        let right_edge = (self.rcv_wup + u64::from(self.rcv_wnd)).max(self.rcv_nxt) as i64;
        if self.established && (end < self.rcv_wup as i64 || seq_offset > right_edge) {
            return Received::Unacceptable;
        }
        let ack_offset = i64::from(seg.ack.wrapping_sub(self.isn.wrapping_add(1)) as i32);
        if self.syn_acked_by_peer && seg.flags.ack() && ack_offset > self.snd_nxt as i64 {
            return Received::AckOfUnsentData;
        }
        if let Some(ts) = seg.options.timestamps
            && self.timestamps
            && !SeqNumber(ts.tsval).is_before(SeqNumber(self.ts_recent))
        {
            self.ts_recent = ts.tsval;
        }
        if seg.flags.ack() {
            self.on_ack(seg);
        }
        if payload_len == 0 && !fin {
            return Received::Accepted { ack_now: false };
        }
        self.on_data(seq_offset, &seg.payload, fin);
        Received::Accepted { ack_now: true }
    }

    fn on_ack(&mut self, seg: &Segment) {
        let ack_offset = i64::from(seg.ack.wrapping_sub(self.isn.wrapping_add(1)) as i32);
        let nwin = u32::from(seg.window) << self.snd_scale;
        if !self.syn_acked_by_peer {
            if ack_offset != 0 {
                return;
            }
            // SYN-RECEIVED -> ESTABLISHED (Linux tcp_rcv_state_process): the window of the
            // handshake-completing ACK, snd_wl1 = its sequence number.
            self.syn_acked_by_peer = true;
            self.established = true;
            self.snd_wnd = nwin;
            self.snd_wl1 = seg.seq;
            self.max_window = self.max_window.max(nwin);
            return;
        }
        if ack_offset < 0 || (ack_offset as u64) < self.snd_una {
            // An old ACK: Linux tcp_ack() goes to old_ack, no window update.
            return;
        }
        let ack_offset = ack_offset as u64;
        if ack_offset > self.snd_nxt {
            return;
        }
        let advanced = ack_offset > self.snd_una;
        // Linux tcp_may_update_window().
        let newer = SeqNumber(seg.seq).is_after(SeqNumber(self.snd_wl1));
        // Since Linux 6.x a same-sequence segment may also close the window to zero.
        let same_and_wider = seg.seq == self.snd_wl1 && (nwin > self.snd_wnd || nwin == 0);
        if advanced || newer || same_and_wider {
            self.snd_wnd = nwin;
            self.snd_wl1 = seg.seq;
            self.max_window = self.max_window.max(nwin);
        }
        self.snd_una = ack_offset;
    }

    fn on_data(&mut self, seq_offset: i64, payload: &[u8], fin: bool) {
        if self.fin_received {
            return;
        }
        // Everything offered is accepted (the buffer has room for the rounding of the window).
        let limit = (self.read + self.capacity).max(self.offered_edge());
        let skip = usize::try_from(-seq_offset).unwrap_or(0).min(payload.len());
        let start = seq_offset.max(0) as u64;
        let mut bytes = &payload[skip..];
        let mut fin = fin;
        let end = start + bytes.len() as u64;
        if end > limit {
            bytes = &bytes[..(limit.saturating_sub(start)).min(bytes.len() as u64) as usize];
            fin = false;
        }
        let end = start + bytes.len() as u64;
        if fin {
            self.out_of_order_fin = Some(end);
        }
        if start <= self.rcv_nxt {
            if end > self.rcv_nxt {
                self.received
                    .extend_from_slice(&bytes[(self.rcv_nxt - start) as usize..]);
                self.rcv_nxt = end;
            }
        } else if !bytes.is_empty() {
            let entry = self.out_of_order.entry(start).or_default();
            if entry.len() < bytes.len() {
                *entry = bytes.to_vec();
            }
        }
        // Pieces that became contiguous.
        while let Some(entry) = self.out_of_order.first_entry() {
            let o = *entry.key();
            if o > self.rcv_nxt {
                break;
            }
            let piece = entry.remove();
            let pend = o + piece.len() as u64;
            if pend > self.rcv_nxt {
                self.received
                    .extend_from_slice(&piece[(self.rcv_nxt - o) as usize..]);
                self.rcv_nxt = pend;
            }
        }
        if self.out_of_order_fin == Some(self.rcv_nxt) {
            self.fin_received = true;
            self.rcv_nxt += 1;
            self.out_of_order.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One connection's simulation.

/// What ended the server side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Graceful,
    Reset(Side),
}

struct ServerClock {
    tsval: u32,
    first_seen: Instant,
    last_seen: Instant,
}

struct Simulation {
    rng: Rng,
    now: Instant,
    budget: usize,
    faults_config: FaultConfig,
    faults: FaultCounts,
    client: Endpoint,
    server: Endpoint,
    /// Client segments in flight to the server (not yet captured).
    to_server: VecDeque<Segment>,
    /// Server segments in flight to the client (already captured).
    to_client: VecDeque<Segment>,
    captured: Vec<(Instant, Vec<u8>)>,
    syn_ack_sent: bool,
    syn_received: bool,
    client_established: bool,
    ended: Option<Ended>,
    client_gone: bool,
    server_fin_first: bool,
    reset_plan: Option<(Side, usize)>,
    server_clock: Option<ServerClock>,
    client_tsval_max: Option<u32>,
    /// Highest client TSval delivered so far (PAWS: a reordered segment may trail it by at
    /// most 1, Linux TCP_PAWS_WINDOW).
    client_tsval_delivered: Option<u32>,
}

impl Simulation {
    fn new(
        index: usize,
        ipv6: bool,
        start: Instant,
        budget: usize,
        faults_config: &FaultConfig,
        seed: u64,
    ) -> Self {
        let mut rng = seeded(seed);
        let (client_addr, server_addr) = if ipv6 {
            let ip = Ipv6Addr::new(
                0x2001,
                0xdb8,
                1,
                0,
                0,
                0,
                (index >> 16) as u16,
                index as u16,
            );
            (
                SocketAddr::new(IpAddr::V6(ip), 20_000 + (index % 40_000) as u16),
                SERVICE_V6,
            )
        } else {
            let ip = Ipv4Addr::new(198, 19, (index / 250) as u8, (index % 250) as u8 + 1);
            (
                SocketAddr::new(IpAddr::V4(ip), 20_000 + (index % 40_000) as u16),
                SERVICE_V4,
            )
        };
        let default_mss: u16 = if ipv6 { 1220 } else { 536 };
        let max_mss: u16 = if ipv6 { 1440 } else { 1460 };
        let mut faults = FaultCounts {
            ipv6_connections: u64::from(ipv6),
            ..FaultCounts::default()
        };
        let isn = |rng: &mut Rng| -> u32 {
            if rng.chance(0.3) {
                u32::MAX - rng.below(4_000) as u32
            } else {
                rng.next_u64() as u32
            }
        };
        let client_isn = isn(&mut rng);
        let server_isn = isn(&mut rng);
        let client_zero = rng.chance(faults_config.zero_window);
        let server_zero = rng.chance(faults_config.zero_window);
        let host = |rng: &mut Rng, addr, isn, peer_isn, zero_window: bool| {
            let mss = rng
                .chance(0.8)
                .then(|| rng.range(u64::from(default_mss), u64::from(max_mss)) as u16);
            let shift = if rng.chance(0.7) {
                Some(if zero_window {
                    rng.below(3) as u8
                } else {
                    rng.below(15) as u8
                })
            } else {
                None
            };
            let timestamps = rng.chance(0.7);
            // Sometimes the clock reads within 3 s of the wrap point when the connection starts.
            let ts_offset = if rng.chance(0.3) {
                (u32::MAX - rng.below(3_000) as u32).wrapping_sub((start.micros() / 1000) as u32)
            } else {
                rng.next_u64() as u32
            };
            let capacity = if zero_window {
                rng.range(2, 6) * 1460
            } else {
                rng.range(16 * 1024, 4 << 20).max(4 << shift.unwrap_or(0))
            };
            Endpoint {
                addr,
                isn,
                peer_isn,
                syn_options: TcpOptions {
                    mss,
                    window_scale: shift,
                    sack_permitted: rng.chance(0.7),
                    sack: Default::default(),
                    timestamps: timestamps.then_some(TcpTimestamps { tsval: 0, tsecr: 0 }),
                },
                syn_window: capacity.min(65_535) as u16,
                stream_seed: rng.next_u64(),
                data_len: 0,
                fin_planned: false,
                snd_una: 0,
                snd_nxt: 0,
                fin_sent: false,
                snd_wnd: 0,
                snd_wl1: 0,
                max_window: 0,
                mss: usize::from(default_mss),
                rcv_nxt: 0,
                received: Vec::new(),
                out_of_order: BTreeMap::new(),
                out_of_order_fin: None,
                fin_received: false,
                capacity,
                read: 0,
                reading: !zero_window,
                rcv_scale: 0,
                snd_scale: 0,
                timestamps: false,
                sack: false,
                ts_offset,
                ts_recent: 0,
                rcv_wnd: 0,
                rcv_wup: 0,
                established: false,
                syn_acked_by_peer: false,
            }
        };
        let mut client = host(&mut rng, client_addr, client_isn, server_isn, client_zero);
        let mut server = host(&mut rng, server_addr, server_isn, client_isn, server_zero);
        // Data sizes: sometimes short conversations that end with FINs within the budget,
        // sometimes more data than the budget carries.
        let per_frame = 600u64;
        let length = |rng: &mut Rng| {
            if rng.chance(0.15) {
                0
            } else if rng.chance(0.5) {
                rng.below(budget as u64 * per_frame / 4)
            } else {
                rng.below(budget as u64 * per_frame * 2)
            }
        };
        client.data_len = length(&mut rng);
        server.data_len = length(&mut rng);
        // A zero window needs the peer to have more to send than the window holds.
        if server_zero {
            client.data_len = client.data_len.max(server.capacity + rng.range(1, 3000));
        }
        if client_zero {
            server.data_len = server.data_len.max(client.capacity + rng.range(1, 3000));
        }
        client.fin_planned = rng.chance(faults_config.fin);
        server.fin_planned = rng.chance(faults_config.fin);
        let reset_plan = rng.chance(faults_config.reset).then(|| {
            let side = if rng.chance(0.5) {
                Side::Client
            } else {
                Side::Server
            };
            (side, rng.below(budget as u64) as usize)
        });
        let span = |isn: u32, len: u64| u64::from(isn) + len + 2 > 1u64 << 32;
        if span(client_isn, client.data_len) || span(server_isn, server.data_len) {
            faults.sequence_wraps += 1;
        }
        Simulation {
            rng,
            now: start,
            budget,
            faults_config: faults_config.clone(),
            faults,
            client,
            server,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            captured: Vec::with_capacity(budget + 8),
            syn_ack_sent: false,
            syn_received: false,
            client_established: false,
            ended: None,
            client_gone: false,
            server_fin_first: false,
            reset_plan,
            server_clock: None,
            client_tsval_max: None,
            client_tsval_delivered: None,
        }
    }

    fn tick(&mut self, max_micros: u64) {
        self.now = self.now + std::time::Duration::from_micros(self.rng.range(1, max_micros));
    }

    fn capture(&mut self, from: Side, seg: &Segment) {
        self.faults.sack_blocks += u64::from(!seg.options.sack.is_empty());
        let (src, dst) = match from {
            Side::Client => (self.client.addr, self.server.addr),
            Side::Server => (self.server.addr, self.client.addr),
        };
        let repr = SegmentRepr {
            src,
            dst,
            seq: SeqNumber(seg.seq),
            ack: SeqNumber(seg.ack),
            flags: seg.flags,
            window: seg.window,
            options: seg.options,
            payload: &seg.payload,
        };
        let frame =
            emit_frame(LinkType::Ethernet, &repr).expect("generated segments always fit a frame");
        self.captured.push((self.now, frame));
    }

    /// The client puts a segment on the wire: lost, duplicated or queued.
    fn client_send(&mut self, seg: Segment) {
        if self.rng.chance(self.faults_config.client_loss) {
            self.faults.client_segments_lost += 1;
            return;
        }
        if self.rng.chance(self.faults_config.duplicate) {
            self.faults.duplicated += 1;
            self.to_server.push_back(seg.clone());
        }
        self.to_server.push_back(seg);
    }

    /// The server sends a segment: captured, then maybe lost.
    fn server_send(&mut self, seg: Segment) {
        self.capture(Side::Server, &seg);
        if !seg.flags.syn()
            && !seg.flags.rst()
            && let Some(ts) = seg.tsval()
        {
            match &mut self.server_clock {
                Some(c) if c.tsval == ts => c.last_seen = self.now,
                _ => {
                    self.server_clock = Some(ServerClock {
                        tsval: ts,
                        first_seen: self.now,
                        last_seen: self.now,
                    })
                }
            }
        }
        if seg.flags.rst() {
            return;
        }
        if self.rng.chance(self.faults_config.server_loss) {
            self.faults.server_segments_lost += 1;
            return;
        }
        self.to_client.push_back(seg);
    }

    fn run(&mut self) {
        let start = self.now;
        self.handshake();
        let mut steps = 0usize;
        while self.ended.is_none() && self.captured.len() < self.budget && steps < self.budget * 40
        {
            steps += 1;
            if !self.step() {
                break;
            }
        }
        // A clock wrapped when it reads less now than at the start (it runs for seconds only).
        let wrapped = |host: &Endpoint| host.tsval(self.now) < host.tsval(start);
        if self.client.timestamps && (wrapped(&self.client) || wrapped(&self.server)) {
            self.faults.timestamp_wraps += 1;
        }
    }

    fn syn(&self, now: Instant) -> Segment {
        let c = &self.client;
        let mut options = c.syn_options;
        if let Some(ts) = &mut options.timestamps {
            ts.tsval = c.tsval(now);
        }
        Segment {
            seq: c.isn,
            ack: 0,
            flags: TcpFlags::SYN,
            window: c.syn_window,
            options,
            payload: Vec::new(),
        }
    }

    fn syn_ack(&self, now: Instant) -> Segment {
        let s = &self.server;
        let mut options = s.syn_options;
        // RFC 7323 §1.3 and §2.2, RFC 2018: options in a SYN-ACK only when the SYN had them.
        let c = &self.client.syn_options;
        if c.window_scale.is_none() {
            options.window_scale = None;
        }
        if c.timestamps.is_none() {
            options.timestamps = None;
        }
        if !c.sack_permitted {
            options.sack_permitted = false;
        }
        if let Some(ts) = &mut options.timestamps {
            *ts = TcpTimestamps {
                tsval: s.tsval(now),
                tsecr: s.ts_recent,
            };
        }
        Segment {
            seq: s.isn,
            ack: s.peer_isn.wrapping_add(1),
            flags: TcpFlags::SYN.with(TcpFlags::ACK),
            window: s.syn_window,
            options,
            payload: Vec::new(),
        }
    }

    /// The server receives a (first or retransmitted) SYN: negotiates, answers with a SYN-ACK.
    fn server_on_syn(&mut self, syn: &Segment) {
        self.capture(Side::Client, syn);
        if !self.syn_received {
            self.syn_received = true;
            let (c, s) = (&self.client.syn_options, self.server.syn_options);
            let scaling = c.window_scale.is_some() && s.window_scale.is_some();
            let timestamps = c.timestamps.is_some() && s.timestamps.is_some();
            let sack = c.sack_permitted && s.sack_permitted;
            let client_shift = c.window_scale.filter(|_| scaling).unwrap_or(0);
            let server_shift = s.window_scale.filter(|_| scaling).unwrap_or(0);
            let default_mss = if self.server.addr.is_ipv6() {
                1220
            } else {
                536
            };
            let client_mss = usize::from(c.mss.unwrap_or(default_mss));
            let server_mss = usize::from(s.mss.unwrap_or(default_mss));
            self.faults.window_scaling += u64::from(scaling);
            self.faults.timestamps += u64::from(timestamps);
            self.faults.sack += u64::from(sack);
            self.faults.no_mss += u64::from(c.mss.is_none());
            for (host, rcv_scale, snd_scale, mss) in [
                (&mut self.client, client_shift, server_shift, server_mss),
                (&mut self.server, server_shift, client_shift, client_mss),
            ] {
                host.rcv_scale = rcv_scale;
                host.snd_scale = snd_scale;
                host.timestamps = timestamps;
                host.sack = sack;
                host.mss = mss;
            }
            // The server's send window from the SYN (unscaled), snd_wl1 = the client's ISN.
            self.server.snd_wnd = u32::from(syn.window);
            self.server.max_window = u32::from(syn.window);
            self.server.snd_wl1 = syn.seq;
            self.server.rcv_wnd = u32::from(self.server.syn_window);
            self.client_tsval_max = syn.tsval().filter(|_| timestamps);
            if let Some(ts) = syn.tsval() {
                self.server.ts_recent = ts;
            }
        }
        self.tick(300);
        let syn_ack = self.syn_ack(self.now);
        self.capture(Side::Server, &syn_ack);
        self.syn_ack_sent = true;
        if self.server_clock.is_none()
            && let Some(ts) = syn_ack.tsval()
        {
            self.server_clock = Some(ServerClock {
                tsval: ts,
                first_seen: self.now,
                last_seen: self.now,
            });
        }
        let lose =
            if self.faults.syn_ack_lost == 0 && self.rng.chance(self.faults_config.syn_ack_loss) {
                self.faults.syn_ack_lost += 1;
                true
            } else {
                self.rng.chance(self.faults_config.server_loss / 2.0)
            };
        if !lose {
            self.to_client.push_back(syn_ack);
        } else if self.faults.syn_ack_lost == 0 {
            self.faults.server_segments_lost += 1;
        }
    }

    fn handshake(&mut self) {
        // SYNs are retransmitted with back-off until a SYN-ACK arrives (bounded: the budget).
        let mut first = true;
        for _ in 0..6 {
            let syn = self.syn(self.now);
            let lost = if first && self.rng.chance(self.faults_config.syn_loss) {
                self.faults.syn_lost += 1;
                true
            } else {
                !first && self.rng.chance(self.faults_config.client_loss)
            };
            first = false;
            if !lost {
                self.tick(2_000);
                self.server_on_syn(&syn);
            }
            self.tick(2_000);
            if let Some(syn_ack) = self.to_client.pop_front() {
                self.client_on_syn_ack(&syn_ack);
                return;
            }
            // RTO for SYNs (RFC 6298: 1 s initially).
            self.now = self.now + std::time::Duration::from_secs(1);
        }
    }

    fn client_on_syn_ack(&mut self, syn_ack: &Segment) {
        let c = &mut self.client;
        c.established = true;
        c.syn_acked_by_peer = true;
        c.snd_wnd = u32::from(syn_ack.window);
        c.max_window = c.snd_wnd;
        c.snd_wl1 = syn_ack.seq;
        if let Some(ts) = syn_ack.tsval() {
            c.ts_recent = ts;
        }
        self.client_established = true;
        let ack = self.client.ack(self.now);
        self.client_send(ack);
    }

    /// One random action. Returns false when nothing is left to do.
    fn step(&mut self) -> bool {
        if let Some((side, at)) = self.reset_plan
            && self.captured.len() >= at
            && self.try_reset(side)
        {
            return true;
        }
        if self.client_gone {
            // The client reset its end: what is in flight arrives, nothing new is sent.
            if !self.to_server.is_empty() {
                self.perform(Action::DeliverToServer);
                return true;
            }
            if !self.to_client.is_empty() {
                self.perform(Action::DeliverToClient);
                return true;
            }
            return false;
        }
        let mut choices: Vec<(u32, Action)> = Vec::with_capacity(12);
        let quiet = self.to_server.is_empty() && self.to_client.is_empty();
        if !self.to_server.is_empty() {
            choices.push((5, Action::DeliverToServer));
        }
        if !self.to_client.is_empty() {
            choices.push((5, Action::DeliverToClient));
        }
        if self.client_established {
            let c = &self.client;
            if (c.unsent() > 0 && c.usable_window() > 0) || (c.unsent() == 0 && c.wants_fin()) {
                choices.push((3, Action::ClientSend));
            }
            if quiet && c.snd_una < c.snd_nxt {
                choices.push((2, Action::ClientRetransmit));
            }
            if quiet && c.snd_una == c.snd_nxt && c.unsent() > 0 && c.snd_wnd == 0 {
                choices.push((2, Action::ClientProbe));
            }
            if c.reading && c.read < c.received.len() as u64 {
                choices.push((2, Action::ClientRead));
            }
        }
        if self.server.established {
            let s = &self.server;
            if (s.unsent() > 0 && s.usable_window() > 0) || (s.unsent() == 0 && s.wants_fin()) {
                choices.push((3, Action::ServerSend));
            }
            if quiet && s.snd_una < s.snd_nxt {
                choices.push((2, Action::ServerRetransmit));
            }
            if quiet && s.snd_una == s.snd_nxt && s.unsent() > 0 && s.snd_wnd == 0 {
                choices.push((2, Action::ServerProbe));
            }
            if s.reading && s.read < s.received.len() as u64 {
                choices.push((2, Action::ServerRead));
            }
        } else if quiet && self.syn_ack_sent {
            choices.push((1, Action::ServerRetransmitSynAck));
        }
        // (No draw at all when forging is off, so that default captures stay the same.)
        if self.faults_config.forged > 0.0
            && self.client_established
            && self.server.established
            && self.rng.chance(self.faults_config.forged)
        {
            choices.push((2, Action::ClientForged));
        }
        if choices.is_empty() {
            // Quiet: an application that has not closed writes more (a new request or
            // response), so conversations fill their frame budget.
            return self.write_more();
        }
        let total: u32 = choices.iter().map(|(w, _)| w).sum();
        let mut pick = self.rng.below(u64::from(total)) as u32;
        let action = choices
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(_, a)| *a)
            .unwrap_or(choices[0].1);
        self.perform(action);
        true
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::DeliverToServer => {
                self.tick(400);
                self.deliver_to_server();
            }
            Action::DeliverToClient => {
                self.tick(400);
                self.deliver_to_client();
            }
            Action::ClientSend => {
                self.tick(200);
                let seg = self.new_data(Side::Client);
                self.client_send(seg);
            }
            Action::ServerSend => {
                self.tick(200);
                let seg = self.new_data(Side::Server);
                self.server_send(seg);
            }
            Action::ClientRetransmit => {
                self.now = self.now + std::time::Duration::from_millis(200);
                self.faults.client_retransmissions += 1;
                let seg = self.retransmission(Side::Client);
                self.client_send(seg);
            }
            Action::ServerRetransmit => {
                self.now = self.now + std::time::Duration::from_millis(200);
                self.faults.server_retransmissions += 1;
                let seg = self.retransmission(Side::Server);
                self.server_send(seg);
            }
            Action::ClientProbe => {
                self.now = self.now + std::time::Duration::from_millis(200);
                self.faults.client_probes += 1;
                let seg = self.client.probe(self.now);
                self.client_send(seg);
            }
            Action::ServerProbe => {
                self.now = self.now + std::time::Duration::from_millis(200);
                self.faults.server_probes += 1;
                let seg = self.server.probe(self.now);
                self.server_send(seg);
            }
            Action::ClientRead => {
                self.tick(1_000);
                if let Some(update) = app_read(&mut self.client, &mut self.rng, self.now) {
                    self.client_send(update);
                }
            }
            Action::ServerRead => {
                self.tick(1_000);
                if let Some(update) = app_read(&mut self.server, &mut self.rng, self.now) {
                    self.server_send(update);
                }
            }
            Action::ClientForged => {
                self.tick(300);
                self.forge_client_segment();
            }
            Action::ServerRetransmitSynAck => {
                self.now = self.now + std::time::Duration::from_secs(1);
                let syn_ack = self.syn_ack(self.now);
                self.capture(Side::Server, &syn_ack);
                if !self.rng.chance(self.faults_config.server_loss) {
                    self.to_client.push_back(syn_ack);
                }
            }
        }
    }

    /// An application that has not closed its stream writes more; false when both closed.
    fn write_more(&mut self) -> bool {
        let open: Vec<Side> = [(Side::Client, &self.client), (Side::Server, &self.server)]
            .into_iter()
            .filter(|(_, h)| h.established && !h.fin_sent && !(h.fin_planned && h.unsent() == 0))
            .map(|(side, _)| side)
            .collect();
        if open.is_empty() {
            return false;
        }
        let side = open[self.rng.below(open.len() as u64) as usize];
        let more = self.rng.range(1, 8 * 1460);
        self.tick(5_000);
        match side {
            Side::Client => self.client.data_len += more,
            Side::Server => self.server.data_len += more,
        }
        true
    }

    /// A new segment of data (and maybe the FIN) from `side`.
    fn new_data(&mut self, side: Side) -> Segment {
        let now = self.now;
        let (host, rng) = match side {
            Side::Client => (&mut self.client, &mut self.rng),
            Side::Server => (&mut self.server, &mut self.rng),
        };
        let max = match side {
            Side::Client => host.mss as u64,
            // GSO: the server hands the NIC up to 8 MSS at once.
            Side::Server => host.mss as u64 * if rng.chance(0.3) { rng.range(2, 8) } else { 1 },
        };
        let room = host.unsent().min(host.usable_window()).min(max);
        let len = if room == 0 { 0 } else { rng.range(1, room) };
        let from = host.snd_nxt;
        let fin = host.wants_fin() && from + len == host.data_len;
        let seg = host.segment(from, len as usize, fin, now);
        if fin {
            match side {
                Side::Client => self.faults.client_fins += 1,
                Side::Server => {
                    self.faults.server_fins += 1;
                    if !self.server.fin_received {
                        self.server_fin_first = true;
                    }
                }
            }
        }
        if side == Side::Server && len as usize > self.server.mss {
            self.faults.gso_segments += 1;
        }
        seg
    }

    /// The first unacknowledged segment again (RTO, RFC 6298), resegmented at random.
    fn retransmission(&mut self, side: Side) -> Segment {
        let now = self.now;
        let (host, rng) = match side {
            Side::Client => (&mut self.client, &mut self.rng),
            Side::Server => (&mut self.server, &mut self.rng),
        };
        let from = host.snd_una.min(host.data_len);
        let outstanding = host.snd_nxt.min(host.data_len) - from;
        let len = if outstanding == 0 {
            0
        } else {
            rng.range(1, outstanding.min(host.mss as u64))
        };
        let fin = host.fin_sent && from + len == host.data_len;
        let snd_nxt = host.snd_nxt;
        let seg = host.segment(from, len as usize, fin, now);
        host.snd_nxt = snd_nxt;
        seg
    }

    fn deliver_to_server(&mut self) {
        // Usually in order; sometimes a later segment overtakes, within the PAWS tolerance.
        let mut index = 0;
        if self.to_server.len() > 1 && self.rng.chance(self.faults_config.reorder) {
            let candidate = 1 + self.rng.below((self.to_server.len() - 1).min(4) as u64) as usize;
            let front = self.to_server[0].tsval();
            let later = self.to_server[candidate].tsval();
            let within = match (front, later) {
                (Some(f), Some(l)) => l.wrapping_sub(f) <= 1,
                _ => true,
            };
            if within {
                index = candidate;
                self.faults.reordered += 1;
            }
        }
        let Some(seg) = self.to_server.remove(index) else {
            return;
        };
        if let (Some(ts), Some(max)) = (seg.tsval(), self.client_tsval_delivered)
            && SeqNumber(ts).is_before(SeqNumber(max.wrapping_sub(1)))
        {
            // PAWS would drop it: treat it as lost before the capture point.
            self.faults.client_segments_lost += 1;
            return;
        }
        if let Some(ts) = seg.tsval() {
            self.client_tsval_delivered = Some(self.client_tsval_delivered.map_or(ts, |m| {
                if SeqNumber(ts).is_after(SeqNumber(m)) {
                    ts
                } else {
                    m
                }
            }));
        }
        self.capture(Side::Client, &seg);
        if seg.flags.rst() {
            self.server_on_reset(&seg);
            return;
        }
        if seg.flags.syn() {
            return;
        }
        // A zero-window host resumes reading once it has been probed.
        self.resume_after_probe(Side::Server, &seg);
        match self.server.receive(&seg) {
            Received::Unacceptable => {
                self.faults.unacceptable_segments += 1;
                self.tick(50);
                let ack = self.server.ack(self.now);
                self.server_send(ack);
            }
            Received::AckOfUnsentData => {}
            Received::Accepted { ack_now } => {
                if let Some(ts) = seg.tsval()
                    && self.server.timestamps
                {
                    self.client_tsval_max = Some(self.client_tsval_max.map_or(ts, |m| {
                        if SeqNumber(ts).is_after(SeqNumber(m)) {
                            ts
                        } else {
                            m
                        }
                    }));
                }
                if ack_now {
                    self.tick(50);
                    let ack = self.server.ack(self.now);
                    self.note_zero_window(Side::Server, &ack);
                    self.server_send(ack);
                }
                if self.server_closed_gracefully() {
                    self.ended = Some(Ended::Graceful);
                    self.faults.graceful_closes += 1;
                }
            }
        }
    }

    /// A blind attacker's client segment, captured and then dropped by the server: garbage
    /// beyond the receive window (answered with a duplicate ACK), or garbage at RCV.NXT with
    /// an acknowledgement of server bytes never sent (dropped silently).
    fn forge_client_segment(&mut self) {
        let s = &self.server;
        let beyond_window = self.rng.chance(0.5);
        let (offset, ack) = if beyond_window {
            let edge = s.offered_edge().max(s.rcv_nxt);
            (edge + 1 + self.rng.below(3000), self.client.rcv_seq())
        } else {
            let unsent = 1 + self.rng.below(3000) as u32;
            (s.rcv_nxt, s.seq_of(s.snd_nxt).wrapping_add(unsent))
        };
        let seq = s
            .rcv_seq()
            .wrapping_add(offset.wrapping_sub(s.rcv_nxt) as u32);
        let len = 1 + self.rng.below(200) as usize;
        let mut flags = TcpFlags::ACK.with(TcpFlags::PSH);
        if self.rng.chance(0.3) {
            flags = flags.with(TcpFlags::FIN);
        }
        let seg = Segment {
            seq,
            ack,
            flags,
            window: self.rng.below(65_536) as u16,
            options: self.client.data_options(self.now),
            payload: vec![0xEE; len],
        };
        self.capture(Side::Client, &seg);
        self.faults.forged_segments += 1;
        match self.server.receive(&seg) {
            Received::Unacceptable => {
                self.faults.unacceptable_segments += 1;
                self.tick(50);
                let ack = self.server.ack(self.now);
                self.server_send(ack);
            }
            Received::AckOfUnsentData => {}
            Received::Accepted { .. } => unreachable!("the server accepted a forged segment"),
        }
    }

    /// Linux `tcp_validate_incoming()` for a client RST: outside the window it is ignored;
    /// at exactly RCV.NXT (or RCV.NXT - 1 after the client's FIN, `tcp_reset_check()`, or at
    /// the end of the highest SACK block) it resets; anywhere else in the window it draws a
    /// challenge ACK (RFC 5961 §3.2).
    fn server_on_reset(&mut self, rst: &Segment) {
        let s = &self.server;
        let position = s.rcv_nxt as i64 + i64::from(rst.seq.wrapping_sub(s.rcv_seq()) as i32);
        let right_edge = s.offered_edge().max(s.rcv_nxt) as i64;
        if position < s.rcv_wup as i64 || position > right_edge {
            return;
        }
        let highest_sack = s
            .out_of_order
            .iter()
            .map(|(o, p)| o + p.len() as u64)
            .max()
            .filter(|_| s.sack);
        let exact = position == s.rcv_nxt as i64
            || (s.fin_received && position == s.rcv_nxt as i64 - 1)
            || highest_sack.is_some_and(|end| position == end as i64);
        if exact {
            self.ended = Some(Ended::Reset(Side::Client));
            return;
        }
        self.faults.challenge_acks += 1;
        self.tick(50);
        let ack = self.server.ack(self.now);
        self.server_send(ack);
    }

    fn server_closed_gracefully(&self) -> bool {
        self.server.fin_received && self.server.fin_acked()
    }

    fn resume_after_probe(&mut self, side: Side, seg: &Segment) {
        let host = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        let probe =
            seg.payload.is_empty() && !seg.flags.fin() && seg.seq == host.rcv_seq().wrapping_sub(1);
        if probe && !host.reading {
            host.reading = true;
        }
    }

    fn note_zero_window(&mut self, side: Side, seg: &Segment) {
        if seg.window == 0 {
            match side {
                Side::Client => self.faults.client_zero_windows += 1,
                Side::Server => self.faults.server_zero_windows += 1,
            }
        }
    }

    fn deliver_to_client(&mut self) {
        let Some(seg) = self.to_client.pop_front() else {
            return;
        };
        if self.client_gone {
            // A closed endpoint answers with a RST at the segment's ACK number (RFC 9293
            // §3.10.7.1).
            if !seg.flags.rst() {
                self.tick(50);
                let rst = Segment {
                    seq: seg.ack,
                    ack: 0,
                    flags: TcpFlags::RST,
                    window: 0,
                    options: TcpOptions::default(),
                    payload: Vec::new(),
                };
                self.client_send(rst);
            }
            return;
        }
        if seg.flags.syn() {
            // A retransmitted SYN-ACK: the client acknowledges it again.
            let ack = self.client.ack(self.now);
            self.client_send(ack);
            return;
        }
        self.resume_after_probe(Side::Client, &seg);
        let answer = match self.client.receive(&seg) {
            Received::Unacceptable => true,
            Received::AckOfUnsentData => false,
            Received::Accepted { ack_now } => ack_now,
        };
        if answer {
            self.tick(50);
            let ack = self.client.ack(self.now);
            self.note_zero_window(Side::Client, &ack);
            self.client_send(ack);
        }
    }

    /// Sends the planned RST if its conditions hold now. A client RST carries SND.NXT: it
    /// resets the server only at exactly RCV.NXT (RFC 5961 §3.2), otherwise the server sends
    /// a challenge ACK, which the client, closed by then, answers with a RST at its ACK number
    /// (RFC 9293 §3.10.7.1).
    fn try_reset(&mut self, side: Side) -> bool {
        match side {
            Side::Server if self.server.established => {
                self.reset_plan = None;
                self.tick(300);
                self.faults.server_resets += 1;
                let rst = self.server.reset(self.now);
                self.server_send(rst);
                self.ended = Some(Ended::Reset(Side::Server));
                true
            }
            Side::Client if self.client_established && self.server.established => {
                self.reset_plan = None;
                self.tick(300);
                self.faults.client_resets += 1;
                let rst = self.client.reset(self.now);
                self.client_send(rst);
                self.client_gone = true;
                true
            }
            _ => false,
        }
    }

    fn truth(&self) -> ConnectionTruth {
        let s = &self.server;
        let c = &self.client;
        let id = ConnectionId {
            client: c.addr,
            server: s.addr,
        };
        let state = match self.ended {
            Some(Ended::Reset(_)) => TcpState::Closed,
            _ if !s.syn_acked_by_peer => TcpState::SynReceived,
            _ => TcpState::from_fins(
                s.fin_received,
                s.fin_sent,
                s.fin_acked(),
                self.server_fin_first,
            ),
        };
        let default_mss: u16 = if s.addr.is_ipv6() { 1220 } else { 536 };
        let scaling = c.syn_options.window_scale.is_some() && s.syn_options.window_scale.is_some();
        let timestamps = c.syn_options.timestamps.is_some() && s.syn_options.timestamps.is_some();
        let options = NegotiatedOptions {
            mss: c.syn_options.mss.unwrap_or(default_mss),
            window_scale: scaling.then(|| WindowScale {
                send: c.syn_options.window_scale.unwrap_or(0).min(14),
                receive: s.syn_options.window_scale.unwrap_or(0).min(14),
            }),
            sack: c.syn_options.sack_permitted && s.syn_options.sack_permitted,
            timestamps,
        };
        let sent_end = s.snd_nxt.min(s.data_len);
        let una_data = s.snd_una.min(s.data_len);
        let clock = match (timestamps, &self.server_clock) {
            (true, Some(clock)) => Some(ClockTruth {
                server_tsval: clock.tsval,
                server_tsval_first_seen: clock.first_seen,
                server_tsval_last_seen: clock.last_seen,
                client_tsval: self.client_tsval_max.unwrap_or(0),
            }),
            _ => None,
        };
        let closed = match self.ended {
            Some(Ended::Graceful) => Some(CloseHow::Graceful),
            Some(Ended::Reset(side)) => Some(CloseHow::Reset(side)),
            None => None,
        };
        ConnectionTruth {
            id,
            client_stream: s.received.clone(),
            server_stream: stream_bytes(s.stream_seed, 0, sent_end as usize),
            endpoint: EndpointTruth {
                state,
                client_isn: SeqNumber(c.isn),
                server_isn: SeqNumber(s.isn),
                options,
                send_una: SeqNumber(s.seq_of(s.snd_una)),
                send_unacked: stream_bytes(s.stream_seed, una_data, (sent_end - una_data) as usize),
                send_fin: s.fin_sent && !s.fin_acked(),
                receive_next: SeqNumber(s.rcv_seq()),
                receive_fin: s.fin_received,
                window: RepairWindow {
                    snd_wl1: s.snd_wl1,
                    snd_wnd: s.snd_wnd,
                    max_window: s.max_window,
                    rcv_wnd: s.rcv_wnd,
                    rcv_wup: s.peer_isn.wrapping_add(1).wrapping_add(s.rcv_wup as u32),
                },
                clock,
            },
            closed,
            syn_ack_sent: self.syn_ack_sent,
        }
    }
}

/// The application reads some of its unread bytes; returns a window update when the window
/// opened from zero or by at least an MSS (RFC 9293 §3.8.6.2.2, receiver SWS avoidance).
fn app_read(host: &mut Endpoint, rng: &mut Rng, now: Instant) -> Option<Segment> {
    let unread = host.received.len() as u64 - host.read;
    let before = host.rcv_wnd;
    host.read += rng.range(1, unread);
    let (_, after) = host.advertised_window();
    let opened = after.saturating_sub(before);
    (before == 0 && after > 0 || opened as usize >= host.mss.max(host.capacity as usize / 2))
        .then(|| host.ack(now))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    DeliverToServer,
    DeliverToClient,
    ClientSend,
    ServerSend,
    ClientRetransmit,
    ServerRetransmit,
    ClientProbe,
    ServerProbe,
    ClientRead,
    ServerRead,
    ServerRetransmitSynAck,
    ClientForged,
}
