//! pcap and pcapng capture files: replaying a capture through the tracker, and writing what
//! an agent saw so an operator can open it in Wireshark or `tcpdump -r`.
//!
//! Reading: [`PcapFileReader`] detects the format by its magic number (pcap in either byte
//! order, microsecond or nanosecond resolution; pcapng with per-interface `if_tsresol` and
//! `if_tsoffset`), maps the link type to [`LinkType`] and implements [`CaptureSource`].
//! Every file is untrusted input: a truncated or corrupted file yields
//! [`CaptureError::BadFile`], never a panic. The block layer of the `pcap-file` crate is used;
//! packet blocks are decoded here so that timestamp resolution and captured-vs-original length
//! follow the pcapng specification (draft-ietf-opsawg-pcapng) rather than the crate's defaults.
//!
//! Writing: [`PcapWriter`] (classic pcap) and [`PcapngWriter`]. Both flush when dropped; call
//! `finish` to see a flush error.

use crate::{CaptureError, CaptureSource, CaptureStats, CapturedFrame};
use cttm_core::{Instant, LinkType};
use pcap_file::pcap::{PcapHeader, RawPcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// pcap link type numbers (<https://www.tcpdump.org/linktypes.html>).
mod linktype {
    /// `LINKTYPE_ETHERNET`.
    pub(super) const ETHERNET: u32 = 1;
    /// `DLT_RAW` as some BSDs wrote it into files before `LINKTYPE_RAW` existed.
    pub(super) const RAW_BSD: u32 = 12;
    /// `LINKTYPE_RAW`: a bare IPv4 or IPv6 packet.
    pub(super) const RAW: u32 = 101;
    /// `LINKTYPE_LINUX_SLL`: Linux cooked capture v1.
    pub(super) const LINUX_SLL: u32 = 113;
    /// `LINKTYPE_IPV4`.
    pub(super) const IPV4: u32 = 228;
    /// `LINKTYPE_IPV6`.
    pub(super) const IPV6: u32 = 229;
}

/// The pcap header's link-type field: the low 16 bits are the link type, the high bits
/// carry FCS information (pcap file format, "LinkType and additional information").
const PCAP_LINKTYPE_MASK: u32 = 0xFFFF;

/// pcapng block types (draft-ietf-opsawg-pcapng §11.1).
const PCAPNG_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const PCAPNG_INTERFACE_DESCRIPTION: u32 = 0x0000_0001;
const PCAPNG_OBSOLETE_PACKET: u32 = 0x0000_0002;
const PCAPNG_SIMPLE_PACKET: u32 = 0x0000_0003;
const PCAPNG_ENHANCED_PACKET: u32 = 0x0000_0006;

/// pcap magic numbers as read big-endian from the first four bytes.
const PCAP_MAGIC_MICROS_BE: u32 = 0xA1B2_C3D4;
const PCAP_MAGIC_MICROS_LE: u32 = 0xD4C3_B2A1;
const PCAP_MAGIC_NANOS_BE: u32 = 0xA1B2_3C4D;
const PCAP_MAGIC_NANOS_LE: u32 = 0x4D3C_B2A1;

/// Snap length written into the files we create: 256 KiB, tcpdump's default, so that GSO
/// super-segments (up to 64 KiB of IP plus the link header) are never cut.
const WRITE_SNAPLEN: u32 = 262_144;

/// Frames visited per [`CaptureSource::read_batch`] call.
const BATCH_FRAMES: usize = 64;

/// Maps a pcap/pcapng link-type number to the link types the tracker parses.
pub fn link_type_from_number(number: u32) -> Result<LinkType, CaptureError> {
    match number {
        linktype::ETHERNET => Ok(LinkType::Ethernet),
        linktype::LINUX_SLL => Ok(LinkType::LinuxSll),
        linktype::RAW | linktype::RAW_BSD | linktype::IPV4 | linktype::IPV6 => Ok(LinkType::RawIp),
        other => Err(CaptureError::UnsupportedLinkType(other)),
    }
}

/// The link-type number written into files for `link`.
pub fn link_type_number(link: LinkType) -> u32 {
    match link {
        LinkType::Ethernet => linktype::ETHERNET,
        LinkType::LinuxSll => linktype::LINUX_SLL,
        LinkType::RawIp => linktype::RAW,
    }
}

/// Which container a capture file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// Classic libpcap format.
    Pcap,
    /// pcapng (the Wireshark default).
    Pcapng,
}

