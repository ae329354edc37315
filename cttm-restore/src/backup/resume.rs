//! Checkpointed connections at takeover: restored at their last checkpoint
//! (`cttm_core::backup::resume`) and handed to the application that embeds the backup.

use cttm_core::checkpoint::Checkpoint;
use cttm_core::endpoint::ConnectionId;
use std::net::TcpStream;

/// A checkpointed connection restored at takeover, for the application to carry on from its
/// checkpoint ([`cttm_core::checkpoint`] has the contract).
///
/// The socket is connected to the client and in blocking mode. It delivers the client's
/// bytes from [`Checkpoint::client_consumed`] on (those the backup held are already in its
/// receive queue), and the next byte the application writes is server byte
/// [`Checkpoint::server_produced`]: the socket itself still sends what the client has not
/// acknowledged before it. A tokio server takes it with `stream.set_nonblocking(true)` and
/// `tokio::net::TcpStream::from_std(stream)`.
#[derive(Debug)]
pub struct ResumedConnection {
    /// The restored socket.
    pub stream: TcpStream,
    /// The checkpoint to resume from: the application's state for the connection.
    pub checkpoint: Checkpoint,
    /// Server bytes the primary produced after the checkpoint but never released, discarded
    /// at takeover (the application produces them again from the checkpoint's state).
    pub discarded: u64,
}

impl ResumedConnection {
    /// The connection.
    pub fn id(&self) -> ConnectionId {
        self.checkpoint.id
    }
}

/// Where resumed connections go: the application's callback.
pub type ResumeHandler = Box<dyn FnMut(ResumedConnection) + Send>;
