//! Application checkpoints: the state a non-deterministic daemon reports per connection, so a
//! backup can resume the connection from that state instead of replaying its input.
//!
//! # The contract
//! A daemon that embeds the library and is not deterministic (its output does not follow
//! from its input alone: clocks, randomness, other connections) reports a [`Checkpoint`] per
//! connection: how far it consumed the client's stream, how far it produced the server's
//! stream, and its own opaque state for that connection. It checkpoints **before every
//! write it hands to the socket**, with [`Checkpoint::server_produced`] the server stream
//! offset *after* that write. So once the backup acknowledged a checkpoint, every server
//! byte up to its `server_produced` can be produced again by a standby started from its
//! state, and the output-commit gate ([`crate::commit`]) lets a server segment of a
//! checkpointed connection leave only once such a checkpoint covers it.
//!
//! A checkpoint carries the bytes of the write it precedes ([`Checkpoint::output`]): the
//! backup then holds every server byte up to `server_produced` the moment it holds the
//! checkpoint, even if the primary crashed before its capture saw the write (a write the
//! kernel sends late, because the client's window or the congestion window is full). The
//! state can thus describe the connection *after* the write, and a backup resuming from it
//! sends the rest of that write itself: the application never writes a byte twice. The
//! primary does not ship the captured copy of those bytes again.
//!
//! What the application must make deterministic between two checkpoints: nothing, if it
//! checkpoints before every write it hands to the socket. Bytes it writes without a
//! checkpoint before them are held by output commit until a later checkpoint covers them,
//! and the backup resuming from an earlier checkpoint discards them (the client never saw
//! them).
//!
//! Checkpoints of one connection are ordered by [`Checkpoint::at`], which must grow strictly
//! from one checkpoint of a connection to the next. A checkpoint not later than the last one
//! held is a duplicate (or a stale copy) and is ignored; a later one whose offsets are below
//! the last one's is refused with [`CheckpointError::OffsetsBackwards`]: streams only grow.

use crate::endpoint::ConnectionId;
use crate::time::Instant;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One connection's application state at a point of its streams (see the module
/// documentation for the contract).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The connection.
    pub id: ConnectionId,
    /// Client stream offset the application consumed up to: every client byte below it is
    /// reflected in `state`, so the backup no longer needs to retain those bytes.
    pub client_consumed: u64,
    /// Server stream offset after the write this checkpoint precedes: every server byte
    /// below it follows from `state` (and the bytes before).
    pub server_produced: u64,
    /// The application's own state for the connection, opaque to the library.
    pub state: Vec<u8>,
    /// The server bytes `[server_produced - output.len(), server_produced)`: the write this
    /// checkpoint precedes (empty when it precedes none). They must start at or before the
    /// end of the server bytes already shipped.
    pub output: Vec<u8>,
    /// When the application took the checkpoint (its clock); strictly later than the
    /// previous checkpoint of the same connection.
    pub at: Instant,
}

/// What applying a checkpoint to a connection's record did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CheckpointOutcome {
    /// The checkpoint is later than the one held (or the first): it replaced it.
    Replaced,
    /// The checkpoint is not later than the one held (a duplicate or a stale copy): ignored.
    Ignored,
}

/// A checkpoint was refused. The record keeps the checkpoint it held.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    /// A checkpoint later than the one held has an offset below it: streams only grow, so
    /// the application reported its checkpoints out of order or mixed up connections.
    #[error(
        "connection {id}: checkpoint offsets go backwards (client consumed {held_client} -> \
         {got_client}, server produced {held_server} -> {got_server}); checkpoint each \
         connection in stream order with growing offsets"
    )]
    OffsetsBackwards {
        /// The connection.
        id: ConnectionId,
        /// `client_consumed` of the checkpoint held.
        held_client: u64,
        /// `server_produced` of the checkpoint held.
        held_server: u64,
        /// `client_consumed` of the refused checkpoint.
        got_client: u64,
        /// `server_produced` of the refused checkpoint.
        got_server: u64,
    },
    /// The checkpoint's output is longer than its `server_produced`: it would start before
    /// the server stream does.
    #[error(
        "connection {id}: checkpoint output of {len} bytes does not fit below server_produced \
         {server_produced}; server_produced is the offset after the write"
    )]
    OutputBeforeStart {
        /// The connection.
        id: ConnectionId,
        /// `server_produced` of the refused checkpoint.
        server_produced: u64,
        /// The length of its output.
        len: usize,
    },
    /// The checkpoint's output starts beyond the server bytes shipped so far: bytes written
    /// between the previous checkpoint and this one were not reported (checkpoint before
    /// every write, each with the bytes of that write).
    #[error(
        "connection {id}: checkpoint output starts at server offset {output_from} but only \
         {held_end} server bytes were shipped; report every write in a checkpoint"
    )]
    OutputGap {
        /// The connection.
        id: ConnectionId,
        /// Where the output starts.
        output_from: u64,
        /// The end of the server bytes held.
        held_end: u64,
    },
    /// The checkpoint's output goes past the server's FIN.
    #[error("connection {id}: checkpoint output goes past the server's FIN at offset {fin}")]
    OutputAfterFin {
        /// The connection.
        id: ConnectionId,
        /// The FIN's offset.
        fin: u64,
    },
}

impl Checkpoint {
    /// Whether `self` may follow `held` (the last checkpoint of the same connection):
    /// [`Replaced`](CheckpointOutcome::Replaced) when it is later with offsets not below
    /// `held`'s, [`Ignored`](CheckpointOutcome::Ignored) when it is not later, an error when
    /// it is later but an offset goes backwards.
    pub fn follows(&self, held: Option<&Checkpoint>) -> Result<CheckpointOutcome, CheckpointError> {
        self.output_from()?;
        let Some(held) = held else {
            return Ok(CheckpointOutcome::Replaced);
        };
        if self.at <= held.at {
            return Ok(CheckpointOutcome::Ignored);
        }
        if self.client_consumed < held.client_consumed
            || self.server_produced < held.server_produced
        {
            return Err(CheckpointError::OffsetsBackwards {
                id: self.id,
                held_client: held.client_consumed,
                held_server: held.server_produced,
                got_client: self.client_consumed,
                got_server: self.server_produced,
            });
        }
        Ok(CheckpointOutcome::Replaced)
    }

    /// The server stream offset where [`output`](Self::output) starts.
    pub fn output_from(&self) -> Result<u64, CheckpointError> {
        self.server_produced
            .checked_sub(self.output.len() as u64)
            .ok_or(CheckpointError::OutputBeforeStart {
                id: self.id,
                server_produced: self.server_produced,
                len: self.output.len(),
            })
    }
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
