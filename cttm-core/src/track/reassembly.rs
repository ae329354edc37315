//! Reassembly of one direction's byte stream from segments that arrive retransmitted,
//! overlapping, out of order or duplicated. Out-of-order data is buffered up to a limit.

use std::collections::BTreeMap;

/// One direction's reassembly buffer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Reassembler {
    /// Next offset to deliver.
    next: u64,
    /// Out-of-order pieces by offset; they never overlap each other and all start after `next`.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    /// Bytes discarded because the buffer was full.
    dropped: u64,
    /// A FIN seen at this offset, not yet reached.
    fin: Option<u64>,
}

/// What inserting a piece produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Contiguous bytes from the previous `next`, if any.
    pub(crate) bytes: Vec<u8>,
    /// Offset of `bytes[0]`.
    pub(crate) offset: u64,
    /// The FIN was reached: its offset.
    pub(crate) fin: Option<u64>,
}

impl Reassembler {
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// End of the highest out-of-order piece buffered (what the highest SACK block of the
    /// receiver ends at), if any.
    pub(crate) fn pending_end(&self) -> Option<u64> {
        self.pending
            .last_key_value()
            .map(|(o, p)| o + p.len() as u64)
    }

    /// End of the known sequence space (delivered bytes plus a delivered FIN).
    pub(crate) fn fin(&self) -> Option<u64> {
        self.fin
    }

    /// Inserts `bytes` at `offset` (and a FIN after them if `fin`), delivering what became
    /// contiguous. `limit` bounds the out-of-order bytes buffered.
    pub(crate) fn insert(
        &mut self,
        offset: u64,
        bytes: &[u8],
        fin: bool,
        limit: usize,
    ) -> Delivered {
        let end = offset + bytes.len() as u64;
        if fin && self.fin.is_none() {
            self.fin = Some(end);
        }
        // Data beyond a known FIN is invalid (RFC 9293 §3.10.7.4 discards it).
        let end = self.fin.map_or(end, |f| end.min(f));
        let mut out = Delivered {
            offset: self.next,
            ..Delivered::default()
        };
        let start = offset.max(self.next);
        // `end` can fall before `offset` when the piece lies wholly beyond a known FIN.
        if end > start {
            let piece = &bytes[(start - offset) as usize..(end - offset) as usize];
            if start == self.next {
                out.bytes.extend_from_slice(piece);
                self.next = end;
                self.drain_pending(&mut out.bytes);
            } else {
                self.buffer(start, piece, limit);
            }
        }
        if self.fin == Some(self.next) {
            out.fin = self.fin;
        }
        out
    }

    /// Buffers an out-of-order piece, trimming what is already buffered.
    fn buffer(&mut self, start: u64, piece: &[u8], limit: usize) {
        let mut cursor = start;
        let end = start + piece.len() as u64;
        let mut gaps: Vec<(u64, u64)> = Vec::new();
        for (&o, p) in self.pending.range(..end) {
            let pend = o + p.len() as u64;
            if pend <= cursor {
                continue;
            }
            if o > cursor {
                gaps.push((cursor, o.min(end)));
            }
            cursor = cursor.max(pend);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        for (g0, g1) in gaps {
            let len = (g1 - g0) as usize;
            if self.pending_bytes + len > limit {
                self.dropped += len as u64;
                continue;
            }
            self.pending_bytes += len;
            let slice = &piece[(g0 - start) as usize..(g1 - start) as usize];
            self.pending.insert(g0, slice.to_vec());
        }
    }

    /// Moves buffered pieces that became contiguous into `out`.
    fn drain_pending(&mut self, out: &mut Vec<u8>) {
        // Pieces buffered before the FIN was known may extend past it: clip them there.
        let stream_end = self.fin.unwrap_or(u64::MAX);
        while let Some(entry) = self.pending.first_entry() {
            let o = *entry.key();
            if o > self.next {
                break;
            }
            let piece = entry.remove();
            self.pending_bytes -= piece.len();
            let pend = (o + piece.len() as u64).min(stream_end);
            if pend > self.next {
                out.extend_from_slice(&piece[(self.next - o) as usize..(pend - o) as usize]);
                self.next = pend;
            }
        }
        if let Some(f) = self.fin {
            self.next = self.next.min(f);
        }
    }

    /// The peer acknowledged up to `offset`, past what was delivered: the bytes in between were
    /// never captured. Continues at `offset`, delivering buffered bytes that follow.
    pub(crate) fn skip_to(&mut self, offset: u64) -> Delivered {
        let target = self.fin.map_or(offset, |f| offset.min(f));
        let mut out = Delivered::default();
        if target > self.next {
            self.next = target;
            // Pieces now partly or wholly below `next` are trimmed by drain_pending.
            self.drain_pending(&mut out.bytes);
        }
        out.offset = target;
        if self.fin == Some(self.next) {
            out.fin = self.fin;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_and_overlap_reassemble_exactly() {
        let mut r = Reassembler::default();
        assert!(r.insert(5, b"fghij", false, 100).bytes.is_empty());
        assert!(r.insert(3, b"defg", false, 100).bytes.is_empty());
        let d = r.insert(0, b"abcd", false, 100);
        assert_eq!(d.offset, 0);
        assert_eq!(d.bytes, b"abcdefghij");
        // a retransmission of old bytes delivers nothing
        assert!(r.insert(2, b"cdefgh", false, 100).bytes.is_empty());
        assert_eq!(r.next(), 10);
    }

    #[test]
    fn buffer_limit_drops_and_counts() {
        let mut r = Reassembler::default();
        r.insert(10, &[1; 8], false, 10);
        r.insert(30, &[2; 8], false, 10);
        assert_eq!(r.dropped(), 8);
        let d = r.insert(0, &[0; 10], false, 10);
        assert_eq!(d.bytes.len(), 18);
    }

    #[test]
    fn fin_is_delivered_after_the_last_byte() {
        let mut r = Reassembler::default();
        let d = r.insert(3, b"de", true, 100);
        assert_eq!(d.fin, None);
        let d = r.insert(0, b"abc", false, 100);
        assert_eq!(d.bytes, b"abcde");
        assert_eq!(d.fin, Some(5));
    }

    #[test]
    fn data_wholly_beyond_a_known_fin_is_discarded() {
        let mut r = Reassembler::default();
        r.insert(0, b"a", true, 100);
        let d = r.insert(2, b"zz", false, 100);
        assert!(d.bytes.is_empty());
        assert_eq!(d.fin, Some(1));
        assert_eq!(r.next(), 1);
    }

    #[test]
    fn pieces_buffered_before_the_fin_are_clipped_at_it() {
        let mut r = Reassembler::default();
        r.insert(5, b"beyond", false, 100);
        r.insert(2, b"cde", true, 100);
        let d = r.insert(0, b"ab", false, 100);
        assert_eq!(d.bytes, b"abcde");
        assert_eq!(d.fin, Some(5));
        assert_eq!(r.next(), 5);
    }

    #[test]
    fn skip_over_a_capture_hole_delivers_what_follows() {
        let mut r = Reassembler::default();
        r.insert(0, b"ab", false, 100);
        r.insert(6, b"ghi", false, 100);
        let d = r.skip_to(7);
        assert_eq!(d.offset, 7);
        assert_eq!(d.bytes, b"hi");
        assert_eq!(r.next(), 9);
    }
}
