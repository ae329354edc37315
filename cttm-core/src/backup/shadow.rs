//! Shadow sessions, sans-IO: for each protected connection the backup keeps a local connection
//! to the standby daemon, fed the client's bytes as the replica receives them, so the standby
//! reaches the state the primary's daemon is in. The standby's output is compared with the
//! bytes the primary really sent: equal bytes are dropped, the first difference marks the
//! connection diverged (it is reset at takeover, never silently continued).
//!
//! [`ShadowSessions`] decides; the driver owns the standby sockets. It feeds the replica's
//! changes ([`ShadowSessions::on_event`], [`ShadowSessions::on_record`]) and, per session, the
//! standby's output ([`ShadowSession::on_standby_output`]); it writes what
//! [`ShadowSession::client_to_write`] offers and carries out the [`ShadowCommand`]s of
//! [`ShadowSessions::poll_command`] (connect, close, release client bytes, report a loss).

use crate::endpoint::ConnectionId;
use crate::event::{CloseHow, ConnectionEvent, EventKind, Handshake, Side};
use crate::record::ConnectionRecord;
use std::collections::{HashMap, VecDeque};
use std::fmt;

/// The most bytes a comparison keeps waiting for the other side (primary bytes the standby
/// has not produced yet, or standby bytes the primary has not sent yet). Past it the
/// connection is unprotected.
pub const COMPARISON_LIMIT: usize = 16 << 20;

/// Whether a shadow session still protects its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protection {
    /// The standby follows the primary byte for byte so far.
    Protected,
    /// The standby's output differed from the primary's at this server stream offset.
    Diverged {
        /// The first differing byte.
        offset: u64,
    },
    /// The shadow session cannot follow the connection (the reason says why).
    Unprotected(String),
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Protected => write!(f, "protected"),
            Protection::Diverged { offset } => write!(
                f,
                "diverged: the standby's output differs from the primary's at server offset {offset}"
            ),
            Protection::Unprotected(reason) => write!(f, "unprotected: {reason}"),
        }
    }
}

/// The standby's output compared with the primary's, on the server stream's offsets.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Every server byte below this offset was produced equal by both.
    matched: u64,
    /// Primary bytes from `matched` on that the standby has not produced yet.
    primary: VecDeque<u8>,
    /// Standby bytes from `matched` on that the primary has not sent yet.
    standby: VecDeque<u8>,
    /// The primary's server stream ended (its FIN) at `primary_end()`.
    primary_fin: bool,
    /// The standby closed its side at `standby_end()`.
    standby_eof: bool,
    /// Standby bytes still to drop unverified (the primary's bytes before `matched` are
    /// gone: the shadow started from a resynchronised record).
    unverified: u64,
}

impl Comparison {
    /// A comparison whose primary bytes start at `offset`: the standby's first `offset` bytes
    /// are dropped without comparison.
    pub fn starting_at(offset: u64) -> Comparison {
        Comparison {
            matched: offset,
            unverified: offset,
            ..Comparison::default()
        }
    }

    /// End of the primary's bytes known.
    pub fn primary_end(&self) -> u64 {
        self.matched + self.primary.len() as u64
    }

    /// End of the standby's bytes read.
    pub fn standby_end(&self) -> u64 {
        self.matched + self.standby.len() as u64
    }

    /// The primary sent a FIN.
    pub fn primary_fin(&self) -> bool {
        self.primary_fin
    }

    /// The standby closed its side.
    pub fn standby_eof(&self) -> bool {
        self.standby_eof
    }

    /// Bytes waiting for the other side.
    pub fn backlog(&self) -> usize {
        self.primary.len().max(self.standby.len())
    }

    /// Primary bytes at `offset`. Overlap with what is known is skipped; `Err(expected)` on a
    /// gap (the shadow missed server bytes).
    pub fn push_primary(&mut self, offset: u64, bytes: &[u8]) -> Result<(), u64> {
        append_at(&mut self.primary, self.matched, offset, bytes)
    }

    /// The primary's FIN at `offset`; `Err(expected)` when server bytes before it are missing.
    pub fn set_primary_fin(&mut self, offset: u64) -> Result<(), u64> {
        if offset != self.primary_end() {
            return Err(self.primary_end());
        }
        self.primary_fin = true;
        Ok(())
    }

