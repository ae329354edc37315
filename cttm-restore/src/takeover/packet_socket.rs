//! An `AF_PACKET` socket bound to one interface and one Ethernet protocol: it sends complete
//! frames (announcements, probes) and receives the frames of that protocol (optionally
//! narrowed by a classic BPF filter in the kernel), with a bounded wait. Bound to protocol 0
//! it only sends.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// One received frame's length and packet type (`PACKET_HOST`, `PACKET_OUTGOING`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// Bytes written into the buffer (a longer frame is cut to the buffer).
    pub(crate) len: usize,
    /// `sll_pkttype` of the frame.
    pub(crate) packet_type: u8,
}

/// A raw packet socket on one interface: frames written to it go out as they are (Ethernet
/// header included); it receives the frames of one Ethernet protocol (none for protocol 0).
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket in the calling thread's network namespace, attaches `filter` (if not
    /// empty) and binds it to interface `index` and Ethernet `protocol` (host order). The
    /// socket is created with protocol 0, so it receives nothing until the bind: no frame of
    /// another interface or protocol is ever queued (packet(7)).
    pub(crate) fn bind(
        index: u32,
        protocol: u16,
        filter: &[libc::sock_filter],
    ) -> io::Result<PacketSocket> {
        let index =
            i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if !filter.is_empty() {
            let program = libc::sock_fprog {
                len: u16::try_from(filter.len())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
                // The kernel copies the program and never writes through this pointer.
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `fd` is a live socket; `program` is an initialised sock_fprog whose
            // pointer and length describe the borrowed `filter` slice, alive for the call.
            let result = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    (&program as *const libc::sock_fprog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
                )
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = protocol.to_be();
        address.sll_ifindex = index;
        // SAFETY: `fd` is a live packet socket; the address points to an initialised
        // sockaddr_ll whose exact size is passed.
        let result = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Sends one complete Ethernet frame.
    pub(crate) fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `fd` is a live bound packet socket; the pointer and length describe the
        // borrowed `frame` slice, which outlives the call.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        if usize::try_from(sent).ok() != Some(frame.len()) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "frame sent only in part",
            ));
        }
        Ok(())
    }

    /// Receives one frame into `buffer`, waiting at most `timeout` (zero: do not wait).
    /// `None` when nothing arrived in time.
    pub(crate) fn receive(
        &self,
        buffer: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<Received>> {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a wait of a few microseconds does not become a busy loop of zero waits.
        let millis = timeout.as_micros().div_ceil(1000);
        let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
        // SAFETY: `poll` is one initialised pollfd on a live descriptor, and 1 is its count.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(error)
            };
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `fd` is live; the buffer pointer and length describe the borrowed mutable
        // `buffer`; `from` and `from_len` are initialised and sized for a sockaddr_ll, which
        // is what an AF_PACKET socket writes there.
        let received = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(Received {
            len: usize::try_from(received).unwrap_or(0).min(buffer.len()),
            packet_type: from.sll_pkttype,
        }))
    }

    /// Discards every frame already queued (at most `limit`), so that what is received next
    /// arrived after this call. Returns how many were discarded.
    pub(crate) fn drain(&self, buffer: &mut [u8], limit: usize) -> io::Result<usize> {
        let mut drained = 0;
        while drained < limit && self.receive(buffer, Duration::ZERO)?.is_some() {
            drained += 1;
        }
        Ok(drained)
    }
}
