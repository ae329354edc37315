//! `capture_file`: every frame the agent captured, written to a pcapng file (sync mode:
//! the NFQUEUE packets, raw IP; async mode: the AF_PACKET frames, Ethernet), flushed when
//! the agent stops. Writing the file never stops the agent: the first error is logged and
//! writing stops.

use crate::pcap::{PcapngWriter, TimeResolution};
use cttm_core::Instant;
use cttm_core::wire::LinkType;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Writes captured frames to the configured pcapng file, if any.
#[derive(Debug, Default)]
pub(super) struct CaptureRecorder {
    file: Option<(PathBuf, PcapngWriter<BufWriter<File>>)>,
    /// The error that stopped writing, for the operator's alerts.
    failed: Option<String>,
}

impl CaptureRecorder {
    /// A recorder writing to `path` (`None`: records nothing). A file that cannot be
    /// created is logged and nothing is recorded.
    pub(super) fn create(path: Option<&Path>) -> CaptureRecorder {
        let Some(path) = path else {
            return CaptureRecorder::default();
        };
        match PcapngWriter::create(path, TimeResolution::Micros) {
            Ok(writer) => {
                tracing::info!(file = %path.display(), "writing every captured frame to the pcapng file");
                CaptureRecorder {
                    file: Some((path.to_path_buf(), writer)),
                    failed: None,
                }
            }
            Err(e) => {
                let message = format!("creating the capture file {}: {e}", path.display());
                tracing::error!("{message}; the agent goes on without writing it");
                CaptureRecorder {
                    file: None,
                    failed: Some(message),
                }
            }
        }
    }

    /// Appends one frame.
    pub(super) fn record(&mut self, at: Instant, link: LinkType, data: &[u8]) {
        let Some((path, writer)) = &mut self.file else {
            return;
        };
        if let Err(e) = writer.write_frame(at, link, data) {
            let message = format!("writing the capture file {}: {e}", path.display());
            tracing::error!("{message}; no more frames are written to it");
            self.failed = Some(message);
            // Dropping the writer flushes what was written (best effort).
            self.file = None;
        }
    }

    /// Why writing stopped, if it did.
    pub(super) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Flushes the file (the agent stops).
    pub(super) fn finish(&mut self) {
        let Some((path, writer)) = self.file.take() else {
            return;
        };
        let frames = writer.frames();
        match writer.finish() {
            Ok(_) => tracing::info!(file = %path.display(), frames, "capture file written"),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "flushing the capture file failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::PcapFileReader;
    use cttm_core::wire::parse_frame;

    /// A TCP segment 198.18.0.10:7000 -> 198.18.0.1:40000 carrying `payload`, as raw IPv4,
    /// built by hand (this crate does not depend on etherparse): no IP or TCP options, checksums
    /// left zero as a capture sees them under checksum offload.
    fn segment(payload: &[u8]) -> Vec<u8> {
        let total = 20 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 0, 10]);
        p[16..20].copy_from_slice(&[198, 18, 0, 1]);
        let t = &mut p[20..40];
        t[0..2].copy_from_slice(&7000u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[8..12].copy_from_slice(&2000u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x18; // PSH, ACK
        t[14..16].copy_from_slice(&1024u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        p
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cttmd-capture-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn frames_are_written_and_read_back() {
        let dir = temp_dir("ok");
        let path = dir.join("agent.pcapng");
        let mut recorder = CaptureRecorder::create(Some(&path));
        let frames = [segment(b"hello"), segment(b"world!")];
        for (i, f) in frames.iter().enumerate() {
            recorder.record(
                Instant::from_micros(1_700_000_000_000_000 + i as u64),
                LinkType::RawIp,
                f,
            );
        }
        recorder.finish();
        assert!(recorder.failure().is_none());
        let mut reader = PcapFileReader::open(&path).expect("open");
        let mut payloads = Vec::new();
        while let Some(frame) = reader.next_frame().expect("read") {
            assert_eq!(frame.link, LinkType::RawIp);
            let s = parse_frame(frame.link, frame.data).expect("a TCP segment");
            assert_eq!(s.src.port(), 7000);
            payloads.push(s.payload.to_vec());
        }
        assert_eq!(payloads, vec![b"hello".to_vec(), b"world!".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_cannot_be_created_disables_recording() {
        let dir = temp_dir("missing");
        let path = dir.join("no such directory").join("agent.pcapng");
        let mut recorder = CaptureRecorder::create(Some(&path));
        assert!(recorder.failure().is_some_and(|m| m.contains("creating")));
        recorder.record(Instant::from_micros(1), LinkType::RawIp, &segment(b"x"));
        recorder.finish();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_error_stops_writing_once() {
        let dir = temp_dir("oversize");
        let path = dir.join("agent.pcapng");
        let mut recorder = CaptureRecorder::create(Some(&path));
        recorder.record(Instant::from_micros(1), LinkType::RawIp, &segment(b"first"));
        // Larger than the writer's snap length: refused, and recording stops.
        recorder.record(
            Instant::from_micros(2),
            LinkType::RawIp,
            &vec![0u8; 1 << 20],
        );
        assert!(recorder.failure().is_some_and(|m| m.contains("writing")));
        recorder.record(Instant::from_micros(3), LinkType::RawIp, &segment(b"after"));
        recorder.finish();
        let mut reader = PcapFileReader::open(&path).expect("open");
        let mut count = 0;
        while reader.next_frame().expect("read").is_some() {
            count += 1;
        }
        assert_eq!(count, 1, "what was written before the error is kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
