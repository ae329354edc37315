//! The plain receive path: one `recvmsg` (recvfrom plus the timestamp control message) per
//! frame into one reusable buffer. Slower than the ring (a system call and a copy per frame)
//! but works wherever AF_PACKET does.

use super::Frame;
use super::socket::PacketSocket;
use crate::CaptureError;
use std::io;

/// Room for the `SCM_TIMESTAMPNS` control message (a `cmsghdr` and a `timespec`), 8-byte
/// aligned.
#[repr(C, align(8))]
struct ControlBuffer([u8; 64]);

/// The reusable receive buffer.
#[derive(Debug)]
pub(crate) struct Receiver {
    buffer: Vec<u8>,
}

/// What one receive attempt gave.
pub(crate) enum Received {
    /// A frame was visited.
    Frame,
    /// Nothing is waiting.
    Empty,
}

impl Receiver {
    /// A receiver whose frames are cut at `capacity` bytes.
    pub(crate) fn new(capacity: usize) -> Receiver {
        Receiver {
            buffer: vec![0; capacity.max(2048)],
        }
    }

    /// Receives one frame without waiting and visits it.
    pub(crate) fn receive_one(
        &mut self,
        socket: &PacketSocket,
        visit: &mut dyn FnMut(Frame<'_>),
    ) -> Result<Received, CaptureError> {
        // SAFETY: plain old data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = ControlBuffer([0; 64]);
        let mut iov = libc::iovec {
            iov_base: self.buffer.as_mut_ptr().cast(),
            iov_len: self.buffer.len(),
        };
        // SAFETY: plain old data; all-zero is a valid value.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_name = (&mut address as *mut libc::sockaddr_ll).cast();
        header.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.0.as_mut_ptr().cast();
        header.msg_controllen = control.0.len() as _;
        // SAFETY: every pointer in `header` refers to a live buffer of the stated length.
        let n = unsafe {
            libc::recvmsg(
                socket.raw(),
                &mut header,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let source = io::Error::last_os_error();
            return match source.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(Received::Empty),
                _ => Err(CaptureError::Io {
                    what: "receiving a frame (recvmsg)",
                    source,
                }),
            };
        }
        // MSG_TRUNC makes `n` the frame's real length; hand out what fits (the parser reports
        // a cut frame as truncated, never as a shorter segment).
        let len = (n as usize).min(self.buffer.len());
        let (sec, nsec) = timestamp(&header).unwrap_or_else(now);
        visit(Frame {
            sec,
            nsec,
            packet_type: address.sll_pkttype,
            hardware_type: address.sll_hatype,
            data: &self.buffer[..len],
        });
        Ok(Received::Frame)
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, if present.
fn timestamp(header: &libc::msghdr) -> Option<(u64, u64)> {
    // SAFETY: `header` was filled by recvmsg; the CMSG_* helpers walk its control buffer
    // within `msg_controllen`, and the timespec is read unaligned from inside it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                return Some((
                    u64::try_from(ts.tv_sec).ok()?,
                    u64::try_from(ts.tv_nsec).ok()?,
                ));
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// The wall clock, for the rare frame without a kernel timestamp.
fn now() -> (u64, u64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), u64::from(d.subsec_nanos()))
}