/// Timestamp resolution of a written file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimeResolution {
    /// Microseconds (classic pcap magic `a1b2c3d4`; pcapng without `if_tsresol`).
    #[default]
    Micros,
    /// Nanoseconds (pcap magic `a1b23c4d`; pcapng `if_tsresol` = 9).
    Nanos,
}

/// One frame read from a file, with its original length on the wire.
#[derive(Clone, Copy, Debug)]
pub struct FileFrame<'a> {
    /// Capture time, microseconds since the Unix epoch (finer resolutions are truncated).
    pub at: Instant,
    /// Link type of `data`.
    pub link: LinkType,
    /// The bytes captured.
    pub data: &'a [u8],
    /// The frame's length on the wire. Larger than `data.len()` when the capture's snap length
    /// cut the frame: the tracker then reports `ParseError::TruncatedPayload` for it.
    pub original_len: u32,
}

impl FileFrame<'_> {
    /// True when fewer bytes were captured than the frame had on the wire.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.original_len)
    }
}

/// Timestamp units of one pcapng interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PcapngUnits {
    /// One unit is 10^-n seconds.
    DecimalExponent(u8),
    /// One unit is 2^-n seconds.
    BinaryExponent(u8),
}

impl PcapngUnits {
    /// From an `if_tsresol` byte: most significant bit clear means a power of 10, set means
    /// a power of 2 (draft-ietf-opsawg-pcapng §4.2, `if_tsresol`).
    fn from_tsresol(byte: u8) -> Self {
        if byte & 0x80 == 0 {
            PcapngUnits::DecimalExponent(byte)
        } else {
            PcapngUnits::BinaryExponent(byte & 0x7F)
        }
    }

    /// Converts a timestamp in these units to microseconds (saturating).
    fn to_micros(self, units: u64) -> u64 {
        match self {
            PcapngUnits::DecimalExponent(6) => units,
            PcapngUnits::DecimalExponent(n) if n < 6 => {
                units.saturating_mul(10u64.pow(u32::from(6 - n)))
            }
            PcapngUnits::DecimalExponent(n) => {
                // 10^(n-6) exceeds u64 for n > 25: every timestamp is then below one microsecond.
                10u64
                    .checked_pow(u32::from(n - 6))
                    .map_or(0, |divisor| units / divisor)
            }
            PcapngUnits::BinaryExponent(n) => {
                let micros = (u128::from(units) * 1_000_000) >> n;
                u64::try_from(micros).unwrap_or(u64::MAX)
            }
        }
    }
}

/// One pcapng interface, as its Interface Description Block declared it.
#[derive(Clone, Copy, Debug)]
struct PcapngInterface {
    /// The link type number (mapped when one of its packets is read, so an unused interface of
    /// an unsupported type does not make the whole file unreadable).
    link_number: u32,
    /// Its snap length (0 = unlimited), needed to size Simple Packet Block data.
    snaplen: u32,
    /// Timestamp units.
    units: PcapngUnits,
    /// `if_tsoffset`: seconds to add to every timestamp.
    offset_seconds: i64,
}

impl PcapngInterface {
    fn from_block(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut interface = PcapngInterface {
            link_number: u32::from(idb.linktype),
            snaplen: idb.snaplen,
            // Without if_tsresol the resolution is microseconds (pcapng §4.2).
            units: PcapngUnits::DecimalExponent(6),
            offset_seconds: 0,
        };
        for option in &idb.options {
            match option {
                InterfaceDescriptionOption::IfTsResol(byte) => {
                    interface.units = PcapngUnits::from_tsresol(*byte);
                }
                InterfaceDescriptionOption::IfTsOffset(seconds) => {
                    // The option is a signed 64-bit integer stored in the crate's u64.
                    interface.offset_seconds = i64::from_ne_bytes(seconds.to_ne_bytes());
                }
                _ => {}
            }
        }
        interface
    }

    fn instant(&self, units: u64) -> Instant {
        let micros = self.units.to_micros(units);
        let offset = self.offset_seconds.saturating_mul(1_000_000);
        Instant::from_micros(micros.saturating_add_signed(offset))
    }
}

/// The two containers, each with its reader.
enum Container {
    Pcap {
        reader: pcap_file::pcap::PcapReader<Box<dyn Read + Send>>,
        link: LinkType,
        resolution: TsResolution,
    },
    Pcapng {
        reader: pcap_file::pcapng::PcapNgReader<Box<dyn Read + Send>>,
        /// Interfaces of the current section, by interface id.
        interfaces: Vec<PcapngInterface>,
        /// Time of the previous packet, for Simple Packet Blocks (they carry no timestamp).
        last_at: Instant,
    },
}

