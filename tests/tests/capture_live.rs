//! Live capture backends against real kernel TCP in a namespace lab.
//!
//! - AF_PACKET (ring and recvmsg modes) on the server's `eth0` feeds the tracker while a real
//!   client and server exchange several hundred KB both ways, IPv4 and IPv6; the tracker's
//!   streams must equal the bytes the server read and wrote, and its snapshot must match the
//!   server socket's own view (`TCP_INFO`: bytes received/acknowledged, MSS, window scales,
//!   timestamps, SACK). Traffic of another port, ARP and neighbour discovery never reach
//!   user space (kernel filter), and no frame is seen twice.
//! - NFQUEUE: the server's segments are held until accepted (the client gets nothing while
//!   they are held, everything after), marked sockets bypass the queue, and the iptables rules
//!   are gone after the source is dropped.

use cttm_capture::CaptureSource;
use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource, CaptureMode};
use cttm_capture::nfqueue::{NfqueueConfig, NfqueueSource};
use cttm_core::wire::parse_frame;
use cttm_core::{
    ConnectionEvent, ConnectionId, EventKind, LinkType, ServiceEndpoint, ServiceSet, TcpState,
    Tracker, TrackerConfig,
};
use cttm_restore::repair::{TcpInfoSummary, socket_tcp_info};
use cttm_tests::lab::{Lab, Netns, kernel_tests_enabled};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_TO_SERVER: usize = 300_000;
const SERVER_TO_CLIENT: usize = 400_000;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .wrapping_add((i / 251) as u8)
        })
        .collect()
}

fn lab_pair(tag: &str) -> (Lab, Netns, Netns) {
    let mut lab = Lab::new(tag).expect("lab");
    let client = lab
        .add_host("c", &["198.18.0.1/24", "2001:db8::1/64"])
        .expect("client host");
    let server = lab
        .add_host("s", &["198.18.0.2/24", "2001:db8::2/64"])
        .expect("server host");
    (lab, client, server)
}

/// What the capture thread saw.
struct Captured {
    tracker: Tracker,
    events: Vec<ConnectionEvent>,
    /// Frames per (source, destination) carrying SYN without ACK, and SYN with ACK.
    syns: HashMap<(SocketAddr, SocketAddr), (usize, usize)>,
    /// Every TCP port seen in a captured frame.
    ports: Vec<u16>,
    /// Frames that were not TCP, other than IPv6 with an extension header first (which the
    /// filter passes up on purpose, e.g. MLD reports behind a hop-by-hop header).
    unexpected_not_tcp: Vec<Vec<u8>>,
    frames: u64,
    dropped: u64,
}

/// Reads `source` into a tracker until `stop` is set and a read then comes back empty.
fn capture_until_stopped(
    mut source: impl CaptureSource,
    services: ServiceSet,
    stop: Arc<AtomicBool>,
) -> Captured {
    let mut captured = Captured {
        tracker: Tracker::new(TrackerConfig::new(services)),
        events: Vec::new(),
        syns: HashMap::new(),
        ports: Vec::new(),
        unexpected_not_tcp: Vec::new(),
        frames: 0,
        dropped: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let n = source
            .read_batch(Duration::from_millis(200), &mut |frame| {
                let ipv6_extension_first = frame.data.get(12..14) == Some(&[0x86, 0xdd][..])
                    && frame
                        .data
                        .get(20)
                        .is_some_and(|nh| [0u8, 43, 44, 60, 51].contains(nh));
                let parsed = parse_frame(frame.link, frame.data);
                if parsed.is_err() && !ipv6_extension_first {
                    captured.unexpected_not_tcp.push(frame.data.to_vec());
                }
                if let Ok(segment) = parsed {
                    captured.ports.push(segment.src.port());
                    captured.ports.push(segment.dst.port());
                    if segment.flags.syn() {
                        let entry = captured.syns.entry((segment.src, segment.dst)).or_default();
                        if segment.flags.ack() {
                            entry.1 += 1;
                        } else {
                            entry.0 += 1;
                        }
                    }
                }
                let _ = captured.tracker.on_frame(
                    frame.at,
                    frame.link,
                    frame.data,
                    &mut captured.events,
                );
            })
            .expect("read_batch");
        if (stopping && n == 0) || Instant::now() > deadline {
            break;
        }
    }
    captured.frames = source.stats().frames;
    captured.dropped = source.stats().dropped;
    captured
}

