//! Output commit: the gate that holds the server's outgoing segments until the backup holds
//! everything they reveal.
//!
//! # The rule (FT-TCP output commit)
//! FT-TCP (Alvisi, Bressoud, El-Khashab, Marzullo, Zagorodnov, "Wrapping Server-Side TCP to
//! Mask Connection Failures", INFOCOM 2001) keeps a TCP connection alive across a server
//! crash by logging the connection's input at a backup and *committing output* only after the
//! input it depends on is logged: once the client has seen something, the backup must be able
//! to reproduce it. For a TCP server that means, for each outgoing segment:
//!
//! - every **client byte the segment acknowledges** is held by the backup: once the client
//!   sees the acknowledgement it discards those bytes from its send buffer and will never
//!   send them again (RFC 9293 §3.10.7.4), so only the backup can feed them to the standby;
//! - every **server byte the segment carries** (and every one before it) is held by the
//!   backup: once the client has read them, the restored connection must continue right
//!   after them, and the backup compares the standby's output against them;
//! - a **FIN** counts as one offset of its stream (it takes one sequence number, RFC 9293
//!   §3.4): a segment carrying the server's FIN, or acknowledging the client's, leaves only
//!   once the backup holds that FIN. Otherwise the client could see the end of the stream
//!   (or learn its own FIN was received and stop retransmitting it) while a backup taking
//!   over still believes the stream open; requirements and holdings are therefore both in
//!   sequence space ([`StreamState::sequence_end`](crate::record::StreamState::sequence_end)
//!   and [`StreamState::acked`](crate::record::StreamState::acked), which count the FIN);
//! - a **SYN-ACK** waits until the backup holds the connection's handshake (ISNs and
//!   options): the client's ACK of it would otherwise create a connection the backup could
//!   never restore.
//! - on a **checkpointed** connection (a non-deterministic daemon reports its state,
//!   [`crate::checkpoint`]), every server byte the segment carries (and every one before it)
//!   is also covered by a checkpoint the backup holds: its `server_produced` is at or past
//!   the end of those bytes. Replaying the client's bytes would not reproduce what such a
//!   daemon wrote, so a standby can only continue the stream from a checkpoint that already
//!   accounts for every byte the client may have read. The daemon checkpoints before each
//!   write with `server_produced` the offset after it, so a covering checkpoint exists by
//!   the time the segment is held. The FIN is not part of this: a checkpoint counts bytes.
//!
//! [`OutputCommit`] is that gate, sans-IO: the caller [`hold`](OutputCommit::hold)s each
//! outgoing packet (any handle, e.g. an NFQUEUE packet id) with its
//! [`CommitRequirement`], and [`release`](OutputCommit::release) returns, in order per
//! connection, the packets whose requirement the backup's acknowledged offsets now meet. A
//! packet never overtakes an earlier packet of its connection (TCP would cope, but
//! reordering costs the client duplicate acknowledgements and the server spurious fast
//! retransmits). Connections that ended, or that the caller stopped protecting, give up their
//! packets at once ([`release_connection`](OutputCommit::release_connection)): there is
//! nothing left for the backup to restore. The gate reads no clock and keeps no packet
//! contents; bounding how many packets wait is the caller's job (the kernel queue bounds it
//! when packets are NFQUEUE ids).

use crate::endpoint::ConnectionId;
use std::collections::{HashMap, VecDeque};

/// What the backup must hold before a packet may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommitRequirement {
    /// The backup holds every client byte below `client` (what the segment acknowledges) and
    /// every server byte below `server` (the end of what the segment and those before it
    /// carry). Stream offsets in sequence space, as in [`event`](crate::event): a FIN is the
    /// offset after its stream's last byte, so `received_end + 1` requires the FIN.
    Offsets {
        /// Client stream offset that must be held (the segment's acknowledgement, as
        /// [`StreamState::acked`](crate::record::StreamState::acked) of the client stream).
        client: u64,
        /// Server stream offset that must be held (as
        /// [`StreamState::sequence_end`](crate::record::StreamState::sequence_end) of the
        /// server stream).
        server: u64,
        /// `Some` when the connection is checkpointed: the server byte offset (the end of
        /// the bytes the segment and those before it carry, without the FIN, as
        /// [`StreamState::received_end`](crate::record::StreamState::received_end)) that
        /// the checkpoint the backup acknowledged must reach
        /// ([`BackupHolds::checkpoint`]). `None`: the connection is not checkpointed and
        /// only the offsets above count.
        checkpoint: Option<u64>,
    },
    /// The backup holds the connection's handshake (a SYN-ACK).
    Handshake,
}

/// What the backup is known to hold of one connection (from its acknowledgements), in
/// sequence space: one past the last byte held, plus one when the stream's FIN is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct BackupHolds {
    /// Every client offset below this is held (bytes, and the FIN if it is below).
    pub client: u64,
    /// Every server offset below this is held (bytes, and the FIN if it is below).
    pub server: u64,
    /// The `server_produced` of the last application checkpoint of the connection the
    /// backup holds ([`crate::checkpoint::Checkpoint`]); `None` when it holds none.
    pub checkpoint: Option<u64>,
}

