//! Replication throughput and per-message latency over the TCP transport on loopback, with
//! Noise authentication and without (the baseline), in the same run, with ratios.
//!
//! Run: `cargo bench -p cttm-replicate --bench replicate`
//!
//! - Throughput: client bytes shipped in `ClientData` events of 16 KiB, from the first
//!   submission until the backup acknowledged the last one (MB/s, 10^6 bytes).
//! - Latency: one 256-byte event at a time, from submission until the backup's
//!   acknowledgement arrives back at the primary (a full round trip through both threads).

mod common;

use common::{Pair, client_data, id, opened, start_pair};
use cttm_core::ServiceSet;
use cttm_replicate::{PreSharedKey, PrimaryConfig, Security, Submitted};
use std::time::Duration;

const CHUNK: usize = 16 * 1024;
const TOTAL_BYTES: usize = 128 << 20;
const LATENCY_SAMPLES: usize = 2000;
/// Rounds of (plaintext, noise), alternating.
const ROUNDS: usize = 3;

struct Figures {
    mb_per_s: f64,
    latencies_us: Vec<f64>,
}

/// Figures of one mode pooled over the rounds: the median throughput, latency percentiles
/// over every sample.
struct Summary {
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn summarise(runs: &[Figures]) -> Summary {
    let mut rates: Vec<f64> = runs.iter().map(|f| f.mb_per_s).collect();
    rates.sort_by(f64::total_cmp);
    let mut samples: Vec<f64> = runs
        .iter()
        .flat_map(|f| f.latencies_us.iter().copied())
        .collect();
    samples.sort_by(f64::total_cmp);
    Summary {
        mb_per_s: rates[rates.len() / 2],
        p50_us: samples[samples.len() / 2],
        p99_us: samples[samples.len() * 99 / 100],
    }
}

fn run(security: Security) -> Figures {
    // Large retention so the backup keeps every byte shipped (no shadow session consumes).
    let Pair { primary, backup } = start_pair(security, TOTAL_BYTES * 2);

    // Throughput.
    let conn = id(1);
    primary.submit(opened(conn)).expect("open");
    assert!(
        primary.wait_synchronised(Duration::from_secs(10)),
        "link up"
    );
    let payload: Vec<u8> = (0..CHUNK).map(|i| i as u8).collect();
    let high_water = PrimaryConfig::default().max_retained_bytes / 2;
    let started = std::time::Instant::now();
    let mut offset = 0u64;
    let mut last = 0;
    while (offset as usize) < TOTAL_BYTES {
        if primary.retained_bytes() > high_water {
            primary.wait_retained_below(high_water / 2, Duration::from_secs(30));
        }
        match primary
            .submit(client_data(conn, offset, payload.clone()))
            .expect("consistent")
        {
            Submitted::Queued(seq) => last = seq,
            other => panic!("benchmark must not overflow the queue: {other:?}"),
        }
        offset += CHUNK as u64;
    }
    assert!(
        primary.wait_acked(last, Duration::from_secs(120)),
        "all acknowledged"
    );
    let elapsed = started.elapsed();
    let held = backup.store().holdings()[0].client_end;
    assert_eq!(held, offset, "the backup holds every byte");
    let mb_per_s = offset as f64 / 1e6 / elapsed.as_secs_f64();

    // Latency.
    let conn = id(2);
    primary.submit(opened(conn)).expect("open");
    let small = vec![0x5a; 256];
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES {
        let t = std::time::Instant::now();
        let Submitted::Queued(seq) = primary
            .submit(client_data(conn, (i * 256) as u64, small.clone()))
            .expect("ok")
        else {
            panic!("queue overflow")
        };
        assert!(primary.wait_acked(seq, Duration::from_secs(10)));
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Figures {
        mb_per_s,
        latencies_us: samples,
    }
}

/// Cost of the channel alone (seal, frame, unframe, open) for one 256-byte event message,
/// over a Unix socket pair, in microseconds.
fn channel_cost(security: Security) -> f64 {
    use cttm_replicate::noise::{ChannelLimits, establish};
    use cttm_replicate::wire::{Payload, Role, WireMessage};
    use std::os::unix::net::UnixStream;
    let services = ServiceSet::default();
    let (a, b) = UnixStream::pair().expect("pair");
    let sec = security.clone();
    let sv = services.clone();
    let backup = std::thread::spawn(move || {
        establish(
            b.try_clone().expect("clone"),
            b,
            &sec,
            Role::Backup,
            &sv,
            ChannelLimits::default(),
        )
        .expect("backup end")
    });
    let (_pr, mut pw) = establish(
        a.try_clone().expect("clone"),
        a,
        &security,
        Role::Primary,
        &services,
        ChannelLimits::default(),
    )
    .expect("primary end");
    let (mut br, _bw) = backup.join().expect("join");
    let message = WireMessage::Data {
        epoch: 1,
        seq: 1,
        payload: Payload::Message(client_data(id(3), 0, vec![0x5a; 256])),
    };
    let rounds = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        pw.send(&message).expect("send");
        br.recv().expect("recv").expect("message");
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn main() {
    let plain_channel = channel_cost(Security::Plaintext);
    let noise_channel = channel_cost(Security::Noise(PreSharedKey::new([0x42; 32])));
    // Modes alternate over the rounds so neither always runs on a colder or busier machine.
    let (mut plain_runs, mut noise_runs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain_runs.push(run(Security::Plaintext));
        noise_runs.push(run(Security::Noise(PreSharedKey::new([0x42; 32]))));
    }
    let (plain, noise) = (summarise(&plain_runs), summarise(&noise_runs));
    println!(
        "replication over TCP loopback ({} MiB in {} KiB events; {} latency samples; {} alternating rounds per mode, median MB/s)",
        TOTAL_BYTES >> 20,
        CHUNK >> 10,
        LATENCY_SAMPLES,
        ROUNDS
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "mode", "MB/s", "p50 us", "p99 us"
    );
    println!(
        "{:<28} {:>12.1} {:>12.1} {:>12.1}",
        "plaintext (baseline)", plain.mb_per_s, plain.p50_us, plain.p99_us
    );
    println!(
        "{:<28} {:>12.1} {:>12.1} {:>12.1}",
        "noise NNpsk0 ChaChaPoly", noise.mb_per_s, noise.p50_us, noise.p99_us
    );
    println!(
        "{:<28} {:>12.2} {:>12.2} {:>12.2}",
        "ratio noise / plaintext",
        noise.mb_per_s / plain.mb_per_s,
        noise.p50_us / plain.p50_us,
        noise.p99_us / plain.p99_us
    );
    println!(
        "channel only (send+receive one 256-byte event over a Unix socket pair): plaintext {plain_channel:.2} us, noise {noise_channel:.2} us, ratio {:.2}",
        noise_channel / plain_channel
    );
}
