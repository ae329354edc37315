//! Length-prefixed frames over a byte stream: a 4-byte big-endian length, then that many
//! bytes. The length is checked against a bound *before* anything is allocated, so a peer
//! (or a corrupted stream) announcing a huge frame gets an error, not an allocation.

use std::io::{self, Read};
use thiserror::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// The default largest frame: the Noise protocol's message limit (65,535 bytes), since each
/// frame carries one Noise transport message.
pub const DEFAULT_MAX_FRAME_LEN: usize = 65_535;

/// A frame could not be read or written.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The frame is larger than allowed. Nothing was allocated for it; the link is reset.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; the peer is misbehaving or the stream is corrupted"
    )]
    Oversize {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame of length zero (never sent by this protocol): the stream is corrupted.
    #[error("empty frame: the replication stream is corrupted")]
    Empty,
    /// The peer closed the stream between frames.
    #[error("the peer closed the replication stream")]
    Closed,
    /// The peer closed the stream in the middle of a frame.
    #[error("the replication stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the frame needs (header included).
        need: usize,
    },
    /// Reading or writing the stream failed.
    #[error("replication stream I/O: {0}")]
    Io(#[from] io::Error),
}

/// Bytes asked for by each read of the stream.
const READ_CHUNK: usize = 64 * 1024;

/// Appends one frame carrying `payload` to `out`.
pub fn encode_frame(
    payload: &[u8],
    max_frame_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > max_frame_len || payload.len() > u32::MAX as usize {
        return Err(FrameError::Oversize {
            len: payload.len(),
            max: max_frame_len,
        });
    }
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reassembles frames from a stream that may deliver them in pieces (reads that time out
/// keep what was received).
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// The buffer each read fills (allocated once: a fresh 64 KiB array per read would be
    /// zeroed every time, a cost paid on every message of a small-message stream).
    chunk: Vec<u8>,
    start: usize,
    max_frame_len: usize,
    total: u64,
}

impl FrameReader {
    /// A reader accepting frames up to `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            chunk: Vec::new(),
            start: 0,
            max_frame_len,
            total: 0,
        }
    }

    /// The next complete frame already received, without reading.
    pub fn next_buffered(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::Oversize {
                len,
                max: self.max_frame_len,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if avail.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let frame = avail[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec();
        self.start += FRAME_HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Reads from `src` until a frame is complete. `Ok(None)` when the read timed out (set
    /// the stream's read timeout) or would block; what arrived is kept for the next call.
    pub fn read_frame(&mut self, src: &mut impl Read) -> Result<Option<Vec<u8>>, FrameError> {
        if self.chunk.is_empty() {
            self.chunk = vec![0u8; READ_CHUNK];
        }
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(Some(f));
            }
            match src.read(&mut self.chunk) {
                Ok(0) => {
                    let have = self.buf.len() - self.start;
                    return Err(if have == 0 {
                        FrameError::Closed
                    } else {
                        FrameError::Truncated {
                            have,
                            need: self.needed(),
                        }
                    });
                }
                Ok(n) => {
                    if self.start > 0 {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    self.total += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.total
    }

    fn needed(&self) -> usize {
        let avail = &self.buf[self.start..];
        if avail.len() < FRAME_HEADER_LEN {
            return FRAME_HEADER_LEN;
        }
        FRAME_HEADER_LEN + u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_even_when_split_byte_by_byte() {
        let mut wire = Vec::new();
        let payloads: Vec<Vec<u8>> = vec![vec![1], vec![2; 1000], (0..=255).collect()];
        for p in &payloads {
            encode_frame(p, DEFAULT_MAX_FRAME_LEN, &mut wire).unwrap();
        }
        /// Delivers one byte per read, and "would block" between bytes.
        struct Dribble<'a>(&'a [u8], bool);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let mut src = Dribble(&wire, false);
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_LEN);
        let mut got = Vec::new();
        loop {
            match reader.read_frame(&mut src) {
                Ok(Some(f)) => got.push(f),
                Ok(None) => {}
                Err(FrameError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn oversize_frame_is_refused_before_allocating() {
        let mut reader = FrameReader::new(1024);
        // Announces 4 GiB - 1: must be refused from the header alone.
        let mut src: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0];
        match reader.read_frame(&mut src) {
            Err(FrameError::Oversize { len, max }) => {
                assert_eq!((len, max), (u32::MAX as usize, 1024));
            }
            other => panic!("expected oversize, got {other:?}"),
        }
        assert!(reader.buf.capacity() < 4096, "no large allocation");
        let mut out = Vec::new();
        assert!(matches!(
            encode_frame(&[0; 2000], 1024, &mut out),
            Err(FrameError::Oversize { len: 2000, .. })
        ));
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let mut reader = FrameReader::new(1024);
        let mut src: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(FrameError::Empty)
        ));
        let mut reader = FrameReader::new(1024);
        let mut src: &[u8] = &[0, 0, 0, 10, 1, 2, 3];
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(FrameError::Truncated { have: 7, need: 14 })
        ));
        let mut reader = FrameReader::new(1024);
        let mut src: &[u8] = &[];
        assert!(matches!(
            reader.read_frame(&mut src),
            Err(FrameError::Closed)
        ));
    }
}
