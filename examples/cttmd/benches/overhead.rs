//! What the agents cost the service, and what protection they deliver for it: kvd's
//! throughput (requests per second) and request latency (p50, p99) with [`CONNECTIONS`]
//! concurrent connections, in three modes measured in the same run, each time in a fresh
//! [`FailoverLab`] (client, primary, backup namespaces on one bridge; kvd on both servers):
//!
//! - no CTTM: plain kvd on the primary, no agent running;
//! - async: primary + backup agents, async mode (AF_PACKET capture, no hold);
//! - sync: primary + backup agents, sync mode (NFQUEUE output commit: every answer held
//!   until the backup acknowledged what it carries and acknowledges).
//!
//! Two loads, each connection on its own client thread (alternately `SET k<i> <100 bytes>`
//! and `GET k<i>`, every answer checked by [`KvClient`]'s oracle):
//!
//! - closed loop, [`ROUNDS`] rounds of the three modes in turn (a disturbance of the two
//!   shared cores spreads over the modes): a request, its answer, the next request, as fast
//!   as the service answers (saturation);
//! - fixed offered load, one round: each connection sends one request every
//!   `CONNECTIONS / rate` seconds (`rate` requests per second in total, [`DEFAULT_RATE`]
//!   unless `-- rate N` says otherwise); a request due while the previous one is still
//!   unanswered goes as soon as that answer arrives, and missed slots are skipped, not
//!   caught up (no pile-up).
//!
//! After [`WARMUP`] unmeasured, the requests sent and answered within the measured window
//! count: throughput is their number over the window; latency is from a request's write to
//! the end of its answer, timed on the client. Printed per load: a table with the ratios to
//! no CTTM and the primary agent's counters (segments tracked, packets held and released,
//! frames the capture dropped, degradations), then, per agent mode and round, the
//! protection it delivered: at the end of the measured window, while every connection is
//! still open, the primary's status says which of the clients' connections it tracks, which
//! it can restore, and which the backup holds; any other connection is unprotected (a crash
//! then would break it). An agent whose capture dropped frames did not keep up with the
//! load: its low cost is then partly that it follows only part of it.
//!
//! Needs root (namespaces, NFQUEUE, AF_PACKET); without it, it says so and exits 0.
//! `cargo bench -p cttmd --bench overhead [-- rate N]`.

/// The agents in the lab, shared with the failover tests of `cttm-tests` (which cannot be a
/// library of cttmd's: cttmd depends on `cttm-tests`).
#[path = "../../../tests/tests/failover_agents/mod.rs"]
#[allow(dead_code)]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, KvClient, ServiceFamily, kv_text, wait_until};
use cttmd::options::CommitMode;
use cttmd::primary::{PrimaryExit, PrimaryMonitor, PrimaryStatus};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Concurrent connections (one client thread each).
const CONNECTIONS: usize = 64;
/// Unmeasured time at the start of each mode (connections, caches, ARP).
const WARMUP: Duration = Duration::from_secs(1);
/// The measured time of each mode in each round of the closed loop.
const MEASURE: Duration = Duration::from_secs(6);
/// The measured time of each mode at the fixed offered load.
const MEASURE_FIXED: Duration = Duration::from_secs(6);
/// Rounds of the closed loop: each measures every mode once, in turn, so a disturbance of
/// the machine (two shared cores) spreads over the modes instead of hitting one; a mode's
/// figures merge its rounds.
const ROUNDS: usize = 2;
/// The fixed offered load, requests per second over all connections, unless `-- rate N`.
/// Chosen so that the async agent keeps up on the 2-core VM the figures come from (its
/// capture dropped no frame there); the protection lines say whether it did.
const DEFAULT_RATE: u32 = 8_000;
/// The accepted range of `-- rate N` (requests per second over all connections).
const RATE_RANGE: std::ops::RangeInclusive<u32> = 64..=1_000_000;
/// Socket timeouts of the clients (and of their connects).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the `SET` values.
const VALUE_LEN: usize = 100;
/// Distinct keys per connection.
const KEYS: usize = 16;
/// Most requests one connection sends in one measurement (the loops are also bounded by
/// time; closed loop at saturation sends about 2,000 a second per connection here).
const MAX_REQUESTS: usize = 1_000_000;
/// The longest a client waits for the others to connect before it starts.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long, after the measured window, the load waits for every client to report before it
/// reads the primary's status anyway (a client's request may take up to its timeouts).
const REPORT_LIMIT: Duration = Duration::from_secs(30);
/// The pause between the last client's report and the status read, so that the backup's
/// acknowledgements of the last requests are in (the status is refreshed every 10 ms).
const SETTLE: Duration = Duration::from_millis(300);
/// The longest a client waits, connection open, for the status to be read.
const CLOSE_WAIT_LIMIT: Duration = Duration::from_secs(60);
/// NFQUEUE queue of the sync mode's primary (this benchmark's own).
const SYNC_QUEUE: u16 = 90;

