//! What the replication benchmarks share: their connections, their events and a running
//! primary/backup pair over TCP loopback.

#[path = "../../tests/support/mod.rs"]
mod support;

use cttm_core::event::{ConnectionEvent, EventKind};
use cttm_core::message::MessageV1;
use cttm_core::record::ClientRetention;
use cttm_core::{
    ConnectionId, Instant, ReplicaConfig, ReplicationMessage, ServiceEndpoint, ServiceSet,
};
use cttm_replicate::transport::tcp::{TcpBackupTransport, TcpConfig, TcpPrimaryTransport};
use cttm_replicate::{
    BackupConfig, BackupService, PrimaryConfig, PrimaryService, ReplicaStore, Security,
};
use std::sync::Arc;

/// The benchmarks' service.
const SERVICE: &str = "198.18.0.1:80";

/// Connection `n` to the service.
pub(crate) fn id(n: u16) -> ConnectionId {
    ConnectionId {
        client: std::net::SocketAddr::from(([198, 18, 0, 2], 40_000 + n)),
        server: SERVICE.parse().unwrap(),
    }
}

fn event(id: ConnectionId, kind: EventKind) -> ReplicationMessage {
    ReplicationMessage::V1(MessageV1::Event(ConnectionEvent {
        id,
        at: Instant::ZERO,
        kind,
    }))
}

/// The connection's handshake completed.
pub(crate) fn opened(id: ConnectionId) -> ReplicationMessage {
    event(id, EventKind::Opened(support::handshake(1, 2)))
}

/// Client bytes at `offset`.
pub(crate) fn client_data(id: ConnectionId, offset: u64, bytes: Vec<u8>) -> ReplicationMessage {
    event(id, EventKind::ClientData { offset, bytes })
}

/// A running primary/backup pair over TCP loopback, no connection open yet.
pub(crate) struct Pair {
    pub(crate) primary: PrimaryService,
    pub(crate) backup: BackupService,
}

/// Starts a backup on a free loopback port and a primary connected to it, both keeping up
/// to `retention_limit` client bytes of a connection (no shadow session consumes them);
/// everything else is the default configuration.
pub(crate) fn start_pair(security: Security, retention_limit: usize) -> Pair {
    let services = ServiceSet::new([ServiceEndpoint::new(SERVICE.parse().unwrap())]);
    let tcp = TcpConfig::new(security, services);
    let retention = ClientRetention::UntilConsumed {
        limit: retention_limit,
    };
    let transport =
        TcpBackupTransport::bind(tcp.clone(), "127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = transport.local_addr().expect("addr");
    let store = ReplicaStore::new(ReplicaConfig {
        client_retention: retention,
        ..ReplicaConfig::default()
    });
    let backup = BackupService::start(BackupConfig::default(), store, 1, Arc::new(transport));
    let config = PrimaryConfig {
        client_retention: retention,
        ..PrimaryConfig::default()
    };
    let primary = PrimaryService::start(config, 2, Arc::new(TcpPrimaryTransport::new(tcp, addr)));
    Pair { primary, backup }
}
