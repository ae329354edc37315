//! After takeover, sans-IO: the bytes between a restored socket and its shadow session.
//!
//! - client → standby: first the client bytes the shadow had not written yet, then what the
//!   restored socket delivers, skipping the bytes the shadow already had (the restored
//!   receive queue starts at the first byte the shadow did not consume, and the client
//!   retransmits what the primary had not acknowledged).
//! - standby → client: the standby's bytes below the primary's last sent offset are compared
//!   with the primary's (already in the restored send queue) and dropped; the rest goes to
//!   the restored socket. A difference ends the connection ([`SpliceEnd::Diverged`]).
//!
//! [`SpliceState`] keeps the buffers and offsets; the driver reads and writes the two sockets
//! as it asks ([`SpliceState::wants_client_read`], [`SpliceState::to_standby`], ...).

use super::shadow::Comparison;
use std::collections::VecDeque;

/// The most bytes buffered per direction of a spliced connection before reading pauses.
pub const BUFFER_LIMIT: usize = 4 << 20;

/// How a spliced connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions finished.
    Closed,
    /// The standby's output differed from the primary's at this offset after takeover; the
    /// client is sent a reset.
    Diverged(u64),
    /// A socket failed or was reset; the other side is reset too.
    Failed(String),
}

/// Where a splice starts, from the shadow session and the restored snapshot.
#[derive(Debug, Default)]
pub struct SpliceStart {
    /// Client bytes the shadow had not written to the standby yet.
    pub pending_client: VecDeque<u8>,
    /// Bytes at the start of the restored socket's stream the shadow already has.
    pub skip: u64,
    /// The client's FIN is known (after the pending bytes).
    pub client_fin_known: bool,
    /// The standby's write side is already shut.
    pub standby_shut: bool,
    /// The comparison so far.
    pub compare: Comparison,
    /// Client offset of the first byte the restored socket delivers.
    pub client_from: u64,
    /// Server offset of the first byte written to the restored socket (the primary's sent
    /// end: bytes before it are in the restored send queue).
    pub server_from: u64,
}

/// The state of one spliced connection.
#[derive(Debug)]
pub struct SpliceState {
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
    /// Client stream offset after the last byte read from the restored socket.
    read_end: u64,
    /// Server stream offset after the last byte handed to the restored socket.
    sent_end: u64,
}

impl SpliceState {
    /// A splice from `start`. The standby's bytes beyond the primary's are due to the client
    /// at once; a primary that had closed its side leaves nothing more to send.
    pub fn new(start: SpliceStart) -> SpliceState {
        let mut compare = start.compare;
        let to_client = compare.take_beyond_primary().into();
        SpliceState {
            to_standby: start.pending_client,
            skip: start.skip,
            client_fin_known: start.client_fin_known,
            client_eof: false,
            standby_shut: start.standby_shut,
            to_client,
            client_shut: compare.primary_fin(),
            compare,
            read_end: start.client_from,
            sent_end: start.server_from,
        }
    }

    /// Client stream offset after the last byte read from the restored socket.
    pub fn read_end(&self) -> u64 {
        self.read_end
    }

    /// Server stream offset after the last byte handed to the restored socket.
    pub fn sent_end(&self) -> u64 {
        self.sent_end
    }

    /// The restored socket's write side is shut.
    pub fn client_shut(&self) -> bool {
        self.client_shut
    }

    /// Read the restored socket now (not at its end, room in the buffer).
    pub fn wants_client_read(&self) -> bool {
        !self.client_eof && self.to_standby.len() < BUFFER_LIMIT
    }

    /// Bytes the restored socket delivered, in order.
    pub fn on_client_bytes(&mut self, bytes: &[u8]) {
        self.read_end += bytes.len() as u64;
        let skip = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.skip -= skip as u64;
        if self.client_fin_known || self.standby_shut {
            // The client's FIN was already passed on (or is queued after the pending
            // bytes): whatever the restored queue delivers is known.
            return;
        }
        self.to_standby.extend(&bytes[skip..]);
    }

    /// The restored socket reached the client's FIN.
    pub fn on_client_eof(&mut self) {
        self.client_eof = true;
    }

    /// Bytes to write to the standby now.
    pub fn to_standby(&self) -> &[u8] {
        self.to_standby.as_slices().0
    }

    /// `n` bytes of [`to_standby`](Self::to_standby) were written.
    pub fn standby_written(&mut self, n: usize) {
        self.to_standby.drain(..n.min(self.to_standby.len()));
    }

    /// Shut the standby's write side now (every client byte before the FIN was written);
    /// then call [`standby_fin_passed`](Self::standby_fin_passed).
    pub fn standby_fin_due(&self) -> bool {
        (self.client_eof || self.client_fin_known)
            && self.to_standby.is_empty()
            && !self.standby_shut
    }

    /// The standby's write side was shut.
    pub fn standby_fin_passed(&mut self) {
        self.standby_shut = true;
    }

    /// Read the standby now (not at its end, room in the buffer).
    pub fn wants_standby_read(&self) -> bool {
        !self.compare.standby_eof() && self.to_client.len() < BUFFER_LIMIT
    }

    /// Bytes the standby produced, in order: compared while the primary's are ahead, then
    /// due to the client.
    pub fn on_standby_bytes(&mut self, bytes: &[u8]) -> Result<(), SpliceEnd> {
        if self.compare.passed_primary() {
            // The common case after takeover: nothing left to compare.
            self.compare.forwarded(bytes.len());
            self.to_client.extend(bytes);
            return Ok(());
        }
        self.compare.push_standby(bytes);
        self.settle()
    }

