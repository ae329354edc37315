//! Authentication and integrity of every frame with the Noise protocol, and the channel that
//! carries [`WireMessage`]s over a byte stream.
//!
//! # Why `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`
//! The primary and the backup are configured by one operator with one shared secret; there
//! are no long-term key pairs to distribute or rotate, so the `NN` pattern (ephemeral keys
//! only) with a pre-shared key fits. `psk0` mixes the key in before the first message, so the
//! responder (backup) checks the initiator's very first handshake message and refuses a peer
//! without the key before doing anything else; the ephemeral-ephemeral Diffie-Hellman gives
//! forward secrecy (a key stolen later does not decrypt recorded traffic). `XXpsk3` would add
//! static-key identities, which a single pre-shared secret already provides here.
//!
//! # Frames
//! After the handshake every frame is one Noise transport message (at most 65,535 bytes
//! including its 16-byte tag). Nonces are implicit counters, one per direction, so a
//! replayed, reordered, forged or corrupted frame fails authentication: it is never decoded
//! or applied, and the link is reset (then resynchronised). A message longer than one frame
//! is split: each frame's plaintext starts with one byte, 1 when more frames of the same
//! message follow, 0 on its last frame.
//!
//! Without authentication ([`Security::Plaintext`], for benchmarks and baselines only) the
//! same chunked frames carry the plaintext.

use crate::frame::{FrameError, FrameReader, encode_frame};
use crate::transport::{HandshakeError, TransportError};
use crate::wire::{self, Hello, Role, WireMessage};
use cttm_core::endpoint::ServiceSet;
use snow::StatelessTransportState;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use thiserror::Error;

/// The Noise protocol name used.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The Noise prologue: both ends must agree on it (binds the handshake to this protocol).
const PROLOGUE: &[u8] = b"cttm-replicate";
/// The Noise message limit.
const NOISE_MAX: usize = 65_535;
/// The Noise authentication tag.
const TAG_LEN: usize = 16;

/// A 32-byte pre-shared key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PreSharedKey([u8; 32]);

impl PreSharedKey {
    /// A key from 32 bytes (generate them with a CSPRNG, e.g. `head -c32 /dev/urandom`).
    pub fn new(bytes: [u8; 32]) -> PreSharedKey {
        PreSharedKey(bytes)
    }

    /// A key from 64 hexadecimal digits.
    pub fn from_hex(hex: &str) -> Result<PreSharedKey, SecurityError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(SecurityError::BadKey);
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| SecurityError::BadKey)?;
        }
        Ok(PreSharedKey(key))
    }
}

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey(..)")
    }
}

/// How frames are protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// Every frame authenticated and encrypted with Noise ([`NOISE_PATTERN`]).
    Noise(PreSharedKey),
    /// No authentication, no encryption: for benchmarks and baselines on a trusted link only.
    Plaintext,
}

/// Authentication or integrity failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SecurityError {
    /// The Noise handshake failed: the peer does not hold the same pre-shared key (or is not
    /// a CTTM replication endpoint). The link is refused.
    #[error(
        "Noise handshake failed ({0}): the peer does not have the same pre-shared key or is not a CTTM replication endpoint"
    )]
    HandshakeFailed(String),
    /// One side uses Noise and the other plaintext.
    #[error(
        "the peer does not use the same security mode (Noise vs plaintext); configure both ends alike"
    )]
    ModeMismatch,
    /// A frame failed authentication: forged, replayed, reordered or corrupted. It was
    /// discarded and the link reset.
    #[error(
        "frame {frame} of this link failed authentication (forged, replayed or corrupted); discarded, link reset"
    )]
    Rejected {
        /// The frame's position on the link (its Noise nonce).
        frame: u64,
    },
    /// A frame's chunk header is invalid.
    #[error("frame {frame} has an invalid chunk header; link reset")]
    BadChunk {
        /// The frame's position on the link.
        frame: u64,
    },
    /// A message grew past the configured limit while being reassembled.
    #[error(
        "message of more than {max} bytes refused; raise max_message_len on both ends if this is legitimate"
    )]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
    /// The handshake did not finish in time.
    #[error(
        "the replication handshake timed out; check that the peer is a CTTM replication endpoint"
    )]
    HandshakeTimeout,
    /// A key is not 64 hexadecimal digits.
    #[error("a pre-shared key must be 64 hexadecimal digits (32 bytes)")]
    BadKey,
    /// The Noise library failed (nonce exhausted, internal error).
    #[error("Noise failure: {0}; the link is reset")]
    Noise(String),
}

