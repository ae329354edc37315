//! Restoring a [`ConnectionSnapshot`] into a live socket with `TCP_REPAIR`, in CRIU libsoccr's
//! order (`libsoccr_restore`): socket → repair on → free bind → queue sequence numbers → bind →
//! connect (no SYN) → options → timestamp clock → queues → window → service address checked
//! local → FINs → repair off →
//! port reuse allowed again → unsent bytes.

use super::sys::{self, TcpRepairOpt, TcpRepairWindow};
use super::{RepairRefused, RestoredConnection, repair_on};
use crate::{RestoreError, RestoreOptions, check_restorable, plan_server_tsval};
use cttm_core::ConnectionId;
use cttm_core::SeqNumber;
use cttm_core::snapshot::{ConnectionSnapshot, TcpState};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant as StdInstant};

/// The smallest chunk a queue write shrinks to before it gives up (libsoccr uses 1 KiB too).
const MIN_CHUNK: usize = 1024;
/// The largest single write into a queue.
const MAX_CHUNK: usize = 1 << 20;
/// How long to wait for the kernel to process a replayed FIN (it is looped back through the
/// local stack, normally within microseconds).
const FIN_REPLAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Restores one connection. On error nothing is left behind: the socket is still in repair
/// mode when it is dropped, so the kernel closes it without FIN or RST.
pub fn restore_connection(
    snapshot: &ConnectionSnapshot,
    options: &RestoreOptions,
) -> Result<RestoredConnection, RestoreError> {
    check_restorable(snapshot)?;
    let tsval = plan_server_tsval(snapshot, options)?;
    let step = Restore {
        snapshot,
        id: snapshot.id,
    };
    let socket = step.create_socket(options)?;
    let fd = socket.as_raw_fd();
    step.set_sequence_numbers(fd)?;
    sys::bind(fd, &snapshot.id.server).map_err(|e| step.bind_error("bind", e))?;
    sys::connect(fd, &snapshot.id.client).map_err(|e| step.bind_error("connect", e))?;
    step.set_options(fd)?;
    if let Some(tsval) = tsval {
        // Kernel ≥ 6.7 (tcp_usec_ts): the low bit of the value switches microsecond TSvals on
        // (net/ipv4/tcp.c, TCP_TIMESTAMP); round up to an even value to keep millisecond ticks
        // and never step the clock back.
        let value = tsval.wrapping_add(tsval & 1);
        sys::set_value(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP, &value)
            .map_err(step.io("setsockopt(TCP_TIMESTAMP)"))?;
    }
    step.write_queue(fd, sys::TCP_RECV_QUEUE, &snapshot.receive.bytes)?;
    step.write_queue(fd, sys::TCP_SEND_QUEUE, snapshot.send.sent_unacked())?;
    step.set_window(fd)?;
    // Nothing may leave from a service address that is not local yet (with free bind an IPv6
    // connect succeeds without it): the FIN replay below would go out on the wire, and repair
    // off sends a window probe from it.
    step.check_address_is_local()?;
    step.restore_fins(fd)?;
    // Repair off sends a window probe (ESTABLISHED only, tcp_send_window_probe) so the client
    // answers at once with its current ACK and window.
    sys::set_repair(fd, sys::TCP_REPAIR_OFF).map_err(step.io("setsockopt(TCP_REPAIR off)"))?;
    // Repair off resets sk_reuse to SK_NO_REUSE (net/ipv4/tcp.c, TCP_REPAIR), and a port
    // owner without reuse makes every later bind of the port conflict
    // (inet_csk_bind_conflict): a new listener on the service port would fail with
    // EADDRINUSE. Allow reuse again, as an accepted socket (inheriting its listener's
    // SO_REUSEADDR) would.
    let after_repair = sys::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(step.io("setsockopt(SO_REUSEADDR) after repair"))
        .and_then(|()| step.write_unsent(fd));
    if let Err(e) = after_repair {
        // Leave nothing behind: back into repair mode so the close is silent.
        let _ = repair_on(fd);
        return Err(e);
    }
    Ok(RestoredConnection {
        id: snapshot.id,
        stream: TcpStream::from(socket),
    })
}

struct Restore<'a> {
    snapshot: &'a ConnectionSnapshot,
    id: ConnectionId,
}

