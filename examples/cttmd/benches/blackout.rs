//! Blackout of a crash failover: the time from the primary's crash to the first byte a
//! client receives on its restored connection, for 10, 100 and 1,000 connections, with the
//! agents in sync mode in a [`FailoverLab`] (client, primary, backup namespaces; kvd on both
//! servers).
//!
//! Each round opens the connections (spread over client threads), makes one exchange on
//! each (`SET`; the median answer time is the baseline: a healthy round trip), lets them go
//! idle, then crashes the primary (its switch port goes down, then its agent stops) and at
//! that instant every connection sends `PING`. The request goes to the dead primary, so it
//! arrives once the client's TCP retransmits it to the backup; the first byte of `PONG` ends
//! that connection's blackout. The blackout is split, from the backup agent's log lines
//! (timed as they are emitted), into:
//!
//! - detect: crash → the backup declares the primary dead (heartbeats missed);
//! - drain: → the service address claimed (shadow sessions drained, the clients' link
//!   addresses resolved, the address added);
//! - prepare: → first connection restored (the replica's snapshots);
//! - restore: first → last connection restored with TCP_REPAIR and spliced;
//! - announce: → takeover complete (first address announcement sent);
//! - to byte: takeover complete → median first byte (the client's retransmission).
//!
//! `takeover` is the backup's own figure ([`BackupExit::takeover`]), a cross-check of the
//! sum of the middle phases.
//!
//! Each client thread reads its connections in turn, so a connection's first byte is timed
//! when its thread gets to it: the figure is an upper bound, by at most the time to read the
//! thread's other answers (microseconds each).
//!
//! `-- sweep [N]` measures instead N crashes (default 20) at random instants under load:
//! each in a fresh lab, [`SWEEP_CONNECTIONS`] connections opened at random times over
//! [`SWEEP_OPEN_WINDOW`], each running a seeded random mix of `SET` (up to 4 kB), `GET` and
//! `STREAM` (up to 64 kB), some busy and some calm, the crash at a random instant of
//! [`SWEEP_CRASH_WINDOW`] after the load started. A connection's blackout is from the crash
//! to the answer of the first request it sent after the crash; a crash's blackout is the
//! first of them (the first byte after the crash on any connection). Printed per crash with
//! its phases (as above), then the distribution (p50, p90, p99, max) over the sweep. The
//! seed is printed; `CTTM_SWEEP_SEED=<n>` repeats the random choices.
//!
//! Needs root (namespaces, NFQUEUE, TCP_REPAIR); without it, it says so and exits 0.
//! `cargo bench -p cttmd --bench blackout [-- 10 100]` runs only the given sizes;
//! `cargo bench -p cttmd --bench blackout -- sweep 20` runs the sweep.

/// The agents in the lab, shared with the failover tests of `cttm-tests` (which cannot be a
/// library of cttmd's: cttmd depends on `cttm-tests`).
#[path = "../../../tests/tests/failover_agents/mod.rs"]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, KvClient, RandomLoad, ServiceFamily};
use cttm_tests::rng::SplitMix64;
use cttmd::backup::BackupExit;
use failover_agents::HEARTBEAT;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;

const SIZES: [usize; 3] = [10, 100, 1000];
const CLIENT_THREADS: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The backup's log lines that mark the phases, and when each was emitted.
static MARKS: Mutex<Vec<(Instant, Mark)>> = Mutex::new(Vec::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Dead,
    Claimed,
    Restored,
    Complete,
}

/// Records the time of the backup's phase log lines.
struct MarkLayer;

struct MessageField(Option<String>);

impl tracing::field::Visit for MessageField {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MarkLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let at = Instant::now();
        if !event.metadata().target().starts_with("cttmd::backup") {
            return;
        }
        let mut message = MessageField(None);
        event.record(&mut message);
        let mark = match message.0.as_deref() {
            Some(m) if m.starts_with("primary declared dead") => Mark::Dead,
            Some(m) if m.starts_with("service address claimed") => Mark::Claimed,
            Some(m) if m.starts_with("connection restored") => Mark::Restored,
            Some(m) if m.starts_with("takeover complete") => Mark::Complete,
            _ => return,
        };
        MARKS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((at, mark));
    }
}

/// The phases of one takeover, from the backup's log lines (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    detect: Duration,
    drain: Duration,
    prepare: Duration,
    restore: Duration,
    announce: Duration,
    /// When the takeover completed (the first announcement).
    complete: Option<Instant>,
}

