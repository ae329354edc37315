//! Prometheus metrics: [`render_metrics`] writes an [`AgentView`] in the text exposition
//! format 0.0.4, and [`MetricsServer`] serves it at `GET /metrics` over HTTP/1.1 on a local
//! address (one request per connection, `Connection: close`).

use super::{AgentRole, AgentView, CommitState, Observer, ProtectionState};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The largest request head accepted (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send its request and read the answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a scraper's extra bytes are read (and dropped) after the answer.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the idle accept loop looks for a scraper or for the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

const ROLES: [AgentRole; 4] = [
    AgentRole::Primary,
    AgentRole::Backup,
    AgentRole::Serving,
    AgentRole::NonServing,
];
const MODES: [CommitState; 3] = [CommitState::Sync, CommitState::Async, CommitState::Degraded];

/// A sample value as Prometheus writes it (`NaN`, `+Inf`, `-Inf`, else the shortest
/// decimal that reads back to the same float).
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

fn seconds(micros: u64) -> String {
    float(micros as f64 / 1e6)
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The view in the Prometheus text exposition format 0.0.4: gauges for the role, mode,
/// link, lag, held packets and connections by protection state; counters (`_total`) for
/// the running totals; `cttm_failover_duration_seconds` once a takeover happened; the
/// hold-time histogram with cumulative buckets (`le` in seconds, `+Inf` last).
pub fn render_metrics(view: &AgentView) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "cttm_agent_role",
        "gauge",
        "The agent's role: 1 for the current one.",
    );
    for role in ROLES {
        let value = u8::from(view.role == role);
        let _ = writeln!(out, "cttm_agent_role{{role=\"{}\"}} {value}", role.name());
    }
    family(
        &mut out,
        "cttm_commit_mode",
        "gauge",
        "How output is committed now: 1 for the current mode.",
    );
    for mode in MODES {
        let value = u8::from(view.mode == mode);
        let _ = writeln!(out, "cttm_commit_mode{{mode=\"{}\"}} {value}", mode.name());
    }
    single(
        &mut out,
        "cttm_replication_link_up",
        "gauge",
        "1 when the replication link is up.",
        u8::from(view.link_up),
    );
    family(
        &mut out,
        "cttm_connections",
        "gauge",
        "Connections by protection state.",
    );
    for state in ProtectionState::ALL {
        let _ = writeln!(
            out,
            "cttm_connections{{state=\"{}\"}} {}",
            state.name(),
            view.count(state)
        );
    }
    single(
        &mut out,
        "cttm_replication_lag_bytes",
        "gauge",
        "Bytes the backup does not hold yet, over every connection.",
        view.lag_bytes,
    );
    single(
        &mut out,
        "cttm_replication_lag_seconds",
        "gauge",
        "The longest any connection's replication lag has lasted.",
        float(view.lag_ms as f64 / 1e3),
    );
    single(
        &mut out,
        "cttm_held_packets",
        "gauge",
        "Outgoing packets held by output commit now.",
        view.held_packets,
    );
    single(
        &mut out,
        "cttm_alerts",
        "gauge",
        "Conditions the operator must know about now (see `cttmd status`).",
        view.alerts.len(),
    );
    counters(&mut out, view);
    if let Some(ms) = view.failover_ms {
        single(
            &mut out,
            "cttm_failover_duration_seconds",
            "gauge",
            "How long the last takeover took, from the verdict to the first announcement.",
            float(ms / 1e3),
        );
    }
    hold_time(&mut out, view);
    out
}

fn counters(out: &mut String, view: &AgentView) {
    let c = &view.counters;
    let totals: [(&str, &str, u64); 8] = [
        (
            "cttm_held_packets_total",
            "Outgoing packets held by output commit.",
            c.held_packets,
        ),
        (
            "cttm_released_unprotected_total",
            "Held packets released without the backup's acknowledgement.",
            c.released_unprotected,
        ),
        (
            "cttm_segments_total",
            "Segments of service connections tracked.",
            c.segments,
        ),
        (
            "cttm_connections_opened_total",
            "Connections opened (primary) or replicated (backup).",
            c.connections_opened,
        ),
        (
            "cttm_capture_dropped_frames_total",
            "Frames the capture reported dropped.",
            c.dropped_frames,
        ),
        (
            "cttm_degradations_total",
            "Times the primary degraded from sync to async.",
            c.degradations,
        ),
        ("cttm_takeovers_total", "Takeovers completed.", c.takeovers),
        (
            "cttm_takeovers_refused_total",
            "Takeovers not done: the service address answered a probe or fencing failed.",
            c.takeovers_refused,
        ),
    ];
    for (name, help, value) in totals {
        single(out, name, "counter", help, value);
    }
    family(
        out,
        "cttm_replicated_bytes_total",
        "counter",
        "Stream bytes replicated to the backup, by the direction of the stream.",
    );
    let _ = writeln!(
        out,
        "cttm_replicated_bytes_total{{direction=\"client\"}} {}",
        c.bytes_replicated_client
    );
    let _ = writeln!(
        out,
        "cttm_replicated_bytes_total{{direction=\"server\"}} {}",
        c.bytes_replicated_server
    );
}

