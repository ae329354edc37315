//! The operator's surfaces of an agent: the status socket (`status`, `status json`,
//! `rejoin`), its client and the `cttmd status` / `cttmd rejoin` commands, the Prometheus
//! text metrics and their HTTP endpoint. Real Unix and TCP sockets, on loopback and in a
//! temporary directory.

use cttm_tests::temp_dir::TempDir;
use cttmd::observe::{
    AgentRole, AgentView, CommitState, ConnectionView, MetricsServer, Observer, ProtectionState,
    RejoinWait, StatusClientError, StatusCommand, StatusServer, StatusSocketError, query_agent,
    render_metrics,
};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const TIMEOUT: Duration = Duration::from_secs(10);

fn connection(
    client: &str,
    state: ProtectionState,
    lag: u64,
    detail: Option<&str>,
) -> ConnectionView {
    ConnectionView {
        client: client.parse().unwrap(),
        server: "198.18.0.10:7000".parse().unwrap(),
        state,
        lag_bytes: lag,
        lag_ms: lag / 10,
        held_packets: lag % 7,
        detail: detail.map(String::from),
    }
}

/// A view with something in every field.
fn busy_view() -> AgentView {
    let mut view = AgentView::new(AgentRole::Primary, CommitState::Degraded);
    view.link_up = true;
    view.lag_bytes = 4321;
    view.lag_ms = 250;
    view.held_packets = 3;
    view.connections = vec![
        connection("198.18.0.1:40000", ProtectionState::Protected, 0, None),
        connection("198.18.0.1:40001", ProtectionState::Protected, 1000, None),
        connection(
            "[2001:db8::1]:40002",
            ProtectionState::Unprotected,
            3321,
            Some("picked up mid-stream"),
        ),
        connection(
            "198.18.0.1:40003",
            ProtectionState::Diverged,
            0,
            Some("standby output differs at server offset 812"),
        ),
    ];
    view.counters.segments = 123_456;
    view.counters.connections_opened = 17;
    view.counters.bytes_replicated_client = 1_000_000;
    view.counters.bytes_replicated_server = 2_500_000;
    view.counters.held_packets = 9_000;
    view.counters.released_unprotected = 12;
    view.counters.dropped_frames = 1;
    view.counters.degradations = 2;
    for micros in [30, 75, 75, 400, 2_500, 70_000, 2_000_000] {
        view.hold_time.observe(micros);
    }
    view.failover_ms = Some(123.25);
    view.alerts = vec!["degraded: the backup has been unreachable for 1.2 s".into()];
    view
}

