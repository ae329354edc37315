//! The primary side: the token server on the service address, with the CTTM primary agent
//! embedded (sync mode: no reply leaves before the backup holds its checkpoint).

use crate::StartError;
use crate::connection::{ReplyJournal, ServeContext, Session, connection_id};
use crate::server::{Connections, accept_loop};
use cttm_capture::primary::{PrimaryAgent, PrimaryError, PrimaryExit, PrimaryHandle};
use cttm_core::io::link::PrimaryLink;
use cttm_core::io::probe::NeighbourProbe;
use cttm_core::{ServiceEndpoint, ServiceSet};
use cttm_replicate::{PreSharedKey, PrimaryConfig, PrimaryService};
use cttm_restore::takeover::NetlinkTakeover;
use cttm_restore::takeover::probe::{AddressProbe, ProbeCheck, ProbeConfig};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the primary side serves and replicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimarySide {
    /// The service address and port (local on this host).
    pub service: SocketAddr,
    /// The interface of the service network.
    pub interface: String,
    /// Where the backup side listens for replication.
    pub backup: SocketAddr,
    /// The replication link's pre-shared key (the backup's).
    pub key: [u8; 32],
}

/// The primary side running: the agent, the listener and the connections.
#[derive(Debug)]
pub struct RunningPrimary {
    agent: Option<PrimaryHandle>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

/// Starts the primary agent, then serves the service address (in the calling thread's
/// network namespace). Every connection checkpoints right after it is accepted and before
/// each reply.
pub fn start_primary(
    side: &PrimarySide,
    journal: Option<Arc<ReplyJournal>>,
) -> Result<RunningPrimary, StartError> {
    let services = ServiceSet::new([ServiceEndpoint::new(side.service)]);
    let (backup, key) = (side.backup, side.key);
    let link = move |mark| {
        Box::new(PrimaryService::connect_tcp(
            backup,
            PreSharedKey::new(key),
            services.clone(),
            PrimaryConfig::default(),
            Some(mark),
        )) as Box<dyn PrimaryLink>
    };
    let interface = side.interface.clone();
    let probe = move || {
        AddressProbe::open(&interface)
            .map(|p| Box::new(ProbeCheck::new(p, probe_config())) as Box<dyn NeighbourProbe + Send>)
            .map_err(|e| e.to_string())
    };
    let agent = PrimaryAgent::builder([side.service], side.interface.clone())
        .link(link)
        .probe(probe)
        .address_takeover(NetlinkTakeover::open(&side.interface)?)
        .build()?;
    let checkpointer = agent.checkpointer();
    let agent = agent.spawn();
    let listener = TcpListener::bind(side.service).map_err(|source| StartError::Listen {
        address: side.service,
        source,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(Connections::default());
    let context = ServeContext {
        checkpointer: Some(checkpointer),
        journal,
        stop: Arc::clone(&stop),
    };
    let serving = Arc::clone(&connections);
    let acceptor = accept_loop(listener, context, move |stream, context| {
        let Ok(id) = connection_id(&stream) else {
            return;
        };
        // The first checkpoint: the connection is checkpointed from its first byte on, so
        // output commit holds its first reply for the backup too.
        let session = Session::new(id);
        if let Some(c) = &context.checkpointer
            && let Err(e) = c.checkpoint(id, 0, 0, session.state.encode(), b"")
        {
            tracing::error!(connection = %id, error = %e, "first checkpoint refused");
            return;
        }
        serving.serve(stream, session, context.clone());
    })
    .map_err(|source| StartError::Listen {
        address: side.service,
        source,
    })?;
    tracing::info!(service = %side.service, backup = %side.backup, "token server serving, primary agent embedded");
    Ok(RunningPrimary {
        agent: Some(agent),
        stop,
        acceptor: Some(acceptor),
        connections,
    })
}

/// Probing the service address before serving it: is another host (a backup that took
/// over) holding it?
fn probe_config() -> ProbeConfig {
    ProbeConfig {
        count: 2,
        wait: Duration::from_millis(100),
    }
}

impl RunningPrimary {
    /// The replication link to the backup is up.
    pub fn link_up(&self) -> bool {
        self.agent
            .as_ref()
            .and_then(PrimaryHandle::status)
            .is_some_and(|s| s.link_up)
    }

    /// The agent, while it runs.
    pub fn agent(&self) -> Option<&PrimaryHandle> {
        self.agent.as_ref()
    }

    /// Stops: the agent first (its queue rules go, what it holds is settled), then every
    /// connection is closed.
    pub fn stop(mut self) -> Result<PrimaryExit, PrimaryError> {
        let exit = match self.agent.take() {
            Some(agent) => agent.join(),
            None => Err(PrimaryError::Panicked),
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

impl Drop for RunningPrimary {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            let _ = agent.join();
        }
        self.stop_serving();
    }
}