/// Reads a pcap or pcapng file frame by frame; a finite [`CaptureSource`].
pub struct PcapFileReader {
    container: Container,
    stats: CaptureStats,
    truncated_frames: u64,
    /// An error met in the middle of a batch, returned by the next call.
    pending_error: Option<CaptureError>,
    finished: bool,
    /// pcapng packets are copied here (one copy per frame) because the block reader cannot
    /// lend a block across the loop that skips non-packet blocks.
    frame_buffer: Vec<u8>,
}

impl std::fmt::Debug for PcapFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapFileReader")
            .field("format", &self.format())
            .field("stats", &self.stats)
            .field("truncated_frames", &self.truncated_frames)
            .finish_non_exhaustive()
    }
}

impl PcapFileReader {
    /// Opens a capture file, detecting pcap or pcapng from its first bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let file = File::open(path.as_ref()).map_err(|source| CaptureError::Io {
            what: "opening the capture file",
            source,
        })?;
        Self::from_reader(file)
    }

    /// Reads a capture from any byte stream (a file, a pipe, bytes in memory).
    pub fn from_reader(mut reader: impl Read + Send + 'static) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        read_magic(&mut reader, &mut magic)?;
        let stream: Box<dyn Read + Send> = Box::new(Cursor::new(magic).chain(reader));
        let container = match u32::from_be_bytes(magic) {
            PCAP_MAGIC_MICROS_BE | PCAP_MAGIC_MICROS_LE | PCAP_MAGIC_NANOS_BE
            | PCAP_MAGIC_NANOS_LE => {
                let reader = pcap_file::pcap::PcapReader::new(stream)
                    .map_err(|e| bad_file("reading the pcap header", e))?;
                let header = reader.header();
                let number = u32::from(header.datalink) & PCAP_LINKTYPE_MASK;
                let link = link_type_from_number(number)?;
                Container::Pcap {
                    reader,
                    link,
                    resolution: header.ts_resolution,
                }
            }
            PCAPNG_SECTION_HEADER => {
                let reader = pcap_file::pcapng::PcapNgReader::new(stream)
                    .map_err(|e| bad_file("reading the pcapng section header", e))?;
                Container::Pcapng {
                    reader,
                    interfaces: Vec::new(),
                    last_at: Instant::ZERO,
                }
            }
            other => {
                return Err(CaptureError::BadFile(format!(
                    "unknown magic number {other:#010x}: not a pcap or pcapng file"
                )));
            }
        };
        Ok(PcapFileReader {
            container,
            stats: CaptureStats::default(),
            truncated_frames: 0,
            pending_error: None,
            finished: false,
            frame_buffer: Vec::new(),
        })
    }

    /// The file's container format.
    pub fn format(&self) -> FileFormat {
        match self.container {
            Container::Pcap { .. } => FileFormat::Pcap,
            Container::Pcapng { .. } => FileFormat::Pcapng,
        }
    }

    /// Frames read so far whose captured length was shorter than their original length.
    pub fn truncated_frames(&self) -> u64 {
        self.truncated_frames
    }

    /// The next frame, `Ok(None)` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<FileFrame<'_>>, CaptureError> {
        if self.finished {
            return Ok(None);
        }
        let frame = match &mut self.container {
            Container::Pcap {
                reader,
                link,
                resolution,
            } => next_pcap_frame(reader, *link, *resolution),
            Container::Pcapng {
                reader,
                interfaces,
                last_at,
            } => next_pcapng_frame(reader, interfaces, last_at, &mut self.frame_buffer),
        };
        match frame {
            Ok(Some(frame)) => {
                self.stats.frames += 1;
                if frame.is_truncated() {
                    self.truncated_frames += 1;
                }
                Ok(Some(frame))
            }
            Ok(None) => {
                self.finished = true;
                Ok(None)
            }
            Err(e) => {
                // A corrupted file cannot be resynchronised: stop reading it.
                self.finished = true;
                Err(e)
            }
        }
    }
}

