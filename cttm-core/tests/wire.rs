//! `parse_frame` and `emit_frame`: every link type, both IP families, every option, errors at
//! each layer, and checksums verified independently with etherparse.

mod common;

use common::{CLIENT4, CLIENT6, SERVER4, SERVER6, Seg};
use cttm_core::wire::{
    EmitError, LinkType, ParseError, SegmentRepr, TcpFlags, emit_frame, parse_frame,
};
use etherparse::{
    EtherType, Ipv4Header, Ipv4HeaderSlice, Ipv6HeaderSlice, LinuxSllPacketType, PacketBuilder,
    TcpSlice, VlanId,
};
use std::net::IpAddr;

fn full_options_segment() -> Seg {
    Seg::client(common::id4(), 0xdead_beef)
        .syn()
        .ack(0x0102_0304)
        .win(64_240)
        .mss(1460)
        .sack_ok()
        .ts(123_456, 654_321)
        .wscale(7)
        .data(b"")
}

fn assert_same(parsed: &SegmentRepr<'_>, expected: &SegmentRepr<'_>) {
    assert_eq!(parsed, expected);
}

#[test]
fn ethernet_ipv4_round_trip_with_every_syn_option() {
    let seg = full_options_segment();
    let frame = emit_frame(LinkType::Ethernet, &seg.repr()).unwrap();
    let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
    assert_same(&parsed, &seg.repr());
    assert_eq!(parsed.options.mss, Some(1460));
    assert_eq!(parsed.options.window_scale, Some(7));
    assert!(parsed.options.sack_permitted);
    assert_eq!(
        parsed.options.timestamps.map(|t| (t.tsval, t.tsecr)),
        Some((123_456, 654_321))
    );
    assert_eq!(parsed.seq_len(), 1);
}

#[test]
fn raw_ipv6_round_trip_with_payload_and_flags() {
    let seg = Seg::server(common::id6(), u32::MAX - 3)
        .ack(17)
        .psh()
        .fin()
        .win(123)
        .ts(1, 2)
        .data(b"hello over IPv6");
    let frame = emit_frame(LinkType::RawIp, &seg.repr()).unwrap();
    assert_eq!(frame[0] >> 4, 6);
    let parsed = parse_frame(LinkType::RawIp, &frame).unwrap();
    assert_same(&parsed, &seg.repr());
    assert_eq!(parsed.src, SERVER6);
    assert_eq!(parsed.dst, CLIENT6);
    assert!(parsed.flags.fin() && parsed.flags.contains(TcpFlags::PSH) && parsed.flags.ack());
    assert_eq!(parsed.seq_len(), 16);
}

#[test]
fn every_sack_block_count_round_trips() {
    for blocks in 1..=4u32 {
        let mut seg = Seg::client(common::id4(), 10).ack(20);
        for b in 0..blocks {
            seg = seg.sack(100 + b * 10, 105 + b * 10);
        }
        // Four blocks leave no room for timestamps (2 + 4*8 = 34 bytes), three do.
        if blocks <= 3 {
            seg = seg.ts(9, 8);
        }
        for link in [LinkType::Ethernet, LinkType::RawIp] {
            let frame = emit_frame(link, &seg.repr()).unwrap();
            let parsed = parse_frame(link, &frame).unwrap();
            assert_same(&parsed, &seg.repr());
            assert_eq!(parsed.options.sack.as_slice().len(), blocks as usize);
        }
    }
}

#[test]
fn options_that_do_not_fit_are_an_error() {
    let seg = Seg::client(common::id4(), 10)
        .ack(20)
        .ts(1, 1)
        .sack(1, 2)
        .sack(3, 4)
        .sack(5, 6)
        .sack(7, 8);
    assert!(matches!(
        emit_frame(LinkType::RawIp, &seg.repr()),
        Err(EmitError::OptionsTooLong(_))
    ));
}

#[test]
fn emit_rejects_sll_and_mixed_families() {
    let seg = full_options_segment();
    assert_eq!(
        emit_frame(LinkType::LinuxSll, &seg.repr()),
        Err(EmitError::UnsupportedLink)
    );
    let mut mixed = seg.clone();
    mixed.dst = CLIENT6;
    assert!(matches!(
        emit_frame(LinkType::RawIp, &mixed.repr()),
        Err(EmitError::MixedFamilies { .. })
    ));
}