/// The phases of the takeover after a crash at `crashed_at`, from the marks recorded since
/// they were last cleared.
fn phases_since(crashed_at: Instant) -> Result<Phases, String> {
    let marks = MARKS.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let at = |m: Mark| marks.iter().filter(move |(_, k)| *k == m).map(|(t, _)| *t);
    let dead = at(Mark::Dead)
        .next()
        .ok_or("the backup never declared the primary dead")?;
    let complete = at(Mark::Complete)
        .next()
        .ok_or("the takeover did not complete")?;
    let claimed = at(Mark::Claimed).max().unwrap_or(dead);
    let first_restored = at(Mark::Restored).min().unwrap_or(complete);
    let last_restored = at(Mark::Restored).max().unwrap_or(complete);
    Ok(Phases {
        detect: dead.saturating_duration_since(crashed_at),
        drain: claimed.saturating_duration_since(dead),
        prepare: first_restored.saturating_duration_since(claimed),
        restore: last_restored.saturating_duration_since(first_restored),
        announce: complete.saturating_duration_since(last_restored),
        complete: Some(complete),
    })
}

/// One round's figures.
struct Round {
    connections: usize,
    baseline: Duration,
    phases: Phases,
    blackouts: Vec<Duration>,
    complete_after: Duration,
    exit: BackupExit,
    failed: usize,
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

/// What one client thread measured: answer times before the crash, first-byte times after
/// it, and connections that failed.
type ThreadReport = (Vec<Duration>, Vec<Duration>, usize);

fn client_thread(
    service: SocketAddr,
    count: usize,
    ready: Arc<Barrier>,
    crashed: Arc<Barrier>,
    crash_time: Arc<Mutex<Option<Instant>>>,
) -> ThreadReport {
    let mut connections = Vec::with_capacity(count);
    let mut baseline = Vec::with_capacity(count);
    let mut failed = 0;
    for i in 0..count {
        let stream = match TcpStream::connect_timeout(&service, IO_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let Ok(clone) = stream.try_clone() else {
            failed += 1;
            continue;
        };
        let mut reader = BufReader::new(clone);
        let started = Instant::now();
        let mut line = String::new();
        let ok = (&stream)
            .write_all(format!("SET k {i}\n").as_bytes())
            .is_ok()
            && reader.read_line(&mut line).is_ok()
            && line == "OK\n";
        if ok {
            baseline.push(started.elapsed());
            connections.push((stream, reader));
        } else {
            failed += 1;
        }
    }
    ready.wait();
    crashed.wait();
    let crashed_at = crash_time
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .expect("the crash time is set before the barrier");
    let mut pending = Vec::with_capacity(connections.len());
    for (stream, reader) in connections {
        if (&stream).write_all(b"PING\n").is_ok() {
            pending.push((stream, reader));
        } else {
            failed += 1;
        }
    }
    let mut firsts = Vec::with_capacity(pending.len());
    for (stream, mut reader) in pending {
        let mut first = [0u8; 1];
        match reader.read_exact(&mut first) {
            Ok(()) => firsts.push(crashed_at.elapsed()),
            Err(_) => {
                failed += 1;
                continue;
            }
        }
        let mut rest = String::new();
        let good = first[0] == b'P' && reader.read_line(&mut rest).is_ok() && rest == "ONG\n";
        if !good {
            failed += 1;
        }
        // The restored connection closes cleanly: QUIT, BYE, then the server's FIN.
        let _ = (&stream).write_all(b"QUIT\n");
        let mut bye = String::new();
        let _ = reader.read_line(&mut bye);
        if bye != "BYE\n" {
            failed += 1;
        }
    }
    (baseline, firsts, failed)
}

fn round(connections: usize, queue: u16) -> Result<Round, String> {
    let tag = format!("bo{connections}");
    let lab = FailoverLab::new(&tag, ServiceFamily::V4).map_err(|e| e.to_string())?;
    let mut rig = failover_agents::start(lab, queue).map_err(|e| e.to_string())?;

    let threads = CLIENT_THREADS.min(connections);
    let ready = Arc::new(Barrier::new(threads + 1));
    let crashed = Arc::new(Barrier::new(threads + 1));
    let crash_time = Arc::new(Mutex::new(None));
    let service = rig.lab.service();
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let count = connections / threads + usize::from(t < connections % threads);
            let (ready, crashed, crash_time) = (ready.clone(), crashed.clone(), crash_time.clone());
            rig.lab
                .client
                .spawn(move || client_thread(service, count, ready, crashed, crash_time))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    ready.wait();
    // Idle: every answer was received, so (sync mode) the backup holds everything.
    std::thread::sleep(Duration::from_millis(300));
    MARKS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    rig.lab
        .lab()
        .cut(&rig.lab.primary)
        .map_err(|e| e.to_string())?;
    let crashed_at = Instant::now();
    *crash_time.lock().unwrap_or_else(PoisonError::into_inner) = Some(crashed_at);
    crashed.wait();
    // The rest of the crash: the agent stops, the daemon's sockets close into the void.
    let _ = failover_agents::crash(&mut rig);
    let mut baseline = Vec::new();
    let mut blackouts = Vec::new();
    let mut failed = 0;
    for c in clients {
        let (b, f, n) = c
            .join()
            .map_err(|_| "a client thread panicked".to_string())?;
        baseline.extend(b);
        blackouts.extend(f);
        failed += n;
    }
    let exit = failover_agents::finish(rig)?;
    baseline.sort();
    blackouts.sort();
    let phases = phases_since(crashed_at)?;
    let complete = phases.complete.unwrap_or(crashed_at);
    let median = percentile(&blackouts, 0.5);
    Ok(Round {
        connections,
        baseline: percentile(&baseline, 0.5),
        phases,
        complete_after: (crashed_at + median).saturating_duration_since(complete),
        blackouts,
        exit,
        failed,
    })
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "blackout: skipped, needs root (network namespaces, NFQUEUE, TCP_REPAIR); run `sudo -E cargo bench -p cttmd --bench blackout`"
        );
        return;
    }
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let asked: Vec<usize> = arguments.iter().filter_map(|a| a.parse().ok()).collect();
    if arguments.iter().any(|a| a == "sweep") {
        let crashes = asked.first().copied().unwrap_or(SWEEP_DEFAULT);
        let _ =
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(MarkLayer));
        run_sweep(crashes);
        return;
    }
    let sizes: Vec<usize> = if asked.is_empty() {
        SIZES.to_vec()
    } else {
        asked
    };
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(MarkLayer));
    println!(
        "blackout: sync mode, heartbeat {} ms x {} misses (detection budget {} ms), {CLIENT_THREADS} client threads",
        HEARTBEAT.interval.as_millis(),
        HEARTBEAT.misses,
        (HEARTBEAT.interval * HEARTBEAT.misses).as_millis()
    );
    let mut rounds = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let queue = 41 + u16::try_from(i).unwrap_or(0);
        match round(n, queue) {
            Ok(r) => rounds.push(r),
            Err(e) => println!("blackout: {n} connections: round failed: {e}"),
        }
    }
    let budget = HEARTBEAT.interval * HEARTBEAT.misses;
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>7} | {:>8} {:>6} {:>6} {:>6}",
        "conns",
        "rtt",
        "detect",
        "drain",
        "prepare",
        "restore",
        "announce",
        "takeover",
        "to byte",
        "min",
        "median",
        "max",
        "/budget",
        "restored",
        "reset",
        "ended",
        "failed"
    );
    for r in &rounds {
        println!(
            "{:>6} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} {:>7.2} | {:>8} {:>6} {:>6} {:>6}",
            r.connections,
            millis(r.baseline),
            millis(r.phases.detect),
            millis(r.phases.drain),
            millis(r.phases.prepare),
            millis(r.phases.restore),
            millis(r.phases.announce),
            millis(r.exit.takeover.unwrap_or_default()),
            millis(r.complete_after),
            millis(percentile(&r.blackouts, 0.0)),
            millis(percentile(&r.blackouts, 0.5)),
            millis(percentile(&r.blackouts, 1.0)),
            percentile(&r.blackouts, 0.5).as_secs_f64() / budget.as_secs_f64(),
            r.exit.restored.len(),
            r.exit.reset.len(),
            r.exit.ended.len(),
            r.failed,
        );
    }
    println!(
        "(milliseconds; rtt: median answer time before the crash (the baseline); takeover: the backup's own figure (BackupExit::takeover, verdict to first announcement: drain + prepare + restore + announce); ended: spliced connections the backup saw close before it stopped; blackout min/median/max from the crash to the first byte; /budget: median blackout over the detection budget)"
    );
}