    /// The standby closed its side.
    pub fn on_standby_eof(&mut self) -> Result<(), SpliceEnd> {
        self.compare.set_standby_eof();
        self.settle()
    }

    fn settle(&mut self) -> Result<(), SpliceEnd> {
        self.compare.settle().map_err(SpliceEnd::Diverged)?;
        let beyond = self.compare.take_beyond_primary();
        self.to_client.extend(beyond);
        Ok(())
    }

    /// Bytes to write to the restored socket now.
    pub fn to_client(&self) -> &[u8] {
        self.to_client.as_slices().0
    }

    /// `n` bytes of [`to_client`](Self::to_client) were written.
    pub fn client_written(&mut self, n: usize) {
        let n = n.min(self.to_client.len());
        self.to_client.drain(..n);
        self.sent_end += n as u64;
    }

    /// Shut the restored socket's write side now (the standby ended and every byte was
    /// written); then call [`client_fin_passed`](Self::client_fin_passed).
    pub fn client_fin_due(&self) -> bool {
        self.compare.standby_eof() && self.to_client.is_empty() && !self.client_shut
    }

    /// The restored socket's write side was shut.
    pub fn client_fin_passed(&mut self) {
        self.client_shut = true;
    }

    /// Both directions finished.
    pub fn finished(&self) -> bool {
        self.client_eof
            && self.standby_shut
            && self.compare.standby_eof()
            && self.to_client.is_empty()
            && self.client_shut
    }

    /// The restored socket was re-seated at the client's acknowledgement `acked`: `missing`
    /// (the server bytes from `acked` on that the client lacks) go out again, before the rest.
    pub fn reseated(&mut self, missing: Vec<u8>, acked: u64) {
        let mut to_client: VecDeque<u8> = missing.into();
        to_client.append(&mut self.to_client);
        self.to_client = to_client;
        self.sent_end = acked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_to_client(s: &mut SpliceState) -> Vec<u8> {
        let mut out = Vec::new();
        while !s.to_client().is_empty() {
            let n = s.to_client().len();
            out.extend_from_slice(s.to_client());
            s.client_written(n);
        }
        out
    }

    #[test]
    fn the_standbys_bytes_the_primary_sent_are_compared_then_the_rest_forwarded() {
        let mut compare = Comparison::default();
        compare.push_primary(0, b"hello ").unwrap();
        let mut s = SpliceState::new(SpliceStart {
            compare,
            server_from: 6,
            ..SpliceStart::default()
        });
        s.on_standby_bytes(b"hel").unwrap();
        assert_eq!(s.to_client(), b"", "bytes the client has from the primary");
        s.on_standby_bytes(b"lo world").unwrap();
        assert_eq!(drain_to_client(&mut s), b"world");
        assert_eq!(s.sent_end(), 11);
        s.on_standby_bytes(b"!").unwrap();
        assert_eq!(drain_to_client(&mut s), b"!");
    }

    #[test]
    fn a_difference_after_takeover_ends_the_splice_diverged() {
        let mut compare = Comparison::default();
        compare.push_primary(0, b"abc").unwrap();
        let mut s = SpliceState::new(SpliceStart {
            compare,
            ..SpliceStart::default()
        });
        assert_eq!(s.on_standby_bytes(b"abX"), Err(SpliceEnd::Diverged(2)));
    }

    #[test]
    fn restored_bytes_the_shadow_had_are_skipped() {
        let mut s = SpliceState::new(SpliceStart {
            pending_client: b"12".iter().copied().collect(),
            skip: 3,
            client_from: 10,
            ..SpliceStart::default()
        });
        s.on_client_bytes(b"abcdef");
        assert_eq!(s.read_end(), 16);
        assert_eq!(s.to_standby(), b"12def");
        s.standby_written(5);
        assert!(!s.standby_fin_due());
        s.on_client_eof();
        assert!(s.standby_fin_due());
        s.standby_fin_passed();
        assert!(!s.standby_fin_due());
    }

    #[test]
    fn a_known_client_fin_stops_forwarding_what_the_restored_queue_repeats() {
        let mut s = SpliceState::new(SpliceStart {
            pending_client: b"end".iter().copied().collect(),
            client_fin_known: true,
            ..SpliceStart::default()
        });
        s.on_client_bytes(b"end");
        assert_eq!(s.to_standby(), b"end");
        s.standby_written(3);
        assert!(s.standby_fin_due(), "the FIN follows the pending bytes");
    }

    #[test]
    fn the_splice_finishes_once_both_sides_closed() {
        let mut s = SpliceState::new(SpliceStart::default());
        s.on_client_eof();
        s.standby_fin_passed();
        s.on_standby_eof().unwrap();
        assert!(!s.finished());
        assert!(s.client_fin_due());
        s.client_fin_passed();
        assert!(s.finished());
    }

    #[test]
    fn a_primary_that_closed_its_side_leaves_the_restored_socket_shut() {
        let mut compare = Comparison::default();
        compare.push_primary(0, b"x").unwrap();
        compare.set_primary_fin(1).unwrap();
        let s = SpliceState::new(SpliceStart {
            compare,
            ..SpliceStart::default()
        });
        assert!(s.client_shut());
    }

    #[test]
    fn re_seating_sends_the_missing_bytes_first() {
        let mut s = SpliceState::new(SpliceStart {
            server_from: 100,
            ..SpliceStart::default()
        });
        s.on_standby_bytes(b"new").unwrap();
        s.reseated(b"old".to_vec(), 97);
        assert_eq!(drain_to_client(&mut s), b"oldnew");
        assert_eq!(s.sent_end(), 103);
    }
}
