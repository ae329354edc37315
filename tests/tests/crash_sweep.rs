//! Crash-point sweeps: many crashes of the primary, each at a random instant under a load of
//! many connections with traffic in both directions, each in a fresh [`FailoverLab`] with the
//! real agents (`cttmd`'s primary and backup, started by the shared rig).
//!
//! The load: [`CONNECTIONS`] kvd connections, each on its own client thread, opened at
//! random times over [`OPEN_WINDOW`] (so some handshakes are in flight at the crash), each
//! running a seeded random mix of `SET` of values up to [`MAX_VALUE`] bytes (uploads), `GET`,
//! `INCR`, `ECHO` and `STREAM` of up to [`MAX_STREAM`] bytes (downloads), every answer and
//! every stream byte checked by [`KvClient`]'s oracle. The crash comes at a random instant of
//! [`CRASH_WINDOW`] after the load started: during handshakes, mid-request, mid-stream. Each
//! connection goes on until it got the answers to [`OPS_AFTER_CRASH`] requests it sent after
//! the crash, then ends with `COUNT` (no request lost or repeated) and `QUIT`.
//!
//! - `sync_crash_sweep_loses_nothing` (output commit): every connection finishes, no error,
//!   and the backup restored every connection open at the crash (none reset, none diverged).
//!   A handshake caught by the crash completes too: a failed connect is a client error (the
//!   async sweep's clients retry a failed connect, at most [`CONNECT_ATTEMPTS`] times).
//! - `async_crash_sweep_reports_at_risk_honestly`: the primary's final status (published when
//!   the agent stops at the crash) says which connections a crash would hurt (bytes at risk,
//!   nothing held by the backup, or unrestorable). After the takeover every connection
//!   either survives byte-exact or fails (reset, end of stream or timeout), never with a
//!   wrong byte; every lost connection must have been reported at risk.
//!
//! Per crash the blackout is printed: from the crash (the primary's switch port down) to the
//! first answer to a request sent after it, the first on any connection and the median and
//! slowest over the connections; at the end the distribution over the sweep. Printed, never
//! asserted (speed is the benchmarks' job).
//!
//! The random choices come from one seed, printed at the start; `CTTM_SWEEP_SEED=<n>` repeats
//! a sweep's choices (the kernel's timing still differs), `CTTM_SWEEP_CRASHES=<n>` changes the
//! number of crashes per sweep (default [`CRASHES`], for debugging only).
//!
//! The sweeps take turns (one lab at a time): two labs under load on two cores would make
//! heartbeats late enough to look like crashes. The load is sized so that both sweeps take
//! about 5 minutes under `cargo test` on two cores (about 2.5 s a crash), and so that the
//! agents (unoptimised in test builds) keep up with it: under a heavier load async mode's
//! replication falls megabytes behind and nearly every connection is at risk, which tests
//! the report less.