/// How each connection paces its requests.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// The next request as soon as the answer arrived.
    Closed,
    /// One request every `interval` (per connection); late ones go at once, missed slots
    /// are skipped.
    Fixed {
        /// The time between two requests of one connection.
        interval: Duration,
    },
}

/// What the primary delivered to the clients' connections at the end of a measured window.
#[derive(Debug, Default)]
struct Protection {
    /// Clients' connections considered (those that connected).
    connections: usize,
    /// Connections the primary does not track at all (handshake never captured).
    untracked: usize,
    /// Tracked connections it cannot restore, by reason ([`cttm_core::event::UnsafeReason`]).
    unrestorable: BTreeMap<String, usize>,
    /// Restorable connections the backup holds nothing of.
    not_held: usize,
    /// Bytes a crash then would lose, over the protected connections.
    bytes_at_risk: u64,
    /// The primary published no status (it never ran, or was not asked).
    no_status: bool,
}

impl Protection {
    /// What `status` says of the connections from `clients`.
    fn of(status: Option<&PrimaryStatus>, clients: &[SocketAddr]) -> Protection {
        let mut protection = Protection {
            connections: clients.len(),
            ..Protection::default()
        };
        let Some(status) = status else {
            protection.no_status = true;
            protection.untracked = clients.len();
            return protection;
        };
        for client in clients {
            match status.connections.iter().find(|c| c.id.client == *client) {
                None => protection.untracked += 1,
                Some(c) => match c.unsafe_reason {
                    Some(reason) => {
                        // The variant's name, without its fields.
                        let name = format!("{reason:?}");
                        let name = name
                            .split(|ch: char| !ch.is_alphanumeric())
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        *protection.unrestorable.entry(name).or_default() += 1;
                    }
                    None if c.backup.is_none() => protection.not_held += 1,
                    None => protection.bytes_at_risk += c.at_risk(),
                },
            }
        }
        protection
    }

    fn unprotected(&self) -> usize {
        self.untracked + self.unrestorable.values().sum::<usize>() + self.not_held
    }

    /// One line: how many connections were unprotected, and why.
    fn describe(&self, dropped_frames: u64) -> String {
        if self.no_status {
            return format!(
                "capture dropped {dropped_frames} frames; the primary published no status, its protection is unknown"
            );
        }
        let unprotected = self.unprotected();
        let mut line = format!(
            "capture dropped {dropped_frames} frames: {unprotected} of {} connections unprotected",
            self.connections
        );
        if unprotected > 0 {
            let mut why = Vec::new();
            if self.untracked > 0 {
                why.push(format!("{} not tracked", self.untracked));
            }
            for (reason, n) in &self.unrestorable {
                why.push(format!("{n} unrestorable ({reason})"));
            }
            if self.not_held > 0 {
                why.push(format!("{} not held by the backup", self.not_held));
            }
            line += &format!(" [{}]", why.join(", "));
        }
        line += &format!(
            ", {} bytes at risk on the protected ones",
            self.bytes_at_risk
        );
        if dropped_frames > 0 || unprotected > 0 {
            line += " (the agent did not keep up)";
        }
        line
    }
}

/// What one mode measured.
struct Measured {
    /// Requests answered within the measured windows.
    requests: usize,
    /// Their latencies, sorted.
    latencies: Vec<Duration>,
    /// Connections that failed (any failure is printed too).
    failed: usize,
    /// Total length of the measured windows merged (rounds).
    measured: Duration,
    /// The primary agent's counters, one per round (agent modes).
    exits: Vec<PrimaryExit>,
    /// The protection it delivered, one per round (agent modes).
    protections: Vec<Protection>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.measured.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Adds another round of the same mode.
    fn merge(&mut self, other: Measured) {
        self.requests += other.requests;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.failed += other.failed;
        self.measured += other.measured;
        self.exits.extend(other.exits);
        self.protections.extend(other.protections);
    }

