//! The frames of address takeover and address probing: pure functions, no I/O.
//!
//! Announcements, sent once a takeover owns an address:
//!
//! - IPv4: an ARP announcement (RFC 5227 §2.3; §3 says why it is a request and not a reply):
//!   an ARP *request* whose sender and target protocol addresses are both the claimed
//!   address, target hardware address zero, sent to the Ethernet broadcast address.
//!   Neighbours that already have an entry for the address replace its hardware address
//!   (Linux `arp_process` treats it as a gratuitous ARP and overrides the lock time).
//! - IPv6: an unsolicited neighbour advertisement (RFC 4861 §7.2.6): to the all-nodes
//!   multicast group `ff02::1`, solicited flag clear, override flag set, a target link-layer
//!   address option carrying the new MAC, hop limit 255 (receivers drop anything else,
//!   RFC 4861 §7.1.2), ICMPv6 checksum over the IPv6 pseudo-header.
//!
//! Probes, sent before an address is claimed or served, to learn whether another host holds
//! it (see [`probe`](super::probe)):
//!
//! - IPv4: an ARP probe (RFC 5227 §2.1.1): an ARP request from our MAC with sender protocol
//!   address `0.0.0.0` (so no neighbour learns anything from it), target hardware address
//!   zero, target protocol address the probed address, to the Ethernet broadcast address.
//!   Linux answers it with a unicast ARP reply whose sender is the address (`arp_process`,
//!   the RFC 2131 duplicate-detection special case).
//! - IPv6: a duplicate address detection neighbour solicitation (RFC 4862 §5.4.2): source
//!   `::`, destination the probed address's solicited-node multicast group (RFC 4291
//!   §2.7.1) on its `33:33` MAC (RFC 2464 §7), hop limit 255, no source link-layer address
//!   option (RFC 4861 §4.3 forbids it with an unspecified source). The holder answers with
//!   a neighbour advertisement to `ff02::1` (RFC 4862 §5.4.3, Linux `ndisc_recv_ns`).
//!
//! [`probe_answer`] recognises an answer in a received frame, ignoring everything else.

use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, Icmpv6Type, LinkSlice, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The Ethernet broadcast address.
pub const ETHERNET_BROADCAST: [u8; 6] = [0xff; 6];

/// The all-nodes link-local multicast group an unsolicited advertisement goes to
/// (RFC 4861 §7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// Hop limit of every neighbour discovery message (RFC 4861 §7.1.2: receivers drop others).
pub const ND_HOP_LIMIT: u8 = 255;

/// NDP option type "Target Link-Layer Address" (RFC 4861 §4.6.1).
const NDP_OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;

/// The Ethernet multicast address of an IPv6 multicast group (RFC 2464 §7: `33:33` and the
/// group's last 32 bits).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// An RFC 5227 §2.3 ARP announcement of `address` at `mac`, as a complete Ethernet frame.
pub fn arp_announcement(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let announcement = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: address.octets(),
        target_mac: [0; 6],
        target_ipv4: address.octets(),
    };
    let builder = PacketBuilder::ethernet2(mac, ETHERNET_BROADCAST).arp(announcement.into());
    let mut frame = Vec::with_capacity(builder.size());
    // Writing into a Vec cannot fail, and an Ethernet/IPv4 ARP packet always has valid lengths.
    builder
        .write(&mut frame)
        .expect("an ARP announcement always fits in a Vec");
    frame
}

