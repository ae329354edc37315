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
//! Needs root (namespaces, NFQUEUE, TCP_REPAIR); without it, it says so and exits 0.
//! `cargo bench -p cttmd --bench blackout [-- 10 100]` runs only the given sizes.

/// The agents in the lab, shared with the failover tests of `cttm-tests` (which cannot be a
/// library of cttmd's: cttmd depends on `cttm-tests`).
#[path = "../../../tests/tests/failover_agents/mod.rs"]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, ServiceFamily};
use cttmd::backup::BackupExit;
use failover_agents::HEARTBEAT;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
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

/// One round's figures.
struct Round {
    connections: usize,
    baseline: Duration,
    detect: Duration,
    drain: Duration,
    prepare: Duration,
    restore: Duration,
    announce: Duration,
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
    let median = percentile(&blackouts, 0.5);
    Ok(Round {
        connections,
        baseline: percentile(&baseline, 0.5),
        detect: dead.saturating_duration_since(crashed_at),
        drain: claimed.saturating_duration_since(dead),
        prepare: first_restored.saturating_duration_since(claimed),
        restore: last_restored.saturating_duration_since(first_restored),
        announce: complete.saturating_duration_since(last_restored),
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
    let asked: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
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
            millis(r.detect),
            millis(r.drain),
            millis(r.prepare),
            millis(r.restore),
            millis(r.announce),
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