/// The shared rig (this file uses only part of it).
#[allow(dead_code)]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, KvClient, RandomLoad, ServiceFamily};
use cttm_tests::lab::kernel_tests_enabled;
use cttm_tests::rng::SplitMix64;
use cttmd::backup::BackupExit;
use cttmd::options::CommitMode;
use cttmd::primary::PrimaryStatus;
use failover_agents::{Rig, crash, finish, start_observed};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Crashes per sweep.
const CRASHES: usize = 50;
/// Connections of the load.
const CONNECTIONS: usize = 24;
/// The connections open at random instants within this window after the load starts.
const OPEN_WINDOW: Duration = Duration::from_millis(400);
/// The crash comes at a random instant within this window after the load starts.
const CRASH_WINDOW: (Duration, Duration) = (Duration::from_millis(30), Duration::from_millis(700));
/// Requests each connection sends (and gets answered) after the crash before it finishes.
const OPS_AFTER_CRASH: usize = 2;
/// The largest `SET` value (an upload).
const MAX_VALUE: usize = 8 << 10;
/// The largest `STREAM` (a download).
const MAX_STREAM: u64 = 64 << 10;
/// Distinct keys per connection.
const KEYS: u64 = 8;
/// One connection in this many is busy: it sends its next request at most
/// [`BUSY_THINK`] after an answer; the others are calm, pausing within [`CALM_THINK`] (so
/// at any instant some connections have requests or streams in flight and others are
/// between requests).
const BUSY_ONE_IN: u64 = 3;
/// The pauses between two requests of a busy connection.
const BUSY_THINK: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(10));
/// The pauses between two requests of a calm connection.
const CALM_THINK: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(200));
/// Read and write timeouts of the client sockets: an answer that takes longer is a failure
/// (a lost connection in async mode). Far above a takeover's blackout (about a second).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect may take (a SYN caught by the crash is retransmitted after 1 s, 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect attempts per connection (a handshake caught by the crash may fail; a real client
/// retries, and no byte of the conversation was exchanged yet).
const CONNECT_ATTEMPTS: usize = 3;
/// The longest a connection's whole run may take.
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// Requests per connection at most (with the time limit, bounds every loop).
const MAX_OPS: usize = 5_000;
/// The sweep stops after this many failed crashes (the failures are reported).
const MAX_FAILED_CRASHES: usize = 5;
/// NFQUEUE queue of the sync sweep's primary (the async sweep does not queue).
const SYNC_QUEUE: u16 = 80;
/// Unused by async mode; distinct anyway.
const ASYNC_QUEUE: u16 = 81;

