//! `cttm-pcap-track`: replay a capture file through the CTTM tracker.
//!
//! ```text
//! cttm-pcap-track generate <out.pcap|out.pcapng> [--connections N] [--frames N] [--seed S]
//! cttm-pcap-track track <file.pcap|file.pcapng> --service ADDR:PORT [--service ADDR:PORT ...]
//! cttm-pcap-track demo [--connections N] [--frames N] [--seed S]
//! ```
//!
//! `demo` does both: it writes a generated capture to a temporary pcapng file, replays it and
//! removes the file.
//!
//! `generate` writes a synthetic capture from the conversation generator of `cttm-tests` and
//! prints the service endpoints to track. `track` reads a capture (from this tool, tcpdump,
//! Wireshark…) through the [`CaptureSource`] trait, feeds every frame to a
//! [`cttm_core::Tracker`] and prints each connection with its snapshot: what a restore would use.
//! Exit status: 0 on success, 1 when the file cannot be read or written, 2 on bad arguments.

use cttm_capture::pcap::{
    CaptureFileWriter, PcapFileReader, PcapWriter, PcapngWriter, TimeResolution,
};
use cttm_capture::{CaptureError, CaptureSource};
use cttm_core::wire::ParseError;
use cttm_core::{
    ConnectionSnapshot, Instant, ServiceEndpoint, ServiceSet, Side, Tracker, TrackerConfig,
};
use cttm_tests::conversation::{GeneratorConfig, generate};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage:
  cttm-pcap-track generate <out.pcap|out.pcapng> [--connections N] [--frames N] [--seed S]
  cttm-pcap-track track <file.pcap|file.pcapng> --service ADDR:PORT [--service ADDR:PORT ...]
  cttm-pcap-track demo [--connections N] [--frames N] [--seed S]

generate  writes a synthetic capture of interleaved TCP connections (default: 10 connections,
          1000 frames, seed 1) and prints the service endpoints to pass to `track`.
          A name ending in .pcapng gives a pcapng file, anything else classic pcap.
track     replays a pcap or pcapng capture through the tracker and prints every connection
          to the given services with its snapshot (IPv6: --service [2001:db8::1]:80).
demo      generate (default 50 connections, 5000 frames) into a temporary pcapng file, then
          track it, then remove the file.";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Generate {
        out: PathBuf,
        connections: usize,
        frames: usize,
        seed: u64,
    },
    Track {
        file: PathBuf,
        services: Vec<SocketAddr>,
    },
    Demo {
        connections: usize,
        frames: usize,
        seed: u64,
    },
    Help,
}

/// A command-line mistake, shown with the usage text.
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(UsageError(message)) => {
            eprintln!("cttm-pcap-track: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Generate {
            out,
            connections,
            frames,
            seed,
        } => run_generate(&out, connections, frames, seed).map(drop),
        Command::Track { file, services } => run_track(&file, &services),
        Command::Demo {
            connections,
            frames,
            seed,
        } => run_demo(connections, frames, seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cttm-pcap-track: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<Command, UsageError> {
    let Some((subcommand, rest)) = args.split_first() else {
        return Err(UsageError("missing command (generate or track)".into()));
    };
    match subcommand.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "generate" => parse_generate(rest),
        "track" => parse_track(rest),
        "demo" => parse_demo(rest),
        other => Err(UsageError(format!(
            "unknown command {other:?} (expected generate, track or demo)"
        ))),
    }
}

/// Positional arguments, then `(flag name, value)` pairs.
type SplitArgs<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

/// Splits `rest` into positional arguments and `--flag value` pairs.
fn split_flags<'a>(rest: &'a [String], known: &[&str]) -> Result<SplitArgs<'a>, UsageError> {
    let mut positional = Vec::new();
    let mut flags = Vec::new();
    let mut iter = rest.iter();
    while let Some(arg) = iter.next() {
        if arg == "-h" || arg == "--help" {
            return Err(UsageError("help requested".into()));
        }
        if let Some(name) = arg.strip_prefix("--") {
            if !known.contains(&name) {
                return Err(UsageError(format!("unknown option --{name}")));
            }
            let Some(value) = iter.next() else {
                return Err(UsageError(format!("--{name} needs a value")));
            };
            flags.push((name, value.as_str()));
        } else {
            positional.push(arg.as_str());
        }
    }
    Ok((positional, flags))
}

