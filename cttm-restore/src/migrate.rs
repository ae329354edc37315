//! Planned live migration: move a set of established connections, and the service address
//! they use, from this host (the *source*) to a peer (the *destination*), without the clients
//! noticing.
//!
//! The source calls [`migrate_out`] with the connections' sockets; the destination calls
//! [`migrate_in`] on the other end of a [`SnapshotChannel`] ([`MemoryChannel`] inside one
//! process, [`TcpChannel`] between hosts: length-prefixed postcard frames).
//!
//! # Sequence
//!
//! | step | source (A) | destination (B) |
//! |---|---|---|
//! | 1 | freeze every socket ([`FrozenConnection`]: incoming segments dropped, repair mode on) and dump it | |
//! | 2 | send `Begin`, one `Connection` per socket (snapshot + opaque application state) | receive them |
//! | 3 | release the service address | |
//! | 4 | send `End` (with the source's clock) | rebase the snapshots' clocks; resolve the clients' link-layer addresses ([`resolve_neighbours`]); claim the address |
//! | 5 | | restore every connection (`TCP_REPAIR`), then announce the address (ARP / NA) |
//! | 6 | | send `Accepted` with its timings |
//! | 7 | close the frozen sockets in repair mode (no FIN, no RST) | serve the restored sockets |
//!
//! The client's segments sent during the move are dropped on A (socket filter, then no
//! address) and retransmitted by the client to B once the announcement has moved its
//! neighbour entry. B claims the address *before* restoring (a half-closed connection's FIN
//! is replayed through the local address) and announces only *after* every socket exists, so
//! no client segment ever reaches B without a socket to take it (which would draw a RST).
//! For the same reason B resolves the clients' link-layer addresses before it claims the
//! address: an ARP request or neighbour solicitation sent *from* the service address while
//! restoring would move the clients' neighbour entries early.
//!
//! # Failures
//!
//! - Before `End` is sent (freeze, dump, sending snapshots, releasing the address): A thaws
//!   every socket (repair off without a window probe, filter removed), re-claims the address if
//!   it had released it, and hands the running sockets back
//!   ([`RecoveredConnections::Running`]); the clients only see a short pause.
//! - B refuses (claim or a restore failed): B first closes what it restored in repair mode and
//!   releases the address, then answers `Refused`; A recovers as above.
//! - The answer is lost after `End` was sent (channel broken or timed out): A cannot know
//!   whether B took the connections. Thawing them could leave two hosts serving one
//!   connection, so A hands them back still frozen ([`RecoveredConnections::Frozen`]) and the
//!   operator decides (thaw them after checking B, or drop them to close them silently).
//! - An announcement that fails on B does not undo the move (the sockets exist and the
//!   address is B's; neighbours find it when their entries expire): it is reported in
//!   [`DestinationReport::announce_error`].

use crate::repair::{
    DumpError, FrozenConnection, RestoredConnection, monotonic_now, restore_connection,
};
use crate::{AddressTakeover, RestoreError, RestoreOptions, TakeoverError};
use cttm_core::ConnectionId;
use cttm_core::snapshot::ConnectionSnapshot;
use cttm_core::time::Instant;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// The address that moves with the connections, as `address/prefix_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddress {
    /// The service (virtual) address the clients connect to.
    pub address: IpAddr,
    /// Its prefix length on the interface.
    pub prefix_len: u8,
}

/// One connection handed to [`migrate_out`]: its socket and whatever the application needs
/// to continue it on the destination (opaque to this library; empty for a stateless service).
#[derive(Debug)]
pub struct OutgoingConnection {
    /// The connected server socket.
    pub stream: TcpStream,
    /// The application's state for this connection, delivered unchanged with it.
    pub application_state: Vec<u8>,
}

/// One connection received by [`migrate_in`].
#[derive(Debug)]
pub struct IncomingConnection {
    /// The restored socket, continuing the connection.
    pub connection: RestoredConnection,
    /// The application state the source attached to it.
    pub application_state: Vec<u8>,
}

/// What the destination did, and how long each of its steps took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationReport {
    /// Connections restored.
    pub restored: u32,
    /// Time to resolve the clients' link-layer addresses before claiming (see
    /// [`resolve_neighbours`]).
    pub neighbour_warmup: Duration,
    /// Client addresses that answered the warm-up (the others are resolved on first use).
    pub neighbours_answered: u32,
    /// Time to claim the service address.
    pub claim: Duration,
    /// Time to restore every connection.
    pub restore: Duration,
    /// Time to announce the address (the whole burst of frames).
    pub announce: Duration,
    /// The announcement's failure, if it failed (the move stands; see the module docs).
    pub announce_error: Option<String>,
}