    /// Standby bytes read, in order.
    pub fn push_standby(&mut self, bytes: &[u8]) {
        let skip = usize::try_from(self.unverified)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.unverified -= skip as u64;
        self.standby.extend(&bytes[skip..]);
    }

    /// The standby closed its side.
    pub fn set_standby_eof(&mut self) {
        self.standby_eof = true;
    }

    /// Compares what both sides produced; `Err(offset)` at the first difference (a differing
    /// byte, bytes after the other side's end of stream).
    pub fn settle(&mut self) -> Result<(), u64> {
        let n = self.primary.len().min(self.standby.len());
        if n > 0 {
            let (p, s) = (
                self.primary.make_contiguous(),
                self.standby.make_contiguous(),
            );
            if let Some(i) = p[..n].iter().zip(&s[..n]).position(|(a, b)| a != b) {
                return Err(self.matched + i as u64);
            }
            self.primary.drain(..n);
            self.standby.drain(..n);
            self.matched += n as u64;
        }
        if (self.primary_fin && !self.standby.is_empty())
            || (self.standby_eof && (!self.primary.is_empty() || self.unverified > 0))
        {
            return Err(self.matched);
        }
        Ok(())
    }

    /// True when nothing is left to compare: the standby has produced every byte the primary
    /// sent, and the primary did not close its side. After takeover, standby bytes can then
    /// go straight to the client ([`forwarded`](Self::forwarded)).
    pub fn passed_primary(&self) -> bool {
        self.primary.is_empty()
            && self.standby.is_empty()
            && self.unverified == 0
            && !self.primary_fin
    }

    /// Counts `n` standby bytes forwarded without comparison (see
    /// [`passed_primary`](Self::passed_primary)).
    pub fn forwarded(&mut self, n: usize) {
        self.matched += n as u64;
    }

    /// After takeover the primary sends nothing more: the standby's bytes beyond the
    /// primary's end are the connection's future output. Takes them (call after
    /// [`settle`](Self::settle)).
    pub fn take_beyond_primary(&mut self) -> Vec<u8> {
        if !self.primary.is_empty() || self.standby.is_empty() {
            return Vec::new();
        }
        let out: Vec<u8> = self.standby.drain(..).collect();
        self.matched += out.len() as u64;
        out
    }
}

/// Appends the part of `bytes` (at stream `offset`) beyond `queue`, which holds the stream
/// from `base` on. `Err(end)` when `offset` lies beyond the queue's end (a gap).
fn append_at(queue: &mut VecDeque<u8>, base: u64, offset: u64, bytes: &[u8]) -> Result<(), u64> {
    let end = base + queue.len() as u64;
    if offset > end {
        return Err(end);
    }
    let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
    if skip < bytes.len() {
        queue.extend(&bytes[skip..]);
    }
    Ok(())
}

/// Client bytes on their way to the standby.
#[derive(Debug, Default)]
pub struct ClientFeed {
    /// Client stream offset of the next byte to write to the standby.
    written: u64,
    /// Bytes from `written` on, not yet written.
    pending: VecDeque<u8>,
    /// The client's FIN offset, when known.
    fin: Option<u64>,
    /// The standby's write side is shut (the FIN was passed on).
    shut: bool,
    /// The offset last reported consumed to the replica.
    consumed: u64,
}

impl ClientFeed {
    /// End of the client bytes known.
    pub fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Client stream offset of the next byte to write to the standby.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The client's FIN is known.
    pub fn fin_known(&self) -> bool {
        self.fin.is_some()
    }

    /// The client's FIN was passed on to the standby.
    pub fn shut(&self) -> bool {
        self.shut
    }

    /// Client bytes at `offset`; overlap skipped, `Err(end)` on a gap.
    pub fn push(&mut self, offset: u64, bytes: &[u8]) -> Result<(), u64> {
        append_at(&mut self.pending, self.written, offset, bytes)
    }
}

/// One shadow session's state (its standby socket is the driver's).
#[derive(Debug)]
pub struct ShadowSession {
    id: ConnectionId,
    handshake: Handshake,
    client: ClientFeed,
    compare: Comparison,
    status: Protection,
    /// Protection was lost and the driver was not told yet.
    lost_untold: bool,
    /// Client bytes arrived for a connection no longer protected: release them.
    release: bool,
}