impl Restore<'_> {
    fn io(&self, step: &'static str) -> impl FnOnce(io::Error) -> RestoreError {
        let id = self.id;
        move |source| RestoreError::Io { id, step, source }
    }

    /// EADDRINUSE at bind, or EADDRNOTAVAIL at connect (`inet_hash_connect` finds the
    /// 4-tuple taken in the established hash), means another socket holds the connection.
    /// EADDRNOTAVAIL at bind (no free bind), or ENETUNREACH at connect (IPv4: the output
    /// route lookup refuses a non-local source address even with free bind, as only
    /// `IP_TRANSPARENT` sets `FLOWI_FLAG_ANYSRC`; `ip_route_output_key_hash_rcu`), means the
    /// service address is not local yet.
    fn bind_error(&self, step: &'static str, e: io::Error) -> RestoreError {
        let (in_use, not_local) = match e.raw_os_error() {
            Some(libc::EADDRINUSE) => (true, false),
            Some(libc::EADDRNOTAVAIL) => (step == "connect", step == "bind"),
            Some(libc::ENETUNREACH) => (false, true),
            _ => (false, false),
        };
        if not_local {
            RestoreError::AddressNotLocal {
                id: self.id,
                address: self.id.server.ip(),
                step,
            }
        } else if in_use {
            RestoreError::AddressInUse { id: self.id, step }
        } else {
            RestoreError::Io {
                id: self.id,
                step,
                source: e,
            }
        }
    }

    /// Refuses with [`RestoreError::AddressNotLocal`] when the service address is not a
    /// usable local address: binding a plain socket to it fails with EADDRNOTAVAIL exactly
    /// then (no free bind here).
    fn check_address_is_local(&self) -> Result<(), RestoreError> {
        let address = self.id.server.ip();
        match std::net::UdpSocket::bind(SocketAddr::new(address, 0)) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                Err(RestoreError::AddressNotLocal {
                    id: self.id,
                    address,
                    step: "local address check",
                })
            }
            _ => Ok(()),
        }
    }

    fn create_socket(&self, options: &RestoreOptions) -> Result<OwnedFd, RestoreError> {
        let server = self.id.server;
        let socket = sys::tcp_socket(&server).map_err(self.io("socket"))?;
        let fd = socket.as_raw_fd();
        // SO_REUSEADDR before repair mode: TCP_REPAIR on sets sk_reuse to SK_FORCE_REUSE
        // (binding next to a listener or a TIME-WAIT socket of the same port), and a later
        // SO_REUSEADDR would overwrite it with SK_CAN_REUSE (net/core/sock.c).
        sys::set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .map_err(self.io("setsockopt(SO_REUSEADDR)"))?;
        repair_on(fd).map_err(|refused| match refused {
            RepairRefused::PermissionDenied => RestoreError::PermissionDenied,
            RepairRefused::Unsupported => RestoreError::RepairUnsupported,
            RepairRefused::Other(source) => RestoreError::Io {
                id: self.id,
                step: "setsockopt(TCP_REPAIR)",
                source,
            },
        })?;
        if options.free_bind {
            // Lets the bind accept a non-local address; the address must still be local by
            // connect (IPv4) and before anything is sent (see RestoreError::AddressNotLocal).
            let (level, name) = match server {
                SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_FREEBIND),
                SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
            };
            sys::set_int(fd, level, name, 1).map_err(self.io("setsockopt(FREEBIND)"))?;
        }
        Ok(socket)
    }

    /// `TCP_QUEUE_SEQ` must be set before connect (kernel: EPERM once connected). The send
    /// queue starts at `snd_una` (before the FIN of FIN-WAIT-2, which is queued again below);
    /// the receive queue at its first unread byte (before a received FIN, replayed below).
    fn set_sequence_numbers(&self, fd: RawFd) -> Result<(), RestoreError> {
        let snapshot = self.snapshot;
        let send_start = if snapshot.state == TcpState::FinWait2 {
            snapshot.send.una.sub(1)
        } else {
            snapshot.send.una
        };
        self.select_queue(fd, sys::TCP_SEND_QUEUE)?;
        sys::set_queue_seq(fd, send_start.value())
            .map_err(self.io("setsockopt(TCP_QUEUE_SEQ send)"))?;
        self.select_queue(fd, sys::TCP_RECV_QUEUE)?;
        sys::set_queue_seq(fd, snapshot.receive.first_seq().value())
            .map_err(self.io("setsockopt(TCP_QUEUE_SEQ receive)"))?;
        self.select_queue(fd, sys::TCP_NO_QUEUE)
    }

    fn select_queue(&self, fd: RawFd, queue: libc::c_int) -> Result<(), RestoreError> {
        sys::select_repair_queue(fd, queue).map_err(self.io("setsockopt(TCP_REPAIR_QUEUE)"))
    }

    /// `TCP_REPAIR_OPTIONS`: MSS clamp, window scale (`snd | rcv << 16`, RFC 7323 §2), SACK
    /// permitted (RFC 2018), timestamps (RFC 7323 §3).
    fn set_options(&self, fd: RawFd) -> Result<(), RestoreError> {
        let options = self.snapshot.options;
        let mut list = vec![TcpRepairOpt {
            opt_code: sys::TCPOPT_MAXSEG,
            opt_val: u32::from(options.mss),
        }];
        if let Some(scale) = options.window_scale {
            list.push(TcpRepairOpt {
                opt_code: sys::TCPOPT_WINDOW,
                opt_val: u32::from(scale.send) | (u32::from(scale.receive) << 16),
            });
        }
        if options.sack {
            list.push(TcpRepairOpt {
                opt_code: sys::TCPOPT_SACK_PERM,
                opt_val: 0,
            });
        }
        if options.timestamps {
            list.push(TcpRepairOpt {
                opt_code: sys::TCPOPT_TIMESTAMP,
                opt_val: 0,
            });
        }
        sys::set_slice(fd, libc::SOL_TCP, libc::TCP_REPAIR_OPTIONS, &list)
            .map_err(self.io("setsockopt(TCP_REPAIR_OPTIONS)"))
    }

    /// Writes `bytes` into a queue in repair mode: into the receive queue they are as if
    /// received and acknowledged; into the send queue as if sent and not yet acknowledged
    /// (they are retransmitted on timeout). The kernel may refuse a large write (ENOMEM from
    /// `tcp_send_rcvq`, EAGAIN when the send buffer is full): retry smaller, then with a
    /// larger buffer, then give up with [`RestoreError::QueueTooLarge`].
    fn write_queue(&self, fd: RawFd, queue: libc::c_int, bytes: &[u8]) -> Result<(), RestoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (queue_name, buffer_option) = if queue == sys::TCP_RECV_QUEUE {
            ("receive", libc::SO_RCVBUFFORCE)
        } else {
            ("send", libc::SO_SNDBUFFORCE)
        };
        self.select_queue(fd, queue)?;
        let mut chunk = MAX_CHUNK.min(bytes.len());
        let mut grown = false;
        let mut offset = 0;
        while offset < bytes.len() {
            let end = (offset + chunk).min(bytes.len());
            match sys::send(fd, &bytes[offset..end], libc::MSG_DONTWAIT) {
                Ok(0) => {
                    return Err(RestoreError::QueueTooLarge {
                        id: self.id,
                        queue: queue_name,
                        len: bytes.len(),
                    });
                }
                Ok(n) => offset += n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOMEM) | Some(libc::EAGAIN)) => {
                    if chunk > MIN_CHUNK {
                        chunk /= 2;
                    } else if !grown {
                        // The buffer (not the chunk) is too small: size it for the whole queue.
                        grown = true;
                        chunk = MAX_CHUNK.min(bytes.len());
                        sys::force_buffer_for(fd, buffer_option, bytes.len())
                            .map_err(self.io("setsockopt(SO_*BUFFORCE)"))?;
                    } else {
                        return Err(RestoreError::QueueTooLarge {
                            id: self.id,
                            queue: queue_name,
                            len: bytes.len(),
                        });
                    }
                }
                Err(e) => {
                    return Err(RestoreError::Io {
                        id: self.id,
                        step: "send (repair queue)",
                        source: e,
                    });
                }
            }
        }
        self.select_queue(fd, sys::TCP_NO_QUEUE)
    }

    /// `TCP_REPAIR_WINDOW` (kernel ≥ 4.8). With the client's FIN not yet replayed, `rcv_nxt`
    /// is one short of the snapshot's, so `rcv_wup` moves back with it and the window's right
    /// edge stays where it was (libsoccr does the same).
    fn set_window(&self, fd: RawFd) -> Result<(), RestoreError> {
        let w = self.snapshot.window;
        let mut window = TcpRepairWindow {
            snd_wl1: w.snd_wl1,
            snd_wnd: w.snd_wnd,
            max_window: w.max_window.max(w.snd_wnd),
            rcv_wnd: w.rcv_wnd,
            rcv_wup: w.rcv_wup,
        };
        let rcv_nxt = self.restored_rcv_nxt();
        if SeqNumber(window.rcv_wup).is_after(rcv_nxt) {
            let excess = SeqNumber(window.rcv_wup).distance_from(rcv_nxt) as u32;
            window.rcv_wup = rcv_nxt.value();
            window.rcv_wnd = window.rcv_wnd.saturating_add(excess);
        }
        // The kernel refuses an snd_wl1 beyond the right edge of the receive window.
        if SeqNumber(window.snd_wl1).is_after(rcv_nxt.add(window.rcv_wnd)) {
            window.snd_wl1 = rcv_nxt.value();
        }
        sys::set_value(fd, libc::SOL_TCP, libc::TCP_REPAIR_WINDOW, &window)
            .map_err(self.io("setsockopt(TCP_REPAIR_WINDOW)"))
    }

    /// `rcv_nxt` of the restored socket before the client's FIN is replayed.
    fn restored_rcv_nxt(&self) -> SeqNumber {
        let receive = &self.snapshot.receive;
        receive.first_seq().add(receive.bytes.len() as u32)
    }

    /// Half-closed states, in libsoccr's order: the server's FIN first when it was sent first
    /// (FIN-WAIT-1/2, CLOSING), then the client's FIN, then the server's FIN when it came
    /// second (LAST-ACK). A FIN still queued behind unsent bytes is sent after them instead
    /// ([`Self::write_unsent`]).
    fn restore_fins(&self, fd: RawFd) -> Result<(), RestoreError> {
        let state = self.snapshot.state;
        let fin_behind_unsent = self.snapshot.send.unsent > 0;
        if matches!(
            state,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing
        ) && !fin_behind_unsent
        {
            self.restore_server_fin(fd)?;
        }
        if self.snapshot.receive.fin {
            self.replay_client_fin(fd)?;
        }
        if state == TcpState::LastAck && !fin_behind_unsent {
            self.restore_server_fin(fd)?;
        }
        Ok(())
    }

    /// `shutdown(SHUT_WR)` in repair mode queues the FIN. Unacknowledged (FIN-WAIT-1, CLOSING,
    /// LAST-ACK) it is queued with no repair queue selected, so the kernel transmits it at
    /// once (the client takes a duplicate FIN as a retransmission). Acknowledged (FIN-WAIT-2)
    /// it is queued as already sent (send queue selected, nothing transmitted) one sequence
    /// number before `snd_una`: the client's answer to the window probe acknowledges it and the
    /// socket moves to FIN-WAIT-2 by itself.
    fn restore_server_fin(&self, fd: RawFd) -> Result<(), RestoreError> {
        let acked = self.snapshot.state == TcpState::FinWait2;
        if acked {
            self.select_queue(fd, sys::TCP_SEND_QUEUE)?;
        }
        sys::shutdown_write(fd).map_err(self.io("shutdown(SHUT_WR) in repair mode"))?;
        if acked {
            self.select_queue(fd, sys::TCP_NO_QUEUE)?;
        }
        Ok(())
    }

    /// Puts the client's FIN back: a repair socket's receive queue only takes data, so, as
    /// libsoccr does, a FIN+ACK segment "from the client" is built and looped back through the
    /// local stack with a raw socket (the service address must be local). It carries the
    /// client's FIN sequence number, acknowledges `snd_una`, and a timestamp option echoing the
    /// server clock when timestamps are on.
    fn replay_client_fin(&self, fd: RawFd) -> Result<(), RestoreError> {
        let snapshot = self.snapshot;
        let fail = |reason: String| RestoreError::FinReplay {
            id: self.id,
            reason,
        };
        let fin_seq = self.restored_rcv_nxt();
        let mut tcp = etherparse::TcpHeader::new(
            snapshot.id.client.port(),
            snapshot.id.server.port(),
            fin_seq.value(),
            0,
        );
        tcp.fin = true;
        tcp.ack = true;
        tcp.acknowledgment_number = snapshot.send.una.value();
        let shift = snapshot.options.window_scale.map_or(0, |s| s.send);
        tcp.window_size = u16::try_from(snapshot.window.snd_wnd >> shift).unwrap_or(u16::MAX);
        if snapshot.options.timestamps {
            let (echo, _) = sys::get_value::<u32>(fd, libc::SOL_TCP, libc::TCP_TIMESTAMP)
                .map_err(self.io("getsockopt(TCP_TIMESTAMP)"))?;
            let client_tsval = snapshot.clock.map_or(0, |c| c.client_tsval);
            tcp.set_options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(client_tsval, echo),
            ])
            .map_err(|e| fail(format!("timestamp option: {e}")))?;
        }
        let builder = match (snapshot.id.client, snapshot.id.server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                etherparse::PacketBuilder::ipv4(c.ip().octets(), s.ip().octets(), 64)
            }
            (SocketAddr::V6(c), SocketAddr::V6(s)) => {
                etherparse::PacketBuilder::ipv6(c.ip().octets(), s.ip().octets(), 64)
            }
            _ => return Err(fail("address families differ".into())),
        };
        let mut packet = Vec::with_capacity(80);
        builder
            .tcp_header(tcp)
            .write(&mut packet, &[])
            .map_err(|e| fail(format!("building the segment: {e}")))?;
        let raw = sys::raw_ip_socket(&snapshot.id.server).map_err(self.io("socket(SOCK_RAW)"))?;
        let dest = SocketAddr::new(snapshot.id.server.ip(), 0);
        sys::send_to(raw.as_raw_fd(), &packet, &dest)
            .map_err(self.io("sendto (client FIN replay)"))?;
        // Wait (bounded) until the socket has taken the FIN: rcv_nxt moves past it.
        let expected = fin_seq.add(1).value();
        let deadline = StdInstant::now() + FIN_REPLAY_TIMEOUT;
        loop {
            self.select_queue(fd, sys::TCP_RECV_QUEUE)?;
            let rcv_nxt = sys::queue_seq(fd).map_err(self.io("getsockopt(TCP_QUEUE_SEQ)"))?;
            self.select_queue(fd, sys::TCP_NO_QUEUE)?;
            if rcv_nxt == expected {
                return Ok(());
            }
            if StdInstant::now() >= deadline {
                return Err(fail(format!(
                    "the socket did not take the FIN within {FIN_REPLAY_TIMEOUT:?} (is {} a local address?)",
                    snapshot.id.server.ip()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Bytes never sent are written normally, after repair mode (they go out under the
    /// restored window and congestion control). A FIN that was queued behind them follows.
    fn write_unsent(&self, fd: RawFd) -> Result<(), RestoreError> {
        let unsent = self.snapshot.send.unsent_bytes();
        let mut offset = 0;
        let mut grown = false;
        while offset < unsent.len() {
            match sys::send(fd, &unsent[offset..], libc::MSG_DONTWAIT) {
                Ok(n) => offset += n,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && !grown => {
                    // These bytes fitted the original socket's buffer: make this one as large.
                    grown = true;
                    sys::force_buffer_for(fd, libc::SO_SNDBUFFORCE, self.snapshot.send.bytes.len())
                        .map_err(self.io("setsockopt(SO_SNDBUFFORCE)"))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(RestoreError::QueueTooLarge {
                        id: self.id,
                        queue: "send",
                        len: unsent.len(),
                    });
                }
                Err(e) => {
                    return Err(RestoreError::Io {
                        id: self.id,
                        step: "send (unsent bytes)",
                        source: e,
                    });
                }
            }
        }
        if self.snapshot.state.server_fin_sent() && !unsent.is_empty() {
            sys::shutdown_write(fd).map_err(self.io("shutdown(SHUT_WR)"))?;
        }
        Ok(())
    }
}
