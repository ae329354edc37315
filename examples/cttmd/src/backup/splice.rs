//! After takeover: each restored socket spliced to its shadow session, both ways, with large
//! user-space buffers and `poll(2)`.
//!
//! - client → standby: first the client bytes the shadow had not written yet, then what the
//!   restored socket delivers, skipping the bytes the shadow already had (the restored
//!   receive queue starts at the first byte the shadow did not consume, and the client
//!   retransmits what the primary had not acknowledged).
//! - standby → client: the standby's bytes below the primary's last sent offset are compared
//!   with the primary's (already in the restored send queue) and dropped; the rest is written
//!   to the restored socket.

use super::shadow::{Comparison, READ_CHUNK};
use super::takeover::{epoch_now, restore_options};
use cttm_core::endpoint::ConnectionId;
use cttm_core::seq::SeqNumber;
use cttm_core::snapshot::TcpState;
use cttm_core::wire::SegmentRepr;
use cttm_restore::repair::{FrozenConnection, close_in_repair, restore_connection};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `TCP_REPAIR` values (kernel `include/uapi/linux/tcp.h`; not in the `libc` crate).
const TCP_REPAIR_ON: libc::c_int = 1;
/// Leaves repair mode and sends a window probe (`tcp_send_window_probe`).
const TCP_REPAIR_OFF: libc::c_int = 0;

