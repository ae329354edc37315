//! Async mode: AF_PACKET capture, nothing held; the status reports the bytes at risk.
//!
//! The loss window of async mode is the time between a segment leaving (or reaching) the
//! service and the backup acknowledging its bytes. Two parts of it are ours: the capture
//! delay (frame arrival to the tracker) and the replication round trip. A TPACKET_V3 ring
//! hands a partly filled block to user space only when its retire timeout expires, so this
//! mode receives frame by frame ([`CaptureMode::Recv`]) and ships the tracker's events to
//! the replication service after every batch. Once a second the agent logs the window it
//! measured: the capture delay (frames are stamped when received, so this is the time they
//! spend in the agent before tracking), the most bytes at risk, and the share of open
//! connections that had bytes at risk (the chance that a crash at that instant loses a
//! given connection).
//!
//! When it stops (a crash in the tests: the service port goes down first, then the agent is
//! told to stop), the agent reads what the capture still holds, without waiting, and tracks
//! it before its final status: frames that left before the crash were queued to the socket
//! by then, so the final status covers every byte the client may have seen, and its bytes
//! at risk are an honest upper bound of what the crash lost.

use super::agent::{Agent, epoch_now, service_set};
use super::ownership::OwnershipWatch;
use super::{LinkFactory, PrimarySettings};
use super::{PrimaryError, PrimaryMonitor, RunEnd, RunInputs};
use crate::af_packet::{AfPacketConfig, AfPacketSource, CaptureMode};
use crate::nfqueue::DEFAULT_BYPASS_MARK;
use crate::{CaptureSource, CapturedFrame};
use cttm_core::wire::parse_frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one capture read waits for the first frame (also the stop latency).
const READ_TIMEOUT: Duration = Duration::from_millis(20);
/// How often the published status is sampled for the loss window (it is refreshed every
/// 10 ms).
const STATUS_SAMPLE_INTERVAL: Duration = Duration::from_millis(5);
/// How often the measured loss window is logged.
const WINDOW_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// At stop, the most reads that drain the capture (each visits what is queued), so a
/// capture that keeps receiving cannot keep the agent from stopping.
const DRAIN_READS: usize = 1024;

pub(super) fn run(
    options: &PrimarySettings,
    link: &mut LinkFactory,
    stop: &AtomicBool,
    inputs: RunInputs,
    watch: Option<OwnershipWatch>,
) -> Result<RunEnd, PrimaryError> {
    let mut config = AfPacketConfig::new(options.interface.clone(), service_set(options));
    // One receive per frame: each frame reaches the tracker as soon as it is queued.
    // Measured in the demo (release build), a frame reaches the tracker ~50-90 us after its
    // kernel timestamp and 3-13 % of the connection samples have bytes at risk; with the
    // ring and a 1 ms block retire timeout (`RingConfig::low_latency`) ~550 us and 6-29 %;
    // with the default ring (10 ms) ~5 ms. Async mode sees a few thousand frames a second
    // (GSO super-segments), so a system call each is cheap. The kernel's receive
    // timestamps are not asked for: they would turn on timestamping for every packet of
    // the host (see `AfPacketConfig::recv_kernel_timestamps`); the receive time is used.
    config.mode = CaptureMode::Recv;
    config.recv_kernel_timestamps = false;
    let mut source = AfPacketSource::open(config).map_err(|source| PrimaryError::OpenCapture {
        interface: options.interface.clone(),
        source,
    })?;
    // The mark is not needed to bypass anything here, but keeps the replication traffic
    // recognisable the same way in both modes.
    let service = link(DEFAULT_BYPASS_MARK);
    let monitor = inputs.monitor.clone();
    let mut agent = Agent::new(options, service, inputs, watch);
    tracing::info!(interface = %options.interface, mode = ?source.mode(), "async mode: capturing with AF_PACKET, nothing is held; bytes at risk are reported per connection");
    let mut window = LossWindow::new();
    let mut demoted = None;
    while !stop.load(Ordering::SeqCst) {
        if let Some(holder) = agent.other_holder() {
            demoted = Some(holder);
            break;
        }
        source
            .read_batch(READ_TIMEOUT, &mut |frame| {
                // The frame reaches the tracker now (a vDSO clock read, no system call).
                window.on_frame(epoch_now().micros().saturating_sub(frame.at.micros()));
                track_frame(&mut agent, &frame);
            })
            .map_err(PrimaryError::Capture)?;
        agent.on_capture_drops(source.stats().dropped);
        agent.ship();
        agent.housekeeping(None);
        window.on_status(&monitor);
    }
    drain(&mut source, &mut agent);
    agent.finish_recording();
    agent.publish_status(None);
    Ok(RunEnd {
        exit: agent.stats,
        demoted,
        watch: agent.take_watch(),
    })
}

