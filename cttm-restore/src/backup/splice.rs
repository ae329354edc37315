//! After takeover: each restored socket spliced to its shadow session, both ways, with large
//! user-space buffers and `poll(2)`. What moves where, and what the clients' segments mean,
//! is decided by `cttm_core::backup::splice` (`SpliceState`) and `cttm_core::backup::watch`
//! (`ClientWatch`, `reseat`); this module owns the sockets.

use super::shadow::READ_CHUNK;
use super::takeover::{epoch_now, restore_options};
use crate::repair::{FrozenConnection, close_in_repair, restore_connection};
pub(crate) use cttm_core::backup::splice::SpliceEnd;
use cttm_core::backup::splice::{SpliceStart, SpliceState};
use cttm_core::backup::watch::{ClientWatch, SpliceEnds, reseat};
use cttm_core::endpoint::ConnectionId;
use cttm_core::seq::SeqNumber;
use cttm_core::time::MonotonicOrigin;
use cttm_core::wire::SegmentRepr;
use std::collections::HashMap;
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

/// One restored connection spliced to its shadow session: the two sockets, and the core's
/// splice state and watch.
#[derive(Debug)]
pub(crate) struct Splice {
    pub(crate) id: ConnectionId,
    client: TcpStream,
    standby: TcpStream,
    state: SpliceState,
    watch: ClientWatch,
    /// Not served yet.
    fresh: bool,
}

impl Splice {
    pub(crate) fn start(
        id: ConnectionId,
        client: TcpStream,
        standby: TcpStream,
        start: SpliceStart,
        watch: ClientWatch,
    ) -> io::Result<Splice> {
        client.set_nonblocking(true)?;
        client.set_nodelay(true)?;
        standby.set_nonblocking(true)?;
        Ok(Splice {
            id,
            client,
            standby,
            state: SpliceState::new(start),
            watch,
            fresh: true,
        })
    }