impl CaptureSource for PcapFileReader {
    /// Visits up to 64 frames; never waits (a file is always ready).
    fn read_batch(
        &mut self,
        _timeout: Duration,
        visit: &mut dyn FnMut(CapturedFrame<'_>),
    ) -> Result<usize, CaptureError> {
        if let Some(e) = self.pending_error.take() {
            return Err(e);
        }
        let mut visited = 0;
        while visited < BATCH_FRAMES {
            match self.next_frame() {
                Ok(Some(frame)) => {
                    visit(CapturedFrame {
                        at: frame.at,
                        link: frame.link,
                        data: frame.data,
                    });
                    visited += 1;
                }
                Ok(None) => break,
                Err(e) if visited == 0 => return Err(e),
                Err(e) => {
                    self.pending_error = Some(e);
                    break;
                }
            }
        }
        if visited == 0 {
            return Err(CaptureError::EndOfCapture);
        }
        Ok(visited)
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }
}

/// Reads the four magic bytes, telling an empty or tiny file apart from an I/O failure.
fn read_magic(reader: &mut impl Read, magic: &mut [u8; 4]) -> Result<(), CaptureError> {
    let mut filled = 0;
    while filled < magic.len() {
        match reader.read(&mut magic[filled..]) {
            Ok(0) => {
                return Err(CaptureError::BadFile(format!(
                    "file too short ({filled} bytes): not a pcap or pcapng file"
                )));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(CaptureError::Io {
                    what: "reading the capture file",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Turns a `pcap-file` error into [`CaptureError::BadFile`] (or `Io` for a real I/O failure).
fn bad_file(context: &str, error: PcapError) -> CaptureError {
    match error {
        PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => CaptureError::BadFile(
            format!("{context}: the file ends in the middle of a record (truncated capture)"),
        ),
        PcapError::IncompleteBuffer => CaptureError::BadFile(format!(
            "{context}: a record is shorter than its header announces (corrupted capture)"
        )),
        PcapError::IoError(source) => CaptureError::Io {
            what: "reading the capture file",
            source,
        },
        other => CaptureError::BadFile(format!("{context}: {other} (corrupted capture)")),
    }
}

fn next_pcap_frame<'r>(
    reader: &'r mut pcap_file::pcap::PcapReader<Box<dyn Read + Send>>,
    link: LinkType,
    resolution: TsResolution,
) -> Result<Option<FileFrame<'r>>, CaptureError> {
    // The raw record: `PcapPacket` would refuse frames whose original length exceeds the snap
    // length, which is exactly the cut-frame case we want to read and report.
    let packet: RawPcapPacket<'r> = match reader.next_raw_packet() {
        None => return Ok(None),
        Some(Ok(packet)) => packet,
        Some(Err(e)) => return Err(bad_file("reading a pcap record", e)),
    };
    let fraction_limit = match resolution {
        TsResolution::MicroSecond => 1_000_000,
        TsResolution::NanoSecond => 1_000_000_000,
    };
    if packet.ts_frac >= fraction_limit {
        return Err(CaptureError::BadFile(format!(
            "a record's sub-second timestamp {} is out of range (corrupted capture)",
            packet.ts_frac
        )));
    }
    let fraction_micros = match resolution {
        TsResolution::MicroSecond => u64::from(packet.ts_frac),
        TsResolution::NanoSecond => u64::from(packet.ts_frac) / 1000,
    };
    let at = Instant::from_micros(u64::from(packet.ts_sec) * 1_000_000 + fraction_micros);
    let data = match packet.data {
        Cow::Borrowed(data) => data,
        // The reader always borrows from its buffer; an owned record would be a crate change.
        Cow::Owned(_) => {
            return Err(CaptureError::BadFile(
                "unexpected owned pcap record".to_string(),
            ));
        }
    };
    Ok(Some(FileFrame {
        at,
        link,
        data,
        original_len: packet.orig_len,
    }))
}

fn next_pcapng_frame<'r>(
    reader: &mut pcap_file::pcapng::PcapNgReader<Box<dyn Read + Send>>,
    interfaces: &mut Vec<PcapngInterface>,
    last_at: &mut Instant,
    frame_buffer: &'r mut Vec<u8>,
) -> Result<Option<FileFrame<'r>>, CaptureError> {
    loop {
        // A Section Header Block changes the byte order only for the blocks after it, and the
        // reader applies it while reading that block: the order read here is the right one for
        // every non-section block returned next.
        let little_endian = reader.section().endianness == Endianness::Little;
        // The reader parses Section Header and Interface Description Blocks itself; packet
        // blocks are decoded here from their raw body, everything else (name resolution,
        // statistics, custom and unknown blocks) is skipped undecoded.
        let packet = match reader.next_raw_block() {
            None => return Ok(None),
            Some(Err(e)) => return Err(bad_file("reading a pcapng block", e)),
            Some(Ok(block)) => match block.type_ {
                PCAPNG_SECTION_HEADER => {
                    interfaces.clear();
                    None
                }
                PCAPNG_INTERFACE_DESCRIPTION => None,
                PCAPNG_ENHANCED_PACKET | PCAPNG_OBSOLETE_PACKET | PCAPNG_SIMPLE_PACKET => {
                    let body = BlockBody {
                        bytes: &block.body,
                        little_endian,
                    };
                    Some(decode_packet_block(
                        block.type_,
                        body,
                        interfaces,
                        frame_buffer,
                    )?)
                }
                _ => None,
            },
        };
        match packet {
            Some(header) => {
                let interface = interfaces.get(header.interface as usize).ok_or_else(|| {
                    CaptureError::BadFile(format!(
                        "a packet refers to interface {} but only {} are described (corrupted \
                         capture)",
                        header.interface,
                        interfaces.len()
                    ))
                })?;
                let link = link_type_from_number(interface.link_number)?;
                let at = match header.timestamp {
                    Some(units) => interface.instant(units),
                    None => *last_at,
                };
                *last_at = at;
                return Ok(Some(FileFrame {
                    at,
                    link,
                    data: frame_buffer,
                    original_len: header.original_len,
                }));
            }
            None => {
                if let Some(idb) = reader.interfaces().get(interfaces.len()) {
                    interfaces.push(PcapngInterface::from_block(idb));
                }
            }
        }
    }
}

/// What a packet block says about its packet (the data is copied to the frame buffer).
struct PacketHeader {
    interface: u32,
    /// In the interface's units; `None` for a Simple Packet Block.
    timestamp: Option<u64>,
    original_len: u32,
}

/// A block body with the section's byte order, read with bounds checks.
struct BlockBody<'a> {
    bytes: &'a [u8],
    little_endian: bool,
}

impl BlockBody<'_> {
    fn u16_at(&self, offset: usize) -> Result<u16, CaptureError> {
        let bytes: [u8; 2] = self.field(offset)?;
        Ok(if self.little_endian {
            u16::from_le_bytes(bytes)
        } else {
            u16::from_be_bytes(bytes)
        })
    }

