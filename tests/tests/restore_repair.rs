//! Real-kernel tests of `TCP_REPAIR` dump and restore (`cttm_restore::repair`).
//!
//! Each test builds a lab: a client namespace and a server namespace on one bridge. The client
//! is an unmodified `std::net::TcpStream` that streams checksummed data both ways (every byte
//! is a function of its stream offset, so a lost, duplicated or reordered byte is caught at
//! its offset). Mid-stream the server socket is frozen, dumped, closed without FIN or RST and
//! restored; the client must see no error and every byte both ways exactly once, in order.

use cttm_core::snapshot::{ConnectionSnapshot, TcpState};
use cttm_restore::repair::{
    FrozenConnection, RestoredConnection, dump_connection, monotonic_now, restore_connection,
};
use cttm_restore::{ClockPolicy, RestoreError, RestoreOptions};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CLIENT_ADDRS: [&str; 2] = ["198.18.0.1/24", "2001:db8::1/64"];
const SERVER_ADDRS: [&str; 2] = ["198.18.0.2/24", "2001:db8::2/64"];
const SERVER_V4: &str = "198.18.0.2";
const SERVER_V6: &str = "2001:db8::2";
/// Every wait of these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(60);
const CHUNK: usize = 64 * 1024;

/// The byte at `offset` of the stream in `direction` (0: client → server, 1: server → client).
fn pattern(direction: u8, offset: u64) -> u8 {
    let x = offset
        .wrapping_add(u64::from(direction) << 40)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (offset as u8)
}

fn fill(direction: u8, start: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(direction, start + i as u64);
    }
}

/// The first offset at which `data` (starting at `start`) differs from the pattern.
fn first_mismatch(direction: u8, start: u64, data: &[u8]) -> Option<u64> {
    data.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern(direction, start + *i as u64))
        .map(|(i, _)| start + i as u64)
}

/// What the client saw.
#[derive(Debug)]
struct ClientReport {
    sent: u64,
    received: u64,
    mismatch: Option<u64>,
    error: Option<String>,
}

#[derive(Clone, Copy, Debug)]
struct ClientPlan {
    server: SocketAddr,
    /// Bytes the client sends before shutting its write side down.
    to_send: u64,
    /// How long the client waits before it starts reading (so the server's queue fills).
    read_delay: Duration,
    /// How long the client waits before it starts writing.
    write_delay: Duration,
    /// Shift of the stream pattern (several connections at once use distinct streams).
    stream: u8,
}

impl ClientPlan {
    /// A client of `server` that sends `to_send` bytes (stream 0) and reads from the start.
    fn sending(server: SocketAddr, to_send: u64) -> Self {
        ClientPlan {
            server,
            to_send,
            read_delay: Duration::ZERO,
            write_delay: Duration::ZERO,
            stream: 0,
        }
    }
}

/// The service's socket address on the server host.
fn service_addr(v6: bool, port: u16) -> SocketAddr {
    let ip = if v6 { SERVER_V6 } else { SERVER_V4 };
    SocketAddr::new(ip.parse().expect("server address"), port)
}

/// The unmodified client: plain std sockets, a writer and a reader thread.
fn run_client(plan: ClientPlan) -> ClientReport {
    let deadline = Instant::now() + DEADLINE;
    let stream = match TcpStream::connect_timeout(&plan.server, Duration::from_secs(10)) {
        Ok(s) => s,
        Err(e) => {
            return ClientReport {
                sent: 0,
                received: 0,
                mismatch: None,
                error: Some(format!("connect: {e}")),
            };
        }
    };
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.set_write_timeout(Some(DEADLINE)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let writer_thread = std::thread::spawn(move || -> Result<u64, String> {
        std::thread::sleep(plan.write_delay);
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        while sent < plan.to_send {
            let n = (plan.to_send - sent).min(CHUNK as u64) as usize;
            fill(plan.stream * 2, sent, &mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("client write at {sent}: {e}"))?;
            sent += n as u64;
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("client shutdown: {e}"))?;
        Ok(sent)
    });
    std::thread::sleep(plan.read_delay);
    let mut reader = stream;
    let mut received = 0u64;
    let mut mismatch = None;
    let mut error = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if Instant::now() > deadline {
            error = Some("client read deadline".into());
            break;
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if mismatch.is_none() {
                    mismatch = first_mismatch(plan.stream * 2 + 1, received, &buf[..n]);
                }
                received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(format!("client read at {received}: {e}"));
                break;
            }
        }
    }
    let sent = match writer_thread.join().expect("writer") {
        Ok(sent) => sent,
        Err(e) => {
            error.get_or_insert(e);
            0
        }
    };
    ClientReport {
        sent,
        received,
        mismatch,
        error,
    }
}

/// The server application: reads and verifies the client's stream, writes its own, on a
/// non-blocking socket, one step at a time so the test can stop it for a dump.
#[derive(Debug, Default)]
struct ServerApp {
    stream: u8,
    received: u64,
    sent: u64,
    to_send: u64,
    eof: bool,
    shut_write: bool,
    mismatch: Option<u64>,
}

impl ServerApp {
    fn new(to_send: u64, stream: u8) -> Self {
        ServerApp {
            to_send,
            stream,
            ..Default::default()
        }
    }

