//! Is the service address in use by another host? RFC 5227 §2.1.1 ARP probes (IPv4) and
//! RFC 4862 §5.4.2 duplicate address detection neighbour solicitations (IPv6), sent on the
//! service network from an `AF_PACKET` socket; any answer names the holder's MAC address.
//!
//! [`AddressProbe::open`] looks the interface up (index and MAC, over rtnetlink) and opens
//! two packet sockets on it in the calling thread's network namespace: one for ARP
//! (`ETH_P_ARP`) and one for IPv6 (`ETH_P_IPV6`, narrowed in the kernel by a classic BPF
//! filter to ICMPv6 neighbour advertisements, so a busy service does not fill its queue).
//! [`AddressProbe::probe`] discards what the socket queued before, then sends the probe and
//! waits for an answer (the frames, and what counts as an answer:
//! [`probe_answer`](super::frames::probe_answer)); the wait is bounded in time (`poll` with
//! the remaining time) and in the number of frames examined. Malformed frames are ignored. Needs `CAP_NET_RAW`.
//!
//! A probe proves presence, not absence: a silent check means no host answered within the
//! wait (a holder that is down, cut off, or too slow to answer looks the same).

use super::frames;
use super::packet_socket::PacketSocket;
use super::rtnetlink::{NetlinkFailure, RouteSocket};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Frames discarded at most before a check (what the sockets queued since the last one).
const DRAIN_LIMIT: usize = 4096;
/// Frames examined at most while one probe waits (bounds the loop on a flooded network).
const FRAMES_PER_WAIT: usize = 16_384;
/// Receive buffer: ARP packets and neighbour advertisements are far smaller; a longer frame
/// is cut and then fails to parse (ignored).
const FRAME_BUFFER: usize = 2048;

/// The classic BPF program of the IPv6 socket: accept ICMPv6 (next header 58, no extension
/// header) neighbour advertisements (type 136), drop everything else. Offsets: EtherType at
/// 12, IPv6 next header at 14 + 6, ICMPv6 type at 14 + 40.
fn neighbour_advertisement_filter() -> [libc::sock_filter; 8] {
    const LOAD_HALF: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    const LOAD_BYTE: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JUMP_EQUAL: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const ICMPV6: u32 = 58;
    const NEIGHBOUR_ADVERTISEMENT: u32 = 136;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LOAD_HALF, 0, 0, 12),
        op(JUMP_EQUAL, 0, 5, libc::ETH_P_IPV6 as u32),
        op(LOAD_BYTE, 0, 0, 20),
        op(JUMP_EQUAL, 0, 3, ICMPV6),
        op(LOAD_BYTE, 0, 0, 54),
        op(JUMP_EQUAL, 0, 1, NEIGHBOUR_ADVERTISEMENT),
        op(RETURN, 0, 0, 0xffff),
        op(RETURN, 0, 0, 0),
    ]
}

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
    mac: [u8; 6],
    arp: PacketSocket,
    ndp: PacketSocket,
    buffer: Vec<u8>,
}