#[test]
fn status_socket_round_trip() {
    let dir = TempDir::new("obs");
    // the socket's directory does not exist yet: the server creates it
    let path = dir.path("run/agent.sock");
    let view = busy_view();
    let observer = Observer::new(view.clone());
    let server = StatusServer::start(&path, observer.clone()).expect("status socket");
    assert_eq!(server.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only root may talk to the agent");

    let text = query_agent(&path, StatusCommand::Status, TIMEOUT).expect("status");
    for expected in [
        "role         primary",
        "mode         degraded",
        "lag 4321 bytes, 250 ms",
        "degraded: the backup has been unreachable",
        "connections  4 (protected 2, unprotected 1, diverged 1)",
        "198.18.0.1:40000",
        "198.18.0.1:40001",
        "[2001:db8::1]:40002",
        "picked up mid-stream",
        "standby output differs at server offset 812",
        "failover     123.2 ms",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in\n{text}");
    }

    let json = query_agent(&path, StatusCommand::StatusJson, TIMEOUT).expect("status json");
    assert_eq!(json.lines().count(), 1, "one line of JSON");
    let parsed: AgentView = serde_json::from_str(&json).expect("the view as JSON");
    assert_eq!(parsed, view);

    // the agent publishes: the next answer shows it
    observer.update(|v| v.connections.clear());
    let text = query_agent(&path, StatusCommand::Status, TIMEOUT).unwrap();
    assert!(text.contains("connections  0\n"), "{text}");

    drop(server);
    assert!(!path.exists(), "the socket file goes with the server");
    assert!(matches!(
        query_agent(&path, StatusCommand::Status, TIMEOUT),
        Err(StatusClientError::NoSocket { .. })
    ));
}

#[test]
fn rejoin_reaches_a_non_serving_agent_and_reports_the_outcome() {
    let dir = TempDir::new("obs");
    let path = dir.path("rejoin.sock");
    let observer = Observer::new(AgentView::new(AgentRole::NonServing, CommitState::Sync));
    let _server = StatusServer::start(&path, observer.clone()).expect("status socket");

    // an agent that takes the request, probes (here: nobody answers) and serves again
    let agent = observer.clone();
    let fake_agent = std::thread::spawn(move || {
        let end = Instant::now() + TIMEOUT;
        while Instant::now() < end {
            if agent.take_rejoin_request() {
                std::thread::sleep(Duration::from_millis(200)); // the probes
                agent.update(|v| v.role = AgentRole::Primary);
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let answer = query_agent(&path, StatusCommand::Rejoin, TIMEOUT).expect("rejoin");
    assert!(fake_agent.join().unwrap(), "the agent got the request");
    assert_eq!(answer, "rejoined: the agent now runs as primary\n");

    // an agent that serves already has nothing to rejoin: no request is left behind
    let answer = query_agent(&path, StatusCommand::Rejoin, TIMEOUT).unwrap();
    assert!(
        answer.starts_with("refused: this agent is primary"),
        "{answer}"
    );
    assert!(!observer.rejoin_requested());
}

#[test]
fn rejoin_sets_the_request_flag_even_when_the_agent_is_slow() {
    let dir = TempDir::new("obs");
    let path = dir.path("slow.sock");
    let observer = Observer::new(AgentView::new(AgentRole::NonServing, CommitState::Async));
    let wait = RejoinWait {
        pickup: Duration::from_millis(200),
        outcome: Duration::from_millis(200),
    };
    let _server = StatusServer::start_with(&path, observer.clone(), wait).expect("socket");
    let answer = query_agent(&path, StatusCommand::Rejoin, TIMEOUT).unwrap();
    assert!(answer.starts_with("pending: rejoin requested"), "{answer}");
    assert!(
        observer.take_rejoin_request(),
        "the request waits for the agent"
    );
    assert!(!observer.take_rejoin_request(), "taken once");
}

/// Sends raw bytes to the socket and returns the answer.
fn raw_exchange(path: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
fn bad_requests_get_one_error_line() {
    let dir = TempDir::new("obs");
    let path = dir.path("bad.sock");
    let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
    let _server = StatusServer::start(&path, observer).expect("socket");

    let answer = raw_exchange(&path, b"reboot\n");
    assert!(
        answer.starts_with("error: unknown command \"reboot\""),
        "{answer}"
    );
    assert!(
        answer.contains("`status`, `status json` and `rejoin`"),
        "{answer}"
    );
    assert_eq!(answer.lines().count(), 1);

    let answer = raw_exchange(&path, &[b'x'; 5000]);
    assert!(
        answer.starts_with("error: request longer than 256 bytes"),
        "{answer}"
    );

    let answer = raw_exchange(&path, b"\xff\xfe\n");
    assert!(
        answer.starts_with("error: the request is not UTF-8"),
        "{answer}"
    );

    // a request without its newline, the client's side closed: still served
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"status").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("role         backup"), "{answer}");

    // a client that says nothing is dropped after the request timeout, with a reason
    let mut silent = UnixStream::connect(&path).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    silent.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("error: no request line within 2 s"),
        "{answer}"
    );

    // the client error carries the agent's message
    let e = query_agent(&dir.path("absent.sock"), StatusCommand::Status, TIMEOUT).unwrap_err();
    assert!(e.to_string().contains("is the agent running?"), "{e}");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = TempDir::new("obs");
    let path = dir.path("agent.sock");
    // a socket file left by an agent that died: nobody listens on it
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let stale = query_agent(&path, StatusCommand::Status, TIMEOUT);
    assert!(
        matches!(stale, Err(StatusClientError::NotRunning { .. })),
        "{stale:?}"
    );
    let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
    let first = StatusServer::start(&path, observer.clone()).expect("stale socket replaced");

    let second = StatusServer::start(&path, observer.clone());
    match second {
        Err(e @ StatusSocketError::AlreadyRunning { .. }) => {
            assert!(e.to_string().contains("another agent is running"), "{e}");
        }
        other => panic!("a live socket must be refused, got {other:?}"),
    }
    // the refused start left the first agent's socket alone
    let text = query_agent(&path, StatusCommand::Status, TIMEOUT).expect("first still serves");
    assert!(text.starts_with("role         backup"), "{text}");
    drop(first);

    // something that is not a socket is never removed
    let file = dir.path("regular");
    std::fs::write(&file, b"keep me").unwrap();
    let e = StatusServer::start(&file, observer.clone()).unwrap_err();
    assert!(matches!(e, StatusSocketError::NotASocket { .. }), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    // a directory that cannot be created (its parent is a file)
    let e = StatusServer::start(&file.join("sub/agent.sock"), observer).unwrap_err();
    assert!(
        matches!(e, StatusSocketError::CreateDirectory { .. }),
        "{e}"
    );
}

/// One sample line of the text format: (name, labels, value).
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the exposition text strictly: every line a `# HELP`, a `# TYPE` or a sample
/// `name{label="value",...} value` of a family whose TYPE came before.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let valid_name = |name: &str| {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, ch)| {
                ch.is_ascii_alphabetic() || ch == '_' || ch == ':' || (i > 0 && ch.is_ascii_digit())
            })
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "{line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "one TYPE per family: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let labels = inner
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        assert!(valid_name(k), "{line}");
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        (k.to_string(), v.expect("quoted label value").to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(valid_name(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push((name.to_string(), labels, value));
    }
    (types, samples)
}

fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name && label.is_none_or(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
        .2
}

#[test]
fn metrics_text_is_valid_exposition_format() {
    let view = busy_view();
    let text = render_metrics(&view);
    let (types, samples) = parse_exposition(&text);

    for family in [
        "cttm_agent_role",
        "cttm_commit_mode",
        "cttm_replication_link_up",
        "cttm_connections",
        "cttm_replication_lag_bytes",
        "cttm_replication_lag_seconds",
        "cttm_held_packets",
        "cttm_failover_duration_seconds",
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some("gauge"),
            "{family}"
        );
    }
    for family in [
        "cttm_held_packets_total",
        "cttm_released_unprotected_total",
        "cttm_replicated_bytes_total",
        "cttm_segments_total",
        "cttm_connections_opened_total",
        "cttm_capture_dropped_frames_total",
        "cttm_degradations_total",
        "cttm_takeovers_total",
        "cttm_takeovers_refused_total",
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some("counter"),
            "{family}"
        );
    }
    assert_eq!(types["cttm_hold_time_seconds"], "histogram");

    assert_eq!(
        value(&samples, "cttm_agent_role", Some(("role", "primary"))),
        1.0
    );
    for other in ["backup", "serving", "non-serving"] {
        assert_eq!(
            value(&samples, "cttm_agent_role", Some(("role", other))),
            0.0
        );
    }
    assert_eq!(
        value(&samples, "cttm_commit_mode", Some(("mode", "degraded"))),
        1.0
    );
    assert_eq!(
        value(&samples, "cttm_commit_mode", Some(("mode", "sync"))),
        0.0
    );
    assert_eq!(value(&samples, "cttm_replication_link_up", None), 1.0);
    let by_state = [
        ("protected", 2.0),
        ("unprotected", 1.0),
        ("diverged", 1.0),
        ("lost", 0.0),
        ("restored", 0.0),
    ];
    for (state, count) in by_state {
        assert_eq!(
            value(&samples, "cttm_connections", Some(("state", state))),
            count,
            "{state}"
        );
    }
    assert_eq!(value(&samples, "cttm_replication_lag_bytes", None), 4321.0);
    assert_eq!(value(&samples, "cttm_replication_lag_seconds", None), 0.25);
    assert_eq!(value(&samples, "cttm_held_packets", None), 3.0);
    assert_eq!(value(&samples, "cttm_held_packets_total", None), 9000.0);
    assert_eq!(value(&samples, "cttm_segments_total", None), 123_456.0);
    assert_eq!(
        value(
            &samples,
            "cttm_replicated_bytes_total",
            Some(("direction", "client"))
        ),
        1e6
    );
    assert_eq!(
        value(
            &samples,
            "cttm_replicated_bytes_total",
            Some(("direction", "server"))
        ),
        2.5e6
    );
    assert_eq!(value(&samples, "cttm_degradations_total", None), 2.0);
    assert_eq!(
        value(&samples, "cttm_failover_duration_seconds", None),
        0.12325
    );

    // the histogram: cumulative, `le` in seconds, increasing, `+Inf` last and equal to the count
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(n, ..)| n == "cttm_hold_time_seconds_bucket")
        .map(|(_, labels, v)| {
            let le = match labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().expect("le is a number"),
            };
            (le, *v)
        })
        .collect();
    assert_eq!(buckets.len(), view.hold_time.bounds_us.len() + 1);
    assert!(
        buckets.windows(2).all(|w| w[0].0 < w[1].0),
        "le increases: {buckets:?}"
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    let count = value(&samples, "cttm_hold_time_seconds_count", None);
    assert_eq!(buckets.last().unwrap().1, count);
    assert_eq!(count, 7.0);
    // 30 and 75, 75 µs: one at or under 50 µs, three at or under 100 µs
    assert_eq!(buckets[0], (0.00005, 1.0));
    assert_eq!(buckets[1], (0.0001, 3.0));
    assert_eq!(
        buckets[buckets.len() - 2],
        (1.0, 6.0),
        "2 s is above every bound"
    );
    let sum = value(&samples, "cttm_hold_time_seconds_sum", None);
    assert!((sum - 2.07308).abs() < 1e-9, "{sum}");

    // before any takeover there is no failover duration; a fresh agent renders too
    let fresh = render_metrics(&AgentView::new(AgentRole::Backup, CommitState::Async));
    let (_, fresh_samples) = parse_exposition(&fresh);
    assert!(!fresh.contains("cttm_failover_duration_seconds"));
    assert_eq!(
        value(&fresh_samples, "cttm_hold_time_seconds_count", None),
        0.0
    );
    assert_eq!(
        value(
            &fresh_samples,
            "cttm_hold_time_seconds_bucket",
            Some(("le", "+Inf"))
        ),
        0.0
    );
}

