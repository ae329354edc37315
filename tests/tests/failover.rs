//! Crash failover end to end, in network namespaces: a client host, a primary host and a
//! backup host on one bridge.
//!
//! The primary runs the service (a small deterministic line server written here) on the
//! service address 198.18.0.10 and a primary agent driven by hand from the library pieces
//! (AF_PACKET capture on eth0 → `Tracker` → `PrimaryService`, async mode). The backup runs
//! the same server as its standby daemon on 0.0.0.0 and `cttmd::backup::run_backup`. Clients
//! exchange request/response traffic whose every response carries the server's count and
//! checksum of every byte it received on that connection, so a lost or duplicated byte in
//! either direction fails the check. The crash: the primary's switch port goes down (no FIN
//! or RST escapes), then its agent stops.
//!
//! Async mode can lose bytes the backup did not receive before the crash, so the no-loss
//! tests crash the primary while every connection is idle between two requests: the test
//! waits until every response was acknowledged by its client (seen by the tracker) and the
//! backup acknowledged every replicated event, then crashes it. The clients then go on; their
//! next requests reach the backup once it has taken over. A third test crashes the primary in
//! the middle of the traffic and checks the async guarantee: no connection hangs and none
//! gets a wrong byte (each is either continued or reset). Sync mode (output commit) is the
//! primary agent's and is tested with it.