impl ShadowSession {
    /// A session for a connection opened with `handshake`. A connection picked up mid-stream
    /// starts unprotected: the standby never saw its beginning.
    pub fn open(id: ConnectionId, handshake: Handshake) -> ShadowSession {
        let mut session = ShadowSession {
            id,
            handshake,
            client: ClientFeed::default(),
            compare: Comparison::default(),
            status: Protection::Protected,
            lost_untold: false,
            release: false,
        };
        if handshake.mid_stream {
            session.unprotect("picked up mid-stream: the standby cannot reach the daemon's state");
        }
        session
    }

    /// The connection.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// Whether the session still protects its connection.
    pub fn status(&self) -> &Protection {
        &self.status
    }

    /// True while the session protects its connection.
    pub fn is_protected(&self) -> bool {
        self.status == Protection::Protected
    }

    /// The client bytes on their way to the standby.
    pub fn client(&self) -> &ClientFeed {
        &self.client
    }

    /// The comparison of the standby's output with the primary's.
    pub fn comparison(&self) -> &Comparison {
        &self.compare
    }

    /// Marks the session unprotected (no-op unless protected): the standby can no longer
    /// follow. Its buffers are freed and its client bytes released.
    pub fn unprotect(&mut self, reason: &str) {
        self.lose(Protection::Unprotected(reason.to_string()));
    }

    /// Marks the session diverged at server `offset` (no-op unless protected).
    pub fn diverge(&mut self, offset: u64) {
        self.lose(Protection::Diverged { offset });
    }

    fn lose(&mut self, status: Protection) {
        if self.is_protected() {
            self.status = status;
            self.lost_untold = true;
            self.client.pending = VecDeque::new();
            self.compare = Comparison::default();
            self.release = true;
        }
    }

    fn check(&mut self) {
        if let Err(offset) = self.compare.settle() {
            self.diverge(offset);
        } else if self.compare.backlog() > COMPARISON_LIMIT {
            self.unprotect("comparison backlog exceeded (the standby lags or runs ahead too far)");
        }
    }

    /// Applies one change of the connection's replicated state.
    pub fn on_event(&mut self, kind: &EventKind) {
        if !self.is_protected() {
            self.release |= matches!(kind, EventKind::ClientData { .. });
            return;
        }
        match kind {
            EventKind::ClientData { offset, bytes } => {
                if let Err(end) = self.client.push(*offset, bytes) {
                    self.unprotect(&format!(
                        "the shadow missed client bytes from offset {end} to {offset}"
                    ));
                }
            }
            EventKind::ServerData { offset, bytes } => {
                if let Err(end) = self.compare.push_primary(*offset, bytes) {
                    self.unprotect(&format!(
                        "the shadow missed server bytes from offset {end} to {offset}"
                    ));
                }
                self.check();
            }
            EventKind::Fin {
                side: Side::Client,
                offset,
            } => self.client.fin = Some(*offset),
            EventKind::Fin {
                side: Side::Server,
                offset,
            } => {
                if self.compare.set_primary_fin(*offset).is_err() {
                    self.unprotect("the primary's FIN came before server bytes the shadow missed");
                }
                self.check();
            }
            EventKind::Unsafe(reason) => {
                self.unprotect(&format!(
                    "the primary reported the connection unsafe: {reason:?}"
                ));
            }
            _ => {}
        }
    }

    /// Catches up from a whole record (a resynchronisation replaced the connection's).
    fn catch_up(&mut self, record: &ConnectionRecord) {
        let (client, server) = (record.stream(Side::Client), record.stream(Side::Server));
        let client_from = client.retained_from();
        let server_from = server.retained_from();
        self.on_event(&EventKind::ClientData {
            offset: client_from,
            bytes: client.bytes_between(client_from, client.received_end()),
        });
        self.on_event(&EventKind::ServerData {
            offset: server_from,
            bytes: server.bytes_between(server_from, server.received_end()),
        });
        if let Some(offset) = client.fin() {
            self.client.fin = Some(offset);
        }
        if let Some(offset) = server.fin()
            && !self.compare.primary_fin()
        {
            self.on_event(&EventKind::Fin {
                side: Side::Server,
                offset,
            });
        }
    }