/// One finished exchange; both sockets stay open so the server's state can be inspected.
struct Exchange {
    id: ConnectionId,
    server_read: Vec<u8>,
    server_wrote: Vec<u8>,
    server_socket: TcpStream,
    _client_socket: TcpStream,
}

/// The client sends `up` bytes, the server reads them all, then sends `down` bytes, which
/// the client reads. No FIN: both ends stay established.
fn exchange(
    client: &Netns,
    server: &Netns,
    service: SocketAddr,
    up: usize,
    down: usize,
) -> Exchange {
    let listener = server
        .run(move || TcpListener::bind(service).expect("bind service"))
        .expect("in server");
    let server_thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut read = vec![0u8; up];
        s.read_exact(&mut read)
            .expect("server reads the client's bytes");
        let wrote = pattern(down, 0x5a);
        s.write_all(&wrote).expect("server writes");
        (s, read, wrote)
    });
    let sent = pattern(up, 0xa5);
    let sent_copy = sent.clone();
    let client_thread = client
        .spawn(move || {
            let mut c = TcpStream::connect_timeout(&service, IO_TIMEOUT).expect("connect");
            c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            c.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
            c.write_all(&sent_copy).expect("client writes");
            let mut got = vec![0u8; down];
            c.read_exact(&mut got)
                .expect("client reads the server's bytes");
            (c, got)
        })
        .expect("client thread");
    let (client_socket, client_got) = client_thread.join().expect("client");
    let (server_socket, server_read, server_wrote) = server_thread.join().expect("server");
    assert_eq!(server_read, sent, "the server read what the client sent");
    assert_eq!(
        client_got, server_wrote,
        "the client read what the server wrote"
    );
    let id = ConnectionId {
        client: client_socket.local_addr().expect("local"),
        server: service,
    };
    Exchange {
        id,
        server_read,
        server_wrote,
        server_socket,
        _client_socket: client_socket,
    }
}

