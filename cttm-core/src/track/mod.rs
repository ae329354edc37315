//! The [`Tracker`]: follows every connection to a set of services from captured segments, in
//! capture order, and emits [`ConnectionEvent`]s.
//!
//! The capture point is assumed to be the server host (or a tap next to it): client segments
//! may arrive lost (never captured), retransmitted, reordered or duplicated; every server
//! segment is seen as sent. Each connection goes through two phases, each with its own
//! handler: [`handshake`] (SYN seen, waiting for the SYN-ACK) and [`open`] (both ISNs known,
//! a [`ConnectionRecord`] exists).

mod handshake;
mod open;
mod reassembly;

use crate::endpoint::{ConnectionId, ServiceSet};
use crate::event::{CloseHow, ConnectionEvent, EventKind, UnsafeReason};
use crate::record::{ClientRetention, ConnectionRecord};
use crate::snapshot::ConnectionSnapshot;
use crate::time::Instant;
use crate::wire::{LinkType, ParseError, SegmentRepr, parse_frame};
use handshake::SynSeen;
use open::OpenConnection;
use std::collections::HashMap;
use std::time::Duration;

/// Tracker settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The services whose connections are tracked.
    pub services: ServiceSet,
    /// The most connections tracked at once (default 65,536). When full, closed connections
    /// are evicted first; new connections beyond that are counted in
    /// [`TrackerStats::untracked_table_full`] and not tracked.
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
    /// New connections not tracked because the table was full of open ones.
    pub untracked_table_full: u64,
    /// Out-of-order bytes discarded because a reassembly buffer was full.
    pub reassembly_dropped: u64,
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
    connections: HashMap<ConnectionId, Tracked>,
    /// Client SYNs with a new ISN on a 4-tuple whose connection is still open. Linux answers
    /// a SYN in a synchronized state with a challenge ACK and keeps the connection (RFC 5961
    /// §4, RFC 9293 §3.10.7.4), so the SYN starts a new incarnation only once the server
    /// answers it with a SYN-ACK; until then the open connection stays tracked (a stray or
    /// spoofed SYN must not end its protection).
    reincarnations: HashMap<ConnectionId, SynSeen>,
    stats: TrackerStats,
}

impl Tracker {
    /// A tracker with no connections.
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            connections: HashMap::new(),
            reincarnations: HashMap::new(),
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
                let next = handshake::on_syn_seen(&self.config, syn, id, side, at, segment, out);
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
                } else if let Some(syn) = self
                    .reincarnations
                    .get(&id)
                    .filter(|syn| syn.is_answered_by(side, segment))
                    .cloned()
                {
                    // The server accepted the new SYN: the old connection is gone.
                    self.reincarnations.remove(&id);
                    conn.close(at, CloseHow::Evicted, out);
                    let next =
                        handshake::on_syn_seen(&self.config, &syn, id, side, at, segment, out);
                    self.replace(id, next);
                    FrameDisposition::Tracked
                } else {
                    let dropped_before = conn.dropped();
                    conn.on_segment(&self.config, side, at, segment, out);
                    self.stats.reassembly_dropped += conn.dropped() - dropped_before;
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
        if self.connections.len() >= self.config.max_connections && !self.evict_one_closed() {
            self.stats.untracked_table_full += 1;
            return FrameDisposition::Ignored;
        }
        match handshake::on_untracked(&self.config, id, side, at, segment, out) {
            Some(tracked) => {
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
                EventKind::Closed(CloseHow::Evicted) => self.stats.evicted += 1,
                EventKind::Closed(_) => self.stats.closed += 1,
                EventKind::Unsafe(UnsafeReason::MidStream) => {}
                EventKind::Unsafe(_) => self.stats.unsafe_connections += 1,
                _ => {}
            }
        }
    }

    /// Evicts the closed connection that closed longest ago; false if there is none.
    fn evict_one_closed(&mut self) -> bool {
        let victim = self
            .connections
            .iter()
            .filter_map(|(id, t)| match t {
                Tracked::Open(c) if c.record().closed().is_some() => {
                    Some((c.record().updated_at(), *id))
                }
                _ => None,
            })
            .min()
            .map(|(_, id)| id);
        match victim {
            Some(id) => {
                self.connections.remove(&id);
                self.stats.evicted += 1;
                true
            }
            None => false,
        }
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