impl AddressProbe {
    /// Opens the probe's socket on `interface` in the calling thread's network namespace.
    pub fn open(interface: &str) -> Result<AddressProbe, ProbeError> {
        let socket_error = |source: io::Error| ProbeError::Socket {
            interface: interface.to_string(),
            source,
        };
        let mut route = RouteSocket::open().map_err(socket_error)?;
        let link = route
            .link_by_name(interface)
            .map_err(|failure| match failure {
                NetlinkFailure::Errno(libc::ENODEV) => ProbeError::NoInterface {
                    interface: interface.to_string(),
                },
                other => socket_error(other.into_io()),
            })?;
        let mac = link.mac.ok_or_else(|| {
            socket_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the interface has no Ethernet hardware address; probing needs an Ethernet-like interface",
            ))
        })?;
        let arp =
            PacketSocket::bind(link.index, libc::ETH_P_ARP as u16, &[]).map_err(socket_error)?;
        let ndp = PacketSocket::bind(
            link.index,
            libc::ETH_P_IPV6 as u16,
            &neighbour_advertisement_filter(),
        )
        .map_err(socket_error)?;
        Ok(AddressProbe {
            interface: interface.to_string(),
            mac,
            arp,
            ndp,
            buffer: vec![0; FRAME_BUFFER],
        })
    }

    /// The interface's hardware address (the probes' sender; answers from it never count).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Probes `address` (`config.count` probes, each waiting `config.wait`), stopping at the
    /// first answer from a MAC address other than the interface's own.
    pub fn probe(
        &mut self,
        address: IpAddr,
        config: ProbeConfig,
    ) -> Result<ProbeOutcome, ProbeError> {
        let AddressProbe {
            interface,
            mac,
            arp,
            ndp,
            buffer,
        } = self;
        let socket_error = |source: io::Error| ProbeError::Socket {
            interface: interface.clone(),
            source,
        };
        let socket = if address.is_ipv4() { &*arp } else { &*ndp };
        let frame = frames::probe_frame(*mac, address);
        // Answers queued before this check may be old: only what follows the probe counts.
        socket.drain(buffer, DRAIN_LIMIT).map_err(socket_error)?;
        for _ in 0..config.count.max(1) {
            socket.send(&frame).map_err(socket_error)?;
            let deadline = Instant::now() + config.wait;
            for _ in 0..FRAMES_PER_WAIT {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let Some(received) = socket
                    .receive(buffer, deadline - now)
                    .map_err(socket_error)?
                else {
                    continue;
                };
                // Our own frames, seen on their way out, are never answers.
                if received.packet_type == libc::PACKET_OUTGOING {
                    continue;
                }
                let frame = buffer.get(..received.len).unwrap_or_default();
                if let Some(holder) = frames::probe_answer(frame, address, *mac) {
                    return Ok(ProbeOutcome::Answered { mac: holder });
                }
            }
        }
        Ok(ProbeOutcome::Silent)
    }
}

/// A MAC address as the operator reads it: `02:00:5e:10:20:30` (the core's formatter, which
/// the takeover guard's alerts use too).
pub use cttm_core::backup::mac_text;

/// An [`AddressProbe`] with the probes and waits of one check: the core's
/// [`NeighbourProbe`](cttm_core::io::probe::NeighbourProbe) over ARP and NDP.
#[derive(Debug)]
pub struct ProbeCheck {
    probe: AddressProbe,
    config: ProbeConfig,
}

impl ProbeCheck {
    /// Checks with `probe`, sending `config.count` probes per address.
    pub fn new(probe: AddressProbe, config: ProbeConfig) -> ProbeCheck {
        ProbeCheck { probe, config }
    }
}

impl cttm_core::io::probe::NeighbourProbe for ProbeCheck {
    fn probe(&mut self, addresses: &[IpAddr]) -> cttm_core::io::probe::ProbeResult {
        use cttm_core::io::probe::ProbeResult;
        // A failure does not end the check: another address may still answer.
        let mut failed = None;
        for &address in addresses {
            match self.probe.probe(address, self.config) {
                Ok(ProbeOutcome::Silent) => {}
                Ok(ProbeOutcome::Answered { mac }) => {
                    return ProbeResult::Answered { address, mac };
                }
                Err(e) => {
                    failed.get_or_insert_with(|| format!("{address}: {e}"));
                }
            }
        }
        failed.map_or(ProbeResult::Silent, ProbeResult::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_jumps_stay_inside_the_program() {
        let program = neighbour_advertisement_filter();
        let is_jump = |op: &libc::sock_filter| u32::from(op.code) & 0x07 == libc::BPF_JMP;
        for (i, op) in program.iter().enumerate().filter(|(_, op)| is_jump(op)) {
            let target = i + 1 + usize::from(op.jt.max(op.jf));
            assert!(target < program.len(), "instruction {i} jumps out");
        }
        let accept = program.len() - 2;
        // Every conditional's false branch drops (the last instruction returns 0).
        for (i, op) in program.iter().enumerate().filter(|(_, op)| op.jf > 0) {
            assert_eq!(i + 1 + usize::from(op.jf), program.len() - 1);
        }
        assert_eq!(program[accept].k, 0xffff);
        assert_eq!(program[program.len() - 1].k, 0);
    }
}
