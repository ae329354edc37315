//! Dumping a live socket into a [`ConnectionSnapshot`] (CRIU libsoccr `libsoccr_save`).

use super::sys::{self, TcpRepairWindow, state};
use super::{DumpError, monotonic_now, repair_on, window_scale_of};
use cttm_core::snapshot::{
    ConnectionSnapshot, NegotiatedOptions, ReceiveQueue, RepairWindow, Restorability, SendQueue,
    TcpState, TimestampClock,
};
use cttm_core::time::Instant;
use cttm_core::{ConnectionId, SeqNumber};
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

/// How many times a dump re-reads queues that changed under it.
const DUMP_ATTEMPTS: usize = 3;

fn io_error(step: &'static str) -> impl FnOnce(io::Error) -> DumpError {
    move |source| DumpError::Io { step, source }
}

/// Freezes a socket: repair mode on, then incoming segments dropped (socket filter). The order
/// makes a missing capability show as the `TCP_REPAIR` refusal it is.
fn freeze_fd(fd: RawFd) -> Result<(), DumpError> {
    repair_on(fd)?;
    if let Err(e) = sys::attach_drop_all_filter(fd) {
        let _ = sys::set_repair(fd, sys::TCP_REPAIR_OFF_NO_WP);
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => DumpError::PermissionDenied,
            _ => DumpError::Io {
                step: "setsockopt(SO_ATTACH_FILTER)",
                source: e,
            },
        });
    }
    Ok(())
}

/// Undoes [`freeze_fd`] without a window probe: the socket carries on as if nothing happened
/// (segments dropped meanwhile are retransmitted by the peer).
fn thaw_fd(fd: RawFd) -> Result<(), DumpError> {
    sys::set_repair(fd, sys::TCP_REPAIR_OFF_NO_WP)
        .map_err(io_error("setsockopt(TCP_REPAIR off)"))?;
    sys::detach_filter(fd).map_err(io_error("setsockopt(SO_DETACH_FILTER)"))
}

/// Takes a snapshot of a connected socket and leaves it running: the socket is frozen for the
/// duration of the dump (incoming segments are dropped and later retransmitted by the peer),
/// then thawed without a window probe. The snapshot is stamped with [`monotonic_now`].
///
/// To move a connection, use [`FrozenConnection`] instead: a socket that keeps running after
/// its dump makes the snapshot stale.
pub fn dump_connection(stream: &TcpStream) -> Result<ConnectionSnapshot, DumpError> {
    let fd = stream.as_raw_fd();
    freeze_fd(fd)?;
    let snapshot = dump_frozen(stream, monotonic_now());
    let thawed = thaw_fd(fd);
    let snapshot = snapshot?;
    thawed?;
    Ok(snapshot)
}

/// Closes a socket without sending FIN or RST (repair mode on, then close: the kernel
/// disconnects a repair socket silently, `tcp_close` → `tcp_disconnect`). The peer notices
/// nothing; use it after the connection has been dumped and will be restored.
pub fn close_in_repair(stream: TcpStream) -> Result<(), DumpError> {
    repair_on(stream.as_raw_fd())?;
    silent_close(stream)
}

/// Disconnects a socket in repair mode, then closes it. The explicit disconnect frees the
/// 4-tuple at once even if another descriptor of the socket exists (`close` alone only drops
/// one reference); in repair mode `tcp_disconnect` sends nothing.
fn silent_close(stream: TcpStream) -> Result<(), DumpError> {
    let result = sys::disconnect(stream.as_raw_fd()).map_err(io_error("connect(AF_UNSPEC)"));
    drop(stream);
    result
}

/// A socket held in repair mode between its dump and its close: incoming segments are dropped
/// (a socket filter, the per-socket equivalent of CRIU's network lock), nothing it does is
/// visible to the peer, and dropping it closes it silently (no FIN, no RST).
#[derive(Debug)]
pub struct FrozenConnection {
    stream: Option<TcpStream>,
}

/// [`FrozenConnection::freeze`] failed; the stream is handed back untouched.
#[derive(Debug)]
pub struct FreezeError {
    /// Why.
    pub error: DumpError,
    /// The stream, still running.
    pub stream: TcpStream,
}

impl fmt::Display for FreezeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for FreezeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl FrozenConnection {
    /// Freezes a connected socket.
    pub fn freeze(stream: TcpStream) -> Result<FrozenConnection, Box<FreezeError>> {
        match freeze_fd(stream.as_raw_fd()) {
            Ok(()) => Ok(FrozenConnection {
                stream: Some(stream),
            }),
            Err(error) => Err(Box::new(FreezeError { error, stream })),
        }
    }