/// Waits (bounded) until the server has nothing unacknowledged and has received everything.
fn wait_quiet(socket: &TcpStream, received: u64) -> TcpInfoSummary {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = socket_tcp_info(socket).expect("getsockopt(TCP_INFO)");
        if (view.unacked == 0 && view.bytes_received == received) || Instant::now() > deadline {
            return view;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stream_of(events: &[ConnectionEvent], id: &ConnectionId, client: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for e in events.iter().filter(|e| e.id == *id) {
        match &e.kind {
            EventKind::ClientData { offset, bytes: b } if client => {
                assert_eq!(
                    *offset,
                    bytes.len() as u64,
                    "client data events are contiguous"
                );
                bytes.extend_from_slice(b);
            }
            EventKind::ServerData { offset, bytes: b } if !client => {
                assert_eq!(
                    *offset,
                    bytes.len() as u64,
                    "server data events are contiguous"
                );
                bytes.extend_from_slice(b);
            }
            _ => {}
        }
    }
    bytes
}

fn check_against_server(captured: &Captured, ex: &Exchange, view: &TcpInfoSummary) {
    assert_eq!(
        stream_of(&captured.events, &ex.id, true),
        ex.server_read,
        "{}: client stream",
        ex.id
    );
    assert_eq!(
        stream_of(&captured.events, &ex.id, false),
        ex.server_wrote,
        "{}: server stream",
        ex.id
    );
    let snap = captured
        .tracker
        .snapshot(&ex.id)
        .unwrap_or_else(|| panic!("{}: tracked", ex.id));
    assert!(snap.is_restorable(), "{}: {:?}", ex.id, snap.restorability);
    assert_eq!(snap.state, TcpState::Established);
    assert_eq!(
        view.unacked, 0,
        "{}: the transfer quiesced ({view:?})",
        ex.id
    );
    // rcv_nxt: every client byte received (tcpi_bytes_received counts data only).
    assert_eq!(view.bytes_received, CLIENT_TO_SERVER as u64);
    assert_eq!(
        snap.receive.next,
        snap.client_isn.add(1).add(view.bytes_received as u32),
        "{}: rcv_nxt",
        ex.id
    );
    // snd_una: tcpi_bytes_acked counts data only (the SYN-ACK's acknowledgement is not
    // counted on a passive open), so snd_una = ISN + 1 + bytes_acked.
    assert_eq!(
        snap.send.una,
        snap.server_isn.add(1).add(view.bytes_acked as u32),
        "{}: snd_una",
        ex.id
    );
    assert_eq!(view.bytes_acked, SERVER_TO_CLIENT as u64);
    assert!(
        snap.send.sent_unacked().is_empty()
            && snap.receive.next == snap.client_isn.add(1 + CLIENT_TO_SERVER as u32)
    );
    // Options. tcpi_snd_mss is the client's announced MSS less the 12 aligned bytes of the
    // timestamps option (tcp_current_mss).
    assert_eq!(
        snap.options.window_scale, view.window_scale,
        "{}: window scales",
        ex.id
    );
    assert_eq!(
        snap.options.timestamps, view.timestamps,
        "{}: timestamps",
        ex.id
    );
    assert_eq!(snap.options.sack, view.sack, "{}: sack", ex.id);
    let ts_overhead = if snap.options.timestamps { 12 } else { 0 };
    assert_eq!(
        u32::from(snap.options.mss - ts_overhead),
        view.snd_mss,
        "{}: mss",
        ex.id
    );
    assert!(snap.clock.is_some() == view.timestamps);
    // Each handshake segment seen exactly once: nothing double-counted on the veth.
    assert_eq!(
        captured.syns.get(&(ex.id.client, ex.id.server)),
        Some(&(1, 0)),
        "{}: one SYN",
        ex.id
    );
    assert_eq!(
        captured.syns.get(&(ex.id.server, ex.id.client)),
        Some(&(0, 1)),
        "{}: one SYN-ACK",
        ex.id
    );
}

fn capture_matches_server_socket(mode: CaptureMode, tag: &str) {
    let (_lab, client, server) = lab_pair(tag);
    let v4: SocketAddr = "198.18.0.2:7100".parse().expect("addr");
    let v6: SocketAddr = "[2001:db8::2]:7100".parse().expect("addr");
    let unrelated: SocketAddr = "198.18.0.2:7200".parse().expect("addr");
    let services = ServiceSet::new([ServiceEndpoint::new(v4), ServiceEndpoint::new(v6)]);
    let mut config = AfPacketConfig::new("eth0", services.clone());
    config.mode = mode;
    let source = server
        .run(move || AfPacketSource::open(config))
        .expect("in server")
        .expect("open capture");
    assert_eq!(source.mode(), mode, "{:?}", source.ring_fallback());
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        std::thread::spawn(move || capture_until_stopped(source, services, stop))
    };
    let ex4 = exchange(&client, &server, v4, CLIENT_TO_SERVER, SERVER_TO_CLIENT);
    let other = exchange(&client, &server, unrelated, 50_000, 50_000);
    let ex6 = exchange(&client, &server, v6, CLIENT_TO_SERVER, SERVER_TO_CLIENT);
    let view4 = wait_quiet(&ex4.server_socket, CLIENT_TO_SERVER as u64);
    let view6 = wait_quiet(&ex6.server_socket, CLIENT_TO_SERVER as u64);
    stop.store(true, Ordering::Release);
    let captured = capture.join().expect("capture thread");

    assert_eq!(captured.dropped, 0, "no kernel drops in a small transfer");
    check_against_server(&captured, &ex4, &view4);
    check_against_server(&captured, &ex6, &view6);
    // The kernel filter let through nothing but the service's TCP segments.
    let stats = captured.tracker.stats();
    assert!(
        captured.unexpected_not_tcp.is_empty(),
        "ARP / neighbour discovery reached user space: {stats:?}"
    );
    assert_eq!(
        stats.foreign, 0,
        "TCP of another port reached user space: {stats:?}"
    );
    assert!(
        !captured.ports.contains(&unrelated.port()),
        "port {} captured",
        unrelated.port()
    );
    assert_eq!(stats.frames, captured.frames);
    assert!(
        other.server_read.len() == 50_000,
        "the unrelated exchange really happened"
    );
}

#[test]
fn af_packet_ring_capture_matches_the_server_socket() {
    if !kernel_tests_enabled("af_packet_ring_capture_matches_the_server_socket") {
        return;
    }
    capture_matches_server_socket(CaptureMode::Ring, "capring");
}

#[test]
fn af_packet_recv_capture_matches_the_server_socket() {
    if !kernel_tests_enabled("af_packet_recv_capture_matches_the_server_socket") {
        return;
    }
    capture_matches_server_socket(CaptureMode::Recv, "caprecv");
}

#[test]
fn af_packet_on_loopback_sees_each_segment_once() {
    if !kernel_tests_enabled("af_packet_on_loopback_sees_each_segment_once") {
        return;
    }
    // Loopback shows every frame twice (outgoing, then incoming); the source keeps one.
    let (_lab, _client, server) = lab_pair("caplo");
    let service: SocketAddr = "127.0.0.1:7500".parse().expect("addr");
    let services = ServiceSet::new([ServiceEndpoint::new(service)]);
    let config = AfPacketConfig::new("lo", services.clone());
    let source = server
        .run(move || AfPacketSource::open(config))
        .expect("in server")
        .expect("open capture");
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        std::thread::spawn(move || capture_until_stopped(source, services, stop))
    };
    let ex = exchange(&server, &server, service, 20_000, 30_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket_tcp_info(&ex.server_socket)
        .expect("getsockopt(TCP_INFO)")
        .unacked
        != 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    let captured = capture.join().expect("capture thread");
    assert_eq!(
        captured.syns.get(&(ex.id.client, ex.id.server)),
        Some(&(1, 0)),
        "one SYN"
    );
    assert_eq!(
        captured.syns.get(&(ex.id.server, ex.id.client)),
        Some(&(0, 1)),
        "one SYN-ACK"
    );
    assert_eq!(stream_of(&captured.events, &ex.id, true), ex.server_read);
    assert_eq!(stream_of(&captured.events, &ex.id, false), ex.server_wrote);
}

#[test]
fn af_packet_reports_a_missing_interface() {
    if !kernel_tests_enabled("af_packet_reports_a_missing_interface") {
        return;
    }
    let (_lab, _client, server) = lab_pair("capnoif");
    let services = ServiceSet::new([ServiceEndpoint::new(
        "198.18.0.2:7100".parse().expect("addr"),
    )]);
    let err = server
        .run(move || AfPacketSource::open(AfPacketConfig::new("eth9", services)).map(|_| ()))
        .expect("in server")
        .expect_err("eth9 does not exist");
    assert!(
        matches!(err, cttm_capture::CaptureError::NoSuchInterface(ref n) if n == "eth9"),
        "{err}"
    );
}

fn rules_listing(ns: &Netns, v6: bool) -> String {
    ns.exec(if v6 { "ip6tables" } else { "iptables" }, &["-S"])
        .expect("list rules")
}

/// Holds the server's segments of one connection, checks the client got nothing, releases
/// them, and checks the client then gets everything.
fn hold_then_release(
    client: &Netns,
    server: &Netns,
    source: &mut NfqueueSource,
    service: SocketAddr,
) {
    const DOWN: usize = 120_000;
    let listener = server
        .run(move || TcpListener::bind(service).expect("bind"))
        .expect("in server");
    let server_thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let data = pattern(DOWN, 0x33);
        s.write_all(&data).expect("server writes");
        (s, data)
    });
    let progress = Arc::new(AtomicUsize::new(0));
    let client_thread = {
        let progress = progress.clone();
        client
            .spawn(move || {
                let mut c = TcpStream::connect_timeout(&service, IO_TIMEOUT).expect("connect");
                c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                let mut got = Vec::with_capacity(DOWN);
                let mut buf = [0u8; 16384];
                while got.len() < DOWN {
                    let n = c.read(&mut buf).expect("client reads");
                    assert!(n > 0, "server closed early");
                    got.extend_from_slice(&buf[..n]);
                    progress.store(got.len(), Ordering::Release);
                }
                got
            })
            .expect("client thread")
    };

    // Phase 1: let the handshake out, hold every segment carrying data, until the segment
    // with the first data byte (SYN-ACK sequence + 1) is among the held ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held_payload = 0usize;
    let mut syn_ack_seq = None;
    let mut first_byte_held = false;
    while !(first_byte_held && held_payload >= 8_000) && Instant::now() < deadline {
        let mut ids = Vec::new();
        source
            .read_held(Duration::from_millis(100), &mut |held| {
                let segment = parse_frame(LinkType::RawIp, held.frame.data).expect("a TCP segment");
                assert_eq!(
                    segment.src.port(),
                    service.port(),
                    "only the service's segments are queued"
                );
                if segment.src != service {
                    // the end (FIN) of the previous case's connection: let it out
                    ids.push(held.id);
                    return;
                }
                if segment.flags.syn() {
                    syn_ack_seq = Some(segment.seq);
                }
                if segment.payload.is_empty() {
                    ids.push(held.id);
                } else {
                    held_payload += segment.payload.len();
                    first_byte_held |= syn_ack_seq.map(|s| s.add(1)) == Some(segment.seq);
                }
            })
            .expect("read_held");
        source.accept_batch(&ids).expect("accept handshake");
    }
    assert!(
        first_byte_held && held_payload >= 8_000,
        "the server's data was queued ({held_payload} bytes held)"
    );
    assert_eq!(
        progress.load(Ordering::Acquire),
        0,
        "the client received nothing while segments were held"
    );
    assert!(source.held_len() > 0);

    // Phase 2: release everything, then keep accepting until the client has it all.
    source.accept_all().expect("release");
    assert_eq!(source.held_len(), 0);
    while !client_thread.is_finished() && Instant::now() < deadline {
        source
            .read_held(Duration::from_millis(20), &mut |_| {})
            .expect("read_held");
        source.accept_all().expect("accept");
    }
    let got = client_thread.join().expect("client");
    let (_server_socket, sent) = server_thread.join().expect("server");
    assert_eq!(
        got, sent,
        "after release the client received every byte, in order"
    );
}

