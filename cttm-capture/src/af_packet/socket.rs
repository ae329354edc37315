//! The AF_PACKET socket itself: creation, filter, binding, statistics, readiness.

use crate::CaptureError;
use crate::bpf::BpfInstruction;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `ETH_P_ALL` (include/uapi/linux/if_ether.h): every protocol, in network byte order when
/// given to `socket`/`bind`.
const ETH_P_ALL: u16 = 0x0003;

/// Kernel counters of one packet socket since it was opened (`PACKET_STATISTICS`,
/// include/uapi/linux/if_packet.h). The kernel resets its counters at each read; these are
/// the sums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Frames that passed the filter (`tp_packets`, drops included).
    pub packets: u64,
    /// Frames that passed the filter but found no room (`tp_drops`): each one may be a hole
    /// in some connection's stream.
    pub drops: u64,
    /// Times the TPACKET_V3 ring was full and the kernel froze it (`tp_freeze_q_cnt`).
    pub ring_freezes: u64,
}

/// An owned AF_PACKET `SOCK_RAW` socket.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

fn os_error(what: &'static str) -> CaptureError {
    let source = io::Error::last_os_error();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => CaptureError::PermissionDenied { what },
        _ => CaptureError::Io { what, source },
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl PacketSocket {
    /// The index of interface `name` in the calling thread's network namespace.
    pub(crate) fn interface_index(name: &str) -> Result<libc::c_uint, CaptureError> {
        let c_name =
            CString::new(name).map_err(|_| CaptureError::NoSuchInterface(name.to_string()))?;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(CaptureError::NoSuchInterface(name.to_string()));
        }
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if index == 0 {
            return Err(CaptureError::NoSuchInterface(name.to_string()));
        }
        Ok(index)
    }

    /// A packet socket that receives nothing yet (protocol 0 until [`PacketSocket::bind`]),
    /// so no frame can slip in before the filter is attached.
    pub(crate) fn open() -> Result<PacketSocket, CaptureError> {
        // SAFETY: plain socket(2) call; the returned descriptor is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(os_error("opening an AF_PACKET socket"));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The interface's ARPHRD_* hardware type (`SIOCGIFHWADDR`).
    pub(crate) fn hardware_type(&self, name: &str) -> Result<u16, CaptureError> {
        // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: `request` is a valid ifreq with a NUL-terminated name (the name is shorter
        // than IFNAMSIZ, checked by `interface_index`); the kernel writes `ifru_hwaddr`.
        let rc = unsafe { libc::ioctl(self.raw(), libc::SIOCGIFHWADDR, &mut request) };
        if rc < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENODEV) => CaptureError::NoSuchInterface(name.to_string()),
                _ => os_error("reading the interface's hardware type (SIOCGIFHWADDR)"),
            });
        }
        // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
        Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
    }

    /// Attaches a classic BPF program (`SO_ATTACH_FILTER`).
    pub(crate) fn attach_filter(&self, program: &[BpfInstruction]) -> Result<(), CaptureError> {
        let mut filters: Vec<libc::sock_filter> = program
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: u16::try_from(filters.len()).map_err(|_| CaptureError::Io {
                what: "attaching the service filter",
                source: io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"),
            })?,
            filter: filters.as_mut_ptr(),
        };
        setsockopt(self.raw(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog).map_err(|source| {
            CaptureError::Io {
                what: "attaching the service filter (SO_ATTACH_FILTER)",
                source,
            }
        })
    }

    /// Selects the ring format (`PACKET_VERSION`).
    pub(crate) fn set_tpacket_v3(&self) -> io::Result<()> {
        let version: libc::c_int = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(self.raw(), libc::SOL_PACKET, libc::PACKET_VERSION, &version)
    }

    /// Asks for a receive ring (`PACKET_RX_RING`).
    pub(crate) fn set_rx_ring(&self, request: &libc::tpacket_req3) -> io::Result<()> {
        setsockopt(self.raw(), libc::SOL_PACKET, libc::PACKET_RX_RING, request)
    }

    /// Asks for nanosecond receive timestamps in control messages (`SO_TIMESTAMPNS`).
    pub(crate) fn enable_timestamps(&self) -> Result<(), CaptureError> {
        let on: libc::c_int = 1;
        setsockopt(self.raw(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on).map_err(|source| {
            CaptureError::Io {
                what: "enabling receive timestamps (SO_TIMESTAMPNS)",
                source,
            }
        })
    }

    /// Sizes the socket's receive queue: `SO_RCVBUFFORCE` (CAP_NET_ADMIN, ignores
    /// `net.core.rmem_max`), else `SO_RCVBUF`.
    pub(crate) fn set_receive_buffer(&self, bytes: usize) -> Result<(), CaptureError> {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        setsockopt(self.raw(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size)
            .or_else(|_| setsockopt(self.raw(), libc::SOL_SOCKET, libc::SO_RCVBUF, &size))
            .map_err(|source| CaptureError::Io {
                what: "sizing the receive queue (SO_RCVBUF)",
                source,
            })
    }

    /// Binds to one interface, all protocols: from here on frames arrive.
    pub(crate) fn bind(&self, ifindex: libc::c_uint) -> Result<(), CaptureError> {
        // SAFETY: `sockaddr_ll` is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                self.raw(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENODEV) => CaptureError::NoSuchInterface(format!("index {ifindex}")),
                _ => os_error("binding the AF_PACKET socket to the interface"),
            });
        }
        Ok(())
    }

    /// Reads (and so resets) the kernel's counters (`PACKET_STATISTICS`): the V3 layout when
    /// the socket uses TPACKET_V3, else the shorter one, whose freeze count stays 0.
    pub(crate) fn take_statistics(&self) -> io::Result<KernelCounters> {
        let mut stats = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes; the kernel writes at most `len` bytes
        // and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.raw(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelCounters {
            packets: u64::from(stats.tp_packets),
            drops: u64::from(stats.tp_drops),
            ring_freezes: u64::from(stats.tp_freeze_q_cnt),
        })
    }

    /// Waits until the socket is readable or `timeout` passes. Returns false on timeout.
    pub(crate) fn wait_readable(&self, timeout: Duration) -> Result<bool, CaptureError> {
        let mut pfd = libc::pollfd {
            fd: self.raw(),
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // Round up so a sub-millisecond timeout still waits instead of spinning.
        let millis = timeout
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        // SAFETY: `pfd` is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(CaptureError::Io {
                what: "waiting for frames (poll)",
                source,
            });
        }
        Ok(rc > 0)
    }
}
