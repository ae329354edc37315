//! The tracker's connection tables: hash maps keyed by [`ConnectionId`] that hash the 4-tuple
//! in one piece.
//!
//! The derived `Hash` of `ConnectionId` feeds each field of both `SocketAddr`s (enum
//! discriminant, address length prefix, address, port, IPv6 flow info and scope id) to the
//! hasher separately: about ten small SipHash writes per lookup, a quarter of the tracker's
//! instructions per segment in the `track` benchmark. [`ConnectionKey`] packs addresses and
//! ports and hashes them in one write. The hasher stays std's keyed SipHash (`RandomState`):
//! client addresses and ports are chosen by untrusted peers, so the table must not be open
//! to hash flooding.

use crate::endpoint::ConnectionId;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

/// A [`ConnectionId`] as a table key. Equality is the identity's own (every field); the hash
/// covers addresses and ports only, so equal identities hash equal.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ConnectionKey(ConnectionId);

impl Hash for ConnectionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One write: SipHash pays per call (tail bytes are gathered one by one), not per byte.
        let ConnectionId { client, server } = self.0;
        let mut packed = [0u8; 36];
        packed[0..2].copy_from_slice(&client.port().to_be_bytes());
        packed[2..4].copy_from_slice(&server.port().to_be_bytes());
        match (client, server) {
            (SocketAddr::V4(c), SocketAddr::V4(s)) => {
                packed[4..8].copy_from_slice(&c.ip().octets());
                packed[8..12].copy_from_slice(&s.ip().octets());
                state.write(&packed[..12]);
            }
            // (A mixed pair cannot occur on the wire; it hashes as IPv4-mapped addresses.)
            _ => {
                let octets = |addr: SocketAddr| match addr {
                    SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
                    SocketAddr::V6(a) => a.ip().octets(),
                };
                packed[4..20].copy_from_slice(&octets(client));
                packed[20..36].copy_from_slice(&octets(server));
                state.write(&packed);
            }
        }
    }
}

/// A map from connection identity to `V`.
#[derive(Debug)]
pub(super) struct ConnectionMap<V> {
    map: HashMap<ConnectionKey, V>,
}

impl<V> Default for ConnectionMap<V> {
    fn default() -> Self {
        ConnectionMap {
            map: HashMap::new(),
        }
    }
}

impl<V> ConnectionMap<V> {
    pub(super) fn get(&self, id: &ConnectionId) -> Option<&V> {
        self.map.get(&ConnectionKey(*id))
    }

    pub(super) fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut V> {
        self.map.get_mut(&ConnectionKey(*id))
    }

    pub(super) fn contains_key(&self, id: &ConnectionId) -> bool {
        self.map.contains_key(&ConnectionKey(*id))
    }

    pub(super) fn insert(&mut self, id: ConnectionId, value: V) -> Option<V> {
        self.map.insert(ConnectionKey(id), value)
    }

    pub(super) fn remove(&mut self, id: &ConnectionId) -> Option<V> {
        self.map.remove(&ConnectionKey(*id))
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&ConnectionId, &mut V) -> bool) {
        self.map.retain(|key, value| keep(&key.0, value));
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map.values_mut()
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn id(client: &str, server: &str) -> ConnectionId {
        ConnectionId {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    #[test]
    fn identities_are_told_apart_by_every_field() {
        let mut map = ConnectionMap::default();
        let a = id("198.18.0.2:40000", "198.18.0.1:80");
        let b = id("198.18.0.2:40001", "198.18.0.1:80");
        let c = id("[2001:db8::2]:40000", "[2001:db8::1]:80");
        // Same addresses and ports, another flow label: hashes equal, compares unequal.
        let mut d = c;
        d.client = SocketAddr::V6(SocketAddrV6::new(
            "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
            40000,
            7,
            0,
        ));
        for (n, key) in [a, b, c, d].into_iter().enumerate() {
            assert_eq!(map.insert(key, n), None);
        }
        assert_eq!(map.len(), 4);
        assert_eq!(
            [a, b, c, d].map(|k| map.get(&k).copied()),
            [Some(0), Some(1), Some(2), Some(3)]
        );
        assert_eq!(map.remove(&c), Some(2));
        assert_eq!(map.get(&d), Some(&3));
        map.retain(|k, _| *k != a);
        assert!(!map.contains_key(&a) && map.contains_key(&b));
    }
}
