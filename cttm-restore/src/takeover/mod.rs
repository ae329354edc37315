//! Address takeover on Linux: claim a service address on an interface over rtnetlink, tell
//! the neighbours where it lives now, and release it again.
//!
//! [`NetlinkTakeover`] is opened on one interface *in the calling thread's network
//! namespace*: its rtnetlink and `AF_PACKET` sockets are created there and keep acting there
//! wherever the value is used afterwards. Every operation is synchronous (no runtime, no `ip`
//! subprocess) and needs `CAP_NET_ADMIN` (address changes) and `CAP_NET_RAW` (announcements).
//!
//! # Idempotence
//!
//! - [`NetlinkTakeover::claim_address`] of an address the interface already carries with the
//!   same prefix length succeeds with [`ClaimOutcome::AlreadyPresent`]: retrying a takeover
//!   after a partial failure is safe. (Whether *another host* uses the address cannot be seen
//!   from here; RFC 5227 probing would, and a takeover deliberately skips it.)
//! - [`NetlinkTakeover::release_address`] of an address the interface does not carry succeeds
//!   with [`ReleaseOutcome::WasAbsent`].
//!
//! # Announcements
//!
//! After a claim, [`NetlinkTakeover::announce_address`] sends [`AnnounceConfig::count`]
//! frames, [`AnnounceConfig::interval`] apart, the first at once: RFC 5227 §2.3 ARP
//! announcements for IPv4, RFC 4861 §7.2.6 unsolicited neighbour advertisements for IPv6
//! (see [`frames`]). IPv6 addresses are added with `IFA_F_NODAD`, so they are usable at once
//! instead of staying tentative for the duplicate address detection time.

pub mod frames;
mod packet_socket;
pub mod probe;
mod rtnetlink;

use packet_socket::PacketSocket;
use rtnetlink::{NetlinkFailure, RouteSocket};
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// How many announcement frames to send and how far apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// Frames per announcement (at least 1; 0 is treated as 1). Several cover a lost frame.
    pub count: u32,
    /// Time between two frames. RFC 5227 §1.1 uses 2 s (`ANNOUNCE_INTERVAL`) for a host
    /// that just configured an address; a takeover wants the neighbours to switch at once,
    /// so the default is much shorter (the first frame is always sent immediately).
    pub interval: Duration,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            count: 3,
            interval: Duration::from_millis(50),
        }
    }
}

/// What [`NetlinkTakeover::claim_address`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The address was added to the interface.
    Added,
    /// The interface already carried the address with this prefix length; nothing changed.
    AlreadyPresent,
}

/// What [`NetlinkTakeover::release_address`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The address was removed from the interface.
    Removed,
    /// The interface did not carry the address; nothing changed.
    WasAbsent,
}