    fn u32_at(&self, offset: usize) -> Result<u32, CaptureError> {
        let bytes: [u8; 4] = self.field(offset)?;
        Ok(if self.little_endian {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    }

    fn field<const N: usize>(&self, offset: usize) -> Result<[u8; N], CaptureError> {
        offset
            .checked_add(N)
            .and_then(|end| self.bytes.get(offset..end))
            .and_then(|slice| <[u8; N]>::try_from(slice).ok())
            .ok_or_else(|| {
                CaptureError::BadFile(
                    "a pcapng packet block is too short (corrupted capture)".into(),
                )
            })
    }

    fn data(&self, offset: usize, len: u32) -> Result<&[u8], CaptureError> {
        offset
            .checked_add(len as usize)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or_else(|| {
                CaptureError::BadFile(
                    "a pcapng packet's captured length exceeds its block (corrupted capture)"
                        .into(),
                )
            })
    }
}

/// Decodes an Enhanced (§4.3), Simple (§4.4) or obsolete (Appendix A) Packet Block body and
/// copies the packet into `frame_buffer`.
fn decode_packet_block(
    block_type: u32,
    body: BlockBody<'_>,
    interfaces: &[PcapngInterface],
    frame_buffer: &mut Vec<u8>,
) -> Result<PacketHeader, CaptureError> {
    let timestamp = |high: u32, low: u32| (u64::from(high) << 32) | u64::from(low);
    let (header, data) = match block_type {
        PCAPNG_ENHANCED_PACKET => {
            // interface id, timestamp high, timestamp low, captured length, original length
            let header = PacketHeader {
                interface: body.u32_at(0)?,
                timestamp: Some(timestamp(body.u32_at(4)?, body.u32_at(8)?)),
                original_len: body.u32_at(16)?,
            };
            (header, body.data(20, body.u32_at(12)?)?)
        }
        PCAPNG_OBSOLETE_PACKET => {
            // interface id (16 bits), drops count (16 bits), timestamps, lengths
            let header = PacketHeader {
                interface: u32::from(body.u16_at(0)?),
                timestamp: Some(timestamp(body.u32_at(4)?, body.u32_at(8)?)),
                original_len: body.u32_at(16)?,
            };
            (header, body.data(20, body.u32_at(12)?)?)
        }
        _ => {
            // Simple Packet Block: original length only; the captured length is the smaller of
            // the original length and interface 0's snap length, padding follows the data.
            let original_len = body.u32_at(0)?;
            let snaplen = interfaces.first().map_or(0, |i| i.snaplen);
            let available = u32::try_from(body.bytes.len() - 4).unwrap_or(u32::MAX);
            let mut captured = original_len.min(available);
            if snaplen != 0 {
                captured = captured.min(snaplen);
            }
            let header = PacketHeader {
                interface: 0,
                timestamp: None,
                original_len,
            };
            (header, body.data(4, captured)?)
        }
    };
    frame_buffer.clear();
    frame_buffer.extend_from_slice(data);
    Ok(header)
}

/// Why writing a capture file failed.
#[derive(Debug, Error)]
pub enum PcapWriteError {
    /// Creating or writing the file failed (disk full, permissions, closed pipe).
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A classic pcap file has one link type; this frame has another. Write frames of
    /// different link types to a pcapng file (one interface per link type) instead.
    #[error(
        "this pcap file holds {file:?} frames and cannot take a {frame:?} frame: use a pcapng \
         file to mix link types"
    )]
    LinkTypeMismatch {
        /// The file's link type.
        file: LinkType,
        /// The frame's link type.
        frame: LinkType,
    },
    /// The frame is larger than the file's snap length (256 KiB); no captured frame is.
    #[error("frame of {len} bytes exceeds the snap length of {WRITE_SNAPLEN} bytes")]
    FrameTooLong {
        /// Length of the frame.
        len: usize,
    },
    /// The timestamp does not fit the classic pcap format (seconds beyond 2106).
    #[error("capture time {0:?} does not fit a pcap timestamp (seconds since 1970 above u32)")]
    TimeOutOfRange(Instant),
    /// The writer was used after an earlier error left the file in an unknown state.
    #[error("the capture file writer failed earlier; create a new file")]
    Poisoned,
}

