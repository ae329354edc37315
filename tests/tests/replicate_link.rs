//! Replication over real TCP between two lab namespaces, across a link cut.
//!
//! A tracker on the "primary" host follows a scripted conversation (frames built with
//! `emit_frame`); its events are replicated over authenticated TCP (with `SO_MARK`) to the
//! "backup" host. The backup's switch port is then taken down (a cut) while the
//! conversation goes on, and brought back: the primary reconnects, the backup says what it
//! holds, the primary sends what is missing, and the backup's snapshots converge to the
//! tracker's, byte for byte.

use cttm_core::record::ClientRetention;
use cttm_core::wire::{LinkType, SegmentRepr, TcpFlags, TcpOptions, TcpTimestamps, emit_frame};
use cttm_core::{
    ConnectionEvent, Instant, MessageV1, ReplicaConfig, ReplicationMessage, SeqNumber,
    ServiceEndpoint, ServiceSet, Tracker, TrackerConfig,
};
use cttm_replicate::transport::tcp::{TcpBackupTransport, TcpConfig, TcpPrimaryTransport};
use cttm_replicate::{
    BackupConfig, BackupService, PreSharedKey, PrimaryConfig, PrimaryReport, PrimaryService,
    ReplicaStore, Security,
};
use cttm_tests::lab::{Lab, kernel_tests_enabled};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const CLIENT: &str = "198.18.0.100:40000";
const SERVICE: &str = "198.18.0.1:80";
const BACKUP_LISTEN: &str = "198.18.0.2:7400";
/// A mark a capture helper would exempt from NFQUEUE.
const REPLICATION_MARK: u32 = 0x7e57;

/// A scripted conversation seen at the server: handshake, then rounds of client data, server
/// acknowledgement, server data and client acknowledgement. The client's ISN sits just
/// below 2^32 so sequence numbers wrap during the test.
struct Conversation {
    client: SocketAddr,
    server: SocketAddr,
    client_next: SeqNumber,
    server_next: SeqNumber,
    clock_ms: u64,
    tsval: u32,
}

impl Conversation {
    fn new() -> Conversation {
        Conversation {
            client: CLIENT.parse().unwrap(),
            server: SERVICE.parse().unwrap(),
            client_next: SeqNumber(0xffff_f000),
            server_next: SeqNumber(5000),
            clock_ms: 1,
            tsval: 1000,
        }
    }

    fn frame(
        &mut self,
        from_client: bool,
        flags: TcpFlags,
        payload: &[u8],
        options: TcpOptions,
    ) -> (Instant, Vec<u8>) {
        self.clock_ms += 1;
        self.tsval += 1;
        let (src, dst, seq, ack) = if from_client {
            (self.client, self.server, self.client_next, self.server_next)
        } else {
            (self.server, self.client, self.server_next, self.client_next)
        };
        let segment = SegmentRepr {
            src,
            dst,
            seq,
            ack,
            flags,
            window: 500,
            options,
            payload,
        };
        let frame = emit_frame(LinkType::Ethernet, &segment).expect("emit");
        let advance = payload.len() as u32 + u32::from(flags.syn()) + u32::from(flags.fin());
        if from_client {
            self.client_next = self.client_next.add(advance);
        } else {
            self.server_next = self.server_next.add(advance);
        }
        (Instant::from_millis(self.clock_ms), frame)
    }

    fn ts(&self) -> TcpOptions {
        TcpOptions {
            timestamps: Some(TcpTimestamps {
                tsval: self.tsval,
                tsecr: self.tsval - 1,
            }),
            ..TcpOptions::default()
        }
    }

    fn handshake(&mut self) -> Vec<(Instant, Vec<u8>)> {
        let syn_options = |ts: TcpOptions| TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            ..ts
        };
        let syn = syn_options(self.ts());
        let a = self.frame(true, TcpFlags::SYN, &[], syn);
        let synack = syn_options(self.ts());
        let b = self.frame(false, TcpFlags::SYN.with(TcpFlags::ACK), &[], synack);
        let opts = self.ts();
        let c = self.frame(true, TcpFlags::ACK, &[], opts);
        vec![a, b, c]
    }

    fn round(&mut self, i: usize) -> Vec<(Instant, Vec<u8>)> {
        let request: Vec<u8> = (0..200 + (i * 131) % 2500)
            .map(|j| (i * 7 + j) as u8)
            .collect();
        let response: Vec<u8> = (0..100 + (i * 71) % 4000)
            .map(|j| (i * 3 + j * 5) as u8)
            .collect();
        let psh_ack = TcpFlags::PSH.with(TcpFlags::ACK);
        let o1 = self.ts();
        let a = self.frame(true, psh_ack, &request, o1);
        let o2 = self.ts();
        let b = self.frame(false, TcpFlags::ACK, &[], o2);
        let o3 = self.ts();
        let c = self.frame(false, psh_ack, &response, o3);
        let o4 = self.ts();
        let d = self.frame(true, TcpFlags::ACK, &[], o4);
        vec![a, b, c, d]
    }
}

