//! TCP sequence numbers (RFC 9293 §3.4) and the 64-bit stream offsets derived from them.
//!
//! Sequence numbers live in a 32-bit circular space; comparing them with plain `<` is wrong
//! once a connection has carried 4 GiB or its ISN is near `u32::MAX`. [`SeqNumber`] compares
//! the RFC 1982 way (serial number arithmetic): `a` is before `b` when `b - a`, taken modulo
//! 2^32, is in `1..2^31`.
//!
//! Stream *offsets* are `u64` positions in one direction's byte stream: offset 0 is the first
//! data byte (sequence number ISN + 1). They never wrap, so everything above the wire layer
//! works in offsets and converts with [`SeqNumber::unwrap_near`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// A 32-bit TCP sequence or acknowledgement number, compared with wrap-around.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The raw 32-bit value as carried on the wire.
    pub const fn value(self) -> u32 {
        self.0
    }

    /// `self + n` modulo 2^32.
    #[must_use]
    pub const fn add(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }

    /// `self - n` modulo 2^32.
    #[must_use]
    pub const fn sub(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n))
    }

    /// Signed distance `self - earlier` in the circular space (RFC 1982): positive when `self`
    /// is after `earlier`, within ±2^31.
    pub const fn distance_from(self, earlier: SeqNumber) -> i32 {
        self.0.wrapping_sub(earlier.0) as i32
    }

    /// True when `self` comes strictly before `other` (RFC 1982 serial comparison).
    pub const fn is_before(self, other: SeqNumber) -> bool {
        self.distance_from(other) < 0
    }

    /// True when `self` comes strictly after `other`.
    pub const fn is_after(self, other: SeqNumber) -> bool {
        self.distance_from(other) > 0
    }

    /// The later of two sequence numbers (serial comparison).
    #[must_use]
    pub const fn max_seq(self, other: SeqNumber) -> SeqNumber {
        if self.is_after(other) { self } else { other }
    }

    /// Sequence number of stream offset `offset` in a direction whose first data byte is `base`
    /// (that is, ISN + 1).
    pub const fn from_offset(base: SeqNumber, offset: u64) -> SeqNumber {
        base.add(offset as u32)
    }

    /// The stream offset of `self` in a direction whose first data byte is `base`, choosing the
    /// 64-bit value nearest to `reference` (an offset already known, such as the next expected
    /// byte). Returns `None` if the result would be negative (before the stream start).
    pub fn unwrap_near(self, base: SeqNumber, reference: u64) -> Option<u64> {
        let reference_seq = SeqNumber::from_offset(base, reference);
        let delta = i64::from(self.distance_from(reference_seq));
        let offset = i128::from(reference) + i128::from(delta);
        u64::try_from(offset).ok()
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u32> for SeqNumber {
    fn from(v: u32) -> Self {
        SeqNumber(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_across_the_wrap_point() {
        let a = SeqNumber(u32::MAX - 5);
        let b = a.add(10);
        assert_eq!(b, SeqNumber(4));
        assert!(a.is_before(b));
        assert!(b.is_after(a));
        assert_eq!(b.distance_from(a), 10);
        assert_eq!(a.distance_from(b), -10);
        assert_eq!(a.max_seq(b), b);
    }

    #[test]
    fn unwraps_offsets_past_four_gib() {
        let base = SeqNumber(u32::MAX - 1);
        // offset 2^32 + 7 has the same 32-bit value as offset 7
        let seq = SeqNumber::from_offset(base, (1u64 << 32) + 7);
        assert_eq!(seq.unwrap_near(base, 1u64 << 32), Some((1u64 << 32) + 7));
        assert_eq!(seq.unwrap_near(base, 3), Some(7));
        // a sequence number just before the stream start is not an offset
        assert_eq!(base.sub(1).unwrap_near(base, 0), None);
    }
}
