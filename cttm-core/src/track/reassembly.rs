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
    /// End of the sequence space seen so far (data and FIN, buffered or dropped included):
    /// SND.NXT of the sender, when every segment it sent was seen.
    seen_end: u64,
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

    /// The FIN's offset, once seen (reached when it equals [`Reassembler::next`]).
    pub(crate) fn fin(&self) -> Option<u64> {
        self.fin
    }

    /// End of the sequence space seen (data and a FIN), delivered or not.
    pub(crate) fn seen_end(&self) -> u64 {
        self.seen_end
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
        self.seen_end = self.seen_end.max(end + u64::from(fin));
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

    /// Buffers an out-of-order piece, trimming what is already buffered: each gap between
    /// buffered pieces gets its own copy (found by two ordered lookups, without collecting the
    /// gaps first).
    fn buffer(&mut self, start: u64, piece: &[u8], limit: usize) {
        let end = start + piece.len() as u64;
        let mut cursor = start;
        while cursor < end {
            // A buffered piece covering `cursor`: skip to its end.
            if let Some((&o, p)) = self.pending.range(..=cursor).next_back() {
                let covered_to = o + p.len() as u64;
                if covered_to > cursor {
                    cursor = covered_to;
                    continue;
                }
            }
            // A gap from `cursor` to the next buffered piece (or the end of this one).
            let gap_end = self
                .pending
                .range(cursor..end)
                .next()
                .map_or(end, |(&o, _)| o);
            let len = (gap_end - cursor) as usize;
            if self.pending_bytes + len > limit {
                self.dropped += len as u64;
            } else {
                self.pending_bytes += len;
                let slice = &piece[(cursor - start) as usize..(gap_end - start) as usize];
                self.pending.insert(cursor, slice.to_vec());
            }
            cursor = gap_end;
        }
    }

    /// Moves buffered pieces that became contiguous into `out`.
    fn drain_pending(&mut self, out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            // The common case, in-order data: `next` is already within the FIN (clipped by
            // the caller).
            return;
        }
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
        self.seen_end = self.seen_end.max(target);
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
    fn a_piece_spanning_several_buffered_ones_fills_only_the_gaps() {
        let mut r = Reassembler::default();
        r.insert(4, b"EF", false, 100);
        r.insert(8, b"IJ", false, 100);
        // 2..12 over [4, 6) and [8, 10): gaps 2..4, 6..8, 10..12 are buffered, the first
        // bytes seen at 4 and 8 are kept.
        assert!(r.insert(2, b"cdxxghxxkl", false, 100).bytes.is_empty());
        assert_eq!(r.pending.len(), 5);
        assert_eq!(r.pending_bytes, 10);
        let d = r.insert(0, b"ab", false, 100);
        assert_eq!(d.bytes, b"abcdEFghIJkl");
        assert_eq!(r.pending_bytes, 0);
        // A limit that fits only the first gap (2..4) drops the next one (6..10), counted.
        let mut r = Reassembler::default();
        r.insert(4, b"EF", false, 4);
        r.insert(2, b"cdxxghij", false, 4);
        assert_eq!((r.pending_bytes, r.dropped()), (4, 4));
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
