//! Serving one connection: each request line is answered with a new reply, checkpointed
//! before it is written (the contract of `cttm_core::checkpoint`: nothing needs to be
//! deterministic then). A connection resumed on the backup carries on from its checkpoint.

use crate::protocol::{ConnectionState, MAX_REQUEST_LINE, ProtocolError, Reply};
use cttm_capture::primary::Checkpointer;
use cttm_core::checkpoint::{Checkpoint, CheckpointError};
use cttm_core::endpoint::ConnectionId;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// How long a read waits before the stop flag is looked at again.
const READ_POLL: Duration = Duration::from_millis(100);

/// Where one connection stands: its streams and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The connection.
    pub id: ConnectionId,
    /// Client bytes consumed (request lines answered).
    pub consumed: u64,
    /// Server bytes produced (reply lines).
    pub produced: u64,
    /// The replies made.
    pub state: ConnectionState,
}

impl Session {
    /// A connection just accepted.
    pub fn new(id: ConnectionId) -> Session {
        Session {
            id,
            consumed: 0,
            produced: 0,
            state: ConnectionState::default(),
        }
    }

    /// A connection resumed from its last checkpoint on the backup.
    pub fn resume(checkpoint: &Checkpoint) -> Result<Session, ProtocolError> {
        Ok(Session {
            id: checkpoint.id,
            consumed: checkpoint.client_consumed,
            produced: checkpoint.server_produced,
            state: ConnectionState::decode(&checkpoint.state)?,
        })
    }
}

/// Serving a connection failed.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The socket failed.
    #[error("connection {id}: {source}")]
    Io {
        /// The connection.
        id: ConnectionId,
        /// What failed.
        source: io::Error,
    },
    /// The client sent a request line longer than [`MAX_REQUEST_LINE`].
    #[error("connection {0}: request line longer than {MAX_REQUEST_LINE} bytes")]
    RequestTooLong(ConnectionId),
    /// The primary agent refused the checkpoint (a bug of this server).
    #[error("checkpoint refused: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// Every reply line the servers wrote, by connection and reply number (the one written last
/// when a backup made a reply again after discarding the primary's): what a client must
/// have received, for tests and audits.
#[derive(Debug, Default)]
pub struct ReplyJournal {
    lines: Mutex<HashMap<ConnectionId, BTreeMap<u64, String>>>,
}

impl ReplyJournal {
    /// Records reply `seq` of connection `id`.
    pub fn record(&self, id: ConnectionId, seq: u64, line: &str) {
        self.lines
            .lock()
            .entry(id)
            .or_default()
            .insert(seq, line.to_string());
    }

    /// The last line written as reply `seq` of connection `id`.
    pub fn line(&self, id: &ConnectionId, seq: u64) -> Option<String> {
        self.lines.lock().get(id).and_then(|l| l.get(&seq).cloned())
    }
}

/// What serving a connection reports to and checks.
#[derive(Clone, Debug)]
pub struct ServeContext {
    /// The primary's checkpointer (`None` on a server without a backup).
    pub checkpointer: Option<Checkpointer>,
    /// Where reply lines are recorded, if anywhere.
    pub journal: Option<Arc<ReplyJournal>>,
    /// Set to stop serving.
    pub stop: Arc<AtomicBool>,
}

/// The name of `stream`'s connection as the agents know it.
pub fn connection_id(stream: &TcpStream) -> io::Result<ConnectionId> {
    Ok(ConnectionId {
        client: stream.peer_addr()?,
        server: stream.local_addr()?,
    })
}

/// Serves `stream` from `session` until the client closes its side (then closes this one),
/// or the stop flag is set; returns where the connection stands.
pub fn serve(
    mut stream: TcpStream,
    mut session: Session,
    context: &ServeContext,
) -> Result<Session, ServeError> {
    let id = session.id;
    let io_error = |source| ServeError::Io { id, source };
    stream.set_read_timeout(Some(READ_POLL)).map_err(io_error)?;
    let mut random = File::open("/dev/urandom").map_err(io_error)?;
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !context.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = stream.shutdown(Shutdown::Write);
                return Ok(session);
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(io_error(e)),
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            pending.drain(..=end);
            answer(
                &mut stream,
                &mut session,
                &mut random,
                context,
                end as u64 + 1,
            )?;
        }
        if pending.len() > MAX_REQUEST_LINE {
            return Err(ServeError::RequestTooLong(id));
        }
    }
    Ok(session)
}

/// Answers one request line of `request_len` bytes: the reply made, the checkpoint
/// reported with it, then the reply written.
fn answer(
    stream: &mut TcpStream,
    session: &mut Session,
    random: &mut File,
    context: &ServeContext,
    request_len: u64,
) -> Result<(), ServeError> {
    let id = session.id;
    let mut token = [0u8; 16];
    random
        .read_exact(&mut token)
        .map_err(|source| ServeError::Io { id, source })?;
    let time_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    session.state.replies += 1;
    let line = Reply {
        seq: session.state.replies,
        token: u128::from_le_bytes(token),
        time_micros,
    }
    .line();
    session.consumed += request_len;
    session.produced += line.len() as u64;
    if let Some(checkpointer) = &context.checkpointer {
        checkpointer.checkpoint(
            id,
            session.consumed,
            session.produced,
            session.state.encode(),
            line.as_bytes(),
        )?;
    }
    if let Some(journal) = &context.journal {
        journal.record(id, session.state.replies, &line);
    }
    stream
        .write_all(line.as_bytes())
        .map_err(|source| ServeError::Io { id, source })
}