/// Makes the peer of an established socket answer at once: repair mode on and off again,
/// which sends a window probe (a segment one byte before `SND.UNA`, net/ipv4/tcp.c), that
/// the peer acknowledges with its current `SND.NXT` and `RCV.NXT`. Needs `CAP_NET_ADMIN`.
fn send_window_probe(socket: &TcpStream) -> io::Result<()> {
    for value in [TCP_REPAIR_ON, TCP_REPAIR_OFF] {
        // SAFETY: `value` is a live `c_int` whose size is passed as the option length, and
        // the descriptor is an open TCP socket borrowed for the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_TCP,
                libc::TCP_REPAIR,
                std::ptr::from_ref(&value).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
                    .unwrap_or(libc::socklen_t::MAX),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The most bytes buffered per direction of a spliced connection before reading pauses.
const BUFFER_LIMIT: usize = 4 << 20;

/// True for the error of a nonblocking call that would have waited.
pub(crate) fn is_would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Sockets to wait on with `poll(2)`.
#[derive(Debug, Default)]
pub(crate) struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// Waits for `socket` to be readable (`read`) and/or writable (`write`).
    pub(crate) fn add(&mut self, socket: &TcpStream, read: bool, write: bool) {
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        self.fds.push(libc::pollfd {
            fd: socket.as_raw_fd(),
            events,
            revents: 0,
        });
    }

    /// True when the `index`-th socket added was reported ready (or failed) by the last
    /// [`wait`](Self::wait).
    pub(crate) fn ready(&self, index: usize) -> bool {
        self.fds.get(index).is_some_and(|p| p.revents != 0)
    }

    /// Waits until one socket is ready or `timeout` passed (sleeps when there is none).
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let nfds = libc::nfds_t::try_from(self.fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` is an exclusively borrowed, initialised slice of `pollfd` that lives
        // through the call, and `nfds` is its length; the file descriptors are open sockets
        // borrowed from the caller.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), nfds, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// How a spliced connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpliceEnd {
    /// Both directions finished.
    Closed,
    /// The standby's output differed from the primary's at this offset after takeover; the
    /// client was sent a reset.
    Diverged(u64),
    /// A socket failed or was reset; the other side was reset too.
    Failed(String),
}

/// One restored connection spliced to its shadow session.
#[derive(Debug)]
pub(crate) struct Splice {
    pub(crate) id: ConnectionId,
    client: TcpStream,
    standby: TcpStream,
    /// Client bytes waiting to be written to the standby.
    to_standby: VecDeque<u8>,
    /// Restored-socket bytes still to skip (the shadow already had them).
    skip: u64,
    /// The client's FIN is known and lies right after the bytes in `to_standby`.
    client_fin_known: bool,
    client_eof: bool,
    standby_shut: bool,
    /// Standby bytes waiting to be written to the client.
    to_client: VecDeque<u8>,
    compare: Comparison,
    client_shut: bool,
    /// Not served yet.
    fresh: bool,
    /// The client stream's first sequence number (client ISN + 1).
    client_base: SeqNumber,
    /// The server stream's first sequence number (server ISN + 1).
    server_base: SeqNumber,
    /// Client stream offset after the last byte read from the restored socket.
    read_end: u64,
    /// Server stream offset after the last byte handed to the restored socket.
    sent_end: u64,
    /// The client showed it is ahead of what this host holds, since when.
    ahead: Option<ClientAhead>,
    /// The client's latest acknowledgement seen since the restore (server stream offset),
    /// with the window it advertised then (unscaled, as on the wire).
    client_acked: Option<(u64, u16)>,
    /// When the restore began (capture clock: microseconds since the Unix epoch).
    restored_at: cttm_core::time::Instant,
    /// The client sent its SYN again after the restore: it never got the SYN-ACK.
    client_in_syn_sent: bool,
}

/// Evidence that the client is ahead of the restored socket: it acknowledged server bytes
/// this host never sent, or sent client bytes beyond a hole this host cannot fill.
#[derive(Clone, Copy, Debug)]
struct ClientAhead {
    /// First seen.
    since: std::time::Instant,
    /// Client offset the restored socket must read up to for the evidence to go away.
    client: u64,
    /// Server offset the restored socket must send up to.
    server: u64,
    /// The client's latest acknowledgement number: its `RCV.NXT`, the sequence number a
    /// reset must carry to be accepted (RFC 5961 §3.2).
    rcv_nxt: SeqNumber,
    /// The client acknowledged server bytes up to this offset while this host had sent
    /// only up to the second one: proof that it got bytes this host never held.
    acked_unsent: Option<(u64, u64)>,
}

/// Where a splice starts, from the shadow session and the restored snapshot.
#[derive(Debug)]
pub(crate) struct SpliceStart {
    /// The restored socket (connected, out of repair mode).
    pub(crate) client: TcpStream,
    /// The shadow session's connection to the standby.
    pub(crate) standby: TcpStream,
    /// Client bytes the shadow had not written to the standby yet.
    pub(crate) pending_client: VecDeque<u8>,
    /// Bytes at the start of the restored socket's stream the shadow already has.
    pub(crate) skip: u64,
    /// The client's FIN is known (after the pending bytes).
    pub(crate) client_fin_known: bool,
    /// The standby's write side is already shut.
    pub(crate) standby_shut: bool,
    /// The comparison so far.
    pub(crate) compare: Comparison,
    /// The client stream's first sequence number (client ISN + 1).
    pub(crate) client_base: SeqNumber,
    /// The server stream's first sequence number (server ISN + 1).
    pub(crate) server_base: SeqNumber,
    /// Client offset of the first byte the restored socket delivers.
    pub(crate) client_from: u64,
    /// Server offset of the first byte written to the restored socket (the primary's sent
    /// end: bytes before it are in the restored send queue).
    pub(crate) server_from: u64,
    /// When the restore began (capture clock: microseconds since the Unix epoch).
    pub(crate) restored_at: cttm_core::time::Instant,
}

impl Splice {
    pub(crate) fn start(id: ConnectionId, start: SpliceStart) -> io::Result<Splice> {
        start.client.set_nonblocking(true)?;
        start.client.set_nodelay(true)?;
        start.standby.set_nonblocking(true)?;
        let client_shut = start.compare.primary_fin();
        let mut splice = Splice {
            id,
            client: start.client,
            standby: start.standby,
            to_standby: start.pending_client,
            skip: start.skip,
            client_fin_known: start.client_fin_known,
            client_eof: false,
            standby_shut: start.standby_shut,
            to_client: VecDeque::new(),
            compare: start.compare,
            client_shut,
            fresh: true,
            client_base: start.client_base,
            server_base: start.server_base,
            read_end: start.client_from,
            sent_end: start.server_from,
            ahead: None,
            client_acked: None,
            restored_at: start.restored_at,
            client_in_syn_sent: false,
        };
        splice
            .to_client
            .extend(splice.compare.take_beyond_primary());
        Ok(splice)
    }

    fn interest(&self, polls: &mut PollSet) {
        polls.add(
            &self.client,
            !self.client_eof && self.to_standby.len() < BUFFER_LIMIT,
            !self.to_client.is_empty(),
        );
        polls.add(
            &self.standby,
            !self.compare.standby_eof() && self.to_client.len() < BUFFER_LIMIT,
            !self.to_standby.is_empty(),
        );
    }

    /// Moves what can move without waiting. `Some` when the connection is over.
    fn step(&mut self, buf: &mut [u8]) -> Option<SpliceEnd> {
        if let Err(e) = self.client_to_standby(buf) {
            return Some(e);
        }
        if let Err(e) = self.standby_to_client(buf) {
            return Some(e);
        }
        let done = self.client_eof
            && self.standby_shut
            && self.compare.standby_eof()
            && self.to_client.is_empty()
            && self.client_shut;
        done.then_some(SpliceEnd::Closed)
    }

    fn client_to_standby(&mut self, buf: &mut [u8]) -> Result<(), SpliceEnd> {
        while !self.client_eof && self.to_standby.len() < BUFFER_LIMIT {
            match self.client.read(buf) {
                Ok(0) => self.client_eof = true,
                Ok(n) => {
                    self.read_end += n as u64;
                    let skip = usize::try_from(self.skip).unwrap_or(usize::MAX).min(n);
                    self.skip -= skip as u64;
                    if self.client_fin_known || self.standby_shut {
                        // The client's FIN was already passed on (or is queued after the
                        // pending bytes): whatever the restored queue delivers is known.
                        continue;
                    }
                    self.to_standby.extend(&buf[skip..n]);
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("client socket: {e}"))),
            }
        }
        while !self.to_standby.is_empty() {
            let (front, _) = self.to_standby.as_slices();
            match self.standby.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_standby.drain(..n);
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("standby socket: {e}"))),
            }
        }
        let fin_due = self.client_eof || self.client_fin_known;
        if fin_due && self.to_standby.is_empty() && !self.standby_shut {
            self.standby_shut = true;
            self.standby
                .shutdown(Shutdown::Write)
                .map_err(|e| SpliceEnd::Failed(format!("standby shutdown: {e}")))?;
        }
        Ok(())
    }

    fn standby_to_client(&mut self, buf: &mut [u8]) -> Result<(), SpliceEnd> {
        while !self.compare.standby_eof() && self.to_client.len() < BUFFER_LIMIT {
            match self.standby.read(buf) {
                Ok(0) => self.compare.set_standby_eof(),
                Ok(n) if self.compare.passed_primary() => {
                    // The common case after takeover: nothing left to compare.
                    self.compare.forwarded(n);
                    self.to_client.extend(&buf[..n]);
                    continue;
                }
                Ok(n) => self.compare.push_standby(&buf[..n]),
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("standby socket: {e}"))),
            }
            self.compare.settle().map_err(SpliceEnd::Diverged)?;
            let beyond = self.compare.take_beyond_primary();
            self.to_client.extend(beyond);
        }
        while !self.to_client.is_empty() {
            let (front, _) = self.to_client.as_slices();
            match self.client.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_client.drain(..n);
                    self.sent_end += n as u64;
                }
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("client socket: {e}"))),
            }
        }
        if self.compare.standby_eof() && self.to_client.is_empty() && !self.client_shut {
            self.client_shut = true;
            self.client
                .shutdown(Shutdown::Write)
                .map_err(|e| SpliceEnd::Failed(format!("client shutdown: {e}")))?;
        }
        Ok(())
    }

    /// Takes note of a segment the client sent (seen by the capture after takeover).
    fn observe(
        &mut self,
        segment: &SegmentRepr<'_>,
        captured: cttm_core::time::Instant,
        now: std::time::Instant,
    ) {
        if segment.flags.syn() && !segment.flags.ack() {
            // The client's own SYN (its ISN is one before the client stream's base), sent
            // after the restore: it is still in SYN-SENT. Sync mode held the SYN-ACK until
            // the backup held the handshake, and the primary died before releasing it. A
            // client in SYN-SENT drops every segment without SYN (RFC 9293 §3.10.7.3), so the
            // restored socket (established) can never reach it: see `take_unborn`.
            if captured >= self.restored_at && segment.seq.add(1) == self.client_base {
                self.client_in_syn_sent = true;
            }
            return;
        }
        if segment.flags.rst() || !segment.flags.ack() {
            return;
        }
        let seq = segment.seq.unwrap_near(self.client_base, self.read_end);
        let ack = segment.ack.unwrap_near(self.server_base, self.sent_end);
        let (Some(seq), Some(ack)) = (seq, ack) else {
            return;
        };
        // Only a segment sent after the restore shows where the client stands now (one
        // captured before may be read later: the capture ring hands frames out in blocks).
        if captured >= self.restored_at && self.client_acked.is_none_or(|(a, _)| ack >= a) {
            self.client_acked = Some((ack, segment.window));
        }
        // A FIN occupies one sequence number after the data (tolerated on both streams).
        let client_ahead = seq > self.read_end + 1;
        let server_ahead = ack > self.sent_end + 1;
        if let Some(a) = &mut self.ahead {
            a.rcv_nxt = segment.ack;
        }
        if !client_ahead && !server_ahead {
            return;
        }
        let a = self.ahead.get_or_insert(ClientAhead {
            since: now,
            client: 0,
            server: 0,
            rcv_nxt: segment.ack,
            acked_unsent: None,
        });
        if client_ahead {
            a.client = a.client.max(seq);
        }
        if server_ahead {
            a.server = a.server.max(ack);
            // The primary sent these bytes and the client got them, but the backup never
            // did (async mode). The restored socket drops every segment acknowledging data
            // beyond its `SND.NXT` (net/ipv4/tcp_input.c, tcp_ack: "ack of unsent data"),
            // so the client's acknowledgements never move it again: the connection cannot
            // continue, whatever the standby produces later.
            a.acked_unsent.get_or_insert((ack, self.sent_end));
        }
    }

    /// The client's `RCV.NXT` and the reason, when the connection cannot continue: at once
    /// when the client acknowledged server bytes this host never held; when the client's
    /// bytes have been ahead of this host for `grace` without the splice catching up (the
    /// backup lacks client bytes the primary acknowledged: they will never come; a shorter
    /// lead is only bytes in flight, which the client retransmits).
    fn lost(&mut self, now: std::time::Instant, grace: Duration) -> Option<(SeqNumber, String)> {
        let a = self.ahead?;
        if let Some((acked, sent)) = a.acked_unsent {
            return Some((
                a.rcv_nxt,
                format!(
                    "the client acknowledged server bytes up to offset {} but the backup holds them only up to {sent}: the primary's bytes in between never reached the backup (async or degraded mode)",
                    acked.saturating_sub(1)
                ),
            ));
        }
        if self.read_end + 1 >= a.client {
            self.ahead = None;
            return None;
        }
        (now.saturating_duration_since(a.since) >= grace).then(|| {
            (
                a.rcv_nxt,
                format!(
                    "the client sent bytes up to offset {} but the backup stayed at {} for {} ms: client bytes the primary acknowledged never reached the backup (async or degraded mode)",
                    a.client.saturating_sub(1),
                    self.read_end,
                    grace.as_millis()
                ),
            )
        })
    }

    /// Re-creates the restored socket so that the server bytes the client lacks go out as new
    /// data, under the network lock (no client segment is delivered meanwhile). Returns
    /// whether it did.
    ///
    /// A socket restored with sent-but-unacknowledged bytes (the primary's segments still
    /// held by output commit, or lost with its link) has no RTT sample: the kernel probes
    /// the tail after `TCP_TIMEOUT_INIT` (1 s) and retransmits after a 3 s timeout
    /// (net/ipv4/tcp_timer.c, RFC 6298 §2.1), and as every queued segment counts in flight
    /// no new byte goes out meanwhile: the client stalls for seconds. Once the client's answer
    /// to the restore's window probe shows its `RCV.NXT` (its acknowledgement), every byte
    /// from there on is known to be missing on its side: the socket is dumped and closed in
    /// repair mode (silently), restored with `SND.UNA = SND.NXT` = that acknowledgement, and
    /// the bytes go back to the splice, which sends them as new data once the lock is
    /// released (immediate transmission, normal ACK clocking).
    fn reseat(&mut self) -> Result<bool, String> {
        let Some((acked, window)) = self.client_acked else {
            return Ok(false);
        };
        if self.client_shut {
            return Ok(false);
        }
        let handle = self
            .client
            .try_clone()
            .map_err(|e| format!("duplicating the restored socket: {e}"))?;
        let frozen = FrozenConnection::freeze(handle)
            .map_err(|e| format!("freezing the restored socket: {e}"))?;
        let keep = |frozen: FrozenConnection, why: String| -> Result<bool, String> {
            tracing::debug!(connection = %self.id, why, "restored socket kept as it is");
            frozen
                .thaw()
                .map(|_| false)
                .map_err(|e| format!("thawing the restored socket: {e}"))
        };
        let mut snapshot = match frozen.dump_at(epoch_now()) {
            Ok(s) => s,
            Err(e) => return keep(frozen, format!("dump failed: {e}")),
        };
        let Some(una) = snapshot.send.una.unwrap_near(self.server_base, acked) else {
            return keep(frozen, "send sequence out of reach".into());
        };
        let end = una + snapshot.send.bytes.len() as u64;
        if snapshot.state != TcpState::Established
            || snapshot.send.fin
            || snapshot.send.sent_unacked().is_empty()
            || acked < una
            || acked > end
            || end != self.sent_end
        {
            return keep(
                frozen,
                format!(
                    "nothing to re-send (state {:?}, client at {acked}, queue {una}..{end}, sent {})",
                    snapshot.state, self.sent_end
                ),
            );
        }
        let skip = usize::try_from(acked - una).unwrap_or(usize::MAX);
        let missing: VecDeque<u8> = snapshot.send.bytes.drain(..).skip(skip).collect();
        snapshot.send.una = SeqNumber::from_offset(self.server_base, acked);
        snapshot.send.unsent = 0;
        // The window the client offers from its acknowledgement on (RFC 7323 §2.3 scaling):
        // the dumped one was offered from the old `SND.UNA`, and keeping it would move the
        // right edge past what the client accepts.
        let shift = snapshot.options.window_scale.map_or(0, |w| w.send.min(14));
        snapshot.window.snd_wnd = u32::from(window) << shift;
        snapshot.window.max_window = snapshot.window.max_window.max(snapshot.window.snd_wnd);
        frozen
            .close()
            .map_err(|e| format!("closing the restored socket: {e}"))?;
        let restored = restore_connection(&snapshot, &restore_options())
            .map_err(|e| format!("restoring again: {e}"))?
            .into_stream();
        restored
            .set_nonblocking(true)
            .and_then(|()| restored.set_nodelay(true))
            .map_err(|e| format!("preparing the restored socket: {e}"))?;
        // The old descriptor refers to a disconnected socket in repair mode: closing it
        // sends nothing.
        self.client = restored;
        let resent = missing.len();
        let mut to_client = missing;
        to_client.append(&mut self.to_client);
        self.to_client = to_client;
        self.sent_end = acked;
        self.fresh = true;
        tracing::debug!(
            connection = %self.id,
            resent,
            "restored socket re-seated at the client's acknowledgement"
        );
        Ok(true)
    }

    /// Ends the connection abruptly: both sockets closed with a reset (`SO_LINGER` 0).
    fn abort(self) {
        for s in [&self.client, &self.standby] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Every spliced connection.
#[derive(Debug)]
pub(crate) struct SpliceSet {
    splices: HashMap<ConnectionId, Splice>,
    buf: Vec<u8>,
}

impl SpliceSet {
    pub(crate) fn new() -> SpliceSet {
        SpliceSet {
            splices: HashMap::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    pub(crate) fn add(&mut self, splice: Splice) {
        self.splices.insert(splice.id, splice);
    }

    /// Connections still spliced.
    pub(crate) fn len(&self) -> usize {
        self.splices.len()
    }

    /// Waits at most `timeout` for a socket to be ready, moves bytes, and returns the
    /// connections that ended.
    pub(crate) fn pump(&mut self, timeout: Duration) -> io::Result<Vec<(ConnectionId, SpliceEnd)>> {
        let mut polls = PollSet::default();
        let mut order = Vec::with_capacity(self.splices.len());
        for s in self.splices.values() {
            s.interest(&mut polls);
            order.push(s.id);
        }
        polls.wait(timeout)?;
        let mut ended = Vec::new();
        // Each splice added two sockets, in order; a new splice is served once at least
        // (its buffers may hold bytes from the shadow session).
        for (i, id) in order.into_iter().enumerate() {
            let Some(splice) = self.splices.get_mut(&id) else {
                continue;
            };
            let ready = polls.ready(2 * i) || polls.ready(2 * i + 1);
            if !ready && !splice.fresh {
                continue;
            }
            splice.fresh = false;
            if let Some(end) = splice.step(&mut self.buf) {
                if let Some(splice) = self.splices.remove(&id)
                    && end != SpliceEnd::Closed
                {
                    splice.abort();
                }
                ended.push((id, end));
            }
        }
        Ok(ended)
    }

    /// Makes every client answer at once (a window probe on each restored socket): after the
    /// announcement its answer reaches this host and shows where it stands.
    pub(crate) fn probe_all(&self) {
        for s in self.splices.values() {
            if let Err(e) = send_window_probe(&s.client) {
                tracing::debug!(connection = %s.id, error = %e, "window probe failed");
            }
        }
    }

    /// True when every spliced client's acknowledgement has been seen since its restore.
    pub(crate) fn all_acks_seen(&self) -> bool {
        self.splices.values().all(|s| s.client_acked.is_some())
    }

    /// [`Splice::reseat`] for every connection (call it under the network lock, before any
    /// byte is moved). Returns the connections lost on the way (removed, standby reset),
    /// with the reason, and how many were re-seated.
    pub(crate) fn reseat_all(&mut self) -> (Vec<(ConnectionId, String)>, usize) {
        let mut lost = Vec::new();
        let mut reseated = 0;
        for splice in self.splices.values_mut() {
            match splice.reseat() {
                Ok(true) => reseated += 1,
                Ok(false) => {}
                Err(reason) => lost.push((splice.id, reason)),
            }
        }
        for (id, _) in &lost {
            if let Some(splice) = self.splices.remove(id) {
                splice.abort();
            }
        }
        (lost, reseated)
    }

    /// Takes note of a segment seen by the capture after takeover (only segments from a
    /// spliced connection's client count).
    pub(crate) fn observe(
        &mut self,
        segment: &SegmentRepr<'_>,
        captured: cttm_core::time::Instant,
        now: std::time::Instant,
    ) {
        let id = ConnectionId {
            client: segment.src,
            server: segment.dst,
        };
        if let Some(splice) = self.splices.get_mut(&id) {
            splice.observe(segment, captured, now);
        }
    }

    /// Removes the connections whose client turned out never to have received the SYN-ACK
    /// (it sent its SYN again after the restore). Each restored socket is closed silently
    /// in repair mode (no FIN, no RST) and its shadow session closed: the client's next
    /// SYN retransmission (RFC 6298 §5: after its retransmission timeout) then reaches the
    /// standby daemon's listener and opens the connection afresh there. No byte was ever
    /// exchanged on it (a client in SYN-SENT has sent no data), so nothing is lost.
    pub(crate) fn take_unborn(&mut self) -> Vec<ConnectionId> {
        let unborn: Vec<ConnectionId> = self
            .splices
            .values()
            .filter(|s| s.client_in_syn_sent)
            .map(|s| s.id)
            .collect();
        for id in &unborn {
            if let Some(splice) = self.splices.remove(id) {
                if let Err(e) = close_in_repair(splice.client) {
                    tracing::warn!(connection = %id, error = %e, "closing the restored socket silently failed");
                }
                drop(splice.standby);
            }
        }
        unborn
    }

    /// Removes (closing both sockets with a reset) the connections that cannot continue
    /// because the client is ahead of this host (see [`Splice::lost`]), with the sequence
    /// number a reset to the client must carry and the reason.
    pub(crate) fn take_lost(&mut self, grace: Duration) -> Vec<(ConnectionId, SeqNumber, String)> {
        let now = std::time::Instant::now();
        let lost: Vec<_> = self
            .splices
            .values_mut()
            .filter_map(|s| s.lost(now, grace).map(|(seq, why)| (s.id, seq, why)))
            .collect();
        for (id, _, _) in &lost {
            if let Some(splice) = self.splices.remove(id) {
                splice.abort();
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected pair on loopback: (our end, the peer's end).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (ours, peer)
    }

    /// Pumps until `peer` can read `n` bytes (bounded), then reads them.
    fn pump_and_read(set: &mut SpliceSet, peer: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        peer.set_nonblocking(true).unwrap();
        for _ in 0..500 {
            set.pump(Duration::from_millis(5)).unwrap();
            if peer.peek(&mut v).is_ok_and(|k| k >= n) {
                break;
            }
        }
        peer.set_nonblocking(false).unwrap();
        peer.read_exact(&mut v).unwrap();
        v
    }

    /// Pumps until `done` or a bounded number of rounds.
    fn pump_until(set: &mut SpliceSet, mut done: impl FnMut(&[(ConnectionId, SpliceEnd)]) -> bool) {
        for _ in 0..200 {
            let ended = set.pump(Duration::from_millis(10)).unwrap();
            if done(&ended) {
                return;
            }
        }
        panic!("the splice did not get there");
    }

    fn id() -> ConnectionId {
        ConnectionId {
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.0.10:7000".parse().unwrap(),
        }
    }

    #[test]
    fn skips_what_the_shadow_had_and_compares_before_forwarding() {
        let (restored, mut client) = pair();
        let (standby, mut daemon) = pair();
        // The shadow wrote client bytes 0..2 and holds 2..5; the restored queue starts at 3.
        // The primary sent "xy" that the standby has not produced yet.
        let mut compare = Comparison::default();
        compare.push_primary(0, b"xy").unwrap();
        let start = SpliceStart {
            client: restored,
            standby,
            pending_client: b"234".iter().copied().collect(),
            skip: 2,
            client_fin_known: false,
            standby_shut: false,
            compare,
            client_base: SeqNumber(1000),
            server_base: SeqNumber(5000),
            client_from: 3,
            server_from: 2,
            restored_at: cttm_core::time::Instant::from_micros(0),
        };
        let mut set = SpliceSet::new();
        set.add(Splice::start(id(), start).unwrap());
        client.write_all(b"34567").unwrap();
        daemon.write_all(b"xyZZ").unwrap();
        assert_eq!(pump_and_read(&mut set, &mut daemon, 6), b"234567");
        // Only the bytes beyond the primary's reach the client ("xy" is already in the
        // restored send queue).
        assert_eq!(pump_and_read(&mut set, &mut client, 2), b"ZZ");
        // Both close: the splice ends cleanly.
        client.shutdown(Shutdown::Write).unwrap();
        daemon.write_all(b"bye").unwrap();
        daemon.shutdown(Shutdown::Write).unwrap();
        pump_until(&mut set, |ended| ended == [(id(), SpliceEnd::Closed)]);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_difference_after_takeover_resets_the_client() {
        let (restored, mut client) = pair();
        let (standby, mut daemon) = pair();
        let mut compare = Comparison::default();
        compare.push_primary(0, b"hello").unwrap();
        let start = SpliceStart {
            client: restored,
            standby,
            pending_client: VecDeque::new(),
            skip: 0,
            client_fin_known: false,
            standby_shut: false,
            compare,
            client_base: SeqNumber(1000),
            server_base: SeqNumber(5000),
            client_from: 3,
            server_from: 2,
            restored_at: cttm_core::time::Instant::from_micros(0),
        };
        let mut set = SpliceSet::new();
        set.add(Splice::start(id(), start).unwrap());
        daemon.write_all(b"help!").unwrap();
        pump_until(&mut set, |ended| ended == [(id(), SpliceEnd::Diverged(3))]);
        let mut buf = [0; 8];
        let e = client.read(&mut buf).expect_err("the client is reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