fn write_error(what: &'static str, error: PcapError) -> PcapWriteError {
    match error {
        PcapError::IoError(source) => PcapWriteError::Io { what, source },
        other => PcapWriteError::Io {
            what,
            source: io::Error::other(other.to_string()),
        },
    }
}

fn check_frame_len(data: &[u8]) -> Result<u32, PcapWriteError> {
    u32::try_from(data.len())
        .ok()
        .filter(|len| *len <= WRITE_SNAPLEN)
        .ok_or(PcapWriteError::FrameTooLong { len: data.len() })
}

/// What both capture-file writers do, so a caller can pick the format at run time
/// (`Box<dyn CaptureFileWriter>`).
pub trait CaptureFileWriter {
    /// Appends one frame captured at `at` (microseconds since the Unix epoch).
    fn write_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        data: &[u8],
    ) -> Result<(), PcapWriteError>;
    /// Frames written so far.
    fn frames(&self) -> u64;
    /// Flushes the file (an empty pcap still gets its header).
    fn finish_file(self: Box<Self>) -> Result<(), PcapWriteError>;
}

impl<W: Write> CaptureFileWriter for PcapWriter<W> {
    fn write_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        data: &[u8],
    ) -> Result<(), PcapWriteError> {
        PcapWriter::write_frame(self, at, link, data)
    }
    fn frames(&self) -> u64 {
        PcapWriter::frames(self)
    }
    fn finish_file(self: Box<Self>) -> Result<(), PcapWriteError> {
        self.finish().map(drop)
    }
}

impl<W: Write> CaptureFileWriter for PcapngWriter<W> {
    fn write_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        data: &[u8],
    ) -> Result<(), PcapWriteError> {
        PcapngWriter::write_frame(self, at, link, data)
    }
    fn frames(&self) -> u64 {
        PcapngWriter::frames(self)
    }
    fn finish_file(self: Box<Self>) -> Result<(), PcapWriteError> {
        self.finish().map(drop)
    }
}

/// Writes a classic pcap file (little-endian, microseconds unless told otherwise) that
/// Wireshark and `tcpdump -r` open. The file header is written when the link type is known:
/// at creation if given, else with the first frame. Flushed on drop; [`PcapWriter::finish`]
/// reports a flush error.
pub struct PcapWriter<W: Write> {
    output: Option<PcapOutput<W>>,
    resolution: TimeResolution,
    frames: u64,
}

