//! The Linux `TCP_REPAIR` backend (cargo feature `tcp-repair`): dump a live server socket into
//! a [`ConnectionSnapshot`] and restore a snapshot into a live socket, following CRIU
//! libsoccr's order (`soccr/soccr.c`). Needs `CAP_NET_ADMIN` in the socket's network
//! namespace.
//!
//! - [`dump_connection`] takes a snapshot of a socket and leaves it running;
//!   [`FrozenConnection`] keeps a socket in repair mode (frozen: incoming segments dropped, no
//!   FIN or RST on close) between dump and close; [`close_in_repair`] closes a socket silently.
//! - [`restore_connection`] (or [`KernelRepairBackend`]) recreates the socket.
//!
//! Moving a connection within one host leaves a gap between the close of the old socket and
//! the restore of the new one: a client segment arriving then meets no socket (or the
//! listener) and is answered with a reset. Drop the service's incoming segments meanwhile (as
//! CRIU's network lock does), or keep the gap shut by restoring on another host, where the
//! address only appears once it is claimed.

mod dump;
mod restore;
pub(crate) mod sys;

pub use dump::{FreezeError, FrozenConnection, close_in_repair, dump_connection};
pub use restore::restore_connection;

use crate::{RestoreBackend, RestoreError, RestoreOptions};
use cttm_core::ConnectionId;
use cttm_core::snapshot::ConnectionSnapshot;
use cttm_core::time::Instant;
use std::io;
use std::net::TcpStream;

/// Why dumping (or freezing, or silently closing) a socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
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
    /// The socket is in a state a snapshot cannot describe (listening, handshake, closed,
    /// TIME-WAIT).
    #[error(
        "socket is in kernel TCP state {state} (include/net/tcp_states.h), which cannot be dumped; only connected sockets can"
    )]
    UnsupportedState {
        /// The kernel state number.
        state: u8,
    },
    /// The queues kept changing while they were read (should not happen on a frozen socket).
    #[error("the queues of {id} changed while they were read: retry the dump")]
    QueuesChanged {
        /// The connection.
        id: ConnectionId,
    },
    /// A system call failed.
    #[error("{step} failed while dumping: {source}")]
    Io {
        /// The step (system call and option).
        step: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A connection restored by [`restore_connection`]: an ordinary, connected `TcpStream` that
/// continues the snapshot's connection.
#[derive(Debug)]
pub struct RestoredConnection {
    id: ConnectionId,
    stream: TcpStream,
}

impl RestoredConnection {
    /// The connection's 4-tuple.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, mutably (for `Read`/`Write`).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The socket, owned.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// The `TCP_REPAIR` restore backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelRepairBackend;

impl RestoreBackend for KernelRepairBackend {
    type Endpoint = RestoredConnection;

    fn restore(
        &mut self,
        snapshot: &ConnectionSnapshot,
        options: &RestoreOptions,
    ) -> Result<RestoredConnection, RestoreError> {
        restore_connection(snapshot, options)
    }
}

/// The current CLOCK_MONOTONIC time as an [`Instant`]: the clock [`dump_connection`] stamps
/// snapshots with, so `RestoreOptions::at(monotonic_now())` continues a dumped clock correctly
/// on the same host (CLOCK_MONOTONIC is per host: across hosts, carry the elapsed time instead).
pub fn monotonic_now() -> Instant {
    Instant::from_micros(sys::monotonic_micros())
}

/// Turns repair mode on, mapping the two errors an operator can fix.
fn repair_on(fd: std::os::fd::RawFd) -> Result<(), io::Error> {
    sys::set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR, sys::TCP_REPAIR_ON)
}
