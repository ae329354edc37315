//! The primary agent (`cttmd::primary::run_primary`) against real kernel TCP in a namespace
//! lab: a server namespace runs a plain TCP echo server and the agent, a backup namespace
//! runs a `BackupService` with a `ReplicaStore`, a client namespace streams patterned data
//! to the echo server and reads it back.
//!
//! - Sync mode (output commit): after every read, the client's own view of its connection
//!   (`TCP_INFO`: server bytes received, client bytes acknowledged by the server, each FIN
//!   counted as one offset) never exceeds what the backup's replica holds: in particular the
//!   client never reads the end of the stream (the server's FIN), nor has its own FIN
//!   acknowledged, before the backup holds that FIN; the server bytes the replica still retains are
//!   the bytes really sent; the transfer completes (no deadlock); at the end the replica
//!   holds every client byte and both streams' exact lengths and FINs; the rules are gone.
//! - Sync mode with the backup cut off mid-conversation: the server keeps reading, but
//!   nothing it sends reaches the client until the backup is back; then the held segments
//!   leave and the conversation completes with the same guarantees.
//! - Async mode: the transfer completes, the agent's view of what the backup holds is never
//!   ahead of the replica, and its bytes-at-risk figure falls to zero once the backup holds
//!   everything.

use cttm_core::event::Side;
use cttm_core::{ConnectionId, ReplicaConfig, ServiceEndpoint, ServiceSet};
use cttm_replicate::transport::tcp::{TcpBackupTransport, TcpConfig};
use cttm_replicate::{BackupConfig, BackupService, PreSharedKey, ReplicaStore, Security};
use cttm_restore::repair::socket_tcp_info;
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use cttmd::options::{
    CommitMode, DEFAULT_DEGRADE_AFTER, HeartbeatOptions, ObserveOptions, PrimaryOptions,
    ProbeOptions,
};
use cttmd::primary::{PrimaryExit, PrimaryMonitor, run_primary_monitored};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SERVICE: &str = "198.18.0.1:7100";
const BACKUP_LISTEN: &str = "198.18.0.2:7400";
const KEY: [u8; 32] = *b"cttm failover primary test key 1";
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes the client sends (and gets echoed back).
const TRANSFER: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(29)
                .wrapping_add(seed)
                .wrapping_add((i / 509) as u8)
        })
        .collect()
}

fn heartbeat() -> HeartbeatOptions {
    HeartbeatOptions {
        interval: Duration::from_millis(50),
        misses: 10,
    }
}