    /// Client bytes to write to the standby now (empty when none or unprotected).
    pub fn client_to_write(&self) -> &[u8] {
        self.client.pending.as_slices().0
    }

    /// `n` bytes of [`client_to_write`](Self::client_to_write) were written.
    pub fn client_written(&mut self, n: usize) {
        let n = n.min(self.client.pending.len());
        self.client.pending.drain(..n);
        self.client.written += n as u64;
    }

    /// The client's FIN is due to the standby now (every byte before it was written): the
    /// driver shuts the standby's write side and calls
    /// [`client_fin_passed`](Self::client_fin_passed).
    pub fn client_fin_due(&self) -> bool {
        self.is_protected()
            && self.client.pending.is_empty()
            && !self.client.shut
            && self.client.fin == Some(self.client.written)
    }

    /// The client's FIN was passed on to the standby.
    pub fn client_fin_passed(&mut self) {
        self.client.shut = true;
    }

    /// The driver should read the standby's output now (protected, the standby has not
    /// closed, the comparison has room).
    pub fn wants_standby_output(&self) -> bool {
        self.is_protected()
            && !self.compare.standby_eof()
            && self.compare.backlog() <= COMPARISON_LIMIT
    }

    /// Bytes the standby produced, in order.
    pub fn on_standby_output(&mut self, bytes: &[u8]) {
        if self.is_protected() {
            self.compare.push_standby(bytes);
            self.check();
        }
    }

    /// The standby closed its side.
    pub fn on_standby_eof(&mut self) {
        if self.is_protected() {
            self.compare.set_standby_eof();
            self.check();
        }
    }

    /// The standby socket failed while doing `what`.
    pub fn on_standby_error(&mut self, what: &str, error: &dyn fmt::Display) {
        self.unprotect(&format!("{what} the standby failed: {error}"));
    }

    /// The client offset to report consumed to the replica, when it moved: every byte
    /// written to the standby, or everything once the connection is lost anyway (the primary
    /// may then release its copies).
    pub fn take_consumed(&mut self) -> Option<u64> {
        if self.is_protected() {
            let upto = self.client.written;
            (upto > self.client.consumed).then(|| {
                self.client.consumed = upto;
                upto
            })
        } else {
            std::mem::take(&mut self.release).then_some(u64::MAX)
        }
    }

    /// At takeover: the client bytes not yet written to the standby.
    pub fn take_pending_client(&mut self) -> VecDeque<u8> {
        std::mem::take(&mut self.client.pending)
    }

    /// At takeover: the comparison so far.
    pub fn take_comparison(&mut self) -> Comparison {
        std::mem::take(&mut self.compare)
    }

    fn take_lost(&mut self) -> Option<Protection> {
        std::mem::take(&mut self.lost_untold).then(|| self.status.clone())
    }
}

/// What the driver of [`ShadowSessions`] carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShadowCommand {
    /// Connect a standby session for this connection, then report a failure with
    /// [`ShadowSession::unprotect`].
    Connect(ConnectionId),
    /// Close the connection's standby session: with a reset (`SO_LINGER` 0) when the
    /// client's connection was reset, so the standby daemon sees what its peer did.
    Close {
        /// The connection.
        id: ConnectionId,
        /// Pass a reset on instead of a FIN.
        reset: bool,
    },
    /// Tell the replica the shadow consumed the client's bytes below `upto`.
    Consume {
        /// The connection.
        id: ConnectionId,
        /// Client stream offset (`u64::MAX`: all of them).
        upto: u64,
    },
    /// The connection lost its protection (log it; drop its standby socket).
    Lost {
        /// The connection.
        id: ConnectionId,
        /// What it is now.
        status: Protection,
    },
}

/// Every shadow session of the backup.
#[derive(Debug, Default)]
pub struct ShadowSessions {
    sessions: HashMap<ConnectionId, ShadowSession>,
    commands: VecDeque<ShadowCommand>,
}

impl ShadowSessions {
    /// No sessions.
    pub fn new() -> ShadowSessions {
        ShadowSessions::default()
    }