/// Verifies the IPv4 header checksum and the TCP checksum of a raw IP packet independently.
fn verify_checksums(packet: &[u8]) {
    let tcp_bytes;
    let expected;
    match packet[0] >> 4 {
        4 => {
            let ip = Ipv4HeaderSlice::from_slice(packet).unwrap();
            let header = ip.to_header();
            assert_eq!(
                ip.header_checksum(),
                header.calc_header_checksum(),
                "IPv4 header checksum"
            );
            tcp_bytes = &packet[ip.slice().len()..usize::from(ip.total_len())];
            let tcp = TcpSlice::from_slice(tcp_bytes).unwrap();
            expected = tcp
                .calc_checksum_ipv4(ip.source(), ip.destination())
                .unwrap();
            assert_eq!(tcp.checksum(), expected, "TCP checksum over IPv4");
        }
        6 => {
            let ip = Ipv6HeaderSlice::from_slice(packet).unwrap();
            tcp_bytes = &packet[40..40 + usize::from(ip.payload_length())];
            let tcp = TcpSlice::from_slice(tcp_bytes).unwrap();
            expected = tcp
                .calc_checksum_ipv6(ip.source(), ip.destination())
                .unwrap();
            assert_eq!(tcp.checksum(), expected, "TCP checksum over IPv6");
        }
        v => panic!("IP version {v}"),
    }
    assert_ne!(
        expected, 0,
        "a computed checksum is never the all-zero placeholder here"
    );
}

#[test]
fn emitted_checksums_are_correct() {
    let segments = [
        full_options_segment(),
        Seg::client(common::id4(), 7).ack(9).data(&[0xab; 1000]),
        Seg::server(common::id6(), 7).ack(9).data(b"odd length!"),
        Seg::server(common::id6(), 1)
            .syn()
            .ack(2)
            .mss(1440)
            .wscale(14)
            .sack_ok()
            .ts(5, 6),
    ];
    for seg in &segments {
        let raw = emit_frame(LinkType::RawIp, &seg.repr()).unwrap();
        verify_checksums(&raw);
        let eth = emit_frame(LinkType::Ethernet, &seg.repr()).unwrap();
        assert_eq!(
            &eth[14..],
            &raw[..],
            "the Ethernet frame wraps the same IP packet"
        );
        verify_checksums(&eth[14..]);
    }
}

#[test]
fn wrong_checksum_still_parses_offload() {
    let seg = Seg::client(common::id4(), 100).ack(200).data(b"abc");
    let mut frame = emit_frame(LinkType::RawIp, &seg.repr()).unwrap();
    // TCP checksum at IP header (20) + 16; IPv4 header checksum at 10.
    frame[36] ^= 0xff;
    frame[10] ^= 0xff;
    assert_same(&parse_frame(LinkType::RawIp, &frame).unwrap(), &seg.repr());
}

#[test]
fn vlan_tagged_ethernet_parses() {
    let seg = Seg::client(common::id4(), 42)
        .ack(43)
        .win(999)
        .data(b"vlan payload");
    for v6 in [false, true] {
        let (src, dst) = if v6 {
            (CLIENT6, SERVER6)
        } else {
            (CLIENT4, SERVER4)
        };
        let mut seg = seg.clone();
        seg.src = src;
        seg.dst = dst;
        let step = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
            .single_vlan(VlanId::try_new(100).unwrap());
        let builder = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => step.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => step.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let builder = builder.tcp(src.port(), dst.port(), 42, 999).ack(43);
        let mut frame = Vec::new();
        builder.write(&mut frame, &seg.payload).unwrap();
        assert_eq!(
            &frame[12..14],
            &[0x81, 0x00],
            "the frame carries an 802.1Q tag"
        );
        assert_same(
            &parse_frame(LinkType::Ethernet, &frame).unwrap(),
            &seg.repr(),
        );
    }
}

#[test]
fn linux_sll_parses_both_families() {
    for (src, dst) in [(CLIENT4, SERVER4), (CLIENT6, SERVER6)] {
        let mut seg = Seg::client(common::id4(), 77)
            .ack(88)
            .win(4321)
            .data(b"cooked");
        seg.src = src;
        seg.dst = dst;
        let step =
            PacketBuilder::linux_sll(LinuxSllPacketType::OUTGOING, 6, [2, 0, 0, 0, 0, 1, 0, 0]);
        let builder = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => step.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => step.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut frame = Vec::new();
        builder
            .tcp(src.port(), dst.port(), 77, 4321)
            .ack(88)
            .write(&mut frame, b"cooked")
            .unwrap();
        assert_eq!(
            &frame[14..16],
            &EtherType(if src.is_ipv4() { 0x0800 } else { 0x86dd })
                .0
                .to_be_bytes()
        );
        assert_same(
            &parse_frame(LinkType::LinuxSll, &frame).unwrap(),
            &seg.repr(),
        );
        // The same bytes after the 16-byte header are a raw IP packet.
        assert_same(
            &parse_frame(LinkType::RawIp, &frame[16..]).unwrap(),
            &seg.repr(),
        );
    }
}

#[test]
fn gso_segment_larger_than_mss_parses() {
    let payload: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    let seg = Seg::server(common::id4(), 1).ack(1).data(&payload);
    let frame = emit_frame(LinkType::Ethernet, &seg.repr()).unwrap();
    let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
    assert_eq!(parsed.payload.len(), 60_000);
    assert_same(&parsed, &seg.repr());
}

