//! pcap / pcapng reader and writer: round trips, hand-built files from other writers'
//! conventions, corrupted and truncated files, and `tcpdump -r` as an independent reader.

use cttm_capture::pcap::{
    FileFormat, PcapFileReader, PcapWriteError, PcapWriter, PcapngWriter, TimeResolution,
};
use cttm_capture::{CaptureError, CaptureSource};
use cttm_core::wire::{ParseError, TcpFlags, TcpOptions, emit_frame, parse_frame};
use cttm_core::{Instant, LinkType, SegmentRepr, SeqNumber};
use proptest::prelude::*;
use std::io::Cursor;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

type Frame = (Instant, LinkType, Vec<u8>);

/// Frames with awkward lengths (0, 1, not a multiple of 4, large) and times (sub-second
/// values at both ends, a 2026 epoch time).
fn sample_frames(link: LinkType) -> Vec<Frame> {
    let times = [
        0u64,
        1,
        999_999,
        1_000_000,
        1_764_000_000_123_456,
        1_764_000_001_000_001,
    ];
    let lens = [0usize, 1, 3, 54, 1514, 65_549];
    times
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (t, len))| {
            let data = (0..len).map(|b| (b * 7 + i) as u8).collect();
            (Instant::from_micros(*t), link, data)
        })
        .collect()
}

fn write_pcap(frames: &[Frame], resolution: TimeResolution) -> Vec<u8> {
    let mut writer = PcapWriter::new(Vec::new(), None, resolution).expect("pcap header");
    for (at, link, data) in frames {
        writer.write_frame(*at, *link, data).expect("pcap record");
    }
    assert_eq!(writer.frames(), frames.len() as u64);
    writer.finish().expect("flush")
}

fn write_pcapng(frames: &[Frame], resolution: TimeResolution) -> Vec<u8> {
    let mut writer = PcapngWriter::new(Vec::new(), resolution).expect("pcapng section");
    for (at, link, data) in frames {
        writer.write_frame(*at, *link, data).expect("pcapng block");
    }
    assert_eq!(writer.frames(), frames.len() as u64);
    writer.finish().expect("flush")
}

