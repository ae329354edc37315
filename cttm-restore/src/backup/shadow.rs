//! Shadow sessions, the driver: the decisions are `cttm_core::backup::shadow`'s
//! ([`ShadowSessions`]); this module owns the standby sockets, connects them, moves the
//! client's bytes to them and their output back to the comparison, and tells the replica
//! store which client bytes were consumed.

use super::splice::{PollSet, is_would_block};
pub(crate) use cttm_core::backup::shadow::{Protection, ShadowSession};
use cttm_core::backup::shadow::{ShadowCommand, ShadowSessions};
use cttm_core::endpoint::ConnectionId;
use cttm_core::io::link::ReplicaAccess;
use cttm_core::io::link::ReplicaChange as StoreEvent;
use cttm_core::io::standby::StandbyConnector;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Read buffer for the standby's output.
pub(crate) const READ_CHUNK: usize = 256 << 10;

/// One shadow session taken at takeover: its state and its standby socket.
#[derive(Debug)]
pub(crate) struct Shadow {
    /// What the session knows (protection, client bytes, comparison).
    pub(crate) session: ShadowSession,
    /// The connection to the standby daemon; `None` when it is closed.
    pub(crate) standby: Option<TcpStream>,
}

/// Every shadow session of the backup, with its standby socket.
pub(crate) struct ShadowSet {
    /// `None`: no standby daemon (an application resumes checkpointed connections itself),
    /// so no shadow sessions.
    standby: Option<Box<dyn StandbyConnector>>,
    store: Arc<dyn ReplicaAccess>,
    sessions: ShadowSessions,
    sockets: HashMap<ConnectionId, TcpStream>,
    /// Sessions that received changes since the last pump (their sockets need service even
    /// if not ready yet).
    dirty: HashSet<ConnectionId>,
    buf: Vec<u8>,
}

impl ShadowSet {
    pub(crate) fn new(
        standby: Option<Box<dyn StandbyConnector>>,
        store: Arc<dyn ReplicaAccess>,
    ) -> ShadowSet {
        ShadowSet {
            standby,
            store,
            sessions: ShadowSessions::new(),
            sockets: HashMap::new(),
            dirty: HashSet::new(),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// Applies one change of the replica.
    pub(crate) fn on_store_event(&mut self, event: StoreEvent) {
        if self.standby.is_none() {
            return;
        }
        match event {
            StoreEvent::Event(e) => {
                self.dirty.insert(e.id);
                self.sessions.on_event(&e);
            }
            StoreEvent::Record(id) => {
                self.dirty.insert(id);
                let sessions = &mut self.sessions;
                self.store
                    .read(|r| r.record(&id).map(|rec| sessions.on_record(rec)));
            }
            StoreEvent::Forgotten(id) => self.sessions.forget(&id),
        }
        self.carry_out();
    }

    /// Carries out what the sessions decided.
    fn carry_out(&mut self) {
        while let Some(command) = self.sessions.poll_command() {
            match command {
                ShadowCommand::Connect(id) => {
                    let Some(standby) = &mut self.standby else {
                        continue;
                    };
                    match standby.connect() {
                        Ok(s) => {
                            self.sockets.insert(id, s);
                            tracing::info!(connection = %id, "connection protected by a shadow session");
                        }
                        Err(e) => {
                            if let Some(session) = self.sessions.get_mut(&id) {
                                session.unprotect(&format!(
                                    "standby daemon {} unreachable: {e}",
                                    standby.describe()
                                ));
                            }
                            self.sessions.settle(&id);
                        }
                    }
                }
                ShadowCommand::Close { id, reset } => {
                    if let Some(s) = self.sockets.remove(&id)
                        && reset
                    {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    }
                    tracing::debug!(connection = %id, reset, "shadow session ended");
                }
                ShadowCommand::Consume { id, upto } => self.store.consume_client(&id, upto),
                ShadowCommand::Lost { id, status } => {
                    tracing::warn!(connection = %id, %status, "connection no longer protected");
                    self.sockets.remove(&id);
                }
            }
        }
    }

    /// Every shadow session is unprotected (the subscription lost changes).
    pub(crate) fn unprotect_all(&mut self, reason: &str) {
        self.sessions.unprotect_all(reason);
        self.carry_out();
    }

    /// Moves bytes: waits at most `timeout` for a standby socket to be ready, then, for the
    /// sessions whose socket is ready or that received changes, writes client bytes, reads
    /// and compares standby output, and tells the store which client bytes were consumed.
    pub(crate) fn pump(&mut self, timeout: Duration) -> io::Result<()> {
        let mut polls = PollSet::default();
        let mut polled = Vec::new();
        for (id, socket) in &self.sockets {
            let write = self
                .sessions
                .get(id)
                .is_some_and(|s| !s.client_to_write().is_empty());
            polls.add(socket, true, write);
            polled.push(*id);
        }
        polls.wait(timeout)?;
        let mut serve = std::mem::take(&mut self.dirty);
        serve.extend(
            polled
                .iter()
                .enumerate()
                .filter(|(i, _)| polls.ready(*i))
                .map(|(_, id)| *id),
        );
        for id in serve {
            if let (Some(session), Some(socket)) =
                (self.sessions.get_mut(&id), self.sockets.get_mut(&id))
            {
                flush_client(session, socket);
                read_standby(session, socket, &mut self.buf);
            }
            self.sessions.settle(&id);
        }
        self.carry_out();
        Ok(())
    }

    /// Takes the shadow of a connection (at takeover).
    pub(crate) fn take(&mut self, id: &ConnectionId) -> Option<Shadow> {
        let session = self.sessions.take(id)?;
        Some(Shadow {
            session,
            standby: self.sockets.remove(id),
        })
    }

    /// The protection of a connection's shadow session, if it has one.
    pub(crate) fn protection(&self, id: &ConnectionId) -> Option<&Protection> {
        self.sessions.get(id).map(ShadowSession::status)
    }

    /// How many shadow sessions exist (protected or not).
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }
}

/// Writes pending client bytes to the standby (without waiting), and passes the client's
/// FIN on once every byte before it is written.
fn flush_client(session: &mut ShadowSession, standby: &mut TcpStream) {
    while session.is_protected() && !session.client_to_write().is_empty() {
        match standby.write(session.client_to_write()) {
            Ok(0) => break,
            Ok(n) => session.client_written(n),
            Err(e) if is_would_block(&e) => break,
            Err(e) => return session.on_standby_error("writing to", &e),
        }
    }
    if session.client_fin_due() {
        session.client_fin_passed();
        if let Err(e) = standby.shutdown(Shutdown::Write) {
            session.on_standby_error("passing the client's FIN to", &e);
        }
    }
}

/// Reads what the standby produced (without waiting) and compares it.
fn read_standby(session: &mut ShadowSession, standby: &mut TcpStream, buf: &mut [u8]) {
    while session.wants_standby_output() {
        match standby.read(buf) {
            Ok(0) => session.on_standby_eof(),
            Ok(n) => session.on_standby_output(&buf[..n]),
            Err(e) if is_would_block(&e) => return,
            Err(e) => return session.on_standby_error("reading from", &e),
        }
    }
}