fn services() -> ServiceSet {
    ServiceSet::new([ServiceEndpoint::new(SERVICE.parse().unwrap())])
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The three hosts, the backup's replication, the echo server and the running agent.
struct Rig {
    lab: Lab,
    server: Netns,
    backup_host: Netns,
    client: Netns,
    backup: BackupService,
    store: ReplicaStore,
    monitor: PrimaryMonitor,
    stop: Arc<AtomicBool>,
    primary: Option<JoinHandle<Result<PrimaryExit, cttmd::primary::PrimaryError>>>,
    echo: Option<JoinHandle<u64>>,
}

impl Rig {
    fn start(tag: &str, mode: CommitMode, queue: u16) -> Rig {
        Rig::start_degrading_after(tag, mode, queue, DEFAULT_DEGRADE_AFTER)
    }

    /// [`Rig::start`] with the agent's `degrade_after` (sync mode stops holding once the
    /// backup has been unreachable that long).
    fn start_degrading_after(
        tag: &str,
        mode: CommitMode,
        queue: u16,
        degrade_after: Duration,
    ) -> Rig {
        let mut lab = Lab::new(tag).expect("lab");
        let server = lab.add_host("s", &["198.18.0.1/24"]).expect("server host");
        let backup_host = lab.add_host("b", &["198.18.0.2/24"]).expect("backup host");
        let client = lab.add_host("c", &["198.18.0.3/24"]).expect("client host");

        let tcp = TcpConfig::new(Security::Noise(PreSharedKey::new(KEY)), services());
        let listener = backup_host
            .run(move || TcpBackupTransport::bind(tcp, BACKUP_LISTEN.parse().unwrap()))
            .expect("in backup ns")
            .expect("bind backup");
        let store = ReplicaStore::new(ReplicaConfig::default());
        let backup = BackupService::start(
            BackupConfig {
                heartbeat_interval: heartbeat().interval,
                failure_misses: heartbeat().misses,
                ..BackupConfig::default()
            },
            store.clone(),
            cttm_replicate::random_epoch(),
            Arc::new(listener),
        );

        let listener = server
            .run(|| TcpListener::bind(SERVICE).expect("bind service"))
            .expect("in server ns");
        let echo = std::thread::spawn(move || echo_one(&listener));

        let options = PrimaryOptions {
            services: vec![SERVICE.parse().unwrap()],
            interface: "eth0".into(),
            backup: BACKUP_LISTEN.parse().unwrap(),
            key: KEY,
            mode,
            heartbeat: heartbeat(),
            retention_limit: 64 << 20,
            queue,
            degrade_after,
            probe: ProbeOptions::DEFAULT,
            observe: ObserveOptions::default(),
            capture_file: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let monitor = PrimaryMonitor::new();
        let primary = {
            let (stop, monitor) = (stop.clone(), monitor.clone());
            server
                .spawn(move || run_primary_monitored(options, stop, monitor))
                .expect("spawn primary")
        };
        let mut rig = Rig {
            lab,
            server,
            backup_host,
            client,
            backup,
            store,
            monitor,
            stop,
            primary: Some(primary),
            echo: Some(echo),
        };
        // The agent is running (capture and rules in place) and the link is up before any
        // connection starts, so the handshake is seen and the connection protected.
        wait_for(
            "the primary agent and its replication link",
            Duration::from_secs(20),
            || {
                if rig.primary.as_ref().is_some_and(JoinHandle::is_finished) {
                    let result = rig.primary.take().map(JoinHandle::join);
                    panic!("primary agent stopped early: {result:?}");
                }
                rig.monitor.status().is_some_and(|s| s.link_up) && rig.backup.link_up()
            },
        );
        rig
    }

    fn stop_primary(&mut self) -> PrimaryExit {
        self.stop.store(true, Ordering::SeqCst);
        self.primary
            .take()
            .expect("running")
            .join()
            .expect("primary thread")
            .expect("primary agent ran without error")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.primary.take() {
            let _ = p.join();
        }
        // The echo thread ends on its own (timeouts), joining it would only delay a failure.
        drop(self.echo.take());
    }
}

/// Accepts one connection and echoes it until the client closes; returns the bytes echoed.
fn echo_one(listener: &TcpListener) -> u64 {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return 0,
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut buf = vec![0u8; 64 << 10];
    let mut echoed = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    break;
                }
                echoed += n as u64;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    echoed
}

/// What the replica holds of a connection: (client bytes end, server bytes end).
fn replica_ends(store: &ReplicaStore, id: &ConnectionId) -> Option<(u64, u64)> {
    store.with_replica(|r| {
        r.record(id).map(|rec| {
            (
                rec.stream(Side::Client).received_end(),
                rec.stream(Side::Server).received_end(),
            )
        })
    })
}

/// What the replica holds of a connection in sequence space: (client end, server end), each
/// one past the stream's bytes plus one once its FIN is held.
fn replica_sequence_ends(store: &ReplicaStore, id: &ConnectionId) -> Option<(u64, u64)> {
    store.with_replica(|r| {
        r.record(id).map(|rec| {
            (
                rec.stream(Side::Client).sequence_end(),
                rec.stream(Side::Server).sequence_end(),
            )
        })
    })
}

/// Linux TCP states (include/net/tcp_states.h) in which this end's FIN was acknowledged.
const OWN_FIN_ACKED: [u8; 3] = [
    5, /* FIN_WAIT2 */
    6, /* TIME_WAIT */
    7, /* CLOSE */
];

/// Streams `TRANSFER` patterned bytes to the echo server and reads them back, calling
/// `after_read(socket, id, SYN count in tcpi_bytes_acked, bytes read, end of stream)` after
/// every read, the one that returned the end of the stream (the server's FIN) included.
/// Returns the connection identity and the bytes read back.
fn stream_through(
    client: &Netns,
    mut after_read: impl FnMut(&TcpStream, &ConnectionId, u64, u64, bool),
) -> (ConnectionId, Vec<u8>) {
    let stream = client
        .run(|| TcpStream::connect_timeout(&SERVICE.parse().unwrap(), IO_TIMEOUT))
        .expect("in client ns")
        .expect("connect to the service");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let id = ConnectionId {
        client: stream.local_addr().expect("local addr"),
        server: SERVICE.parse().unwrap(),
    };
    // On an active open Linux counts the acknowledged SYN in tcpi_bytes_acked: before any
    // data is sent, the figure is that count.
    let syn_acked = socket_tcp_info(&stream).expect("TCP_INFO").bytes_acked;
    assert!(syn_acked <= 1);
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let data = pattern(TRANSFER, 7);
        for chunk in data.chunks(16 << 10) {
            writer.write_all(chunk)?;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut received = Vec::with_capacity(TRANSFER);
    let mut buf = vec![0u8; 32 << 10];
    let deadline = Instant::now() + IO_TIMEOUT * 2;
    loop {
        assert!(Instant::now() < deadline, "transfer did not finish");
        let n = reader.read(&mut buf).expect("read the echo");
        received.extend_from_slice(&buf[..n]);
        after_read(&reader, &id, syn_acked, received.len() as u64, n == 0);
        if n == 0 {
            break;
        }
    }
    sender
        .join()
        .expect("sender thread")
        .expect("client sent everything");
    (id, received)
}

#[test]
fn sync_mode_never_lets_the_client_see_what_the_backup_does_not_hold() {
    if !kernel_tests_enabled("sync_mode_never_lets_the_client_see_what_the_backup_does_not_hold") {
        return;
    }
    let mut rig = Rig::start("fps", CommitMode::Sync, 21);
    let expected = pattern(TRANSFER, 7);
    let store = rig.store.clone();
    let mut moments = 0usize;
    let mut eofs = 0usize;
    let (id, received) = stream_through(&rig.client, |socket, id, syn, _, eof| {
        // The sender writes concurrently: at most everything is sent.
        check_sync_moment(socket, &store, id, syn, eof, &expected);
        moments += 1;
        eofs += usize::from(eof);
    });
    assert_eq!(received.len(), TRANSFER, "every byte echoed");
    assert!(received == expected, "echoed bytes differ from those sent");
    assert!(moments > 0);
    assert_eq!(eofs, 1, "the end of the stream was checked");

    // The close reaches the replica too; then its record is the whole conversation.
    wait_for(
        "the replica to see the close",
        Duration::from_secs(20),
        || {
            rig.store
                .with_replica(|r| r.record(&id).is_some_and(|rec| rec.closed().is_some()))
        },
    );
    let (client_end, server_end, client_fin, server_fin) = rig
        .store
        .with_replica(|r| {
            r.record(&id).map(|rec| {
                (
                    rec.stream(Side::Client).received_end(),
                    rec.stream(Side::Server).received_end(),
                    rec.stream(Side::Client).fin(),
                    rec.stream(Side::Server).fin(),
                )
            })
        })
        .expect("record");
    assert_eq!(client_end, TRANSFER as u64);
    assert_eq!(server_end, TRANSFER as u64);
    assert_eq!(client_fin, Some(TRANSFER as u64));
    assert_eq!(server_fin, Some(TRANSFER as u64));
    let (from, client_bytes) = rig.store.client_bytes(&id).expect("client bytes");
    assert_eq!(from, 0, "no shadow consumed client bytes");
    assert!(
        client_bytes == expected,
        "the replica's client bytes differ"
    );
    let snapshots = rig.store.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].id, id);
    assert_eq!(
        snapshots[0].receive.bytes.len(),
        TRANSFER,
        "the snapshot's receive queue holds every client byte"
    );

    // The agent agrees: the backup holds everything, nothing is held or at risk.
    wait_for(
        "the agent's status to settle",
        Duration::from_secs(20),
        || {
            rig.monitor.status().is_some_and(|s| {
                s.held_packets == 0
                    && s.connection(&id).is_some_and(|c| {
                        c.closed && c.at_risk() == 0 && c.server_sent == TRANSFER as u64
                    })
            })
        },
    );

    let exit = rig.stop_primary();
    assert_eq!(exit.mode, CommitMode::Sync);
    assert_eq!(exit.connections, 1);
    assert!(exit.segments > 0);
    assert!(exit.held > 0, "outgoing segments were held");
    assert_eq!(
        exit.released + exit.released_unprotected,
        exit.held,
        "every held packet left"
    );
    assert!(
        exit.released > 0,
        "held packets left because the backup acknowledged them"
    );
    let rules = rig.server.exec("iptables", &["-S"]).expect("iptables -S");
    assert!(!rules.contains("CTTM-Q21"), "rules left behind: {rules}");
    assert_eq!(
        rig.echo.take().map(|e| e.join().expect("echo")),
        Some(TRANSFER as u64)
    );
}

