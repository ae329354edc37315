//! The [`Tracker`]: follows every connection to a set of services from captured segments, in
//! capture order, and emits [`ConnectionEvent`]s.
//!
//! The capture point is assumed to be the server host (or a tap next to it): client segments
//! may arrive lost (never captured), retransmitted, reordered or duplicated; every server
//! segment is seen as sent. Each connection goes through two phases, each with its own
//! handler: `handshake` (SYN seen, waiting for the SYN-ACK) and `open` (both ISNs known,
//! a [`ConnectionRecord`] exists).

mod handshake;
mod open;
mod reassembly;
mod table;

use crate::endpoint::{ConnectionId, ServiceSet};
use crate::event::{CloseHow, ConnectionEvent, EventKind, UnsafeReason};
use crate::record::{ClientRetention, ConnectionRecord};
use crate::snapshot::ConnectionSnapshot;
use crate::time::Instant;
use crate::wire::{LinkType, ParseError, SegmentRepr, parse_frame};
use handshake::SynSeen;
use open::OpenConnection;
use std::collections::VecDeque;
use std::time::Duration;
use table::ConnectionMap;

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The services whose connections are tracked.
    pub services: ServiceSet,
    /// The most connections tracked at once (default 65,536), pending handshakes included.
    /// When full, the connection closed longest ago is evicted first, then the oldest pending
    /// handshake (a SYN flood must not lock new connections out until the handshake timeout;
    /// Linux likewise drops the oldest request socket first under SYN-queue pressure, though
    /// it answers with SYN cookies); only a table full of open connections refuses a new one,
    /// counted in [`TrackerStats::untracked_table_full`].
    pub max_connections: usize,
    /// Out-of-order bytes buffered per direction of a connection (default 4 MiB). Bytes past
    /// the limit are counted; if the peer then acknowledges them the connection becomes unsafe.
    pub reassembly_limit: usize,
    /// How long client bytes stay in the tracker's records (default: dropped once the server
    /// acknowledged them, since they are in the emitted events).
    pub client_retention: ClientRetention,
    /// How long a closed connection stays queryable (default 60 s, Linux's TIME-WAIT).
    pub closed_linger: Duration,
    /// How long a SYN waits for its SYN-ACK (default 75 s).
    pub handshake_timeout: Duration,
    /// Track connections whose handshake was not seen, flagged not restorable (default true).
    pub pick_up_mid_stream: bool,
}

impl TrackerConfig {
    /// Defaults for `services`.
    pub fn new(services: ServiceSet) -> Self {
        TrackerConfig {
            services,
            max_connections: 65_536,
            reassembly_limit: 4 << 20,
            client_retention: ClientRetention::DropOnAck,
            closed_linger: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(75),
            pick_up_mid_stream: true,
        }
    }
}

/// Counters of what the tracker saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Frames given to [`Tracker::on_frame`].
    pub frames: u64,
    /// Frames that were not TCP (ARP, UDP, …).
    pub not_tcp: u64,
    /// Frames that were malformed, truncated or fragmented.
    pub malformed: u64,
    /// TCP segments not to or from a service.
    pub foreign: u64,
    /// Segments of service connections processed.
    pub segments: u64,
    /// Connections opened (handshake seen or picked up mid-stream).
    pub opened: u64,
    /// Connections picked up mid-stream.
    pub mid_stream: u64,
    /// Connections closed (FINs, RST).
    pub closed: u64,
    /// Connections evicted (closed and lingering past `closed_linger`, or to make room).
    pub evicted: u64,
    /// Pending handshakes (SYN seen, no SYN-ACK yet) evicted to make room for a new
    /// connection; also counted in `evicted`.
    pub evicted_handshakes: u64,
    /// New connections not tracked because the table was full of open ones.
    pub untracked_table_full: u64,
    /// Out-of-order bytes discarded because a reassembly buffer was full.
    pub reassembly_dropped: u64,
    /// Client segments of open connections that the server socket drops, or whose data or
    /// FIN it drops, and that therefore changed nothing: outside the receive window, without
    /// ACK, acknowledging server bytes never sent, or data into a zero window or past its
    /// right edge (RFC 9293 §3.10.7.4; Linux `tcp_sequence()`, `tcp_ack()`,
    /// `tcp_data_queue()`). Zero-window probes and stale retransmissions count here too; a
    /// sudden rise can mean blind spoofing (RFC 5961).
    pub client_segments_rejected: u64,
    /// Connections that became unsafe (capture hole, overflow).
    pub unsafe_connections: u64,
}

