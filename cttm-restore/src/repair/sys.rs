//! Raw kernel interface of `TCP_REPAIR`: the constants and structures the `libc` crate lacks
//! (each cited to its kernel header) and thin, safe wrappers around the system calls. Every
//! `unsafe` block of the crate lives here.

use libc::{c_int, c_void, socklen_t};
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// include/uapi/linux/tcp.h: values of the TCP_REPAIR option.
/// `TCP_REPAIR_ON`: enter repair mode.
pub(crate) const TCP_REPAIR_ON: c_int = 1;
/// `TCP_REPAIR_OFF`: leave repair mode and send a window probe (the peer answers at once).
pub(crate) const TCP_REPAIR_OFF: c_int = 0;
/// `TCP_REPAIR_OFF_NO_WP`: leave repair mode without a window probe.
pub(crate) const TCP_REPAIR_OFF_NO_WP: c_int = -1;

// include/uapi/linux/tcp.h: queue ids of TCP_REPAIR_QUEUE.
/// `TCP_NO_QUEUE`.
pub(crate) const TCP_NO_QUEUE: c_int = 0;
/// `TCP_RECV_QUEUE`.
pub(crate) const TCP_RECV_QUEUE: c_int = 1;
/// `TCP_SEND_QUEUE`.
pub(crate) const TCP_SEND_QUEUE: c_int = 2;

// include/net/tcp.h: option kinds accepted by TCP_REPAIR_OPTIONS.
/// `TCPOPT_MSS`.
pub(crate) const TCPOPT_MAXSEG: u32 = 2;
/// `TCPOPT_WINDOW`.
pub(crate) const TCPOPT_WINDOW: u32 = 3;
/// `TCPOPT_SACK_PERM`.
pub(crate) const TCPOPT_SACK_PERM: u32 = 4;
/// `TCPOPT_TIMESTAMP`.
pub(crate) const TCPOPT_TIMESTAMP: u32 = 8;

// include/uapi/linux/tcp.h: bits of tcp_info.tcpi_options.
/// `TCPI_OPT_TIMESTAMPS`.
pub(crate) const TCPI_OPT_TIMESTAMPS: u8 = 1;
/// `TCPI_OPT_SACK`.
pub(crate) const TCPI_OPT_SACK: u8 = 2;
/// `TCPI_OPT_WSCALE`.
pub(crate) const TCPI_OPT_WSCALE: u8 = 4;

// include/uapi/linux/sockios.h: SIOCINQ is FIONREAD, SIOCOUTQ is TIOCOUTQ.
/// `SIOCOUTQNSD`: bytes in the send queue not yet sent.
pub(crate) const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// `struct tcp_repair_opt` (include/uapi/linux/tcp.h).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct TcpRepairOpt {
    /// A `TCPOPT_*` kind.
    pub(crate) opt_code: u32,
    /// Its value.
    pub(crate) opt_val: u32,
}

/// `struct tcp_repair_window` (include/uapi/linux/tcp.h).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TcpRepairWindow {
    pub(crate) snd_wl1: u32,
    pub(crate) snd_wnd: u32,
    pub(crate) max_window: u32,
    pub(crate) rcv_wnd: u32,
    pub(crate) rcv_wup: u32,
}

/// Kernel TCP states (include/net/tcp_states.h).
pub(crate) mod state {
    pub(crate) const ESTABLISHED: u8 = 1;
    pub(crate) const FIN_WAIT1: u8 = 4;
    pub(crate) const FIN_WAIT2: u8 = 5;
    pub(crate) const CLOSE_WAIT: u8 = 8;
    pub(crate) const LAST_ACK: u8 = 9;
    pub(crate) const CLOSING: u8 = 11;
}

/// Converts a `-1` return into the thread's `errno`.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Creates a close-on-exec socket of `addr`'s family.
fn socket_for(addr: &SocketAddr, kind: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() takes no pointers; a non-negative return is a fresh descriptor we own.
    let fd = check(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a blocking TCP socket of `addr`'s family, close-on-exec.
pub(crate) fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    socket_for(addr, libc::SOCK_STREAM, 0)
}

/// Creates a raw socket that sends whole IP packets (header included) of `addr`'s family.
pub(crate) fn raw_ip_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket_for(addr, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
    if addr.is_ipv6() {
        // IPPROTO_RAW implies IP_HDRINCL for IPv4 (raw(7)); IPv6 wants it explicitly.
        set_int(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, 1)?;
    }
    Ok(fd)
}

/// `TCP_REPAIR` set to `mode` ([`TCP_REPAIR_ON`], [`TCP_REPAIR_OFF`] or
/// [`TCP_REPAIR_OFF_NO_WP`]).
pub(crate) fn set_repair(fd: RawFd, mode: c_int) -> io::Result<()> {
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR, mode)
}

/// `TCP_REPAIR_QUEUE`: selects the queue later queue reads, writes and `TCP_QUEUE_SEQ` act on
/// ([`TCP_NO_QUEUE`], [`TCP_RECV_QUEUE`], [`TCP_SEND_QUEUE`]).
pub(crate) fn select_repair_queue(fd: RawFd, queue: c_int) -> io::Result<()> {
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, queue)
}

/// `getsockopt(TCP_QUEUE_SEQ)` of the selected queue: `write_seq` of the send queue,
/// `rcv_nxt` of the receive queue.
pub(crate) fn queue_seq(fd: RawFd) -> io::Result<u32> {
    get_value::<u32>(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ).map(|(seq, _)| seq)
}

/// `setsockopt(TCP_QUEUE_SEQ)` of the selected queue (before connect only: EPERM after).
pub(crate) fn set_queue_seq(fd: RawFd, seq: u32) -> io::Result<()> {
    set_value(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &seq)
}