fn hold_time(out: &mut String, view: &AgentView) {
    let h = &view.hold_time;
    family(
        out,
        "cttm_hold_time_seconds",
        "histogram",
        "How long output commit held the packets the backup's acknowledgement released.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in h.bounds_us.iter().enumerate() {
        cumulative = cumulative.saturating_add(h.counts.get(i).copied().unwrap_or(0));
        let _ = writeln!(
            out,
            "cttm_hold_time_seconds_bucket{{le=\"{}\"}} {cumulative}",
            seconds(*bound)
        );
    }
    let above = h.counts.get(h.bounds_us.len()).copied().unwrap_or(0);
    // `+Inf` is the count; never below the buckets, even for an inconsistent view
    let count = h.count.max(cumulative.saturating_add(above));
    let _ = writeln!(out, "cttm_hold_time_seconds_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "cttm_hold_time_seconds_sum {}", seconds(h.sum_us));
    let _ = writeln!(out, "cttm_hold_time_seconds_count {count}");
}

/// Opening the metrics endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error(
        "cannot serve metrics on {address}: {source}; set `metrics_listen` to a free port of a local address (e.g. 127.0.0.1:9464)"
    )]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the metrics thread: {0}; check the process and thread limits")]
    Thread(#[source] io::Error),
}

/// The metrics endpoint of a running agent, served on its own thread until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `observer`'s view at `http://address/metrics` (port 0: any free port, see
    /// [`address`](MetricsServer::address)).
    pub fn start(address: SocketAddr, observer: Observer) -> Result<MetricsServer, MetricsError> {
        let bind_error = |source| MetricsError::Bind { address, source };
        let listener = TcpListener::bind(address).map_err(bind_error)?;
        let bound = listener.local_addr().map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(&listener, &observer, &flag))
            .map_err(MetricsError::Thread)?;
        tracing::info!(address = %bound, "metrics at http://{bound}/metrics");
        Ok(MetricsServer {
            address: bound,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Scrapes are served one at a time on this thread: each is bounded by [`HTTP_TIMEOUT`]
/// and [`MAX_REQUEST_HEAD`], and Prometheus scrapes one target sequentially.
fn accept_loop(listener: &TcpListener, observer: &Observer, stop: &AtomicBool) {
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => serve(stream, observer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                if !warned {
                    tracing::warn!("metrics: accept failed: {e} (retrying)");
                    warned = true;
                }
                std::thread::sleep(ACCEPT_POLL * 5);
            }
        }
    }
}

fn serve(mut stream: TcpStream, observer: &Observer) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(HTTP_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)));
    if setup.is_err() {
        return;
    }
    let response = match read_head(&mut stream) {
        Ok(head) => respond(&head, observer),
        Err(status) => response(status, "text/plain; charset=utf-8", status.as_bytes()),
    };
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // closing with unread request bytes would reset the connection before the answer is read
    let _ = stream.set_read_timeout(Some(DRAIN_TIMEOUT));
    super::status_socket::drain(&mut stream);
}

/// The request head (up to the empty line), or the status line of the error to answer.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err("431 Request Header Fields Too Large");
        }
        match stream.read(&mut buffer) {
            Ok(0) if head.is_empty() => return Err("400 Bad Request"),
            // the client closed its side after the request line: serve what came
            Ok(0) => return Ok(head),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(_) => return Err("408 Request Timeout"),
        }
    }
}

fn respond(head: &[u8], observer: &Observer) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let request_line = text.lines().next().unwrap_or("");
    let mut words = request_line.split(' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) || words.next().is_some() {
        return response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            b"400 Bad Request\n",
        );
    }
    let path = target.unwrap_or("").split('?').next().unwrap_or("");
    match (method, path) {
        (Some("GET"), "/metrics") => response(
            "200 OK",
            CONTENT_TYPE,
            render_metrics(&observer.view()).as_bytes(),
        ),
        (Some("GET"), _) => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"404 Not Found: the metrics are at /metrics\n",
        ),
        _ => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"405 Method Not Allowed: GET /metrics\n",
        ),
    }
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        assert_eq!(float(0.00005), "0.00005");
        assert_eq!(float(1.0), "1");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(seconds(1_500_000), "1.5");
    }

    #[test]
    fn an_inconsistent_histogram_still_has_non_decreasing_buckets() {
        let mut view = AgentView::new(AgentRole::Primary, CommitState::Sync);
        view.hold_time.counts = vec![5]; // fewer entries than bounds + 1
        view.hold_time.count = 2;
        let text = render_metrics(&view);
        assert!(text.contains("cttm_hold_time_seconds_bucket{le=\"0.00005\"} 5\n"));
        assert!(text.contains("cttm_hold_time_seconds_bucket{le=\"+Inf\"} 5\n"));
        assert!(text.contains("cttm_hold_time_seconds_count 5\n"));
    }

    #[test]
    fn request_lines_get_the_right_status() {
        let observer = Observer::new(AgentView::new(AgentRole::Backup, CommitState::Async));
        let status = |head: &str| {
            let r = respond(head.as_bytes(), &observer);
            String::from_utf8_lossy(&r)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), "HTTP/1.1 200 OK");
        assert_eq!(
            status("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            "HTTP/1.1 200 OK"
        );
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status("POST /metrics HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(status("garbage\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(status("\u{0}\u{1}"), "HTTP/1.1 400 Bad Request");
    }
}
