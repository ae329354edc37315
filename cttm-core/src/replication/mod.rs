//! The replication protocol's two endpoints, sans-IO: the [`Primary`] numbers, retains and
//! resends what it ships; the [`Backup`] applies it in order and acknowledges. Both take
//! `(message or time, now)` and yield the messages to send; neither reads a clock nor touches
//! a socket. Encoding, framing, authentication and the transports are `cttm-replicate`'s.
//!
//! | module | concept |
//! |---|---|
//! | [`message`] | the protocol's messages ([`WireMessage`], [`Payload`], [`ResyncRequest`], [`Hello`], [`Role`]) as plain serde types |
//! | [`primary`] | the primary's endpoint: sequence numbers, retained queue, acknowledgements, resynchronisation, heartbeats and failure detection |
//! | [`backup`] | the backup's endpoint: in-order application, acknowledgements, resync requests, heartbeats and failure detection; the [`BackupReplica`] it applies to |
//!
//! # Protocol in one paragraph
//! Each link starts with a handshake (in `cttm-replicate`: mode byte, Noise `NNpsk0`, then one
//! [`Hello`] each way agreeing on protocol version and services). The backup then sends a
//! [`ResyncRequest`] (what it holds); the primary answers with a [`WireMessage::Resync`] and
//! resends what is missing. Every message carrying state is numbered; the backup applies them
//! strictly in order and acknowledges; the primary keeps what is unacknowledged within a
//! bounded queue, and knows per connection which client and server offsets the backup holds
//! ([`Primary::acknowledged`]), for output commit. Heartbeats flow both ways and a failure
//! detector declares the peer dead after a configured number of missed intervals.

pub mod backup;
pub mod message;
pub mod primary;

pub use backup::{
    Backup, BackupConfig, BackupReplica, BackupReport, SequencedOutcome, SequencedReplica,
};
pub use message::{Hello, Payload, ResyncRequest, Role, WireMessage};
pub use primary::{
    AckedOffsets, Primary, PrimaryConfig, PrimaryReport, SubmitError, Submitted, UnprotectedReason,
};

/// Messages for the endpoints' tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::endpoint::ConnectionId;
    use crate::event::{ConnectionEvent, EventKind, Handshake};
    use crate::message::MessageV1;
    use crate::time::Instant;
    use crate::{ReplicationMessage, SeqNumber};

    /// The backup's acknowledgement of every message up to `applied`, delivered to `primary`.
    pub(crate) fn acknowledge(
        primary: &mut super::Primary,
        epoch: u64,
        applied: u64,
        now: Instant,
    ) {
        primary.on_message(
            super::WireMessage::Ack {
                epoch,
                applied,
                consumed: vec![],
            },
            now,
        );
    }

    pub(crate) fn id(n: u16) -> ConnectionId {
        ConnectionId {
            client: std::net::SocketAddr::from(([198, 18, 0, 2], 40_000 + n)),
            server: "198.18.0.1:80".parse().unwrap(),
        }
    }

    pub(crate) fn ev(n: u16, kind: EventKind) -> ReplicationMessage {
        MessageV1::Event(ConnectionEvent {
            id: id(n),
            at: Instant::from_millis(1),
            kind,
        })
        .into()
    }

    pub(crate) fn opened(n: u16) -> ReplicationMessage {
        ev(
            n,
            EventKind::Opened(Handshake {
                client_isn: SeqNumber(1),
                server_isn: SeqNumber(2),
                client_mss: None,
                server_mss: None,
                client_window_scale: None,
                server_window_scale: None,
                sack_permitted: false,
                timestamps: false,
                client_syn_tsval: None,
                server_syn_tsval: None,
                client_syn_window: 1000,
                server_syn_window: 1000,
                mid_stream: false,
            }),
        )
    }

    pub(crate) fn client_data(n: u16, offset: u64, len: usize) -> ReplicationMessage {
        ev(
            n,
            EventKind::ClientData {
                offset,
                bytes: vec![7; len],
            },
        )
    }
}
