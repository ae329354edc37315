//! The first moments after takeover: a capture of the service's traffic shows, per restored
//! connection, whether the client is ahead of what this host holds. In async mode the
//! primary may have exchanged bytes with the client that never reached the backup: the
//! client then acknowledges server bytes this host never sent (the restored socket drops
//! those segments as acknowledging unsent data) or waits for answers to client bytes the
//! primary acknowledged and this host never received. Such a connection would hang. It is
//! ended with a reset carrying the client's own `RCV.NXT` (taken from its acknowledgements),
//! which the client accepts (RFC 9293 §3.10.7.4, RFC 5961 §3.2): at the first segment that
//! acknowledges server bytes this host never held, or once client bytes beyond a hole have
//! not been filled within a grace period (a hole may be bytes in flight the client
//! retransmits). The rules are `cttm_core::backup::watch`'s; this module reads the capture
//! and sends the resets.

use super::splice::SpliceSet;
use cttm_core::endpoint::ConnectionId;
use cttm_core::io::capture::CaptureSource;
use cttm_core::seq::SeqNumber;
use cttm_core::wire::{LinkType, SegmentRepr, TcpFlags, TcpOptions, emit_frame, parse_frame};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Watches client segments of the restored connections for a while after takeover.
pub(crate) struct Watch {
    source: Box<dyn CaptureSource + Send>,
    until: Instant,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Watches what `source` captures of the services' segments for `duration`.
    pub(crate) fn new(source: Box<dyn CaptureSource + Send>, duration: Duration) -> Watch {
        Watch {
            source,
            until: Instant::now() + duration,
        }
    }

    /// True while the watch lasts.
    pub(crate) fn active(&self) -> bool {
        Instant::now() < self.until
    }

    /// Hands every segment captured since the last call to the splices (without waiting).
    pub(crate) fn observe(&mut self, splices: &mut SpliceSet) {
        let now = Instant::now();
        let result = self.source.read_batch(Duration::ZERO, &mut |frame| {
            if let Ok(segment) = parse_frame(frame.link, frame.data) {
                splices.observe(&segment, frame.at, now);
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "capture after takeover failed; the watch ends");
            self.until = now;
        }
    }
}

/// Sends the client of `id` a reset with sequence number `seq` (its `RCV.NXT`), from the
/// service address, through a raw IP socket.
pub(crate) fn send_reset(id: &ConnectionId, seq: SeqNumber) -> io::Result<()> {
    let segment = SegmentRepr {
        src: id.server,
        dst: id.client,
        seq,
        ack: SeqNumber(0),
        flags: TcpFlags::RST,
        window: 0,
        options: TcpOptions::default(),
        payload: &[],
    };
    let packet = emit_frame(LinkType::RawIp, &segment)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let domain = match id.client {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    // IPPROTO_RAW: the packet carries its own IP header (raw(7), IP_HDRINCL implied).
    let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    let destination = SockAddr::from(SocketAddr::new(id.client.ip(), 0));
    socket.send_to(&packet, &destination)?;
    Ok(())
}
