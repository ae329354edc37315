//! Feeding a [`Tracker`] from a [`CaptureSource`], with the drop rule applied: when the source
//! reports frames lost before it (kernel ring overrun, socket buffer full), every open
//! connection may now miss bytes, so all of them are marked unsafe. A restore from a stream
//! with a hole would hand the client wrong bytes; an unsafe connection is never restored.

use crate::{CaptureError, CaptureSource};
use cttm_core::event::UnsafeReason;
use cttm_core::{ConnectionEvent, Tracker};
use std::time::Duration;

/// What one [`feed_tracker`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedOutcome {
    /// Frames read from the source.
    pub frames: usize,
    /// Frames that were not TCP segments or were malformed (counted by the tracker too).
    pub skipped: usize,
    /// New drops the source reported during this call (all connections were marked unsafe).
    pub new_drops: u64,
}

/// Keeps the drop counter between calls.
#[derive(Clone, Copy, Debug, Default)]
pub struct DropWatch {
    seen: u64,
}

impl DropWatch {
    /// A watch that has seen no drop yet.
    pub fn new() -> Self {
        DropWatch::default()
    }
}

/// Reads one batch from `source` (waiting at most `timeout`), tracks every frame, appends the
/// events to `out`, and marks every open connection unsafe if the source dropped frames since
/// the last call. [`CaptureError::EndOfCapture`] and other errors are returned as they are.
pub fn feed_tracker(
    source: &mut dyn CaptureSource,
    tracker: &mut Tracker,
    watch: &mut DropWatch,
    timeout: Duration,
    out: &mut Vec<ConnectionEvent>,
) -> Result<FeedOutcome, CaptureError> {
    let mut outcome = FeedOutcome::default();
    let mut last_at = None;
    let frames = source.read_batch(timeout, &mut |frame| {
        last_at = Some(frame.at);
        if tracker
            .on_frame(frame.at, frame.link, frame.data, out)
            .is_err()
        {
            outcome.skipped += 1;
        }
    })?;
    outcome.frames = frames;
    let dropped = source.stats().dropped;
    if dropped > watch.seen {
        outcome.new_drops = dropped - watch.seen;
        watch.seen = dropped;
        // Which connection lost a frame is unknown: every one of them may have a hole.
        let at = last_at.unwrap_or_default();
        let reason = UnsafeReason::CaptureDrops {
            frames: outcome.new_drops,
        };
        tracker.mark_all_unsafe(at, reason, out);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemorySource;
    use cttm_core::wire::{SegmentRepr, TcpFlags, TcpOptions, emit_frame};
    use cttm_core::{
        Instant, LinkType, Restorability, SeqNumber, ServiceEndpoint, ServiceSet, TrackerConfig,
    };
    use std::net::SocketAddr;

    fn frame(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: TcpFlags) -> Vec<u8> {
        let segment = SegmentRepr {
            src,
            dst,
            seq: SeqNumber(seq),
            ack: SeqNumber(ack),
            flags,
            window: 1000,
            options: TcpOptions {
                mss: Some(1460),
                ..TcpOptions::default()
            },
            payload: &[],
        };
        emit_frame(LinkType::Ethernet, &segment).expect("emit")
    }

    #[test]
    fn a_drop_makes_every_open_connection_unsafe() {
        let client: SocketAddr = "198.18.0.1:40000".parse().expect("addr");
        let server: SocketAddr = "198.18.0.2:80".parse().expect("addr");
        let mut source = MemorySource::new();
        let t = Instant::from_millis(1);
        source.push(
            t,
            LinkType::Ethernet,
            frame(client, server, 100, 0, TcpFlags::SYN),
        );
        source.push(
            t,
            LinkType::Ethernet,
            frame(server, client, 500, 101, TcpFlags::SYN.with(TcpFlags::ACK)),
        );
        source.push(
            t,
            LinkType::Ethernet,
            frame(client, server, 101, 501, TcpFlags::ACK),
        );
        let mut tracker =
            Tracker::new(TrackerConfig::new(ServiceSet::new([ServiceEndpoint::new(
                server,
            )])));
        let mut watch = DropWatch::new();
        let mut events = Vec::new();
        let first = feed_tracker(
            &mut source,
            &mut tracker,
            &mut watch,
            Duration::ZERO,
            &mut events,
        )
        .expect("batch");
        assert_eq!((first.frames, first.new_drops), (3, 0));
        let id = tracker.records().next().expect("tracked").id();
        assert_eq!(
            tracker.snapshot(&id).expect("snapshot").restorability,
            Restorability::Restorable
        );

        source.record_drops(2);
        source.push(
            t,
            LinkType::Ethernet,
            frame(client, server, 101, 501, TcpFlags::ACK),
        );
        let second = feed_tracker(
            &mut source,
            &mut tracker,
            &mut watch,
            Duration::ZERO,
            &mut events,
        )
        .expect("batch");
        assert_eq!(second.new_drops, 2);
        assert!(matches!(
            tracker.snapshot(&id).expect("snapshot").restorability,
            Restorability::Unsafe(UnsafeReason::CaptureDrops { frames: 2 })
        ));
        assert!(matches!(
            feed_tracker(
                &mut source,
                &mut tracker,
                &mut watch,
                Duration::ZERO,
                &mut events
            ),
            Err(CaptureError::EndOfCapture)
        ));
    }
}
