//! Taking over a checkpointed connection, sans-IO: the application that embeds the backup
//! resumes it from its last checkpoint ([`crate::checkpoint`]) instead of a shadow session
//! following it.
//!
//! The restored socket ([`plan_resume`]):
//! - **receives** from the checkpoint's `client_consumed`: every client byte the backup holds
//!   after it is in the receive queue, and the socket acknowledges all of them (the backup
//!   holds them, so the client need not send them again: RFC 9293 §3.10.7.4 drops a
//!   retransmission of what was acknowledged);
//! - **sends** every server byte the client has not acknowledged up to the checkpoint's
//!   `server_produced`, the rest of the write the checkpoint preceded included (the
//!   checkpoint carried it). Server bytes after it, which the primary produced but output
//!   commit never released, are **discarded**, with the server's FIN if it came after them:
//!   the application produces them again from the checkpoint's state, and the client, which
//!   never saw them, sees one consistent stream.
//!
//! A client that acknowledged server bytes past the checkpoint (output was not held: async
//! mode, or sync mode degraded) saw bytes the application cannot account for: the
//! connection is reset ([`ResetReason::ClientAheadOfCheckpoint`]).

use super::takeover::{ConnectionPlan, ResetReason, established_after_syn_ack, reset_snapshot};
use crate::checkpoint::Checkpoint;
#[cfg(test)]
use crate::checkpoint::CheckpointError;
use crate::event::Side;
use crate::record::ConnectionRecord;
use crate::seq::SeqNumber;
use crate::snapshot::{ConnectionSnapshot, Restorability, TcpState};

/// A checkpointed connection restored for the application to resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumePlan {
    /// The socket to restore: receive queue from the checkpoint's `client_consumed`, send
    /// queue up to its `server_produced`.
    pub snapshot: ConnectionSnapshot,
    /// The checkpoint the application resumes from.
    pub checkpoint: Checkpoint,
    /// Server bytes after the checkpoint that the primary had produced but never released:
    /// discarded.
    pub discarded: u64,
}

/// What happens at takeover to the checkpointed connection of `record` (one that holds a
/// checkpoint): [`ConnectionPlan::Resume`], or a reset (or abandon) when it cannot be
/// resumed exactly.
pub fn plan_resume(record: &ConnectionRecord) -> ConnectionPlan {
    let snapshot = record.snapshot();
    let promoted = established_after_syn_ack(&snapshot);
    let snapshot = promoted.unwrap_or(snapshot);
    let Some(checkpoint) = record.checkpoint() else {
        return reset(
            &snapshot,
            ResetReason::NotRestorable("no checkpoint".into()),
        );
    };
    match snapshot.restorability {
        Restorability::Restorable => {}
        Restorability::HandshakeIncomplete => {
            return ConnectionPlan::Abandon(ResetReason::HandshakeIncomplete);
        }
        Restorability::Closed => {
            return reset(&snapshot, ResetReason::NotRestorable("closed".into()));
        }
        Restorability::Unsafe(why) => {
            return reset(&snapshot, ResetReason::NotRestorable(format!("{why:?}")));
        }
    }
    match resume_snapshot(&snapshot, record, checkpoint) {
        Ok((resumed, discarded)) => ConnectionPlan::Resume(Box::new(ResumePlan {
            snapshot: resumed,
            checkpoint: checkpoint.clone(),
            discarded,
        })),
        Err(reason) => reset(&snapshot, reason),
    }
}

fn reset(snapshot: &ConnectionSnapshot, reason: ResetReason) -> ConnectionPlan {
    ConnectionPlan::Reset {
        snapshot: reset_snapshot(snapshot),
        reason,
    }
}

/// `snapshot` with its queues cut at `checkpoint`, and the server bytes discarded.
fn resume_snapshot(
    snapshot: &ConnectionSnapshot,
    record: &ConnectionRecord,
    checkpoint: &Checkpoint,
) -> Result<(ConnectionSnapshot, u64), ResetReason> {
    let (consumed, produced) = (checkpoint.client_consumed, checkpoint.server_produced);
    let server = record.stream(Side::Server);
    let client = record.stream(Side::Client);
    // The server's FIN survives only when it directly follows the checkpoint's bytes (the
    // application closed after its last checkpointed write).
    let keep_fin = server.fin() == Some(produced);
    let resumable_end = produced + u64::from(keep_fin);
    if server.acked() > resumable_end {
        return Err(ResetReason::ClientAheadOfCheckpoint {
            checkpoint: produced,
            acked: server.acked(),
        });
    }
    if server.received_end() < produced {
        return Err(ResetReason::NotRestorable(format!(
            "the checkpoint produced server bytes up to {produced} but the backup holds only {}",
            server.received_end()
        )));
    }
    if client.retained_from() > consumed {
        return Err(ResetReason::MissingClientBytes {
            from: consumed,
            to: client.retained_from(),
        });
    }
    if consumed > client.received_end() {
        return Err(ResetReason::NotRestorable(format!(
            "the checkpoint consumed client bytes up to {consumed} but the backup received only {}",
            client.received_end()
        )));
    }
    let mut s = snapshot.clone();
    let client_base = s.client_isn.add(1);
    s.receive.bytes = client.bytes_between(consumed, client.received_end());
    s.receive.next = SeqNumber::from_offset(client_base, client.acked().max(client.received_end()));
    s.send.bytes = server.bytes_between(server.acked(), produced);
    s.send.unsent = 0;
    if !keep_fin {
        // A FIN after discarded bytes goes with them; the state is then the one before it
        // (the FIN kept, both FINs are as in the snapshot and so is the state).
        s.send.fin = false;
        s.state = TcpState::from_fins(s.receive.fin, false, false, false);
    }
    Ok((s, server.received_end() - produced))
}

#[cfg(test)]
#[path = "resume_tests.rs"]
mod tests;
