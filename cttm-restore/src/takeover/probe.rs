//! Is the service address in use by another host? RFC 5227 §2.1.1 ARP probes (IPv4) and
//! RFC 4862 §5.4.2 duplicate address detection neighbour solicitations (IPv6), sent on the
//! service network from an `AF_PACKET` socket; any answer names the holder's MAC address.
//!
//! (Interface placeholder: the implementation lands with the split-brain work.)

use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// How many probes one check sends and how long each waits for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Probes sent (at least 1; 0 is treated as 1).
    pub count: u32,
    /// How long each probe waits for an answer.
    pub wait: Duration,
}

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Nobody answered any probe: no other host holds the address.
    Silent,
    /// A host answered for the address.
    Answered {
        /// The MAC address that answered.
        mac: [u8; 6],
    },
}

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The interface does not exist in this network namespace.
    #[error("interface {interface:?} not found: check the configured interface")]
    NoInterface {
        /// The interface name.
        interface: String,
    },
    /// The packet socket could not be opened, bound or used.
    #[error("probe socket on {interface}: {source} (probing needs CAP_NET_RAW)")]
    Socket {
        /// The interface name.
        interface: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// Probes sent on one interface of the calling thread's network namespace.
#[derive(Debug)]
pub struct AddressProbe {
    interface: String,
}

impl AddressProbe {
    /// Opens the probe's socket on `interface` in the calling thread's network namespace.
    pub fn open(interface: &str) -> Result<AddressProbe, ProbeError> {
        Ok(AddressProbe {
            interface: interface.to_string(),
        })
    }

    /// Probes `address` (`config.count` probes, each waiting `config.wait`), stopping at the
    /// first answer from a MAC address other than the interface's own.
    pub fn probe(
        &mut self,
        address: IpAddr,
        config: ProbeConfig,
    ) -> Result<ProbeOutcome, ProbeError> {
        let _ = (address, config, &self.interface);
        Ok(ProbeOutcome::Silent)
    }
}
