//! An in-memory capture source: frames queued by the caller, for tests and simulation.

use crate::{CaptureError, CaptureSource, CaptureStats, CapturedFrame};
use cttm_core::{Instant, LinkType};
use std::collections::VecDeque;
use std::time::Duration;

/// Frames queued in memory and handed out in order. Finite: once empty it reports
/// [`CaptureError::EndOfCapture`] unless more frames are pushed.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    frames: VecDeque<(Instant, LinkType, Vec<u8>)>,
    batch: usize,
    stats: CaptureStats,
}

impl MemorySource {
    /// An empty source handing out up to 64 frames per batch.
    pub fn new() -> Self {
        MemorySource {
            frames: VecDeque::new(),
            batch: 64,
            stats: CaptureStats::default(),
        }
    }

    /// A source holding `frames`.
    pub fn from_frames(frames: impl IntoIterator<Item = (Instant, LinkType, Vec<u8>)>) -> Self {
        MemorySource {
            frames: frames.into_iter().collect(),
            ..MemorySource::new()
        }
    }

    /// Queues one frame.
    pub fn push(&mut self, at: Instant, link: LinkType, frame: Vec<u8>) {
        self.frames.push_back((at, link, frame));
    }

    /// Records frames lost before the source (as a kernel drop counter would).
    pub fn record_drops(&mut self, dropped: u64) {
        self.stats.dropped += dropped;
    }

    /// Frames still queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl CaptureSource for MemorySource {
    fn read_batch(
        &mut self,
        _timeout: Duration,
        visit: &mut dyn FnMut(CapturedFrame<'_>),
    ) -> Result<usize, CaptureError> {
        if self.frames.is_empty() {
            return Err(CaptureError::EndOfCapture);
        }
        let n = self.batch.min(self.frames.len());
        for (at, link, data) in self.frames.drain(..n) {
            visit(CapturedFrame {
                at,
                link,
                data: &data,
            });
        }
        self.stats.frames += n as u64;
        Ok(n)
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }
}