/// A listener marked with the bypass mark: its connection's segments never enter the queue,
/// so the client gets everything while nobody reads the queue.
fn marked_traffic_bypasses(
    client: &Netns,
    server: &Netns,
    source: &mut NfqueueSource,
    service: SocketAddr,
) {
    const DOWN: usize = 60_000;
    let mark = source.bypass_mark();
    let listener = server
        .run(move || {
            let l = TcpListener::bind(service).expect("bind");
            nix::sys::socket::setsockopt(&l, nix::sys::socket::sockopt::Mark, &mark)
                .expect("SO_MARK");
            l
        })
        .expect("in server");
    let server_thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let data = pattern(DOWN, 0x77);
        s.write_all(&data).expect("server writes");
        (s, data)
    });
    let got = client
        .run(move || {
            let mut c = TcpStream::connect_timeout(&service, IO_TIMEOUT)
                .expect("connect (SYN-ACK not held)");
            c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut got = vec![0u8; DOWN];
            c.read_exact(&mut got)
                .expect("client reads without any verdict given");
            got
        })
        .expect("in client");
    let (_s, sent) = server_thread.join().expect("server");
    assert_eq!(got, sent);
    let mut queued = 0usize;
    source
        .read_held(Duration::from_millis(200), &mut |held| {
            let segment = parse_frame(LinkType::RawIp, held.frame.data).expect("a TCP segment");
            queued += usize::from(segment.src == service);
        })
        .expect("read_held");
    source
        .accept_all()
        .expect("let earlier connections' segments out");
    assert_eq!(queued, 0, "marked traffic was queued");
}