/// The agent's status first, the replica after: what the agent believes the backup holds
/// was acknowledged by the backup, so the replica holds at least that; and the bytes at risk
/// are exactly what was sent or acknowledged beyond it.
fn check_at_risk(
    monitor: &PrimaryMonitor,
    store: &ReplicaStore,
    id: &ConnectionId,
    checked: &mut usize,
) {
    let Some(status) = monitor.status() else {
        return;
    };
    let Some(conn) = status.connection(id) else {
        return;
    };
    let replica = replica_sequence_ends(store, id);
    if let Some(backup) = conn.backup {
        let (client_end, server_end) = replica.expect("the backup acknowledged it");
        assert!(
            backup.client <= client_end && backup.server <= server_end,
            "the agent believes the backup holds {backup:?}, the replica holds {client_end}/{server_end}"
        );
        assert_eq!(
            conn.server_at_risk,
            conn.server_sent.saturating_sub(backup.server)
        );
        assert_eq!(
            conn.client_at_risk,
            conn.client_acked.saturating_sub(backup.client)
        );
    } else {
        assert_eq!(conn.at_risk(), conn.client_acked + conn.server_sent);
    }
    *checked += 1;
}

#[test]
fn async_mode_reports_bytes_at_risk_consistent_with_the_replica() {
    if !kernel_tests_enabled("async_mode_reports_bytes_at_risk_consistent_with_the_replica") {
        return;
    }
    let mut rig = Rig::start("fpa", CommitMode::Async, 22);
    let expected = pattern(TRANSFER, 7);
    let store = rig.store.clone();
    let monitor = rig.monitor.clone();
    let mut checked = 0usize;
    let (id, received) = stream_through(&rig.client, |_, id, _, _, _| {
        check_at_risk(&monitor, &store, id, &mut checked);
    });
    assert_eq!(received.len(), TRANSFER);
    assert!(received == expected, "echoed bytes differ from those sent");

    // The capture may lag the transfer: keep checking until the agent has seen every byte
    // and the close, and the backup acknowledged everything (both FINs included); then
    // nothing is at risk.
    let both_fins = (TRANSFER as u64 + 1, TRANSFER as u64 + 1);
    wait_for("nothing at risk", Duration::from_secs(20), || {
        check_at_risk(&monitor, &store, &id, &mut checked);
        rig.monitor.status().is_some_and(|s| {
            s.connection(&id).is_some_and(|c| {
                c.server_sent == TRANSFER as u64
                    && c.at_risk() == 0
                    && c.closed
                    && c.backup.map(|b| (b.client, b.server)) == Some(both_fins)
            })
        })
    });
    assert!(checked > 0, "the agent reported the connection");
    let status = rig.monitor.status().expect("status");
    let conn = status.connection(&id).expect("connection");
    assert_eq!(conn.client_acked, TRANSFER as u64);
    let backup = conn.backup.expect("held by the backup");
    // The backup's acknowledged offsets count each FIN as one offset (sequence space).
    assert_eq!(
        replica_sequence_ends(&rig.store, &id),
        Some((backup.client, backup.server))
    );
    assert_eq!(
        replica_ends(&rig.store, &id),
        Some((TRANSFER as u64, TRANSFER as u64))
    );
    let (_, client_bytes) = rig.store.client_bytes(&id).expect("client bytes");
    assert!(
        client_bytes == expected,
        "the replica's client bytes differ"
    );

    let exit = rig.stop_primary();
    assert_eq!(exit.mode, CommitMode::Async);
    assert_eq!(exit.connections, 1);
    assert_eq!(exit.held, 0, "async mode holds nothing");
    assert!(exit.segments > 0);
    assert_eq!(
        rig.echo.take().map(|e| e.join().expect("echo")),
        Some(TRANSFER as u64)
    );
}

