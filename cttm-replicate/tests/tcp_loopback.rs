//! The threaded services over real TCP on loopback: authenticated replication converges,
//! a backup restart is resynchronised, a primary without the key is refused.

mod support;

use cttm_core::event::{ConnectionEvent, EventKind, Handshake};
use cttm_core::message::MessageV1;
use cttm_core::time::Instant;
use cttm_core::{
    ConnectionId, Replica, ReplicaConfig, ReplicationMessage, ServiceEndpoint, ServiceSet,
};
use cttm_replicate::noise::SecurityError;
use cttm_replicate::transport::tcp::{TcpBackupTransport, TcpConfig, TcpPrimaryTransport};
use cttm_replicate::{
    BackupConfig, BackupService, PreSharedKey, PrimaryConfig, PrimaryService, ReplicaStore,
    Security, TransportError,
};
use std::sync::Arc;
use std::time::Duration;

fn services() -> ServiceSet {
    ServiceSet::new([ServiceEndpoint::new("198.18.0.1:80".parse().unwrap())])
}

fn config(key: u8) -> TcpConfig {
    let mut c = TcpConfig::new(Security::Noise(PreSharedKey::new([key; 32])), services());
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c
}

fn fast_primary() -> PrimaryConfig {
    PrimaryConfig {
        heartbeat_interval: Duration::from_millis(20),
        failure_misses: 25,
        retransmit_timeout: Duration::from_millis(200),
        ..PrimaryConfig::default()
    }
}

fn fast_backup() -> BackupConfig {
    BackupConfig {
        heartbeat_interval: Duration::from_millis(20),
        failure_misses: 25,
        resync_retry: Duration::from_millis(200),
        ..BackupConfig::default()
    }
}

fn events(conn: u8, chunks: usize) -> Vec<ReplicationMessage> {
    let id = ConnectionId {
        client: std::net::SocketAddr::from(([198, 18, 0, 2], 50_000 + u16::from(conn))),
        server: "198.18.0.1:80".parse().unwrap(),
    };
    let h = Handshake {
        server_mss: Some(1400),
        server_window_scale: Some(9),
        ..support::handshake(7 + u32::from(conn), 0xffff_fff0)
    };
    let ev = |kind| {
        ReplicationMessage::V1(MessageV1::Event(ConnectionEvent {
            id,
            at: Instant::from_millis(1),
            kind,
        }))
    };
    let mut v = vec![ev(EventKind::Opened(h))];
    let mut client = 0u64;
    let mut server = 0u64;
    for i in 0..chunks {
        let len = 1000 + (i * 37) % 5000;
        v.push(ev(EventKind::ClientData {
            offset: client,
            bytes: (0..len).map(|j| (j + i) as u8).collect(),
        }));
        client += len as u64;
        v.push(ev(EventKind::ServerAck {
            offset: client,
            window: 65_000,
            timestamps: None,
        }));
        v.push(ev(EventKind::ServerData {
            offset: server,
            bytes: vec![i as u8; 300],
        }));
        server += 300;
        v.push(ev(EventKind::ClientAck {
            offset: server - 100,
            seq_offset: client,
            window: 30_000,
            timestamps: None,
        }));
    }
    v
}

fn reference(messages: &[ReplicationMessage]) -> Replica {
    let mut r = Replica::new(ReplicaConfig::default());
    for m in messages {
        r.apply_message(m).unwrap();
    }
    r
}

fn start_backup(addr: std::net::SocketAddr, key: u8) -> BackupService {
    let transport = TcpBackupTransport::bind(config(key), addr).unwrap();
    BackupService::start(
        fast_backup(),
        ReplicaStore::new(ReplicaConfig::default()),
        cttm_replicate::random_epoch(),
        Arc::new(transport),
    )
}

