//! Async mode: AF_PACKET capture, nothing held; the status reports the bytes at risk.

use super::agent::{Agent, service_set, start_replication};
use super::{PrimaryError, PrimaryExit, PrimaryMonitor};
use crate::options::PrimaryOptions;
use cttm_capture::CaptureSource;
use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource};
use cttm_capture::nfqueue::DEFAULT_BYPASS_MARK;
use cttm_core::wire::parse_frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one capture read waits for the first frame (also the stop latency).
const READ_TIMEOUT: Duration = Duration::from_millis(20);

pub(super) fn run(
    options: &PrimaryOptions,
    stop: &AtomicBool,
    monitor: PrimaryMonitor,
) -> Result<PrimaryExit, PrimaryError> {
    let mut source = AfPacketSource::open(AfPacketConfig::new(
        options.interface.clone(),
        service_set(options),
    ))
    .map_err(|source| PrimaryError::OpenCapture {
        interface: options.interface.clone(),
        source,
    })?;
    // The mark is not needed to bypass anything here, but keeps the replication traffic
    // recognisable the same way in both modes.
    let service = start_replication(options, DEFAULT_BYPASS_MARK);
    let mut agent = Agent::new(options, service, monitor);
    tracing::info!(interface = %options.interface, "async mode: capturing with AF_PACKET, nothing is held; bytes at risk are reported per connection");
    let no_held = |_: &cttm_core::ConnectionId| 0;
    while !stop.load(Ordering::SeqCst) {
        source
            .read_batch(READ_TIMEOUT, &mut |frame| {
                if let Ok(segment) = parse_frame(frame.link, frame.data) {
                    agent.track(frame.at, &segment);
                }
            })
            .map_err(PrimaryError::Capture)?;
        agent.on_capture_drops(source.stats().dropped);
        agent.ship();
        agent.housekeeping(&no_held, 0);
    }
    agent.publish_status(&no_held, 0);
    Ok(agent.stats)
}
