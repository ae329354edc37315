//! Service endpoints (what we protect) and connection identities.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One protected service: an address and a TCP port the server listens on.
/// An unspecified address (`0.0.0.0` / `::`) matches every address of its family.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    /// The service address (the address clients connect to).
    pub addr: IpAddr,
    /// The TCP port clients connect to.
    pub port: u16,
}

impl ServiceEndpoint {
    /// A service endpoint from a socket address.
    pub fn new(addr: SocketAddr) -> Self {
        ServiceEndpoint {
            addr: addr.ip(),
            port: addr.port(),
        }
    }

    /// True when `addr` is this endpoint.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        if self.port != addr.port() {
            return false;
        }
        match (self.addr, addr.ip()) {
            (IpAddr::V4(a), IpAddr::V4(_)) if a.is_unspecified() => true,
            (IpAddr::V6(a), IpAddr::V6(_)) if a.is_unspecified() => true,
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for ServiceEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&SocketAddr::new(self.addr, self.port), f)
    }
}

/// The set of service endpoints a tracker follows (IPv4 and IPv6 mixed).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ServiceSet {
    endpoints: Vec<ServiceEndpoint>,
}

impl ServiceSet {
    /// A set from endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = ServiceEndpoint>) -> Self {
        ServiceSet {
            endpoints: endpoints.into_iter().collect(),
        }
    }

    /// The endpoints in the set.
    pub fn endpoints(&self) -> &[ServiceEndpoint] {
        &self.endpoints
    }

    /// True when `addr` is one of the services.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.endpoints.iter().any(|e| e.matches(addr))
    }

    /// Orders a segment's `(src, dst)` as a connection identity when one side is a service.
    /// Returns the identity and the side that sent the segment.
    pub fn classify(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<(ConnectionId, crate::Side)> {
        if self.contains(dst) {
            Some((
                ConnectionId {
                    client: src,
                    server: dst,
                },
                crate::Side::Client,
            ))
        } else if self.contains(src) {
            Some((
                ConnectionId {
                    client: dst,
                    server: src,
                },
                crate::Side::Server,
            ))
        } else {
            None
        }
    }
}

/// The identity of one connection to a service: its 4-tuple, ordered client then server.
/// A 4-tuple reused after a connection closed is a new incarnation: an `Opened` event for an
/// existing identity replaces the old record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ConnectionId {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The service address and port.
    pub server: SocketAddr,
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}
