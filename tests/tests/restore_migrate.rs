//! Real-kernel tests of planned live migration: a client namespace, host A and host B on one
//! bridge; the service address and every established connection move from A to B in the
//! middle of a stream. The client is plain `std::net::TcpStream` code that knows nothing of
//! the move: it must see no error, no reset, and every byte both ways exactly once, in order.
//!
//! The service is an echo server that checks what it receives: each connection carries a
//! pseudo-random byte stream (a function of the connection number and the offset) from the
//! client, which the server verifies and echoes back, and the client verifies the echo. A
//! lost, duplicated or reordered byte in either direction breaks one of the two checks.

use cttm_core::ConnectionId;
use cttm_core::snapshot::NegotiatedOptions;
use cttm_restore::RestoreOptions;
use cttm_restore::migrate::{
    ChannelError, IncomingMigration, MemoryChannel, MigrateError, MigrationFailure,
    MigrationMessage, MigrationReport, OutgoingConnection, RecoveredConnections, ServiceAddress,
    SnapshotChannel, TcpChannel, migrate_in, migrate_in_for, migrate_out,
};
use cttm_restore::repair::{monotonic_now, socket_tcp_info};
use cttm_restore::takeover::{AnnounceConfig, NetlinkTakeover};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every test finishes well within this; loops give up (and fail) after it.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// The byte at `offset` of connection `conn`'s stream (splitmix64 of the 8-byte block).
fn pattern_byte(conn: u32, offset: u64) -> u8 {
    let mut x = (offset / 8) ^ (u64::from(conn) << 40) ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> ((offset % 8) * 8)) as u8
}

fn fill_pattern(conn: u32, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(conn, offset + i as u64);
    }
}

