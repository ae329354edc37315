//! Replication lag under a steady stream of small events: how long the primary waits for the
//! backup's acknowledgement of each message (what sync mode's hold adds, and the size of
//! async mode's loss window), and how many messages the backup is behind, on TCP loopback
//! with Noise, in the same run as the baseline: one message at a time (a bare replication
//! round trip through both services' threads).
//!
//! Run: `cargo bench -p cttm-replicate --bench lag`
//!
//! Patterns (each message one 64-byte `ClientData` event, spread over 8 connections):
//! - **one at a time** (baseline): submit, wait for its acknowledgement, repeat;
//! - **steady**: one message every 100 us (10,000 messages/s), without waiting;
//! - **bursts**: 50 messages back to back every 20 ms (the primary agent ships what one
//!   capture read returned), with idle gaps between them.
//!
//! Figures: acknowledgement latency p50/p99/max (submission until the primary learns the
//! backup applied it) and the lag in messages sampled at every submission (submitted minus
//! acknowledged at the primary, submitted minus applied at the backup), p50/p99/max.

mod common;

use common::{Pair, client_data, id, opened, start_pair};
use cttm_replicate::{PreSharedKey, PrimaryService, Security, Submitted};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CONNECTIONS: u16 = 8;
const EVENT_BYTES: usize = 64;
const BASELINE_MESSAGES: usize = 2_000;
const STEADY_MESSAGES: usize = 20_000;
const STEADY_PERIOD: Duration = Duration::from_micros(100);
const BURSTS: usize = 100;
const BURST_LEN: usize = 50;
const BURST_PERIOD: Duration = Duration::from_millis(20);

/// The next client offset of each connection.
struct Feed {
    offsets: Vec<u64>,
    next_conn: usize,
}

/// Starts the pair with every connection open and the link synchronised.
fn start() -> Pair {
    // No shadow session consumes: keep every byte.
    let pair = start_pair(Security::Noise(PreSharedKey::new([0x42; 32])), 1 << 30);
    for n in 0..CONNECTIONS {
        pair.primary.submit(opened(id(n))).expect("open");
    }
    assert!(
        pair.primary.wait_synchronised(Duration::from_secs(10)),
        "the link comes up"
    );
    pair
}

impl Feed {
    /// Submits the next small event; returns its sequence number.
    fn submit(&mut self, primary: &PrimaryService) -> u64 {
        let n = self.next_conn;
        self.next_conn = (n + 1) % self.offsets.len();
        let offset = self.offsets[n];
        self.offsets[n] += EVENT_BYTES as u64;
        let m = client_data(id(n as u16), offset, vec![0x5a; EVENT_BYTES]);
        match primary.submit(m).expect("consistent") {
            Submitted::Queued(seq) => seq,
            other => panic!("the benchmark must not overflow the queue: {other:?}"),
        }
    }
}

/// Figures of one pattern.
#[derive(Default)]
struct Figures {
    latency_us: Vec<f64>,
    primary_lag: Vec<f64>,
    backup_lag: Vec<f64>,
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
}

fn summary(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&v, 50),
        p99: percentile(&v, 99),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Submits `count` messages, calling `pace` before each, measuring every message's acknowledgement