fn track_frame(agent: &mut Agent, frame: &CapturedFrame<'_>) {
    agent.record(frame);
    if let Ok(segment) = parse_frame(frame.link, frame.data) {
        agent.track(frame.at, &segment);
    }
}

/// Tracks what the capture still holds, without waiting (at most [`DRAIN_READS`] reads).
fn drain(source: &mut AfPacketSource, agent: &mut Agent) {
    let mut frames = 0usize;
    for _ in 0..DRAIN_READS {
        match source.read_batch(Duration::ZERO, &mut |frame| track_frame(agent, &frame)) {
            Ok(0) => break,
            Ok(n) => frames += n,
            Err(e) => {
                tracing::warn!(error = %e, "reading the capture at stop failed: the final status may miss frames");
                break;
            }
        }
    }
    agent.on_capture_drops(source.stats().dropped);
    agent.ship();
    if frames > 0 {
        tracing::debug!(frames, "frames still queued at stop tracked");
    }
}

/// The loss window measured since the last log line.
struct LossWindow {
    since: std::time::Instant,
    frames: u64,
    delay_sum: u64,
    delay_max: u64,
    at_risk_max: u64,
    at_risk_connections_max: usize,
    /// Status samples taken, and (summed over them) connections with bytes at risk and
    /// connections open: their ratio is the chance that a crash at a random instant loses
    /// a given busy connection.
    samples: u64,
    connection_samples: u64,
    at_risk_connection_samples: u64,
    last_sample: Option<std::time::Instant>,
}

impl LossWindow {
    fn new() -> Self {
        LossWindow {
            since: std::time::Instant::now(),
            frames: 0,
            delay_sum: 0,
            delay_max: 0,
            at_risk_max: 0,
            at_risk_connections_max: 0,
            samples: 0,
            connection_samples: 0,
            at_risk_connection_samples: 0,
            last_sample: None,
        }
    }

    /// A frame reached the tracker `delay` microseconds after its capture timestamp.
    fn on_frame(&mut self, delay: u64) {
        self.frames += 1;
        self.delay_sum = self.delay_sum.saturating_add(delay);
        self.delay_max = self.delay_max.max(delay);
    }

    /// Samples the published status; logs and restarts the window once per interval.
    fn on_status(&mut self, monitor: &PrimaryMonitor) {
        let due = self
            .last_sample
            .is_none_or(|t| t.elapsed() >= STATUS_SAMPLE_INTERVAL);
        if let Some(status) = due.then(|| monitor.status()).flatten() {
            self.last_sample = Some(std::time::Instant::now());
            self.at_risk_max = self.at_risk_max.max(status.at_risk());
            let at_risk = status
                .connections
                .iter()
                .filter(|c| c.at_risk() > 0)
                .count();
            self.at_risk_connections_max = self.at_risk_connections_max.max(at_risk);
            let open = status.connections.iter().filter(|c| !c.closed).count();
            self.samples += 1;
            self.connection_samples += open as u64;
            self.at_risk_connection_samples += at_risk as u64;
        }
        if self.since.elapsed() < WINDOW_LOG_INTERVAL {
            return;
        }
        if self.frames > 0 || self.at_risk_max > 0 {
            tracing::info!(
                frames = self.frames,
                capture_delay_mean_us = self.delay_sum / self.frames.max(1),
                capture_delay_max_us = self.delay_max,
                at_risk_max_bytes = self.at_risk_max,
                at_risk_connections_max = self.at_risk_connections_max,
                at_risk_connection_share_percent = (self.at_risk_connection_samples * 100)
                    .checked_div(self.connection_samples)
                    .unwrap_or(0),
                samples = self.samples,
                "async loss window"
            );
        }
        *self = LossWindow::new();
    }
}