    fn stream(&self) -> &TcpStream {
        self.stream.as_ref().expect("present until consumed")
    }

    /// A snapshot stamped with [`monotonic_now`].
    pub fn dump(&self) -> Result<ConnectionSnapshot, DumpError> {
        dump_frozen(self.stream(), monotonic_now())
    }

    /// A snapshot whose clock observation is stamped `now` (the caller's clock).
    pub fn dump_at(&self, now: Instant) -> Result<ConnectionSnapshot, DumpError> {
        dump_frozen(self.stream(), now)
    }

    /// Closes the socket without FIN or RST; the 4-tuple is free when this returns.
    pub fn close(mut self) -> Result<(), DumpError> {
        let stream = self.stream.take().expect("present until consumed");
        silent_close(stream)
    }

    /// Thaws the socket (repair off without a window probe, filter removed) and hands it back.
    pub fn thaw(mut self) -> Result<TcpStream, DumpError> {
        let stream = self.stream.take().expect("present until consumed");
        match thaw_fd(stream.as_raw_fd()) {
            Ok(()) => Ok(stream),
            Err(e) => {
                self.stream = Some(stream);
                Err(e)
            }
        }
    }
}

impl Drop for FrozenConnection {
    fn drop(&mut self) {
        // The socket is still in repair mode: closing it sends nothing (kernel tcp_close).
        if let Some(stream) = self.stream.take() {
            let _ = silent_close(stream);
        }
    }
}

/// Reads the kernel state of a frozen socket into a snapshot.
fn dump_frozen(stream: &TcpStream, now: Instant) -> Result<ConnectionSnapshot, DumpError> {
    let fd = stream.as_raw_fd();
    let id = ConnectionId {
        client: stream.peer_addr().map_err(io_error("getpeername"))?,
        server: stream.local_addr().map_err(io_error("getsockname"))?,
    };
    for _ in 0..DUMP_ATTEMPTS {
        if let Some(snapshot) = dump_once(fd, id, now)? {
            return Ok(snapshot);
        }
    }
    Err(DumpError::QueuesChanged { id })
}

