//! The fencing edge: making sure a silent primary no longer serves before the backup takes
//! over (keepalived's and Pacemaker's answer to a primary cut off from the service network,
//! which a probe cannot tell from a dead one). The backend is `cttm-restore`'s
//! `fence::CommandFence` (the operator's command, with a timeout).

use std::net::IpAddr;

/// Fences the primary.
///
/// Contract: [`fence`](Self::fence) returns `Ok` only once the primary is known not to serve
/// `addresses` any more (powered off, its switch port shut, its addresses withdrawn); any
/// doubt is an `Err` with a message for the operator, and the guard then refuses the
/// takeover and retries. It may block, bounded by the backend's own timeout.
pub trait Fence {
    /// Fences the primary that served `addresses`.
    fn fence(&mut self, addresses: &[IpAddr]) -> Result<(), String>;
}
