//! Shadow sessions: for each protected connection, a local connection to the standby daemon
//! fed the client's bytes as the replica receives them, so the standby reaches the state the
//! primary's daemon is in. The standby's output is compared with the bytes the primary really
//! sent; equal bytes are dropped, the first difference marks the connection diverged.

use super::splice::{PollSet, is_would_block};
use cttm_core::endpoint::ConnectionId;
use cttm_core::event::{CloseHow, EventKind, Handshake, Side};
use cttm_replicate::ReplicaStore;
use cttm_replicate::store::StoreEvent;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// The most bytes a comparison keeps waiting for the other side (primary bytes the standby
/// has not produced yet, or standby bytes the primary has not sent yet). Past it the
/// connection is unprotected.
pub(crate) const COMPARISON_LIMIT: usize = 16 << 20;
/// How long connecting a shadow session to the standby daemon may take.
const STANDBY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer for the standby's output.
pub(crate) const READ_CHUNK: usize = 256 << 10;

/// Whether a shadow session still protects its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Protection {
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

/// The standby's output compared with the primary's, on the server stream's offsets.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
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
    pub(crate) fn starting_at(offset: u64) -> Comparison {
        Comparison {
            matched: offset,
            unverified: offset,
            ..Comparison::default()
        }
    }

    /// End of the primary's bytes known.
    pub(crate) fn primary_end(&self) -> u64 {
        self.matched + self.primary.len() as u64
    }

    /// End of the standby's bytes read.
    #[cfg(test)]
    pub(crate) fn standby_end(&self) -> u64 {
        self.matched + self.standby.len() as u64
    }

    /// The primary sent a FIN.
    pub(crate) fn primary_fin(&self) -> bool {
        self.primary_fin
    }

    /// The standby closed its side.
    pub(crate) fn standby_eof(&self) -> bool {
        self.standby_eof
    }

    /// Bytes waiting for the other side.
    pub(crate) fn backlog(&self) -> usize {
        self.primary.len().max(self.standby.len())
    }

    /// Primary bytes at `offset`. Overlap with what is known is skipped; `Err(expected)` on a
    /// gap (the shadow missed server bytes).
    pub(crate) fn push_primary(&mut self, offset: u64, bytes: &[u8]) -> Result<(), u64> {
        let end = self.primary_end();
        if offset > end {
            return Err(end);
        }
        let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
        if skip < bytes.len() {
            self.primary.extend(&bytes[skip..]);
        }
        Ok(())
    }

    fn set_primary_fin(&mut self, offset: u64) -> Result<(), u64> {
        if offset != self.primary_end() {
            return Err(self.primary_end());
        }
        self.primary_fin = true;
        Ok(())
    }

    /// Standby bytes read, in order.
    pub(crate) fn push_standby(&mut self, bytes: &[u8]) {
        let skip = usize::try_from(self.unverified)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.unverified -= skip as u64;
        self.standby.extend(&bytes[skip..]);
    }

    /// The standby closed its side.
    pub(crate) fn set_standby_eof(&mut self) {
        self.standby_eof = true;
    }

    /// Compares what both sides produced; `Err(offset)` at the first difference (a differing
    /// byte, bytes after the other side's end of stream).
    pub(crate) fn settle(&mut self) -> Result<(), u64> {
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
    pub(crate) fn passed_primary(&self) -> bool {
        self.primary.is_empty()
            && self.standby.is_empty()
            && self.unverified == 0
            && !self.primary_fin
    }

    /// Counts `n` standby bytes forwarded without comparison (see
    /// [`passed_primary`](Self::passed_primary)).
    pub(crate) fn forwarded(&mut self, n: usize) {
        self.matched += n as u64;
    }

    /// After takeover the primary sends nothing more: the standby's bytes beyond the
    /// primary's end are the connection's future output. Takes them (call after
    /// [`settle`](Self::settle)).
    pub(crate) fn take_beyond_primary(&mut self) -> Vec<u8> {
        if !self.primary.is_empty() || self.standby.is_empty() {
            return Vec::new();
        }
        let out: Vec<u8> = self.standby.drain(..).collect();
        self.matched += out.len() as u64;
        out
    }
}

/// Client bytes on their way to the standby.
#[derive(Debug, Default)]
pub(crate) struct ClientFeed {
    /// Client stream offset of the next byte to write to the standby.
    pub(crate) written: u64,
    /// Bytes from `written` on, not yet written.
    pub(crate) pending: VecDeque<u8>,
    /// The client's FIN offset, when known.
    pub(crate) fin: Option<u64>,
    /// The standby's write side is shut (the FIN was passed on).
    pub(crate) shut: bool,
    /// The offset last reported consumed to the store.
    consumed: u64,
}