/// Checks one moment of a sync-mode connection: the client's kernel never received a server
/// byte or FIN, nor had a client byte or FIN acknowledged, that the replica does not hold;
/// the server bytes the replica retains are those really sent. `syn` is the SYN's count in
/// `tcpi_bytes_acked`; `eof` is true when the client just read the end of the stream.
///
/// Everything is compared in sequence space, where a FIN takes one offset (RFC 9293 §3.4):
/// Linux counts a received FIN in `tcpi_bytes_received` and an acknowledged FIN in
/// `tcpi_bytes_acked`, and the replica's `sequence_end` counts a FIN it holds.
fn check_sync_moment(
    socket: &TcpStream,
    store: &ReplicaStore,
    id: &ConnectionId,
    syn: u64,
    eof: bool,
    expected_echo: &[u8],
) {
    // The client's view first, the replica's after: the replica only grows.
    let info = socket_tcp_info(socket).expect("TCP_INFO");
    let record = store.with_replica(|r| {
        r.record(id).map(|rec| {
            let (c, s) = (rec.stream(Side::Client), rec.stream(Side::Server));
            (c.sequence_end(), s.sequence_end(), c.fin(), s.fin())
        })
    });
    let (client_end, server_end, client_fin, server_fin) =
        record.expect("the replica holds the connection");
    let received = info.bytes_received;
    let acked = info.bytes_acked.saturating_sub(syn);
    assert!(
        received <= server_end,
        "the client received the server's stream up to {received} (a FIN counts one), the backup held only {server_end}"
    );
    assert!(
        acked <= client_end,
        "the client's stream was acknowledged up to {acked} (a FIN counts one), the backup held only {client_end}"
    );
    if eof {
        assert!(
            server_fin.is_some(),
            "the client read the end of the stream (state {}), but the backup does not hold the server's FIN",
            info.state
        );
    }
    if OWN_FIN_ACKED.contains(&info.state) {
        assert!(
            client_fin.is_some(),
            "the client's FIN was acknowledged (state {}), but the backup does not hold it",
            info.state
        );
    }
    let (from, bytes) = store.server_bytes(id).expect("held");
    let end = from as usize + bytes.len();
    assert!(end <= expected_echo.len(), "more server bytes than echoed");
    assert_eq!(
        bytes,
        expected_echo[from as usize..end],
        "server bytes at {from}"
    );
}

