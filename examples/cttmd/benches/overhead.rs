//! What the agents cost the service: kvd's throughput (requests per second) and request
//! latency (p50, p99) with [`CONNECTIONS`] concurrent connections, in three modes measured in
//! the same run, [`ROUNDS`] times in turn, each time in a fresh [`FailoverLab`] (client,
//! primary, backup namespaces on one bridge; kvd on both servers):
//!
//! - no CTTM: plain kvd on the primary, no agent running;
//! - async: primary + backup agents, async mode (AF_PACKET capture, no hold);
//! - sync: primary + backup agents, sync mode (NFQUEUE output commit: every answer held
//!   until the backup acknowledged what it carries and acknowledges).
//!
//! Each connection runs on its own client thread, closed loop: a request, its answer, the
//! next request (alternately `SET k<i> <100 bytes>` and `GET k<i>`, every answer checked by
//! [`KvClient`]'s oracle). After [`WARMUP`] unmeasured, the requests sent and answered
//! within the next [`MEASURE`] count: throughput is their number over the measured time;
//! latency is from a request's write to the end of its answer, timed on the client. Printed:
//! a table with the ratios to no CTTM, and the primary agent's counters (segments tracked,
//! packets held and released, frames the capture dropped, degradations). Async mode's
//! dropped frames say how much of the load the agent could not follow (those connections
//! are unprotected): its cost is low partly because it keeps up with only part of it.
//!
//! Needs root (namespaces, NFQUEUE, AF_PACKET); without it, it says so and exits 0.
//! `cargo bench -p cttmd --bench overhead`.

/// The agents in the lab, shared with the failover tests of `cttm-tests` (which cannot be a
/// library of cttmd's: cttmd depends on `cttm-tests`).
#[path = "../../../tests/tests/failover_agents/mod.rs"]
#[allow(dead_code)]
mod failover_agents;

use cttm_tests::failover_lab::{FailoverLab, KvClient, ServiceFamily, kv_text};
use cttmd::options::CommitMode;
use cttmd::primary::PrimaryExit;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Concurrent connections (one client thread each).
const CONNECTIONS: usize = 64;
/// Unmeasured time at the start of each mode (connections, caches, ARP).
const WARMUP: Duration = Duration::from_secs(1);
/// The measured time of each mode in each round.
const MEASURE: Duration = Duration::from_secs(6);
/// Rounds: each measures every mode once, in turn, so a disturbance of the machine (two
/// shared cores) spreads over the modes instead of hitting one; a mode's figures merge its
/// rounds.
const ROUNDS: usize = 2;
/// Socket timeouts of the clients (and of their connects).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the `SET` values.
const VALUE_LEN: usize = 100;
/// Distinct keys per connection.
const KEYS: usize = 16;
/// NFQUEUE queue of the sync mode's primary.
const SYNC_QUEUE: u16 = 90;

/// What one mode measured.
struct Measured {
    /// Requests answered within the measured window.
    requests: usize,
    /// Their latencies, sorted.
    latencies: Vec<Duration>,
    /// Connections that failed (any failure is printed too).
    failed: usize,
    /// Measured windows merged (rounds).
    windows: usize,
    /// The primary agent's counters, one per round (agent modes).
    exits: Vec<PrimaryExit>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.requests as f64 / (MEASURE.as_secs_f64() * self.windows.max(1) as f64)
    }

    /// Adds another round of the same mode.
    fn merge(&mut self, other: Measured) {
        self.requests += other.requests;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        self.failed += other.failed;
        self.windows += other.windows;
        self.exits.extend(other.exits);
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

/// One connection's closed loop: the latencies of the requests sent within the measured
/// window (and answered), or why it failed.
fn connection(
    service: SocketAddr,
    number: usize,
    start: Arc<Barrier>,
) -> Result<Vec<Duration>, String> {
    let client = KvClient::connect(service, IO_TIMEOUT);
    // Every thread reaches the barrier, connected or not, so none waits forever.
    start.wait();
    let mut client = client.map_err(|e| format!("connection {number}: connect: {e}"))?;
    let began = Instant::now();
    let (measure_from, end) = (began + WARMUP, began + WARMUP + MEASURE);
    let value = kv_text(number as u64, VALUE_LEN);
    let mut latencies = Vec::with_capacity(20_000);
    let mut i = 0usize;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let key = (i / 2) % KEYS;
        let request = if i.is_multiple_of(2) {
            format!("SET k{key} {value}")
        } else {
            format!("GET k{key}")
        };
        client
            .request(&request)
            .map_err(|e| format!("connection {number}: {e}"))?;
        if sent >= measure_from {
            let answered = Instant::now();
            if answered <= end {
                latencies.push(answered - sent);
            }
        }
        i += 1;
    }
    client
        .finish()
        .map_err(|e| format!("connection {number}: closing: {e}"))?;
    Ok(latencies)
}