/// What a migration did, and how long each step took (the source's view).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Connections moved.
    pub connections: usize,
    /// Bytes in the send queues (server → client, unacknowledged or unsent) moved.
    pub send_queue_bytes: u64,
    /// Bytes in the receive queues (client → server, not yet read by the application) moved.
    pub receive_queue_bytes: u64,
    /// Bytes of application state moved.
    pub application_state_bytes: u64,
    /// Freezing and dumping every socket.
    pub freeze_and_dump: Duration,
    /// Sending the snapshots to the destination.
    pub ship: Duration,
    /// Releasing the service address here.
    pub release: Duration,
    /// From `End` sent to the destination's answer (its claim, restores and announcement).
    pub destination_wait: Duration,
    /// Closing the frozen sockets in repair mode.
    pub close: Duration,
    /// Sockets whose silent close reported an error (they are closed all the same, still in
    /// repair mode, so nothing reached the client; the kernel frees them with the descriptor).
    pub close_errors: Vec<String>,
    /// From the first freeze to the last close.
    pub total: Duration,
    /// The destination's own timings.
    pub destination: DestinationReport,
}

/// A message between source and destination. On a [`TcpChannel`] each travels in a
/// [`WireFrame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationMessage {
    /// A migration starts: `connections` `Connection` messages follow, then `End`.
    Begin {
        /// The address that moves.
        service: ServiceAddress,
        /// How many connections follow.
        connections: u32,
    },
    /// One connection.
    Connection {
        /// Its dumped server socket.
        snapshot: Box<ConnectionSnapshot>,
        /// The application's state for it.
        application_state: Vec<u8>,
    },
    /// Every connection was sent and the source has released the address.
    End {
        /// The source's clock when sending this (the clock the snapshots are stamped with),
        /// so the destination can rebase their timestamp clocks onto its own.
        source_clock: Instant,
    },
    /// The destination restored every connection.
    Accepted(DestinationReport),
    /// The destination restored nothing (and left nothing behind).
    Refused {
        /// Why.
        reason: String,
    },
}

/// The versioned envelope of a message on a byte stream (postcard, behind a big-endian
/// `u32` length prefix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireFrame {
    /// Version 1.
    V1(MigrationMessage),
}

/// A channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed the channel.
    #[error("the migration peer closed the channel; check that it is still running")]
    Closed,
    /// No message arrived in time.
    #[error(
        "no message from the migration peer within {0:?}; check the peer and the network between the hosts"
    )]
    Timeout(Duration),
    /// A frame announced a length above the limit (a corrupt stream or a foreign peer).
    #[error(
        "a frame of {len} bytes exceeds the {max}-byte limit; is the peer a cttm migration peer of the same version?"
    )]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame could not be decoded (corrupt, or another protocol version).
    #[error(
        "undecodable frame from the migration peer ({0}); is it a cttm migration peer of the same version?"
    )]
    Decode(postcard::Error),
    /// A message could not be encoded.
    #[error("encoding a migration message failed: {0}")]
    Encode(postcard::Error),
    /// Reading or writing the stream failed.
    #[error("migration channel I/O failed: {0}")]
    Io(io::Error),
}

/// Carries [`MigrationMessage`]s between source and destination, in order, reliably.
pub trait SnapshotChannel {
    /// Sends one message.
    fn send(&mut self, message: MigrationMessage) -> Result<(), ChannelError>;
    /// Receives the next message (bounded in time by the channel's timeout).
    fn receive(&mut self) -> Result<MigrationMessage, ChannelError>;
}

/// An in-process channel (both ends in one process, e.g. one thread per network namespace).
#[derive(Debug)]
pub struct MemoryChannel {
    outgoing: mpsc::Sender<MigrationMessage>,
    incoming: mpsc::Receiver<MigrationMessage>,
    timeout: Duration,
}