#[test]
fn sync_mode_holds_output_while_the_backup_is_cut_off_and_resumes() {
    if !kernel_tests_enabled("sync_mode_holds_output_while_the_backup_is_cut_off_and_resumes") {
        return;
    }
    const ROUND: usize = 16 << 10;
    const ROUNDS_BEFORE: usize = 8;
    const ROUNDS_AFTER: usize = 8;
    let total = ROUND * (ROUNDS_BEFORE + 1 + ROUNDS_AFTER);
    let data = pattern(total, 3);
    // The backup stays cut off for about 2 s: the agent must hold all along, not degrade.
    let mut rig = Rig::start_degrading_after("fpc", CommitMode::Sync, 23, Duration::from_secs(60));
    let mut stream = rig
        .client
        .run(|| TcpStream::connect_timeout(&SERVICE.parse().unwrap(), IO_TIMEOUT))
        .expect("in client ns")
        .expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let id = ConnectionId {
        client: stream.local_addr().expect("local addr"),
        server: SERVICE.parse().unwrap(),
    };
    let syn = socket_tcp_info(&stream).expect("TCP_INFO").bytes_acked;
    let store = rig.store.clone();
    let mut sent = 0usize;
    let mut echoed = Vec::with_capacity(total);
    let read_round = |stream: &mut TcpStream, echoed: &mut Vec<u8>, sent: usize| {
        let mut buf = vec![0u8; ROUND];
        while echoed.len() < sent {
            let want = (sent - echoed.len()).min(buf.len());
            let n = stream.read(&mut buf[..want]).expect("read the echo");
            assert!(n > 0, "the echo ended early");
            echoed.extend_from_slice(&buf[..n]);
            check_sync_moment(stream, &store, &id, syn, false, &data);
        }
    };
    for _ in 0..ROUNDS_BEFORE {
        stream.write_all(&data[sent..sent + ROUND]).expect("write");
        sent += ROUND;
        read_round(&mut stream, &mut echoed, sent);
    }

    // The backup is cut off: the server still reads and echoes, but none of its segments
    // may leave, since the backup can acknowledge nothing.
    rig.lab.cut(&rig.backup_host).expect("cut the backup");
    let replica_before = replica_ends(&rig.store, &id).expect("held");
    stream.write_all(&data[sent..sent + ROUND]).expect("write");
    sent += ROUND;
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    match stream.read(&mut probe) {
        Ok(n) => panic!("{n} byte(s) reached the client while the backup was cut off"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    check_sync_moment(&stream, &rig.store, &id, syn, false, &data);
    assert_eq!(
        replica_ends(&rig.store, &id),
        Some(replica_before),
        "nothing crosses a cut link"
    );
    let held = rig.monitor.status().map_or(0, |s| s.held_packets);
    assert!(held > 0, "the server's answer is held");

    // The backup comes back: the link resynchronises, the held segments leave.
    rig.lab.reconnect(&rig.backup_host).expect("reconnect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    read_round(&mut stream, &mut echoed, sent);
    for _ in 0..ROUNDS_AFTER {
        stream.write_all(&data[sent..sent + ROUND]).expect("write");
        sent += ROUND;
        read_round(&mut stream, &mut echoed, sent);
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read to the end");
    assert!(rest.is_empty(), "no bytes beyond the echo");
    // The client saw the server's FIN: the backup held it first.
    check_sync_moment(&stream, &rig.store, &id, syn, true, &data);
    assert!(echoed == data, "echoed bytes differ from those sent");

    wait_for(
        "the replica to see the close",
        Duration::from_secs(20),
        || {
            rig.store
                .with_replica(|r| r.record(&id).is_some_and(|rec| rec.closed().is_some()))
        },
    );
    assert_eq!(
        replica_ends(&rig.store, &id),
        Some((total as u64, total as u64))
    );
    let (from, client_bytes) = rig.store.client_bytes(&id).expect("client bytes");
    assert_eq!(from, 0);
    assert!(client_bytes == data, "the replica's client bytes differ");
    let exit = rig.stop_primary();
    assert_eq!(exit.released + exit.released_unprotected, exit.held);
    assert_eq!(
        rig.echo.take().map(|e| e.join().expect("echo")),
        Some(total as u64)
    );
}