fn track(tracker: &mut Tracker, frames: Vec<(Instant, Vec<u8>)>) -> Vec<ReplicationMessage> {
    let mut events: Vec<ConnectionEvent> = Vec::new();
    for (at, frame) in frames {
        tracker
            .on_frame(at, LinkType::Ethernet, &frame, &mut events)
            .expect("scripted frame parses");
    }
    events
        .into_iter()
        .map(|e| ReplicationMessage::V1(MessageV1::Event(e)))
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replication_survives_a_link_cut_and_converges_byte_for_byte() {
    if !kernel_tests_enabled("replicate_link") {
        return;
    }
    let mut lab = Lab::new("repl").expect("lab");
    let primary_host = lab.add_host("p", &["198.18.0.1/24"]).expect("primary host");
    let backup_host = lab.add_host("b", &["198.18.0.2/24"]).expect("backup host");

    let services = ServiceSet::new([ServiceEndpoint::new(SERVICE.parse().unwrap())]);
    let mut tcp = TcpConfig::new(
        Security::Noise(PreSharedKey::new(*b"cttm replicate lab test key 0001")),
        services.clone(),
    );
    tcp.mark = Some(REPLICATION_MARK);
    tcp.connect_timeout = Duration::from_millis(300);
    tcp.backoff_initial = Duration::from_millis(20);
    tcp.backoff_max = Duration::from_millis(200);
    let primary_config = PrimaryConfig {
        heartbeat_interval: Duration::from_millis(50),
        failure_misses: 6,
        retransmit_timeout: Duration::from_millis(500),
        ..PrimaryConfig::default()
    };
    let backup_config = BackupConfig {
        heartbeat_interval: Duration::from_millis(50),
        failure_misses: 6,
        ..BackupConfig::default()
    };

    // The backup listens inside its namespace; the primary's threads (and every socket they
    // open when reconnecting) live in the primary's namespace.
    let listener = {
        let tcp = tcp.clone();
        backup_host
            .run(move || TcpBackupTransport::bind(tcp, BACKUP_LISTEN.parse().unwrap()))
            .expect("in backup ns")
    }
    .expect("bind backup");
    let backup = BackupService::start(
        backup_config,
        ReplicaStore::new(ReplicaConfig::default()),
        0xB,
        Arc::new(listener),
    );
    let primary = {
        let tcp = tcp.clone();
        primary_host
            .run(move || {
                let transport = TcpPrimaryTransport::new(tcp, BACKUP_LISTEN.parse().unwrap());
                PrimaryService::start(
                    primary_config,
                    cttm_replicate::random_epoch(),
                    Arc::new(transport),
                )
            })
            .expect("in primary ns")
    };

    // The tracker keeps client bytes like the replica does, so snapshots compare whole.
    let mut tracker_config = TrackerConfig::new(services);
    tracker_config.client_retention = ReplicaConfig::default().client_retention;
    assert!(matches!(
        tracker_config.client_retention,
        ClientRetention::UntilConsumed { .. }
    ));
    let mut tracker = Tracker::new(tracker_config);
    let mut talk = Conversation::new();

    // Phase 1: the link is up.
    let mut frames = talk.handshake();
    for i in 0..10 {
        frames.extend(talk.round(i));
    }
    let events = track(&mut tracker, frames);
    assert!(events.len() > 20);
    primary.submit_all(events).expect("consistent events");
    wait_for("phase 1 acknowledged", Duration::from_secs(20), || {
        primary.wait_synchronised(Duration::from_millis(100))
    });
    assert_eq!(
        backup.store().snapshots(),
        tracker.snapshots(),
        "phase 1 snapshots"
    );
    // Both ends' replication sockets carry the mark (ss shows it as fwmark).
    for host in [&primary_host, &backup_host] {
        let sockets = host
            .exec("ss", &["-tnHe", "state", "established"])
            .expect("ss");
        assert!(
            sockets.contains(&format!("fwmark:{REPLICATION_MARK:#x}")),
            "replication socket without SO_MARK in {}: {sockets}",
            host.name()
        );
    }

    // Phase 2: the backup's port is down; the conversation goes on (sequence numbers wrap).
    lab.cut(&backup_host).expect("cut");
    let mut frames = Vec::new();
    for i in 10..40 {
        frames.extend(talk.round(i));
    }
    let events = track(&mut tracker, frames);
    primary.submit_all(events).expect("consistent events");
    wait_for(
        "the primary to notice the cut",
        Duration::from_secs(20),
        || !primary.link_up(),
    );
    assert_ne!(
        backup.store().snapshots(),
        tracker.snapshots(),
        "nothing can cross a cut link"
    );
    let unacked = primary.with_primary(|p| p.last_seq() - p.acked_seq());
    assert!(unacked > 0, "phase 2 is retained, unacknowledged");
    primary.take_reports();

    // Phase 3: the port comes back; reconnect, resynchronise, converge.
    lab.reconnect(&backup_host).expect("reconnect");
    wait_for("the backup to converge", Duration::from_secs(30), || {
        backup.store().snapshots() == tracker.snapshots()
    });
    wait_for("everything acknowledged", Duration::from_secs(20), || {
        primary.wait_synchronised(Duration::from_millis(100))
    });
    let snapshots = backup.store().snapshots();
    assert_eq!(snapshots, tracker.snapshots());
    assert_eq!(snapshots.len(), 1);
    assert!(snapshots[0].is_restorable());
    assert!(
        !snapshots[0].receive.bytes.is_empty(),
        "client bytes are held for the shadow session"
    );
    assert!(
        primary
            .take_reports()
            .iter()
            .any(|r| matches!(r, PrimaryReport::Resynchronised { .. })),
        "the reconnection was resynchronised"
    );
    // Output commit knows the backup holds every byte the tracker saw.
    let record = tracker.record(&snapshots[0].id).expect("tracked");
    let acked = primary
        .acknowledged(&snapshots[0].id)
        .expect("acknowledged");
    assert_eq!(
        acked.client,
        record.stream(cttm_core::Side::Client).received_end()
    );
    assert_eq!(
        acked.server,
        record.stream(cttm_core::Side::Server).received_end()
    );
    let (client_from, client_bytes) = backup.store().client_bytes(&snapshots[0].id).expect("held");
    assert_eq!(client_from, 0);
    assert_eq!(client_bytes.len() as u64, acked.client);
    drop(primary);
    drop(backup);
}