fn one_path(positional: &[&str], what: &str) -> Result<PathBuf, UsageError> {
    match positional {
        [path] => Ok(PathBuf::from(path)),
        [] => Err(UsageError(format!("missing {what}"))),
        [_, extra, ..] => Err(UsageError(format!("unexpected argument {extra:?}"))),
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, UsageError> {
    value.parse().map_err(|_| {
        UsageError(format!(
            "--{flag} takes a non-negative integer, not {value:?}"
        ))
    })
}

fn parse_generate(rest: &[String]) -> Result<Command, UsageError> {
    let (positional, flags) = split_flags(rest, &["connections", "frames", "seed"])?;
    let out = one_path(&positional, "output file name")?;
    let (mut connections, mut frames, mut seed) = (10usize, 1000usize, 1u64);
    for (name, value) in flags {
        match name {
            "connections" => connections = number(name, value)?,
            "frames" => frames = number(name, value)?,
            _ => seed = number(name, value)?,
        }
    }
    if connections == 0 {
        return Err(UsageError("--connections must be at least 1".into()));
    }
    Ok(Command::Generate {
        out,
        connections,
        frames,
        seed,
    })
}

fn parse_track(rest: &[String]) -> Result<Command, UsageError> {
    let (positional, flags) = split_flags(rest, &["service"])?;
    let file = one_path(&positional, "capture file name")?;
    let services = flags
        .into_iter()
        .map(|(_, value)| {
            value.parse::<SocketAddr>().map_err(|_| {
                UsageError(format!(
                    "--service takes ADDR:PORT (IPv6: [ADDR]:PORT), not {value:?}"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if services.is_empty() {
        return Err(UsageError(
            "track needs at least one --service ADDR:PORT".into(),
        ));
    }
    Ok(Command::Track { file, services })
}

fn parse_demo(rest: &[String]) -> Result<Command, UsageError> {
    // `demo` takes generate's flags but writes to a file of its own.
    let mut with_path = vec!["demo.pcapng".to_string()];
    with_path.extend_from_slice(rest);
    match parse_generate(&with_path)? {
        Command::Generate {
            connections,
            frames,
            seed,
            ..
        } => Ok(Command::Demo {
            connections: if rest.iter().any(|a| a == "--connections") {
                connections
            } else {
                50
            },
            frames: if rest.iter().any(|a| a == "--frames") {
                frames
            } else {
                5000
            },
            seed,
        }),
        other => Ok(other),
    }
}

/// Generates a capture into a temporary file, tracks it, and removes the file.
fn run_demo(connections: usize, frames: usize, seed: u64) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("cttm-demo-{}.pcapng", std::process::id()));
    let result = run_generate(&path, connections, frames, seed)
        .and_then(|services| run_track(&path, &services));
    let _ = std::fs::remove_file(&path);
    result
}

/// Writes a generated capture to `out` (pcapng when the name ends in `.pcapng`) and returns
/// the service endpoints to track.
fn run_generate(
    out: &std::path::Path,
    connections: usize,
    frames: usize,
    seed: u64,
) -> Result<Vec<SocketAddr>, String> {
    let config = GeneratorConfig {
        connections,
        target_frames: frames,
        ..GeneratorConfig::default()
    };
    let capture = generate(&config, seed);
    let pcapng = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("pcapng"));
    let file_error = |e: cttm_capture::pcap::PcapWriteError| format!("{}: {e}", out.display());
    let mut writer: Box<dyn CaptureFileWriter> = if pcapng {
        Box::new(PcapngWriter::create(out, TimeResolution::Micros).map_err(file_error)?)
    } else {
        Box::new(PcapWriter::create(out, None, TimeResolution::Micros).map_err(file_error)?)
    };
    for (at, link, data) in &capture.frames {
        writer.write_frame(*at, *link, data).map_err(file_error)?;
    }
    let written = writer.frames();
    writer.finish_file().map_err(file_error)?;
    println!(
        "wrote {written} frames of {} connections to {} (seed {seed})",
        capture.truths.len(),
        out.display()
    );
    let services: Vec<SocketAddr> = capture
        .services
        .endpoints()
        .iter()
        .map(|e| SocketAddr::new(e.addr, e.port))
        .collect();
    for service in &services {
        println!("service {service}");
    }
    let service_args: Vec<String> = services.iter().map(|s| format!("--service {s}")).collect();
    println!(
        "track with: cttm-pcap-track track {} {}",
        out.display(),
        service_args.join(" ")
    );
    Ok(services)
}

/// Frames that yielded no tracked segment, by reason.
#[derive(Default)]
struct SkippedFrames {
    truncated_payload: u64,
    not_tcp: u64,
    other: BTreeMap<String, u64>,
}

fn run_track(file: &std::path::Path, services: &[SocketAddr]) -> Result<(), String> {
    let mut source = PcapFileReader::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let services = ServiceSet::new(services.iter().map(|s| ServiceEndpoint::new(*s)));
    let mut tracker = Tracker::new(TrackerConfig::new(services));
    let mut events = Vec::new();
    let mut skipped = SkippedFrames::default();
    let mut last_at = Instant::ZERO;
    let mut event_count = 0u64;
    loop {
        let batch = source.read_batch(Duration::ZERO, &mut |frame| {
            last_at = last_at.max(frame.at);
            match tracker.on_frame(frame.at, frame.link, frame.data, &mut events) {
                Ok(_) => {}
                Err(ParseError::TruncatedPayload) => skipped.truncated_payload += 1,
                Err(ParseError::NotIp | ParseError::NotTcp) => skipped.not_tcp += 1,
                Err(other) => *skipped.other.entry(other.to_string()).or_default() += 1,
            }
            event_count += events.len() as u64;
            events.clear();
        });
        match batch {
            Ok(_) => {}
            Err(CaptureError::EndOfCapture) => break,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        }
    }
    let capture_stats = source.stats();
    let stats = tracker.stats();
    println!(
        "read {} frames ({} cut short by the snap length) from {}",
        capture_stats.frames,
        source.truncated_frames(),
        file.display()
    );
    println!(
        "tracker: segments={} foreign={} not_tcp={} malformed={} opened={} mid_stream={} \
         closed={} unsafe={} events={event_count}",
        stats.segments,
        stats.foreign,
        stats.not_tcp,
        stats.malformed,
        stats.opened,
        stats.mid_stream,
        stats.closed,
        stats.unsafe_connections,
    );
    if skipped.truncated_payload > 0 {
        println!(
            "warning: {} frames had a truncated TCP payload; capture whole frames (snaplen 0 or \
             65535+) to track them",
            skipped.truncated_payload
        );
    }
    for (reason, count) in &skipped.other {
        println!("warning: {count} frames skipped: {reason}");
    }
    let mut records: Vec<_> = tracker.records().collect();
    records.sort_by_key(|r| (r.id().server, r.id().client));
    println!("{} connections tracked", records.len());
    for record in records {
        let snapshot = record.snapshot();
        println!(
            "connection {} -> {} state={:?} restorability={:?} client_bytes={} server_bytes={} \
             client_acked={} server_acked={}",
            snapshot.id.client,
            snapshot.id.server,
            snapshot.state,
            snapshot.restorability,
            record.stream(Side::Client).received_end(),
            record.stream(Side::Server).received_end(),
            record.stream(Side::Server).acked(),
            record.stream(Side::Client).acked(),
        );
        println!("  {}", options_line(&snapshot));
        println!("  {}", snapshot_line(&snapshot, last_at));
    }
    Ok(())
}

fn options_line(snapshot: &ConnectionSnapshot) -> String {
    let options = &snapshot.options;
    let scale = match options.window_scale {
        Some(s) => format!("{}/{}", s.send, s.receive),
        None => "off".to_string(),
    };
    format!(
        "options mss={} wscale={scale} sack={} timestamps={} client_isn={} server_isn={}",
        options.mss, options.sack, options.timestamps, snapshot.client_isn.0, snapshot.server_isn.0
    )
}

fn snapshot_line(snapshot: &ConnectionSnapshot, now: Instant) -> String {
    let window = &snapshot.window;
    let clock = match &snapshot.clock {
        Some(clock) => format!(
            "server_tsval={} client_tsval={} observed_at={} tsval_now={}",
            clock.server_tsval,
            clock.client_tsval,
            clock.observed_at,
            snapshot
                .server_tsval_at(now)
                .map_or("-".to_string(), |v| v.to_string())
        ),
        None => "off".to_string(),
    };
    format!(
        "snapshot send.una={} send.len={} send.fin={} receive.next={} receive.len={} \
         receive.fin={} window snd_wnd={} max_window={} rcv_wnd={} snd_wl1={} rcv_wup={} \
         clock {clock}",
        snapshot.send.una.0,
        snapshot.send.bytes.len(),
        snapshot.send.fin,
        snapshot.receive.next.0,
        snapshot.receive.bytes.len(),
        snapshot.receive.fin,
        window.snd_wnd,
        window.max_window,
        window.rcv_wnd,
        window.snd_wl1,
        window.rcv_wup,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_both_commands() {
        assert_eq!(
            parse_args(&args(&[
                "generate", "x.pcap", "--seed", "7", "--frames", "50"
            ])),
            Ok(Command::Generate {
                out: "x.pcap".into(),
                connections: 10,
                frames: 50,
                seed: 7
            })
        );
        assert_eq!(
            parse_args(&args(&[
                "track",
                "--service",
                "198.18.0.1:80",
                "f.pcapng",
                "--service",
                "[2001:db8::1]:443"
            ])),
            Ok(Command::Track {
                file: "f.pcapng".into(),
                services: vec![
                    "198.18.0.1:80".parse().unwrap(),
                    "[2001:db8::1]:443".parse().unwrap()
                ]
            })
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &[][..],
            &["frobnicate"][..],
            &["generate"][..],
            &["generate", "a", "b"][..],
            &["generate", "a", "--connections"][..],
            &["generate", "a", "--connections", "-3"][..],
            &["generate", "a", "--connections", "0"][..],
            &["generate", "a", "--bogus", "1"][..],
            &["track", "f.pcap"][..],
            &["track", "f.pcap", "--service", "198.18.0.1"][..],
            &["track", "--service", "198.18.0.1:80"][..],
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