/// Crashes of `-- sweep` without a number.
const SWEEP_DEFAULT: usize = 20;
/// Connections of the sweep's load.
const SWEEP_CONNECTIONS: usize = 32;
/// The sweep's connections open at random instants within this window after the load starts.
const SWEEP_OPEN_WINDOW: Duration = Duration::from_millis(300);
/// The crash comes at a random instant within this window after the load starts (some
/// connections may still be opening).
const SWEEP_CRASH_WINDOW: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_millis(800));
/// One sweep connection in this many is busy (next request at once); the others pause
/// 20-200 ms between requests.
const SWEEP_BUSY_ONE_IN: u64 = 3;
/// The sweep's requests per connection at most (with [`IO_TIMEOUT`], bounds every loop).
const SWEEP_MAX_REQUESTS: usize = 5_000;
/// The sizes of the sweep's requests.
const SWEEP_LOAD: RandomLoad = RandomLoad {
    max_value: 4096,
    max_stream: 64 << 10,
    keys: 8,
};
/// The sweep's primary NFQUEUE queue.
const SWEEP_QUEUE: u16 = 85;

/// One sweep connection: opens after `delay`, sends random requests (every answer checked by
/// the oracle) until one sent after the crash is answered, then `COUNT` and `QUIT`. Returns
/// whether it was open at the crash and its blackout.
fn sweep_connection(
    service: SocketAddr,
    mut rng: SplitMix64,
    delay: Duration,
    crashed: Arc<OnceLock<Instant>>,
) -> Result<(bool, Duration), String> {
    std::thread::sleep(delay);
    let mut client = KvClient::connect(service, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let open_at_crash = crashed.get().is_none();
    let busy = rng.range(1, SWEEP_BUSY_ONE_IN) == 1;
    for _ in 0..SWEEP_MAX_REQUESTS {
        let sent_after_crash = crashed.get().copied();
        client.random_request(&mut rng, SWEEP_LOAD)?;
        if let Some(crashed_at) = sent_after_crash {
            let blackout = crashed_at.elapsed();
            client.finish()?;
            return Ok((open_at_crash, blackout));
        }
        if !busy {
            std::thread::sleep(rng.duration(Duration::from_millis(20), Duration::from_millis(200)));
        }
    }
    Err(format!("no crash within {SWEEP_MAX_REQUESTS} requests"))
}

/// One crash of the sweep.
struct SweepCrash {
    crash_delay: Duration,
    open_at_crash: usize,
    /// The connections' blackouts, sorted.
    blackouts: Vec<Duration>,
    phases: Phases,
    exit: BackupExit,
    failed: Vec<String>,
}

fn sweep_crash(rng: &mut SplitMix64) -> Result<SweepCrash, String> {
    let lab = FailoverLab::new("bsw", ServiceFamily::V4).map_err(|e| e.to_string())?;
    let mut rig = failover_agents::start(lab, SWEEP_QUEUE).map_err(|e| e.to_string())?;
    let service = rig.lab.service();
    let crashed = Arc::new(OnceLock::new());
    let crash_delay = rng.duration(SWEEP_CRASH_WINDOW.0, SWEEP_CRASH_WINDOW.1);
    let clients: Vec<_> = (0..SWEEP_CONNECTIONS)
        .map(|_| {
            let connection_rng = SplitMix64::new(rng.next_u64());
            let delay = rng.duration(Duration::ZERO, SWEEP_OPEN_WINDOW);
            let crashed = crashed.clone();
            rig.lab
                .client
                .spawn(move || sweep_connection(service, connection_rng, delay, crashed))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(crash_delay);
    MARKS.lock().unwrap_or_else(PoisonError::into_inner).clear();
    rig.lab
        .lab()
        .cut(&rig.lab.primary)
        .map_err(|e| e.to_string())?;
    let crashed_at = Instant::now();
    let _ = crashed.set(crashed_at);
    // The rest of the crash: the agent stops, the daemon's sockets close into the void.
    let crash_result = failover_agents::crash(&mut rig);
    let mut blackouts = Vec::new();
    let mut failed = Vec::new();
    let mut open_at_crash = 0;
    for c in clients {
        match c.join() {
            Ok(Ok((open, blackout))) => {
                open_at_crash += usize::from(open);
                blackouts.push(blackout);
            }
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push("a client thread panicked".into()),
        }
    }
    let exit = failover_agents::finish(rig)?;
    crash_result?;
    blackouts.sort();
    Ok(SweepCrash {
        crash_delay,
        open_at_crash,
        blackouts,
        phases: phases_since(crashed_at)?,
        exit,
        failed,
    })
}

/// `p50 / p90 / p99 / max` of `values` in milliseconds.
fn distribution(mut values: Vec<Duration>) -> String {
    values.sort();
    format!(
        "{:>7.1} {:>7.1} {:>7.1} {:>7.1}",
        millis(percentile(&values, 0.5)),
        millis(percentile(&values, 0.9)),
        millis(percentile(&values, 0.99)),
        millis(percentile(&values, 1.0))
    )
}

fn run_sweep(crashes: usize) {
    let seed = std::env::var("CTTM_SWEEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!(
        "blackout sweep: {crashes} crashes, sync mode, {SWEEP_CONNECTIONS} connections, crash {}..{} ms after the load starts, heartbeat {} ms x {} misses, seed {seed} (CTTM_SWEEP_SEED)",
        SWEEP_CRASH_WINDOW.0.as_millis(),
        SWEEP_CRASH_WINDOW.1.as_millis(),
        HEARTBEAT.interval.as_millis(),
        HEARTBEAT.misses
    );
    println!(
        "{:>5} {:>6} {:>5} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} | {:>8} {:>6} {:>6}",
        "crash",
        "at ms",
        "open",
        "first",
        "median",
        "max",
        "detect",
        "drain",
        "prepare",
        "restore",
        "announce",
        "takeover",
        "restored",
        "reset",
        "failed"
    );
    let mut rng = SplitMix64::new(seed);
    let mut done = Vec::new();
    for index in 0..crashes {
        let mut crash_rng = SplitMix64::new(rng.next_u64());
        match sweep_crash(&mut crash_rng) {
            Ok(c) => {
                println!(
                    "{index:>5} {:>6} {:>5} | {:>7.1} {:>7.1} {:>7.1} | {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>8.1} | {:>8} {:>6} {:>6}",
                    c.crash_delay.as_millis(),
                    c.open_at_crash,
                    millis(percentile(&c.blackouts, 0.0)),
                    millis(percentile(&c.blackouts, 0.5)),
                    millis(percentile(&c.blackouts, 1.0)),
                    millis(c.phases.detect),
                    millis(c.phases.drain),
                    millis(c.phases.prepare),
                    millis(c.phases.restore),
                    millis(c.phases.announce),
                    millis(c.exit.takeover.unwrap_or_default()),
                    c.exit.restored.len(),
                    c.exit.reset.len(),
                    c.failed.len()
                );
                for f in &c.failed {
                    println!("      failed: {f}");
                }
                done.push(c);
            }
            Err(e) => println!("{index:>5} the crash round failed: {e}"),
        }
    }
    let phase = |f: fn(&SweepCrash) -> Duration| distribution(done.iter().map(f).collect());
    println!(
        "blackout sweep: {} of {crashes} crashes measured, {} connections failed; distribution over the crashes (ms):",
        done.len(),
        done.iter().map(|c| c.failed.len()).sum::<usize>()
    );
    println!(
        "{:<34} {:>7} {:>7} {:>7} {:>7}",
        "", "p50", "p90", "p99", "max"
    );
    println!(
        "{:<34} {}",
        "blackout (first byte after crash)",
        phase(|c| percentile(&c.blackouts, 0.0))
    );
    println!(
        "{:<34} {}",
        "blackout, every connection",
        distribution(
            done.iter()
                .flat_map(|c| c.blackouts.iter().copied())
                .collect()
        )
    );
    println!("{:<34} {}", "detect", phase(|c| c.phases.detect));
    println!("{:<34} {}", "drain", phase(|c| c.phases.drain));
    println!("{:<34} {}", "prepare", phase(|c| c.phases.prepare));
    println!("{:<34} {}", "restore", phase(|c| c.phases.restore));
    println!("{:<34} {}", "announce", phase(|c| c.phases.announce));
    println!(
        "{:<34} {}",
        "takeover (backup's own figure)",
        phase(|c| c.exit.takeover.unwrap_or_default())
    );
    println!(
        "(a connection's blackout: crash -> the answer to its first request sent after the crash; phases as in the rounds' table)"
    );
}
