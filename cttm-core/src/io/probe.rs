//! The probe edge: asking the service network whether another host holds an address (an
//! RFC 5227 §2.1.1 ARP probe for IPv4, an RFC 4862 §5.4 duplicate address detection
//! neighbour solicitation for IPv6). The backup's guard probes before a takeover, a primary
//! before it serves. The backend is `cttm-restore`'s (`takeover::probe::AddressProbe`).

pub use crate::backup::guard::ProbeResult;
use std::net::IpAddr;

/// Probes addresses on the service network.
///
/// Contract: [`probe`](Self::probe) probes each address in order and returns at the first
/// answer ([`ProbeResult::Answered`], with the address and the MAC that answered); it returns
/// [`ProbeResult::Silent`] only when every address was probed and none answered within the
/// backend's wait, and [`ProbeResult::Failed`] when a probe could not be sent (an address that
/// cannot be shown free must be treated as held). A host never hears its own probes, so an
/// answer always means *another* host. An empty list is silent.
pub trait NeighbourProbe {
    /// Probes `addresses`.
    fn probe(&mut self, addresses: &[IpAddr]) -> ProbeResult;
}