    /// Reads up to one chunk (if `read`), writes up to one chunk (if `write`), shuts the write
    /// side down after the last byte (if `write`). Returns whether anything happened.
    fn step(&mut self, s: &mut TcpStream, read: bool, write: bool) -> io::Result<bool> {
        let mut progress = false;
        let mut buf = vec![0u8; CHUNK];
        if read && !self.eof {
            match s.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    if self.mismatch.is_none() {
                        self.mismatch = first_mismatch(self.stream * 2, self.received, &buf[..n]);
                    }
                    self.received += n as u64;
                    progress = true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        if write && self.sent < self.to_send {
            let n = (self.to_send - self.sent).min(CHUNK as u64) as usize;
            fill(self.stream * 2 + 1, self.sent, &mut buf[..n]);
            match s.write(&buf[..n]) {
                Ok(n) => {
                    self.sent += n as u64;
                    progress = true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        if write && self.sent == self.to_send && !self.shut_write {
            s.shutdown(Shutdown::Write)?;
            self.shut_write = true;
            progress = true;
        }
        Ok(progress)
    }

    /// Steps until `done`, bounded by [`DEADLINE`].
    fn run_until(
        &mut self,
        s: &mut TcpStream,
        read: bool,
        write: bool,
        done: impl Fn(&ServerApp) -> bool,
    ) {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            assert!(Instant::now() < deadline, "server app stuck: {self:?}");
            if !self.step(s, read, write).expect("server I/O") {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn finished(&self) -> bool {
        self.eof && self.shut_write
    }
}

/// A lab with a client and a server namespace; `sysctls` are applied in both.
fn lab(tag: &str, sysctls: &[&str]) -> (Lab, Netns, Netns) {
    let mut lab = Lab::new(tag).expect("lab");
    let client = lab.add_host("c", &CLIENT_ADDRS).expect("client host");
    let server = lab.add_host("s", &SERVER_ADDRS).expect("server host");
    for ns in [&client, &server] {
        for s in sysctls {
            ns.exec("sysctl", &["-q", "-w", s]).expect("sysctl");
        }
    }
    (lab, client, server)
}

/// Large buffers on the server, small receive buffers on the client (as CRIU's socket-tcpbuf
/// test), so queues fill in both directions.
fn big_server_buffers(client: &Netns, server: &Netns) {
    for s in [
        "net.ipv4.tcp_rmem=4096 4194304 8388608",
        "net.ipv4.tcp_wmem=4096 4194304 8388608",
    ] {
        server.exec("sysctl", &["-q", "-w", s]).expect("sysctl");
    }
    for s in [
        "net.ipv4.tcp_rmem=4096 32768 65536",
        "net.ipv4.tcp_wmem=4096 4194304 8388608",
    ] {
        client.exec("sysctl", &["-q", "-w", s]).expect("sysctl");
    }
}

fn listen(server: &Netns, addr: SocketAddr) -> TcpListener {
    server
        .run(move || TcpListener::bind(addr).expect("bind"))
        .expect("in server")
}

fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + DEADLINE;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true).expect("nonblocking");
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no client connected");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A firewall rule dropping TCP segments in a namespace while it lives: inserted with each
/// of `tools` (`iptables`, `ip6tables`), deleted again on drop (on every exit path).
struct DropRule {
    ns: Netns,
    tools: &'static [&'static str],
    /// The chain and the match, between `-I`/`-D` and `-j DROP`.
    rule: Vec<String>,
}

impl DropRule {
    fn new(ns: &Netns, tools: &'static [&'static str], rule: &[&str]) -> DropRule {
        let drop = DropRule {
            ns: ns.clone(),
            tools,
            rule: rule.iter().map(|part| part.to_string()).collect(),
        };
        for tool in tools {
            ns.exec(tool, &drop.arguments("-I"))
                .expect("insert a drop rule");
        }
        drop
    }

    fn arguments(&self, action: &'static str) -> Vec<&str> {
        let rule = self.rule.iter().map(String::as_str);
        ["-w", action]
            .into_iter()
            .chain(rule)
            .chain(["-j", "DROP"])
            .collect()
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        for tool in self.tools {
            let _ = self.ns.exec(tool, &self.arguments("-D"));
        }
    }
}

/// Drops the segments arriving from the network for the service port while it lives (as
/// CRIU's network lock): between closing a socket and restoring it on the same host, a client
/// segment would meet no socket, or the listener, and be answered with a reset. (Moving to
/// another host has no such gap: the address is not there until it is claimed.)
fn network_lock(ns: &Netns, port: u16) -> DropRule {
    let port = port.to_string();
    DropRule::new(
        ns,
        &["iptables", "ip6tables"],
        &["INPUT", "-i", "eth0", "-p", "tcp", "--dport", &port],
    )
}

/// Drops what the server sends from `port` while it lives (a lossy path towards the client).
fn output_drop(ns: &Netns, port: u16) -> DropRule {
    let port = port.to_string();
    DropRule::new(
        ns,
        &["iptables"],
        &["OUTPUT", "-o", "eth0", "-p", "tcp", "--sport", &port],
    )
}

/// Listens on the plan's server address in `server`, runs the client `plan` in `client` and
/// accepts its connection (non-blocking). The listener is returned to live on.
fn connect_client(
    client: &Netns,
    server: &Netns,
    plan: ClientPlan,
) -> (TcpListener, JoinHandle<ClientReport>, TcpStream) {
    let listener = listen(server, plan.server);
    let client_thread = client.spawn(move || run_client(plan)).expect("client");
    let stream = accept(&listener);
    (listener, client_thread, stream)
}

/// Freezes, dumps and silently closes the server socket, then restores it in `server`, with
/// the network locked meanwhile.
fn move_socket(server: &Netns, stream: TcpStream) -> (ConnectionSnapshot, TcpStream) {
    let lock = network_lock(server, stream.local_addr().expect("local").port());
    let frozen = FrozenConnection::freeze(stream).expect("freeze");
    let snapshot = frozen.dump().expect("dump");
    frozen.close().expect("close");
    let stream = restore_then_unlock(server, &snapshot, RestoreOptions::at(monotonic_now()), lock);
    (snapshot, stream)
}

/// Restores `snapshot` in `server`, then lifts `lock` (the network lock held since the
/// original socket closed); the restored socket is non-blocking.
fn restore_then_unlock(
    server: &Netns,
    snapshot: &ConnectionSnapshot,
    options: RestoreOptions,
    lock: DropRule,
) -> TcpStream {
    let stream = restore_in(server, snapshot, options)
        .expect("restore")
        .into_stream();
    drop(lock);
    stream.set_nonblocking(true).expect("nonblocking");
    stream
}

fn restore_in(
    server: &Netns,
    snapshot: &ConnectionSnapshot,
    options: RestoreOptions,
) -> Result<RestoredConnection, RestoreError> {
    server
        .run(|| restore_connection(snapshot, &options))
        .expect("in server")
}

/// Polls a non-destructive dump until `ready`, stepping the app meanwhile.
fn wait_for_dump(
    app: &mut ServerApp,
    s: &mut TcpStream,
    read: bool,
    write: bool,
    ready: impl Fn(&ConnectionSnapshot) -> bool,
) -> ConnectionSnapshot {
    let deadline = Instant::now() + DEADLINE;
    loop {
        app.step(s, read, write).expect("server I/O");
        let snapshot = dump_connection(s).expect("dump");
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "dump never became ready: {:?} send {} receive {}",
            snapshot.state,
            snapshot.send.bytes.len(),
            snapshot.receive.bytes.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the server app to the end of both streams, then checks both: the client sent
/// `client_sent` bytes.
fn finish_and_check(
    app: &mut ServerApp,
    s: &mut TcpStream,
    client_thread: JoinHandle<ClientReport>,
    client_sent: u64,
) {
    app.run_until(s, true, true, ServerApp::finished);
    let report = client_thread.join().expect("client thread");
    assert_client(&report, app, client_sent);
}

fn assert_client(report: &ClientReport, app: &ServerApp, client_sent: u64) {
    assert_eq!(report.error, None, "client saw an error: {report:?}");
    assert_eq!(report.mismatch, None, "client stream corrupted: {report:?}");
    assert_eq!(report.sent, client_sent);
    assert_eq!(
        report.received, app.to_send,
        "client received {} of {}",
        report.received, app.to_send
    );
    assert_eq!(app.mismatch, None, "server stream corrupted: {app:?}");
    assert_eq!(
        app.received, client_sent,
        "server received {} of {}",
        app.received, client_sent
    );
}

#[derive(Clone, Copy)]
enum BeforeDump {
    /// Exchange a quarter of each stream.
    Streaming,
    /// Stop reading and fill both queues to at least this many bytes.
    FillQueues(usize),
}

struct Scenario {
    tag: &'static str,
    v6: bool,
    sysctls: &'static [&'static str],
    client_bytes: u64,
    server_bytes: u64,
    big_buffers: bool,
    before: BeforeDump,
    /// How long the client waits before reading (so the server's send queue fills).
    client_read_delay: Duration,
}

impl Scenario {
    /// `bytes` each way over IPv4 with the default options and buffers; the socket moves
    /// once a quarter of each stream went through.
    fn streaming(tag: &'static str, bytes: u64) -> Scenario {
        Scenario {
            tag,
            v6: false,
            sysctls: &[],
            client_bytes: bytes,
            server_bytes: bytes,
            big_buffers: false,
            before: BeforeDump::Streaming,
            client_read_delay: Duration::ZERO,
        }
    }

    /// `bytes` each way over IPv4 with big server buffers; the client reads after 2 s, and
    /// the socket moves once both its queues hold at least `queued` bytes.
    fn full_queues(tag: &'static str, bytes: u64, queued: usize) -> Scenario {
        Scenario {
            big_buffers: true,
            before: BeforeDump::FillQueues(queued),
            client_read_delay: Duration::from_secs(2),
            ..Scenario::streaming(tag, bytes)
        }
    }
}

/// Streams both ways, moves the server socket mid-stream, finishes, and checks every byte.
fn run_scenario(sc: Scenario) -> ConnectionSnapshot {
    let (_lab, client, server) = lab(sc.tag, sc.sysctls);
    if sc.big_buffers {
        big_server_buffers(&client, &server);
    }
    let addr = service_addr(sc.v6, 7100);
    let plan = ClientPlan {
        read_delay: sc.client_read_delay,
        ..ClientPlan::sending(addr, sc.client_bytes)
    };
    let (_listener, client_thread, mut s) = connect_client(&client, &server, plan);
    let mut app = ServerApp::new(sc.server_bytes, 0);
    match sc.before {
        BeforeDump::Streaming => {
            let (client_quarter, server_quarter) = (sc.client_bytes / 4, sc.server_bytes / 4);
            app.run_until(&mut s, true, true, |a| {
                a.received >= client_quarter && a.sent >= server_quarter
            });
        }
        BeforeDump::FillQueues(min) => {
            let some = sc.client_bytes / 16;
            app.run_until(&mut s, true, true, |a| a.received >= some);
            wait_for_dump(&mut app, &mut s, false, true, |d| {
                d.receive.bytes.len() >= min && d.send.bytes.len() >= min
            });
        }
    }
    let (snapshot, mut s) = move_socket(&server, s);
    finish_and_check(&mut app, &mut s, client_thread, sc.client_bytes);
    snapshot
}

#[test]
fn a_streaming_connection_survives_dump_close_and_restore() {
    if !kernel_tests_enabled("restore_repair::streaming") {
        return;
    }
    let snapshot = run_scenario(Scenario::streaming("rr-basic", 16 << 20));
    assert_eq!(snapshot.state, TcpState::Established);
    assert!(
        snapshot.options.timestamps
            && snapshot.options.sack
            && snapshot.options.window_scale.is_some()
    );
}

/// A restored socket leaves the service port as reusable as an accepted one: the service can
/// listen on it again (a new listener after a failover, or a restart of the daemon), and a
/// new client gets through while the restored connection carries on.
#[test]
fn a_listener_binds_the_service_port_after_a_restore() {
    if !kernel_tests_enabled("restore_repair::listener_after_restore") {
        return;
    }
    for (tag, v6) in [("rr-relisten4", false), ("rr-relisten6", true)] {
        let (_lab, client, server) = lab(tag, &[]);
        let addr = service_addr(v6, 7111);
        let plan = ClientPlan::sending(addr, 1 << 20);
        let (listener, client_thread, mut s) = connect_client(&client, &server, plan);
        // The old listener goes away (as when the daemon restarts, or on a backup that never
        // listened): only the connection holds the port when it is restored.
        drop(listener);
        let mut app = ServerApp::new(1 << 20, 0);
        app.run_until(&mut s, true, true, |a| a.received >= 256 << 10);
        let (_, mut s) = move_socket(&server, s);
        let relisten = server
            .run(move || TcpListener::bind(addr))
            .expect("in server")
            .unwrap_or_else(|e| panic!("{tag}: a listener on {addr} after the restore: {e}"));
        let newcomer = client
            .spawn(move || -> io::Result<Vec<u8>> {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut greeting = vec![0u8; 5];
                c.read_exact(&mut greeting)?;
                Ok(greeting)
            })
            .expect("second client");
        let mut fresh = accept(&relisten);
        fresh.set_nonblocking(false).expect("blocking");
        fresh.write_all(b"hello").expect("greet the new client");
        assert_eq!(
            newcomer
                .join()
                .expect("second client thread")
                .expect("second client"),
            b"hello"
        );
        finish_and_check(&mut app, &mut s, client_thread, 1 << 20);
    }
}

#[test]
fn megabytes_queued_in_both_directions_are_restored() {
    if !kernel_tests_enabled("restore_repair::big_queues") {
        return;
    }
    let snapshot = run_scenario(Scenario::full_queues("rr-bigq", 24 << 20, 1 << 20));
    assert!(snapshot.receive.bytes.len() >= 1 << 20 && snapshot.send.bytes.len() >= 1 << 20);
    assert!(
        snapshot.send.unsent > 0,
        "expected unsent bytes behind the client's small window"
    );
}

#[test]
fn options_off_timestamps_window_scaling_sack() {
    if !kernel_tests_enabled("restore_repair::options_off") {
        return;
    }
    let snapshot = run_scenario(Scenario {
        sysctls: &["net.ipv4.tcp_timestamps=0"],
        ..Scenario::streaming("rr-nots", 2 << 20)
    });
    assert!(!snapshot.options.timestamps && snapshot.clock.is_none());
    let snapshot = run_scenario(Scenario {
        sysctls: &["net.ipv4.tcp_window_scaling=0"],
        ..Scenario::streaming("rr-nows", 1 << 20)
    });
    assert_eq!(snapshot.options.window_scale, None);
    let snapshot = run_scenario(Scenario {
        sysctls: &["net.ipv4.tcp_sack=0"],
        ..Scenario::streaming("rr-nosack", 2 << 20)
    });
    assert!(!snapshot.options.sack);
    let snapshot = run_scenario(Scenario {
        v6: true,
        sysctls: &[
            "net.ipv4.tcp_sack=0",
            "net.ipv4.tcp_timestamps=0",
            "net.ipv4.tcp_window_scaling=0",
        ],
        ..Scenario::full_queues("rr-none", 1 << 20, 16 << 10)
    });
    assert!(
        !snapshot.options.sack
            && !snapshot.options.timestamps
            && snapshot.options.window_scale.is_none()
    );
}

#[test]
fn ipv6_connection_with_full_queues_is_restored() {
    if !kernel_tests_enabled("restore_repair::ipv6") {
        return;
    }
    let snapshot = run_scenario(Scenario {
        v6: true,
        ..Scenario::full_queues("rr-v6", 8 << 20, 512 << 10)
    });
    assert!(snapshot.id.server.is_ipv6());
}

#[test]
fn client_half_closed_before_the_dump() {
    if !kernel_tests_enabled("restore_repair::client_half_closed") {
        return;
    }
    for (tag, v6) in [("rr-chc4", false), ("rr-chc6", true)] {
        let (_lab, client, server) = lab(tag, &[]);
        big_server_buffers(&client, &server);
        let addr = service_addr(v6, 7101);
        let client_bytes = 300_000;
        let plan = ClientPlan::sending(addr, client_bytes);
        let (_listener, client_thread, mut s) = connect_client(&client, &server, plan);
        let mut app = ServerApp::new(2 << 20, 0);
        app.run_until(&mut s, true, true, |a| a.received >= 100_000);
        // The client sends the rest and its FIN; the server leaves them unread.
        let before = wait_for_dump(&mut app, &mut s, false, false, |d| {
            d.state == TcpState::CloseWait
        });
        assert!(before.receive.fin && !before.receive.bytes.is_empty());
        let (snapshot, mut s) = move_socket(&server, s);
        assert_eq!(snapshot.state, TcpState::CloseWait);
        finish_and_check(&mut app, &mut s, client_thread, client_bytes);
    }
}

#[test]
fn server_half_closed_before_the_dump() {
    if !kernel_tests_enabled("restore_repair::server_half_closed") {
        return;
    }
    // (tag, server bytes, client bytes, client read delay, expected state at the dump)
    let cases = [
        (
            "rr-shc2",
            200_000u64,
            2u64 << 20,
            Duration::ZERO,
            TcpState::FinWait2,
        ),
        (
            "rr-shc1",
            3 << 20,
            16 << 20,
            Duration::from_secs(2),
            TcpState::FinWait1,
        ),
        (
            "rr-shla",
            3 << 20,
            100_000,
            Duration::from_secs(2),
            TcpState::LastAck,
        ),
    ];
    for (tag, server_bytes, client_bytes, read_delay, expected) in cases {
        let (_lab, client, server) = lab(tag, &[]);
        big_server_buffers(&client, &server);
        let addr = service_addr(false, 7102);
        let plan = ClientPlan {
            read_delay,
            ..ClientPlan::sending(addr, client_bytes)
        };
        let (_listener, client_thread, mut s) = connect_client(&client, &server, plan);
        let mut app = ServerApp::new(server_bytes, 0);
        // The server writes everything and its FIN; it reads only a little.
        app.run_until(&mut s, false, true, |a| a.shut_write);
        app.run_until(&mut s, true, false, |a| a.received >= 10_000);
        wait_for_dump(&mut app, &mut s, false, false, |d| d.state == expected);
        let (snapshot, mut s) = move_socket(&server, s);
        assert_eq!(snapshot.state, expected);
        if expected != TcpState::FinWait2 {
            assert!(
                snapshot.send.fin && snapshot.send.unsent > 0,
                "FIN queued behind unsent bytes"
            );
        }
        finish_and_check(&mut app, &mut s, client_thread, client_bytes);
    }
}

#[test]
fn a_thousand_connections_are_dumped_and_restored_at_once() {
    if !kernel_tests_enabled("restore_repair::thousand") {
        return;
    }
    const CONNECTIONS: usize = 1000;
    const PER_DIRECTION: u64 = 8192;
    let (_lab, client, server) = lab("rr-1k", &["net.core.somaxconn=4096"]);
    let addr = service_addr(false, 7103);
    let listener = server
        .run(move || {
            let l = TcpListener::bind(addr).expect("bind");
            l.set_nonblocking(true).expect("nonblocking");
            l
        })
        .expect("in server");
    // The client connects every connection and writes half its stream first.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let client_thread = client
        .spawn(move || -> Result<u64, String> {
            let mut streams = Vec::with_capacity(CONNECTIONS);
            for i in 0..CONNECTIONS {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .map_err(|e| format!("connect {i}: {e}"))?;
                s.set_read_timeout(Some(DEADLINE))
                    .map_err(|e| e.to_string())?;
                s.set_write_timeout(Some(DEADLINE))
                    .map_err(|e| e.to_string())?;
                let stream = stream_of(s.local_addr().map_err(|e| e.to_string())?);
                let mut buf = vec![0u8; PER_DIRECTION as usize / 2];
                fill(stream * 2, 0, &mut buf);
                s.write_all(&buf).map_err(|e| format!("write {i}: {e}"))?;
                streams.push(s);
            }
            let _ = ready_tx.send(());
            go_rx
                .recv_timeout(DEADLINE)
                .map_err(|e| format!("go: {e}"))?;
            let mut total = 0;
            for (i, s) in streams.iter_mut().enumerate() {
                let stream = stream_of(s.local_addr().map_err(|e| e.to_string())?);
                let mut buf = vec![0u8; PER_DIRECTION as usize / 2];
                fill(stream * 2, PER_DIRECTION / 2, &mut buf);
                s.write_all(&buf).map_err(|e| format!("write {i}: {e}"))?;
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown {i}: {e}"))?;
                let mut got = Vec::new();
                s.read_to_end(&mut got)
                    .map_err(|e| format!("read {i}: {e}"))?;
                if got.len() as u64 != PER_DIRECTION
                    || first_mismatch(stream * 2 + 1, 0, &got).is_some()
                {
                    return Err(format!(
                        "connection {i}: {} bytes, mismatch {:?}",
                        got.len(),
                        first_mismatch(stream * 2 + 1, 0, &got)
                    ));
                }
                total += got.len() as u64;
            }
            Ok(total)
        })
        .expect("client");
    let mut conns: Vec<(TcpStream, ServerApp)> = Vec::with_capacity(CONNECTIONS);
    let deadline = Instant::now() + DEADLINE;
    while conns.len() < CONNECTIONS {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(true).expect("nonblocking");
                conns.push((s, ServerApp::new(PER_DIRECTION, stream_of(peer))));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "only {} connections accepted",
                    conns.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    ready_rx.recv_timeout(DEADLINE).expect("client ready");
    // Each server reads a quarter of its client's stream and writes half of its own, so both
    // queues hold bytes at the dump.
    let mut ordered: Vec<(SocketAddr, TcpStream, ServerApp)> = Vec::new();
    for (mut s, mut app) in conns {
        let peer = s.peer_addr().expect("peer");
        let mut buf = vec![0u8; PER_DIRECTION as usize / 4];
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.read_exact(&mut buf).expect("read");
        assert_eq!(first_mismatch(app.stream * 2, 0, &buf), None);
        app.received = buf.len() as u64;
        let mut out = vec![0u8; PER_DIRECTION as usize / 2];
        fill(app.stream * 2 + 1, 0, &mut out);
        s.write_all(&out).expect("write");
        app.sent = out.len() as u64;
        s.set_nonblocking(true).expect("nonblocking");
        ordered.push((peer, s, app));
    }
    let lock = network_lock(&server, 7103);
    let frozen: Vec<(FrozenConnection, ServerApp)> = ordered
        .into_iter()
        .map(|(_, s, app)| (FrozenConnection::freeze(s).expect("freeze"), app))
        .collect();
    let snapshots: Vec<(ConnectionSnapshot, ServerApp)> = frozen
        .into_iter()
        .map(|(f, app)| {
            let snapshot = f.dump().expect("dump");
            f.close().expect("close");
            (snapshot, app)
        })
        .collect();
    let options = RestoreOptions::at(monotonic_now());
    let restored: Vec<(TcpStream, ServerApp)> = server
        .run(|| {
            snapshots
                .into_iter()
                .map(|(snapshot, app)| {
                    let stream = restore_connection(&snapshot, &options)
                        .expect("restore")
                        .into_stream();
                    stream.set_nonblocking(true).expect("nonblocking");
                    (stream, app)
                })
                .collect()
        })
        .expect("in server");
    assert_eq!(restored.len(), CONNECTIONS);
    drop(lock);
    go_tx.send(()).expect("go");
    let mut restored = restored;
    let deadline = Instant::now() + DEADLINE;
    while !restored.iter().all(|(_, a)| a.finished()) {
        assert!(Instant::now() < deadline, "server apps stuck");
        let mut progress = false;
        for (s, app) in restored.iter_mut() {
            progress |= app.step(s, true, true).expect("server I/O");
        }
        if !progress {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for (_, app) in &restored {
        assert_eq!(app.mismatch, None);
        assert_eq!(app.received, PER_DIRECTION);
    }
    let total = client_thread
        .join()
        .expect("client thread")
        .expect("client");
    assert_eq!(total, PER_DIRECTION * CONNECTIONS as u64);
}

/// The stream id of a connection of the thousand-connection test, which both sides derive
/// from the client's port (distinct streams catch bytes delivered to the wrong connection).
fn stream_of(client: SocketAddr) -> u8 {
    (client.port() % 100) as u8
}

/// Reads a `TcpExt` counter of a namespace.
fn tcp_ext_counter(ns: &Netns, name: &str) -> u64 {
    let text = ns.exec("cat", &["/proc/net/netstat"]).expect("netstat");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0], lines[1]);
    let index = names
        .split_whitespace()
        .position(|n| n == name)
        .expect("counter name");
    values
        .split_whitespace()
        .nth(index)
        .expect("value")
        .parse()
        .expect("number")
}

/// Streams server → client until the client has `target` bytes; returns the app.
fn one_way_connection(
    client: &Netns,
    server: &Netns,
    port: u16,
) -> (JoinHandle<ClientReport>, TcpStream, ServerApp) {
    let addr = service_addr(false, port);
    one_way_connection_to(client, server, addr)
}

/// A connection to `addr` on which the server sends 2 MiB and the client nothing.
fn one_way_connection_to(
    client: &Netns,
    server: &Netns,
    addr: SocketAddr,
) -> (JoinHandle<ClientReport>, TcpStream, ServerApp) {
    let plan = ClientPlan::sending(addr, 0);
    let (_listener, client_thread, s) = connect_client(client, server, plan);
    (client_thread, s, ServerApp::new(2 << 20, 0))
}

#[test]
fn a_timestamp_clock_running_backwards_is_refused_or_corrected_and_paws_matters() {
    if !kernel_tests_enabled("restore_repair::clock") {
        return;
    }
    let (_lab, client, server) = lab("rr-clock", &[]);

    // 1. The snapshot was observed "after" the restore's now: refused, then corrected.
    let (client_thread, mut s, mut app) = one_way_connection(&client, &server, 7104);
    app.run_until(&mut s, true, true, |a| a.sent >= 512 << 10);
    let lock = network_lock(&server, 7104);
    let frozen = FrozenConnection::freeze(s).expect("freeze");
    let mut snapshot = frozen.dump().expect("dump");
    frozen.close().expect("close");
    let now = monotonic_now();
    let clock = snapshot.clock.as_mut().expect("timestamps on");
    clock.observed_at = now + Duration::from_secs(3600);
    let refused = restore_in(&server, &snapshot, RestoreOptions::at(now));
    assert!(
        matches!(refused, Err(RestoreError::ClockRunsBackwards { .. })),
        "{refused:?}"
    );
    let corrected = RestoreOptions::at(now).with_clock(ClockPolicy::Correct {
        margin: Duration::from_secs(1),
    });
    let mut s = restore_then_unlock(&server, &snapshot, corrected, lock);
    finish_and_check(&mut app, &mut s, client_thread, 0);

    // 2. PAWS is real: a clock that does run backwards makes the client drop the data.
    let (_client_thread, mut s, mut app) = one_way_connection(&client, &server, 7105);
    app.run_until(&mut s, true, true, |a| a.sent >= 512 << 10);
    let lock = network_lock(&server, 7105);
    let frozen = FrozenConnection::freeze(s).expect("freeze");
    let mut snapshot = frozen.dump().expect("dump");
    frozen.close().expect("close");
    let paws_before = tcp_ext_counter(&client, "PAWSEstab");
    let clock = snapshot.clock.as_mut().expect("timestamps on");
    clock.server_tsval = clock.server_tsval.wrapping_sub(1_000_000);
    let mut s = restore_then_unlock(
        &server,
        &snapshot,
        RestoreOptions::at(monotonic_now()),
        lock,
    );
    let deadline = Instant::now() + DEADLINE;
    while tcp_ext_counter(&client, "PAWSEstab") == paws_before {
        assert!(
            Instant::now() < deadline,
            "the client never dropped a segment for PAWS"
        );
        let _ = app.step(&mut s, true, true);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client is left waiting; dropping the lab ends it (its read times out).
    let _ = cttm_restore::repair::close_in_repair(s);
}

#[test]
fn bytes_sent_but_never_received_are_retransmitted_after_restore() {
    if !kernel_tests_enabled("restore_repair::hand_built") {
        return;
    }
    let (_lab, client, server) = lab("rr-hand", &[]);
    let (client_thread, mut s, mut app) = one_way_connection(&client, &server, 7106);
    app.to_send = 1 << 20;
    app.run_until(&mut s, true, true, |a| a.sent >= 300_000);
    // Quiescent: everything sent has been acknowledged.
    let deadline = Instant::now() + DEADLINE;
    let frozen = loop {
        let frozen = FrozenConnection::freeze(s).expect("freeze");
        let snapshot = frozen.dump().expect("dump");
        if snapshot.send.bytes.is_empty() {
            break frozen;
        }
        s = frozen.thaw().expect("thaw");
        assert!(Instant::now() < deadline, "send queue never drained");
        std::thread::sleep(Duration::from_millis(10));
    };
    let lock = network_lock(&server, 7106);
    let mut snapshot = frozen.dump().expect("dump");
    frozen.close().expect("close");
    // The server "sent" 100 000 more bytes the client never got, and has 50 000 unsent.
    let extra = 150_000usize;
    let mut bytes = vec![0u8; extra];
    fill(1, app.sent, &mut bytes);
    snapshot.send.bytes = bytes;
    snapshot.send.unsent = 50_000;
    app.sent += extra as u64;
    let mut s = restore_then_unlock(
        &server,
        &snapshot,
        RestoreOptions::at(monotonic_now()),
        lock,
    );
    finish_and_check(&mut app, &mut s, client_thread, 0);
}

#[test]
fn unrestorable_snapshots_are_refused_before_any_side_effect() {
    if !kernel_tests_enabled("restore_repair::refused") {
        return;
    }
    let (_lab, client, server) = lab("rr-refuse", &[]);
    let (client_thread, mut s, mut app) = one_way_connection(&client, &server, 7107);
    app.to_send = 256 << 10;
    app.run_until(&mut s, true, true, |a| a.sent >= 64 << 10);
    let frozen = FrozenConnection::freeze(s).expect("freeze");
    let snapshot = frozen.dump().expect("dump");
    let mut mid_stream = snapshot.clone();
    mid_stream.restorability =
        cttm_core::Restorability::Unsafe(cttm_core::event::UnsafeReason::MidStream);
    let e = restore_in(&server, &mid_stream, RestoreOptions::at(monotonic_now())).unwrap_err();
    assert!(matches!(e, RestoreError::NotRestorable { .. }), "{e}");
    // The 4-tuple is still held by the frozen socket: the restore says so.
    let e = restore_in(&server, &snapshot, RestoreOptions::at(monotonic_now()));
    // In repair mode the kernel forces port reuse (SK_FORCE_REUSE), so bind succeeds and the
    // established-hash collision shows at connect.
    assert!(
        matches!(
            e,
            Err(RestoreError::AddressInUse {
                step: "connect",
                ..
            })
        ),
        "{e:?}"
    );
    // Thawed, the original socket carries on: the refusals left nothing behind.
    let mut s = frozen.thaw().expect("thaw");
    finish_and_check(&mut app, &mut s, client_thread, 0);
}

/// On this kernel a restore needs the service address to be local. Without free bind the
/// bind refuses it; with free bind an IPv4 restore fails at the repair-mode connect (the route
/// lookup refuses a non-local source: ENETUNREACH), and an IPv6 one, whose connect succeeds,
/// at the check before anything is sent. The error says to claim the address first, and the
/// failed attempts leave nothing behind.
#[test]
fn restoring_before_the_address_is_claimed_tells_to_claim_it() {
    if !kernel_tests_enabled("restore_repair::address_not_local") {
        return;
    }
    let (mut lab, client, server) = lab("rr-notlocal", &[]);
    let backup = lab
        .add_host("b", &["198.18.0.3/24", "2001:db8::3/64"])
        .expect("backup host");
    for addr in [service_addr(false, 7120), service_addr(true, 7121)] {
        let (client_thread, mut s, mut app) = one_way_connection_to(&client, &server, addr);
        app.run_until(&mut s, true, true, |a| a.sent >= 64 << 10);
        let frozen = FrozenConnection::freeze(s).expect("freeze");
        let snapshot = frozen.dump().expect("dump");
        for free_bind in [true, false] {
            let options = RestoreOptions {
                free_bind,
                ..RestoreOptions::at(monotonic_now())
            };
            let e = restore_in(&backup, &snapshot, options)
                .expect_err("the service address is not local on the backup");
            let expected_step = match (free_bind, addr.is_ipv6()) {
                (false, _) => "bind",
                (true, false) => "connect",
                (true, true) => "local address check",
            };
            assert!(
                matches!(e, RestoreError::AddressNotLocal { address, step, .. }
                    if address == addr.ip() && step == expected_step),
                "{addr} free_bind {free_bind}: {e:?}"
            );
            assert!(e.to_string().contains("claim"), "{e}");
        }
        // Nothing reached the client: thawed, the original connection finishes intact.
        let mut s = frozen.thaw().expect("thaw");
        finish_and_check(&mut app, &mut s, client_thread, 0);
    }
}

#[test]
fn both_sides_closing_simultaneously_is_restored() {
    if !kernel_tests_enabled("restore_repair::closing") {
        return;
    }
    let (_lab, client, server) = lab("rr-closing", &[]);
    let port = 7108;
    let addr = service_addr(false, port);
    // Small enough to go out with the FIN in the client's initial window, unacknowledged.
    let client_bytes = 5_000;
    let plan = ClientPlan {
        write_delay: Duration::from_secs(1),
        ..ClientPlan::sending(addr, client_bytes)
    };
    let (_listener, client_thread, mut s) = connect_client(&client, &server, plan);
    // Nothing the server sends reaches the client: its FIN goes first but stays unacknowledged,
    // and the client's FIN arrives after it (RFC 9293 §3.6, simultaneous close: CLOSING).
    let lossy = output_drop(&server, port);
    let mut app = ServerApp::new(30_000, 0);
    app.run_until(&mut s, false, true, |a| a.shut_write);
    let snapshot = wait_for_dump(&mut app, &mut s, false, false, |d| {
        d.state == TcpState::Closing
    });
    assert!(snapshot.send.fin && snapshot.receive.fin);
    let (snapshot, mut s) = move_socket(&server, s);
    assert_eq!(snapshot.state, TcpState::Closing);
    drop(lossy);
    finish_and_check(&mut app, &mut s, client_thread, client_bytes);
}

/// Set in the child process of [`missing_cap_net_admin_is_reported_as_such`].
const NO_NET_ADMIN_CHILD: &str = "CTTM_RESTORE_REPAIR_NO_NET_ADMIN_CHILD";

/// The checks that run without CAP_NET_ADMIN (in a child process started by `setpriv`).
fn checks_without_net_admin() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let e = dump_connection(&server).expect_err("dump must fail without CAP_NET_ADMIN");
    assert!(
        matches!(e, cttm_restore::repair::DumpError::PermissionDenied),
        "{e:?}"
    );
    assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    // A failed freeze hands the stream back, still working.
    let failed = FrozenConnection::freeze(server).expect_err("freeze must fail");
    let mut server = failed.stream;
    server.write_all(b"still here").expect("write");
    let mut buf = [0u8; 10];
    client.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"still here");
    let snapshot = ConnectionSnapshot {
        id: cttm_core::ConnectionId {
            client: client.local_addr().expect("addr"),
            server: "127.0.0.1:9".parse().unwrap(),
        },
        state: TcpState::Established,
        restorability: cttm_core::Restorability::Restorable,
        client_isn: cttm_core::SeqNumber(1),
        server_isn: cttm_core::SeqNumber(1),
        options: cttm_core::snapshot::NegotiatedOptions {
            mss: 1460,
            window_scale: None,
            sack: false,
            timestamps: false,
        },
        send: cttm_core::snapshot::SendQueue {
            una: cttm_core::SeqNumber(2),
            bytes: Vec::new(),
            unsent: 0,
            fin: false,
        },
        receive: cttm_core::snapshot::ReceiveQueue {
            next: cttm_core::SeqNumber(2),
            bytes: Vec::new(),
            fin: false,
        },
        window: cttm_core::snapshot::RepairWindow::default(),
        clock: None,
        updated_at: cttm_core::Instant::ZERO,
    };
    let e = restore_connection(&snapshot, &RestoreOptions::at(monotonic_now()))
        .expect_err("restore must fail without CAP_NET_ADMIN");
    assert!(matches!(e, RestoreError::PermissionDenied), "{e:?}");
    println!("checks without CAP_NET_ADMIN: ok");
}

#[test]
fn missing_cap_net_admin_is_reported_as_such() {
    if std::env::var_os(NO_NET_ADMIN_CHILD).is_some() {
        checks_without_net_admin();
        return;
    }
    if !kernel_tests_enabled("restore_repair::no_net_admin") {
        return;
    }
    let (_lab, _client, server) = lab("rr-eperm", &[]);
    let exe = std::env::current_exe().expect("test binary");
    // The test binary again, inside the server namespace, with CAP_NET_ADMIN out of its
    // bounding set (so root loses it at exec).
    let out = server
        .command("setpriv")
        .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"])
        .arg(exe)
        .args([
            "--exact",
            "missing_cap_net_admin_is_reported_as_such",
            "--nocapture",
        ])
        .env(NO_NET_ADMIN_CHILD, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("checks without CAP_NET_ADMIN: ok"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