/// What happened to one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameDisposition {
    /// It belonged to a service connection and was processed.
    Tracked,
    /// A TCP segment of no service.
    Foreign,
    /// It belonged to a service but was not tracked (table full, stray segment).
    Ignored,
}

/// Per-connection tracking state, by phase.
#[derive(Debug)]
enum Tracked {
    /// Client SYN seen, SYN-ACK not yet.
    SynSeen(SynSeen),
    /// Both ISNs known.
    Open(Box<OpenConnection>),
}

/// Follows every connection to the configured services.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    connections: ConnectionMap<Tracked>,
    /// Client SYNs with a new ISN on a 4-tuple whose connection is still open. Linux answers
    /// a SYN in a synchronized state with a challenge ACK and keeps the connection (RFC 5961
    /// §4, RFC 9293 §3.10.7.4), so the SYN starts a new incarnation only once the server
    /// answers it with a SYN-ACK; until then the open connection stays tracked (a stray or
    /// spoofed SYN must not end its protection).
    reincarnations: ConnectionMap<SynSeen>,
    /// Pending handshakes (`Tracked::SynSeen`) in the order they were first seen, as
    /// (SYN time, identity), to evict the oldest in O(1). Entries whose connection moved on
    /// are skipped when met and pruned when the queue outgrows the table.
    handshake_order: VecDeque<(Instant, ConnectionId)>,
    /// Closed connections in the order they closed, as (close time, identity), likewise.
    closed_order: VecDeque<(Instant, ConnectionId)>,
    stats: TrackerStats,
}