impl MemoryChannel {
    /// Two connected ends; `receive` on either waits at most `timeout`.
    pub fn pair(timeout: Duration) -> (MemoryChannel, MemoryChannel) {
        let (to_b, from_a) = mpsc::channel();
        let (to_a, from_b) = mpsc::channel();
        (
            MemoryChannel {
                outgoing: to_b,
                incoming: from_b,
                timeout,
            },
            MemoryChannel {
                outgoing: to_a,
                incoming: from_a,
                timeout,
            },
        )
    }
}

impl SnapshotChannel for MemoryChannel {
    fn send(&mut self, message: MigrationMessage) -> Result<(), ChannelError> {
        self.outgoing
            .send(message)
            .map_err(|_| ChannelError::Closed)
    }

    fn receive(&mut self) -> Result<MigrationMessage, ChannelError> {
        self.incoming
            .recv_timeout(self.timeout)
            .map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => ChannelError::Timeout(self.timeout),
                mpsc::RecvTimeoutError::Disconnected => ChannelError::Closed,
            })
    }
}

/// A channel over a TCP stream: each message is a postcard-encoded [`WireFrame`] behind a
/// big-endian `u32` length.
#[derive(Debug)]
pub struct TcpChannel {
    stream: TcpStream,
    timeout: Duration,
}

impl TcpChannel {
    /// The largest frame accepted (one snapshot with its queues and application state).
    pub const MAX_FRAME: u32 = 256 * 1024 * 1024;

    /// Wraps a connected stream; reads and writes time out after `timeout`.
    pub fn new(stream: TcpStream, timeout: Duration) -> io::Result<TcpChannel> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(TcpChannel { stream, timeout })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn map_io(&self, e: io::Error) -> ChannelError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ChannelError::Timeout(self.timeout)
            }
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ChannelError::Closed,
            _ => ChannelError::Io(e),
        }
    }
}

impl SnapshotChannel for TcpChannel {
    fn send(&mut self, message: MigrationMessage) -> Result<(), ChannelError> {
        let body = postcard::to_stdvec(&WireFrame::V1(message)).map_err(ChannelError::Encode)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|len| *len <= Self::MAX_FRAME)
            .ok_or(ChannelError::FrameTooLarge {
                len: body.len() as u64,
                max: u64::from(Self::MAX_FRAME),
            })?;
        self.stream
            .write_all(&len.to_be_bytes())
            .map_err(|e| self.map_io(e))?;
        self.stream.write_all(&body).map_err(|e| self.map_io(e))?;
        Ok(())
    }

    fn receive(&mut self) -> Result<MigrationMessage, ChannelError> {
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .map_err(|e| self.map_io(e))?;
        let len = u32::from_be_bytes(prefix);
        if len > Self::MAX_FRAME {
            return Err(ChannelError::FrameTooLarge {
                len: u64::from(len),
                max: u64::from(Self::MAX_FRAME),
            });
        }
        let mut body = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| self.map_io(e))?;
        match postcard::from_bytes(&body).map_err(ChannelError::Decode)? {
            WireFrame::V1(message) => Ok(message),
        }
    }
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Freezing a socket (socket filter, repair mode) failed.
    #[error("freezing the connection from {peer:?} failed: {source}")]
    Freeze {
        /// The client's address, if the socket still knew it.
        peer: Option<std::net::SocketAddr>,
        /// Why.
        source: DumpError,
    },
    /// Dumping a frozen socket failed.
    #[error("dumping the connection from {peer:?} failed: {source}")]
    Dump {
        /// The client's address, if the socket still knew it.
        peer: Option<std::net::SocketAddr>,
        /// Why.
        source: DumpError,
    },
    /// The channel to the peer failed.
    #[error("migration channel failed while {step}: {source}")]
    Channel {
        /// What was being done.
        step: &'static str,
        /// Why.
        source: ChannelError,
    },
    /// The peer sent a message out of sequence.
    #[error("the migration peer broke the protocol: {0}; are both ends the same cttm version?")]
    Protocol(String),
    /// Releasing the service address on the source failed.
    #[error("releasing the service address failed: {0}")]
    Release(TakeoverError),
    /// Claiming the service address on the destination failed.
    #[error("claiming the service address failed: {0}")]
    Claim(TakeoverError),
    /// Restoring a connection on the destination failed.
    #[error("restoring {id} failed: {source}")]
    Restore {
        /// The connection.
        id: ConnectionId,
        /// Why.
        source: Box<RestoreError>,
    },
    /// The destination refused the migration (it restored nothing).
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    /// The source offered a service address this destination is not configured for.
    #[error("refused the migration: {0}; check the --address of both ends")]
    UnexpectedService(String),
}

