//! The demo's client: many connections to a [`cttm_kvd`] service, each checking every byte
//! it receives against what the deterministic daemon must answer (the
//! [`cttm_kvd::Session`] and [`cttm_kvd::StreamGenerator`] oracles), and measuring the longest
//! wait. Request/response connections send a mix of `SET`, `INCR`, `GET`, `COUNT`, `ECHO` and
//! short `STREAM`s; stream connections read long `STREAM`s at a paced rate (TCP flow control
//! holds the server back) so that they are mid-transfer whenever the crash comes.

use cttm_kvd::{Reply, Session, StreamGenerator};
use parking_lot::Mutex;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the client saw.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    /// Connections opened.
    pub connections: usize,
    /// Connections that ran to the end and closed cleanly (`QUIT`/`BYE`).
    pub kept: usize,
    /// Connections lost, with the reason.
    pub lost: Vec<(usize, String)>,
    /// Requests answered correctly.
    pub requests: u64,
    /// Bytes received and checked against the oracle.
    pub bytes_verified: u64,
    /// The longest wait for a reply, or for stream bytes, on any connection.
    pub longest_stall: Duration,
    /// Which connection stalled longest, waiting for what, from when (seconds since the
    /// workload started).
    pub longest_stall_at: String,
    /// How long the workload ran.
    pub elapsed: Duration,
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "connections kept:  {}/{}", self.kept, self.connections)?;
        writeln!(f, "requests answered: {}", self.requests)?;
        writeln!(
            f,
            "bytes verified:    {} ({:.1} MB)",
            self.bytes_verified,
            self.bytes_verified as f64 / 1e6
        )?;
        write!(
            f,
            "longest stall:     {} ms ({})",
            self.longest_stall.as_millis(),
            self.longest_stall_at
        )?;
        for (index, reason) in &self.lost {
            write!(f, "\nlost connection {index}: {reason}")?;
        }
        Ok(())
    }
}

/// Counters of a running workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Connections not lost so far.
    pub alive: usize,
    /// Requests answered correctly.
    pub requests: u64,
    /// Bytes verified.
    pub bytes_verified: u64,
    /// Longest stall so far.
    pub longest_stall: Duration,
}

/// How the client workload behaves.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadOptions {
    /// Every `stream_every`-th connection (the first included) is a long stream; the others
    /// do request/response.
    pub stream_every: usize,
    /// Pause between two requests on one connection.
    pub request_interval: Duration,
    /// Bytes per second each stream connection reads (the server is held back by TCP flow
    /// control, so the stream lasts the whole run).
    pub stream_rate: u64,
    /// How long a reply may take before the connection counts as lost.
    pub reply_timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            stream_every: 8,
            request_interval: Duration::from_millis(20),
            stream_rate: 2_000_000,
            reply_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    lost: AtomicUsize,
    requests: AtomicU64,
    bytes: AtomicU64,
    stall_us: AtomicU64,
    /// Where the longest stall happened.
    stall_where: Mutex<String>,
}

impl Counters {
    fn stall(&self, d: Duration, place: impl FnOnce() -> String) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        if us <= self.stall_us.load(Ordering::Relaxed) {
            return;
        }
        let mut place_of_longest = self.stall_where.lock();
        if self.stall_us.fetch_max(us, Ordering::Relaxed) < us {
            *place_of_longest = place();
        }
    }

    fn longest_stall(&self) -> (Duration, String) {
        let place = self.stall_where.lock().clone();
        (
            Duration::from_micros(self.stall_us.load(Ordering::Relaxed)),
            place,
        )
    }
}

/// How a connection's thread should end.
const RUN: u8 = 0;
const FINISH: u8 = 1;
const ABORT: u8 = 2;

/// A client workload: one thread per connection, each checking every byte it receives.
#[derive(Debug)]
pub struct Workload {
    counters: Arc<Counters>,
    state: Arc<AtomicU8>,
    threads: Vec<JoinHandle<Result<(), String>>>,
    started: Instant,
}

