//! The restore edge: recreating the server side of one connection from a
//! [`ConnectionSnapshot`], and the backend-independent rules every backend applies:
//! [`check_restorable`] (refuse snapshots that cannot be restored exactly) and
//! [`plan_server_tsval`] (the RFC 7323 timestamp clock to install, never running backwards).
//! The backends are `cttm-restore`'s (`TCP_REPAIR`, simulated).

use crate::event::UnsafeReason;
use crate::snapshot::{ConnectionSnapshot, Restorability, TcpState};
use crate::time::Instant;
use std::net::IpAddr;
use std::time::Duration;

/// Recreates the server socket of a connection from a snapshot.
///
/// Contract:
/// - `restore` either returns an endpoint that continues the connection at exactly the
///   snapshot's sequence numbers (the client sees neither a reset nor a gap nor a duplicate
///   byte), or an error, and then leaves no socket behind (a failed restore closes its socket
///   in repair mode: no FIN, no RST).
/// - Snapshots that are not restorable ([`check_restorable`]) are refused before any side
///   effect.
/// - The server's timestamp clock continues from the snapshot's ([`plan_server_tsval`]): a
///   clock that would run backwards is refused or corrected as [`RestoreOptions::clock`] says.
/// - The service address must be local before the restore: claim it first
///   ([`AddressTakeover::claim`](super::takeover::AddressTakeover::claim)) and announce it after. A restored socket sends at once
///   (window probe, replayed FIN) from that address, and free bind
///   ([`RestoreOptions::free_bind`]) does not lift the need on Linux (checked on 6.18: an
///   IPv4 repair-mode connect fails with ENETUNREACH, the output route lookup refusing a
///   non-local source). Backends refuse with [`RestoreError::AddressNotLocal`] before
///   anything is sent.
pub trait RestoreBackend {
    /// The owned, live endpoint a restore produces.
    type Endpoint;

    /// Restores one connection.
    fn restore(
        &mut self,
        snapshot: &ConnectionSnapshot,
        options: &RestoreOptions,
    ) -> Result<Self::Endpoint, RestoreError>;
}

/// What to do when the snapshot's timestamp clock would run backwards at restore time
/// (the restore's `now` is earlier than the instant the snapshot's TSval was observed, so the
/// two clocks disagree and the elapsed time is unknown).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClockPolicy {
    /// Refuse the restore with [`RestoreError::ClockRunsBackwards`].
    Refuse,
    /// Continue the clock from the snapshot's TSval plus `margin` (rounded to milliseconds, the
    /// Linux TSval tick): a forward jump is harmless (RFC 7323 §5.3 only requires TSvals to be
    /// monotone non-decreasing), a backward one makes the client drop every segment (PAWS).
    Correct {
        /// How far to move the clock forward of the snapshot's TSval.
        margin: Duration,
    },
}

/// How to restore.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RestoreOptions {
    /// The current time, on the same clock as the snapshot's instants
    /// ([`crate::snapshot::TimestampClock::observed_at`]). The server's TSval is advanced by
    /// the time elapsed since the snapshot.
    pub now: Instant,
    /// What to do when `now` is before the snapshot's clock observation.
    pub clock: ClockPolicy,
    /// Bind with `IP_FREEBIND`/`IPV6_FREEBIND` (as CRIU does), so the bind itself accepts
    /// an address that is not local. It does not make restoring before the address is
    /// claimed work: the restore is refused with [`RestoreError::AddressNotLocal`] all the
    /// same (see [`RestoreBackend`]); claim the address first.
    pub free_bind: bool,
}

impl RestoreOptions {
    /// Options for a restore at `now`, refusing a clock that would run backwards, with free
    /// bind on.
    pub fn at(now: Instant) -> Self {
        RestoreOptions {
            now,
            clock: ClockPolicy::Refuse,
            free_bind: true,
        }
    }

    /// The same options with another clock policy.
    pub fn with_clock(mut self, clock: ClockPolicy) -> Self {
        self.clock = clock;
        self
    }
}