    /// Applies one event the replica applied.
    pub fn on_event(&mut self, event: &ConnectionEvent) {
        match &event.kind {
            EventKind::Opened(handshake) => {
                let same = self
                    .sessions
                    .get(&event.id)
                    .is_some_and(|s| s.handshake == *handshake);
                if !same {
                    self.open(ShadowSession::open(event.id, *handshake));
                }
            }
            EventKind::Closed(how) => self.close(&event.id, *how),
            kind => {
                if let Some(session) = self.sessions.get_mut(&event.id) {
                    session.on_event(kind);
                    Self::note(&mut self.commands, session);
                }
            }
        }
    }

    /// A whole record replaced the connection's (resynchronisation): catch up from it.
    ///
    /// A full resynchronisation (a new backup, or one that fell too far behind) brings whole
    /// records. The standby can still follow if every client byte is there; server bytes the
    /// client already acknowledged are gone, so the standby's output before them is not
    /// compared.
    pub fn on_record(&mut self, record: &ConnectionRecord) {
        let id = record.id();
        if let Some(how) = record.closed() {
            self.close(&id, how);
            return;
        }
        let handshake = *record.handshake();
        let fresh = !self
            .sessions
            .get(&id)
            .is_some_and(|s| s.handshake == handshake);
        if fresh {
            let mut session = ShadowSession::open(id, handshake);
            let server_from = record.stream(Side::Server).retained_from();
            if record.stream(Side::Client).retained_from() == 0 {
                session.compare = Comparison::starting_at(server_from);
            } else {
                session.unprotect(
                    "the backup learned of the connection after client bytes it needs were released",
                );
            }
            self.open(session);
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.catch_up(record);
            Self::note(&mut self.commands, session);
        }
    }

    /// The connection left the replica.
    pub fn forget(&mut self, id: &ConnectionId) {
        if self.sessions.remove(id).is_some() {
            self.commands.push_back(ShadowCommand::Close {
                id: *id,
                reset: false,
            });
        }
    }

    /// Every session is unprotected (the driver lost replica changes).
    pub fn unprotect_all(&mut self, reason: &str) {
        for session in self.sessions.values_mut() {
            session.unprotect(reason);
            Self::note(&mut self.commands, session);
        }
    }

    /// The session of `id`, for the driver's I/O. Call [`settle`](Self::settle) after.
    pub fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut ShadowSession> {
        self.sessions.get_mut(id)
    }

    /// The session of `id`.
    pub fn get(&self, id: &ConnectionId) -> Option<&ShadowSession> {
        self.sessions.get(id)
    }

    /// After the driver served `id`'s standby socket: queue what follows (consumption, loss).
    pub fn settle(&mut self, id: &ConnectionId) {
        if let Some(session) = self.sessions.get_mut(id) {
            Self::note(&mut self.commands, session);
        }
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<ShadowCommand> {
        self.commands.pop_front()
    }

    /// Takes the session of a connection (at takeover).
    pub fn take(&mut self, id: &ConnectionId) -> Option<ShadowSession> {
        self.sessions.remove(id)
    }

    /// How many sessions exist (protected or not).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// No sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = &ShadowSession> {
        self.sessions.values()
    }

    fn open(&mut self, session: ShadowSession) {
        let id = session.id;
        let protected = session.is_protected();
        self.sessions.insert(id, session);
        if protected {
            self.commands.push_back(ShadowCommand::Connect(id));
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            Self::note(&mut self.commands, session);
        }
    }

    fn close(&mut self, id: &ConnectionId, how: CloseHow) {
        if self.sessions.remove(id).is_some() {
            self.commands.push_back(ShadowCommand::Close {
                id: *id,
                reset: matches!(how, CloseHow::Reset(_)),
            });
        }
    }

    fn note(commands: &mut VecDeque<ShadowCommand>, session: &mut ShadowSession) {
        if let Some(status) = session.take_lost() {
            commands.push_back(ShadowCommand::Lost {
                id: session.id,
                status,
            });
        }
        if let Some(upto) = session.take_consumed() {
            commands.push_back(ShadowCommand::Consume {
                id: session.id,
                upto,
            });
        }
    }
}

#[cfg(test)]
#[path = "shadow_tests.rs"]
mod tests;