fn check_pattern(conn: u32, offset: u64, data: &[u8], who: &str) -> Result<(), String> {
    for (i, b) in data.iter().enumerate() {
        let expected = pattern_byte(conn, offset + i as u64);
        if *b != expected {
            return Err(format!(
                "{who}: connection {conn} byte {} is {b:#04x}, expected {expected:#04x}",
                offset + i as u64
            ));
        }
    }
    Ok(())
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

/// The server's side of one connection: what it has verified and what it still has to echo.
struct ServerConn {
    conn: u32,
    stream: TcpStream,
    received: u64,
    pending: Vec<u8>,
    eof: bool,
    shut: bool,
}

impl ServerConn {
    /// The application state carried across the migration: conn, received, eof, pending.
    fn encode_state(&self) -> Vec<u8> {
        let mut state = Vec::with_capacity(13 + self.pending.len());
        state.extend_from_slice(&self.conn.to_be_bytes());
        state.extend_from_slice(&self.received.to_be_bytes());
        state.push(u8::from(self.eof));
        state.extend_from_slice(&self.pending);
        state
    }

    fn decode(stream: TcpStream, state: &[u8]) -> ServerConn {
        assert!(state.len() >= 13, "application state too short");
        let conn = u32::from_be_bytes(state[0..4].try_into().expect("4 bytes"));
        let received = u64::from_be_bytes(state[4..12].try_into().expect("8 bytes"));
        ServerConn {
            conn,
            stream,
            received,
            eof: state[12] == 1,
            pending: state[13..].to_vec(),
            shut: false,
        }
    }
}

/// Shared counters the test watches to know when the stream is where it wants it.
#[derive(Default)]
struct ServerProgress {
    received: AtomicU64,
    eofs: AtomicU64,
}

/// Echo loop over non-blocking sockets until `stop` (returns the connections to migrate) or,
/// with `finish`, until every client has closed and got its echo (then closes its side).
fn serve(
    mut conns: Vec<ServerConn>,
    max_pending: usize,
    finish: bool,
    stop: &AtomicBool,
    progress: &ServerProgress,
    deadline: Instant,
) -> Result<Vec<ServerConn>, String> {
    for c in &conns {
        c.stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(conns);
        }
        if Instant::now() > deadline {
            return Err("server: deadline passed".into());
        }
        let mut progressed = false;
        let mut all_done = true;
        for c in &mut conns {
            if !c.pending.is_empty() {
                match c.stream.write(&c.pending) {
                    Ok(n) => {
                        c.pending.drain(..n);
                        progressed |= n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(format!("server: write on connection {}: {e}", c.conn)),
                }
            }
            if !c.eof && c.pending.len() < max_pending {
                let room = (max_pending - c.pending.len()).min(buf.len());
                match c.stream.read(&mut buf[..room]) {
                    Ok(0) => {
                        c.eof = true;
                        progress.eofs.fetch_add(1, Ordering::AcqRel);
                        progressed = true;
                    }
                    Ok(n) => {
                        check_pattern(c.conn, c.received, &buf[..n], "server")?;
                        c.received += n as u64;
                        c.pending.extend_from_slice(&buf[..n]);
                        progress.received.fetch_add(n as u64, Ordering::AcqRel);
                        progressed = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(format!("server: read on connection {}: {e}", c.conn)),
                }
            }
            if finish && c.eof && c.pending.is_empty() && !c.shut {
                c.stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("server: shutdown: {e}"))?;
                c.shut = true;
            }
            all_done &= c.shut;
        }
        if finish && all_done {
            return Ok(conns);
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The client's side of one connection.
struct ClientConn {
    conn: u32,
    stream: TcpStream,
    sent: u64,
    received: u64,
    fin_sent: bool,
    eof: bool,
}

/// How the client behaves around the migration.
#[derive(Clone, Copy)]
struct ClientPlan {
    /// Bytes each connection sends (then it closes its sending side).
    total: u64,
    /// Until `resume` is set, send at most this many bytes.
    write_gate: Option<u64>,
    /// Until `resume` is set, read at most this many bytes (then buffers fill up on both sides).
    read_gate: Option<u64>,
}

/// Plain blocking-free client code: sends its stream, reads and checks the echo, until every
/// connection has got its whole echo and the server's FIN. Any socket error fails it.
fn run_clients(
    mut conns: Vec<ClientConn>,
    plan: ClientPlan,
    resume: &AtomicBool,
    deadline: Instant,
) -> Result<Vec<(u64, u64)>, String> {
    for c in &conns {
        c.stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            let done = conns.iter().filter(|c| c.eof).count();
            // What each unfinished connection reached, and its socket's TCP state, so that a
            // stall can be told apart (no data, no window, lost retransmissions).
            let stalled: Vec<String> = conns
                .iter()
                .filter(|c| !c.eof)
                .map(|c| {
                    format!(
                        "connection {}: sent {} received {} fin_sent {} tcp_info {:?}",
                        c.conn,
                        c.sent,
                        c.received,
                        c.fin_sent,
                        socket_tcp_info(&c.stream)
                    )
                })
                .collect();
            return Err(format!(
                "client: deadline passed with {done}/{} connections complete; {}",
                conns.len(),
                stalled.join("; ")
            ));
        }
        let resumed = resume.load(Ordering::Acquire);
        let mut progressed = false;
        for c in &mut conns {
            let limit = match plan.write_gate {
                Some(gate) if !resumed => gate.min(plan.total),
                _ => plan.total,
            };
            if c.sent < limit {
                let n = ((limit - c.sent) as usize).min(buf.len());
                fill_pattern(c.conn, c.sent, &mut buf[..n]);
                match c.stream.write(&buf[..n]) {
                    Ok(n) => {
                        c.sent += n as u64;
                        progressed |= n > 0;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(format!("client: write on connection {}: {e}", c.conn)),
                }
            } else if c.sent == plan.total && !c.fin_sent {
                c.stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("client: shutdown: {e}"))?;
                c.fin_sent = true;
            }
            let read_limit = match plan.read_gate {
                Some(gate) if !resumed => (gate.saturating_sub(c.received) as usize).min(buf.len()),
                _ => buf.len(),
            };
            if !c.eof && read_limit > 0 {
                match c.stream.read(&mut buf[..read_limit]) {
                    Ok(0) => {
                        if c.received != plan.total {
                            return Err(format!(
                                "client: connection {} closed after {} of {} echoed bytes",
                                c.conn, c.received, plan.total
                            ));
                        }
                        c.eof = true;
                        progressed = true;
                    }
                    Ok(n) => {
                        check_pattern(c.conn, c.received, &buf[..n], "client")?;
                        c.received += n as u64;
                        progressed = true;
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(format!("client: read on connection {}: {e}", c.conn)),
                }
            }
        }
        if conns.iter().all(|c| c.eof) {
            return Ok(conns.iter().map(|c| (c.sent, c.received)).collect());
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits, bounded, until `done` holds.
fn wait_until(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000_000 {
        if done() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("gave up waiting for {what}");
}

/// Which channel carries the snapshots from A to B.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Memory,
    /// A TCP control connection from A to B across the bridge (postcard frames).
    Tcp,
}

struct Scenario {
    tag: &'static str,
    /// Per-namespace sysctls (`name=value`) set on the client and on both hosts.
    sysctls: &'static [&'static str],
    ipv6: bool,
    connections: u32,
    plan: ClientPlan,
    /// The server stops reading when this much echo is waiting (lets buffers fill up).
    max_pending: usize,
    transport: Transport,
    /// What must hold before the migration starts.
    ready: Ready,
    /// B refuses (it is configured for another address): A must carry on by itself.
    refused_by_destination: bool,
}

#[derive(Clone, Copy)]
enum Ready {
    /// The server has verified this many bytes, summed over all connections.
    Received(u64),
    /// The server has verified this many bytes and then nothing more for a while (buffers full).
    ReceivedAndStalled(u64),
    /// Every client has half-closed its connection (the server saw EOF everywhere).
    AllHalfClosed,
}

struct Outcome {
    report: MigrationReport,
    per_connection: Vec<(u64, u64)>,
    /// The options of every snapshot A sent (empty when B refused).
    snapshot_options: Vec<NegotiatedOptions>,
}

/// A's end of the channel, noting the options of every snapshot it carries.
struct RecordingChannel {
    inner: Box<dyn SnapshotChannel + Send>,
    snapshots: Vec<(ConnectionId, NegotiatedOptions)>,
}

impl SnapshotChannel for RecordingChannel {
    fn send(&mut self, message: MigrationMessage) -> Result<(), ChannelError> {
        if let MigrationMessage::Connection { snapshot, .. } = &message {
            self.snapshots.push((snapshot.id, snapshot.options));
        }
        self.inner.send(message)
    }

    fn receive(&mut self) -> Result<MigrationMessage, ChannelError> {
        self.inner.receive()
    }
}

fn run_scenario(s: Scenario) -> Outcome {
    let deadline = Instant::now() + TEST_DEADLINE;
    let (client_ip, a_ip, b_ip, vip, prefix_len) = if s.ipv6 {
        (
            "2001:db8::1/64",
            "2001:db8::2/64",
            "2001:db8::3/64",
            "2001:db8::10",
            64,
        )
    } else {
        (
            "198.18.0.1/24",
            "198.18.0.2/24",
            "198.18.0.3/24",
            "198.18.0.10",
            24,
        )
    };
    let vip_cidr = format!("{vip}/{prefix_len}");
    let mut lab = Lab::new(s.tag).expect("lab");
    let client = lab.add_host("client", &[client_ip]).expect("client");
    let host_a = lab.add_host("a", &[a_ip]).expect("host a");
    // The service address on A, marked deprecated for IPv6 (preferred lifetime 0) so that A's
    // own outgoing connections (the control channel to B) never pick it as their source: it
    // leaves with the migration. IPv4 picks the primary address anyway.
    let mut add_vip = vec![
        if s.ipv6 { "-6" } else { "-4" },
        "addr",
        "add",
        vip_cidr.as_str(),
        "dev",
        "eth0",
    ];
    if s.ipv6 {
        add_vip.extend_from_slice(&["nodad", "preferred_lft", "0"]);
    }
    host_a.ip(&add_vip).expect("service address on a");
    let host_b = lab.add_host("b", &[b_ip]).expect("host b");
    for ns in [&client, &host_a, &host_b] {
        for sysctl in s.sysctls {
            ns.exec("sysctl", &["-q", "-w", sysctl]).expect("sysctl");
        }
    }
    let vip: IpAddr = vip.parse().expect("vip");
    let service_socket = SocketAddr::new(vip, 9000);

    // Connections: the client connects, A accepts concurrently (the backlog is small).
    let listener = host_a
        .run(|| TcpListener::bind(service_socket))
        .expect("in a")
        .expect("bind service");
    let n = s.connections as usize;
    let acceptor = std::thread::spawn(move || {
        (0..n)
            .map(|_| listener.accept().map(|(stream, _)| stream))
            .collect::<Result<Vec<_>, _>>()
    });
    let client_streams = client
        .run(move || {
            (0..n)
                .map(|_| TcpStream::connect_timeout(&service_socket, Duration::from_secs(10)))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("in client")
        .expect("client connects");
    let accepted = acceptor.join().expect("acceptor").expect("accept");
    let index_by_port: HashMap<u16, u32> = client_streams
        .iter()
        .enumerate()
        .map(|(i, s)| (s.local_addr().expect("local").port(), i as u32))
        .collect();
    let server_conns: Vec<ServerConn> = accepted
        .into_iter()
        .map(|stream| {
            let conn = index_by_port[&stream.peer_addr().expect("peer").port()];
            ServerConn {
                conn,
                stream,
                received: 0,
                pending: Vec::new(),
                eof: false,
                shut: false,
            }
        })
        .collect();
    let client_conns: Vec<ClientConn> = client_streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| ClientConn {
            conn: i as u32,
            stream,
            sent: 0,
            received: 0,
            fin_sent: false,
            eof: false,
        })
        .collect();

    // Traffic on A.
    let resume = Arc::new(AtomicBool::new(false));
    let plan = s.plan;
    let client_thread = {
        let resume = Arc::clone(&resume);
        std::thread::spawn(move || run_clients(client_conns, plan, &resume, deadline))
    };
    let stop_a = Arc::new(AtomicBool::new(false));
    let progress_a = Arc::new(ServerProgress::default());
    let server_a = {
        let (stop, progress) = (Arc::clone(&stop_a), Arc::clone(&progress_a));
        let max_pending = s.max_pending;
        std::thread::spawn(move || {
            serve(server_conns, max_pending, false, &stop, &progress, deadline)
        })
    };
    match s.ready {
        Ready::Received(bytes) => {
            wait_until("mid-stream", deadline, || {
                progress_a.received.load(Ordering::Acquire) >= bytes
            });
        }
        Ready::ReceivedAndStalled(bytes) => {
            wait_until("full buffers", deadline, || {
                progress_a.received.load(Ordering::Acquire) >= bytes
            });
            let mut last = progress_a.received.load(Ordering::Acquire);
            wait_until("the stream to stall", deadline, || {
                std::thread::sleep(Duration::from_millis(200));
                let now = progress_a.received.load(Ordering::Acquire);
                std::mem::replace(&mut last, now) == now
            });
        }
        Ready::AllHalfClosed => {
            wait_until("half-close", deadline, || {
                progress_a.eofs.load(Ordering::Acquire) == u64::from(s.connections)
            });
        }
    }
    stop_a.store(true, Ordering::Release);
    let on_a = server_a
        .join()
        .expect("server a")
        .expect("server a ran cleanly");
    assert_eq!(on_a.len(), n);

    // The migration: A gives everything to B.
    let announce = AnnounceConfig {
        count: 2,
        interval: Duration::from_millis(10),
    };
    let mut takeover_a = host_a
        .run(|| NetlinkTakeover::open("eth0"))
        .expect("in a")
        .expect("takeover a");
    let takeover_b = host_b
        .run(|| NetlinkTakeover::open("eth0"))
        .expect("in b")
        .expect("takeover b");
    let takeover_b = takeover_b.with_announce_config(announce);
    let service = ServiceAddress {
        address: vip,
        prefix_len,
    };
    let outgoing: Vec<OutgoingConnection> = on_a
        .into_iter()
        .map(|c| {
            let application_state = c.encode_state();
            OutgoingConnection {
                stream: c.stream,
                application_state,
            }
        })
        .collect();
    let (channel_a, destination) = connect_channels(s.transport, &host_a, &host_b, s.ipv6);
    let mut channel_a = RecordingChannel {
        inner: channel_a,
        snapshots: Vec::new(),
    };
    let refuse_for = s.refused_by_destination.then(|| ServiceAddress {
        address: if s.ipv6 {
            "2001:db8::99".parse().expect("ip")
        } else {
            "198.18.0.99".parse().expect("ip")
        },
        prefix_len,
    });
    let receiver = host_b
        .spawn(move || {
            let mut takeover_b = takeover_b;
            let mut channel = destination.open();
            let options = RestoreOptions::at(monotonic_now());
            match refuse_for {
                // B is configured for another address: it must refuse before touching anything.
                Some(other) => migrate_in_for(&mut *channel, &mut takeover_b, options, other),
                None => migrate_in(&mut *channel, &mut takeover_b, options),
            }
        })
        .expect("spawn in b");
    let source_result = migrate_out(outgoing, service, &mut takeover_a, &mut channel_a);
    let sent_snapshots: HashMap<ConnectionId, NegotiatedOptions> =
        std::mem::take(&mut channel_a.snapshots)
            .into_iter()
            .collect();
    drop(channel_a);
    let destination_result = receiver.join().expect("receiver thread");
    if refuse_for.is_some() {
        return finish_on_a_after_refusal(
            source_result,
            destination_result,
            (&host_a, &host_b, &vip_cidr, s.ipv6),
            (s.plan, s.max_pending, &resume, deadline),
            client_thread,
        );
    }
    let report = source_result.unwrap_or_else(|failure| {
        panic!(
            "migration failed: {failure} (destination: {:?})",
            destination_result.as_ref().err()
        )
    });
    let IncomingMigration {
        connections,
        report: destination_report,
        listeners,
        ..
    } = destination_result.unwrap_or_else(|e| panic!("migrate_in failed: {e}"));
    // B listens on the service port next to the restored sockets (bound after the restores).
    assert_eq!(
        listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address"))
            .collect::<Vec<_>>(),
        vec![service_socket],
        "B's listener for new clients"
    );
    assert_eq!(report.connections, n);
    assert_eq!(destination_report.restored as usize, n);
    assert_eq!(report.destination, destination_report);
    assert_eq!(destination_report.announce_error, None);
    assert_eq!(
        destination_report.neighbours_answered, 1,
        "the client answered the warm-up"
    );
    assert!(
        report.close_errors.is_empty(),
        "silent closes failed: {:?}",
        report.close_errors
    );

    // The address moved.
    let family = if s.ipv6 { "-6" } else { "-4" };
    let on_a_addrs = host_a
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr a");
    let on_b_addrs = host_b
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr b");
    assert!(
        !on_a_addrs.contains(&vip_cidr),
        "A released {vip_cidr}: {on_a_addrs}"
    );
    assert!(
        on_b_addrs.contains(&vip_cidr),
        "B claimed {vip_cidr}: {on_b_addrs}"
    );

    // Each restored socket runs with its snapshot's options (TCP_INFO on B).
    assert_eq!(
        sent_snapshots.len(),
        n,
        "A sent one snapshot per connection"
    );
    for incoming in &connections {
        let id = incoming.connection.id();
        let options = sent_snapshots[&id];
        let info = socket_tcp_info(incoming.connection.stream()).expect("TCP_INFO on B");
        assert_eq!(
            (info.timestamps, info.sack, info.window_scale),
            (options.timestamps, options.sack, options.window_scale),
            "{id}: restored options"
        );
    }
    let snapshot_options = sent_snapshots.values().copied().collect();

    // B carries on serving; the client is let loose.
    let server_conns_b: Vec<ServerConn> = connections
        .into_iter()
        .map(|incoming| {
            ServerConn::decode(
                incoming.connection.into_stream(),
                &incoming.application_state,
            )
        })
        .collect();
    let stop_b = Arc::new(AtomicBool::new(false));
    let progress_b = Arc::new(ServerProgress::default());
    let server_b = {
        let (stop, progress) = (Arc::clone(&stop_b), Arc::clone(&progress_b));
        let max_pending = s.max_pending;
        std::thread::spawn(move || {
            serve(
                server_conns_b,
                max_pending,
                true,
                &stop,
                &progress,
                deadline,
            )
        })
    };
    resume.store(true, Ordering::Release);
    let per_connection = client_thread
        .join()
        .expect("client thread")
        .expect("the client saw no error");
    let finished = server_b
        .join()
        .expect("server b")
        .expect("server b ran cleanly");
    for c in &finished {
        assert_eq!(
            c.received, s.plan.total,
            "B verified every byte of connection {}",
            c.conn
        );
    }
    for (i, (sent, received)) in per_connection.iter().enumerate() {
        assert_eq!(*sent, s.plan.total, "connection {i} sent everything");
        assert_eq!(
            *received, s.plan.total,
            "connection {i} got every byte back exactly once"
        );
    }
    eprintln!("{}: {report:?}", s.tag);
    Outcome {
        report,
        per_connection,
        snapshot_options,
    }
}

/// How B's end of the channel is made: inside B's namespace thread.
enum Destination {
    Memory(MemoryChannel),
    Tcp(TcpListener),
}

impl Destination {
    fn open(self) -> Box<dyn SnapshotChannel + Send> {
        match self {
            Destination::Memory(channel) => Box::new(channel),
            Destination::Tcp(listener) => {
                let (stream, _) = listener.accept().expect("control accept");
                Box::new(TcpChannel::new(stream, Duration::from_secs(30)).expect("channel b"))
            }
        }
    }
}

fn connect_channels(
    transport: Transport,
    host_a: &Netns,
    host_b: &Netns,
    ipv6: bool,
) -> (Box<dyn SnapshotChannel + Send>, Destination) {
    match transport {
        Transport::Memory => {
            let (a, b) = MemoryChannel::pair(Duration::from_secs(30));
            (Box::new(a), Destination::Memory(b))
        }
        Transport::Tcp => {
            let control: SocketAddr = if ipv6 {
                "[2001:db8::3]:9100"
            } else {
                "198.18.0.3:9100"
            }
            .parse()
            .expect("addr");
            let listener = host_b
                .run(move || TcpListener::bind(control))
                .expect("in b")
                .expect("control bind");
            let stream = host_a
                .run(move || TcpStream::connect_timeout(&control, Duration::from_secs(10)))
                .expect("in a")
                .expect("control connect");
            let channel = TcpChannel::new(stream, Duration::from_secs(30)).expect("channel a");
            (Box::new(channel), Destination::Tcp(listener))
        }
    }
}

#[test]
fn connections_move_mid_stream_from_a_to_b_without_the_client_noticing() {
    if !kernel_tests_enabled("connections_move_mid_stream_from_a_to_b_without_the_client_noticing")
    {
        return;
    }
    let outcome = run_scenario(Scenario {
        tag: "mig4",
        sysctls: &[],
        ipv6: false,
        connections: 4,
        plan: ClientPlan {
            total: 2 * 1024 * 1024,
            write_gate: Some(512 * 1024),
            read_gate: None,
        },
        max_pending: 256 * 1024,
        transport: Transport::Memory,
        refused_by_destination: false,
        ready: Ready::Received(4 * 512 * 1024),
    });
    assert_eq!(outcome.per_connection.len(), 4);
}

#[test]
fn full_buffers_both_ways_move_intact() {
    if !kernel_tests_enabled("full_buffers_both_ways_move_intact") {
        return;
    }
    let outcome = run_scenario(Scenario {
        tag: "migfull",
        sysctls: &[],
        ipv6: false,
        connections: 2,
        // The client reads the first 4 MB normally (so receive buffers grow), then stops
        // reading while still writing: every buffer on the way fills up.
        plan: ClientPlan {
            total: 24 * 1024 * 1024,
            write_gate: None,
            read_gate: Some(4 * 1024 * 1024),
        },
        max_pending: 256 * 1024,
        transport: Transport::Tcp,
        refused_by_destination: false,
        ready: Ready::ReceivedAndStalled(2 * 5 * 1024 * 1024),
    });
    // Several MB were in flight in the server's send queues, and its receive queues were not
    // empty either: the restore carried both.
    assert!(
        outcome.report.send_queue_bytes >= 1024 * 1024,
        "send queues: {}",
        outcome.report.send_queue_bytes
    );
    assert!(
        outcome.report.receive_queue_bytes >= 64 * 1024,
        "receive queues: {}",
        outcome.report.receive_queue_bytes
    );
}

#[test]
fn ipv6_connections_move_over_a_tcp_control_channel() {
    if !kernel_tests_enabled("ipv6_connections_move_over_a_tcp_control_channel") {
        return;
    }
    run_scenario(Scenario {
        tag: "mig6",
        sysctls: &[],
        ipv6: true,
        connections: 4,
        plan: ClientPlan {
            total: 1024 * 1024,
            write_gate: Some(256 * 1024),
            read_gate: Some(0),
        },
        max_pending: 64 * 1024,
        transport: Transport::Tcp,
        refused_by_destination: false,
        ready: Ready::Received(4 * 64 * 1024),
    });
}

#[test]
fn a_thousand_connections_move_at_once() {
    if !kernel_tests_enabled("a_thousand_connections_move_at_once") {
        return;
    }
    let outcome = run_scenario(Scenario {
        tag: "mig1k",
        sysctls: &[],
        ipv6: false,
        connections: 1000,
        plan: ClientPlan {
            total: 64 * 1024,
            write_gate: Some(16 * 1024),
            read_gate: None,
        },
        max_pending: 64 * 1024,
        transport: Transport::Memory,
        refused_by_destination: false,
        ready: Ready::Received(1000 * 16 * 1024),
    });
    assert_eq!(outcome.report.connections, 1000);
}

#[test]
fn a_half_closed_connection_moves_and_finishes_its_echo() {
    if !kernel_tests_enabled("a_half_closed_connection_moves_and_finishes_its_echo") {
        return;
    }
    let outcome = run_scenario(Scenario {
        tag: "mighalf",
        sysctls: &[],
        ipv6: false,
        connections: 2,
        // Everything is sent and the client's FIN with it before the move; the echo is held
        // back (the client does not read), so B still has megabytes to send after the FIN.
        plan: ClientPlan {
            total: 12 * 1024 * 1024,
            write_gate: None,
            read_gate: Some(0),
        },
        max_pending: 64 * 1024 * 1024,
        transport: Transport::Memory,
        refused_by_destination: false,
        ready: Ready::AllHalfClosed,
    });
    assert!(
        outcome.report.send_queue_bytes > 0,
        "the server's send queue was not empty"
    );
    assert!(
        outcome.report.application_state_bytes > 1024 * 1024,
        "echo still pending in the application"
    );
}

/// A refused migration: A got its connections back running and its address back; it serves
/// them to the end and the client notices nothing.
fn finish_on_a_after_refusal(
    source_result: Result<MigrationReport, Box<MigrationFailure>>,
    destination_result: Result<IncomingMigration, MigrateError>,
    (host_a, host_b, vip_cidr, ipv6): (&Netns, &Netns, &str, bool),
    (plan, max_pending, resume, deadline): (ClientPlan, usize, &AtomicBool, Instant),
    client_thread: std::thread::JoinHandle<Result<Vec<(u64, u64)>, String>>,
) -> Outcome {
    match destination_result {
        Err(MigrateError::UnexpectedService(_)) => {}
        other => panic!(
            "B should refuse the foreign address, got {:?}",
            other.map(|m| m.report)
        ),
    }
    let failure = match source_result {
        Err(failure) => failure,
        Ok(report) => panic!("a refused migration reported success: {report:?}"),
    };
    assert!(
        matches!(failure.error, MigrateError::Refused(_)),
        "{}",
        failure.error
    );
    assert!(failure.recovery_problems.is_empty(), "{failure}");
    let RecoveredConnections::Running(back) = failure.connections else {
        panic!("connections should be running again on A");
    };
    let family = if ipv6 { "-6" } else { "-4" };
    let on_a = host_a
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr a");
    let on_b = host_b
        .ip(&[family, "addr", "show", "dev", "eth0"])
        .expect("ip addr b");
    assert!(on_a.contains(vip_cidr), "A re-claimed {vip_cidr}: {on_a}");
    assert!(
        !on_b.contains(vip_cidr),
        "B never claimed {vip_cidr}: {on_b}"
    );
    let conns: Vec<ServerConn> = back
        .into_iter()
        .map(|o| ServerConn::decode(o.stream, &o.application_state))
        .collect();
    let stop = AtomicBool::new(false);
    let progress = ServerProgress::default();
    let server = std::thread::scope(|scope| {
        let server = scope.spawn(|| serve(conns, max_pending, true, &stop, &progress, deadline));
        resume.store(true, Ordering::Release);
        server.join().expect("server a")
    });
    let finished = server.expect("A served to the end after the refusal");
    let per_connection = client_thread
        .join()
        .expect("client thread")
        .expect("the client saw no error");
    for c in &finished {
        assert_eq!(
            c.received, plan.total,
            "A verified every byte of connection {}",
            c.conn
        );
    }
    for (i, (sent, received)) in per_connection.iter().enumerate() {
        assert_eq!(
            (*sent, *received),
            (plan.total, plan.total),
            "connection {i}"
        );
    }
    Outcome {
        report: MigrationReport::default(),
        per_connection,
        snapshot_options: Vec::new(),
    }
}

#[test]
fn a_refused_migration_leaves_the_connections_running_on_a() {
    if !kernel_tests_enabled("a_refused_migration_leaves_the_connections_running_on_a") {
        return;
    }
    let outcome = run_scenario(Scenario {
        tag: "migref",
        sysctls: &[],
        ipv6: false,
        connections: 3,
        plan: ClientPlan {
            total: 1024 * 1024,
            write_gate: Some(256 * 1024),
            read_gate: Some(64 * 1024),
        },
        max_pending: 128 * 1024,
        transport: Transport::Tcp,
        refused_by_destination: true,
        ready: Ready::Received(3 * 128 * 1024),
    });
    assert_eq!(outcome.per_connection.len(), 3);
}

#[test]
fn busy_clients_keep_sending_while_hundreds_of_connections_move() {
    if !kernel_tests_enabled("busy_clients_keep_sending_while_hundreds_of_connections_move") {
        return;
    }
    busy_clients(false);
    busy_clients(true);
}

fn busy_clients(ipv6: bool) {
    // Every client is writing and reading when the move starts: their segments reach B as
    // soon as B's first packet teaches their stack B's MAC, while B is still restoring the
    // others. None may meet a connection B does not have yet (that would draw a RST).
    let outcome = run_scenario(Scenario {
        tag: "migbusy",
        sysctls: &[],
        ipv6,
        connections: 300,
        plan: ClientPlan {
            total: 512 * 1024,
            write_gate: None,
            read_gate: None,
        },
        max_pending: 64 * 1024,
        transport: Transport::Memory,
        refused_by_destination: false,
        ready: Ready::Received(300 * 64 * 1024),
    });
    assert_eq!(outcome.per_connection.len(), 300);
}

/// A -> B with one TCP option switched off everywhere (client and both hosts), small
/// transfers: the snapshots carry the option off, the restored sockets run without it, and
/// every byte both ways arrives exactly once.
fn option_off(tag: &'static str, sysctls: &'static [&'static str]) -> Vec<NegotiatedOptions> {
    let outcome = run_scenario(Scenario {
        tag,
        sysctls,
        ipv6: false,
        connections: 3,
        plan: ClientPlan {
            total: 256 * 1024,
            write_gate: Some(64 * 1024),
            read_gate: Some(16 * 1024),
        },
        max_pending: 64 * 1024,
        transport: Transport::Memory,
        refused_by_destination: false,
        ready: Ready::Received(3 * 32 * 1024),
    });
    assert_eq!(outcome.snapshot_options.len(), 3);
    outcome.snapshot_options
}

#[test]
fn connections_move_with_timestamps_off() {
    if !kernel_tests_enabled("connections_move_with_timestamps_off") {
        return;
    }
    for options in option_off("migts0", &["net.ipv4.tcp_timestamps=0"]) {
        assert!(!options.timestamps, "{options:?}");
        assert!(
            options.sack && options.window_scale.is_some(),
            "{options:?}"
        );
    }
}

#[test]
fn connections_move_with_window_scaling_off() {
    if !kernel_tests_enabled("connections_move_with_window_scaling_off") {
        return;
    }
    for options in option_off("migws0", &["net.ipv4.tcp_window_scaling=0"]) {
        assert_eq!(options.window_scale, None, "{options:?}");
        assert!(options.sack && options.timestamps, "{options:?}");
    }
}

#[test]
fn connections_move_with_sack_off() {
    if !kernel_tests_enabled("connections_move_with_sack_off") {
        return;
    }
    for options in option_off("migsack0", &["net.ipv4.tcp_sack=0"]) {
        assert!(!options.sack, "{options:?}");
        assert!(
            options.timestamps && options.window_scale.is_some(),
            "{options:?}"
        );
    }
}