/// An RFC 4861 §7.2.6 unsolicited neighbour advertisement of `address` at `mac`, as a
/// complete Ethernet frame (source address `address` itself, destination `ff02::1`).
pub fn unsolicited_neighbour_advertisement(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    // ICMPv6 body after the 8-byte header: target address, then the target link-layer
    // address option (type, length in units of 8 bytes, MAC).
    let mut body = Vec::with_capacity(16 + 8);
    body.extend_from_slice(&address.octets());
    body.extend_from_slice(&[NDP_OPTION_TARGET_LINK_LAYER_ADDRESS, 1]);
    body.extend_from_slice(&mac);
    let flags = NeighborAdvertisementHeader {
        router: false,
        solicited: false,
        r#override: true,
    };
    let builder = PacketBuilder::ethernet2(mac, ipv6_multicast_mac(ALL_NODES))
        .ipv6(address.octets(), ALL_NODES.octets(), ND_HOP_LIMIT)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(flags));
    let mut frame = Vec::with_capacity(builder.size(body.len()));
    // 24 bytes of ICMPv6 payload are far below every length limit, and a Vec write cannot fail.
    builder
        .write(&mut frame, &body)
        .expect("a neighbour advertisement always fits in a Vec");
    frame
}

/// The solicited-node multicast group of `address` (RFC 4291 §2.7.1: `ff02::1:ff00:0/104`
/// and the address's last 24 bits).
pub fn solicited_node_multicast(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

/// An RFC 5227 §2.1.1 ARP probe for `address` from `mac`, as a complete Ethernet frame:
/// a broadcast request with sender protocol address `0.0.0.0`.
pub fn arp_probe(mac: [u8; 6], address: Ipv4Addr) -> Vec<u8> {
    let probe = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: mac,
        sender_ipv4: [0; 4],
        target_mac: [0; 6],
        target_ipv4: address.octets(),
    };
    let builder = PacketBuilder::ethernet2(mac, ETHERNET_BROADCAST).arp(probe.into());
    let mut frame = Vec::with_capacity(builder.size());
    // Writing into a Vec cannot fail, and an Ethernet/IPv4 ARP packet always has valid lengths.
    builder
        .write(&mut frame)
        .expect("an ARP probe always fits in a Vec");
    frame
}

/// An RFC 4862 §5.4.2 duplicate address detection neighbour solicitation for `address`
/// from `mac`, as a complete Ethernet frame: source `::`, destination the solicited-node
/// group, hop limit 255, no options.
pub fn duplicate_address_solicitation(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node_multicast(address);
    let builder = PacketBuilder::ethernet2(mac, ipv6_multicast_mac(group))
        .ipv6(Ipv6Addr::UNSPECIFIED.octets(), group.octets(), ND_HOP_LIMIT)
        .icmpv6(Icmpv6Type::NeighborSolicitation);
    // The ICMPv6 body after the 8-byte header (type, code, checksum, reserved): the target.
    let body = address.octets();
    let mut frame = Vec::with_capacity(builder.size(body.len()));
    // 16 bytes of ICMPv6 payload are far below every length limit, and a Vec write cannot fail.
    builder
        .write(&mut frame, &body)
        .expect("a neighbour solicitation always fits in a Vec");
    frame
}

/// The probe frame for `address` (ARP probe or DAD neighbour solicitation).
pub fn probe_frame(mac: [u8; 6], address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => arp_probe(mac, v4),
        IpAddr::V6(v6) => duplicate_address_solicitation(mac, v6),
    }
}