    /// The primary agent's counters summed over the rounds: segments, held, released,
    /// dropped frames, degradations.
    fn counters(&self) -> Option<[u64; 5]> {
        (!self.exits.is_empty()).then(|| {
            self.exits.iter().fold([0; 5], |sum, e| {
                [
                    sum[0] + e.segments,
                    sum[1] + e.held,
                    sum[2] + e.released,
                    sum[3] + e.dropped_frames,
                    sum[4] + e.degradations,
                ]
            })
        })
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

/// How the clients and the load's driver meet: at the start, every client connects (or
/// fails to) and the driver lets them all start together; at the end of the measured
/// window, every client reports (done measuring, or failed), the driver reads the primary's
/// status while the connections are all still open, then lets the clients close.
#[derive(Default)]
struct Handoff {
    /// Clients that connected or failed to.
    connected: AtomicUsize,
    /// The clients may start.
    go: AtomicBool,
    /// The load was abandoned (a client thread could not be started): stop at once.
    abort: AtomicBool,
    /// Clients that reported.
    reported: AtomicUsize,
    /// The status was read: the clients may close.
    may_close: AtomicBool,
}

/// A client's report to the [`Handoff`], made once: explicitly, or when the client ends
/// (failure included).
struct Report {
    handoff: Arc<Handoff>,
    made: bool,
}

impl Report {
    fn make(&mut self) {
        if !self.made {
            self.made = true;
            self.handoff.reported.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        self.make();
    }
}

/// What one connection measured.
struct ConnectionResult {
    /// The client's address (its connection's identity at the primary).
    local: SocketAddr,
    /// The latencies of the requests sent within the measured window (and answered in it).
    latencies: Vec<Duration>,
}

/// One connection's load, paced by `pace`, or why it failed.
fn connection(
    service: SocketAddr,
    number: usize,
    pace: Pace,
    measure: Duration,
    handoff: Arc<Handoff>,
) -> Result<ConnectionResult, String> {
    let mut report = Report {
        handoff: handoff.clone(),
        made: false,
    };
    let client = KvClient::connect(service, IO_TIMEOUT);
    handoff.connected.fetch_add(1, Ordering::SeqCst);
    wait_until(START_LIMIT, || handoff.go.load(Ordering::SeqCst));
    if handoff.abort.load(Ordering::SeqCst) {
        return Err(format!("connection {number}: the load was abandoned"));
    }
    let mut client = client.map_err(|e| format!("connection {number}: connect: {e}"))?;
    let local = client
        .local()
        .map_err(|e| format!("connection {number}: its address: {e}"))?;
    let began = Instant::now();
    let (measure_from, end) = (began + WARMUP, began + WARMUP + measure);
    // Fixed pace: the connections' slots spread evenly over one interval.
    let mut due = match pace {
        Pace::Closed => began,
        Pace::Fixed { interval } => began + interval.mul_f64(number as f64 / CONNECTIONS as f64),
    };
    let value = kv_text(number as u64, VALUE_LEN);
    let mut latencies = Vec::with_capacity(20_000);
    let mut i = 0usize;
    while i < MAX_REQUESTS {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if due > now {
            std::thread::sleep((due.min(end)) - now);
            continue;
        }
        let sent = Instant::now();
        let key = (i / 2) % KEYS;
        let request = if i.is_multiple_of(2) {
            format!("SET k{key} {value}")
        } else {
            format!("GET k{key}")
        };
        client
            .request(&request)
            .map_err(|e| format!("connection {number}: {e}"))?;
        let answered = Instant::now();
        if sent >= measure_from && answered <= end {
            latencies.push(answered - sent);
        }
        if let Pace::Fixed { interval } = pace {
            // Late: the next request goes at once, the missed slots are not caught up.
            due = (due + interval).max(answered);
        }
        i += 1;
    }
    report.make();
    // The connection stays open until the driver read the primary's status.
    wait_until(CLOSE_WAIT_LIMIT, || {
        handoff.may_close.load(Ordering::SeqCst)
    });
    client
        .finish()
        .map_err(|e| format!("connection {number}: closing: {e}"))?;
    Ok(ConnectionResult { local, latencies })
}

/// Runs the load against `lab`'s service from its client host; with `monitor`, reads the
/// primary's status at the end of the measured window and says what it protected.
fn load(
    lab: &FailoverLab,
    pace: Pace,
    measure: Duration,
    monitor: Option<&PrimaryMonitor>,
) -> Result<Measured, String> {
    let service = lab.service();
    let handoff = Arc::new(Handoff::default());
    let mut threads = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let handoff_of_client = handoff.clone();
        match lab
            .client
            .spawn(move || connection(service, n, pace, measure, handoff_of_client))
        {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Release the clients already started, and wait for them to end.
                handoff.abort.store(true, Ordering::SeqCst);
                handoff.go.store(true, Ordering::SeqCst);
                handoff.may_close.store(true, Ordering::SeqCst);
                for t in threads {
                    let _ = t.join();
                }
                return Err(format!("starting client thread {n}: {e}"));
            }
        }
    }
    // Connects time out after IO_TIMEOUT; the clients start together once all are done.
    wait_until(IO_TIMEOUT + Duration::from_secs(5), || {
        handoff.connected.load(Ordering::SeqCst) >= CONNECTIONS
    });
    handoff.go.store(true, Ordering::SeqCst);
    let all_reported = wait_until(WARMUP + measure + REPORT_LIMIT, || {
        handoff.reported.load(Ordering::SeqCst) >= CONNECTIONS
    });
    if !all_reported {
        println!(
            "overhead: not every client reported within {REPORT_LIMIT:?} after the measured window; reading the status anyway"
        );
    }
    std::thread::sleep(SETTLE);
    let status = monitor.map(PrimaryMonitor::status);
    handoff.may_close.store(true, Ordering::SeqCst);
    let mut measured = Measured {
        requests: 0,
        latencies: Vec::new(),
        failed: 0,
        measured: measure,
        exits: Vec::new(),
        protections: Vec::new(),
    };
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for t in threads {
        match t.join() {
            Ok(Ok(result)) => {
                measured.requests += result.latencies.len();
                measured.latencies.extend(result.latencies);
                clients.push(result.local);
            }
            Ok(Err(e)) => {
                println!("overhead: {e}");
                measured.failed += 1;
            }
            Err(_) => {
                println!("overhead: a client thread panicked");
                measured.failed += 1;
            }
        }
    }
    measured.latencies.sort();
    if let Some(status) = status {
        measured
            .protections
            .push(Protection::of(status.as_ref(), &clients));
    }
    Ok(measured)
}

/// The load in a lab without agents.
fn no_cttm(tag: &str, pace: Pace, measure: Duration) -> Result<Measured, String> {
    let lab = FailoverLab::new(tag, ServiceFamily::V4).map_err(|e| e.to_string())?;
    load(&lab, pace, measure, None)
}

/// The load with both agents running in `mode`; then the primary is stopped (the rig's
/// crash, the only way it stops it) for its counters, and the backup.
fn with_agents(
    tag: &str,
    mode: CommitMode,
    queue: u16,
    pace: Pace,
    measure: Duration,
) -> Result<Measured, String> {
    let lab = FailoverLab::new(tag, ServiceFamily::V4).map_err(|e| e.to_string())?;
    let (mut rig, watchers) =
        failover_agents::start_observed(lab, mode, queue, |_, _| {}).map_err(|e| e.to_string())?;
    let measured = load(&rig.lab, pace, measure, Some(&watchers.primary));
    let (_, exit) = rig.crash().map_err(|e| e.to_string())?;
    let exit = exit.map_err(|e| format!("the primary agent failed: {e:?}"))?;
    failover_agents::finish(rig)?;
    let mut measured = measured?;
    measured.exits.push(exit);
    Ok(measured)
}

/// Measures the three modes `rounds` times in turn, tags `<prefix>n`, `<prefix>a`,
/// `<prefix>s`.
fn measure_modes(
    prefix: &str,
    pace: Pace,
    measure: Duration,
    rounds: usize,
) -> [(&'static str, Result<Measured, String>); 3] {
    let mut modes: [(&str, Result<Measured, String>); 3] = [
        ("no CTTM", Err("not run".into())),
        ("async", Err("not run".into())),
        ("sync", Err("not run".into())),
    ];
    for round in 0..rounds {
        for (i, (_, total)) in modes.iter_mut().enumerate() {
            let measured = match i {
                0 => no_cttm(&format!("{prefix}n"), pace, measure),
                1 => with_agents(&format!("{prefix}a"), CommitMode::Async, 0, pace, measure),
                _ => with_agents(
                    &format!("{prefix}s"),
                    CommitMode::Sync,
                    SYNC_QUEUE,
                    pace,
                    measure,
                ),
            };
            *total = match (
                round,
                std::mem::replace(total, Err(String::new())),
                measured,
            ) {
                (0, _, now) => now,
                (_, Ok(mut sum), Ok(now)) => {
                    sum.merge(now);
                    Ok(sum)
                }
                (_, Err(e), _) | (_, _, Err(e)) => Err(e),
            };
        }
    }
    modes
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints the table of one load, then the protection lines.
fn print_table(title: &str, modes: &[(&str, Result<Measured, String>)]) {
    println!("{title}");
    let base = match &modes[0].1 {
        Ok(b) => b,
        Err(e) => {
            println!("overhead: the no-CTTM runs failed: {e}");
            return;
        }
    };
    let (base_rate, base_p50, base_p99) =
        (base.rate(), base.percentile(0.5), base.percentile(0.99));
    println!(
        "{:<8} {:>10} {:>7} {:>9} {:>7} {:>9} {:>7} {:>7} | {:>9} {:>8} {:>8} {:>8} {:>6}",
        "mode",
        "req/s",
        "/base",
        "p50 us",
        "/base",
        "p99 us",
        "/base",
        "failed",
        "segments",
        "held",
        "released",
        "dropped",
        "degr."
    );
    for (name, result) in modes {
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                println!("{name:<8} failed: {e}");
                continue;
            }
        };
        let counters = m.counters().map_or_else(
            || format!("{:>9} {:>8} {:>8} {:>8} {:>6}", "-", "-", "-", "-", "-"),
            |[segments, held, released, dropped, degradations]| {
                format!("{segments:>9} {held:>8} {released:>8} {dropped:>8} {degradations:>6}")
            },
        );
        println!(
            "{:<8} {:>10.0} {:>7.2} {:>9.1} {:>7.2} {:>9.1} {:>7.2} {:>7} | {counters}",
            name,
            m.rate(),
            m.rate() / base_rate,
            micros(m.percentile(0.5)),
            m.percentile(0.5).as_secs_f64() / base_p50.as_secs_f64(),
            micros(m.percentile(0.99)),
            m.percentile(0.99).as_secs_f64() / base_p99.as_secs_f64(),
            m.failed,
        );
    }
    for (name, result) in modes {
        let Ok(m) = result else { continue };
        let rounds = m.protections.len();
        for (round, (protection, exit)) in m.protections.iter().zip(&m.exits).enumerate() {
            let label = if rounds > 1 {
                format!("{name}, round {}", round + 1)
            } else {
                (*name).to_string()
            };
            println!("{label}: {}", protection.describe(exit.dropped_frames));
        }
    }
}

/// The fixed offered load from the command line (`rate N`; cargo adds `--bench`).
fn parse_rate(args: impl IntoIterator<Item = String>) -> Result<u32, String> {
    let mut rate = DEFAULT_RATE;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "rate" => {
                let value = args
                    .next()
                    .ok_or("`rate` needs a value: requests per second over all connections")?;
                rate = value
                    .parse()
                    .ok()
                    .filter(|r| RATE_RANGE.contains(r))
                    .ok_or(format!(
                        "rate {value:?}: give requests per second over all connections, a whole number from {} to {}",
                        RATE_RANGE.start(),
                        RATE_RANGE.end()
                    ))?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}: the only one is `rate N` (e.g. `cargo bench -p cttmd --bench overhead -- rate 4000`)"
                ));
            }
        }
    }
    Ok(rate)
}