enum PcapOutput<W: Write> {
    /// No frame and no link type yet: the header is not written.
    Pending(W),
    /// Header written.
    Started {
        writer: pcap_file::pcap::PcapWriter<W>,
        link: LinkType,
    },
}

impl PcapWriter<BufWriter<File>> {
    /// Creates (or truncates) a pcap file at `path`. `link`: the link type of every frame, or
    /// `None` to take it from the first frame.
    pub fn create(
        path: impl AsRef<Path>,
        link: Option<LinkType>,
        resolution: TimeResolution,
    ) -> Result<Self, PcapWriteError> {
        let file = File::create(path.as_ref()).map_err(|source| PcapWriteError::Io {
            what: "creating the pcap file",
            source,
        })?;
        PcapWriter::new(BufWriter::new(file), link, resolution)
    }
}

impl<W: Write> PcapWriter<W> {
    /// A pcap writer over any byte sink.
    pub fn new(
        writer: W,
        link: Option<LinkType>,
        resolution: TimeResolution,
    ) -> Result<Self, PcapWriteError> {
        let mut this = PcapWriter {
            output: Some(PcapOutput::Pending(writer)),
            resolution,
            frames: 0,
        };
        if let Some(link) = link {
            this.start(link)?;
        }
        Ok(this)
    }

    fn start(&mut self, link: LinkType) -> Result<(), PcapWriteError> {
        match self.output.take() {
            Some(PcapOutput::Pending(writer)) => {
                let header = PcapHeader {
                    snaplen: WRITE_SNAPLEN,
                    datalink: DataLink::from(link_type_number(link)),
                    ts_resolution: match self.resolution {
                        TimeResolution::Micros => TsResolution::MicroSecond,
                        TimeResolution::Nanos => TsResolution::NanoSecond,
                    },
                    endianness: Endianness::Little,
                    ..PcapHeader::default()
                };
                let writer = pcap_file::pcap::PcapWriter::with_header(writer, header)
                    .map_err(|e| write_error("writing the pcap header", e))?;
                self.output = Some(PcapOutput::Started { writer, link });
                Ok(())
            }
            other => {
                self.output = other;
                Ok(())
            }
        }
    }

    /// Appends one frame captured at `at` (microseconds since the Unix epoch).
    pub fn write_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        data: &[u8],
    ) -> Result<(), PcapWriteError> {
        let len = check_frame_len(data)?;
        let seconds = u32::try_from(at.micros() / 1_000_000)
            .map_err(|_| PcapWriteError::TimeOutOfRange(at))?;
        let micros = (at.micros() % 1_000_000) as u32;
        self.start(link)?;
        let resolution = self.resolution;
        let Some(PcapOutput::Started {
            writer,
            link: file_link,
        }) = &mut self.output
        else {
            return Err(PcapWriteError::Poisoned);
        };
        if *file_link != link {
            return Err(PcapWriteError::LinkTypeMismatch {
                file: *file_link,
                frame: link,
            });
        }
        let packet = RawPcapPacket {
            ts_sec: seconds,
            ts_frac: match resolution {
                TimeResolution::Micros => micros,
                TimeResolution::Nanos => micros * 1000,
            },
            incl_len: len,
            orig_len: len,
            data: Cow::Borrowed(data),
        };
        writer
            .write_raw_packet(&packet)
            .map_err(|e| write_error("writing a pcap record", e))?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the header if no frame came (Ethernet then), flushes and returns the sink.
    pub fn finish(mut self) -> Result<W, PcapWriteError> {
        self.finish_inner()?.ok_or(PcapWriteError::Poisoned)
    }

    fn finish_inner(&mut self) -> Result<Option<W>, PcapWriteError> {
        // An empty capture still gets a header so that readers accept the file.
        self.start(LinkType::Ethernet)?;
        match self.output.take() {
            Some(PcapOutput::Started { writer, .. }) => {
                let mut sink = writer.into_writer();
                sink.flush().map_err(|source| PcapWriteError::Io {
                    what: "flushing the pcap file",
                    source,
                })?;
                Ok(Some(sink))
            }
            Some(PcapOutput::Pending(sink)) => Ok(Some(sink)),
            None => Ok(None),
        }
    }
}