/// Runs the load against `lab`'s service from its client host.
fn load(lab: &FailoverLab) -> Result<Measured, String> {
    let service = lab.service();
    let start = Arc::new(Barrier::new(CONNECTIONS));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|n| {
            let start = start.clone();
            lab.client
                .spawn(move || connection(service, n, start))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut measured = Measured {
        requests: 0,
        latencies: Vec::new(),
        failed: 0,
        windows: 1,
        exits: Vec::new(),
    };
    for t in threads {
        match t.join() {
            Ok(Ok(l)) => {
                measured.requests += l.len();
                measured.latencies.extend(l);
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
    Ok(measured)
}

fn no_cttm() -> Result<Measured, String> {
    let lab = FailoverLab::new("ovn", ServiceFamily::V4).map_err(|e| e.to_string())?;
    load(&lab)
}

/// The load with both agents running in `mode`; then the primary is stopped (the rig's
/// crash, the only way it stops it) for its counters, and the backup.
fn with_agents(tag: &str, mode: CommitMode, queue: u16) -> Result<Measured, String> {
    let lab = FailoverLab::new(tag, ServiceFamily::V4).map_err(|e| e.to_string())?;
    let mut rig = failover_agents::start_in_mode(lab, mode, queue).map_err(|e| e.to_string())?;
    let measured = load(&rig.lab);
    let (_, exit) = rig.crash().map_err(|e| e.to_string())?;
    let exit = exit.map_err(|e| format!("the primary agent failed: {e:?}"))?;
    failover_agents::finish(rig)?;
    let mut measured = measured?;
    measured.exits.push(exit);
    Ok(measured)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "overhead: skipped, needs root (network namespaces, NFQUEUE, AF_PACKET); run `sudo -E cargo bench -p cttmd --bench overhead`"
        );
        return;
    }
    println!(
        "overhead: kvd, {CONNECTIONS} connections (a client thread each, closed loop, SET {VALUE_LEN} bytes / GET alternately), {ROUNDS} rounds of the three modes in turn, {} s measured per mode and round after {} s warm-up",
        MEASURE.as_secs(),
        WARMUP.as_secs()
    );
    let mut modes: [(&str, Result<Measured, String>); 3] = [
        ("no CTTM", Err("not run".into())),
        ("async", Err("not run".into())),
        ("sync", Err("not run".into())),
    ];
    for round in 0..ROUNDS {
        for (i, (_, total)) in modes.iter_mut().enumerate() {
            let measured = match i {
                0 => no_cttm(),
                1 => with_agents("ova", CommitMode::Async, 0),
                _ => with_agents("ovs", CommitMode::Sync, SYNC_QUEUE),
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
    for (name, result) in &modes {
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
    println!(
        "(req/s: requests answered in the measured window over its length; p50/p99: request latency from its write to the end of its answer, on the client; /base: ratio to no CTTM; segments/held/released/dropped/degr.: the primary agent's counters over its runs: segments tracked, packets held and released by output commit, frames the capture dropped, degradations to async)"
    );
}
