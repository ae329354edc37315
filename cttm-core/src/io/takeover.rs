//! The address takeover edge: claiming, releasing and announcing a service address on this
//! host. The backend is `cttm-restore`'s (`NetlinkTakeover`: rtnetlink, gratuitous ARP,
//! unsolicited neighbour advertisements).

use std::net::IpAddr;

/// Claims, releases and announces a service address on this host.
///
/// Contract: `claim` makes `addr` local (so restored sockets receive its traffic) and is
/// idempotent (claiming an address already held succeeds); `release` removes it and is
/// idempotent too; `announce` tells the neighbours (an ARP announcement, RFC 5227 §2.3, or an
/// unsolicited neighbour advertisement, RFC 4861 §7.2.6) that the address now lives here.
pub trait AddressTakeover {
    /// Adds `addr/prefix_len` to this host.
    fn claim(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), TakeoverError>;
    /// Removes `addr/prefix_len` from this host.
    fn release(&mut self, addr: IpAddr, prefix_len: u8) -> Result<(), TakeoverError>;
    /// Announces that `addr` is reachable at this host's link-layer address.
    fn announce(&mut self, addr: IpAddr) -> Result<(), TakeoverError>;
    /// The prefix length `addr` has on this host's interface, `None` when it is not there
    /// (so that an address released can be claimed back the same).
    fn local_prefix_len(&mut self, addr: IpAddr) -> Result<Option<u8>, TakeoverError>;
}

/// Why an address takeover step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeoverError {
    /// The process lacks `CAP_NET_ADMIN` (address changes) or `CAP_NET_RAW` (announcements).
    #[error(
        "{operation} needs CAP_NET_ADMIN and CAP_NET_RAW: run the agent as root or grant the capabilities"
    )]
    PermissionDenied {
        /// What was attempted.
        operation: &'static str,
    },
    /// The configured interface does not exist.
    #[error("interface {name:?} not found: check the agent's interface setting (`ip link`)")]
    InterfaceNotFound {
        /// The interface name.
        name: String,
    },
    /// The prefix length does not fit the address family.
    #[error(
        "prefix length {prefix_len} is invalid for {addr}: use at most 32 for IPv4, 128 for IPv6"
    )]
    InvalidPrefix {
        /// The address.
        addr: IpAddr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The kernel refused a netlink request.
    #[error("netlink {operation} failed: {source}; check the interface and address configuration")]
    Netlink {
        /// What was attempted.
        operation: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// Sending an announcement failed.
    #[error("announcing {addr} failed: {source}; check the interface is up")]
    Announce {
        /// The address announced.
        addr: IpAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Any other I/O failure.
    #[error("{operation} failed: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
