//! A small synchronous rtnetlink client: look an interface up, add and delete an address.
//!
//! One request at a time, each with its own sequence number, each waiting for the kernel's
//! answer (an acknowledgement, an error, or the requested object). The socket lives in the
//! network namespace of the thread that opened it, wherever it is used afterwards.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

/// How long one request waits for the kernel's answer before giving up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer for answers (one link message with all its attributes fits easily).
const ANSWER_BUFFER: usize = 64 * 1024;

/// How a request failed, before it is turned into an operation's own error.
#[derive(Debug)]
pub(crate) enum NetlinkFailure {
    /// The kernel answered with this errno (positive).
    Errno(i32),
    /// Sending, receiving or decoding failed.
    Transport(io::Error),
}

impl NetlinkFailure {
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            NetlinkFailure::Errno(errno) => io::Error::from_raw_os_error(errno),
            NetlinkFailure::Transport(e) => e,
        }
    }
}

/// What the kernel says about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub(crate) index: u32,
    pub(crate) mac: Option<[u8; 6]>,
}

/// An rtnetlink socket, connected to the kernel.
#[derive(Debug)]
pub(crate) struct RouteSocket {
    socket: Socket,
    next_sequence: u32,
}

impl RouteSocket {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
        Ok(RouteSocket {
            socket,
            next_sequence: 1,
        })
    }

    /// Looks an interface up by name (`RTM_GETLINK` with `IFLA_IFNAME`).
    pub(crate) fn link_by_name(&mut self, name: &str) -> Result<LinkInfo, NetlinkFailure> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let answer = self.request(RouteNetlinkMessage::GetLink(message), NLM_F_REQUEST)?;
        match answer {
            Some(RouteNetlinkMessage::NewLink(link)) => {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                    _ => None,
                });
                Ok(LinkInfo {
                    index: link.header.index,
                    mac,
                })
            }
            _ => Err(NetlinkFailure::Transport(io::Error::new(
                io::ErrorKind::InvalidData,
                "the kernel answered RTM_GETLINK without a link message",
            ))),
        }
    }

    /// Adds `address/prefix_len` to interface `index` (`RTM_NEWADDR`, create, exclusive).
    /// IPv6 addresses get `IFA_F_NODAD`: usable at once, no duplicate address detection.
    pub(crate) fn add_address(
        &mut self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkFailure> {
        let message = address_message(index, address, prefix_len);
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    /// Deletes `address/prefix_len` from interface `index` (`RTM_DELADDR`).
    pub(crate) fn delete_address(
        &mut self,
        index: u32,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkFailure> {
        let message = address_message(index, address, prefix_len);
        self.request(
            RouteNetlinkMessage::DelAddress(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(|_| ())
    }

    /// Sends one request and waits for its answer: `Ok(None)` for an acknowledgement,
    /// `Ok(Some(..))` for an object, `Err(Errno)` for a kernel error.
    fn request(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Option<RouteNetlinkMessage>, NetlinkFailure> {
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(NetlinkFailure::Transport)?;

        let mut buffer = vec![0u8; ANSWER_BUFFER];
        // Bounded: each recv waits at most ANSWER_TIMEOUT, and messages for other sequence
        // numbers (none are expected on this private socket) are skipped at most this often.
        for _ in 0..64 {
            let received = self
                .socket
                .recv(&mut &mut buffer[..], 0)
                .map_err(NetlinkFailure::Transport)?;
            let mut offset = 0;
            while offset < received.min(buffer.len()) {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buffer[offset..received])
                        .map_err(|e| {
                        NetlinkFailure::Transport(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e.to_string(),
                        ))
                    })?;
                let length = message.header.length as usize;
                if message.header.sequence_number == sequence {
                    return match message.payload {
                        NetlinkPayload::Error(e) => match e.code {
                            None => Ok(None),
                            Some(code) => Err(NetlinkFailure::Errno(code.get().saturating_abs())),
                        },
                        NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                        NetlinkPayload::Done(_) => Ok(None),
                        _ => Err(NetlinkFailure::Transport(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "unexpected netlink answer",
                        ))),
                    };
                }
                if length == 0 {
                    break;
                }
                // Netlink messages are 4-byte aligned (NLMSG_ALIGN).
                offset += (length + 3) & !3;
            }
        }
        Err(NetlinkFailure::Transport(io::Error::new(
            io::ErrorKind::TimedOut,
            "no netlink answer to our request",
        )))
    }
}

fn address_message(index: u32, address: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    // IFA_LOCAL is the interface's own address, IFA_ADDRESS the prefix (peer) address; for a
    // broadcast interface both are the address itself, as `ip addr add` sends them.
    message.attributes.push(AddressAttribute::Local(address));
    message.attributes.push(AddressAttribute::Address(address));
    if address.is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    message
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let timeval = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    let fd = socket.as_fd();
    // SAFETY: `fd` is a live socket borrowed for the call; the option value points to a
    // properly initialised `timeval` whose exact size is passed, as SO_RCVTIMEO expects.
    let result = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeval as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
