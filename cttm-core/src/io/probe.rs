//! The probe edge: asking the service network whether another host holds an address (an
//! RFC 5227 §2.1.1 ARP probe for IPv4, an RFC 4862 §5.4 duplicate address detection
//! neighbour solicitation for IPv6). The backup's guard probes before a takeover, a primary
//! before it serves. The backend is `cttm-restore`'s (`takeover::probe::AddressProbe`).

pub use crate::backup::guard::ProbeResult;
use std::net::IpAddr;

/// Probes addresses on the service network.
///
/// Contract: [`probe`](Self::probe) probes each address in order and returns at the first
/// answer ([`ProbeResult::Answered`], with the address and the MAC that answered); a probe
/// that cannot be sent does not stop the others, and when no address answered the first such
/// failure is returned ([`ProbeResult::Failed`]: the backup must treat the address as held,
/// the primary's ownership check as silence); [`ProbeResult::Silent`] only when every address
/// was probed and none answered within the backend's wait. A host never hears its own
/// probes, so an answer always means *another* host. An empty list is silent.
pub trait NeighbourProbe {
    /// Probes `addresses`.
    fn probe(&mut self, addresses: &[IpAddr]) -> ProbeResult;
}