/// Opening a [`NetlinkTakeover`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No interface of that name in this network namespace.
    #[error(
        "interface {interface:?} does not exist in this network namespace; check the name with `ip link`"
    )]
    InterfaceNotFound {
        /// The name asked for.
        interface: String,
    },
    /// The interface has no Ethernet (6-byte) hardware address, so ARP / neighbour
    /// advertisements cannot name it.
    #[error(
        "interface {interface:?} has no Ethernet hardware address; address takeover needs an Ethernet-like interface"
    )]
    NoHardwareAddress {
        /// The interface.
        interface: String,
    },
    /// The process lacks the capability to open raw packet sockets or talk rtnetlink.
    #[error("permission denied opening {what}; run as root or grant CAP_NET_ADMIN and CAP_NET_RAW")]
    PermissionDenied {
        /// Which socket.
        what: &'static str,
    },
    /// The rtnetlink socket could not be opened or the interface lookup failed otherwise.
    #[error("rtnetlink lookup of interface {interface:?} failed: {source}")]
    Netlink {
        /// The interface.
        interface: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The `AF_PACKET` socket for announcements could not be opened.
    #[error("opening the AF_PACKET socket on {interface:?} failed: {source}")]
    PacketSocket {
        /// The interface.
        interface: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Adding the address failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The prefix length is longer than the address (32 for IPv4, 128 for IPv6).
    #[error("prefix length /{prefix_len} is too long for {address}; use at most /{max}")]
    PrefixTooLong {
        /// The address.
        address: IpAddr,
        /// The prefix length given.
        prefix_len: u8,
        /// The longest allowed.
        max: u8,
    },
    /// The interface disappeared since the takeover was opened.
    #[error(
        "interface {interface:?} no longer exists; re-create it or open the takeover on another interface"
    )]
    InterfaceGone {
        /// The interface.
        interface: String,
    },
    /// The kernel refused: the process lacks `CAP_NET_ADMIN` in this network namespace.
    #[error("adding {address} needs CAP_NET_ADMIN; run as root or grant the capability")]
    PermissionDenied {
        /// The address.
        address: IpAddr,
    },
    /// Any other kernel or transport error.
    #[error("adding {address}/{prefix_len} on {interface:?} failed: {source}")]
    Kernel {
        /// The address.
        address: IpAddr,
        /// The prefix length.
        prefix_len: u8,
        /// The interface.
        interface: String,
        /// The underlying error (errno from the kernel).
        source: io::Error,
    },
}

/// Removing the address failed.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The interface disappeared since the takeover was opened.
    #[error("interface {interface:?} no longer exists; its addresses went with it")]
    InterfaceGone {
        /// The interface.
        interface: String,
    },
    /// The kernel refused: the process lacks `CAP_NET_ADMIN` in this network namespace.
    #[error("removing {address} needs CAP_NET_ADMIN; run as root or grant the capability")]
    PermissionDenied {
        /// The address.
        address: IpAddr,
    },
    /// Any other kernel or transport error.
    #[error("removing {address}/{prefix_len} from {interface:?} failed: {source}")]
    Kernel {
        /// The address.
        address: IpAddr,
        /// The prefix length.
        prefix_len: u8,
        /// The interface.
        interface: String,
        /// The underlying error (errno from the kernel).
        source: io::Error,
    },
}

/// Sending an announcement failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// Sending a frame failed (interface down, no buffer space...).
    #[error(
        "sending the announcement of {address} on {interface:?} failed after {sent} frame(s): {source}; check that the interface is up"
    )]
    Send {
        /// The announced address.
        address: IpAddr,
        /// The interface.
        interface: String,
        /// Frames sent before the failure.
        sent: u32,
        /// The underlying error.
        source: io::Error,
    },
}

/// Address takeover on one Linux interface over rtnetlink, with announcements on an
/// `AF_PACKET` socket. See the [module documentation](self).
#[derive(Debug)]
pub struct NetlinkTakeover {
    interface: String,
    index: u32,
    mac: [u8; 6],
    route: RouteSocket,
    packets: PacketSocket,
    announce: AnnounceConfig,
}