impl CommitRequirement {
    /// Whether a backup that holds `holds` of the connection (`None`: nothing at all, not
    /// even its handshake) meets the requirement.
    pub fn is_met_by(&self, holds: Option<BackupHolds>) -> bool {
        match (self, holds) {
            (_, None) => false,
            (CommitRequirement::Handshake, Some(_)) => true,
            (
                CommitRequirement::Offsets {
                    client,
                    server,
                    checkpoint,
                },
                Some(h),
            ) => {
                h.client >= *client
                    && h.server >= *server
                    && checkpoint.is_none_or(|needed| h.checkpoint.is_some_and(|c| c >= needed))
            }
        }
    }
}

/// Counters of an [`OutputCommit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Packets given to [`OutputCommit::hold`].
    pub held: u64,
    /// Packets released because their requirement was met.
    pub released: u64,
    /// Packets released because their connection ended or stopped being protected.
    pub released_unprotected: u64,
}

#[derive(Debug)]
struct Waiting<P> {
    /// Global hold order, to release in the order packets were held.
    order: u64,
    packet: P,
    requirement: CommitRequirement,
}

/// The output-commit gate: held packets per connection, released in order once the backup
/// holds what they reveal. `P` is the caller's packet handle.
#[derive(Debug)]
pub struct OutputCommit<P> {
    waiting: HashMap<ConnectionId, VecDeque<Waiting<P>>>,
    next_order: u64,
    len: usize,
    stats: CommitStats,
}

impl<P> Default for OutputCommit<P> {
    fn default() -> Self {
        OutputCommit::new()
    }
}

impl<P> OutputCommit<P> {
    /// An empty gate.
    pub fn new() -> Self {
        OutputCommit {
            waiting: HashMap::new(),
            next_order: 0,
            len: 0,
            stats: CommitStats::default(),
        }
    }

    /// Holds `packet` of connection `id` until `requirement` is met. It leaves after every
    /// packet held before it on the same connection.
    pub fn hold(&mut self, packet: P, id: ConnectionId, requirement: CommitRequirement) {
        let order = self.next_order;
        self.next_order += 1;
        self.waiting.entry(id).or_default().push_back(Waiting {
            order,
            packet,
            requirement,
        });
        self.len += 1;
        self.stats.held += 1;
    }

    /// Releases every packet whose requirement is met, given what the backup holds of each
    /// connection (`holds(id)`, `None` when it holds nothing of it), stopping per connection
    /// at the first packet still waiting. The packets come out in the order they were held.
    pub fn release(
        &mut self,
        mut holds: impl FnMut(&ConnectionId) -> Option<BackupHolds>,
    ) -> Vec<P> {
        let mut out: Vec<(u64, P)> = Vec::new();
        self.waiting.retain(|id, queue| {
            let h = holds(id);
            while queue.front().is_some_and(|w| w.requirement.is_met_by(h)) {
                if let Some(w) = queue.pop_front() {
                    out.push((w.order, w.packet));
                }
            }
            !queue.is_empty()
        });
        self.len -= out.len();
        self.stats.released += out.len() as u64;
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// Releases every packet of a connection at once (it closed, was forgotten, or became
    /// unsafe: the backup will never restore it, so holding its output protects nothing).
    pub fn release_connection(&mut self, id: &ConnectionId) -> Vec<P> {
        let Some(queue) = self.waiting.remove(id) else {
            return Vec::new();
        };
        self.len -= queue.len();
        self.stats.released_unprotected += queue.len() as u64;
        queue.into_iter().map(|w| w.packet).collect()
    }

    /// Releases every held packet (shutting down), in hold order.
    pub fn release_all(&mut self) -> Vec<P> {
        let mut out: Vec<(u64, P)> = self
            .waiting
            .drain()
            .flat_map(|(_, q)| q.into_iter().map(|w| (w.order, w.packet)))
            .collect();
        self.stats.released_unprotected += out.len() as u64;
        self.len = 0;
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, p)| p).collect()
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no packet is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Packets held now for connection `id`.
    pub fn held_for(&self, id: &ConnectionId) -> usize {
        self.waiting.get(id).map_or(0, VecDeque::len)
    }

    /// The packet held longest: the first held of those still waiting.
    pub fn longest_held(&self) -> Option<&P> {
        self.waiting
            .values()
            .filter_map(VecDeque::front)
            .min_by_key(|w| w.order)
            .map(|w| &w.packet)
    }

    /// Connections with packets held, in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = &ConnectionId> {
        self.waiting.keys()
    }

    /// The counters.
    pub fn stats(&self) -> CommitStats {
        self.stats
    }
}