impl ClientFeed {
    /// End of the client bytes known.
    pub(crate) fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    fn push(&mut self, offset: u64, bytes: &[u8]) -> Result<(), u64> {
        let end = self.end();
        if offset > end {
            return Err(end);
        }
        let skip = usize::try_from(end - offset).unwrap_or(usize::MAX);
        if skip < bytes.len() {
            self.pending.extend(&bytes[skip..]);
        }
        Ok(())
    }
}

/// One shadow session.
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) id: ConnectionId,
    handshake: Handshake,
    /// The connection to the standby daemon (nonblocking); `None` once it is not needed.
    pub(crate) standby: Option<TcpStream>,
    pub(crate) client: ClientFeed,
    pub(crate) compare: Comparison,
    pub(crate) status: Protection,
    /// Client bytes arrived for a connection no longer protected: release them in the store.
    release: bool,
}

impl Shadow {
    fn open(id: ConnectionId, handshake: Handshake, standby: SocketAddr) -> Shadow {
        let mut shadow = Shadow {
            id,
            handshake,
            standby: None,
            client: ClientFeed::default(),
            compare: Comparison::default(),
            status: Protection::Protected,
            release: false,
        };
        if handshake.mid_stream {
            shadow.unprotect("picked up mid-stream: the standby cannot reach the daemon's state");
            return shadow;
        }
        match connect_standby(standby) {
            Ok(s) => {
                shadow.standby = Some(s);
                tracing::info!(connection = %id, "connection protected by a shadow session");
            }
            Err(e) => shadow.unprotect(&format!("standby daemon {standby} unreachable: {e}")),
        }
        shadow
    }

    /// True while the shadow still protects its connection.
    pub(crate) fn is_protected(&self) -> bool {
        self.status == Protection::Protected
    }

    pub(crate) fn unprotect(&mut self, reason: &str) {
        if self.is_protected() {
            tracing::warn!(connection = %self.id, reason, "connection unprotected");
            self.status = Protection::Unprotected(reason.to_string());
            self.drop_session();
        }
    }

    pub(crate) fn diverge(&mut self, offset: u64) {
        if self.is_protected() {
            tracing::warn!(
                connection = %self.id,
                offset,
                "connection diverged: the standby's output differs from the primary's"
            );
            self.status = Protection::Diverged { offset };
            self.drop_session();
        }
    }

    /// The connection is lost at takeover anyway: close the standby session, free the
    /// buffers, release the client bytes in the store.
    fn drop_session(&mut self) {
        self.standby = None;
        self.client.pending = VecDeque::new();
        self.compare = Comparison::default();
        self.release = true;
    }

    fn check(&mut self) {
        if let Err(offset) = self.compare.settle() {
            self.diverge(offset);
        } else if self.compare.backlog() > COMPARISON_LIMIT {
            self.unprotect("comparison backlog exceeded (the standby lags or runs ahead too far)");
        }
    }

    fn on_event(&mut self, kind: &EventKind) {
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

    /// Writes pending client bytes to the standby (without waiting), and passes the client's
    /// FIN on once every byte before it is written.
    fn flush_client(&mut self) {
        let Some(standby) = self.standby.as_mut() else {
            return;
        };
        while !self.client.pending.is_empty() {
            let (front, _) = self.client.pending.as_slices();
            match standby.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.client.pending.drain(..n);
                    self.client.written += n as u64;
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) => {
                    self.unprotect(&format!("writing to the standby failed: {e}"));
                    return;
                }
            }
        }
        if self.client.pending.is_empty()
            && !self.client.shut
            && self.client.fin == Some(self.client.written)
        {
            self.client.shut = true;
            if let Err(e) = standby.shutdown(Shutdown::Write) {
                self.unprotect(&format!(
                    "passing the client's FIN to the standby failed: {e}"
                ));
            }
        }
    }

    /// Reads what the standby produced (without waiting) and compares it.
    fn read_standby(&mut self, buf: &mut [u8]) {
        loop {
            let Some(standby) = self.standby.as_mut() else {
                return;
            };
            if self.compare.standby_eof() || self.compare.backlog() > COMPARISON_LIMIT {
                return;
            }
            match standby.read(buf) {
                Ok(0) => {
                    self.compare.set_standby_eof();
                    self.check();
                    return;
                }
                Ok(n) => {
                    self.compare.push_standby(&buf[..n]);
                    self.check();
                }
                Err(e) if is_would_block(&e) => return,
                Err(e) => {
                    self.unprotect(&format!("reading from the standby failed: {e}"));
                    return;
                }
            }
        }
    }
}

