//! Capture cost under a bulk transfer: AF_PACKET capture + tracking on the server's interface
//! of a namespace pair, against the same transfer without capture in the same run.
//!
//! Run: `cargo bench -p cttm-capture --bench capture` (needs root for namespaces and
//! AF_PACKET; without it, it says so and exits). Prints throughput, frames/s captured and
//! tracked, kernel drops, and the throughput ratio with capture / without.
//! `CTTM_BENCH_MIB` sets the transfer size (default 512 MiB).

use cttm_capture::CaptureSource;
use cttm_capture::af_packet::{AfPacketConfig, AfPacketSource, CaptureMode};
use cttm_core::{ServiceEndpoint, ServiceSet, Tracker, TrackerConfig};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SERVER: &str = "198.18.0.2:7400";

/// Two namespaces joined by one veth pair, deleted on drop.
struct Pair {
    client: String,
    server: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Pair {
    fn new() -> Result<Pair, String> {
        let pid = std::process::id();
        let pair = Pair {
            client: format!("cttm-bench-{pid}-c"),
            server: format!("cttm-bench-{pid}-s"),
        };
        ip(&["netns", "add", &pair.client])?;
        ip(&["netns", "add", &pair.server])?;
        ip(&[
            "-n",
            &pair.client,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.server,
        ])?;
        for (ns, addr) in [
            (&pair.client, "198.18.0.1/24"),
            (&pair.server, "198.18.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn spawn<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, String>> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            Ok(f())
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.server]);
    }
}

/// Sends `bytes` from the client to the server; returns the time from connect to the
/// server's end of stream.
fn transfer(pair: &Pair, bytes: u64) -> Result<Duration, String> {
    let addr: SocketAddr = SERVER.parse().map_err(|e| format!("{e}"))?;
    let listener = Pair::spawn(&pair.server, move || TcpListener::bind(addr))
        .join()
        .map_err(|_| "listener thread panicked".to_string())??
        .map_err(|e| format!("bind: {e}"))?;
    let server = std::thread::spawn(move || -> Result<u64, String> {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).map_err(|e| format!("server read: {e}"))?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let started = Instant::now();
    let client = Pair::spawn(&pair.client, move || -> Result<(), String> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        c.set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            c.write_all(&chunk[..n])
                .map_err(|e| format!("client write: {e}"))?;
            left -= n as u64;
        }
        c.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        Ok(())
    });
    client
        .join()
        .map_err(|_| "client panicked".to_string())???;
    let received = server.join().map_err(|_| "server panicked".to_string())??;
    let elapsed = started.elapsed();
    if received != bytes {
        return Err(format!("server received {received} of {bytes} bytes"));
    }
    Ok(elapsed)
}

struct CaptureFigures {
    frames: u64,
    segments: u64,
    events: u64,
    dropped: u64,
}

fn transfer_with_capture(
    pair: &Pair,
    bytes: u64,
    mode: CaptureMode,
    track: bool,
) -> Result<(Duration, CaptureFigures), String> {
    let services = ServiceSet::new([ServiceEndpoint::new(
        SERVER.parse().map_err(|e| format!("{e}"))?,
    )]);
    let mut config = AfPacketConfig::new("eth0", services.clone());
    config.mode = mode;
    let source = Pair::spawn(&pair.server, move || AfPacketSource::open(config))
        .join()
        .map_err(|_| "capture open panicked".to_string())??
        .map_err(|e| e.to_string())?;
    if source.mode() != mode {
        return Err(format!(
            "asked for {mode:?}, got {:?}: {:?}",
            source.mode(),
            source.ring_fallback()
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let capture = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<CaptureFigures, String> {
            let mut source = source;
            let mut tracker = Tracker::new(TrackerConfig::new(services));
            let mut events = Vec::new();
            let mut event_count = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let stopping = stop.load(Ordering::Acquire);
                let n = source
                    .read_batch(Duration::from_millis(50), &mut |frame| {
                        if track {
                            let _ = tracker.on_frame(frame.at, frame.link, frame.data, &mut events);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                event_count += events.len() as u64;
                events.clear();
                if (stopping && n == 0) || Instant::now() > deadline {
                    break;
                }
            }
            Ok(CaptureFigures {
                frames: source.stats().frames,
                segments: tracker.stats().segments,
                events: event_count,
                dropped: source.stats().dropped,
            })
        })
    };
    let elapsed = transfer(pair, bytes);
    stop.store(true, Ordering::Release);
    let figures = capture
        .join()
        .map_err(|_| "capture thread panicked".to_string())??;
    Ok((elapsed?, figures))
}

fn gbits(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

fn run() -> Result<(), String> {
    let mib: u64 = std::env::var("CTTM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = mib << 20;
    let pair = Pair::new()?;
    transfer(&pair, 16 << 20)?; // warm-up
    println!(
        "capture bench: {mib} MiB client -> server over veth; per variant, 3 rounds of (baseline, capture), best of each"
    );
    for (mode, track) in [
        (CaptureMode::Ring, true),
        (CaptureMode::Recv, true),
        (CaptureMode::Ring, false),
    ] {
        let mut baseline = Duration::MAX;
        let mut best: Option<(Duration, CaptureFigures)> = None;
        for _ in 0..3 {
            baseline = baseline.min(transfer(&pair, bytes)?);
            let (elapsed, figures) = transfer_with_capture(&pair, bytes, mode, track)?;
            if best.as_ref().is_none_or(|(b, _)| elapsed < *b) {
                best = Some((elapsed, figures));
            }
        }
        let (elapsed, f) = best.ok_or("no run")?;
        println!(
            "  {:<24} {:6.2} Gbit/s vs baseline {:6.2} Gbit/s, ratio {:.2}; {} frames ({:.0} frames/s), {} segments tracked, {} events, {} kernel drops",
            format!(
                "AF_PACKET {mode:?}{}:",
                if track { " + track" } else { " only" }
            ),
            gbits(bytes, elapsed),
            gbits(bytes, baseline),
            baseline.as_secs_f64() / elapsed.as_secs_f64(),
            f.frames,
            f.frames as f64 / elapsed.as_secs_f64(),
            f.segments,
            f.events,
            f.dropped,
        );
    }
    Ok(())
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("capture bench skipped: needs root (network namespaces, AF_PACKET)");
        return;
    }
    if let Err(e) = run() {
        println!("capture bench failed: {e}");
        std::process::exit(1);
    }
}
