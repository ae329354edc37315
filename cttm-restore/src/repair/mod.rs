//! The Linux `TCP_REPAIR` backend (cargo feature `tcp-repair`): dump a live server socket into
//! a [`ConnectionSnapshot`] and restore a snapshot into a live socket, following CRIU
//! libsoccr's order (`soccr/soccr.c`). Needs `CAP_NET_ADMIN` in the socket's network
//! namespace.
//!
//! - [`dump_connection`] takes a snapshot of a socket and leaves it running;
//!   [`FrozenConnection`] keeps a socket in repair mode (frozen: incoming segments dropped, no
//!   FIN or RST on close) between dump and close; [`close_in_repair`] closes a socket silently.
//! - [`restore_connection`] (or [`KernelRepairBackend`]) recreates the socket.
//! - [`socket_tcp_info`] reads any TCP socket's own view of its connection (`TCP_INFO`).
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
use cttm_core::snapshot::{ConnectionSnapshot, WindowScale};
use cttm_core::time::Instant;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

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

/// A TCP socket's own view of its connection, from `TCP_INFO` (`struct tcp_info`,
/// include/uapi/linux/tcp.h): what tests and operators compare with a snapshot or a tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpInfoSummary {
    /// The kernel TCP state (include/net/tcp_states.h: 1 is ESTABLISHED).
    pub state: u8,
    /// Payload bytes received in order (`tcpi_bytes_received`, RFC 4898
    /// tcpEStatsAppHCThruOctetsReceived): `rcv_nxt` is the peer's ISN + 1 + this (+ 1 after
    /// its FIN).
    pub bytes_received: u64,
    /// Payload bytes the peer acknowledged (`tcpi_bytes_acked`, RFC 4898
    /// tcpEStatsAppHCThruOctetsAcked): `snd_una` is this socket's ISN + 1 + this on a passive
    /// open.
    pub bytes_acked: u64,
    /// Segments sent but not yet acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    /// The current send MSS (`tcpi_snd_mss`: the peer's MSS less the options every segment
    /// carries, e.g. 12 bytes of timestamps).
    pub snd_mss: u32,
    /// The MSS estimated for received segments (`tcpi_rcv_mss`).
    pub rcv_mss: u32,
    /// The window scales in use (RFC 7323 §2), `None` when not negotiated.
    pub window_scale: Option<WindowScale>,
    /// Timestamps negotiated (RFC 7323 §3).
    pub timestamps: bool,
    /// SACK permitted negotiated (RFC 2018).
    pub sack: bool,
}

/// Reads a TCP socket's own view of its connection (`getsockopt(TCP_INFO)`). Needs no
/// capability and works in every TCP state.
pub fn socket_tcp_info(stream: &TcpStream) -> io::Result<TcpInfoSummary> {
    let info = sys::tcp_info(stream.as_raw_fd())?;
    Ok(TcpInfoSummary {
        state: info.tcpi_state,
        bytes_received: info.tcpi_bytes_received,
        bytes_acked: info.tcpi_bytes_acked,
        unacked: info.tcpi_unacked,
        snd_mss: info.tcpi_snd_mss,
        rcv_mss: info.tcpi_rcv_mss,
        window_scale: window_scale_of(&info),
        timestamps: info.tcpi_options & sys::TCPI_OPT_TIMESTAMPS != 0,
        sack: info.tcpi_options & sys::TCPI_OPT_SACK != 0,
    })
}

/// The window scales of a `tcp_info`: `snd_wscale` is the low nibble of
/// `tcpi_snd_rcv_wscale`, `rcv_wscale` the high one (bitfield order on little-endian Linux).
fn window_scale_of(info: &libc::tcp_info) -> Option<WindowScale> {
    (info.tcpi_options & sys::TCPI_OPT_WSCALE != 0).then_some(WindowScale {
        send: info.tcpi_snd_rcv_wscale & 0x0f,
        receive: info.tcpi_snd_rcv_wscale >> 4,
    })
}

/// Why turning repair mode on failed: the two causes an operator can fix, or another error.
#[derive(Debug)]
enum RepairRefused {
    /// EPERM: no `CAP_NET_ADMIN` in the socket's network namespace.
    PermissionDenied,
    /// ENOPROTOOPT: the kernel has no `TCP_REPAIR`.
    Unsupported,
    /// Anything else.
    Other(io::Error),
}

/// Turns repair mode on, classifying the two errors an operator can fix.
fn repair_on(fd: std::os::fd::RawFd) -> Result<(), RepairRefused> {
    sys::set_repair(fd, sys::TCP_REPAIR_ON).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => RepairRefused::PermissionDenied,
        Some(libc::ENOPROTOOPT) => RepairRefused::Unsupported,
        _ => RepairRefused::Other(e),
    })
}

impl From<RepairRefused> for DumpError {
    fn from(refused: RepairRefused) -> Self {
        match refused {
            RepairRefused::PermissionDenied => DumpError::PermissionDenied,
            RepairRefused::Unsupported => DumpError::RepairUnsupported,
            RepairRefused::Other(source) => DumpError::Io {
                step: "setsockopt(TCP_REPAIR)",
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::socket_tcp_info;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// Needs no capability: a loopback connection in the current namespace.
    #[test]
    fn socket_tcp_info_reports_both_ends_of_a_loopback_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"hello").expect("client write");
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).expect("server read");
        server.write_all(b"hi!").expect("server write");
        client.read_exact(&mut buf[..3]).expect("client read");

        // The client's acknowledgement of the server's 3 bytes may trail its read (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        let server_info = loop {
            let info = socket_tcp_info(&server).expect("TCP_INFO server");
            if info.bytes_acked == 3 || Instant::now() > deadline {
                break info;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let client_info = socket_tcp_info(&client).expect("TCP_INFO client");
        assert_eq!(server_info.state, 1, "ESTABLISHED");
        assert_eq!(server_info.bytes_received, 5);
        assert_eq!(server_info.bytes_acked, 3);
        assert_eq!(client_info.bytes_received, 3);
        // Both ends negotiated the same options, and one end's send shift is the other's
        // receive shift (RFC 7323 §2.2).
        assert_eq!(client_info.timestamps, server_info.timestamps);
        assert_eq!(client_info.sack, server_info.sack);
        assert_eq!(
            client_info.window_scale.map(|w| (w.send, w.receive)),
            server_info.window_scale.map(|w| (w.receive, w.send))
        );
    }
}