/// Why a restore failed. Nothing is left behind when it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The snapshot cannot be restored exactly (handshake unseen, capture hole, ...).
    #[error(
        "connection {id} is not restorable ({reason}); it cannot be continued, let the client reconnect"
    )]
    NotRestorable {
        /// The connection.
        id: crate::ConnectionId,
        /// Why.
        reason: String,
    },
    /// The snapshot is internally inconsistent or asks for something TCP cannot do.
    #[error("snapshot of {id} is invalid: {reason}")]
    InvalidSnapshot {
        /// The connection.
        id: crate::ConnectionId,
        /// What is wrong.
        reason: String,
    },
    /// The restore's `now` is before the snapshot's clock observation and the policy refuses.
    #[error(
        "timestamp clock of {id} would run backwards (now {now} is before the snapshot's {observed_at}); \
         use the snapshot's clock for RestoreOptions::now, or ClockPolicy::Correct"
    )]
    ClockRunsBackwards {
        /// The connection.
        id: crate::ConnectionId,
        /// The restore's `now`.
        now: Instant,
        /// When the snapshot's TSval was observed.
        observed_at: Instant,
    },
    /// `TCP_REPAIR` was refused with EPERM.
    #[error(
        "TCP_REPAIR needs CAP_NET_ADMIN in the socket's network namespace: run the agent as root or grant the capability"
    )]
    PermissionDenied,
    /// The kernel does not know `TCP_REPAIR` (ENOPROTOOPT).
    #[error(
        "this kernel has no TCP_REPAIR (ENOPROTOOPT): use Linux 3.5 or later built with CONFIG_CHECKPOINT_RESTORE"
    )]
    RepairUnsupported,
    /// The service address is not local on this host: bind refused it (EADDRNOTAVAIL without
    /// free bind); or, with free bind, the repair-mode connect found no route from it
    /// (IPv4, ENETUNREACH: the kernel's output route lookup refuses a non-local source); or
    /// the check before the restored socket sends anything found it missing (IPv6, whose
    /// connect succeeds with free bind). Nothing was sent.
    #[error(
        "service address {address} of {id} is not local on this host (refused at {step}): claim the address \
         (AddressTakeover::claim, or `ip addr add`) before restoring its connections"
    )]
    AddressNotLocal {
        /// The connection.
        id: crate::ConnectionId,
        /// The service address.
        address: IpAddr,
        /// `bind`, `connect` or `local address check`.
        step: &'static str,
    },
    /// The 4-tuple is already in use on this host (EADDRINUSE at bind, EADDRNOTAVAIL at connect).
    #[error(
        "{id} is already in use on this host (refused at {step}): close the stale socket or restore on another host"
    )]
    AddressInUse {
        /// The connection.
        id: crate::ConnectionId,
        /// `bind` or `connect`.
        step: &'static str,
    },
    /// A queue does not fit into the socket even after retrying with smaller writes and
    /// larger buffers.
    #[error(
        "the {queue} queue of {id} ({len} bytes) does not fit the socket: raise net.core.wmem_max/rmem_max \
         and net.ipv4.tcp_wmem/tcp_rmem"
    )]
    QueueTooLarge {
        /// The connection.
        id: crate::ConnectionId,
        /// `send` or `receive`.
        queue: &'static str,
        /// The queue's length in bytes.
        len: usize,
    },
    /// The client's FIN could not be replayed into the restored socket (the service address
    /// must be local for that).
    #[error(
        "replaying the client's FIN into {id} failed: {reason}; claim the service address before restoring half-closed connections"
    )]
    FinReplay {
        /// The connection.
        id: crate::ConnectionId,
        /// What happened.
        reason: String,
    },
    /// Any other system call failed.
    #[error("{step} failed while restoring {id}: {source}")]
    Io {
        /// The connection.
        id: crate::ConnectionId,
        /// The step (system call and option).
        step: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Refuses snapshots that no backend can restore exactly: not [`Restorability::Restorable`],
/// states without a socket to restore, queues inconsistent with their sequence numbers, or
/// options out of range (RFC 7323 §2.3 caps the window shift at 14).
pub fn check_restorable(snapshot: &ConnectionSnapshot) -> Result<(), RestoreError> {
    let id = snapshot.id;
    let not = |reason: String| Err(RestoreError::NotRestorable { id, reason });
    let invalid = |reason: String| Err(RestoreError::InvalidSnapshot { id, reason });
    match snapshot.restorability {
        Restorability::Restorable => {}
        Restorability::HandshakeIncomplete => return not("handshake incomplete".into()),
        Restorability::Closed => return not("connection closed".into()),
        Restorability::Unsafe(UnsafeReason::MidStream) => {
            return not("picked up mid-stream: the negotiated options are unknown".into());
        }
        Restorability::Unsafe(reason) => return not(format!("{reason:?}")),
    }
    match snapshot.state {
        TcpState::SynReceived | TcpState::TimeWait | TcpState::Closed => {
            return not(format!(
                "state {:?} has no socket to continue",
                snapshot.state
            ));
        }
        _ => {}
    }
    if snapshot.id.client.is_ipv4() != snapshot.id.server.is_ipv4() {
        return invalid("client and server address families differ".into());
    }
    if snapshot.send.unsent > snapshot.send.bytes.len() {
        return invalid("more unsent bytes than queued bytes".into());
    }
    if snapshot.state.client_fin_received() != snapshot.receive.fin {
        return invalid(format!(
            "state {:?} disagrees with receive.fin",
            snapshot.state
        ));
    }
    let fin_unacked = matches!(
        snapshot.state,
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
    );
    if snapshot.send.fin != fin_unacked {
        return invalid(format!(
            "state {:?} disagrees with send.fin",
            snapshot.state
        ));
    }
    // In FIN-WAIT-1, CLOSING and LAST-ACK the FIN may still be queued behind unsent bytes
    // (the application shut down with a full send buffer); in FIN-WAIT-2 the client has
    // acknowledged the FIN, so nothing can be queued.
    if snapshot.state == TcpState::FinWait2 && !snapshot.send.bytes.is_empty() {
        return invalid("bytes queued after a FIN the client acknowledged".into());
    }
    let options = snapshot.options;
    if options.mss == 0 {
        return invalid("MSS is zero".into());
    }
    if let Some(scale) = options.window_scale
        && (scale.send > 14 || scale.receive > 14)
    {
        return invalid(format!(
            "window shifts {}/{} exceed 14 (RFC 7323 §2.3)",
            scale.send, scale.receive
        ));
    }
    if options.timestamps && snapshot.clock.is_none() {
        return invalid("timestamps are on but no TSval is known".into());
    }
    let queued = snapshot.send.bytes.len() as u64 + snapshot.receive.bytes.len() as u64;
    if queued > u64::from(u32::MAX / 2) {
        return invalid("queues longer than half the sequence space".into());
    }
    Ok(())
}

/// The server TSval to install (`TCP_TIMESTAMP`) at `options.now`, or `None` when the
/// connection does not use timestamps. The clock continues from the snapshot's TSval plus the
/// time elapsed since it was observed; if `now` is before that observation, the clock would
/// run backwards and [`RestoreOptions::clock`] decides.
pub fn plan_server_tsval(
    snapshot: &ConnectionSnapshot,
    options: &RestoreOptions,
) -> Result<Option<u32>, RestoreError> {
    if !snapshot.options.timestamps {
        return Ok(None);
    }
    let Some(clock) = snapshot.clock else {
        return Err(RestoreError::InvalidSnapshot {
            id: snapshot.id,
            reason: "timestamps are on but no TSval is known".into(),
        });
    };
    if options.now >= clock.observed_at {
        return Ok(snapshot.server_tsval_at(options.now));
    }
    match options.clock {
        ClockPolicy::Refuse => Err(RestoreError::ClockRunsBackwards {
            id: snapshot.id,
            now: options.now,
            observed_at: clock.observed_at,
        }),
        ClockPolicy::Correct { margin } => {
            let margin_ms = u32::try_from(margin.as_millis())
                .unwrap_or(u32::MAX / 4)
                .min(u32::MAX / 4);
            Ok(Some(clock.server_tsval.wrapping_add(margin_ms)))
        }
    }
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
