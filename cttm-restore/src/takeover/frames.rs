//! The announcement frames a takeover sends once it owns an address: pure functions, no I/O.
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

use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{ArpEthIpv4Packet, ArpOperation, Icmpv6Type, PacketBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};

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

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

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
}