fn main() {
    let rate = match parse_rate(std::env::args().skip(1)) {
        Ok(rate) => rate,
        Err(e) => {
            println!("overhead: {e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "overhead: skipped, needs root (network namespaces, NFQUEUE, AF_PACKET); run `sudo -E cargo bench -p cttmd --bench overhead`"
        );
        return;
    }
    let began = Instant::now();
    let closed = measure_modes("ovc", Pace::Closed, MEASURE, ROUNDS);
    print_table(
        &format!(
            "overhead, closed loop: kvd, {CONNECTIONS} connections (a client thread each, the next request as soon as the answer arrives, SET {VALUE_LEN} bytes / GET alternately), {ROUNDS} rounds of the three modes in turn, {} s measured per mode and round after {} s warm-up",
            MEASURE.as_secs(),
            WARMUP.as_secs()
        ),
        &closed,
    );
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / f64::from(rate));
    let fixed = measure_modes("ovf", Pace::Fixed { interval }, MEASURE_FIXED, 1);
    println!();
    print_table(
        &format!(
            "overhead, fixed offered load: {rate} req/s in total, each of the {CONNECTIONS} connections one request every {:.1} ms (late ones at once, missed slots skipped), {} s measured per mode after {} s warm-up",
            interval.as_secs_f64() * 1e3,
            MEASURE_FIXED.as_secs(),
            WARMUP.as_secs()
        ),
        &fixed,
    );
    println!(
        "(req/s: requests answered in the measured window over its length; p50/p99: request latency from its write to the end of its answer, on the client; /base: ratio to no CTTM; segments/held/released/dropped/degr.: the primary agent's counters over its runs: segments tracked, packets held and released by output commit, frames the capture dropped, degradations to async; protection: the clients' connections at the end of the measured window, still open, per the primary's status: unprotected = not tracked, not restorable, or held by the backup not at all)"
    );
    println!("overhead: ran {:.0} s", began.elapsed().as_secs_f64());
}