/// A backup listening on a free loopback port with `backup_tcp`, and a primary connecting
/// to it with the key `primary_key`; returns them and the backup's address.
fn start_pair(
    backup_tcp: TcpConfig,
    primary_key: u8,
) -> (BackupService, PrimaryService, std::net::SocketAddr) {
    let transport = TcpBackupTransport::bind(backup_tcp, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = transport.local_addr().unwrap();
    let backup = BackupService::start(
        fast_backup(),
        ReplicaStore::new(ReplicaConfig::default()),
        1,
        Arc::new(transport),
    );
    let primary = PrimaryService::start(
        fast_primary(),
        42,
        Arc::new(TcpPrimaryTransport::new(config(primary_key), addr)),
    );
    (backup, primary, addr)
}

#[test]
fn replication_over_authenticated_tcp_converges_and_survives_a_backup_restart() {
    let (backup, primary, addr) = start_pair(config(9), 9);
    let mut all = events(1, 200);
    all.extend(events(2, 50));
    let (first, second) = all.split_at(300);
    primary.submit_all(first.iter().cloned()).unwrap();
    assert!(
        primary.wait_synchronised(Duration::from_secs(20)),
        "first half acknowledged"
    );
    assert!(
        backup.store().snapshots() == reference(first).snapshots(),
        "first half differs"
    );

    // The backup restarts empty on the same port: the primary reconnects and resends
    // everything it tracks.
    drop(backup);
    let backup = start_backup(addr, 9);
    primary.submit_all(second.iter().cloned()).unwrap();
    let expected = reference(&all).snapshots();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while backup.store().snapshots() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        backup.store().snapshots() == expected,
        "backup did not converge: holds {:?}, primary acked {} of {}, backup errors {:?}, backup reports {:?}, primary reports {:?}",
        backup.store().holdings(),
        primary.acked_seq(),
        primary.with_primary(|p| p.last_seq()),
        backup
            .take_errors()
            .0
            .iter()
            .take(3)
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        backup.take_reports().iter().take(5).collect::<Vec<_>>(),
        primary.take_reports().iter().take(5).collect::<Vec<_>>()
    );
    assert!(primary.wait_synchronised(Duration::from_secs(20)));
    let id = expected[0].id;
    let acked = primary.acknowledged(&id).expect("acknowledged offsets");
    let held = backup
        .store()
        .holdings()
        .into_iter()
        .find(|h| h.id == id)
        .unwrap();
    assert_eq!(
        (acked.client, acked.server),
        (held.client_end, held.server_end)
    );
    assert!(primary.link_up() && backup.link_up());
    // Heartbeats flow both ways: each failure detector sees its peer alive (waited for,
    // since a loaded machine may delay a heartbeat).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(primary.backup_alive() && backup.primary_alive())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        primary.backup_alive(),
        "primary's failure detector: {:?}",
        primary.take_errors()
    );
    assert!(
        backup.primary_alive(),
        "backup's failure detector: {:?}",
        backup.take_errors()
    );
    // The backup stops: the primary's failure detector notices.
    drop(backup);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while primary.backup_alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!primary.backup_alive());
}

#[test]
fn a_primary_without_the_key_is_refused_and_nothing_is_applied() {
    let (backup, primary, _) = start_pair(config(1), 2);
    primary.submit_all(events(1, 5)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut backup_errors = Vec::new();
    while backup_errors.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        backup_errors.extend(backup.take_errors().0);
    }
    assert!(
        backup_errors.iter().any(|e| matches!(
            e,
            TransportError::Security(SecurityError::HandshakeFailed(_))
        )),
        "{backup_errors:?}"
    );
    assert!(backup.store().is_empty());
    assert_eq!(primary.acked_seq(), 0);
    assert!(!primary.link_up());
}

#[test]
fn a_stalled_connection_attempt_does_not_hold_up_the_established_link() {
    let mut slow_handshakes = config(3);
    slow_handshakes.handshake_timeout = Duration::from_secs(60);
    let (backup, primary, addr) = start_pair(slow_handshakes, 3);
    let all = events(1, 40);
    let (first, second) = all.split_at(60);
    primary.submit_all(first.iter().cloned()).unwrap();
    assert!(primary.wait_synchronised(Duration::from_secs(20)));
    // Someone connects and says nothing: its handshake can only time out after 60 s.
    let _staller = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    primary.submit_all(second.iter().cloned()).unwrap();
    assert!(
        primary.wait_synchronised(Duration::from_secs(20)),
        "replication went on meanwhile"
    );
    assert!(backup.store().snapshots() == reference(&all).snapshots());
}