/// Where the source's connections are after a failed [`migrate_out`].
#[derive(Debug)]
pub enum RecoveredConnections {
    /// Thawed and running again here (with their application state), the service address
    /// re-claimed: the application can carry on serving them.
    Running(Vec<OutgoingConnection>),
    /// Still frozen, because the destination may have taken them (its answer was lost after
    /// `End`). Thaw them ([`FrozenConnection::thaw`]) only once sure the destination does not
    /// serve them; dropping them closes them silently.
    Frozen(Vec<(FrozenConnection, Vec<u8>)>),
}

/// A failed [`migrate_out`]: what went wrong, and the connections handed back.
#[derive(Debug)]
pub struct MigrationFailure {
    /// The first error.
    pub error: MigrateError,
    /// The connections, as recovered.
    pub connections: RecoveredConnections,
    /// Problems met while recovering (a socket that could not be thawed is lost: closed
    /// silently; an address that could not be re-claimed must be added back by hand).
    pub recovery_problems: Vec<String>,
}

impl std::fmt::Display for MigrationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        for problem in &self.recovery_problems {
            write!(f, "; recovery: {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MigrationFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// The source's state while a migration runs: what to undo on failure.
struct SourceProgress<'t, T: AddressTakeover + ?Sized> {
    frozen: Vec<(FrozenConnection, Vec<u8>)>,
    running: Vec<OutgoingConnection>,
    released: bool,
    service: ServiceAddress,
    takeover: &'t mut T,
}

impl<T: AddressTakeover + ?Sized> SourceProgress<'_, T> {
    /// Undoes everything: thaw the frozen sockets, re-claim the address.
    fn roll_back(self, error: MigrateError) -> Box<MigrationFailure> {
        let mut problems = Vec::new();
        let mut running = self.running;
        for (frozen, application_state) in self.frozen {
            match frozen.thaw() {
                Ok(stream) => running.push(OutgoingConnection {
                    stream,
                    application_state,
                }),
                Err(e) => problems.push(format!(
                    "a connection could not be thawed and was closed: {e}"
                )),
            }
        }
        if self.released
            && let Err(e) = self
                .takeover
                .claim(self.service.address, self.service.prefix_len)
        {
            problems.push(format!(
                "re-claiming {}/{} failed ({e}); add it back to the interface by hand",
                self.service.address, self.service.prefix_len
            ));
        }
        Box::new(MigrationFailure {
            error,
            connections: RecoveredConnections::Running(running),
            recovery_problems: problems,
        })
    }

    /// Keeps the sockets frozen: the destination may own them.
    fn keep_frozen(self, error: MigrateError) -> Box<MigrationFailure> {
        Box::new(MigrationFailure {
            error,
            connections: RecoveredConnections::Frozen(self.frozen),
            recovery_problems: Vec::new(),
        })
    }
}