impl<W: Write> Drop for PcapWriter<W> {
    fn drop(&mut self) {
        // Best effort: `finish` is the way to see the error.
        let _ = self.finish_inner();
    }
}

impl<W: Write> std::fmt::Debug for PcapWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapWriter")
            .field("resolution", &self.resolution)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// Writes a pcapng file: one section, one interface per link type met (created on first use),
/// Enhanced Packet Blocks in microseconds (default) or nanoseconds (`if_tsresol` = 9).
/// Flushed on drop; [`PcapngWriter::finish`] reports a flush error.
pub struct PcapngWriter<W: Write> {
    writer: Option<pcap_file::pcapng::PcapNgWriter<W>>,
    resolution: TimeResolution,
    interfaces: HashMap<LinkType, u32>,
    frames: u64,
}

impl PcapngWriter<BufWriter<File>> {
    /// Creates (or truncates) a pcapng file at `path`.
    pub fn create(
        path: impl AsRef<Path>,
        resolution: TimeResolution,
    ) -> Result<Self, PcapWriteError> {
        let file = File::create(path.as_ref()).map_err(|source| PcapWriteError::Io {
            what: "creating the pcapng file",
            source,
        })?;
        PcapngWriter::new(BufWriter::new(file), resolution)
    }
}

impl<W: Write> PcapngWriter<W> {
    /// A pcapng writer over any byte sink; writes the Section Header Block at once.
    pub fn new(writer: W, resolution: TimeResolution) -> Result<Self, PcapWriteError> {
        let writer = pcap_file::pcapng::PcapNgWriter::with_endianness(writer, Endianness::Little)
            .map_err(|e| write_error("writing the pcapng section header", e))?;
        Ok(PcapngWriter {
            writer: Some(writer),
            resolution,
            interfaces: HashMap::new(),
            frames: 0,
        })
    }

    fn interface_for(&mut self, link: LinkType) -> Result<u32, PcapWriteError> {
        if let Some(id) = self.interfaces.get(&link) {
            return Ok(*id);
        }
        let writer = self.writer.as_mut().ok_or(PcapWriteError::Poisoned)?;
        let mut options = Vec::new();
        if self.resolution == TimeResolution::Nanos {
            options.push(InterfaceDescriptionOption::IfTsResol(9));
        }
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::from(link_type_number(link)),
            snaplen: WRITE_SNAPLEN,
            options,
        };
        writer
            .write_pcapng_block(idb)
            .map_err(|e| write_error("writing a pcapng interface description", e))?;
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        self.interfaces.insert(link, id);
        Ok(id)
    }

    /// Appends one frame captured at `at` (microseconds since the Unix epoch).
    pub fn write_frame(
        &mut self,
        at: Instant,
        link: LinkType,
        data: &[u8],
    ) -> Result<(), PcapWriteError> {
        let len = check_frame_len(data)?;
        let interface_id = self.interface_for(link)?;
        // `pcap-file` stores the 64-bit timestamp of an Enhanced Packet Block as a Duration
        // whose nanosecond count is written verbatim: pass the count in the interface's units.
        let units = match self.resolution {
            TimeResolution::Micros => at.micros(),
            TimeResolution::Nanos => at
                .micros()
                .checked_mul(1000)
                .ok_or(PcapWriteError::TimeOutOfRange(at))?,
        };
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(units),
            original_len: len,
            data: Cow::Borrowed(data),
            options: Vec::new(),
        };
        let writer = self.writer.as_mut().ok_or(PcapWriteError::Poisoned)?;
        writer
            .write_pcapng_block(block)
            .map_err(|e| write_error("writing a pcapng packet block", e))?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes and returns the sink.
    pub fn finish(mut self) -> Result<W, PcapWriteError> {
        self.finish_inner()?.ok_or(PcapWriteError::Poisoned)
    }

    fn finish_inner(&mut self) -> Result<Option<W>, PcapWriteError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let mut sink = writer.into_inner();
        sink.flush().map_err(|source| PcapWriteError::Io {
            what: "flushing the pcapng file",
            source,
        })?;
        Ok(Some(sink))
    }
}

impl<W: Write> Drop for PcapngWriter<W> {
    fn drop(&mut self) {
        // Best effort: `finish` is the way to see the error.
        let _ = self.finish_inner();
    }
}

impl<W: Write> std::fmt::Debug for PcapngWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapngWriter")
            .field("resolution", &self.resolution)
            .field("interfaces", &self.interfaces)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}