/// Limits of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLimits {
    /// The largest frame accepted (at most 65,535: one Noise message).
    pub max_frame_len: usize,
    /// The largest message reassembled from frames (default 64 MiB).
    pub max_message_len: usize,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits {
            max_frame_len: NOISE_MAX,
            max_message_len: 64 << 20,
        }
    }
}

/// The sending half of a channel.
pub struct ChannelWriter<W> {
    stream: W,
    noise: Option<Arc<StatelessTransportState>>,
    nonce: u64,
    limits: ChannelLimits,
    scratch: Vec<u8>,
    sealed: Vec<u8>,
}

/// The receiving half of a channel.
pub struct ChannelReader<R> {
    stream: R,
    noise: Option<Arc<StatelessTransportState>>,
    nonce: u64,
    frames: FrameReader,
    partial: Vec<u8>,
    limits: ChannelLimits,
    opened: Vec<u8>,
}

impl<W> fmt::Debug for ChannelWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("noise", &self.noise.is_some())
            .field("nonce", &self.nonce)
            .finish()
    }
}

impl<R> fmt::Debug for ChannelReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReader")
            .field("noise", &self.noise.is_some())
            .field("nonce", &self.nonce)
            .finish()
    }
}

fn noise_error(e: snow::Error) -> SecurityError {
    SecurityError::HandshakeFailed(e.to_string())
}