use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource};
use cttm_capture::{DropWatch, feed_tracker};
use cttm_core::{
    ConnectionEvent, MessageV1, ReplicationMessage, ServiceEndpoint, ServiceSet, Side, Tracker,
    TrackerConfig,
};
use cttm_replicate::transport::tcp::{TcpConfig, TcpPrimaryTransport};
use cttm_replicate::{PreSharedKey, PrimaryConfig, PrimaryReport, PrimaryService, Security};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use cttmd::backup::{BackupExit, ResetReason, run_backup};
use cttmd::options::{BackupOptions, HeartbeatOptions, ObserveOptions, ProbeOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SERVICE_IP: &str = "198.18.0.10";
const PORT: u16 = 7000;
const REPLICATION: &str = "198.18.0.3:7411";
const KEY: [u8; 32] = *b"cttm failover test key 000000001";
const CONNECTIONS: usize = 8;
const REQUESTS_BEFORE: usize = 15;
const REQUESTS_AFTER: usize = 15;
/// Requests per connection when the crash comes mid-traffic (after about 20 each), one
/// every [`MID_TRAFFIC_PACE`] at most: every connection is busy when it comes.
const MID_TRAFFIC_REQUESTS: usize = 1000;
/// The pause between two requests of a connection when the crash comes mid-traffic.
const MID_TRAFFIC_PACE: Duration = Duration::from_millis(2);
/// A request starting with this makes the diverging standby answer differently.
const DIVERGE: &str = "DIVERGE";
const HEARTBEAT: Duration = Duration::from_millis(50);
/// Missed heartbeats before the primary is declared dead (300 ms: a loaded test machine
/// must not make the backup take over from a live primary).
const MISSES: u32 = 6;
/// A client waiting this long for an answer counts as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// FNV-1a, 64 bits, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The response to request number `count` (1-based) after `hash` of every byte received.
fn response(count: u64, hash: u64, request: &str) -> String {
    let reversed: String = request.chars().rev().collect();
    format!("{count} {hash:016x} {reversed}\n")
}

/// The line server: per connection, a count of requests and a checksum of every byte
/// received; each line is answered with both and the line reversed. `diverge` makes it
/// answer requests starting with [`DIVERGE`] differently (a non-deterministic daemon).
struct Server {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    fn start(host: &Netns, diverge: bool) -> Server {
        let listener = host
            .run(|| TcpListener::bind(("0.0.0.0", PORT)))
            .expect("in namespace")
            .expect("bind the server");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let stop = stop.clone();
                            workers.push(std::thread::spawn(move || {
                                serve(stream, &stop, diverge);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for w in workers {
                    let _ = w.join();
                }
            })
        };
        Server {
            stop,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve(stream: TcpStream, stop: &AtomicBool, diverge: bool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let (mut count, mut hash) = (0u64, FNV_START);
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                hash = fnv(hash, &line);
                count += 1;
                let request = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let answer = if diverge && request.starts_with(DIVERGE) {
                    response(count + 1000, hash, &request)
                } else {
                    response(count, hash, &request)
                };
                line.clear();
                if writer.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The primary agent, driven by hand: AF_PACKET on eth0 → tracker → replication (async).
struct PrimaryAgent {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    tracker: Arc<Mutex<Tracker>>,
    replication: Arc<PrimaryService>,
}

impl PrimaryAgent {
    fn start(host: &Netns, services: &ServiceSet) -> PrimaryAgent {
        let mut tcp = TcpConfig::new(Security::Noise(PreSharedKey::new(KEY)), services.clone());
        tcp.connect_timeout = Duration::from_millis(300);
        tcp.backoff_initial = Duration::from_millis(20);
        tcp.backoff_max = Duration::from_millis(200);
        let config = PrimaryConfig {
            heartbeat_interval: HEARTBEAT,
            failure_misses: MISSES,
            ..PrimaryConfig::default()
        };
        let capture_config = AfPacketConfig::new("eth0", services.clone());
        let (source, replication) = host
            .run(move || {
                let source = AfPacketSource::open(capture_config);
                let transport = TcpPrimaryTransport::new(tcp, REPLICATION.parse().unwrap());
                let replication = PrimaryService::start(
                    config,
                    cttm_replicate::random_epoch(),
                    Arc::new(transport),
                );
                (source, replication)
            })
            .expect("in primary namespace");
        let mut source = source.expect("AF_PACKET capture on the primary");
        let replication = Arc::new(replication);
        let tracker = Arc::new(Mutex::new(Tracker::new(TrackerConfig::new(
            services.clone(),
        ))));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, tracker, replication) = (stop.clone(), tracker.clone(), replication.clone());
            std::thread::spawn(move || {
                let mut watch = DropWatch::new();
                let mut events: Vec<ConnectionEvent> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let mut t = tracker.lock().expect("tracker lock");
                    let fed = feed_tracker(
                        &mut source,
                        &mut t,
                        &mut watch,
                        Duration::from_millis(5),
                        &mut events,
                    );
                    drop(t);
                    assert!(fed.is_ok(), "capture failed: {fed:?}");
                    if !events.is_empty() {
                        let messages = events
                            .drain(..)
                            .map(|e| ReplicationMessage::V1(MessageV1::Event(e)));
                        replication
                            .submit_all(messages)
                            .expect("tracker events are consistent");
                    }
                }
            })
        };
        PrimaryAgent {
            stop,
            thread: Some(thread),
            tracker,
            replication,
        }
    }

    /// True when every tracked connection is quiet: every server byte acknowledged by the
    /// client, every client byte acknowledged by the server, and the backup acknowledged
    /// every event.
    fn quiescent(&self, connections: usize) -> bool {
        let quiet = {
            let t = self.tracker.lock().expect("tracker lock");
            let open: Vec<_> = t.records().filter(|r| r.closed().is_none()).collect();
            open.len() == connections
                && open.iter().all(|r| {
                    let (c, s) = (r.stream(Side::Client), r.stream(Side::Server));
                    s.acked() == s.sequence_end() && c.acked() == c.sequence_end()
                })
        };
        quiet
            && self
                .replication
                .wait_synchronised(Duration::from_millis(50))
    }

    /// The crash: the agent's threads stop (its link is already cut).
    fn crash(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("primary agent thread");
        }
    }
}

impl Drop for PrimaryAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one client connection saw.
#[derive(Debug)]
struct ClientReport {
    local: SocketAddr,
    answers: usize,
    longest_stall: Duration,
    /// The error that ended the connection early, if one did.
    ended_by: Option<std::io::Error>,
}

/// One request and its verified answer. Returns the time it took.
fn exchange(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    state: &mut (u64, u64),
    request: &str,
) -> std::io::Result<Duration> {
    let started = Instant::now();
    let line = format!("{request}\n");
    stream.write_all(line.as_bytes())?;
    state.0 += 1;
    state.1 = fnv(state.1, line.as_bytes());
    let mut answer = String::new();
    let n = reader.read_line(&mut answer)?;
    if n == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "server closed",
        ));
    }
    assert_eq!(
        answer,
        response(state.0, state.1, request),
        "answer {} of {:?} is wrong (a byte was lost, duplicated or changed)",
        state.0,
        stream.local_addr()
    );
    Ok(started.elapsed())
}