    fn interest(&self, polls: &mut PollSet) {
        let s = &self.state;
        polls.add(
            &self.client,
            s.wants_client_read(),
            !s.to_client().is_empty(),
        );
        polls.add(
            &self.standby,
            s.wants_standby_read(),
            !s.to_standby().is_empty(),
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
        self.state.finished().then_some(SpliceEnd::Closed)
    }

    fn client_to_standby(&mut self, buf: &mut [u8]) -> Result<(), SpliceEnd> {
        let s = &mut self.state;
        while s.wants_client_read() {
            match self.client.read(buf) {
                Ok(0) => s.on_client_eof(),
                Ok(n) => s.on_client_bytes(&buf[..n]),
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("client socket: {e}"))),
            }
        }
        let side = Direction {
            pending: SpliceState::to_standby,
            written: SpliceState::standby_written,
            fin_due: SpliceState::standby_fin_due,
            fin_passed: SpliceState::standby_fin_passed,
            name: "standby",
        };
        side.write(s, &mut self.standby)
    }

    fn standby_to_client(&mut self, buf: &mut [u8]) -> Result<(), SpliceEnd> {
        let s = &mut self.state;
        while s.wants_standby_read() {
            match self.standby.read(buf) {
                Ok(0) => s.on_standby_eof()?,
                Ok(n) => s.on_standby_bytes(&buf[..n])?,
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("standby socket: {e}"))),
            }
        }
        let side = Direction {
            pending: SpliceState::to_client,
            written: SpliceState::client_written,
            fin_due: SpliceState::client_fin_due,
            fin_passed: SpliceState::client_fin_passed,
            name: "client",
        };
        side.write(s, &mut self.client)
    }

    fn ends(&self) -> SpliceEnds {
        SpliceEnds {
            read_end: self.state.read_end(),
            sent_end: self.state.sent_end(),
        }
    }

    /// Re-creates the restored socket at its client's acknowledgement when the client lacks
    /// server bytes (`cttm_core::backup::watch::reseat` decides), under the network lock.
    /// Returns whether it did.
    fn reseat(&mut self) -> Result<bool, String> {
        let Some(client_acked) = self.watch.client_acked() else {
            return Ok(false);
        };
        if self.state.client_shut() {
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
        let dumped = match frozen.dump_at(epoch_now()) {
            Ok(s) => s,
            Err(e) => return keep(frozen, format!("dump failed: {e}")),
        };
        let plan = match reseat(
            dumped,
            self.watch.server_base(),
            client_acked,
            self.state.sent_end(),
        ) {
            Ok(plan) => plan,
            Err(why) => return keep(frozen, why),
        };
        frozen
            .close()
            .map_err(|e| format!("closing the restored socket: {e}"))?;
        let restored = restore_connection(&plan.snapshot, &restore_options())
            .map_err(|e| format!("restoring again: {e}"))?
            .into_stream();
        restored
            .set_nonblocking(true)
            .and_then(|()| restored.set_nodelay(true))
            .map_err(|e| format!("preparing the restored socket: {e}"))?;
        // The old descriptor refers to a disconnected socket in repair mode: closing it
        // sends nothing.
        self.client = restored;
        let resent = plan.missing.len();
        self.state.reseated(plan.missing, plan.acked);
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

/// The writing half of one direction of a splice: which of the state's bytes go to the
/// socket, and when its write side is shut.
struct Direction {
    pending: fn(&SpliceState) -> &[u8],
    written: fn(&mut SpliceState, usize),
    fin_due: fn(&SpliceState) -> bool,
    fin_passed: fn(&mut SpliceState),
    name: &'static str,
}

impl Direction {
    /// Writes what is pending without waiting, then passes the FIN on when it is due.
    fn write(&self, s: &mut SpliceState, socket: &mut TcpStream) -> Result<(), SpliceEnd> {
        while !(self.pending)(s).is_empty() {
            match socket.write((self.pending)(s)) {
                Ok(0) => break,
                Ok(n) => (self.written)(s, n),
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(SpliceEnd::Failed(format!("{} socket: {e}", self.name))),
            }
        }
        if (self.fin_due)(s) {
            (self.fin_passed)(s);
            socket
                .shutdown(Shutdown::Write)
                .map_err(|e| SpliceEnd::Failed(format!("{} shutdown: {e}", self.name)))?;
        }
        Ok(())
    }
}

/// Every spliced connection.
#[derive(Debug)]
pub(crate) struct SpliceSet {
    splices: HashMap<ConnectionId, Splice>,
    buf: Vec<u8>,
    /// The watch's grace periods run on this clock.
    clock: MonotonicOrigin,
}

impl SpliceSet {
    pub(crate) fn new() -> SpliceSet {
        SpliceSet {
            splices: HashMap::new(),
            buf: vec![0; READ_CHUNK],
            clock: MonotonicOrigin::new(std::time::Instant::now()),
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
        self.splices
            .values()
            .all(|s| s.watch.client_acked().is_some())
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
            let ends = splice.ends();
            splice
                .watch
                .observe(segment, captured, self.clock.at(now), ends);
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
            .filter(|s| s.watch.never_got_syn_ack())
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
    /// because the client is ahead of this host (see `ClientWatch::lost`), with the sequence
    /// number a reset to the client must carry and the reason.
    pub(crate) fn take_lost(&mut self, grace: Duration) -> Vec<(ConnectionId, SeqNumber, String)> {
        let now = self.clock.at(std::time::Instant::now());
        let lost: Vec<_> = self
            .splices
            .values_mut()
            .filter_map(|s| {
                let read_end = s.state.read_end();
                let lost = s.watch.lost(now, grace, read_end);
                lost.map(|(seq, why)| (s.id, seq, why))
            })
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
    use cttm_core::backup::shadow::Comparison;
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

    fn watch() -> ClientWatch {
        ClientWatch::with_bases(
            SeqNumber(1000),
            SeqNumber(5000),
            cttm_core::time::Instant::from_micros(0),
        )
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
            pending_client: b"234".iter().copied().collect(),
            skip: 2,
            compare,
            client_from: 3,
            server_from: 2,
            ..SpliceStart::default()
        };
        let mut set = SpliceSet::new();
        set.add(Splice::start(id(), restored, standby, start, watch()).unwrap());
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
            compare,
            client_from: 3,
            server_from: 2,
            ..SpliceStart::default()
        };
        let mut set = SpliceSet::new();
        set.add(Splice::start(id(), restored, standby, start, watch()).unwrap());
        daemon.write_all(b"help!").unwrap();
        pump_until(&mut set, |ended| ended == [(id(), SpliceEnd::Diverged(3))]);
        let mut buf = [0; 8];
        let e = client.read(&mut buf).expect_err("the client is reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
