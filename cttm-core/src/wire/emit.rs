//! Emitting a frame from a [`SegmentRepr`], with correct IP and TCP checksums.

use super::parse::LinkType;
use super::segment::SegmentRepr;
use etherparse::{PacketBuilder, TcpOptionElement};
use std::net::IpAddr;
use thiserror::Error;

/// Why a segment could not be emitted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// Source and destination are of different IP families.
    #[error("source {src} and destination {dst} are not of the same IP family")]
    MixedFamilies {
        /// Source address.
        src: IpAddr,
        /// Destination address.
        dst: IpAddr,
    },
    /// The options do not fit in the 40 bytes TCP allows.
    #[error("TCP options do not fit in 40 bytes: {0}")]
    OptionsTooLong(String),
    /// The payload does not fit in one IP packet.
    #[error("payload of {0} bytes does not fit in one IP packet")]
    PayloadTooLarge(usize),
    /// Linux cooked capture is a capture format, not something to send.
    #[error("cannot emit Linux cooked (SLL) frames; use Ethernet or RawIp")]
    UnsupportedLink,
}

/// Fixed MAC addresses for emitted Ethernet frames (tests, pcap files written by generators).
pub(crate) const EMIT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(crate) const EMIT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Builds a frame of link type `link` carrying `segment`, with checksums filled in.
/// Ethernet frames use locally administered MAC addresses 02:00:00:00:00:01 → …:02.
pub fn emit_frame(link: LinkType, segment: &SegmentRepr<'_>) -> Result<Vec<u8>, EmitError> {
    let options = option_elements(segment);
    let hop_limit = 64;
    let builder = match (segment.src.ip(), segment.dst.ip(), link) {
        (_, _, LinkType::LinuxSll) => return Err(EmitError::UnsupportedLink),
        (IpAddr::V4(s), IpAddr::V4(d), LinkType::Ethernet) => PacketBuilder::ethernet2(
            EMIT_SRC_MAC,
            EMIT_DST_MAC,
        )
        .ipv4(s.octets(), d.octets(), hop_limit),
        (IpAddr::V6(s), IpAddr::V6(d), LinkType::Ethernet) => PacketBuilder::ethernet2(
            EMIT_SRC_MAC,
            EMIT_DST_MAC,
        )
        .ipv6(s.octets(), d.octets(), hop_limit),
        (IpAddr::V4(s), IpAddr::V4(d), LinkType::RawIp) => {
            PacketBuilder::ipv4(s.octets(), d.octets(), hop_limit)
        }
        (IpAddr::V6(s), IpAddr::V6(d), LinkType::RawIp) => {
            PacketBuilder::ipv6(s.octets(), d.octets(), hop_limit)
        }
        (src, dst, _) => return Err(EmitError::MixedFamilies { src, dst }),
    };
    let mut tcp = builder.tcp(
        segment.src.port(),
        segment.dst.port(),
        segment.seq.0,
        segment.window,
    );
    let flags = segment.flags;
    if flags.syn() {
        tcp = tcp.syn();
    }
    if flags.fin() {
        tcp = tcp.fin();
    }
    if flags.rst() {
        tcp = tcp.rst();
    }
    if flags.contains(super::TcpFlags::PSH) {
        tcp = tcp.psh();
    }
    if flags.ack() {
        tcp = tcp.ack(segment.ack.0);
    }
    let tcp = tcp
        .options(&options)
        .map_err(|e| EmitError::OptionsTooLong(e.to_string()))?;
    let mut frame = Vec::with_capacity(tcp.size(segment.payload.len()));
    tcp.write(&mut frame, segment.payload)
        .map_err(|_| EmitError::PayloadTooLarge(segment.payload.len()))?;
    Ok(frame)
}

fn option_elements(segment: &SegmentRepr<'_>) -> Vec<TcpOptionElement> {
    let o = &segment.options;
    let mut elements = Vec::with_capacity(8);
    if let Some(mss) = o.mss {
        elements.push(TcpOptionElement::MaximumSegmentSize(mss));
    }
    if o.sack_permitted {
        elements.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
    }
    if let Some(ts) = o.timestamps {
        elements.push(TcpOptionElement::Timestamp(ts.tsval, ts.tsecr));
    }
    if let Some(shift) = o.window_scale {
        elements.push(TcpOptionElement::Noop);
        elements.push(TcpOptionElement::WindowScale(shift));
    }
    if let Some((&(l, r), rest)) = o.sack.as_slice().split_first() {
        let mut more = [None; 3];
        for (slot, &(l2, r2)) in more.iter_mut().zip(rest) {
            *slot = Some((l2.0, r2.0));
        }
        elements.push(TcpOptionElement::Noop);
        elements.push(TcpOptionElement::Noop);
        elements.push(TcpOptionElement::SelectiveAcknowledgement((l.0, r.0), more));
    }
    elements
}