fn request_text(connection: usize, i: usize, diverge: bool) -> String {
    let len = 20 + (connection * 977 + i * 389) % 3000;
    let body: String = (0..len)
        .map(|j| char::from(b'a' + ((connection * 7 + i * 13 + j) % 26) as u8))
        .collect();
    if diverge {
        format!("{DIVERGE} {connection} {i} {body}")
    } else {
        format!("{connection} {i} {body}")
    }
}

/// When the primary crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crash {
    /// While every connection waits between two requests (both barriers), with everything
    /// replicated: async mode loses nothing.
    WhileIdle,
    /// In the middle of the traffic: async mode may lose what the backup did not receive.
    MidTraffic,
}

impl Crash {
    /// Requests per connection.
    fn requests(self) -> usize {
        match self {
            Crash::WhileIdle => REQUESTS_BEFORE + REQUESTS_AFTER,
            Crash::MidTraffic => MID_TRAFFIC_REQUESTS,
        }
    }
}

/// One client connection: requests, (with [`Crash::WhileIdle`] a pause at both barriers
/// after [`REQUESTS_BEFORE`]), more requests, then a clean close. `progress` counts answers.
fn client(
    connection: usize,
    diverge: bool,
    pause: Option<(Arc<Barrier>, Arc<Barrier>)>,
    requests: usize,
    progress: Arc<AtomicUsize>,
) -> ClientReport {
    let service: SocketAddr = format!("{SERVICE_IP}:{PORT}").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let local = stream.local_addr().unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut state = (0u64, FNV_START);
    let mut report = ClientReport {
        local,
        answers: 0,
        longest_stall: Duration::ZERO,
        ended_by: None,
    };
    for i in 0..requests {
        if i == REQUESTS_BEFORE
            && let Some((idle, go)) = &pause
        {
            idle.wait();
            go.wait();
        }
        match exchange(
            &mut stream,
            &mut reader,
            &mut state,
            &request_text(connection, i, diverge),
        ) {
            Ok(took) => {
                report.longest_stall = report.longest_stall.max(took);
                report.answers += 1;
                progress.fetch_add(1, Ordering::SeqCst);
                if pause.is_none() {
                    std::thread::sleep(MID_TRAFFIC_PACE);
                }
            }
            Err(e) => {
                assert!(
                    pause.is_none() || i >= REQUESTS_BEFORE,
                    "exchange {i} before the crash failed: {e}"
                );
                report.ended_by = Some(e);
                return report;
            }
        }
    }
    // A clean close: the server answers our FIN with its own.
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the last answer: {rest:?}"),
        Err(e) => report.ended_by = Some(e),
    }
    report
}