impl Tracker {
    /// A tracker with no connections.
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            connections: ConnectionMap::default(),
            reincarnations: ConnectionMap::default(),
            handshake_order: VecDeque::new(),
            closed_order: VecDeque::new(),
            stats: TrackerStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// Parses and tracks one captured frame. Events are appended to `out`. Frames that are not
    /// TCP or are malformed are counted and returned as errors; they change no connection.
    pub fn on_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        frame: &[u8],
        out: &mut Vec<ConnectionEvent>,
    ) -> Result<FrameDisposition, ParseError> {
        self.stats.frames += 1;
        match parse_frame(link, frame) {
            Ok(segment) => Ok(self.on_segment(at, &segment, out)),
            Err(e) => {
                match e {
                    ParseError::NotIp | ParseError::NotTcp => self.stats.not_tcp += 1,
                    _ => self.stats.malformed += 1,
                }
                Err(e)
            }
        }
    }

    /// Tracks one segment captured at `at`. Events are appended to `out`.
    pub fn on_segment(
        &mut self,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) -> FrameDisposition {
        let Some((id, side)) = self.config.services.classify(segment.src, segment.dst) else {
            self.stats.foreign += 1;
            return FrameDisposition::Foreign;
        };
        self.stats.segments += 1;
        let first_event = out.len();
        let disposition = match self.connections.get_mut(&id) {
            None => self.on_untracked(id, side, at, segment, out),
            Some(Tracked::SynSeen(syn)) => {
                let first_seen = syn.at;
                let next = handshake::on_syn_seen(&self.config, syn, id, side, at, segment, out);
                if let Some(Tracked::SynSeen(restarted)) = &next
                    && restarted.at != first_seen
                {
                    self.handshake_order.push_back((restarted.at, id));
                }
                self.replace(id, next);
                FrameDisposition::Tracked
            }
            Some(Tracked::Open(conn)) => {
                let still_open = conn.record().closed().is_none();
                if conn.is_new_incarnation(side, segment) && still_open {
                    // Wait for the server's answer; a retransmitted SYN keeps the first.
                    let pending = self.reincarnations.get(&id);
                    if pending.is_none_or(|syn| syn.isn() != segment.seq) {
                        self.reincarnations
                            .insert(id, SynSeen::from_segment(segment, at));
                    }
                    FrameDisposition::Tracked
                } else if conn.is_new_incarnation(side, segment) {
                    self.reincarnations.remove(&id);
                    self.connections.remove(&id);
                    self.on_untracked(id, side, at, segment, out)
                } else if let Some(syn) = segment
                    .flags
                    .syn()
                    .then(|| self.reincarnations.get(&id))
                    .flatten()
                    .filter(|syn| syn.is_answered_by(side, segment))
                    .cloned()
                {
                    // The server accepted the new SYN: the old connection is gone. (Only a
                    // SYN-ACK can answer a pending SYN, so other segments skip the lookup.)
                    self.reincarnations.remove(&id);
                    conn.close(at, CloseHow::Evicted, out);
                    let next =
                        handshake::on_syn_seen(&self.config, &syn, id, side, at, segment, out);
                    self.replace(id, next);
                    FrameDisposition::Tracked
                } else {
                    let (dropped_before, rejected_before) = (conn.dropped(), conn.rejected());
                    conn.on_segment(&self.config, side, at, segment, out);
                    self.stats.reassembly_dropped += conn.dropped() - dropped_before;
                    self.stats.client_segments_rejected += conn.rejected() - rejected_before;
                    FrameDisposition::Tracked
                }
            }
        };
        self.count_events(&out[first_event..]);
        disposition
    }

    fn on_untracked(
        &mut self,
        id: ConnectionId,
        side: crate::Side,
        at: Instant,
        segment: &SegmentRepr<'_>,
        out: &mut Vec<ConnectionEvent>,
    ) -> FrameDisposition {
        if self.connections.len() >= self.config.max_connections
            && !self.evict_one_closed()
            && !self.evict_oldest_handshake()
        {
            self.stats.untracked_table_full += 1;
            return FrameDisposition::Ignored;
        }
        match handshake::on_untracked(&self.config, id, side, at, segment, out) {
            Some(tracked) => {
                if let Tracked::SynSeen(syn) = &tracked {
                    self.handshake_order.push_back((syn.at, id));
                    self.compact_orders();
                }
                self.connections.insert(id, tracked);
                FrameDisposition::Tracked
            }
            None => FrameDisposition::Ignored,
        }
    }

    fn replace(&mut self, id: ConnectionId, next: Option<Tracked>) {
        match next {
            Some(t) => {
                self.connections.insert(id, t);
            }
            None => {
                self.connections.remove(&id);
            }
        }
    }

    fn count_events(&mut self, events: &[ConnectionEvent]) {
        for e in events {
            match &e.kind {
                EventKind::Opened(h) => {
                    self.stats.opened += 1;
                    if h.mid_stream {
                        self.stats.mid_stream += 1;
                    }
                }
                EventKind::Closed(how) => {
                    if *how == CloseHow::Evicted {
                        self.stats.evicted += 1;
                    } else {
                        self.stats.closed += 1;
                    }
                    // The connection lingers closed in the table, queued for eviction by
                    // the time its record last changed (a new incarnation that replaced it
                    // right away is not closed: nothing to queue).
                    if let Some(Tracked::Open(c)) = self.connections.get(&e.id)
                        && c.record().closed().is_some()
                    {
                        self.closed_order.push_back((c.record().updated_at(), e.id));
                        self.compact_orders();
                    }
                }
                EventKind::Unsafe(UnsafeReason::MidStream) => {}
                EventKind::Unsafe(_) => self.stats.unsafe_connections += 1,
                _ => {}
            }
        }
    }

    /// Whether `(at, id)` of [`Tracker::closed_order`] still names a lingering closed
    /// connection.
    fn is_closed_entry(
        connections: &ConnectionMap<Tracked>,
        at: Instant,
        id: &ConnectionId,
    ) -> bool {
        matches!(connections.get(id), Some(Tracked::Open(c))
            if c.record().closed().is_some() && c.record().updated_at() == at)
    }

    /// Whether `(at, id)` of [`Tracker::handshake_order`] still names a pending handshake.
    fn is_handshake_entry(
        connections: &ConnectionMap<Tracked>,
        at: Instant,
        id: &ConnectionId,
    ) -> bool {
        matches!(connections.get(id), Some(Tracked::SynSeen(s)) if s.at == at)
    }

    /// Drops stale entries of the eviction queues once they outgrow the table, so their size
    /// stays proportional to it (amortised O(1) per insertion).
    fn compact_orders(&mut self) {
        let bound = 2 * self.connections.len() + 64;
        let connections = &self.connections;
        if self.closed_order.len() > bound {
            self.closed_order
                .retain(|(at, id)| Self::is_closed_entry(connections, *at, id));
        }
        if self.handshake_order.len() > bound {
            self.handshake_order
                .retain(|(at, id)| Self::is_handshake_entry(connections, *at, id));
        }
    }

    /// Evicts the closed connection that closed longest ago; false if there is none.
    fn evict_one_closed(&mut self) -> bool {
        while let Some((at, id)) = self.closed_order.pop_front() {
            if Self::is_closed_entry(&self.connections, at, &id) {
                self.connections.remove(&id);
                self.stats.evicted += 1;
                return true;
            }
        }
        false
    }

    /// Evicts the pending handshake whose SYN came first; false if there is none.
    fn evict_oldest_handshake(&mut self) -> bool {
        while let Some((at, id)) = self.handshake_order.pop_front() {
            if Self::is_handshake_entry(&self.connections, at, &id) {
                self.connections.remove(&id);
                self.stats.evicted += 1;
                self.stats.evicted_handshakes += 1;
                return true;
            }
        }
        false
    }

    /// Advances time to `now`: forgets closed connections past `closed_linger` and SYNs past
    /// `handshake_timeout`. Call it periodically (every second is plenty).
    pub fn poll(&mut self, now: Instant) {
        let linger = self.config.closed_linger;
        let handshake_timeout = self.config.handshake_timeout;
        let before = self.connections.len();
        self.connections.retain(|_, t| match t {
            Tracked::SynSeen(s) => now.saturating_since(s.at) < handshake_timeout,
            Tracked::Open(c) => {
                c.record().closed().is_none()
                    || now.saturating_since(c.record().updated_at()) < linger
            }
        });
        self.stats.evicted += (before - self.connections.len()) as u64;
        let connections = &self.connections;
        self.reincarnations.retain(|id, syn| {
            now.saturating_since(syn.at) < handshake_timeout && connections.contains_key(id)
        });
        self.closed_order
            .retain(|(at, id)| Self::is_closed_entry(connections, *at, id));
        self.handshake_order
            .retain(|(at, id)| Self::is_handshake_entry(connections, *at, id));
    }

    /// Marks a connection unsafe (for example after the capture reported dropped frames) and
    /// emits the event. Unknown connections are ignored.
    pub fn mark_unsafe(
        &mut self,
        id: &ConnectionId,
        at: Instant,
        reason: UnsafeReason,
        out: &mut Vec<ConnectionEvent>,
    ) {
        if let Some(Tracked::Open(c)) = self.connections.get_mut(id) {
            c.mark_unsafe(at, reason, out);
        }
    }

    /// Marks every open connection unsafe; see [`Tracker::mark_unsafe`].
    pub fn mark_all_unsafe(
        &mut self,
        at: Instant,
        reason: UnsafeReason,
        out: &mut Vec<ConnectionEvent>,
    ) {
        for t in self.connections.values_mut() {
            if let Tracked::Open(c) = t {
                c.mark_unsafe(at, reason, out);
            }
        }
    }

    /// Releases a connection's retained client bytes below `upto` (only meaningful with
    /// [`ClientRetention::UntilConsumed`]).
    pub fn consume_client(&mut self, id: &ConnectionId, upto: u64) {
        if let Some(Tracked::Open(c)) = self.connections.get_mut(id) {
            c.consume_client(upto);
        }
    }

    /// The record of an open (or lingering closed) connection.
    pub fn record(&self, id: &ConnectionId) -> Option<&ConnectionRecord> {
        match self.connections.get(id)? {
            Tracked::Open(c) => Some(c.record()),
            Tracked::SynSeen(_) => None,
        }
    }

    /// Records of every open or lingering connection, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.connections.values().filter_map(|t| match t {
            Tracked::Open(c) => Some(c.record()),
            Tracked::SynSeen(_) => None,
        })
    }

    /// The snapshot of one connection.
    pub fn snapshot(&self, id: &ConnectionId) -> Option<ConnectionSnapshot> {
        self.record(id).map(ConnectionRecord::snapshot)
    }

    /// Snapshots of every open or lingering connection, ordered by identity.
    pub fn snapshots(&self) -> Vec<ConnectionSnapshot> {
        let mut v: Vec<_> = self.records().map(ConnectionRecord::snapshot).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Connections whose SYN was seen but not their SYN-ACK.
    pub fn pending_handshakes(&self) -> usize {
        self.connections
            .values()
            .filter(|t| matches!(t, Tracked::SynSeen(_)))
            .count()
    }

    /// Connections tracked (pending handshakes included).
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}