/// Reads every frame through `next_frame`, returning the frames and the final error if any.
fn read_all(bytes: Vec<u8>) -> (Vec<Frame>, Option<CaptureError>) {
    let mut reader = match PcapFileReader::from_reader(Cursor::new(bytes)) {
        Ok(reader) => reader,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut frames = Vec::new();
    // Bounded: a file of n bytes holds fewer than n frames.
    for _ in 0..100_000 {
        match reader.next_frame() {
            Ok(Some(frame)) => frames.push((frame.at, frame.link, frame.data.to_vec())),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
    panic!("reader did not finish");
}

/// Reads every frame through the `CaptureSource` trait.
fn read_all_as_source(bytes: Vec<u8>) -> Vec<Frame> {
    let mut source = PcapFileReader::from_reader(Cursor::new(bytes)).expect("open");
    let mut frames = Vec::new();
    for _ in 0..100_000 {
        match source.read_batch(Duration::ZERO, &mut |f| {
            frames.push((f.at, f.link, f.data.to_vec()))
        }) {
            Ok(n) => assert!(n > 0, "a file source never times out"),
            Err(CaptureError::EndOfCapture) => {
                assert_eq!(source.stats().frames, frames.len() as u64);
                assert_eq!(source.stats().dropped, 0);
                return frames;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    panic!("source did not finish");
}

#[test]
fn pcap_round_trip_both_resolutions_and_link_types() {
    for resolution in [TimeResolution::Micros, TimeResolution::Nanos] {
        for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::RawIp] {
            let frames = sample_frames(link);
            let bytes = write_pcap(&frames, resolution);
            let reader = PcapFileReader::from_reader(Cursor::new(bytes.clone())).expect("open");
            assert_eq!(reader.format(), FileFormat::Pcap);
            let (read, error) = read_all(bytes.clone());
            assert!(error.is_none(), "{resolution:?} {link:?}: {error:?}");
            assert_eq!(read, frames, "{resolution:?} {link:?}");
            assert_eq!(read_all_as_source(bytes), frames);
        }
    }
}

#[test]
fn pcapng_round_trip_both_resolutions_mixed_link_types() {
    for resolution in [TimeResolution::Micros, TimeResolution::Nanos] {
        let mut frames = sample_frames(LinkType::Ethernet);
        // Interleave link types: the writer adds one interface per link type.
        frames[1].1 = LinkType::RawIp;
        frames[3].1 = LinkType::LinuxSll;
        frames[4].1 = LinkType::RawIp;
        let bytes = write_pcapng(&frames, resolution);
        let reader = PcapFileReader::from_reader(Cursor::new(bytes.clone())).expect("open");
        assert_eq!(reader.format(), FileFormat::Pcapng);
        let (read, error) = read_all(bytes.clone());
        assert!(error.is_none(), "{resolution:?}: {error:?}");
        assert_eq!(read, frames, "{resolution:?}");
        assert_eq!(read_all_as_source(bytes), frames);
    }
}

#[test]
fn written_files_have_the_documented_magic_and_link_type() {
    let frames = sample_frames(LinkType::RawIp);
    let micros = write_pcap(&frames, TimeResolution::Micros);
    assert_eq!(micros[..4], 0xA1B2_C3D4u32.to_le_bytes());
    assert_eq!(micros[20..24], 101u32.to_le_bytes(), "LINKTYPE_RAW");
    let nanos = write_pcap(&frames, TimeResolution::Nanos);
    assert_eq!(nanos[..4], 0xA1B2_3C4Du32.to_le_bytes());
    // Second record of the nanosecond file: 1 µs = 1000 ns in the fraction field.
    let second_record = 24 + 16; // first frame is empty
    assert_eq!(
        nanos[second_record + 4..second_record + 8],
        1000u32.to_le_bytes()
    );
    let pcapng = write_pcapng(&frames, TimeResolution::Nanos);
    assert_eq!(pcapng[..4], [0x0A, 0x0D, 0x0D, 0x0A]);
}

#[test]
fn empty_pcap_writer_still_writes_a_valid_header() {
    let bytes = PcapWriter::new(Vec::new(), None, TimeResolution::Micros)
        .expect("writer")
        .finish()
        .expect("flush");
    assert_eq!(bytes.len(), 24);
    let (frames, error) = read_all(bytes);
    assert!(frames.is_empty());
    assert!(error.is_none());
}

#[test]
fn pcap_writer_refuses_a_second_link_type() {
    let mut writer =
        PcapWriter::new(Vec::new(), Some(LinkType::Ethernet), TimeResolution::Micros).expect("w");
    writer
        .write_frame(Instant::ZERO, LinkType::Ethernet, &[1, 2, 3])
        .expect("first");
    let err = writer
        .write_frame(Instant::ZERO, LinkType::RawIp, &[1, 2, 3])
        .unwrap_err();
    assert!(
        matches!(
            err,
            PcapWriteError::LinkTypeMismatch {
                file: LinkType::Ethernet,
                frame: LinkType::RawIp
            }
        ),
        "{err:?}"
    );
    let err = writer
        .write_frame(Instant::ZERO, LinkType::Ethernet, &vec![0; 300_000])
        .unwrap_err();
    assert!(
        matches!(err, PcapWriteError::FrameTooLong { len: 300_000 }),
        "{err:?}"
    );
    let far_future = Instant::from_micros((u64::from(u32::MAX) + 1) * 1_000_000);
    let err = writer
        .write_frame(far_future, LinkType::Ethernet, &[1])
        .unwrap_err();
    assert!(matches!(err, PcapWriteError::TimeOutOfRange(_)), "{err:?}");
    let (frames, error) = read_all(writer.finish().expect("flush"));
    assert_eq!(frames.len(), 1, "refused frames are not written");
    assert!(error.is_none());
}

#[test]
fn writers_flush_on_drop_to_a_file() {
    let dir = TempDir::new("flush-on-drop");
    let frames = sample_frames(LinkType::Ethernet);
    let pcap_path = dir.path("dropped.pcap");
    let pcapng_path = dir.path("dropped.pcapng");
    {
        let mut pcap = PcapWriter::create(&pcap_path, None, TimeResolution::Micros).expect("pcap");
        let mut pcapng = PcapngWriter::create(&pcapng_path, TimeResolution::Nanos).expect("ng");
        for (at, link, data) in &frames {
            pcap.write_frame(*at, *link, data).expect("pcap frame");
            pcapng.write_frame(*at, *link, data).expect("pcapng frame");
        }
        // Dropped without finish(): the BufWriter contents must still reach the file.
    }
    for path in [&pcap_path, &pcapng_path] {
        let mut reader = PcapFileReader::open(path).expect("open");
        let mut read = Vec::new();
        while let Some(frame) = reader.next_frame().expect("frame") {
            read.push((frame.at, frame.link, frame.data.to_vec()));
        }
        assert_eq!(read, frames, "{}", path.display());
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let err = PcapFileReader::open("/nonexistent/cttm/capture.pcap").unwrap_err();
    assert!(matches!(err, CaptureError::Io { .. }), "{err:?}");
}

#[test]
fn garbage_and_tiny_files_are_bad_files() {
    for bytes in [
        Vec::new(),
        vec![0xA1],
        vec![0xA1, 0xB2, 0xC3],
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
        vec![0u8; 4096],
        // A pcap magic with a header cut short.
        vec![0xD4, 0xC3, 0xB2, 0xA1, 2, 0, 4, 0],
        // A pcapng section header with a wrong byte-order magic.
        vec![
            0x0A, 0x0D, 0x0D, 0x0A, 0, 0, 0, 28, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0,
        ],
    ] {
        let len = bytes.len();
        let err = PcapFileReader::from_reader(Cursor::new(bytes)).unwrap_err();
        assert!(
            matches!(err, CaptureError::BadFile(_)),
            "{len} bytes: {err:?}"
        );
    }
}

/// Every prefix of a valid file reads as the frames wholly inside it, then either ends
/// cleanly (cut at a record boundary) or reports a bad file; never a panic, never a wrong frame.
#[test]
fn truncated_files_give_whole_frames_then_bad_file() {
    let frames: Vec<Frame> = sample_frames(LinkType::Ethernet)
        .into_iter()
        .map(|(at, link, data)| (at, link, data[..data.len().min(40)].to_vec()))
        .collect();
    for (name, bytes) in [
        ("pcap", write_pcap(&frames, TimeResolution::Nanos)),
        ("pcapng", write_pcapng(&frames, TimeResolution::Micros)),
    ] {
        let mut clean_ends = 0;
        for cut in 0..bytes.len() {
            let (read, error) = read_all(bytes[..cut].to_vec());
            assert_eq!(read[..], frames[..read.len()], "{name} cut at {cut}");
            match error {
                None => clean_ends += 1,
                Some(CaptureError::BadFile(_)) => {}
                Some(other) => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        // pcap: after the header and after each record; pcapng: after the interface block and
        // after each packet block (the section header alone is also a clean end).
        let expected = match name {
            "pcap" => frames.len(),
            _ => frames.len() + 1,
        };
        assert_eq!(clean_ends, expected, "{name}");
    }
}

#[test]
fn corrupted_pcap_fields_are_bad_files() {
    let frames = sample_frames(LinkType::Ethernet);
    let good = write_pcap(&frames[..3], TimeResolution::Micros);
    // Second record's microsecond field (offset 24 + 16 + 4) set to 1_000_000.
    let mut bad_fraction = good.clone();
    bad_fraction[44..48].copy_from_slice(&1_000_000u32.to_le_bytes());
    let (read, error) = read_all(bad_fraction);
    assert_eq!(read.len(), 1);
    assert!(matches!(error, Some(CaptureError::BadFile(_))), "{error:?}");
    // Second record's captured length made huge: the file ends inside it.
    let mut bad_length = good;
    bad_length[48..52].copy_from_slice(&0x00FF_FFFFu32.to_le_bytes());
    let (read, error) = read_all(bad_length);
    assert_eq!(read.len(), 1);
    assert!(matches!(error, Some(CaptureError::BadFile(_))), "{error:?}");
}

/// A classic pcap header built by hand.
fn pcap_header(big_endian: bool, nanos: bool, snaplen: u32, link: u32) -> Vec<u8> {
    let magic: u32 = if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 };
    let fields = [magic, 0x0002_0004, 0, 0, snaplen, link];
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        if i == 1 {
            // version major (2) then minor (4), 16 bits each
            let (major, minor) = (2u16, 4u16);
            if big_endian {
                out.extend(major.to_be_bytes());
                out.extend(minor.to_be_bytes());
            } else {
                out.extend(major.to_le_bytes());
                out.extend(minor.to_le_bytes());
            }
        } else if big_endian {
            out.extend(field.to_be_bytes());
        } else {
            out.extend(field.to_le_bytes());
        }
    }
    out
}

fn pcap_record(big_endian: bool, fields: [u32; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend(if big_endian {
            field.to_be_bytes()
        } else {
            field.to_le_bytes()
        });
    }
    out.extend_from_slice(data);
    out
}

#[test]
fn unsupported_link_types_are_refused() {
    // 105 = LINKTYPE_IEEE802_11.
    let err = PcapFileReader::from_reader(Cursor::new(pcap_header(false, false, 65535, 105)))
        .unwrap_err();
    assert!(
        matches!(err, CaptureError::UnsupportedLinkType(105)),
        "{err:?}"
    );
    // In pcapng, the packet of an unsupported interface is refused.
    let mut ng = pcapng_section(false);
    ng.extend(pcapng_block(false, 1, &idb_body(false, 105, &[])));
    ng.extend(pcapng_block(
        false,
        6,
        &epb_body(false, 0, 5, &[1, 2, 3, 4], 4),
    ));
    let (read, error) = read_all(ng);
    assert!(read.is_empty());
    assert!(
        matches!(error, Some(CaptureError::UnsupportedLinkType(105))),
        "{error:?}"
    );
}

#[test]
fn accepted_link_type_numbers() {
    for (number, link) in [
        (1, LinkType::Ethernet),
        (113, LinkType::LinuxSll),
        (101, LinkType::RawIp),
        (12, LinkType::RawIp),
        (228, LinkType::RawIp),
        (229, LinkType::RawIp),
    ] {
        let mut bytes = pcap_header(true, false, 65535, number);
        bytes.extend(pcap_record(true, [7, 8, 2, 2], &[0xAB, 0xCD]));
        let (read, error) = read_all(bytes);
        assert!(error.is_none(), "{number}: {error:?}");
        assert_eq!(
            read,
            vec![(Instant::from_micros(7_000_008), link, vec![0xAB, 0xCD])]
        );
    }
}

#[test]
fn big_endian_nanosecond_pcap_from_another_writer() {
    let mut bytes = pcap_header(true, true, 65535, 1);
    bytes.extend(pcap_record(
        true,
        [1_700_000_000, 123_456_789, 3, 3],
        &[1, 2, 3],
    ));
    bytes.extend(pcap_record(true, [1_700_000_001, 999, 1, 1], &[9]));
    let (read, error) = read_all(bytes);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        read,
        vec![
            (
                Instant::from_micros(1_700_000_000_123_456),
                LinkType::Ethernet,
                vec![1, 2, 3]
            ),
            (
                Instant::from_micros(1_700_000_001_000_000),
                LinkType::Ethernet,
                vec![9]
            ),
        ]
    );
}

/// A TCP segment with payload, as the service would send it.
fn tcp_segment(payload: &[u8]) -> SegmentRepr<'_> {
    SegmentRepr {
        src: "198.18.0.1:80".parse().expect("addr"),
        dst: "198.18.0.2:40000".parse().expect("addr"),
        seq: SeqNumber(1000),
        ack: SeqNumber(2000),
        flags: TcpFlags::from_bits(TcpFlags::ACK.bits() | TcpFlags::PSH.bits()),
        window: 512,
        options: TcpOptions::default(),
        payload,
    }
}

#[test]
fn snaplen_cut_frames_are_reported_and_refused_by_the_parser() {
    let payload = vec![0x5A; 1400];
    let frame = emit_frame(LinkType::Ethernet, &tcp_segment(&payload)).expect("emit");
    let original_len = frame.len() as u32;
    // tcpdump -s 96: only the first 96 bytes kept, original length recorded.
    let mut bytes = pcap_header(false, false, 96, 1);
    bytes.extend(pcap_record(false, [10, 20, 96, original_len], &frame[..96]));
    bytes.extend(pcap_record(false, [10, 30, 60, 60], &frame[..60]));
    let mut reader = PcapFileReader::from_reader(Cursor::new(bytes)).expect("open");
    let cut = reader.next_frame().expect("read").expect("frame");
    assert!(cut.is_truncated());
    assert_eq!(cut.original_len, original_len);
    assert_eq!(cut.data, &frame[..96]);
    assert_eq!(
        parse_frame(cut.link, cut.data).unwrap_err(),
        ParseError::TruncatedPayload
    );
    let whole = reader.next_frame().expect("read").expect("frame");
    assert!(!whole.is_truncated());
    assert!(reader.next_frame().expect("eof").is_none());
    assert_eq!(reader.truncated_frames(), 1);
}

// ---- hand-built pcapng ----

fn put32(out: &mut Vec<u8>, big_endian: bool, v: u32) {
    out.extend(if big_endian {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    });
}

fn put16(out: &mut Vec<u8>, big_endian: bool, v: u16) {
    out.extend(if big_endian {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    });
}

fn pcapng_block(big_endian: bool, block_type: u32, body: &[u8]) -> Vec<u8> {
    let mut padded = body.to_vec();
    padded.resize(body.len().div_ceil(4) * 4, 0);
    let total = 12 + padded.len() as u32;
    let mut out = Vec::new();
    put32(&mut out, big_endian, block_type);
    put32(&mut out, big_endian, total);
    out.extend(padded);
    put32(&mut out, big_endian, total);
    out
}

fn pcapng_section(big_endian: bool) -> Vec<u8> {
    let mut body = Vec::new();
    put32(&mut body, big_endian, 0x1A2B_3C4D);
    put16(&mut body, big_endian, 1);
    put16(&mut body, big_endian, 0);
    body.extend(if big_endian {
        (-1i64).to_be_bytes()
    } else {
        (-1i64).to_le_bytes()
    });
    pcapng_block(big_endian, 0x0A0D_0D0A, &body)
}

/// Interface description body; `options` are (code, value) pairs.
fn idb_body(big_endian: bool, link: u16, options: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    put16(&mut body, big_endian, link);
    put16(&mut body, big_endian, 0);
    put32(&mut body, big_endian, 0);
    for (code, value) in options {
        put16(&mut body, big_endian, *code);
        put16(&mut body, big_endian, value.len() as u16);
        body.extend(value);
        body.resize(body.len().div_ceil(4) * 4, 0);
    }
    if !options.is_empty() {
        put32(&mut body, big_endian, 0); // opt_endofopt
    }
    body
}

fn epb_body(big_endian: bool, interface: u32, units: u64, data: &[u8], original: u32) -> Vec<u8> {
    let mut body = Vec::new();
    put32(&mut body, big_endian, interface);
    put32(&mut body, big_endian, (units >> 32) as u32);
    put32(&mut body, big_endian, units as u32);
    put32(&mut body, big_endian, data.len() as u32);
    put32(&mut body, big_endian, original);
    body.extend_from_slice(data);
    body
}

#[test]
fn pcapng_timestamp_resolutions_offsets_and_block_kinds() {
    for big_endian in [false, true] {
        let mut ng = pcapng_section(big_endian);
        // Interface 0: default resolution (microseconds). Interface 1: milliseconds (10^-3).
        // Interface 2: 2^-10 s with an if_tsoffset of 100 s. Interface 3: nanoseconds.
        let offset = if big_endian {
            100u64.to_be_bytes()
        } else {
            100u64.to_le_bytes()
        };
        ng.extend(pcapng_block(big_endian, 1, &idb_body(big_endian, 1, &[])));
        ng.extend(pcapng_block(
            big_endian,
            1,
            &idb_body(big_endian, 101, &[(9, vec![3])]),
        ));
        ng.extend(pcapng_block(
            big_endian,
            1,
            &idb_body(
                big_endian,
                113,
                &[(9, vec![0x80 | 10]), (14, offset.to_vec())],
            ),
        ));
        ng.extend(pcapng_block(
            big_endian,
            1,
            &idb_body(big_endian, 1, &[(9, vec![9])]),
        ));
        // A name resolution block and an unknown block are skipped.
        ng.extend(pcapng_block(big_endian, 4, &[0, 0, 0, 0]));
        ng.extend(pcapng_block(
            big_endian,
            0x0BAD_B10C,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ));
        ng.extend(pcapng_block(
            big_endian,
            6,
            &epb_body(big_endian, 0, 5_000_001, &[1], 1),
        ));
        ng.extend(pcapng_block(
            big_endian,
            6,
            &epb_body(big_endian, 1, 7_005, &[2, 2], 2),
        ));
        ng.extend(pcapng_block(
            big_endian,
            6,
            &epb_body(big_endian, 2, 1536, &[3, 3, 3], 3),
        ));
        ng.extend(pcapng_block(
            big_endian,
            6,
            &epb_body(big_endian, 3, 1_700_000_000_123_456_789, &[4; 5], 9),
        ));
        // A Simple Packet Block: interface 0, no timestamp (the previous one is kept).
        let mut spb = Vec::new();
        put32(&mut spb, big_endian, 3);
        spb.extend([5, 5, 5]);
        ng.extend(pcapng_block(big_endian, 3, &spb));
        let mut reader = PcapFileReader::from_reader(Cursor::new(ng.clone())).expect("open");
        let mut read = Vec::new();
        while let Some(frame) = reader.next_frame().expect("frame") {
            read.push((
                frame.at.micros(),
                frame.link,
                frame.data.to_vec(),
                frame.original_len,
            ));
        }
        let expected = vec![
            (5_000_001, LinkType::Ethernet, vec![1], 1),
            (7_005_000, LinkType::RawIp, vec![2, 2], 2),
            // 1536 / 1024 s = 1.5 s, plus 100 s offset
            (101_500_000, LinkType::LinuxSll, vec![3, 3, 3], 3),
            (1_700_000_000_123_456, LinkType::Ethernet, vec![4; 5], 9),
            (1_700_000_000_123_456, LinkType::Ethernet, vec![5, 5, 5], 3),
        ];
        assert_eq!(read, expected, "big endian: {big_endian}");
        assert_eq!(reader.truncated_frames(), 1, "the 5-of-9-byte frame");
    }
}

#[test]
fn pcapng_packet_of_undescribed_interface_is_a_bad_file() {
    let mut ng = pcapng_section(false);
    ng.extend(pcapng_block(false, 1, &idb_body(false, 1, &[])));
    ng.extend(pcapng_block(false, 6, &epb_body(false, 4, 1, &[1], 1)));
    let (read, error) = read_all(ng.clone());
    assert!(read.is_empty());
    assert!(matches!(error, Some(CaptureError::BadFile(_))), "{error:?}");
    // A captured length larger than the block.
    let mut body = epb_body(false, 0, 1, &[1, 2, 3, 4], 4);
    body[12..16].copy_from_slice(&400u32.to_le_bytes());
    let mut ng = pcapng_section(false);
    ng.extend(pcapng_block(false, 1, &idb_body(false, 1, &[])));
    ng.extend(pcapng_block(false, 6, &body));
    let (read, error) = read_all(ng);
    assert!(read.is_empty());
    assert!(matches!(error, Some(CaptureError::BadFile(_))), "{error:?}");
}

/// Drains a reader over arbitrary bytes; only the absence of a panic and a bounded loop are
/// checked (plus: errors are the documented ones).
fn drain_untrusted(bytes: Vec<u8>) {
    let (_, error) = read_all(bytes);
    if let Some(error) = error {
        assert!(
            matches!(
                error,
                CaptureError::BadFile(_) | CaptureError::UnsupportedLinkType(_)
            ),
            "{error:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        drain_untrusted(bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_pcap_header_never_panic(
        big_endian in any::<bool>(),
        nanos in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = pcap_header(big_endian, nanos, 65535, 1);
        bytes.extend(tail);
        drain_untrusted(bytes);
    }

    #[test]
    fn arbitrary_blocks_after_a_pcapng_section_never_panic(
        big_endian in any::<bool>(),
        blocks in proptest::collection::vec(
            (prop_oneof![Just(1u32), Just(2), Just(3), Just(4), Just(5), Just(6), Just(0x0A0D_0D0A),
                         any::<u32>()],
             proptest::collection::vec(any::<u8>(), 0..64)),
            0..8),
    ) {
        let mut bytes = pcapng_section(big_endian);
        for (block_type, body) in blocks {
            bytes.extend(pcapng_block(big_endian, block_type, &body));
        }
        drain_untrusted(bytes);
    }

    #[test]
    fn flipped_bytes_in_a_valid_file_never_panic(
        pcapng in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let frames = sample_frames(LinkType::Ethernet)
            .into_iter()
            .map(|(at, link, data)| (at, link, data[..data.len().min(100)].to_vec()))
            .collect::<Vec<_>>();
        let mut bytes = if pcapng {
            write_pcapng(&frames, TimeResolution::Nanos)
        } else {
            write_pcap(&frames, TimeResolution::Micros)
        };
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        drain_untrusted(bytes);
    }
}

// ---- an independent reader: tcpdump ----

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cttm-capture-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tcpdump_available() -> bool {
    Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn tcpdump_reads_what_the_writers_write() {
    if !tcpdump_available() {
        eprintln!("tcpdump not installed: skipping the independent-reader check");
        return;
    }
    let dir = TempDir::new("tcpdump");
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| vec![b'a' + i as u8; 10 + i]).collect();
    let frames: Vec<Frame> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let link = if i % 2 == 0 {
                LinkType::Ethernet
            } else {
                LinkType::RawIp
            };
            let at = Instant::from_micros(1_764_000_000_000_000 + i as u64 * 1_500_250);
            (at, link, emit_frame(link, &tcp_segment(p)).expect("emit"))
        })
        .collect();
    let ethernet_only: Vec<Frame> = frames
        .iter()
        .filter(|f| f.1 == LinkType::Ethernet)
        .cloned()
        .collect();
    let raw_ip_only: Vec<Frame> = frames
        .iter()
        .filter(|f| f.1 == LinkType::RawIp)
        .cloned()
        .collect();
    // libpcap refuses pcapng files whose interfaces have different link types (Wireshark
    // reads them): each file here holds one link type.
    let cases = [
        (
            "micros.pcap",
            write_pcap(&ethernet_only, TimeResolution::Micros),
            &ethernet_only,
        ),
        (
            "nanos.pcap",
            write_pcap(&raw_ip_only, TimeResolution::Nanos),
            &raw_ip_only,
        ),
        (
            "nanos.pcapng",
            write_pcapng(&ethernet_only, TimeResolution::Nanos),
            &ethernet_only,
        ),
        (
            "micros.pcapng",
            write_pcapng(&raw_ip_only, TimeResolution::Micros),
            &raw_ip_only,
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path(name);
        std::fs::write(&path, bytes).expect("write");
        let output = Command::new("tcpdump")
            .args(["-nn", "-tt", "-S", "-r"])
            .arg(&path)
            .output()
            .expect("run tcpdump");
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{name}:\n{text}");
        for ((at, _, _), line) in expected.iter().zip(&lines) {
            let time = format!("{}.{:06}", at.micros() / 1_000_000, at.micros() % 1_000_000);
            assert!(
                line.starts_with(&time),
                "{name}: {line} should start with {time}"
            );
            assert!(
                line.contains("198.18.0.1.80 > 198.18.0.2.40000"),
                "{name}: {line}"
            );
            assert!(line.contains("seq 1000:"), "{name}: {line}");
        }
    }
}
