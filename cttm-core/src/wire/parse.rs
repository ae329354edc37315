//! Parsing untrusted frames into [`SegmentRepr`]s. Never panics.

use super::segment::{SackBlocks, SegmentRepr, TcpFlags, TcpOptions, TcpTimestamps};
use crate::seq::SeqNumber;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TcpOptionElement, TcpSlice};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

/// The link layer a frame starts with (the pcap "link type").
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum LinkType {
    /// Ethernet II, optionally VLAN-tagged (pcap `LINKTYPE_ETHERNET`, AF_PACKET `SOCK_RAW`).
    Ethernet,
    /// Linux "cooked" capture v1, 16-byte header (pcap `LINKTYPE_LINUX_SLL`, `tcpdump -i any`).
    LinuxSll,
    /// A bare IPv4 or IPv6 packet (pcap `LINKTYPE_RAW`, NFQUEUE payloads).
    RawIp,
}

/// Why a frame did not yield a TCP segment.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends before a header it announces; a capture with a short snap length or a
    /// corrupted frame. Capture whole frames (snaplen 65535 or more).
    #[error("frame truncated in the {layer} header")]
    Truncated {
        /// The layer whose header or payload was cut.
        layer: &'static str,
    },
    /// The frame carries the TCP payload only partially (the IP length says more follows).
    /// Such a segment cannot be tracked exactly; capture whole frames.
    #[error("TCP payload truncated: the IP header announces more bytes than the frame holds")]
    TruncatedPayload,
    /// The frame is not IPv4 or IPv6 (ARP, LLDP, …): skip it.
    #[error("not an IP frame")]
    NotIp,
    /// The IP packet is not TCP: skip it.
    #[error("not a TCP segment")]
    NotTcp,
    /// The IP packet is a fragment; TCP over IP fragments is not tracked.
    #[error("IP fragment: reassemble fragments before tracking")]
    Fragment,
    /// A header's fields are inconsistent (bad version, header length, option lengths).
    #[error("malformed {layer} header: {detail}")]
    Malformed {
        /// The layer at fault.
        layer: &'static str,
        /// What etherparse reported.
        detail: String,
    },
}

/// Length of the Linux cooked-capture (SLL v1) header.
const LINUX_SLL_HEADER_LEN: usize = 16;

/// Parses one frame of link type `link` into a TCP segment.
pub fn parse_frame(link: LinkType, frame: &[u8]) -> Result<SegmentRepr<'_>, ParseError> {
    let packet = match link {
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(frame)
            .map_err(|_| ParseError::Truncated { layer: "Ethernet" })?,
        LinkType::LinuxSll => {
            // struct: packet type (2), ARPHRD (2), address length (2), address (8), protocol (2)
            let Some(proto) = frame.get(14..LINUX_SLL_HEADER_LEN) else {
                return Err(ParseError::Truncated { layer: "Linux SLL" });
            };
            let ether_type = EtherType(u16::from_be_bytes([proto[0], proto[1]]));
            LaxSlicedPacket::from_ether_type(ether_type, &frame[LINUX_SLL_HEADER_LEN..])
        }
        LinkType::RawIp => LaxSlicedPacket::from_ip(frame).map_err(|e| match e {
            etherparse::err::ip::LaxHeaderSliceError::Len(len) => ParseError::Truncated {
                layer: layer_name(len.layer),
            },
            etherparse::err::ip::LaxHeaderSliceError::Content(c) => ParseError::Malformed {
                layer: "IP",
                detail: c.to_string(),
            },
        })?,
    };
    segment_from_packet(&packet)
}