fn dump_once(
    fd: RawFd,
    id: ConnectionId,
    now: Instant,
) -> Result<Option<ConnectionSnapshot>, DumpError> {
    let info = sys::tcp_info(fd).map_err(io_error("getsockopt(TCP_INFO)"))?;
    let state = match info.tcpi_state {
        state::ESTABLISHED => TcpState::Established,
        state::FIN_WAIT1 => TcpState::FinWait1,
        state::FIN_WAIT2 => TcpState::FinWait2,
        state::CLOSE_WAIT => TcpState::CloseWait,
        state::LAST_ACK => TcpState::LastAck,
        state::CLOSING => TcpState::Closing,
        other => return Err(DumpError::UnsupportedState { state: other }),
    };
    let outq = sys::ioctl_int(fd, libc::TIOCOUTQ).map_err(io_error("ioctl(SIOCOUTQ)"))?;
    let unsent_with_fin =
        sys::ioctl_int(fd, sys::SIOCOUTQNSD).map_err(io_error("ioctl(SIOCOUTQNSD)"))?;
    let inq = sys::ioctl_int(fd, libc::FIONREAD).map_err(io_error("ioctl(SIOCINQ)"))?;
    let (mss, _) = sys::get_value::<libc::c_int>(fd, libc::SOL_TCP, libc::TCP_MAXSEG)
        .map_err(io_error("getsockopt(TCP_MAXSEG)"))?;
    let (kernel_window, _) =
        sys::get_value::<TcpRepairWindow>(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW)
            .map_err(io_error("getsockopt(TCP_REPAIR_WINDOW)"))?;
    let timestamps = info.tcpi_options & sys::TCPI_OPT_TIMESTAMPS != 0;
    let clock = if timestamps {
        let (tsval, _) = sys::get_value::<u32>(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP)
            .map_err(io_error("getsockopt(TCP_TIMESTAMP)"))?;
        // ts_recent (the client's last TSval) is not exposed by the kernel; 0 is the value a
        // receiver never uses for PAWS (kernel tcp_paws_check).
        Some(TimestampClock {
            server_tsval: tsval,
            observed_at: now,
            client_tsval: 0,
        })
    } else {
        None
    };

    // The FIN occupies one sequence number in write_seq and SIOCOUTQ but carries no byte
    // (libsoccr does the same adjustment).
    let server_fin_in_queue = matches!(
        state,
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
    );
    let send_len = outq.saturating_sub(usize::from(server_fin_in_queue));
    let unsent = if state.server_fin_sent() {
        unsent_with_fin.saturating_sub(1)
    } else {
        unsent_with_fin
    };

    select_queue(fd, sys::TCP_SEND_QUEUE)?;
    let write_seq = sys::queue_seq(fd).map_err(io_error("getsockopt(TCP_QUEUE_SEQ)"))?;
    let send_bytes = peek_send_queue(fd, send_len)?;
    select_queue(fd, sys::TCP_RECV_QUEUE)?;
    let rcv_nxt = sys::queue_seq(fd).map_err(io_error("getsockopt(TCP_QUEUE_SEQ)"))?;
    let receive_bytes = peek_receive_queue(fd, inq)?;
    let rcv_nxt_after = sys::queue_seq(fd).map_err(io_error("getsockopt(TCP_QUEUE_SEQ)"))?;
    select_queue(fd, sys::TCP_NO_QUEUE)?;
    if rcv_nxt != rcv_nxt_after
        || send_bytes.len() != send_len
        || receive_bytes.len() != inq
        || unsent > send_len
    {
        return Ok(None);
    }

    let send = SendQueue {
        una: SeqNumber(write_seq).sub(outq as u32),
        bytes: send_bytes,
        unsent,
        fin: server_fin_in_queue,
    };
    let receive = ReceiveQueue {
        next: SeqNumber(rcv_nxt),
        bytes: receive_bytes,
        fin: state.client_fin_received(),
    };
    let options = NegotiatedOptions {
        // In repair mode TCP_MAXSEG reports mss_clamp, what TCP_REPAIR_OPTIONS restores.
        mss: u16::try_from(mss).unwrap_or(u16::MAX),
        window_scale: window_scale_of(&info),
        sack: info.tcpi_options & sys::TCPI_OPT_SACK != 0,
        timestamps,
    };
    let window = RepairWindow {
        snd_wl1: kernel_window.snd_wl1,
        snd_wnd: kernel_window.snd_wnd,
        max_window: kernel_window.max_window,
        rcv_wnd: kernel_window.rcv_wnd,
        rcv_wup: kernel_window.rcv_wup,
    };
    Ok(Some(ConnectionSnapshot {
        id,
        state,
        restorability: Restorability::Restorable,
        // The ISNs are not kept by the kernel: stream offset 0 is set to the first queued byte.
        client_isn: receive.first_seq().sub(1),
        server_isn: send.una.sub(1),
        options,
        send,
        receive,
        window,
        clock,
        updated_at: now,
    }))
}

fn select_queue(fd: RawFd, queue: libc::c_int) -> Result<(), DumpError> {
    sys::select_repair_queue(fd, queue).map_err(io_error("setsockopt(TCP_REPAIR_QUEUE)"))
}

/// In repair mode with the send queue selected, `recv(MSG_PEEK)` copies the whole send queue
/// (kernel `tcp_peek_sndq`: retransmit queue, then write queue).
fn peek_send_queue(fd: RawFd, len: usize) -> Result<Vec<u8>, DumpError> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = sys::recv(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
        .map_err(io_error("recv(MSG_PEEK, send queue)"))?;
    buf.truncate(n);
    Ok(buf)
}

/// Peeks the whole receive queue, advancing through it with `SO_PEEK_OFF` (one peek stops at
/// the end of what the kernel copies in one go).
fn peek_receive_queue(fd: RawFd, len: usize) -> Result<Vec<u8>, DumpError> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(io_error("setsockopt(SO_PEEK_OFF)"))?;
    let mut filled = 0;
    let mut result = Ok(());
    while filled < len {
        match sys::recv(fd, &mut buf[filled..], libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                result = Err(DumpError::Io {
                    step: "recv(MSG_PEEK, receive queue)",
                    source: e,
                });
                break;
            }
        }
    }
    // Peeking with SO_PEEK_OFF off again (-1) leaves the socket as it was.
    sys::set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1)
        .map_err(io_error("setsockopt(SO_PEEK_OFF)"))?;
    result?;
    buf.truncate(filled);
    Ok(buf)
}