/// Moves `connections` and the service address to the destination at the other end of
/// `channel` (which runs [`migrate_in`]). `takeover` releases the address here (it must be
/// the takeover of the interface that carries it).
///
/// On success every socket has been closed here silently and continues on the destination.
/// On failure the connections are handed back as the [module documentation](self) describes.
pub fn migrate_out<T: AddressTakeover + ?Sized, C: SnapshotChannel + ?Sized>(
    connections: Vec<OutgoingConnection>,
    service: ServiceAddress,
    takeover: &mut T,
    channel: &mut C,
) -> Result<MigrationReport, Box<MigrationFailure>> {
    let started = std::time::Instant::now();
    let mut report = MigrationReport {
        connections: connections.len(),
        ..MigrationReport::default()
    };
    let mut progress = SourceProgress {
        frozen: Vec::with_capacity(connections.len()),
        running: Vec::new(),
        released: false,
        service,
        takeover,
    };

    // 1. Freeze and dump. Freezing first, all of them, keeps the dumps consistent with what
    //    the clients see: nothing a frozen socket receives is acknowledged.
    let mut snapshots = Vec::with_capacity(connections.len());
    let mut peers = Vec::with_capacity(connections.len());
    let mut remaining = connections.into_iter();
    for OutgoingConnection {
        stream,
        application_state,
    } in remaining.by_ref()
    {
        let peer = stream.peer_addr().ok();
        match FrozenConnection::freeze(stream) {
            Ok(frozen) => {
                progress.frozen.push((frozen, application_state));
                peers.push(peer);
            }
            Err(failure) => {
                let failure = *failure;
                progress.running.push(OutgoingConnection {
                    stream: failure.stream,
                    application_state,
                });
                progress.running.extend(remaining);
                return Err(progress.roll_back(MigrateError::Freeze {
                    peer,
                    source: failure.error,
                }));
            }
        }
    }
    for ((frozen, application_state), peer) in progress.frozen.iter().zip(&peers) {
        match frozen.dump() {
            Ok(snapshot) => {
                report.send_queue_bytes += snapshot.send.bytes.len() as u64;
                report.receive_queue_bytes += snapshot.receive.bytes.len() as u64;
                report.application_state_bytes += application_state.len() as u64;
                snapshots.push(snapshot);
            }
            Err(source) => {
                let peer = *peer;
                return Err(progress.roll_back(MigrateError::Dump { peer, source }));
            }
        }
    }
    report.freeze_and_dump = started.elapsed();

    // 2. Ship.
    let shipping = std::time::Instant::now();
    let count = u32::try_from(snapshots.len()).unwrap_or(u32::MAX);
    let mut sent = channel.send(MigrationMessage::Begin {
        service,
        connections: count,
    });
    for (snapshot, (_, application_state)) in snapshots.into_iter().zip(&progress.frozen) {
        if sent.is_err() {
            break;
        }
        sent = channel.send(MigrationMessage::Connection {
            snapshot: Box::new(snapshot),
            application_state: application_state.clone(),
        });
    }
    if let Err(source) = sent {
        return Err(progress.roll_back(MigrateError::Channel {
            step: "sending the snapshots",
            source,
        }));
    }
    report.ship = shipping.elapsed();

    // 3. Release the address: from now on nothing for it reaches this host.
    let releasing = std::time::Instant::now();
    if let Err(e) = progress
        .takeover
        .release(service.address, service.prefix_len)
    {
        // The address may be half gone; re-claiming is idempotent, so roll back claims it.
        progress.released = true;
        let _ = channel.send(MigrationMessage::Refused {
            reason: format!("source could not release the address: {e}"),
        });
        return Err(progress.roll_back(MigrateError::Release(e)));
    }
    progress.released = true;
    report.release = releasing.elapsed();

    // 4. Hand over and wait for the verdict.
    let waiting = std::time::Instant::now();
    if let Err(source) = channel.send(MigrationMessage::End {
        source_clock: monotonic_now(),
    }) {
        // `End` may or may not have gone out: the destination could act on it.
        return Err(progress.keep_frozen(MigrateError::Channel {
            step: "sending End",
            source,
        }));
    }
    match channel.receive() {
        Ok(MigrationMessage::Accepted(destination)) => report.destination = destination,
        Ok(MigrationMessage::Refused { reason }) => {
            return Err(progress.roll_back(MigrateError::Refused(reason)));
        }
        Ok(other) => {
            return Err(progress.keep_frozen(MigrateError::Protocol(format!(
                "expected Accepted or Refused, got {}",
                message_name(&other)
            ))));
        }
        Err(source) => {
            return Err(progress.keep_frozen(MigrateError::Channel {
                step: "waiting for the destination",
                source,
            }));
        }
    }
    report.destination_wait = waiting.elapsed();

    // 5. The destination owns the connections: close ours silently.
    let closing = std::time::Instant::now();
    for (frozen, _) in progress.frozen.drain(..) {
        if let Err(e) = frozen.close() {
            report.close_errors.push(e.to_string());
        }
    }
    report.close = closing.elapsed();
    report.total = started.elapsed();
    Ok(report)
}

fn message_name(message: &MigrationMessage) -> &'static str {
    match message {
        MigrationMessage::Begin { .. } => "Begin",
        MigrationMessage::Connection { .. } => "Connection",
        MigrationMessage::End { .. } => "End",
        MigrationMessage::Accepted(_) => "Accepted",
        MigrationMessage::Refused { .. } => "Refused",
    }
}