/// Opens `count` connections to `target` (call it inside the client's namespace, e.g. in
/// [`cttm_tests::lab::Netns::run`]: the sockets stay there).
pub fn connect_all(
    target: SocketAddr,
    count: usize,
    timeout: Duration,
) -> io::Result<Vec<TcpStream>> {
    (0..count)
        .map(|_| {
            let s = TcpStream::connect_timeout(&target, timeout)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .collect()
}

/// Why a connection stopped early.
enum Stop {
    Lost(String),
    Aborted,
}

/// How often a blocked read looks at the workload's state.
const READ_TICK: Duration = Duration::from_millis(100);

/// One client connection with deadline-bounded reads.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    state: Arc<AtomicU8>,
    counters: Arc<Counters>,
    timeout: Duration,
    index: usize,
    origin: Instant,
}

impl Conn {
    fn new(
        stream: TcpStream,
        state: Arc<AtomicU8>,
        counters: Arc<Counters>,
        timeout: Duration,
        index: usize,
        origin: Instant,
    ) -> io::Result<Conn> {
        stream.set_read_timeout(Some(READ_TICK))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 * 1024, stream.try_clone()?),
            writer: stream,
            state,
            counters,
            timeout,
            index,
            origin,
        })
    }

    fn send(&mut self, request: &str) -> Result<(), Stop> {
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|e| Stop::Lost(format!("sending {request:?}: {e}")))
    }

    /// Runs `attempt` until it completes, retrying on read timeouts until the reply
    /// deadline; returns the time spent waiting.
    fn wait<T>(
        &mut self,
        what: &str,
        mut attempt: impl FnMut(&mut BufReader<TcpStream>) -> io::Result<Option<T>>,
    ) -> Result<T, Stop> {
        let start = Instant::now();
        loop {
            match attempt(&mut self.reader) {
                Ok(Some(v)) => {
                    self.note_stall(start, what);
                    return Ok(v);
                }
                Ok(None) => {
                    return Err(Stop::Lost(format!(
                        "connection closed by the server while waiting for {what}"
                    )));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.state.load(Ordering::Relaxed) == ABORT {
                        return Err(Stop::Aborted);
                    }
                    if start.elapsed() > self.timeout {
                        // a wait that never ended is the longest stall of all
                        self.note_stall(start, what);
                        return Err(Stop::Lost(format!(
                            "no {what} within {} s",
                            self.timeout.as_secs()
                        )));
                    }
                }
                Err(e) => return Err(Stop::Lost(format!("waiting for {what}: {e}"))),
            }
        }
    }

    fn note_stall(&self, start: Instant, what: &str) {
        let (index, origin) = (self.index, self.origin);
        self.counters.stall(start.elapsed(), || {
            format!(
                "connection {index}, waiting for {what} from {:.1} s",
                start.duration_since(origin).as_secs_f64()
            )
        });
    }

    /// Reads one line (without its `\n`).
    fn line(&mut self, what: &str) -> Result<Vec<u8>, Stop> {
        let mut line = Vec::new();
        let got = self.wait(what, |r| {
            // partial data stays in `line` across timeouts (read_until keeps what it read)
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(None);
            }
            Ok(line.ends_with(b"\n").then_some(()))
        });
        match got {
            Ok(()) => {
                line.pop();
                self.counters
                    .bytes
                    .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                Ok(line)
            }
            Err(Stop::Lost(m)) if line.is_empty() => Err(Stop::Lost(m)),
            Err(Stop::Lost(m)) => Err(Stop::Lost(format!(
                "{m} (after a partial line {:?})",
                String::from_utf8_lossy(&line)
            ))),
            Err(Stop::Aborted) => Err(Stop::Aborted),
        }
    }

    fn expect_line(&mut self, what: &str, expected: &str) -> Result<(), Stop> {
        let got = self.line(what)?;
        if got != expected.as_bytes() {
            return Err(Stop::Lost(format!(
                "wrong {what}: expected {expected:?}, got {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    /// Reads some stream bytes into `buf` (at most its length); returns how many.
    fn some(&mut self, what: &str, buf: &mut [u8]) -> Result<usize, Stop> {
        let n = self.wait(what, |r| match r.read(buf)? {
            0 => Ok(None),
            n => Ok(Some(n)),
        })?;
        Ok(n)
    }

    /// Reads the rest of the stream `generator` and checks every byte; with `rate`, at most
    /// that many bytes per second (unless the workload is finishing).
    fn stream(&mut self, generator: &mut StreamGenerator, rate: Option<u64>) -> Result<(), Stop> {
        let mut got = vec![0u8; 16 * 1024];
        let mut want = vec![0u8; 16 * 1024];
        let total = generator.remaining();
        let start = Instant::now();
        let mut done = 0u64;
        while generator.remaining() > 0 {
            let limit = got
                .len()
                .min(usize::try_from(generator.remaining()).unwrap_or(usize::MAX));
            let n = self.some("stream bytes", &mut got[..limit])?;
            let m = generator.fill(&mut want[..n]);
            debug_assert_eq!(m, n);
            if got[..n] != want[..n] {
                let at = got[..n]
                    .iter()
                    .zip(&want[..n])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(Stop::Lost(format!(
                    "stream byte {} of {total} differs from the expected stream",
                    done + at as u64
                )));
            }
            done += n as u64;
            self.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(rate) = rate {
                if self.state.load(Ordering::Relaxed) != RUN {
                    continue;
                }
                let due = Duration::from_secs_f64(done as f64 / rate as f64);
                let elapsed = start.elapsed();
                if due > elapsed {
                    std::thread::sleep((due - elapsed).min(READ_TICK));
                }
            }
        }
        Ok(())
    }

    /// `QUIT`, `BYE`, then the server's close.
    fn quit(&mut self) -> Result<(), Stop> {
        self.send("QUIT")?;
        self.expect_line("reply to QUIT", "BYE")?;
        let mut rest = [0u8; 64];
        match self.wait("the server's close", |r| match r.read(&mut rest)? {
            0 => Ok(Some(0)),
            n => Ok(Some(n)),
        }) {
            Ok(0) => Ok(()),
            Ok(n) => Err(Stop::Lost(format!("{n} unexpected bytes after BYE"))),
            Err(e) => Err(e),
        }
    }
}

/// The request a request/response connection sends at `step`.
fn request(connection: usize, step: u64) -> String {
    let k = step % 50;
    match step % 6 {
        0 => format!("SET k{k} v{connection}-{step}"),
        1 => format!("INCR n{} {}", connection % 3, step % 7),
        2 => format!("GET k{}", (step + 48) % 50),
        3 => "COUNT".to_string(),
        4 => format!("ECHO hello {connection} {step}"),
        _ => format!(
            "STREAM {} {}",
            1000 + step % 3000,
            (connection as u64) * 1_000_003 + step
        ),
    }
}

fn request_response(conn: &mut Conn, index: usize, interval: Duration) -> Result<(), Stop> {
    let mut oracle = Session::new();
    let mut step = 0u64;
    while conn.state.load(Ordering::Relaxed) == RUN {
        let req = request(index, step);
        conn.send(&req)?;
        match oracle.handle(req.as_bytes()) {
            Reply::Line(expected) => conn.expect_line(&format!("reply to {req:?}"), &expected)?,
            Reply::Stream { len, seed } => {
                conn.expect_line(&format!("reply to {req:?}"), &format!("DATA {len}"))?;
                let mut generator = StreamGenerator::new(seed, len);
                conn.stream(&mut generator, None)?;
                conn.expect_line("the end of a stream", "")?;
                conn.expect_line("a stream's checksum", &generator.sum_line())?;
            }
            Reply::Bye => return Err(Stop::Lost("the workload never sends QUIT mid-run".into())),
        }
        conn.counters.requests.fetch_add(1, Ordering::Relaxed);
        step += 1;
        std::thread::sleep(interval);
    }
    Ok(())
}

fn long_stream(conn: &mut Conn, index: usize, rate: u64) -> Result<(), Stop> {
    // each STREAM lasts about two seconds at the paced rate; the next follows at once
    let len = rate * 2;
    let mut seed = index as u64 * 7_919;
    while conn.state.load(Ordering::Relaxed) == RUN {
        let req = format!("STREAM {len} {seed}");
        conn.send(&req)?;
        conn.expect_line(&format!("reply to {req:?}"), &format!("DATA {len}"))?;
        let mut generator = StreamGenerator::new(seed, len);
        conn.stream(&mut generator, Some(rate))?;
        conn.expect_line("the end of a stream", "")?;
        conn.expect_line("a stream's checksum", &generator.sum_line())?;
        conn.counters.requests.fetch_add(1, Ordering::Relaxed);
        seed += 1;
    }
    Ok(())
}

impl Workload {
    /// Starts one thread per connection. `streams` come from [`connect_all`].
    pub fn start(streams: Vec<TcpStream>, options: WorkloadOptions) -> io::Result<Workload> {
        let counters = Arc::new(Counters::default());
        let state = Arc::new(AtomicU8::new(RUN));
        let origin = Instant::now();
        let mut threads = Vec::new();
        for (index, stream) in streams.into_iter().enumerate() {
            let mut conn = Conn::new(
                stream,
                state.clone(),
                counters.clone(),
                options.reply_timeout,
                index,
                origin,
            )?;
            let is_stream = index % options.stream_every.max(1) == 0;
            threads.push(std::thread::spawn(move || {
                let run = if is_stream {
                    long_stream(&mut conn, index, options.stream_rate)
                } else {
                    request_response(&mut conn, index, options.request_interval)
                };
                let end = run.and_then(|()| {
                    if conn.state.load(Ordering::Relaxed) == ABORT {
                        return Err(Stop::Aborted);
                    }
                    conn.quit()
                });
                match end {
                    Ok(()) => Ok(()),
                    Err(Stop::Aborted) => Err("stopped before the end".to_string()),
                    Err(Stop::Lost(reason)) => {
                        conn.counters.lost.fetch_add(1, Ordering::Relaxed);
                        Err(reason)
                    }
                }
            }));
        }
        Ok(Workload {
            counters,
            state,
            threads,
            started: origin,
        })
    }

    /// The counters so far.
    pub fn progress(&self) -> Progress {
        Progress {
            alive: self.threads.len() - self.counters.lost.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            bytes_verified: self.counters.bytes.load(Ordering::Relaxed),
            longest_stall: self.counters.longest_stall().0,
        }
    }

    /// Ends the workload: each connection finishes its request (streams their current
    /// stream, unpaced), sends `QUIT` and checks the `BYE` and the close. With `abort`, the
    /// connections stop at once instead.
    pub fn finish(self, abort: bool) -> WorkloadReport {
        self.state
            .store(if abort { ABORT } else { FINISH }, Ordering::Relaxed);
        let mut report = WorkloadReport {
            connections: self.threads.len(),
            ..WorkloadReport::default()
        };
        for (index, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => report.kept += 1,
                Ok(Err(reason)) => report.lost.push((index, reason)),
                Err(_) => report.lost.push((index, "client thread panicked".into())),
            }
        }
        report.requests = self.counters.requests.load(Ordering::Relaxed);
        report.bytes_verified = self.counters.bytes.load(Ordering::Relaxed);
        (report.longest_stall, report.longest_stall_at) = self.counters.longest_stall();
        report.elapsed = self.started.elapsed();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_kvd::{Server, ServerOptions};
    use cttm_tests::lab::{Lab, kernel_tests_enabled};

    #[test]
    fn every_workload_request_is_valid_kvd_protocol() {
        for connection in 0..4 {
            let mut session = Session::new();
            for step in 0..600 {
                let req = request(connection, step);
                if let Reply::Line(l) = session.handle(req.as_bytes()) {
                    assert!(!l.starts_with("ERR"), "{req:?} -> {l}");
                }
            }
        }
    }

    fn loopback_kvd(options: ServerOptions) -> Server {
        Server::start(&["127.0.0.1:0".parse().unwrap()], options).expect("kvd on loopback")
    }

    fn quick() -> WorkloadOptions {
        WorkloadOptions {
            stream_every: 3,
            request_interval: Duration::from_millis(5),
            stream_rate: 5_000_000,
            reply_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_workload_verifies_a_deterministic_server_and_closes_cleanly() {
        let server = loopback_kvd(ServerOptions::default());
        let streams =
            connect_all(server.addresses()[0], 6, Duration::from_secs(5)).expect("connect");
        let workload = Workload::start(streams, quick()).expect("start");
        std::thread::sleep(Duration::from_millis(1500));
        let report = workload.finish(false);
        assert_eq!(report.lost, Vec::new());
        assert_eq!(report.kept, 6);
        // two streams of 5 MB/s over 1.5 s, each ended with a checked SUM, and the requests
        assert!(report.requests > 6, "{report}");
        assert!(report.bytes_verified > 1_000_000, "{report}");
    }

    #[test]
    fn the_workload_catches_a_server_that_answers_differently() {
        let server = loopback_kvd(ServerOptions { diverge: true });
        let streams =
            connect_all(server.addresses()[0], 4, Duration::from_secs(5)).expect("connect");
        let workload = Workload::start(streams, quick()).expect("start");
        std::thread::sleep(Duration::from_millis(500));
        let report = workload.finish(false);
        assert_eq!(report.kept, 0, "{report}");
        assert_eq!(report.lost.len(), 4);
        for (_, reason) in &report.lost {
            assert!(reason.starts_with("wrong reply to"), "{reason}");
            assert!(reason.contains(" pid="), "{reason}");
        }
    }

    #[test]
    fn an_aborted_workload_ends_promptly_and_says_so() {
        let server = loopback_kvd(ServerOptions::default());
        let streams =
            connect_all(server.addresses()[0], 3, Duration::from_secs(5)).expect("connect");
        let workload = Workload::start(streams, quick()).expect("start");
        std::thread::sleep(Duration::from_millis(200));
        let report = workload.finish(true);
        assert_eq!(report.kept, 0);
        assert!(
            report
                .lost
                .iter()
                .all(|(_, r)| r == "stopped before the end"),
            "{report}"
        );
    }

    #[test]
    fn the_workload_rides_out_a_cut_link_in_a_lab() {
        if !kernel_tests_enabled("demo workload across a cut link") {
            return;
        }
        let mut lab = Lab::new("dwl").expect("lab");
        let client = lab.add_host("c", &["198.18.0.1/24"]).expect("client");
        let server_host = lab.add_host("s", &["198.18.0.2/24"]).expect("server");
        let server = server_host
            .run(|| loopback_kvd_at("198.18.0.2:7000"))
            .expect("in server namespace");
        let target: SocketAddr = "198.18.0.2:7000".parse().unwrap();
        let streams = client
            .run(move || connect_all(target, 5, Duration::from_secs(5)))
            .expect("in client namespace")
            .expect("connect");
        let workload = Workload::start(streams, quick()).expect("start");
        std::thread::sleep(Duration::from_millis(500));
        lab.cut(&server_host).expect("cut");
        std::thread::sleep(Duration::from_millis(700));
        lab.reconnect(&server_host).expect("reconnect");
        std::thread::sleep(Duration::from_millis(500));
        let report = workload.finish(false);
        drop(server);
        assert_eq!(report.lost, Vec::new(), "{report}");
        assert_eq!(report.kept, 5);
        assert!(report.bytes_verified > 0);
    }

    fn loopback_kvd_at(address: &str) -> Server {
        Server::start(&[address.parse().unwrap()], ServerOptions::default()).expect("kvd")
    }
}