/// If `frame` (a received Ethernet frame, untrusted) says another host holds `address`,
/// the MAC address of that host; `None` for anything else, malformed frames included.
///
/// An answer is:
/// - IPv4: an ARP reply, or request (RFC 5227 §2.1.1: any ARP packet whose sender protocol
///   address is the probed one means the address is in use), whose sender protocol address
///   is `address`; the holder is the ARP sender hardware address.
/// - IPv6: a neighbour advertisement (hop limit 255, valid checksum, RFC 4861 §7.1.2) whose
///   target is `address`; the holder is its target link-layer address option when present,
///   else the frame's Ethernet source.
///
/// Frames from `own_mac` (our own probes, seen again by a packet socket) never count, nor
/// do answers naming `own_mac` as the holder. (RFC 5227 §2.1.1 also treats another host's
/// simultaneous probe as a conflict; here two hosts probing at once both go on, since only
/// one of them can find the address silent and then claim it.)
pub fn probe_answer(frame: &[u8], address: IpAddr, own_mac: [u8; 6]) -> Option<[u8; 6]> {
    let sliced = SlicedPacket::from_ethernet(frame).ok()?;
    let LinkSlice::Ethernet2(ethernet) = sliced.link.as_ref()? else {
        return None;
    };
    let source = ethernet.source();
    if source == own_mac {
        return None;
    }
    let holder = match (address, sliced.net.as_ref()?) {
        (IpAddr::V4(v4), NetSlice::Arp(arp)) => {
            let arp = arp.to_packet().try_eth_ipv4().ok()?;
            let is_answer =
                arp.operation == ArpOperation::REPLY || arp.operation == ArpOperation::REQUEST;
            (is_answer && arp.sender_ipv4 == v4.octets()).then_some(arp.sender_mac)?
        }
        (IpAddr::V6(v6), NetSlice::Ipv6(ip)) => {
            let header = ip.header();
            if header.hop_limit() != ND_HOP_LIMIT {
                return None;
            }
            let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport.as_ref() else {
                return None;
            };
            let Icmpv6Type::NeighborAdvertisement(_) = icmp.icmp_type() else {
                return None;
            };
            let payload = icmp.payload();
            let expected = icmp
                .icmp_type()
                .calc_checksum(header.source(), header.destination(), payload)
                .ok()?;
            if expected != icmp.checksum() || payload.get(..16)? != v6.octets() {
                return None;
            }
            target_link_layer_address(payload.get(16..)?).unwrap_or(source)
        }
        _ => return None,
    };
    (holder != own_mac).then_some(holder)
}

