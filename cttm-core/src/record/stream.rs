//! One direction's byte stream as a record holds it.

use super::{Applied, ApplyError};
use crate::event::Side;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// One direction of a connection: how far its bytes arrived, how far the peer acknowledged
/// them, where its FIN is, and the bytes still retained.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct StreamState {
    /// End of the bytes received in order (the next offset expected).
    received_end: u64,
    /// Every offset below this one is acknowledged by the peer (a FIN counts as one offset).
    acked: u64,
    /// The FIN's offset, once seen.
    fin: Option<u64>,
    /// Offset of `retained[0]`.
    retained_from: u64,
    /// The bytes `[retained_from, received_end)`.
    retained: VecDeque<u8>,
}

impl StreamState {
    /// End of the bytes received in order.
    pub fn received_end(&self) -> u64 {
        self.received_end
    }

    /// The acknowledged offset (FIN included when acknowledged).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The FIN's offset, once seen.
    pub fn fin(&self) -> Option<u64> {
        self.fin
    }

    /// End of the sequence space used: the received bytes, plus one for a FIN.
    pub fn sequence_end(&self) -> u64 {
        self.fin.map_or(self.received_end, |f| f + 1)
    }

    /// Offset of the first retained byte.
    pub fn retained_from(&self) -> u64 {
        self.retained_from
    }

    /// How many bytes are retained.
    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }

    /// The retained bytes in `[from, to)`, clipped to what is retained.
    pub fn bytes_between(&self, from: u64, to: u64) -> Vec<u8> {
        let from = from.max(self.retained_from);
        let to = to.min(self.received_end);
        if from >= to {
            return Vec::new();
        }
        let start = (from - self.retained_from) as usize;
        let end = (to - self.retained_from) as usize;
        self.retained.range(start..end).copied().collect()
    }

    /// Appends in-order bytes at `offset`; bytes already held are ignored.
    pub(super) fn append(
        &mut self,
        side: Side,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Applied, ApplyError> {
        if offset > self.received_end {
            return Err(ApplyError::Gap {
                side,
                expected: self.received_end,
                got: offset,
            });
        }
        let end = offset + bytes.len() as u64;
        if end <= self.received_end {
            return Ok(Applied::Duplicate);
        }
        let new = &bytes[(self.received_end - offset) as usize..];
        self.retained.extend(new);
        self.received_end = end;
        Ok(Applied::Changed)
    }

    /// Records the FIN at `offset`, which must follow the last byte.
    pub(super) fn set_fin(&mut self, side: Side, offset: u64) -> Result<Applied, ApplyError> {
        match self.fin {
            Some(f) if f == offset => Ok(Applied::Duplicate),
            Some(_) => Err(ApplyError::Conflict),
            None if offset != self.received_end => Err(ApplyError::Gap {
                side,
                expected: self.received_end,
                got: offset,
            }),
            None => {
                self.fin = Some(offset);
                Ok(Applied::Changed)
            }
        }
    }

    /// Raises the acknowledged offset; returns whether it advanced.
    pub(super) fn acknowledge(&mut self, offset: u64) -> bool {
        if offset > self.acked {
            self.acked = offset;
            true
        } else {
            false
        }
    }

    /// Jumps over bytes that will never arrive (a reported capture hole): the stream continues
    /// at `offset`, and retained bytes are dropped because they are no longer contiguous.
    pub(super) fn skip_to(&mut self, offset: u64) {
        let data_end = match self.fin {
            Some(f) if offset > f => f,
            _ => offset,
        };
        self.received_end = self.received_end.max(data_end);
        self.retained.clear();
        self.retained_from = self.received_end;
    }

    /// Drops retained bytes below `upto`.
    pub(super) fn release_until(&mut self, upto: u64) {
        let upto = upto.min(self.received_end);
        if upto > self.retained_from {
            let n = (upto - self.retained_from) as usize;
            self.retained.drain(..n);
            self.retained_from = upto;
        }
    }
}