#[test]
fn oversized_payload_is_an_emit_error() {
    let payload = vec![0u8; 70_000];
    let seg = Seg::server(common::id4(), 1).ack(1).data(&payload);
    assert_eq!(
        emit_frame(LinkType::RawIp, &seg.repr()),
        Err(EmitError::PayloadTooLarge(70_000))
    );
}

fn v4_frame(link: LinkType) -> Vec<u8> {
    let seg = Seg::client(common::id4(), 5)
        .ack(6)
        .ts(1, 2)
        .data(b"0123456789");
    emit_frame(link, &seg.repr()).unwrap()
}

#[test]
fn truncated_frames_are_errors_at_each_layer() {
    let eth = v4_frame(LinkType::Ethernet);
    // Ethernet header cut.
    assert!(matches!(
        parse_frame(LinkType::Ethernet, &eth[..10]),
        Err(ParseError::Truncated { .. })
    ));
    assert!(matches!(
        parse_frame(LinkType::Ethernet, &[]),
        Err(ParseError::Truncated { .. })
    ));
    // IPv4 header cut.
    assert!(matches!(
        parse_frame(LinkType::Ethernet, &eth[..14 + 12]),
        Err(ParseError::Truncated { layer: "IPv4" })
    ));
    // SLL header cut.
    assert!(matches!(
        parse_frame(LinkType::LinuxSll, &[0; 15]),
        Err(ParseError::Truncated { .. })
    ));
    // Every strict prefix of a raw IP packet is an error, never a segment or a panic.
    let raw = v4_frame(LinkType::RawIp);
    for len in 0..raw.len() {
        assert!(
            parse_frame(LinkType::RawIp, &raw[..len]).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
    // TCP payload cut: the IP total length says more follows.
    assert_eq!(
        parse_frame(LinkType::RawIp, &raw[..raw.len() - 3]),
        Err(ParseError::TruncatedPayload)
    );
    let v6 = emit_frame(
        LinkType::RawIp,
        &Seg::server(common::id6(), 1).ack(1).data(b"abcdef").repr(),
    )
    .unwrap();
    assert!(matches!(
        parse_frame(LinkType::RawIp, &v6[..30]),
        Err(ParseError::Truncated { layer: "IPv6" })
    ));
    assert_eq!(
        parse_frame(LinkType::RawIp, &v6[..v6.len() - 1]),
        Err(ParseError::TruncatedPayload)
    );
}

#[test]
fn tcp_header_cut_but_ip_length_consistent_is_truncated_tcp() {
    // An IPv4 packet whose total length covers only 10 bytes of TCP header.
    let raw = v4_frame(LinkType::RawIp);
    let mut cut = raw[..30].to_vec();
    cut[2..4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(
        parse_frame(LinkType::RawIp, &cut),
        Err(ParseError::Truncated { layer: "TCP" })
    );
}

#[test]
fn bad_tcp_data_offset_is_an_error() {
    let raw = v4_frame(LinkType::RawIp);
    // Data offset below 5 words.
    let mut low = raw.clone();
    low[20 + 12] = (4 << 4) | (low[20 + 12] & 0x0f);
    assert!(matches!(
        parse_frame(LinkType::RawIp, &low),
        Err(ParseError::Malformed { layer: "TCP", .. })
    ));
    // Data offset past the end of the segment (15 words = 60 bytes > 20 + 12 + 10).
    let mut high = raw.clone();
    high[20 + 12] = (15 << 4) | (high[20 + 12] & 0x0f);
    assert!(parse_frame(LinkType::RawIp, &high).is_err());
}

#[test]
fn non_tcp_frames_are_skipped_with_their_reason() {
    // UDP over IPv4.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(53, 53)
        .write(&mut udp, b"dns")
        .unwrap();
    assert_eq!(
        parse_frame(LinkType::Ethernet, &udp),
        Err(ParseError::NotTcp)
    );
    assert_eq!(
        parse_frame(LinkType::RawIp, &udp[14..]),
        Err(ParseError::NotTcp)
    );
    // ARP request (RFC 826).
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 198, 18, 0, 2]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    assert_eq!(
        parse_frame(LinkType::Ethernet, &arp),
        Err(ParseError::NotIp)
    );
    // An unknown EtherType (LLDP).
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 2, 0, 0, 0, 0, 1, 0x88, 0xcc];
    lldp.extend_from_slice(&[0; 30]);
    assert_eq!(
        parse_frame(LinkType::Ethernet, &lldp),
        Err(ParseError::NotIp)
    );
    // Raw bytes that are no IP version.
    assert!(matches!(
        parse_frame(LinkType::RawIp, &[0x50; 40]),
        Err(ParseError::Malformed { .. })
    ));
}

#[test]
fn ip_fragments_are_rejected() {
    let raw = v4_frame(LinkType::RawIp);
    // More-fragments flag.
    let mut first = raw.clone();
    first[6] |= 0x20;
    first[10..12].copy_from_slice(&[0, 0]);
    let checksum = Ipv4Header::from_slice(&first)
        .unwrap()
        .0
        .calc_header_checksum();
    first[10..12].copy_from_slice(&checksum.to_be_bytes());
    assert_eq!(
        parse_frame(LinkType::RawIp, &first),
        Err(ParseError::Fragment)
    );
    // A later fragment (offset 8 bytes = 1 unit).
    let mut later = raw.clone();
    later[7] = 1;
    assert_eq!(
        parse_frame(LinkType::RawIp, &later),
        Err(ParseError::Fragment)
    );
    // IPv6 with a fragment header (next header 44) carrying TCP.
    let v6 = emit_frame(
        LinkType::RawIp,
        &Seg::server(common::id6(), 1)
            .ack(1)
            .data(b"abcdefgh")
            .repr(),
    )
    .unwrap();
    let mut frag = v6[..40].to_vec();
    frag[6] = 44;
    let payload_len = u16::from_be_bytes([v6[4], v6[5]]) + 8;
    frag[4..6].copy_from_slice(&payload_len.to_be_bytes());
    // next header TCP, reserved, offset 0 with M set, identification.
    frag.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 7]);
    frag.extend_from_slice(&v6[40..]);
    assert_eq!(
        parse_frame(LinkType::RawIp, &frag),
        Err(ParseError::Fragment)
    );
}