/// `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` (`option`) sized for `bytes` of payload: twice as much,
/// with room for skb overhead (the kernel doubles the value it is given on top).
pub(crate) fn force_buffer_for(fd: RawFd, option: c_int, bytes: usize) -> io::Result<()> {
    let size = c_int::try_from(bytes.saturating_mul(2)).unwrap_or(c_int::MAX);
    set_int(fd, libc::SOL_SOCKET, option, size)
}

/// `setsockopt` with a plain value.
pub(crate) fn set_value<T: Copy>(
    fd: RawFd,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of exactly `size_of::<T>()` bytes for the call; the
    // kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast::<c_void>(),
            size_of::<T>() as socklen_t,
        )
    })?;
    Ok(())
}

/// `setsockopt` with an int.
pub(crate) fn set_int(fd: RawFd, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    set_value(fd, level, name, &value)
}

/// `setsockopt` with an array of values.
pub(crate) fn set_slice<T: Copy>(
    fd: RawFd,
    level: c_int,
    name: c_int,
    values: &[T],
) -> io::Result<()> {
    // SAFETY: the slice is live and `size_of_val(values)` bytes long; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            values.as_ptr().cast::<c_void>(),
            size_of_val(values) as socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt` into a plain-old-data `T` (every bit pattern valid: integers and the C structs
/// above or `libc::tcp_info`). Returns the value and the length the kernel wrote.
pub(crate) fn get_value<T: Copy>(fd: RawFd, level: c_int, name: c_int) -> io::Result<(T, usize)> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: `value` has room for `len` bytes and `len` is a live socklen_t; the kernel writes
    // at most `len` bytes.
    check(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            value.as_mut_ptr().cast::<c_void>(),
            &mut len,
        )
    })?;
    // SAFETY: zero-initialised above and `T` is plain old data, so every byte pattern
    // (including bytes the kernel did not write) is a valid `T`.
    Ok((unsafe { value.assume_init() }, len as usize))
}

/// `getsockopt(TCP_INFO)`: the kernel's `struct tcp_info` of a TCP socket (any state; no
/// repair mode or capability needed).
pub(crate) fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // `libc::tcp_info` is plain integers (every bit pattern valid), as `get_value` requires; an
    // older kernel that writes a shorter struct leaves the remaining fields zero.
    let (info, _) = get_value::<libc::tcp_info>(fd, libc::SOL_TCP, libc::TCP_INFO)?;
    Ok(info)
}

/// An ioctl that returns an int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub(crate) fn ioctl_int(fd: RawFd, request: libc::Ioctl) -> io::Result<usize> {
    let mut value: c_int = 0;
    // SAFETY: these requests write one int through the pointer, which is live.
    check(unsafe { libc::ioctl(fd, request, &mut value as *mut c_int) })?;
    Ok(usize::try_from(value).unwrap_or(0))
}

/// `send` with flags; returns the bytes accepted.
pub(crate) fn send(fd: RawFd, data: &[u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: the buffer is live for `data.len()` bytes; the kernel only reads it.
    check_size(unsafe {
        libc::send(
            fd,
            data.as_ptr().cast::<c_void>(),
            data.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    })
}

/// `recv` with flags into `buf`; returns the bytes written.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
    // SAFETY: the buffer is live and writable for `buf.len()` bytes.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast::<c_void>(), buf.len(), flags) })
}

/// `sendto` of a whole packet to `dest`.
pub(crate) fn send_to(fd: RawFd, packet: &[u8], dest: &SocketAddr) -> io::Result<usize> {
    let (storage, len) = sockaddr(dest);
    // SAFETY: packet and storage are live; `len` is the initialised size of the address.
    check_size(unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast::<c_void>(),
            packet.len(),
            libc::MSG_NOSIGNAL,
            (&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    })
}

/// `bind`.
pub(crate) fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage is live and holds a valid address of `len` bytes.
    check(unsafe {
        libc::bind(
            fd,
            (&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    Ok(())
}

/// `connect` (in repair mode this sends nothing and moves the socket to ESTABLISHED).
pub(crate) fn connect(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: as in bind.
    check(unsafe {
        libc::connect(
            fd,
            (&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    })?;
    Ok(())
}

/// `connect(AF_UNSPEC)`: the kernel disconnects the socket itself (`tcp_disconnect`) however
/// many descriptors refer to it (a child process between fork and exec may hold a copy).
pub(crate) fn disconnect(fd: RawFd) -> io::Result<()> {
    // SAFETY: sockaddr is plain old data; all-zero is AF_UNSPEC.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` is live and `size_of::<sockaddr>()` bytes long.
    check(unsafe { libc::connect(fd, &addr, size_of::<libc::sockaddr>() as socklen_t) })?;
    Ok(())
}

/// `shutdown(SHUT_WR)`.
pub(crate) fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) })?;
    Ok(())
}

/// Attaches a classic BPF filter that drops every incoming segment (`ret #0`): the kernel runs
/// socket filters in `tcp_v4_rcv`/`tcp_v6_rcv` before TCP processing, so the socket's state
/// stops changing (a per-socket equivalent of CRIU's network lock).
pub(crate) fn attach_drop_all_filter(fd: RawFd) -> io::Result<()> {
    let mut instructions = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: instructions.as_mut_ptr(),
    };
    set_value(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
}

/// Removes the filter of [`attach_drop_all_filter`].
pub(crate) fn detach_filter(fd: RawFd) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, 0)
}

/// Reads CLOCK_MONOTONIC in microseconds.
pub(crate) fn monotonic_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1000
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            (storage, size_of::<libc::sockaddr_in>() as socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            (storage, size_of::<libc::sockaddr_in6>() as socklen_t)
        }
    }
}
