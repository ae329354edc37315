//! The checkpoints of the application that embeds the primary: it reports them through a
//! [`Checkpointer`] ([`cttm_core::checkpoint`] has the contract), the agent ships them to
//! the backup, and output commit holds each server segment of a checkpointed connection
//! until the backup holds a checkpoint that covers it.

use cttm_core::checkpoint::{Checkpoint, CheckpointError, CheckpointOutcome};
use cttm_core::endpoint::ConnectionId;
use cttm_core::time::Instant;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Reports an application's checkpoints to its primary agent
/// ([`PrimaryAgent::checkpointer`](super::PrimaryAgent::checkpointer)). Cheap to clone;
/// any thread may use it.
///
/// Before each write to a connection's socket, the application calls
/// [`checkpoint`](Self::checkpoint) with the bytes of that write: how far it consumed the
/// client's stream, the server stream offset *after* the write, its own state for the
/// connection *after* the write, and the write itself. It checkpoints once right after
/// accepting a connection too (nothing consumed or produced), so the agent holds its first
/// reply for the backup. In sync mode a server segment of a checkpointed connection leaves
/// only once the backup holds a checkpoint covering it.
#[derive(Clone, Debug, Default)]
pub struct Checkpointer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The last checkpoint of each connection, without its state and output.
    last: Mutex<HashMap<ConnectionId, Checkpoint>>,
    /// Checkpoints not shipped yet, in the order they were reported.
    pending: Mutex<Vec<Checkpoint>>,
}

impl Checkpointer {
    /// Reports a checkpoint of connection `id` before the application writes `output` to
    /// its socket (empty: a checkpoint that precedes no write). `server_produced` is the
    /// server stream offset after `output`, `client_consumed` the client stream offset the
    /// application consumed up to (stream offsets count from 0 after the handshake: the
    /// bytes read from and written to the socket). The agent takes the time.
    ///
    /// Refused, and not shipped, when an offset goes below the connection's last checkpoint
    /// or `output` is longer than `server_produced`.
    pub fn checkpoint(
        &self,
        id: ConnectionId,
        client_consumed: u64,
        server_produced: u64,
        state: Vec<u8>,
        output: &[u8],
    ) -> Result<(), CheckpointError> {
        let id = canonical(id);
        let mut last = self.shared.last.lock();
        let held = last.get(&id);
        // Strictly later than the last one, whatever the clock did.
        let at = match held {
            Some(h) if h.at >= now() => Instant::from_micros(h.at.micros() + 1),
            _ => now(),
        };
        let checkpoint = Checkpoint {
            id,
            client_consumed,
            server_produced,
            state,
            output: output.to_vec(),
            at,
        };
        if checkpoint.follows(held)? == CheckpointOutcome::Ignored {
            return Ok(());
        }
        let summary = Checkpoint {
            state: Vec::new(),
            output: Vec::new(),
            ..checkpoint.clone()
        };
        last.insert(id, summary);
        // Queued under the `last` lock, so two threads checkpointing one connection queue
        // in the order their offsets were checked.
        self.shared.pending.lock().push(checkpoint);
        Ok(())
    }

    /// Whether the application checkpoints connection `id`.
    pub fn is_checkpointed(&self, id: &ConnectionId) -> bool {
        self.shared.last.lock().contains_key(&canonical(*id))
    }

    /// The checkpoints reported since the last call, in order (the agent ships them).
    pub(super) fn take(&self) -> Vec<Checkpoint> {
        std::mem::take(&mut *self.shared.pending.lock())
    }

    /// Forgets the connections `keep` says are gone (the agent forgot them).
    pub(super) fn retain(&self, mut keep: impl FnMut(&ConnectionId) -> bool) {
        self.shared.last.lock().retain(|id, _| keep(id));
    }
}

/// Now, as the agent's tracker times frames: microseconds since the Unix epoch.
fn now() -> Instant {
    super::agent::epoch_now()
}

/// The connection as the tracker names it: an IPv4 client of an IPv6 wildcard listener
/// shows as an IPv4-mapped address on the socket, plain IPv4 on the wire.
fn canonical(id: ConnectionId) -> ConnectionId {
    let plain = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    ConnectionId {
        client: plain(id.client),
        server: plain(id.server),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConnectionId {
        ConnectionId {
            client: "[::ffff:198.18.0.1]:40000".parse().expect("addr"),
            server: "[::ffff:198.18.0.10]:7000".parse().expect("addr"),
        }
    }

    #[test]
    fn checkpoints_are_queued_in_order_with_growing_times() {
        let c = Checkpointer::default();
        c.checkpoint(id(), 0, 0, b"new".to_vec(), b"").unwrap();
        c.checkpoint(id(), 4, 3, b"one".to_vec(), b"A1\n").unwrap();
        let taken = c.take();
        assert_eq!(taken.len(), 2);
        assert!(taken[0].at < taken[1].at);
        assert_eq!(taken[1].output, b"A1\n");
        assert_eq!(taken[1].id.client, "198.18.0.1:40000".parse().unwrap());
        assert!(c.is_checkpointed(&id()));
        assert!(c.take().is_empty());
    }

    #[test]
    fn a_checkpoint_going_backwards_is_refused_and_not_queued() {
        let c = Checkpointer::default();
        c.checkpoint(id(), 4, 3, Vec::new(), b"A1\n").unwrap();
        assert!(matches!(
            c.checkpoint(id(), 2, 3, Vec::new(), b""),
            Err(CheckpointError::OffsetsBackwards { .. })
        ));
        assert!(matches!(
            c.checkpoint(id(), 4, 2, Vec::new(), b"abc"),
            Err(CheckpointError::OutputBeforeStart { .. })
        ));
        assert_eq!(c.take().len(), 1);
        c.retain(|_| false);
        assert!(!c.is_checkpointed(&id()));
    }
}