/// A connection opened after the takeover: three verified exchanges, then a clean close.
fn fresh_connection() -> usize {
    let service: SocketAddr = format!("{SERVICE_IP}:{PORT}").parse().unwrap();
    let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(5))
        .expect("connect after takeover");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut state = (0u64, FNV_START);
    let mut answers = 0;
    for i in 0..3 {
        exchange(
            &mut stream,
            &mut reader,
            &mut state,
            &request_text(99, i, false),
        )
        .expect("exchange after takeover");
        answers += 1;
    }
    stream.shutdown(Shutdown::Write).expect("shutdown");
    answers
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the whole scenario; `diverging` names the connection whose requests the standby
/// answers differently. Returns the client reports and the backup's exit.
fn failover(tag: &str, crash: Crash, diverging: Option<usize>) -> (Vec<ClientReport>, BackupExit) {
    let mut lab = Lab::new(tag).expect("lab");
    let client_host = lab.add_host("c", &["198.18.0.1/24"]).expect("client host");
    let primary_host = lab
        .add_host("p", &["198.18.0.2/24", "198.18.0.10/24"])
        .expect("primary host");
    let backup_host = lab.add_host("b", &["198.18.0.3/24"]).expect("backup host");
    let service: SocketAddr = format!("{SERVICE_IP}:{PORT}").parse().unwrap();
    let services = ServiceSet::new([ServiceEndpoint::new(service)]);

    let primary_server = Server::start(&primary_host, false);
    let standby = Server::start(&backup_host, diverging.is_some());
    let stop_backup = Arc::new(AtomicBool::new(false));
    let options = BackupOptions {
        services: vec![service],
        service_prefix_len: 24,
        interface: "eth0".into(),
        listen: REPLICATION.parse().unwrap(),
        key: KEY,
        standby: format!("127.0.0.1:{PORT}").parse().unwrap(),
        heartbeat: HeartbeatOptions {
            interval: HEARTBEAT,
            misses: MISSES,
        },
        announce_count: 3,
        probe: ProbeOptions::DEFAULT,
        fence: None,
        observe: ObserveOptions::default(),
    };
    let backup = {
        let stop = stop_backup.clone();
        backup_host
            .spawn(move || run_backup(options, stop))
            .expect("backup thread")
    };
    let primary = PrimaryAgent::start(&primary_host, &services);
    // Connections opened before the backup's first resynchronisation reach it as whole
    // records (their first server bytes cannot be compared): wait for it, so every
    // connection is followed from its handshake.
    wait_for(
        "the first resynchronisation",
        Duration::from_secs(20),
        || {
            primary
                .replication
                .take_reports()
                .iter()
                .any(|r| matches!(r, PrimaryReport::Resynchronised { .. }))
        },
    );

    let idle = Arc::new(Barrier::new(CONNECTIONS + 1));
    let go = Arc::new(Barrier::new(CONNECTIONS + 1));
    let progress = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let pause = (crash == Crash::WhileIdle).then(|| (idle.clone(), go.clone()));
            let diverge = diverging == Some(i);
            let progress = progress.clone();
            client_host
                .spawn(move || client(i, diverge, pause, crash.requests(), progress))
                .expect("client thread")
        })
        .collect();
    match crash {
        Crash::WhileIdle => {
            idle.wait();
            wait_for(
                "every connection idle and replicated",
                Duration::from_secs(20),
                || primary.quiescent(CONNECTIONS),
            );
        }
        Crash::MidTraffic => wait_for(
            "traffic on every connection",
            Duration::from_secs(20),
            || progress.load(Ordering::SeqCst) >= CONNECTIONS * 5,
        ),
    }

    // The crash: cut the primary off the bridge, then stop its agent.
    let crashed_at = Instant::now();
    lab.cut(&primary_host).expect("cut the primary");
    primary.crash();
    if crash == Crash::WhileIdle {
        go.wait();
    }
    let reports: Vec<ClientReport> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let finished = crashed_at.elapsed();
    // A new connection after the takeover goes straight to the standby daemon.
    let fresh = client_host
        .run(fresh_connection)
        .expect("in client namespace");
    assert_eq!(fresh, 3, "a new connection is served by the standby");
    stop_backup.store(true, Ordering::SeqCst);
    let exit = backup
        .join()
        .expect("backup thread")
        .expect("the backup agent runs");
    println!(
        "{tag}: clients finished {:.0} ms after the crash; takeover took {:?}; longest stall {:?}",
        finished.as_secs_f64() * 1e3,
        exit.takeover,
        reports
            .iter()
            .map(|r| r.longest_stall)
            .max()
            .unwrap_or_default()
    );
    drop(primary_server);
    drop(standby);
    drop(lab);
    (reports, exit)
}