fn segment_from_packet<'a>(packet: &LaxSlicedPacket<'a>) -> Result<SegmentRepr<'a>, ParseError> {
    let (src_ip, dst_ip, payload) = match &packet.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                ip.payload(),
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                ip.payload(),
            )
        }
        Some(LaxNetSlice::Arp(_)) => return Err(ParseError::NotIp),
        None => return Err(not_ip_error(packet)),
    };
    if payload.fragmented {
        return Err(ParseError::Fragment);
    }
    if payload.ip_number != IpNumber::TCP {
        return Err(ParseError::NotTcp);
    }
    if payload.incomplete {
        return Err(ParseError::TruncatedPayload);
    }
    let tcp = TcpSlice::from_slice(payload.payload).map_err(|e| match e {
        etherparse::err::tcp::HeaderSliceError::Len(_) => ParseError::Truncated { layer: "TCP" },
        etherparse::err::tcp::HeaderSliceError::Content(c) => ParseError::Malformed {
            layer: "TCP",
            detail: c.to_string(),
        },
    })?;
    Ok(SegmentRepr {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: SeqNumber(tcp.sequence_number()),
        ack: SeqNumber(tcp.acknowledgment_number()),
        flags: flags_of(&tcp),
        window: tcp.window_size(),
        options: options_of(&tcp)?,
        payload: tcp.payload(),
    })
}

/// Distinguishes "this is not IP" from "the IP header is broken".
fn not_ip_error(packet: &LaxSlicedPacket<'_>) -> ParseError {
    match &packet.stop_err {
        Some((err, layer)) => match err {
            // The length error names the innermost layer that was cut (IPv4 inside "IP").
            etherparse::err::packet::SliceError::Len(len) => ParseError::Truncated {
                layer: layer_name(len.layer),
            },
            other => ParseError::Malformed {
                layer: layer_name(*layer),
                detail: other.to_string(),
            },
        },
        None => ParseError::NotIp,
    }
}

fn layer_name(layer: etherparse::err::Layer) -> &'static str {
    use etherparse::err::Layer;
    match layer {
        Layer::Ethernet2Header | Layer::LinuxSllHeader => "link",
        Layer::VlanHeader => "VLAN",
        Layer::IpHeader => "IP",
        Layer::Ipv4Header | Layer::Ipv4Packet => "IPv4",
        Layer::Ipv6Header | Layer::Ipv6Packet => "IPv6",
        Layer::TcpHeader => "TCP",
        _ => "IP extension",
    }
}

fn flags_of(tcp: &TcpSlice<'_>) -> TcpFlags {
    let pairs = [
        (tcp.fin(), TcpFlags::FIN),
        (tcp.syn(), TcpFlags::SYN),
        (tcp.rst(), TcpFlags::RST),
        (tcp.psh(), TcpFlags::PSH),
        (tcp.ack(), TcpFlags::ACK),
        (tcp.urg(), TcpFlags::URG),
        (tcp.ece(), TcpFlags::ECE),
        (tcp.cwr(), TcpFlags::CWR),
    ];
    pairs
        .iter()
        .filter(|(set, _)| *set)
        .fold(TcpFlags::default(), |acc, (_, f)| acc.with(*f))
}

fn options_of(tcp: &TcpSlice<'_>) -> Result<TcpOptions, ParseError> {
    let mut options = TcpOptions::default();
    for element in tcp.options_iterator() {
        let element = element.map_err(|e| ParseError::Malformed {
            layer: "TCP options",
            detail: e.to_string(),
        })?;
        match element {
            TcpOptionElement::MaximumSegmentSize(mss) => options.mss = Some(mss),
            TcpOptionElement::WindowScale(shift) => options.window_scale = Some(shift),
            TcpOptionElement::SelectiveAcknowledgementPermitted => options.sack_permitted = true,
            TcpOptionElement::SelectiveAcknowledgement(first, rest) => {
                options.sack = sack_blocks(first, rest);
            }
            TcpOptionElement::Timestamp(tsval, tsecr) => {
                options.timestamps = Some(TcpTimestamps { tsval, tsecr });
            }
            TcpOptionElement::Noop => {}
        }
    }
    Ok(options)
}

fn sack_blocks(first: (u32, u32), rest: [Option<(u32, u32)>; 3]) -> SackBlocks {
    let mut blocks = SackBlocks::default();
    blocks.push(SeqNumber(first.0), SeqNumber(first.1));
    for (l, r) in rest.into_iter().flatten() {
        blocks.push(SeqNumber(l), SeqNumber(r));
    }
    blocks
}
