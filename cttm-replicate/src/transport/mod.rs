//! The I/O edge of replication: [`ReplicationTransport`], and its implementations.
//!
//! | module | transport |
//! |---|---|
//! | [`memory`] | an in-process pair, with a link that can be cut and restored |
//! | [`faulty`] | a wrapper injecting drops, delays, duplicates, reordering and cuts (seeded) |
//! | [`tcp`] | TCP between hosts, framed, authenticated with Noise, reconnecting |

pub mod faulty;
pub mod memory;
pub mod tcp;

use crate::frame::FrameError;
use crate::noise::SecurityError;
use crate::wire::DecodeError;
use crate::wire::WireMessage;
use std::time::Duration;
use thiserror::Error;

/// Carries [`WireMessage`]s (which carry [`cttm_core::ReplicationMessage`]s) between a
/// primary and a backup.
///
/// # Contract
/// - [`send`](Self::send) either hands the whole message to the link or fails; a message
///   handed over may still be lost if the link breaks afterwards. Nothing is retried by the
///   transport: the protocol ([`Primary`](crate::Primary)/[`Backup`](crate::Backup)) numbers,
///   acknowledges and resends.
/// - [`recv`](Self::recv) waits at most `timeout` and returns `Ok(None)` when nothing came
///   (or the link is down). With `Duration::ZERO` it returns only a message already received
///   and never waits. Messages arrive whole, in the order the link delivered them; a forged,
///   replayed or corrupted message is never returned: the call fails and the link is reset.
/// - [`is_up`](Self::is_up) tells whether a link is established now, and
///   [`link_epoch`](Self::link_epoch) changes whenever a new link is established (first
///   connection and every reconnection), which is when the backup must say what it holds.
/// - Methods take `&self` so one thread may block in `recv` while another sends.
pub trait ReplicationTransport: Send + Sync {
    /// Sends one message. [`TransportError::LinkDown`] when no link is up.
    fn send(&self, message: &WireMessage) -> Result<(), TransportError>;
    /// Sends several messages in order, as one write where the transport can (one system
    /// call and as few TCP segments as the bytes need, instead of one per message). Fails
    /// like [`send`](Self::send); a failure may come after some of the messages were handed
    /// to the link (the protocol resends). The default sends them one by one.
    fn send_batch(&self, messages: &[WireMessage]) -> Result<(), TransportError> {
        messages.iter().try_for_each(|m| self.send(m))
    }
    /// Receives the peer's next message, waiting at most `timeout`.
    fn recv(&self, timeout: Duration) -> Result<Option<WireMessage>, TransportError>;
    /// True while a link is established.
    fn is_up(&self) -> bool;
    /// A counter that changes whenever a new link is established.
    fn link_epoch(&self) -> u64;
    /// Bytes received so far over every link (a counter that only grows). A peer whose
    /// bytes are still arriving, for example inside one large message, is alive even before
    /// the message is complete. The default (transports that deliver whole messages) is 0.
    fn bytes_received(&self) -> u64 {
        0
    }
    /// Drops the current link because the failure detector gave up on it (no heartbeat);
    /// the transport establishes a new one as after any break. The default does nothing.
    fn reset(&self) {}
    /// Ends the current link at once because its user is stopping: a send blocked on a
    /// dead peer fails now instead of after its write timeout. The default resets.
    fn close(&self) {
        self.reset();
    }
}

/// A transport operation failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// No link is established now; the transport reconnects by itself (TCP) or when the test
    /// restores it (memory). The protocol resends what was lost.
    #[error("replication link is down; it will be re-established and resynchronised")]
    LinkDown,
    /// A frame was malformed or too large; the link was reset.
    #[error("replication link reset: {0}")]
    Frame(#[from] FrameError),
    /// A message failed authentication or decryption; it was not applied and the link was
    /// reset.
    #[error("replication link reset: {0}")]
    Security(#[from] SecurityError),
    /// A message could not be decoded; the link was reset.
    #[error("replication link reset: {0}")]
    Decode(#[from] DecodeError),
    /// The peer's hello disagreed (version, services, role): the link is refused.
    #[error("replication handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// A socket operation failed.
    #[error("replication socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// The peers did not agree at the handshake.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peers protect different services.
    #[error(
        "the peer protects services [{theirs}] but this host protects [{ours}]; configure the same services on primary and backup"
    )]
    ServiceMismatch {
        /// This host's services.
        ours: String,
        /// The peer's services.
        theirs: String,
    },
    /// The peer has the same role as this host.
    #[error("the peer is also a {0:?}; connect a primary to a backup")]
    SameRole(crate::wire::Role),
}