#[test]
fn every_connection_survives_the_primary_crash_byte_for_byte() {
    if !kernel_tests_enabled("failover") {
        return;
    }
    let (reports, exit) = failover("fo", Crash::WhileIdle, None);
    for r in &reports {
        assert!(
            r.ended_by.is_none(),
            "client {} failed: {:?}",
            r.local,
            r.ended_by
        );
        assert_eq!(
            r.answers,
            REQUESTS_BEFORE + REQUESTS_AFTER,
            "client {}",
            r.local
        );
    }
    assert!(exit.takeover.is_some(), "the backup took over");
    assert_eq!(exit.restored.len(), CONNECTIONS, "{exit:?}");
    assert!(exit.reset.is_empty(), "{exit:?}");
    assert!(exit.diverged.is_empty(), "{exit:?}");
    for r in &reports {
        assert!(
            exit.restored.iter().any(|id| id.client == r.local),
            "{} was not restored",
            r.local
        );
    }
    assert_eq!(
        exit.ended.iter().filter(|(_, how)| how.is_none()).count(),
        CONNECTIONS,
        "every spliced connection closed cleanly: {exit:?}"
    );
}

#[test]
fn a_diverged_connection_is_reset_and_the_others_survive() {
    if !kernel_tests_enabled("failover") {
        return;
    }
    let diverging = 3;
    let (reports, exit) = failover("fd", Crash::WhileIdle, Some(diverging));
    let bad = &reports[diverging];
    let error = bad
        .ended_by
        .as_ref()
        .expect("the diverged connection ended early");
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        "the client saw a reset or EOF, not a hang: {error:?}"
    );
    assert_eq!(
        bad.answers, REQUESTS_BEFORE,
        "nothing answered after the crash"
    );
    assert!(
        exit.diverged.iter().any(|(id, _)| id.client == bad.local),
        "reported diverged: {exit:?}"
    );
    assert!(
        exit.reset
            .iter()
            .any(|(id, reason)| id.client == bad.local
                && matches!(reason, ResetReason::Diverged { .. })),
        "reset as diverged: {exit:?}"
    );
    for (i, r) in reports.iter().enumerate().filter(|(i, _)| *i != diverging) {
        assert!(r.ended_by.is_none(), "client {i} failed: {:?}", r.ended_by);
        assert_eq!(r.answers, REQUESTS_BEFORE + REQUESTS_AFTER, "client {i}");
    }
    assert_eq!(exit.restored.len(), CONNECTIONS - 1, "{exit:?}");
}

#[test]
fn a_crash_mid_traffic_in_async_mode_never_hangs_nor_corrupts() {
    if !kernel_tests_enabled("failover") {
        return;
    }
    let (reports, exit) = failover("fm", Crash::MidTraffic, None);
    let mut kept = 0;
    for r in &reports {
        match &r.ended_by {
            None => {
                assert_eq!(r.answers, MID_TRAFFIC_REQUESTS, "client {}", r.local);
                kept += 1;
            }
            Some(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
                ),
                "client {} ended with {e:?} (a hang or a wrong error), after {} answers",
                r.local,
                r.answers
            ),
        }
    }
    println!(
        "mid-traffic crash (async): {kept} of {CONNECTIONS} connections kept; restored {}, reset at takeover {}, ended after takeover {:?}",
        exit.restored.len(),
        exit.reset.len(),
        exit.ended
    );
    // A connection whose handshake never reached the backup is not in its replica: the
    // kernel resets it at the client's next segment.
    assert!(
        exit.restored.len() + exit.reset.len() <= CONNECTIONS,
        "{exit:?}"
    );
    assert!(exit.takeover.is_some(), "the backup took over");
}