/// latency with an observer thread woken by the primary's progress.
fn measure(pair: &Pair, feed: &mut Feed, count: usize, mut pace: impl FnMut(usize)) -> Figures {
    let first = pair.primary.acked_seq() + 1;
    let submitted_at: Arc<parking_lot::Mutex<Vec<std::time::Instant>>> =
        Arc::new(parking_lot::Mutex::new(Vec::with_capacity(count)));
    let done = Arc::new(AtomicBool::new(false));
    let mut figures = Figures::default();
    std::thread::scope(|scope| {
        let observer = {
            let (primary, submitted_at, done) = (&pair.primary, submitted_at.clone(), done.clone());
            scope.spawn(move || {
                let mut latencies = Vec::with_capacity(count);
                let mut next = first;
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while latencies.len() < count && std::time::Instant::now() < deadline {
                    // Every sequence number is recorded before it is submitted, so one
                    // acknowledged is always known here.
                    if !primary.wait_acked(next, Duration::from_millis(100)) {
                        if done.load(Ordering::SeqCst) && primary.acked_seq() < next {
                            break;
                        }
                        continue;
                    }
                    let now = std::time::Instant::now();
                    let acked = primary.acked_seq();
                    let times = submitted_at.lock();
                    while next <= acked && ((next - first) as usize) < times.len() {
                        latencies.push((now - times[(next - first) as usize]).as_secs_f64() * 1e6);
                        next += 1;
                    }
                }
                latencies
            })
        };
        for i in 0..count {
            pace(i);
            let t = std::time::Instant::now();
            // Record the time before submitting so the observer never sees an unknown seq.
            submitted_at.lock().push(t);
            let seq = feed.submit(&pair.primary);
            debug_assert_eq!(seq, first + i as u64);
            figures
                .primary_lag
                .push((seq - pair.primary.acked_seq()) as f64);
            figures
                .backup_lag
                .push(seq.saturating_sub(pair.backup.store().applied_seq()) as f64);
        }
        done.store(true, Ordering::SeqCst);
        figures.latency_us = observer.join().expect("observer");
    });
    assert_eq!(
        figures.latency_us.len(),
        count,
        "every message acknowledged"
    );
    figures
}

/// Sleeps until `at` (sleeping the bulk, spinning the last 50 us for precision).
fn sleep_until(at: std::time::Instant) {
    loop {
        let now = std::time::Instant::now();
        if now >= at {
            return;
        }
        let left = at - now;
        if left > Duration::from_micros(200) {
            std::thread::sleep(left - Duration::from_micros(150));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn one_at_a_time(pair: &Pair, feed: &mut Feed) -> Figures {
    let mut f = Figures::default();
    for _ in 0..BASELINE_MESSAGES {
        let t = std::time::Instant::now();
        let seq = feed.submit(&pair.primary);
        assert!(pair.primary.wait_acked(seq, Duration::from_secs(10)));
        f.latency_us.push(t.elapsed().as_secs_f64() * 1e6);
        f.primary_lag.push(1.0);
        f.backup_lag.push(1.0);
    }
    f
}

fn main() {
    let pair = start();
    let mut feed = Feed {
        offsets: vec![0; usize::from(CONNECTIONS)],
        next_conn: 0,
    };
    let baseline = one_at_a_time(&pair, &mut feed);
    let start = std::time::Instant::now();
    let steady = measure(&pair, &mut feed, STEADY_MESSAGES, |i| {
        sleep_until(start + STEADY_PERIOD * u32::try_from(i).unwrap_or(u32::MAX));
    });
    let start = std::time::Instant::now();
    let bursts = measure(&pair, &mut feed, BURSTS * BURST_LEN, |i| {
        if i % BURST_LEN == 0 {
            sleep_until(start + BURST_PERIOD * u32::try_from(i / BURST_LEN).unwrap_or(u32::MAX));
        }
    });
    println!(
        "replication lag on TCP loopback, Noise; {EVENT_BYTES}-byte events over {CONNECTIONS} connections"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} | {:>17} | {:>17}",
        "pattern",
        "ack p50",
        "ack p99",
        "ack max",
        "primary lag p50/p99/max",
        "backup lag p50/p99/max"
    );
    let base = summary(&baseline.latency_us);
    for (name, f) in [
        (
            format!("one at a time x{BASELINE_MESSAGES} (baseline)"),
            &baseline,
        ),
        (format!("steady 10k/s x{STEADY_MESSAGES}"), &steady),
        (format!("bursts {BURST_LEN} per 20 ms x{BURSTS}"), &bursts),
    ] {
        let l = summary(&f.latency_us);
        let p = summary(&f.primary_lag);
        let b = summary(&f.backup_lag);
        println!(
            "{name:<34} {:>7.0}us {:>7.0}us {:>7.0}us | {:>5.0}/{:>5.0}/{:>5.0} msgs | {:>5.0}/{:>5.0}/{:>5.0} msgs",
            l.p50, l.p99, l.max, p.p50, p.p99, p.max, b.p50, b.p99, b.max
        );
    }
    for (name, f) in [("steady", &steady), ("bursts", &bursts)] {
        let l = summary(&f.latency_us);
        println!(
            "ratio {name} / baseline: ack p50 {:.2}, ack p99 {:.2}",
            l.p50 / base.p50,
            l.p99 / base.p99
        );
    }
}