/// What [`migrate_in`] received and restored.
#[derive(Debug)]
pub struct IncomingMigration {
    /// The address that moved (now claimed and announced here).
    pub service: ServiceAddress,
    /// The restored connections, in the order the source sent them.
    pub connections: Vec<IncomingConnection>,
    /// This side's timings.
    pub report: DestinationReport,
    /// Listening sockets on the service's address and ports (one per distinct server socket
    /// of the connections), bound after the restores and before the announcement: accept new
    /// clients on them, or drop them (binding a listener there later works as well). Empty
    /// for a port the application already listened on here.
    pub listeners: Vec<std::net::TcpListener>,
}

/// Receives one migration from the source at the other end of `channel`, claims the
/// service address with `takeover`, restores every connection (in the calling thread's
/// network namespace) with `options` (its `now` is replaced by [`monotonic_now`] and the
/// snapshots' clocks are rebased onto it), announces the address and answers the source.
///
/// On failure nothing is left behind here (restored sockets closed in repair mode, the
/// address released if this call claimed it) and the source is told `Refused`, so it can
/// carry on serving the connections.
pub fn migrate_in<T: AddressTakeover + ?Sized, C: SnapshotChannel + ?Sized>(
    channel: &mut C,
    takeover: &mut T,
    options: RestoreOptions,
) -> Result<IncomingMigration, MigrateError> {
    receive_migration(channel, takeover, options, None)
}

/// [`migrate_in`], but only for `expected`: a source that offers another service address is
/// refused (nothing claimed, nothing restored), so a destination configured for one address
/// never takes over another.
pub fn migrate_in_for<T: AddressTakeover + ?Sized, C: SnapshotChannel + ?Sized>(
    channel: &mut C,
    takeover: &mut T,
    options: RestoreOptions,
    expected: ServiceAddress,
) -> Result<IncomingMigration, MigrateError> {
    receive_migration(channel, takeover, options, Some(expected))
}

fn receive_migration<T: AddressTakeover + ?Sized, C: SnapshotChannel + ?Sized>(
    channel: &mut C,
    takeover: &mut T,
    options: RestoreOptions,
    expected: Option<ServiceAddress>,
) -> Result<IncomingMigration, MigrateError> {
    let received = receive_offer(channel);
    let (service, mut offered, source_clock) = match received {
        Ok(offer) => offer,
        Err(e) => {
            if let MigrateError::Protocol(reason) = &e {
                let _ = channel.send(MigrationMessage::Refused {
                    reason: reason.clone(),
                });
            }
            return Err(e);
        }
    };
    if let Some(expected) = expected
        && expected != service
    {
        let reason = format!(
            "this destination takes over {}/{} only, not {}/{}",
            expected.address, expected.prefix_len, service.address, service.prefix_len
        );
        let _ = channel.send(MigrationMessage::Refused {
            reason: reason.clone(),
        });
        return Err(MigrateError::UnexpectedService(reason));
    }
    let mut report = DestinationReport::default();

    // The snapshots were stamped with the source's clock; express them in ours. The source's
    // clock at `End` corresponds to (at most) our clock now, so every timestamp clock advances
    // by no more than the real elapsed time and never runs backwards (RFC 7323 §5.3).
    let now = monotonic_now();
    for (snapshot, _) in &mut offered {
        if let Some(clock) = &mut snapshot.clock {
            let age = source_clock.saturating_since(clock.observed_at);
            clock.observed_at =
                Instant::from_micros(now.micros().saturating_sub(age.as_micros() as u64));
        }
    }

    let warming = std::time::Instant::now();
    let mut clients: Vec<IpAddr> = offered.iter().map(|(s, _)| s.id.client.ip()).collect();
    clients.sort_unstable();
    clients.dedup();
    report.neighbours_answered = resolve_neighbours(&clients, NEIGHBOUR_WARMUP);
    report.neighbour_warmup = warming.elapsed();

    let claiming = std::time::Instant::now();
    if let Err(e) = takeover.claim(service.address, service.prefix_len) {
        let _ = channel.send(MigrationMessage::Refused {
            reason: format!("claiming the address failed: {e}"),
        });
        return Err(MigrateError::Claim(e));
    }
    report.claim = claiming.elapsed();

    let restoring = std::time::Instant::now();
    let options = RestoreOptions {
        now: monotonic_now(),
        ..options
    };
    let mut restored = Vec::with_capacity(offered.len());
    for (snapshot, application_state) in offered {
        match restore_connection(&snapshot, &options) {
            Ok(connection) => restored.push(IncomingConnection {
                connection,
                application_state,
            }),
            Err(source) => {
                for done in restored {
                    // Nothing may reach the client from here: close silently.
                    let _ = crate::repair::close_in_repair(done.connection.into_stream());
                }
                let _ = takeover.release(service.address, service.prefix_len);
                let error = MigrateError::Restore {
                    id: snapshot.id,
                    source: Box::new(source),
                };
                let _ = channel.send(MigrationMessage::Refused {
                    reason: error.to_string(),
                });
                return Err(error);
            }
        }
    }
    report.restore = restoring.elapsed();
    report.restored = u32::try_from(restored.len()).unwrap_or(u32::MAX);

    // One listener per distinct service socket, for the application to accept new clients
    // ([`IncomingMigration::listeners`]); bound before the announcement, so they are ready when
    // the first new client arrives. Restored sockets allow port reuse like accepted ones, so
    // this works next to them; if the service already listens there, binding fails harmlessly.
    let listeners: Vec<std::net::TcpListener> = {
        let mut servers: Vec<std::net::SocketAddr> =
            restored.iter().map(|c| c.connection.id().server).collect();
        servers.sort_unstable();
        servers.dedup();
        servers
            .into_iter()
            .filter_map(|server| std::net::TcpListener::bind(server).ok())
            .collect()
    };

    let announcing = std::time::Instant::now();
    if let Err(e) = takeover.announce(service.address) {
        report.announce_error = Some(e.to_string());
    }
    report.announce = announcing.elapsed();

    // If this answer is lost the source keeps its sockets frozen (never thaws them on its
    // own), so ours stay the only live copy.
    channel
        .send(MigrationMessage::Accepted(report.clone()))
        .map_err(|source| MigrateError::Channel {
            step: "answering the source",
            source,
        })?;
    Ok(IncomingMigration {
        service,
        connections: restored,
        report,
        listeners,
    })
}