/// Connects a shadow session to the standby daemon: nonblocking, no Nagle delay.
fn connect_standby(standby: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&standby, STANDBY_CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Every shadow session of the backup.
#[derive(Debug)]
pub(crate) struct ShadowSet {
    standby: SocketAddr,
    store: ReplicaStore,
    shadows: HashMap<ConnectionId, Shadow>,
    /// Shadows that received changes since the last pump (their sockets need service even
    /// if not ready yet).
    dirty: HashSet<ConnectionId>,
    buf: Vec<u8>,
}

impl ShadowSet {
    pub(crate) fn new(standby: SocketAddr, store: ReplicaStore) -> ShadowSet {
        ShadowSet {
            standby,
            store,
            shadows: HashMap::new(),
            dirty: HashSet::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// Applies one change of the replica.
    pub(crate) fn on_store_event(&mut self, event: StoreEvent) {
        match &event {
            StoreEvent::Event(e) => self.dirty.insert(e.id),
            StoreEvent::Record(id) => self.dirty.insert(*id),
            StoreEvent::Forgotten(_) => false,
        };
        match event {
            StoreEvent::Event(e) => match &e.kind {
                EventKind::Opened(handshake) => {
                    let same = self
                        .shadows
                        .get(&e.id)
                        .is_some_and(|s| s.handshake == *handshake);
                    if !same {
                        let shadow = Shadow::open(e.id, *handshake, self.standby);
                        self.shadows.insert(e.id, shadow);
                    }
                }
                EventKind::Closed(how) => {
                    if let Some(shadow) = self.shadows.remove(&e.id) {
                        close_shadow(shadow, *how);
                    }
                }
                kind => {
                    if let Some(shadow) = self.shadows.get_mut(&e.id) {
                        shadow.on_event(kind);
                    }
                }
            },
            StoreEvent::Record(id) => self.on_record(id),
            StoreEvent::Forgotten(id) => {
                if self.shadows.remove(&id).is_some() {
                    tracing::debug!(connection = %id, "shadow session ended: connection forgotten");
                }
            }
        }
    }

    /// A whole record replaced the connection (resynchronisation): catch up from the store.
    fn on_record(&mut self, id: ConnectionId) {
        let Some((handshake, closed, client_fin, server_fin)) = self.store.with_replica(|r| {
            r.record(&id).map(|rec| {
                (
                    *rec.handshake(),
                    rec.closed(),
                    rec.stream(Side::Client).fin(),
                    rec.stream(Side::Server).fin(),
                )
            })
        }) else {
            return;
        };
        if let Some(how) = closed {
            if let Some(shadow) = self.shadows.remove(&id) {
                close_shadow(shadow, how);
            }
            return;
        }
        let client = self.store.client_bytes(&id);
        let server = self.store.server_bytes(&id);
        let shadow = match self.shadows.get_mut(&id) {
            Some(s) if s.handshake == handshake => s,
            _ => {
                // A full resynchronisation (a new backup, or one that fell too far behind)
                // brings whole records. The standby can still follow if every client byte
                // is there; server bytes the client already acknowledged are gone, so the
                // standby's output before them is not compared.
                let mut shadow = Shadow::open(id, handshake, self.standby);
                match (&client, &server) {
                    (Some((0, _)), Some((server_from, _))) => {
                        if *server_from > 0 {
                            tracing::info!(
                                connection = %id,
                                unverified = server_from,
                                "shadow session started from a resynchronised record; its first server bytes are not compared"
                            );
                        }
                        shadow.compare = Comparison::starting_at(*server_from);
                    }
                    _ => shadow.unprotect(
                        "the backup learned of the connection after client bytes it needs were released",
                    ),
                }
                self.shadows.entry(id).insert_entry(shadow).into_mut()
            }
        };
        if let Some((from, bytes)) = client {
            shadow.on_event(&EventKind::ClientData {
                offset: from,
                bytes,
            });
        }
        if let Some((from, bytes)) = server {
            shadow.on_event(&EventKind::ServerData {
                offset: from,
                bytes,
            });
        }
        if let Some(offset) = client_fin {
            shadow.client.fin = Some(offset);
        }
        if let Some(offset) = server_fin
            && !shadow.compare.primary_fin()
        {
            shadow.on_event(&EventKind::Fin {
                side: Side::Server,
                offset,
            });
        }
    }

    /// Every shadow session is unprotected (the subscription lost changes).
    pub(crate) fn unprotect_all(&mut self, reason: &str) {
        for shadow in self.shadows.values_mut() {
            shadow.unprotect(reason);
        }
    }

    /// Moves bytes: waits at most `timeout` for a standby socket to be ready, then, for the
    /// shadows whose socket is ready or that received changes, writes client bytes, reads
    /// and compares standby output, and tells the store which client bytes were consumed.
    pub(crate) fn pump(&mut self, timeout: Duration) -> io::Result<()> {
        let mut polls = PollSet::default();
        let mut polled = Vec::new();
        for shadow in self.shadows.values() {
            if let Some(s) = &shadow.standby {
                polls.add(s, true, !shadow.client.pending.is_empty());
                polled.push(shadow.id);
            }
        }
        polls.wait(timeout)?;
        let mut serve = std::mem::take(&mut self.dirty);
        serve.extend(
            polled
                .iter()
                .enumerate()
                .filter(|(i, _)| polls.ready(*i))
                .map(|(_, id)| *id),
        );
        let buf = &mut self.buf;
        for id in serve {
            let Some(shadow) = self.shadows.get_mut(&id) else {
                continue;
            };
            shadow.flush_client();
            shadow.read_standby(buf);
            // Client bytes no longer needed: written to the standby, or the connection is
            // lost anyway (the primary may release its copies).
            if shadow.is_protected() {
                let upto = shadow.client.written;
                if upto > shadow.client.consumed {
                    shadow.client.consumed = upto;
                    self.store.consume_client(&shadow.id, upto);
                }
            } else if shadow.release {
                shadow.release = false;
                self.store.consume_client(&shadow.id, u64::MAX);
            }
        }
        Ok(())
    }

    /// Takes the shadow of a connection (at takeover).
    pub(crate) fn take(&mut self, id: &ConnectionId) -> Option<Shadow> {
        self.shadows.remove(id)
    }

    /// The protection of a connection's shadow session, if it has one.
    pub(crate) fn protection(&self, id: &ConnectionId) -> Option<&Protection> {
        self.shadows.get(id).map(|s| &s.status)
    }

    /// How many shadow sessions exist (protected or not).
    pub(crate) fn len(&self) -> usize {
        self.shadows.len()
    }
}

/// Ends a shadow session whose connection closed: a reset is passed on as a reset.
fn close_shadow(shadow: Shadow, how: CloseHow) {
    if let Some(s) = &shadow.standby
        && matches!(how, CloseHow::Reset(_))
    {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
    tracing::debug!(connection = %shadow.id, ?how, "connection closed; shadow session ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_are_dropped_and_the_first_difference_is_reported() {
        let mut c = Comparison::default();
        c.push_primary(0, b"hello world").unwrap();
        c.push_standby(b"hello");
        assert_eq!(c.settle(), Ok(()));
        assert_eq!((c.primary_end(), c.standby_end(), c.backlog()), (11, 5, 6));
        // Overlapping primary bytes are skipped, a gap is refused.
        c.push_primary(6, b"world!").unwrap();
        assert_eq!(c.push_primary(20, b"x"), Err(12));
        c.push_standby(b" wORld!");
        assert_eq!(c.settle(), Err(7));
    }

    #[test]
    fn after_takeover_standby_bytes_beyond_the_primary_are_forwarded() {
        let mut c = Comparison::default();
        c.push_primary(0, b"abc").unwrap();
        c.push_standby(b"ab");
        c.settle().unwrap();
        assert!(c.take_beyond_primary().is_empty());
        c.push_standby(b"cdef");
        c.settle().unwrap();
        assert_eq!(c.take_beyond_primary(), b"def");
        assert_eq!(c.standby_end(), 6);
        c.set_standby_eof();
        assert_eq!(c.settle(), Ok(()));
    }

    #[test]
    fn bytes_after_the_other_sides_end_are_a_divergence() {
        let mut c = Comparison::default();
        c.push_primary(0, b"ab").unwrap();
        c.set_primary_fin(2).unwrap();
        c.push_standby(b"abc");
        assert_eq!(c.settle(), Err(2));
        let mut c = Comparison::default();
        c.push_primary(0, b"abc").unwrap();
        c.push_standby(b"ab");
        c.set_standby_eof();
        assert_eq!(c.settle(), Err(2));
    }

    #[test]
    fn a_comparison_from_a_record_drops_the_standby_bytes_before_it() {
        let mut c = Comparison::starting_at(4);
        c.push_primary(4, b"efgh").unwrap();
        c.push_standby(b"ab");
        c.push_standby(b"cdef");
        assert_eq!(c.settle(), Ok(()));
        assert_eq!((c.primary_end(), c.standby_end()), (8, 6));
        c.push_standby(b"gX");
        assert_eq!(c.settle(), Err(7));
        let mut c = Comparison::starting_at(4);
        c.push_standby(b"ab");
        c.set_standby_eof();
        assert_eq!(
            c.settle(),
            Err(4),
            "the standby ended before the primary's bytes"
        );
    }

    #[test]
    fn client_bytes_skip_overlap_and_refuse_gaps() {
        let mut f = ClientFeed::default();
        f.push(0, b"abc").unwrap();
        f.push(1, b"bcde").unwrap();
        assert_eq!(f.pending.iter().copied().collect::<Vec<_>>(), b"abcde");
        assert_eq!(f.push(9, b"x"), Err(5));
    }
}
