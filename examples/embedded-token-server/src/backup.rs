//! The backup side: the CTTM backup agent embedded, no standby daemon. When the primary dies
//! the agent takes the service address over and hands every checkpointed connection back,
//! restored at its last checkpoint; this side serves it from there, and accepts new
//! connections on the service address from then on.

use crate::StartError;
use crate::connection::{ReplyJournal, ServeContext, Session, connection_id};
use crate::server::{Connections, accept_loop};
use cttm_core::observe::AgentView;
use cttm_core::{ServiceEndpoint, ServiceSet};
use cttm_replicate::{BackupConfig, BackupService, PreSharedKey};
use cttm_restore::backup::{BackupAgent, BackupError, BackupExit, BackupHandle, ResumedConnection};
use cttm_restore::takeover::probe::{AddressProbe, ProbeCheck, ProbeConfig};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the backup side listens and what it protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSide {
    /// The service address and port (claimed at takeover).
    pub service: SocketAddr,
    /// The interface of the service network.
    pub interface: String,
    /// Where to listen for the primary's replication.
    pub listen: SocketAddr,
    /// The replication link's pre-shared key (the primary's).
    pub key: [u8; 32],
}

/// The backup side running.
#[derive(Debug)]
pub struct RunningBackup {
    agent: Option<BackupHandle>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
    resumed: Arc<AtomicU64>,
}

/// Starts the backup agent and the listener for new connections after a takeover (in the
/// calling thread's network namespace).
pub fn start_backup(
    side: &BackupSide,
    journal: Option<Arc<ReplyJournal>>,
) -> Result<RunningBackup, StartError> {
    let services = ServiceSet::new([ServiceEndpoint::new(side.service)]);
    let link = BackupService::listen_tcp(
        side.listen,
        PreSharedKey::new(side.key),
        services,
        BackupConfig::default(),
    )?;
    let probe = ProbeCheck::new(
        AddressProbe::open(&side.interface)?,
        ProbeConfig {
            count: 2,
            wait: Duration::from_millis(100),
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(Connections::default());
    // After the takeover this side has no backup of its own: nothing to checkpoint to.
    let context = ServeContext {
        checkpointer: None,
        journal,
        stop: Arc::clone(&stop),
    };
    let resumed = Arc::new(AtomicU64::new(0));
    let on_resume = {
        let (connections, context, resumed) = (
            Arc::clone(&connections),
            context.clone(),
            Arc::clone(&resumed),
        );
        move |connection: ResumedConnection| {
            resume(&connections, &context, connection);
            resumed.fetch_add(1, Ordering::SeqCst);
        }
    };
    let agent = BackupAgent::builder([side.service], side.interface.clone())
        .link(link)
        .probe(probe)
        .on_resume(on_resume)
        .build()?
        .spawn();
    let listener = listen_before_claim(side.service).map_err(|source| StartError::Listen {
        address: side.service,
        source,
    })?;
    let serving = Arc::clone(&connections);
    let acceptor = accept_loop(listener, context, move |stream, context| {
        if let Ok(id) = connection_id(&stream) {
            serving.serve(stream, Session::new(id), context.clone());
        }
    })
    .map_err(|source| StartError::Listen {
        address: side.service,
        source,
    })?;
    tracing::info!(service = %side.service, listen = %side.listen, "token server standing by, backup agent embedded");
    Ok(RunningBackup {
        agent: Some(agent),
        stop,
        acceptor: Some(acceptor),
        connections,
        resumed,
    })
}

/// Carries on with a connection the takeover restored at its checkpoint.
fn resume(connections: &Arc<Connections>, context: &ServeContext, connection: ResumedConnection) {
    match Session::resume(&connection.checkpoint) {
        Ok(session) => {
            tracing::info!(
                connection = %session.id,
                replies = session.state.replies,
                discarded = connection.discarded,
                "connection resumed from its checkpoint"
            );
            connections.serve(connection.stream, session, context.clone());
        }
        Err(e) => tracing::error!(connection = %connection.id(), error = %e, "cannot resume"),
    }
}

/// A listener on the service address before the address is local (`IP_FREEBIND`): it
/// receives nothing until the takeover claims the address, then new clients at once.
fn listen_before_claim(service: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(service),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if service.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.bind(&service.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl RunningBackup {
    /// What the agent shows now (`None` once stopped).
    pub fn view(&self) -> Option<AgentView> {
        self.agent.as_ref().map(BackupHandle::view)
    }

    /// Connections resumed from their checkpoints so far.
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::SeqCst)
    }

    /// Stops the agent (no connection is handed over after), then every connection.
    pub fn stop(mut self) -> Result<BackupExit, BackupError> {
        let exit = match self.agent.take() {
            Some(agent) => agent.join(),
            None => Err(BackupError::Panicked),
        };
        self.stop_serving();
        exit
    }

    fn stop_serving(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.connections.close_all();
    }
}

impl Drop for RunningBackup {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.join();
        }
        self.stop_serving();
    }
}