#[test]
fn trailing_ethernet_padding_is_not_payload() {
    // A minimum-size Ethernet frame pads a bare ACK (54 bytes) to 60: the IP length rules.
    let seg = Seg::client(common::id4(), 1).ack(1);
    let mut frame = emit_frame(LinkType::Ethernet, &seg.repr()).unwrap();
    assert_eq!(frame.len(), 54);
    frame.extend_from_slice(&[0; 6]);
    let parsed = parse_frame(LinkType::Ethernet, &frame).unwrap();
    assert!(parsed.payload.is_empty());
    assert_same(&parsed, &seg.repr());
}

#[test]
fn truncated_ip_headers_name_their_layer_on_every_link() {
    let raw = v4_frame(LinkType::RawIp);
    assert_eq!(
        parse_frame(LinkType::RawIp, &raw[..12]),
        Err(ParseError::Truncated { layer: "IPv4" })
    );
    let mut sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    sll.extend_from_slice(&raw[..12]);
    assert_eq!(
        parse_frame(LinkType::LinuxSll, &sll),
        Err(ParseError::Truncated { layer: "IPv4" })
    );
    let v6 = emit_frame(
        LinkType::RawIp,
        &Seg::server(common::id6(), 1).ack(1).repr(),
    )
    .unwrap();
    assert_eq!(
        parse_frame(LinkType::RawIp, &v6[..39]),
        Err(ParseError::Truncated { layer: "IPv6" })
    );
    // An Ethernet header that announces IPv4 but carries nothing (not even a version).
    let eth = v4_frame(LinkType::Ethernet);
    assert_eq!(
        parse_frame(LinkType::Ethernet, &eth[..14]),
        Err(ParseError::Truncated { layer: "IP" })
    );
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_skipped() {
    let seg = Seg::client(common::id4(), 11).ack(12).data(b"with options");
    let raw = emit_frame(LinkType::RawIp, &seg.repr()).unwrap();
    // IPv4 header with one word of options (four NOPs): IHL 6, total length + 4.
    let mut v4 = vec![0x46];
    v4.extend_from_slice(&raw[1..20]);
    v4.extend_from_slice(&[1, 1, 1, 1]);
    v4.extend_from_slice(&raw[20..]);
    let total = u16::from_be_bytes([raw[2], raw[3]]) + 4;
    v4[2..4].copy_from_slice(&total.to_be_bytes());
    assert_same(&parse_frame(LinkType::RawIp, &v4).unwrap(), &seg.repr());

    // IPv6 with a hop-by-hop options header (next header 0) carrying one PadN option.
    let mut seg6 = seg.clone();
    seg6.src = CLIENT6;
    seg6.dst = SERVER6;
    let raw6 = emit_frame(LinkType::RawIp, &seg6.repr()).unwrap();
    let mut v6 = raw6[..40].to_vec();
    v6[6] = 0;
    let len = u16::from_be_bytes([raw6[4], raw6[5]]) + 8;
    v6[4..6].copy_from_slice(&len.to_be_bytes());
    v6.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    v6.extend_from_slice(&raw6[40..]);
    assert_same(&parse_frame(LinkType::RawIp, &v6).unwrap(), &seg6.repr());
}