/// Reads one handshake frame; a read timeout (set on the stream) is a handshake timeout.
fn read_handshake_frame(
    frames: &mut FrameReader,
    stream: &mut impl Read,
) -> Result<Vec<u8>, TransportError> {
    match frames.read_frame(stream) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(SecurityError::HandshakeTimeout.into()),
        Err(FrameError::Closed) => {
            Err(SecurityError::HandshakeFailed("the peer closed the connection".into()).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the handshake on a fresh stream (`read` and `write` are two handles of it) and
/// returns the two halves. The initiator is the primary. Set a read timeout on the stream
/// first: it bounds each handshake read.
///
/// Order: a mode byte (Noise or plaintext), the Noise handshake (`-> psk, e`, `<- e, ee`),
/// then each side's [`Hello`] (primary first) inside the protected channel.
pub fn establish<R: Read, W: Write>(
    mut read: R,
    mut write: W,
    security: &Security,
    role: Role,
    services: &ServiceSet,
    limits: ChannelLimits,
) -> Result<(ChannelReader<R>, ChannelWriter<W>), TransportError> {
    let limits = ChannelLimits {
        max_frame_len: limits.max_frame_len.min(NOISE_MAX),
        ..limits
    };
    let mut frames = FrameReader::new(limits.max_frame_len);
    let initiator = role == Role::Primary;
    let mode = [match security {
        Security::Noise(_) => b'N',
        Security::Plaintext => b'P',
    }];
    let mut out = Vec::new();
    encode_frame(&mode, limits.max_frame_len, &mut out)?;
    write.write_all(&out)?;
    let theirs = read_handshake_frame(&mut frames, &mut read)?;
    if theirs != mode {
        return Err(SecurityError::ModeMismatch.into());
    }
    let noise = match security {
        Security::Plaintext => None,
        Security::Noise(psk) => {
            let params = NOISE_PATTERN.parse().map_err(noise_error)?;
            let builder = snow::Builder::new(params)
                .psk(0, &psk.0)
                .map_err(noise_error)?
                .prologue(PROLOGUE)
                .map_err(noise_error)?;
            let mut hs = if initiator {
                builder.build_initiator()
            } else {
                builder.build_responder()
            }
            .map_err(noise_error)?;
            let mut buf = vec![0u8; NOISE_MAX];
            let mut payload = vec![0u8; NOISE_MAX];
            while !hs.is_handshake_finished() {
                if hs.is_my_turn() {
                    let n = hs.write_message(&[], &mut buf).map_err(noise_error)?;
                    out.clear();
                    encode_frame(&buf[..n], limits.max_frame_len, &mut out)?;
                    write.write_all(&out)?;
                } else {
                    let f = read_handshake_frame(&mut frames, &mut read)?;
                    hs.read_message(&f, &mut payload).map_err(noise_error)?;
                }
            }
            Some(Arc::new(
                hs.into_stateless_transport_mode().map_err(noise_error)?,
            ))
        }
    };
    let mut writer = ChannelWriter {
        stream: write,
        noise: noise.clone(),
        nonce: 0,
        limits,
        scratch: Vec::new(),
        sealed: Vec::new(),
    };
    let mut reader = ChannelReader {
        stream: read,
        noise,
        nonce: 0,
        frames,
        partial: Vec::new(),
        limits,
        opened: Vec::new(),
    };
    let hello = Hello::new(role, services.clone());
    let check = |bytes: &[u8]| -> Result<(), TransportError> {
        let peer = wire::decode_hello(bytes)?;
        if peer.role == role {
            return Err(HandshakeError::SameRole(role).into());
        }
        if &peer.services != services {
            return Err(HandshakeError::ServiceMismatch {
                ours: list_services(services),
                theirs: list_services(&peer.services),
            }
            .into());
        }
        Ok(())
    };
    if initiator {
        writer.send_bytes(&wire::encode_hello(&hello))?;
        let bytes = reader.recv_bytes_handshake()?;
        check(&bytes)?;
    } else {
        let bytes = reader.recv_bytes_handshake()?;
        // Answer with our hello even when theirs is refused, so the peer can name both
        // versions (or both service sets) in its own error.
        writer.send_bytes(&wire::encode_hello(&hello))?;
        check(&bytes)?;
    }
    Ok((reader, writer))
}

fn list_services(s: &ServiceSet) -> String {
    s.endpoints()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl<W: Write> ChannelWriter<W> {
    /// Sends one message.
    pub fn send(&mut self, message: &WireMessage) -> Result<(), TransportError> {
        let bytes = wire::encode(message);
        self.send_bytes(&bytes)
    }

    /// Sends several messages with one write to the stream (the frames of all of them,
    /// sealed in order): one system call, and on TCP as few segments as the bytes need.
    pub fn send_batch(&mut self, messages: &[WireMessage]) -> Result<(), TransportError> {
        self.sealed.clear();
        for m in messages {
            self.seal_message(&wire::encode(m))?;
        }
        self.stream.write_all(&self.sealed)?;
        Ok(())
    }

    /// Sends one encoded message, split into as many frames as needed.
    pub fn send_bytes(&mut self, message: &[u8]) -> Result<(), TransportError> {
        self.sealed.clear();
        self.seal_message(message)?;
        self.stream.write_all(&self.sealed)?;
        Ok(())
    }

    /// Appends the frames of one encoded message to `self.sealed`.
    fn seal_message(&mut self, message: &[u8]) -> Result<(), TransportError> {
        if message.len() > self.limits.max_message_len {
            return Err(SecurityError::MessageTooLarge {
                max: self.limits.max_message_len,
            }
            .into());
        }
        let tag = if self.noise.is_some() { TAG_LEN } else { 0 };
        let chunk_len = self.limits.max_frame_len - tag - 1;
        let mut chunks = message.chunks(chunk_len).peekable();
        if message.is_empty() {
            self.seal_chunk(&[], false)?;
        }
        while let Some(chunk) = chunks.next() {
            let more = chunks.peek().is_some();
            self.seal_chunk(chunk, more)?;
        }
        Ok(())
    }

    fn seal_chunk(&mut self, chunk: &[u8], more: bool) -> Result<(), TransportError> {
        self.scratch.clear();
        self.scratch.push(u8::from(more));
        self.scratch.extend_from_slice(chunk);
        match &self.noise {
            None => encode_frame(&self.scratch, self.limits.max_frame_len, &mut self.sealed)?,
            Some(noise) => {
                let mut frame = vec![0u8; self.scratch.len() + TAG_LEN];
                let n = noise
                    .write_message(self.nonce, &self.scratch, &mut frame)
                    .map_err(|e| SecurityError::Noise(e.to_string()))?;
                self.nonce += 1;
                encode_frame(&frame[..n], self.limits.max_frame_len, &mut self.sealed)?;
            }
        }
        Ok(())
    }

    /// The underlying stream.
    pub fn stream(&self) -> &W {
        &self.stream
    }
}

impl<R: Read> ChannelReader<R> {
    /// Receives the next message, reading the stream (bounded by its read timeout);
    /// `Ok(None)` when the read timed out.
    pub fn recv(&mut self) -> Result<Option<WireMessage>, TransportError> {
        match self.recv_bytes(true)? {
            Some(bytes) => Ok(Some(wire::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Receives a message already buffered, without reading the stream.
    pub fn recv_buffered(&mut self) -> Result<Option<WireMessage>, TransportError> {
        match self.recv_bytes(false)? {
            Some(bytes) => Ok(Some(wire::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn recv_bytes_handshake(&mut self) -> Result<Vec<u8>, TransportError> {
        self.recv_bytes(true)?
            .ok_or_else(|| SecurityError::HandshakeTimeout.into())
    }

    /// Receives one message's bytes; each authenticated frame is opened as it arrives.
    pub fn recv_bytes(&mut self, read_stream: bool) -> Result<Option<Vec<u8>>, TransportError> {
        loop {
            let frame = if read_stream {
                self.frames.read_frame(&mut self.stream)?
            } else {
                self.frames.next_buffered()?
            };
            let Some(frame) = frame else { return Ok(None) };
            let position = self.nonce;
            let plain: &[u8] = match &self.noise {
                None => &frame,
                Some(noise) => {
                    self.opened.resize(frame.len(), 0);
                    let n = noise
                        .read_message(self.nonce, &frame, &mut self.opened)
                        .map_err(|_| SecurityError::Rejected { frame: position })?;
                    &self.opened[..n]
                }
            };
            self.nonce += 1;
            let (&more, data) = plain
                .split_first()
                .ok_or(SecurityError::BadChunk { frame: position })?;
            if more > 1 {
                return Err(SecurityError::BadChunk { frame: position }.into());
            }
            if self.partial.len() + data.len() > self.limits.max_message_len {
                self.partial.clear();
                return Err(SecurityError::MessageTooLarge {
                    max: self.limits.max_message_len,
                }
                .into());
            }
            self.partial.extend_from_slice(data);
            if more == 0 {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
    }

    /// Bytes read from the stream so far (handshake included).
    pub fn bytes_read(&self) -> u64 {
        self.frames.bytes_read()
    }

    /// The underlying stream.
    pub fn stream(&self) -> &R {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_MAX_FRAME_LEN;
    use crate::wire::Payload;
    use cttm_core::ServiceEndpoint;
    use cttm_core::message::MessageV1;
    use parking_lot::Mutex;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// A writer that can flip one bit of the next write, and replay the last write.
    #[derive(Clone)]
    struct Tap {
        inner: Arc<Mutex<UnixStream>>,
        flip_next: Arc<Mutex<bool>>,
        last: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut data = buf.to_vec();
            if std::mem::take(&mut *self.flip_next.lock()) {
                let i = data.len() / 2;
                data[i] ^= 0x10;
            }
            self.last.lock().extend_from_slice(&data);
            self.inner.lock().write_all(&data)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn services() -> ServiceSet {
        ServiceSet::new([ServiceEndpoint::new("198.18.0.1:80".parse().unwrap())])
    }

    fn key(b: u8) -> Security {
        Security::Noise(PreSharedKey::new([b; 32]))
    }

    type Ends = (
        Result<(ChannelReader<UnixStream>, ChannelWriter<Tap>), TransportError>,
        Result<(ChannelReader<UnixStream>, ChannelWriter<UnixStream>), TransportError>,
        Tap,
    );

    fn link(primary: Security, backup: Security, backup_services: ServiceSet) -> Ends {
        let (a, b) = UnixStream::pair().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let tap = Tap {
            inner: Arc::new(Mutex::new(a.try_clone().unwrap())),
            flip_next: Arc::default(),
            last: Arc::default(),
        };
        let t = tap.clone();
        let backup_end = std::thread::spawn(move || {
            establish(
                b.try_clone().unwrap(),
                b,
                &backup,
                Role::Backup,
                &backup_services,
                ChannelLimits::default(),
            )
        });
        let p = establish(
            a,
            t,
            &primary,
            Role::Primary,
            &services(),
            ChannelLimits::default(),
        );
        let b = backup_end.join().unwrap();
        tap.last.lock().clear();
        (p, b, tap)
    }

    fn data(len: usize) -> WireMessage {
        let e = cttm_core::ConnectionEvent {
            id: cttm_core::ConnectionId {
                client: "198.18.0.2:4000".parse().unwrap(),
                server: "198.18.0.1:80".parse().unwrap(),
            },
            at: cttm_core::Instant::from_millis(1),
            kind: cttm_core::EventKind::ClientData {
                offset: 0,
                bytes: (0..len).map(|i| i as u8).collect(),
            },
        };
        WireMessage::Data {
            epoch: 1,
            seq: 1,
            payload: Payload::Message(MessageV1::Event(e).into()),
        }
    }

    #[test]
    fn authenticated_messages_round_trip_including_ones_split_past_the_noise_limit() {
        let (p, b, tap) = link(key(1), key(1), services());
        let (_, mut pw) = p.unwrap();
        let (mut br, _) = b.unwrap();
        let sizes = [0, 10, 65_535, 300_000];
        let sender = std::thread::spawn(move || {
            for len in sizes {
                pw.send(&data(len)).unwrap();
            }
        });
        for len in sizes {
            assert_eq!(br.recv().unwrap(), Some(data(len)));
        }
        sender.join().unwrap();
        // 300,000 bytes needed several frames, each within the Noise limit.
        assert!(tap.last.lock().len() > 300_000);
    }

    #[test]
    fn plaintext_mode_round_trips_and_a_mixed_configuration_is_refused() {
        let (p, b, _) = link(Security::Plaintext, Security::Plaintext, services());
        let (_, mut pw) = p.unwrap();
        let (mut br, _) = b.unwrap();
        let sender = std::thread::spawn(move || pw.send(&data(100_000)).unwrap());
        assert_eq!(br.recv().unwrap(), Some(data(100_000)));
        sender.join().unwrap();
        let (p, b, _) = link(Security::Plaintext, key(1), services());
        assert!(matches!(
            p,
            Err(TransportError::Security(SecurityError::ModeMismatch))
        ));
        assert!(matches!(
            b,
            Err(TransportError::Security(SecurityError::ModeMismatch))
        ));
    }

    #[test]
    fn a_peer_without_the_key_is_refused_at_the_handshake() {
        let (p, b, _) = link(key(1), key(2), services());
        let be = b.unwrap_err();
        assert!(
            matches!(
                be,
                TransportError::Security(SecurityError::HandshakeFailed(_))
            ),
            "{be}"
        );
        assert!(be.to_string().contains("pre-shared key"), "{be}");
        assert!(p.is_err());
    }

    #[test]
    fn a_flipped_bit_in_an_encrypted_frame_is_rejected_and_nothing_is_decoded() {
        let (p, b, tap) = link(key(3), key(3), services());
        let (_, mut pw) = p.unwrap();
        let (mut br, _) = b.unwrap();
        *tap.flip_next.lock() = true;
        // Frame 0 each way was the hello; frame 1 is this message.
        pw.send(&data(1000)).unwrap();
        let err = br.recv().unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Security(SecurityError::Rejected { frame: 1 })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_replayed_frame_is_rejected() {
        let (p, b, tap) = link(key(4), key(4), services());
        let (_, mut pw) = p.unwrap();
        let (mut br, _) = b.unwrap();
        pw.send(&data(10)).unwrap();
        assert_eq!(br.recv().unwrap(), Some(data(10)));
        let recorded = std::mem::take(&mut *tap.last.lock());
        tap.inner.lock().write_all(&recorded).unwrap();
        let err = br.recv().unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Security(SecurityError::Rejected { frame: 2 })
            ),
            "{err}"
        );
    }

    #[test]
    fn different_services_are_refused_naming_both_sets() {
        let other = ServiceSet::new([ServiceEndpoint::new("198.18.0.1:443".parse().unwrap())]);
        let (p, b, _) = link(key(5), key(5), other);
        let text = b.unwrap_err().to_string();
        assert!(
            text.contains("198.18.0.1:80") && text.contains("198.18.0.1:443"),
            "{text}"
        );
        assert!(matches!(
            p,
            Err(TransportError::Handshake(
                HandshakeError::ServiceMismatch { .. }
            ))
        ));
    }

    #[test]
    fn a_peer_of_another_version_gets_an_error_naming_both_versions() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let backup = std::thread::spawn(move || {
            establish(
                b.try_clone().unwrap(),
                b,
                &Security::Plaintext,
                Role::Backup,
                &services(),
                ChannelLimits::default(),
            )
            .map(|_| ())
        });
        // A primary of protocol version 9, in plaintext mode.
        let mut hello = wire::encode_hello(&Hello::new(Role::Primary, services()));
        hello[4..6].copy_from_slice(&9u16.to_be_bytes());
        let mut out = Vec::new();
        encode_frame(b"P", DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        let mut chunk = vec![0u8];
        chunk.extend_from_slice(&hello);
        encode_frame(&chunk, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        a.write_all(&out).unwrap();
        let err = backup.join().unwrap().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("version 9")
                && text.contains(&format!("version {}", cttm_core::PROTOCOL_VERSION)),
            "{text}"
        );
        // The backup still answered with its own hello, so the old primary can say the same.
        let mut frames = FrameReader::new(DEFAULT_MAX_FRAME_LEN);
        assert_eq!(frames.read_frame(&mut a).unwrap().unwrap(), b"P");
        let reply = frames.read_frame(&mut a).unwrap().unwrap();
        assert_eq!(wire::decode_hello(&reply[1..]).unwrap().role, Role::Backup);
    }

    #[test]
    fn psk_from_hex() {
        assert!(PreSharedKey::from_hex(&"ab".repeat(32)).is_ok());
        assert_eq!(PreSharedKey::from_hex("abc"), Err(SecurityError::BadKey));
        assert_eq!(
            PreSharedKey::from_hex(&"zz".repeat(32)),
            Err(SecurityError::BadKey)
        );
        assert_eq!(
            format!("{:?}", PreSharedKey::new([7; 32])),
            "PreSharedKey(..)"
        );
    }
}