/// The target link-layer address option (RFC 4861 §4.6.1) among the NDP `options`, if any
/// (Ethernet: 6 bytes). Malformed options end the search.
fn target_link_layer_address(mut options: &[u8]) -> Option<[u8; 6]> {
    while options.len() >= 2 {
        let (kind, units) = (options[0], usize::from(options[1]));
        // A zero length is invalid (RFC 4861 §4.6): stop rather than loop forever.
        let len = units
            .checked_mul(8)
            .filter(|&l| l > 0 && l <= options.len())?;
        if kind == NDP_OPTION_TARGET_LINK_LAYER_ADDRESS && len >= 8 {
            return <[u8; 6]>::try_from(&options[2..8]).ok();
        }
        options = &options[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn arp_announcement_is_a_broadcast_request_for_the_address_itself() {
        let frame = arp_announcement(MAC, Ipv4Addr::new(198, 18, 0, 10));
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let eth = sliced
            .link
            .expect("ethernet")
            .to_header()
            .expect("ethernet header");
        let eth = match eth {
            etherparse::LinkHeader::Ethernet2(h) => h,
            other => panic!("not ethernet: {other:?}"),
        };
        assert_eq!(eth.destination, ETHERNET_BROADCAST);
        assert_eq!(eth.source, MAC);
        let Some(NetSlice::Arp(arp)) = sliced.net else {
            panic!("not ARP")
        };
        let arp = arp.to_packet().try_eth_ipv4().expect("ethernet/ipv4 ARP");
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.sender_ipv4, [198, 18, 0, 10]);
        assert_eq!(arp.target_ipv4, [198, 18, 0, 10]);
    }

    #[test]
    fn neighbour_advertisement_has_override_target_option_hop_limit_and_valid_checksum() {
        let address: Ipv6Addr = "2001:db8::10".parse().expect("address");
        let frame = unsolicited_neighbour_advertisement(MAC, address);
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().source_addr(), address);
        assert_eq!(ip.header().destination_addr(), ALL_NODES);
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6")
        };
        let Icmpv6Type::NeighborAdvertisement(flags) = icmp.icmp_type() else {
            panic!("not an NA")
        };
        assert!(flags.r#override && !flags.solicited && !flags.router);
        let payload = icmp.payload();
        assert_eq!(&payload[..16], &address.octets());
        assert_eq!(&payload[16..18], &[2, 1]);
        assert_eq!(&payload[18..24], &MAC);
        // The checksum is right when recomputing it over the pseudo-header gives the same value.
        let expected = icmp
            .icmp_type()
            .calc_checksum(address.octets(), ALL_NODES.octets(), payload)
            .expect("checksum");
        assert_eq!(icmp.checksum(), expected);
        assert_ne!(expected, 0);
        assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }

    const OTHER: [u8; 6] = [0x02, 0x00, 0x5e, 0x40, 0x50, 0x60];

    fn ethernet_destination(frame: &[u8]) -> [u8; 6] {
        <[u8; 6]>::try_from(&frame[..6]).expect("ethernet header")
    }

    #[test]
    fn arp_probe_is_a_broadcast_request_from_the_unspecified_address() {
        let frame = arp_probe(MAC, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(ethernet_destination(&frame), ETHERNET_BROADCAST);
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(NetSlice::Arp(arp)) = sliced.net else {
            panic!("not ARP")
        };
        let arp = arp.to_packet().try_eth_ipv4().expect("ethernet/ipv4 ARP");
        assert_eq!(arp.operation, ArpOperation::REQUEST);
        assert_eq!(arp.sender_mac, MAC);
        assert_eq!(arp.sender_ipv4, [0; 4]);
        assert_eq!(arp.target_mac, [0; 6]);
        assert_eq!(arp.target_ipv4, [198, 18, 0, 10]);
    }

    #[test]
    fn solicited_node_group_keeps_the_last_24_bits() {
        let address: Ipv6Addr = "2001:db8::1234:5678".parse().expect("address");
        assert_eq!(
            solicited_node_multicast(address),
            "ff02::1:ff34:5678".parse::<Ipv6Addr>().expect("group")
        );
    }

    #[test]
    fn dad_solicitation_has_unspecified_source_group_destination_and_valid_checksum() {
        let address: Ipv6Addr = "2001:db8::10".parse().expect("address");
        let frame = duplicate_address_solicitation(MAC, address);
        assert_eq!(
            ethernet_destination(&frame),
            [0x33, 0x33, 0xff, 0x00, 0x00, 0x10]
        );
        let sliced = SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().hop_limit(), 255);
        assert_eq!(ip.header().source_addr(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            ip.header().destination_addr(),
            "ff02::1:ff00:10".parse::<Ipv6Addr>().expect("group")
        );
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::NeighborSolicitation);
        // The target only: no source link-layer address option with source `::`.
        assert_eq!(icmp.payload(), &address.octets());
        let expected = icmp
            .icmp_type()
            .calc_checksum(
                Ipv6Addr::UNSPECIFIED.octets(),
                solicited_node_multicast(address).octets(),
                icmp.payload(),
            )
            .expect("checksum");
        assert_eq!(icmp.checksum(), expected);
    }

    fn arp_frame(operation: ArpOperation, from: [u8; 6], sender: [u8; 4], to: [u8; 6]) -> Vec<u8> {
        let packet = ArpEthIpv4Packet {
            operation,
            sender_mac: from,
            sender_ipv4: sender,
            target_mac: to,
            target_ipv4: [198, 18, 0, 3],
        };
        let builder = PacketBuilder::ethernet2(from, to).arp(packet.into());
        let mut frame = Vec::new();
        builder.write(&mut frame).expect("write");
        frame
    }

    #[test]
    fn arp_reply_or_request_from_the_address_is_an_answer() {
        let address = IpAddr::from([198, 18, 0, 10]);
        let reply = arp_frame(ArpOperation::REPLY, OTHER, [198, 18, 0, 10], MAC);
        assert_eq!(probe_answer(&reply, address, MAC), Some(OTHER));
        let request = arp_frame(ArpOperation::REQUEST, OTHER, [198, 18, 0, 10], [0xff; 6]);
        assert_eq!(probe_answer(&request, address, MAC), Some(OTHER));
        // Another address, our own frames, our own probe, and the wrong family are not.
        let other = arp_frame(ArpOperation::REPLY, OTHER, [198, 18, 0, 11], MAC);
        assert_eq!(probe_answer(&other, address, MAC), None);
        let own = arp_frame(ArpOperation::REPLY, MAC, [198, 18, 0, 10], OTHER);
        assert_eq!(probe_answer(&own, address, MAC), None);
        let probe = arp_probe(OTHER, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(probe_answer(&probe, address, MAC), None);
        let v6: IpAddr = "2001:db8::10".parse().expect("address");
        assert_eq!(probe_answer(&reply, v6, MAC), None);
    }

    #[test]
    fn neighbour_advertisement_for_the_address_is_an_answer() {
        let v6: Ipv6Addr = "2001:db8::10".parse().expect("address");
        let address = IpAddr::V6(v6);
        let advertisement = unsolicited_neighbour_advertisement(OTHER, v6);
        assert_eq!(probe_answer(&advertisement, address, MAC), Some(OTHER));
        // Our own advertisement, another target, a solicitation: not answers.
        let own = unsolicited_neighbour_advertisement(MAC, v6);
        assert_eq!(probe_answer(&own, address, MAC), None);
        let other: IpAddr = "2001:db8::11".parse().expect("address");
        assert_eq!(probe_answer(&advertisement, other, MAC), None);
        let solicitation = duplicate_address_solicitation(OTHER, v6);
        assert_eq!(probe_answer(&solicitation, address, MAC), None);
        // A forwarded advertisement (hop limit not 255) and a bad checksum are invalid.
        let mut forwarded = advertisement.clone();
        forwarded[14 + 7] = 254;
        assert_eq!(probe_answer(&forwarded, address, MAC), None);
        let mut corrupted = advertisement.clone();
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0x01;
        assert_eq!(probe_answer(&corrupted, address, MAC), None);
        assert_eq!(
            probe_answer(&advertisement, IpAddr::from([198, 18, 0, 10]), MAC),
            None
        );
    }

    #[test]
    fn target_option_names_the_holder_and_malformed_options_are_ignored() {
        assert_eq!(
            target_link_layer_address(&[2, 1, 1, 2, 3, 4, 5, 6]),
            Some([1, 2, 3, 4, 5, 6])
        );
        // A source link-layer option first, then the target option.
        assert_eq!(
            target_link_layer_address(&[1, 1, 9, 9, 9, 9, 9, 9, 2, 1, 1, 2, 3, 4, 5, 6]),
            Some([1, 2, 3, 4, 5, 6])
        );
        assert_eq!(target_link_layer_address(&[2, 0, 1, 2, 3, 4, 5, 6]), None);
        assert_eq!(target_link_layer_address(&[2, 2, 1, 2, 3, 4, 5, 6]), None);
        assert_eq!(target_link_layer_address(&[2]), None);
        assert_eq!(target_link_layer_address(&[]), None);
    }

    #[test]
    fn truncated_and_garbage_frames_are_never_answers_and_never_panic() {
        let v6: Ipv6Addr = "2001:db8::10".parse().expect("address");
        let v4 = IpAddr::from([198, 18, 0, 10]);
        let frames = [
            arp_frame(ArpOperation::REPLY, OTHER, [198, 18, 0, 10], MAC),
            unsolicited_neighbour_advertisement(OTHER, v6),
        ];
        for frame in &frames {
            for len in 0..frame.len() {
                for address in [v4, IpAddr::V6(v6)] {
                    assert_eq!(probe_answer(&frame[..len], address, MAC), None, "{len}");
                }
            }
        }
        let mut seed = 0x1234_5678_u32;
        for len in [0, 1, 13, 14, 42, 60, 78, 86, 200] {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) as u8
                })
                .collect();
            assert_eq!(probe_answer(&garbage, v4, MAC), None);
            assert_eq!(probe_answer(&garbage, IpAddr::V6(v6), MAC), None);
        }
    }
}