impl NetlinkTakeover {
    /// Opens a takeover on `interface` in the calling thread's network namespace, with the
    /// default [`AnnounceConfig`].
    pub fn open(interface: &str) -> Result<NetlinkTakeover, OpenError> {
        let permission = |what| OpenError::PermissionDenied { what };
        let mut route = RouteSocket::open().map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => permission("an rtnetlink socket"),
            _ => OpenError::Netlink {
                interface: interface.to_string(),
                source,
            },
        })?;
        let link = route
            .link_by_name(interface)
            .map_err(|failure| match failure {
                NetlinkFailure::Errno(libc::ENODEV) => OpenError::InterfaceNotFound {
                    interface: interface.to_string(),
                },
                NetlinkFailure::Errno(libc::EPERM | libc::EACCES) => {
                    permission("an rtnetlink socket")
                }
                other => OpenError::Netlink {
                    interface: interface.to_string(),
                    source: other.into_io(),
                },
            })?;
        let mac = link.mac.ok_or_else(|| OpenError::NoHardwareAddress {
            interface: interface.to_string(),
        })?;
        let packets = PacketSocket::bind(link.index, 0, &[]).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => permission("an AF_PACKET socket"),
                _ => OpenError::PacketSocket {
                    interface: interface.to_string(),
                    source,
                },
            }
        })?;
        Ok(NetlinkTakeover {
            interface: interface.to_string(),
            index: link.index,
            mac,
            route,
            packets,
            announce: AnnounceConfig::default(),
        })
    }

    /// Uses `config` for later announcements.
    pub fn with_announce_config(mut self, config: AnnounceConfig) -> NetlinkTakeover {
        self.announce = config;
        self
    }

    /// The announcement settings in use.
    pub fn announce_config(&self) -> AnnounceConfig {
        self.announce
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn interface_index(&self) -> u32 {
        self.index
    }

    /// The interface's hardware address, which the announcements advertise.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Adds `address/prefix_len` to the interface (IPv6 with `IFA_F_NODAD`). Does not
    /// announce it: call [`NetlinkTakeover::announce_address`] once the address should
    /// receive traffic.
    pub fn claim_address(
        &mut self,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<ClaimOutcome, ClaimError> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(ClaimError::PrefixTooLong {
                address,
                prefix_len,
                max,
            });
        }
        match self.route.add_address(self.index, address, prefix_len) {
            Ok(()) => Ok(ClaimOutcome::Added),
            Err(NetlinkFailure::Errno(libc::EEXIST)) => Ok(ClaimOutcome::AlreadyPresent),
            Err(NetlinkFailure::Errno(libc::ENODEV)) => Err(ClaimError::InterfaceGone {
                interface: self.interface.clone(),
            }),
            Err(NetlinkFailure::Errno(libc::EPERM | libc::EACCES)) => {
                Err(ClaimError::PermissionDenied { address })
            }
            Err(other) => Err(ClaimError::Kernel {
                address,
                prefix_len,
                interface: self.interface.clone(),
                source: other.into_io(),
            }),
        }
    }

    /// Removes `address/prefix_len` from the interface. Established sockets using it are
    /// left alone by the kernel; packets for it are no longer delivered to this host.
    pub fn release_address(
        &mut self,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<ReleaseOutcome, ReleaseError> {
        match self.route.delete_address(self.index, address, prefix_len) {
            Ok(()) => Ok(ReleaseOutcome::Removed),
            Err(NetlinkFailure::Errno(libc::EADDRNOTAVAIL)) => Ok(ReleaseOutcome::WasAbsent),
            Err(NetlinkFailure::Errno(libc::ENODEV)) => Err(ReleaseError::InterfaceGone {
                interface: self.interface.clone(),
            }),
            Err(NetlinkFailure::Errno(libc::EPERM | libc::EACCES)) => {
                Err(ReleaseError::PermissionDenied { address })
            }
            Err(other) => Err(ReleaseError::Kernel {
                address,
                prefix_len,
                interface: self.interface.clone(),
                source: other.into_io(),
            }),
        }
    }

    /// Announces that `address` now lives at this interface's MAC: [`AnnounceConfig::count`]
    /// frames, the first at once, then one every [`AnnounceConfig::interval`] (this call
    /// sleeps in between). Returns the number of frames sent.
    pub fn announce_address(&self, address: IpAddr) -> Result<u32, AnnounceError> {
        let frame = match address {
            IpAddr::V4(v4) => frames::arp_announcement(self.mac, v4),
            IpAddr::V6(v6) => frames::unsolicited_neighbour_advertisement(self.mac, v6),
        };
        let count = self.announce.count.max(1);
        for sent in 0..count {
            if sent > 0 {
                std::thread::sleep(self.announce.interval);
            }
            self.packets
                .send(&frame)
                .map_err(|source| AnnounceError::Send {
                    address,
                    interface: self.interface.clone(),
                    sent,
                    source,
                })?;
        }
        Ok(count)
    }
}

