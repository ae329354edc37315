//! A send-only `AF_PACKET` socket bound to one interface, for announcement frames.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A raw packet socket bound to one interface; frames written to it go out on that
/// interface as they are (Ethernet header included).
#[derive(Debug)]
pub(crate) struct PacketSender {
    fd: OwnedFd,
}

impl PacketSender {
    /// Opens the socket in the calling thread's network namespace and binds it to the
    /// interface `index`. Protocol 0: the socket receives nothing, it only sends.
    pub(crate) fn bind(index: u32) -> io::Result<PacketSender> {
        let index =
            i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket(2) call with constant arguments; the result is checked below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as libc::c_ushort;
        address.sll_protocol = 0;
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
        Ok(PacketSender { fd })
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
        if sent as usize != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "frame sent only in part",
            ));
        }
        Ok(())
    }
}
