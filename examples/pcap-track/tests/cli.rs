//! Runs the `cttm-pcap-track` binary: generate a capture, track it, and compare what it prints
//! with the generator's ground truth; bad arguments and bad files give clear errors.

use cttm_tests::conversation::{ConnectionTruth, GeneratorConfig, generate};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_cttm-pcap-track");

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cttm-pcap-track-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .output()
        .expect("run cttm-pcap-track")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `key=value` tokens of one printed line.
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .collect()
}

/// The three lines printed per connection, keyed by "client -> server".
fn printed_connections(output: &str) -> HashMap<String, HashMap<&str, &str>> {
    let lines: Vec<&str> = output.lines().collect();
    let mut found = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("connection ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (client, arrow, server) = (words.next(), words.next(), words.next());
        assert_eq!(arrow, Some("->"), "{line}");
        let key = format!("{} -> {}", client.expect("client"), server.expect("server"));
        let mut all = fields(line);
        for detail in &lines[i + 1..(i + 3).min(lines.len())] {
            all.extend(fields(detail));
        }
        found.insert(key, all);
    }
    found
}

fn check_against_truth(printed: &HashMap<&str, &str>, truth: &ConnectionTruth) {
    let end = &truth.endpoint;
    let id = truth.id;
    assert_eq!(printed["state"], format!("{:?}", end.state), "{id}");
    assert_eq!(printed["client_isn"], end.client_isn.0.to_string(), "{id}");
    assert_eq!(printed["server_isn"], end.server_isn.0.to_string(), "{id}");
    assert_eq!(printed["mss"], end.options.mss.to_string(), "{id}");
    assert_eq!(printed["sack"], end.options.sack.to_string(), "{id}");
    assert_eq!(
        printed["timestamps"],
        end.options.timestamps.to_string(),
        "{id}"
    );
    assert_eq!(
        printed["server_bytes"],
        truth.server_stream.len().to_string(),
        "{id}"
    );
    assert_eq!(printed["send.una"], end.send_una.0.to_string(), "{id}");
    assert_eq!(
        printed["receive.next"],
        end.receive_next.0.to_string(),
        "{id}"
    );
    assert_eq!(printed["receive.fin"], end.receive_fin.to_string(), "{id}");
    if let Some(clock) = &end.clock {
        assert_eq!(
            printed["server_tsval"],
            clock.server_tsval.to_string(),
            "{id}"
        );
    }
}

fn generate_then_track(dir: &Path, name: &str, connections: usize, frames: usize, seed: u64) {
    let file = dir.join(name);
    let file_arg = file.to_str().expect("utf-8 temp path");
    let (connections_arg, frames_arg, seed_arg) = (
        connections.to_string(),
        frames.to_string(),
        seed.to_string(),
    );
    let generated = stdout(&run(&[
        "generate",
        file_arg,
        "--connections",
        &connections_arg,
        "--frames",
        &frames_arg,
        "--seed",
        &seed_arg,
    ]));
    // The same capture, generated in-process, gives the truth to compare with.
    let config = GeneratorConfig {
        connections,
        target_frames: frames,
        ..Default::default()
    };
    let capture = generate(&config, seed);
    assert!(
        generated.starts_with(&format!(
            "wrote {} frames of {connections} connections",
            capture.frames.len()
        )),
        "{generated}"
    );
    let services: Vec<&str> = generated
        .lines()
        .filter_map(|l| l.strip_prefix("service "))
        .collect();
    assert_eq!(
        services.len(),
        capture.services.endpoints().len(),
        "{generated}"
    );

    let mut args = vec!["track", file_arg];
    for service in &services {
        args.extend(["--service", service]);
    }
    let tracked = stdout(&run(&args));
    assert!(
        tracked.starts_with(&format!(
            "read {} frames (0 cut short",
            capture.frames.len()
        )),
        "{tracked}"
    );
    let printed = printed_connections(&tracked);
    let opened: Vec<&ConnectionTruth> = capture.truths.iter().filter(|t| t.syn_ack_sent).collect();
    assert_eq!(printed.len(), opened.len(), "{tracked}");
    assert!(
        opened.len() >= 2,
        "the case must exercise several connections"
    );
    for truth in opened {
        let key = format!("{} -> {}", truth.id.client, truth.id.server);
        let line = printed
            .get(&key)
            .unwrap_or_else(|| panic!("{key} not printed:\n{tracked}"));
        check_against_truth(line, truth);
    }
}

#[test]
fn generate_then_track_matches_the_truth_pcap_and_pcapng() {
    let dir = TempDir::new("truth");
    generate_then_track(&dir.0, "capture.pcap", 6, 600, 11);
    generate_then_track(&dir.0, "capture.pcapng", 4, 400, 12);
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["generate"][..],
        &["generate", "x.pcap", "--frames", "many"][..],
        &["track", "x.pcap"][..],
        &["track", "x.pcap", "--service", "not-an-address"][..],
    ] {
        let output = run(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("usage:"), "{args:?}: {stderr}");
    }
}

#[test]
fn unreadable_files_exit_1_with_the_reason() {
    let dir = TempDir::new("bad-files");
    let garbage = dir.path("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").expect("write");
    let missing = dir.path("missing.pcap");
    for (path, reason) in [
        (&garbage, "bad capture file"),
        (&missing, "opening the capture file"),
    ] {
        let output = run(&[
            "track",
            path.to_str().expect("utf-8"),
            "--service",
            "198.18.0.1:8080",
        ]);
        assert_eq!(output.status.code(), Some(1), "{}", path.display());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{stderr}");
    }
    // Writing into a directory that does not exist.
    let output = run(&[
        "generate",
        missing.join("sub/out.pcap").to_str().expect("utf-8"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("creating the pcap file"));
}