/// The sync-mode scenario: connections of the [`cttmd::demo::Workload`] (request/response
/// checked against the kvd oracle, and long checksummed streams).
const SYNC_CONNECTIONS: usize = 32;
const SYNC_PORT: u16 = 7100;
const SYNC_REPLICATION: &str = "198.18.0.3:7412";
/// NFQUEUE queue number of the sync-mode primary (distinct from the other tests').
const SYNC_QUEUE: u16 = 4711;
/// The crash comes at a random moment this long after the traffic started, at least...
const SYNC_CRASH_AFTER: Duration = Duration::from_millis(1000);
/// ... plus up to this much more.
const SYNC_CRASH_SPREAD_MS: u64 = 2000;
/// Traffic goes on this long after the crash before every connection finishes.
const SYNC_AFTER_CRASH: Duration = Duration::from_secs(5);

/// A random duration up to `spread_ms` (from the clock's nanoseconds and the process id: a
/// different crash moment each run, printed so a failure can be told apart).
fn random_ms(spread_ms: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mixed =
        (nanos ^ u64::from(std::process::id()).rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 16) % (spread_ms + 1)
}

/// Sync mode, end to end with both real agents: the primary runs
/// `cttmd::primary::run_primary` (output commit through NFQUEUE) next to kvd, the backup
/// `run_backup` next to the standby kvd. 32 client connections exchange checksummed traffic
/// both ways (request/response and long streams, every byte checked against the
/// deterministic daemon's oracle, so a byte lost or duplicated in either direction fails);
/// the primary crashes (switch port down, then its agent and its daemon stop) at a random
/// moment during the traffic. Every connection must finish cleanly with every byte exactly
/// once and no client error; the longest stall a client saw is printed.
#[test]
fn sync_mode_every_connection_survives_a_crash_at_a_random_moment() {
    if !kernel_tests_enabled("failover, sync mode") {
        return;
    }
    use cttm_kvd::{Server as Kvd, ServerOptions};
    use cttmd::demo::{Workload, WorkloadOptions, connect_all};
    use cttmd::options::{CommitMode, DEFAULT_DEGRADE_AFTER, PrimaryOptions};
    use cttmd::primary::run_primary;

    let mut lab = Lab::new("fos").expect("lab");
    let client_host = lab.add_host("c", &["198.18.0.1/24"]).expect("client host");
    let primary_host = lab
        .add_host("p", &["198.18.0.2/24", "198.18.0.10/24"])
        .expect("primary host");
    let backup_host = lab.add_host("b", &["198.18.0.3/24"]).expect("backup host");
    let service: SocketAddr = format!("{SERVICE_IP}:{SYNC_PORT}").parse().unwrap();
    let any: SocketAddr = format!("0.0.0.0:{SYNC_PORT}").parse().unwrap();
    // The daemons' threads are spawned from a thread inside each namespace (they stay there).
    let primary_kvd = primary_host
        .run(move || Kvd::start(&[any], ServerOptions::default()))
        .expect("in primary ns")
        .expect("primary kvd");
    let standby_kvd = backup_host
        .run(move || Kvd::start(&[any], ServerOptions::default()))
        .expect("in backup ns")
        .expect("standby kvd");
    let heartbeat = HeartbeatOptions {
        interval: Duration::from_millis(100),
        misses: 5,
    };

    let stop_backup = Arc::new(AtomicBool::new(false));
    let backup = {
        let options = BackupOptions {
            services: vec![service],
            service_prefix_len: 24,
            interface: "eth0".into(),
            listen: SYNC_REPLICATION.parse().unwrap(),
            key: KEY,
            standby: format!("127.0.0.1:{SYNC_PORT}").parse().unwrap(),
            heartbeat,
            announce_count: 3,
            probe: ProbeOptions::DEFAULT,
            fence: None,
            observe: ObserveOptions::default(),
        };
        let stop = stop_backup.clone();
        backup_host
            .spawn(move || run_backup(options, stop))
            .expect("backup thread")
    };
    wait_for("the backup's listener", Duration::from_secs(10), || {
        backup_host
            .exec("ss", &["-Hltn", "sport = :7412"])
            .is_ok_and(|out| !out.trim().is_empty())
    });
    let stop_primary = Arc::new(AtomicBool::new(false));
    let primary = {
        let options = PrimaryOptions {
            services: vec![service],
            interface: "eth0".into(),
            backup: SYNC_REPLICATION.parse().unwrap(),
            key: KEY,
            mode: CommitMode::Sync,
            heartbeat,
            retention_limit: 64 << 20,
            queue: SYNC_QUEUE,
            degrade_after: DEFAULT_DEGRADE_AFTER,
            probe: ProbeOptions::DEFAULT,
            observe: ObserveOptions::default(),
            capture_file: None,
        };
        let stop = stop_primary.clone();
        primary_host
            .spawn(move || run_primary(options, stop))
            .expect("primary thread")
    };
    // The link is up and the output commit rules are in place before any connection opens,
    // so every connection is followed from its handshake.
    wait_for(
        "the replication link and the NFQUEUE rules",
        Duration::from_secs(20),
        || {
            assert!(!primary.is_finished(), "the primary agent stopped early");
            let linked = primary_host
                .exec("ss", &["-Htn", "state", "established", "dport = :7412"])
                .is_ok_and(|out| !out.trim().is_empty());
            let queued = primary_host
                .exec("iptables", &["-S"])
                .is_ok_and(|out| out.contains("NFQUEUE"));
            linked && queued
        },
    );
    std::thread::sleep(Duration::from_millis(500));

    let streams = client_host
        .run(move || connect_all(service, SYNC_CONNECTIONS, Duration::from_secs(5)))
        .expect("in client ns")
        .expect("connect");
    let workload = Workload::start(
        streams,
        WorkloadOptions {
            reply_timeout: Duration::from_secs(15),
            ..WorkloadOptions::default()
        },
    )
    .expect("workload");
    let crash_after = SYNC_CRASH_AFTER + Duration::from_millis(random_ms(SYNC_CRASH_SPREAD_MS));
    std::thread::sleep(crash_after);
    let before = workload.progress();
    assert_eq!(
        before.alive, SYNC_CONNECTIONS,
        "connections lost before the crash"
    );

    // The crash: the switch port goes down (nothing escapes), then the agent and the daemon
    // stop; the daemon's sockets are destroyed (`ss -K`, as when its process dies).
    lab.cut(&primary_host).expect("cut the primary");
    stop_primary.store(true, Ordering::SeqCst);
    let primary_exit = primary.join().expect("primary thread");
    drop(primary_kvd);
    let _ = primary_host.exec("ss", &["-K", "sport = :7100"]);
    std::thread::sleep(SYNC_AFTER_CRASH);
    let report = workload.finish(false);
    stop_backup.store(true, Ordering::SeqCst);
    let exit = backup
        .join()
        .expect("backup thread")
        .expect("the backup agent runs");
    let lock_left = backup_host
        .exec("iptables", &["-S", "INPUT"])
        .map(|out| out.contains("cttm takeover lock"));
    drop(standby_kvd);
    drop(lab);
    println!(
        "sync mode: crash {} ms into the traffic ({} requests, {:.1} MB verified by then); takeover took {:?}; restored {}, reset {}\n{report}",
        crash_after.as_millis(),
        before.requests,
        before.bytes_verified as f64 / 1e6,
        exit.takeover,
        exit.restored.len(),
        exit.reset.len(),
    );
    println!("sync mode: longest stall {:?}", report.longest_stall);
    assert!(
        primary_exit.is_ok(),
        "the primary agent failed: {primary_exit:?}"
    );
    assert_eq!(report.lost, Vec::new(), "no client sees an error");
    assert_eq!(report.kept, SYNC_CONNECTIONS, "{report}");
    assert!(
        report.requests > before.requests && report.bytes_verified > before.bytes_verified,
        "traffic went on after the crash: {report}"
    );
    assert!(exit.takeover.is_some(), "the backup took over");
    assert_eq!(exit.reset, Vec::new(), "no connection reset at takeover");
    assert_eq!(exit.diverged, Vec::new(), "no divergence");
    assert_eq!(exit.restored.len(), SYNC_CONNECTIONS, "{exit:?}");
    assert_eq!(lock_left.ok(), Some(false), "the takeover lock was removed");
}