#[test]
fn nfqueue_holds_segments_until_accepted_and_cleans_up_its_rules() {
    if !kernel_tests_enabled("nfqueue_holds_segments_until_accepted_and_cleans_up_its_rules") {
        return;
    }
    let (_lab, client, server) = lab_pair("nfq");
    let held4: SocketAddr = "198.18.0.2:7300".parse().expect("addr");
    let marked4: SocketAddr = "198.18.0.2:7301".parse().expect("addr");
    let held6: SocketAddr = "[2001:db8::2]:7300".parse().expect("addr");
    let marked6: SocketAddr = "[2001:db8::2]:7301".parse().expect("addr");
    let services = ServiceSet::new([held4, marked4, held6, marked6].map(ServiceEndpoint::new));
    let mut source = server
        .run(move || NfqueueSource::open(NfqueueConfig::new(3, services)))
        .expect("in server")
        .expect("open queue");

    // The rules are in the server's namespace, and only there.
    for v6 in [false, true] {
        let listing = rules_listing(&server, v6);
        assert!(listing.contains("-A OUTPUT -j CTTM-Q3"), "{listing}");
        assert!(listing.contains("--mark 0x43544d01 -j RETURN"), "{listing}");
        assert!(listing.contains("NFQUEUE --queue-num 3"), "{listing}");
        assert!(
            !rules_listing(&client, v6).contains("CTTM"),
            "rules leaked into another namespace"
        );
    }

    hold_then_release(&client, &server, &mut source, held4);
    hold_then_release(&client, &server, &mut source, held6);
    marked_traffic_bypasses(&client, &server, &mut source, marked4);
    marked_traffic_bypasses(&client, &server, &mut source, marked6);
    assert!(source.stats().frames > 0);
    // Drop counters are per namespace: readable from the queue's namespace only.
    assert!(
        !source.refresh_drops(),
        "counters of another namespace must not be read"
    );
    let source_ref = &mut source;
    assert!(
        server
            .run(move || source_ref.refresh_drops())
            .expect("in server")
    );
    assert_eq!(source.stats().dropped, 0, "nothing was lost by the queue");

    // Dropped on this (root-namespace) thread: removal happens in the server's namespace.
    drop(source);
    for v6 in [false, true] {
        let listing = rules_listing(&server, v6);
        assert!(!listing.contains("CTTM"), "rules left behind:\n{listing}");
    }

    // The explicit removal path, and a second removal is harmless.
    let services = ServiceSet::new([ServiceEndpoint::new(held4)]);
    let mut source = server
        .run(move || NfqueueSource::open(NfqueueConfig::new(4, services)))
        .expect("in server")
        .expect("open queue");
    assert!(rules_listing(&server, false).contains("CTTM-Q4"));
    assert!(
        !rules_listing(&server, true).contains("CTTM"),
        "no IPv6 service, no IPv6 rules"
    );
    source.remove_rules().expect("remove");
    source.remove_rules().expect("remove again");
    assert!(!rules_listing(&server, false).contains("CTTM"));
}