/// An HTTP/1.1 request to `address`; returns (status line, headers, body).
fn http(address: std::net::SocketAddr, request: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

#[test]
fn metrics_are_scraped_over_http() {
    let observer = Observer::new(busy_view());
    let server =
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), observer.clone()).expect("metrics");
    let address = server.address();
    assert!(address.ip().is_loopback() && address.port() != 0);

    let (status, headers, body) = http(
        address,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    assert!(headers.contains("Connection: close"), "{headers}");
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len())),
        "{headers}"
    );
    assert_eq!(body, render_metrics(&busy_view()));
    parse_exposition(&body);

    // the next scrape sees what the agent published since
    observer.update(|v| v.counters.takeovers = 1);
    let (_, _, body) = http(address, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(body.contains("\ncttm_takeovers_total 1\n"), "{body}");

    let (status, _, body) = http(address, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("/metrics"));
    let (status, headers, _) = http(address, "DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET"), "{headers}");
    // a request head larger than the limit is refused, not buffered without end
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(huge.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    drop(server);
    assert!(
        TcpStream::connect(address).is_err(),
        "the endpoint closes with the server"
    );
}

/// Runs the real `cttmd` binary (killed after 30 s); returns (exit code, stdout, stderr).
fn cttmd(arguments: &[&str]) -> (Option<i32>, String, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cttmd"))
        .args(arguments)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cttmd");
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_status_and_rejoin_commands_talk_to_the_agent() {
    let dir = TempDir::new("obs");
    let missing = dir.path("missing.sock");
    let missing = missing.to_str().unwrap();
    let (code, out, err) = cttmd(&["status", "--socket", missing]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("no status socket at {missing}"))
            && err.contains("is the agent running?"),
        "{err}"
    );

    let path = dir.path("agent.sock");
    let socket = path.to_str().unwrap();
    let observer = Observer::new(busy_view());
    let _server = StatusServer::start(&path, observer.clone()).expect("socket");
    let (code, out, err) = cttmd(&["status", "--socket", socket]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("role         primary") && out.contains("[2001:db8::1]:40002"),
        "{out}"
    );
    let (code, out, err) = cttmd(&["status", &format!("--socket={socket}"), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        serde_json::from_str::<AgentView>(&out).expect("json"),
        busy_view()
    );

    let (code, _, err) = cttmd(&["rejoin", "--socket", socket]);
    assert_eq!(code, Some(1));
    assert!(err.contains("refused: this agent is primary"), "{err}");

    let (code, _, err) = cttmd(&["status", "--socket"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("flag --socket needs a value"), "{err}");
    let (code, _, err) = cttmd(&["rejoin", "--json"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown argument \"--json\" for `cttmd rejoin`"),
        "{err}"
    );
}

/// An agent whose status socket cannot be opened stops at once with exit status 1 and says
/// why. (The backup, on an interface that does not exist: it never gets further.)
#[test]
fn an_agent_that_cannot_open_its_status_socket_fails_clearly() {
    let dir = TempDir::new("obs");
    let path = dir.path("taken.sock");
    let _other_agent = StatusServer::start(
        &path,
        Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async)),
    )
    .expect("socket");
    let backup = |socket: &str| {
        cttmd(&[
            "backup",
            "--service",
            "198.18.0.10:7000",
            "--key",
            KEY,
            "--interface",
            "cttm-absent0",
            "--listen",
            "127.0.0.1:7700",
            "--status-socket",
            socket,
        ])
    };
    let (code, _, err) = backup(path.to_str().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cttmd backup: another agent is running"),
        "{err}"
    );

    let file = dir.path("file");
    std::fs::write(&file, b"").unwrap();
    let under_a_file = file.join("agent.sock");
    let (code, _, err) = backup(under_a_file.to_str().unwrap());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot create the status socket's directory"),
        "{err}"
    );
}