impl From<ClaimError> for crate::TakeoverError {
    fn from(error: ClaimError) -> Self {
        match error {
            ClaimError::PrefixTooLong {
                address,
                prefix_len,
                ..
            } => crate::TakeoverError::InvalidPrefix {
                addr: address,
                prefix_len,
            },
            ClaimError::InterfaceGone { interface } => {
                crate::TakeoverError::InterfaceNotFound { name: interface }
            }
            ClaimError::PermissionDenied { .. } => crate::TakeoverError::PermissionDenied {
                operation: "claiming the service address",
            },
            ClaimError::Kernel { source, .. } => crate::TakeoverError::Netlink {
                operation: "RTM_NEWADDR",
                source,
            },
        }
    }
}

impl From<ReleaseError> for crate::TakeoverError {
    fn from(error: ReleaseError) -> Self {
        match error {
            ReleaseError::InterfaceGone { interface } => {
                crate::TakeoverError::InterfaceNotFound { name: interface }
            }
            ReleaseError::PermissionDenied { .. } => crate::TakeoverError::PermissionDenied {
                operation: "releasing the service address",
            },
            ReleaseError::Kernel { source, .. } => crate::TakeoverError::Netlink {
                operation: "RTM_DELADDR",
                source,
            },
        }
    }
}

impl From<AnnounceError> for crate::TakeoverError {
    fn from(error: AnnounceError) -> Self {
        match error {
            AnnounceError::Send {
                address, source, ..
            } => crate::TakeoverError::Announce {
                addr: address,
                source,
            },
        }
    }
}

impl From<OpenError> for crate::TakeoverError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::InterfaceNotFound { interface }
            | OpenError::NoHardwareAddress { interface } => {
                crate::TakeoverError::InterfaceNotFound { name: interface }
            }
            OpenError::PermissionDenied { .. } => crate::TakeoverError::PermissionDenied {
                operation: "opening the address takeover",
            },
            OpenError::Netlink { source, .. } => crate::TakeoverError::Netlink {
                operation: "RTM_GETLINK",
                source,
            },
            OpenError::PacketSocket { source, .. } => crate::TakeoverError::Io {
                operation: "opening the AF_PACKET socket",
                source,
            },
        }
    }
}

/// Claim and release are idempotent ([`ClaimOutcome::AlreadyPresent`] and
/// [`ReleaseOutcome::WasAbsent`] are successes); announce sends the configured burst.
impl crate::AddressTakeover for NetlinkTakeover {
    fn claim(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), crate::TakeoverError> {
        self.claim_address(addr, prefix_len)?;
        Ok(())
    }

    fn release(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), crate::TakeoverError> {
        self.release_address(addr, prefix_len)?;
        Ok(())
    }

    fn announce(&mut self, addr: IpAddr) -> Result<(), crate::TakeoverError> {
        self.announce_address(addr)?;
        Ok(())
    }

    fn local_prefix_len(&mut self, addr: IpAddr) -> Result<Option<u8>, crate::TakeoverError> {
        let addresses = nix::ifaddrs::getifaddrs().map_err(|errno| crate::TakeoverError::Io {
            operation: "getifaddrs",
            source: std::io::Error::from(errno),
        })?;
        Ok(addresses
            .filter(|a| a.interface_name == self.interface)
            .find_map(|a| prefix_of(addr, a.address?, a.netmask?)))
    }
}

/// The prefix length of `netmask` when `address` is `addr`.
fn prefix_of(
    addr: IpAddr,
    address: nix::sys::socket::SockaddrStorage,
    netmask: nix::sys::socket::SockaddrStorage,
) -> Option<u8> {
    let bits = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
        (Some(v4), _) if IpAddr::V4(v4.ip()) == addr => {
            u32::from(netmask.as_sockaddr_in()?.ip()).count_ones()
        }
        (_, Some(v6)) if IpAddr::V6(v6.ip()) == addr => {
            u128::from(netmask.as_sockaddr_in6()?.ip()).count_ones()
        }
        _ => return None,
    };
    u8::try_from(bits).ok()
}