/// One lab at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sweep's seed: `CTTM_SWEEP_SEED`, or the clock.
fn sweep_seed() -> u64 {
    std::env::var("CTTM_SWEEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn crashes_per_sweep() -> usize {
    std::env::var("CTTM_SWEEP_CRASHES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CRASHES)
}

/// What one connection of the load did.
#[derive(Debug)]
struct ConnectionReport {
    /// The client's address (`None`: it never connected).
    local: Option<SocketAddr>,
    /// The connection was established before the crash.
    open_at_crash: bool,
    /// Connect attempts that failed.
    connect_failures: Vec<String>,
    /// Requests answered (the final `COUNT` and `QUIT` included).
    ops: usize,
    /// From the crash to the answer of the first request sent after it.
    resumed_after: Option<Duration>,
    /// How the connection ended.
    result: Result<(), String>,
}

impl ConnectionReport {
    /// The failure is a wrong answer or a wrong stream byte (not a reset, an end of stream
    /// or a timeout): a lost, duplicated or changed byte the client saw.
    fn wrong_byte(&self) -> bool {
        self.result.as_ref().is_err_and(|e| {
            e.contains("wrong answer") || e.contains("differs") || e.contains("bytes after BYE")
        })
    }
}

/// Connects, retrying a failed handshake (bounded).
fn connect(service: SocketAddr, failures: &mut Vec<String>) -> Option<KvClient> {
    for _ in 0..CONNECT_ATTEMPTS {
        let started = Instant::now();
        match TcpStream::connect_timeout(&service, CONNECT_TIMEOUT).and_then(KvClient::from_stream)
        {
            Ok(client) => return Some(client),
            Err(e) => failures.push(format!("{e} after {:?}", started.elapsed())),
        }
    }
    None
}

/// The sizes of the load's requests.
const LOAD: RandomLoad = RandomLoad {
    max_value: MAX_VALUE,
    max_stream: MAX_STREAM,
    keys: KEYS,
};

/// One connection of the load: opens after `delay`, runs random requests until it got
/// [`OPS_AFTER_CRASH`] answers to requests sent after the crash, then `COUNT` and `QUIT`.
fn run_connection(
    service: SocketAddr,
    mut rng: SplitMix64,
    delay: Duration,
    crashed: Arc<OnceLock<Instant>>,
) -> ConnectionReport {
    let deadline = Instant::now() + CONNECTION_LIMIT;
    std::thread::sleep(delay);
    let mut report = ConnectionReport {
        local: None,
        open_at_crash: false,
        connect_failures: Vec::new(),
        ops: 0,
        resumed_after: None,
        result: Ok(()),
    };
    let Some(mut client) = connect(service, &mut report.connect_failures) else {
        report.result = Err(format!(
            "no connection after {CONNECT_ATTEMPTS} attempts: {:?}",
            report.connect_failures
        ));
        return report;
    };
    report.open_at_crash = crashed.get().is_none();
    report.local = client.local().ok();
    let timeouts = client
        .writer
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| client.writer.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = timeouts {
        report.result = Err(format!("socket timeouts: {e}"));
        return report;
    }
    let think = if rng.range(1, BUSY_ONE_IN) == 1 {
        BUSY_THINK
    } else {
        CALM_THINK
    };
    let mut after_crash = 0;
    while after_crash < OPS_AFTER_CRASH {
        if Instant::now() >= deadline || report.ops >= MAX_OPS {
            report.result = Err(format!(
                "{} requests in {CONNECTION_LIMIT:?} and still {} to go after the crash",
                report.ops,
                OPS_AFTER_CRASH - after_crash
            ));
            return report;
        }
        let sent_after_crash = crashed.get().copied();
        if let Err(e) = client.random_request(&mut rng, LOAD) {
            report.result = Err(e);
            return report;
        }
        report.ops += 1;
        if let Some(crashed_at) = sent_after_crash {
            after_crash += 1;
            report
                .resumed_after
                .get_or_insert_with(|| crashed_at.elapsed());
        }
        std::thread::sleep(rng.duration(think.0, think.1));
    }
    report.result = client.finish().map(|_| ());
    report.ops += 2;
    report
}

/// What one crash of a sweep showed.
struct CrashOutcome {
    /// When the crash came, after the load started.
    crash_delay: Duration,
    connections: Vec<ConnectionReport>,
    /// The primary agent's final status (async mode's report).
    status: Option<PrimaryStatus>,
    exit: BackupExit,
}

impl CrashOutcome {
    /// The blackouts of the connections that resumed, sorted.
    fn resumed(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .connections
            .iter()
            .filter_map(|c| c.resumed_after)
            .collect();
        v.sort();
        v
    }

    fn failed(&self) -> impl Iterator<Item = &ConnectionReport> {
        self.connections.iter().filter(|c| c.result.is_err())
    }

    fn open_at_crash(&self) -> usize {
        self.connections.iter().filter(|c| c.open_at_crash).count()
    }

    /// Connections open at the crash that the backup did not restore.
    fn not_restored(&self) -> Vec<SocketAddr> {
        self.connections
            .iter()
            .filter(|c| c.open_at_crash)
            .filter_map(|c| c.local)
            .filter(|local| !self.exit.restored.iter().any(|id| id.client == *local))
            .collect()
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One crash: a fresh lab, both agents, the load, the crash at a random instant, the load to
/// its end, the backup stopped.
fn one_crash(
    mode: CommitMode,
    tag: &str,
    queue: u16,
    rng: &mut SplitMix64,
) -> Result<CrashOutcome, String> {
    let lab = FailoverLab::new(tag, ServiceFamily::V4).map_err(|e| format!("lab: {e}"))?;
    let (mut rig, watchers): (Rig, _) =
        start_observed(lab, mode, queue, |_, _| {}).map_err(|e| format!("agents: {e}"))?;
    let service = rig.lab.service();
    let crashed = Arc::new(OnceLock::new());
    let crash_delay = rng.duration(CRASH_WINDOW.0, CRASH_WINDOW.1);
    let clients: Vec<JoinHandle<ConnectionReport>> = (0..CONNECTIONS)
        .map(|_| {
            let connection_rng = SplitMix64::new(rng.next_u64());
            let delay = rng.duration(Duration::ZERO, OPEN_WINDOW);
            let crashed = crashed.clone();
            rig.lab
                .client
                .spawn(move || run_connection(service, connection_rng, delay, crashed))
                .map_err(|e| format!("client thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(crash_delay);
    // The crash: the port goes down first (the instant the blackout is measured from), then
    // the rig's crash stops the agent and the daemon (cutting again changes nothing).
    rig.lab
        .lab()
        .cut(&rig.lab.primary)
        .map_err(|e| format!("cut: {e}"))?;
    let _ = crashed.set(Instant::now());
    let crash_result = crash(&mut rig);
    // The agent published its final status when it stopped.
    let status = watchers.primary.status();
    let connections: Vec<ConnectionReport> = clients
        .into_iter()
        .map(|c| {
            c.join().unwrap_or_else(|_| ConnectionReport {
                local: None,
                open_at_crash: false,
                connect_failures: Vec::new(),
                ops: 0,
                resumed_after: None,
                result: Err("the client thread panicked".into()),
            })
        })
        .collect();
    let exit = finish(rig)?;
    crash_result?;
    Ok(CrashOutcome {
        crash_delay,
        connections,
        status,
        exit,
    })
}

/// Runs `crashes` crashes in `mode`, printing each; stops early after
/// [`MAX_FAILED_CRASHES`] crashes that `check` rejected. Returns every outcome and the
/// failures (crash number, why).
fn sweep(
    name: &str,
    mode: CommitMode,
    tag: &str,
    queue: u16,
    mut check: impl FnMut(&CrashOutcome) -> Result<String, String>,
) -> (Vec<CrashOutcome>, Vec<String>) {
    let seed = sweep_seed();
    let crashes = crashes_per_sweep();
    println!(
        "{name}: seed {seed} (CTTM_SWEEP_SEED), {crashes} crashes, {CONNECTIONS} connections each, crash {}..{} ms after the load starts",
        CRASH_WINDOW.0.as_millis(),
        CRASH_WINDOW.1.as_millis()
    );
    let started = Instant::now();
    let mut rng = SplitMix64::new(seed);
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for index in 0..crashes {
        let mut crash_rng = SplitMix64::new(rng.next_u64());
        let crash_started = Instant::now();
        match one_crash(mode, tag, queue, &mut crash_rng) {
            Ok(outcome) => {
                let resumed = outcome.resumed();
                let verdict = check(&outcome);
                println!(
                    "{name} {index:>2} ({:.1} s): crash at {:>3} ms, {:>2} open at the crash, restored {:>2}, reset {}, diverged {}, {} requests, blackout {}; {}",
                    crash_started.elapsed().as_secs_f64(),
                    outcome.crash_delay.as_millis(),
                    outcome.open_at_crash(),
                    outcome.exit.restored.len(),
                    outcome.exit.reset.len(),
                    outcome.exit.diverged.len(),
                    outcome.connections.iter().map(|c| c.ops).sum::<usize>(),
                    blackout_text(&resumed),
                    verdict.as_ref().unwrap_or_else(|e| e)
                );
                if let Err(why) = verdict {
                    failures.push(format!("crash {index}: {why}"));
                }
                outcomes.push(outcome);
            }
            Err(e) => {
                println!("{name} {index:>2}: the crash round failed: {e}");
                failures.push(format!("crash {index}: {e}"));
            }
        }
        if failures.len() >= MAX_FAILED_CRASHES {
            println!("{name}: stopping after {} failed crashes", failures.len());
            break;
        }
    }
    print_distribution(name, &outcomes, started.elapsed());
    (outcomes, failures)
}

/// `first f median m max x ms` over a crash's resumed connections (sorted), or `none`.
fn blackout_text(resumed: &[Duration]) -> String {
    if resumed.is_empty() {
        return "none (no connection resumed)".into();
    }
    format!(
        "first {:.0} median {:.0} max {:.0} ms",
        millis(percentile(resumed, 0.0)),
        millis(percentile(resumed, 0.5)),
        millis(percentile(resumed, 1.0))
    )
}

fn print_distribution(name: &str, outcomes: &[CrashOutcome], took: Duration) {
    let mut first: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| o.resumed().first().copied())
        .collect();
    first.sort();
    let mut all: Vec<Duration> = outcomes.iter().flat_map(CrashOutcome::resumed).collect();
    all.sort();
    println!(
        "{name}: {} crashes in {:.0} s; blackout (crash -> first answer on any connection) p50 {:.0} p90 {:.0} max {:.0} ms; per connection (crash -> its first answer, {} connections) p50 {:.0} p90 {:.0} max {:.0} ms",
        outcomes.len(),
        took.as_secs_f64(),
        millis(percentile(&first, 0.5)),
        millis(percentile(&first, 0.9)),
        millis(percentile(&first, 1.0)),
        all.len(),
        millis(percentile(&all, 0.5)),
        millis(percentile(&all, 0.9)),
        millis(percentile(&all, 1.0)),
    );
}

/// Sync mode: nothing lost, no client error, every connection open at the crash restored.
fn check_sync(outcome: &CrashOutcome) -> Result<String, String> {
    let failed: Vec<String> = outcome
        .failed()
        .map(|c| {
            format!(
                "{:?}: {}",
                c.local,
                c.result.as_ref().err().map_or("", String::as_str)
            )
        })
        .collect();
    if !failed.is_empty() {
        return Err(format!("client errors: {failed:?}; {:?}", outcome.exit));
    }
    if outcome.exit.takeover.is_none() {
        return Err(format!("the backup did not take over: {:?}", outcome.exit));
    }
    if !outcome.exit.reset.is_empty() || !outcome.exit.diverged.is_empty() {
        return Err(format!(
            "reset {:?}, diverged {:?}",
            outcome.exit.reset, outcome.exit.diverged
        ));
    }
    let missing = outcome.not_restored();
    if !missing.is_empty() {
        return Err(format!(
            "open at the crash but not restored: {missing:?}; restored {:?}",
            outcome.exit.restored
        ));
    }
    // A handshake caught by the crash completes on the backup (its SYN-ACK, held by output
    // commit, is re-sent as a fresh handshake there): a failed connect is a client error.
    let refused: Vec<&String> = outcome
        .connections
        .iter()
        .flat_map(|c| &c.connect_failures)
        .collect();
    if !refused.is_empty() {
        return Err(format!("connect attempts failed: {refused:?}"));
    }
    Ok(format!(
        "ok ({} handshakes restarted on the backup)",
        outcome.exit.handshake_restarted.len()
    ))
}

/// Async mode's tally over a sweep.
#[derive(Debug, Default)]
struct AtRiskTally {
    /// Connections the final status reported at risk.
    reported: usize,
    /// Connections that failed after the takeover.
    lost: usize,
    /// Reported at risk, yet they survived.
    over_reported: usize,
    /// Bytes at risk the final statuses reported.
    reported_bytes: u64,
    /// Connections the final status did not know (opened after the crash).
    unknown: usize,
}

/// Whether the final status reports `local`'s connection at risk, and its bytes at risk;
/// `None` if the status does not know the connection.
fn reported_at_risk(status: &PrimaryStatus, local: SocketAddr) -> Option<(bool, u64)> {
    let c = status.connections.iter().find(|c| c.id.client == local)?;
    let at_risk = c.at_risk() > 0 || c.backup.is_none() || c.unsafe_reason.is_some();
    Some((at_risk, c.at_risk()))
}

/// How the failed connections of a crash failed: `reset r, timeout t, closed c, other o`.
fn failure_kinds(outcome: &CrashOutcome) -> String {
    let (mut reset, mut timeout, mut closed, mut other) = (0, 0, 0, Vec::new());
    for c in outcome.failed() {
        let e = c.result.as_ref().err().map_or("", String::as_str);
        if e.contains("reset") {
            reset += 1;
        } else if e.contains("timed out")
            || e.contains("would block")
            || e.contains("temporarily unavailable")
        {
            timeout += 1;
        } else if e.contains("closed") || e.contains("ended") {
            closed += 1;
        } else {
            other.push(e);
        }
    }
    format!("reset {reset}, timeout {timeout}, closed {closed}, other {other:?}")
}

/// Async mode: every lost connection was reported at risk, no wrong byte anywhere.
fn check_async(outcome: &CrashOutcome, tally: &mut AtRiskTally) -> Result<String, String> {
    let Some(status) = &outcome.status else {
        return Err("the primary agent published no status".into());
    };
    if outcome.exit.takeover.is_none() {
        return Err(format!("the backup did not take over: {:?}", outcome.exit));
    }
    let mut problems = Vec::new();
    let (mut reported, mut lost, mut over, mut bytes) = (0, 0, 0, 0u64);
    for c in &outcome.connections {
        if c.wrong_byte() {
            problems.push(format!("{:?}: a wrong byte: {:?}", c.local, c.result));
        }
        let Some(local) = c.local else {
            problems.push(format!("never connected: {:?}", c.result));
            continue;
        };
        let report = reported_at_risk(status, local);
        let failed = c.result.is_err();
        match report {
            Some((at_risk, at_risk_bytes)) => {
                reported += usize::from(at_risk);
                bytes += at_risk_bytes;
                over += usize::from(at_risk && !failed);
                if failed && !at_risk {
                    problems.push(format!(
                        "{local}: reported safe but lost: {:?}; status {:?}",
                        c.result,
                        status.connections.iter().find(|s| s.id.client == local)
                    ));
                }
            }
            None => {
                tally.unknown += 1;
                if failed {
                    problems.push(format!(
                        "{local}: lost but not in the final status (open at the crash: {}): {:?}",
                        c.open_at_crash, c.result
                    ));
                }
            }
        }
        lost += usize::from(failed);
    }
    tally.reported += reported;
    tally.lost += lost;
    tally.over_reported += over;
    tally.reported_bytes += bytes;
    if problems.is_empty() {
        Ok(format!(
            "ok: reported at risk {reported} ({bytes} bytes), lost {lost} ({}), over-reported {over}",
            failure_kinds(outcome)
        ))
    } else {
        Err(problems.join("; "))
    }
}

#[test]
fn sync_crash_sweep_loses_nothing() {
    if !kernel_tests_enabled("sync_crash_sweep_loses_nothing") {
        return;
    }
    let _serial = serial();
    let (outcomes, failures) = sweep(
        "sync sweep",
        CommitMode::Sync,
        "css",
        SYNC_QUEUE,
        check_sync,
    );
    let requests: usize = outcomes
        .iter()
        .flat_map(|o| &o.connections)
        .map(|c| c.ops)
        .sum();
    let connect_failures: Vec<&String> = outcomes
        .iter()
        .flat_map(|o| &o.connections)
        .flat_map(|c| &c.connect_failures)
        .collect();
    println!(
        "sync sweep: {} crashes checked, {requests} requests answered correctly, {} connections restored; {} connect attempts failed and were retried (handshakes caught by the crash): {connect_failures:?}",
        outcomes.len(),
        outcomes
            .iter()
            .map(|o| o.exit.restored.len())
            .sum::<usize>(),
        connect_failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} crashes failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(outcomes.len(), crashes_per_sweep());
}

#[test]
fn async_crash_sweep_reports_at_risk_honestly() {
    if !kernel_tests_enabled("async_crash_sweep_reports_at_risk_honestly") {
        return;
    }
    let _serial = serial();
    let mut tally = AtRiskTally::default();
    let (outcomes, failures) = sweep("async sweep", CommitMode::Async, "csa", ASYNC_QUEUE, |o| {
        check_async(o, &mut tally)
    });
    println!(
        "async sweep: {} crashes; connections reported at risk {}, lost {}, over-reported {} (at risk, survived), reported bytes at risk {}, unknown to the final status {} (opened after the crash)",
        outcomes.len(),
        tally.reported,
        tally.lost,
        tally.over_reported,
        tally.reported_bytes,
        tally.unknown
    );
    assert!(
        failures.is_empty(),
        "{} crashes failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(outcomes.len(), crashes_per_sweep());
}