/// The longest [`migrate_in`] waits for the clients' neighbour warm-up.
const NEIGHBOUR_WARMUP: Duration = Duration::from_millis(250);

/// The discard port (RFC 863): the warm-up datagram's destination, answered by an ICMP
/// "port unreachable" or silently dropped, never by an application.
const DISCARD_PORT: u16 = 9;

/// Makes sure this host knows the link-layer address of every client (or of the router
/// towards it) *before* the service address is claimed, by sending each an empty UDP
/// datagram to the discard port from this host's own address; returns how many answered
/// (an ICMP error back proves the neighbour entry is resolved), waiting at most `budget`.
///
/// Why: a restored socket sends at once (window probe, unsent data). Without a neighbour
/// entry the kernel first sends an ARP request / neighbour solicitation *from the service
/// address*, and the client's kernel learns from it that the address now lives here
/// (RFC 826 merge, RFC 4861 §7.2.3) — while the other connections may not be restored yet,
/// so the client's next segment on one of them would draw a RST. Resolved beforehand, the
/// entries are REACHABLE and nothing is solicited from the service address until the
/// announcement. Best effort: a client that filters ICMP costs the whole budget, once.
pub fn resolve_neighbours(clients: &[IpAddr], budget: Duration) -> u32 {
    let deadline = std::time::Instant::now() + budget;
    let mut waiting: Vec<std::net::UdpSocket> = clients
        .iter()
        .filter_map(|client| {
            let any: IpAddr = if client.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
            socket.connect((*client, DISCARD_PORT)).ok()?;
            socket.set_nonblocking(true).ok()?;
            socket.send(&[]).ok()?;
            Some(socket)
        })
        .collect();
    let mut answered = 0;
    let mut buffer = [0u8; 16];
    // Bounded by the deadline (and the number of sockets, each removed once answered).
    while !waiting.is_empty() && std::time::Instant::now() < deadline {
        waiting.retain(|socket| match socket.recv(&mut buffer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            _ => {
                answered += 1;
                false
            }
        });
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    answered
}

type Offer = (ServiceAddress, Vec<(ConnectionSnapshot, Vec<u8>)>, Instant);

/// Receives `Begin`, the connections and `End`.
fn receive_offer<C: SnapshotChannel + ?Sized>(channel: &mut C) -> Result<Offer, MigrateError> {
    let receive = |channel: &mut C, step| {
        channel
            .receive()
            .map_err(|source| MigrateError::Channel { step, source })
    };
    let (service, count) = match receive(channel, "waiting for Begin")? {
        MigrationMessage::Begin {
            service,
            connections,
        } => (service, connections),
        other => {
            return Err(MigrateError::Protocol(format!(
                "expected Begin, got {}",
                message_name(&other)
            )));
        }
    };
    let mut offered = Vec::new();
    // Bounded by the announced count (plus the one `End`, or a `Refused` from the source).
    for _ in 0..=count {
        match receive(channel, "receiving snapshots")? {
            MigrationMessage::Connection {
                snapshot,
                application_state,
            } => {
                if offered.len() == count as usize {
                    return Err(MigrateError::Protocol(format!(
                        "more than the {count} announced connections"
                    )));
                }
                offered.push((*snapshot, application_state));
            }
            MigrationMessage::End { source_clock } => {
                if offered.len() != count as usize {
                    return Err(MigrateError::Protocol(format!(
                        "End after {} of {count} announced connections",
                        offered.len()
                    )));
                }
                return Ok((service, offered, source_clock));
            }
            MigrationMessage::Refused { reason } => return Err(MigrateError::Refused(reason)),
            other => {
                return Err(MigrateError::Protocol(format!(
                    "expected Connection or End, got {}",
                    message_name(&other)
                )));
            }
        }
    }
    Err(MigrateError::Protocol(format!(
        "no End after the {count} announced connections"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_channel_frames_round_trip_and_reject_oversized_or_garbage_frames() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let mut a = TcpChannel::new(client, Duration::from_secs(5)).expect("channel a");
        let mut b = TcpChannel::new(server, Duration::from_secs(5)).expect("channel b");
        let service = ServiceAddress {
            address: "198.18.0.10".parse().expect("ip"),
            prefix_len: 24,
        };
        a.send(MigrationMessage::Begin {
            service,
            connections: 2,
        })
        .expect("send");
        a.send(MigrationMessage::End {
            source_clock: Instant::from_micros(42),
        })
        .expect("send");
        assert_eq!(
            b.receive().expect("receive"),
            MigrationMessage::Begin {
                service,
                connections: 2
            }
        );
        assert_eq!(
            b.receive().expect("receive"),
            MigrationMessage::End {
                source_clock: Instant::from_micros(42)
            }
        );

        // An oversized length prefix is refused before allocating.
        a.stream
            .write_all(&u32::MAX.to_be_bytes())
            .expect("raw write");
        assert!(matches!(
            b.receive(),
            Err(ChannelError::FrameTooLarge { .. })
        ));
        // Garbage in a well-sized frame is a decode error, not a panic.
        let mut raw = 3u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&[0xff, 0xff, 0xff]);
        a.stream.write_all(&raw).expect("raw write");
        assert!(matches!(b.receive(), Err(ChannelError::Decode(_))));
        drop(a);
        assert!(matches!(b.receive(), Err(ChannelError::Closed)));
    }

    #[test]
    fn memory_channel_times_out_and_reports_a_closed_peer() {
        let (mut a, mut b) = MemoryChannel::pair(Duration::from_millis(10));
        assert!(matches!(b.receive(), Err(ChannelError::Timeout(_))));
        a.send(MigrationMessage::Refused {
            reason: "no".into(),
        })
        .expect("send");
        assert_eq!(
            b.receive().expect("receive"),
            MigrationMessage::Refused {
                reason: "no".into()
            }
        );
        drop(a);
        assert!(matches!(b.receive(), Err(ChannelError::Closed)));
    }

    #[test]
    fn offers_out_of_sequence_are_protocol_errors() {
        let (mut a, mut b) = MemoryChannel::pair(Duration::from_secs(1));
        let service = ServiceAddress {
            address: "2001:db8::10".parse().expect("ip"),
            prefix_len: 64,
        };
        a.send(MigrationMessage::Begin {
            service,
            connections: 1,
        })
        .expect("send");
        a.send(MigrationMessage::End {
            source_clock: Instant::ZERO,
        })
        .expect("send");
        assert!(matches!(
            receive_offer(&mut b),
            Err(MigrateError::Protocol(_))
        ));
        a.send(MigrationMessage::End {
            source_clock: Instant::ZERO,
        })
        .expect("send");
        assert!(matches!(
            receive_offer(&mut b),
            Err(MigrateError::Protocol(_))
        ));
    }
}
