//! Config files and flags: every key, every default, flag override, and every error path
//! (each error must name the key and say what to write).

use cttm_tests::temp_dir::TempDir;
use cttmd::config::{ConfigError, backup_options, key_to_hex, parse_key_hex, primary_options};
use cttmd::options::{CommitMode, FenceOptions, ProbeOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn key_bytes() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn primary_err(a: &[&str]) -> String {
    primary_options(&args(a))
        .expect_err("must fail")
        .to_string()
}

fn backup_err(a: &[&str]) -> String {
    backup_options(&args(a)).expect_err("must fail").to_string()
}

/// The error message `e` contains every one of `parts`.
fn assert_says(e: &str, parts: &[&str]) {
    assert!(parts.iter().all(|part| e.contains(part)), "{e}");
}

#[test]
fn primary_from_flags_only_gets_documented_defaults() {
    let o = primary_options(&args(&[
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "198.18.0.3:7700",
        "--key",
        KEY,
    ]))
    .expect("valid");
    assert_eq!(o.services, vec![addr("198.18.0.10:7000")]);
    assert_eq!(o.backup, addr("198.18.0.3:7700"));
    assert_eq!(o.key, key_bytes());
    assert_eq!(o.interface, "eth0");
    assert_eq!(o.mode, CommitMode::Sync);
    assert_eq!(o.heartbeat.interval, Duration::from_millis(100));
    assert_eq!(o.heartbeat.misses, 3);
    assert_eq!(o.retention_limit, 64 * 1024 * 1024);
    assert_eq!(o.queue, 0);
    assert_eq!(o.degrade_after, Duration::from_millis(1000));
    assert_eq!(o.probe, ProbeOptions::DEFAULT);
    assert_eq!(
        o.observe.status_socket,
        Some(PathBuf::from("/run/cttmd/primary.sock"))
    );
    assert_eq!(o.observe.metrics, None);
    assert_eq!(o.capture_file, None);
}

#[test]
fn primary_file_sets_every_key_and_flags_override_it() {
    let dir = TempDir::new("config");
    let file = dir.file(
        "primary.toml",
        format!(
            r#"
service = ["198.18.0.10:7000", "[2001:db8::10]:7000"]
interface = "veth7"
backup = "198.18.0.3:7700"
key = "{KEY}"
mode = "async"
heartbeat_interval_ms = 50
heartbeat_misses = 7
retention_limit = 1000000
queue = 12
"#
        )
        .as_bytes(),
    );
    let o = primary_options(&args(&["--config", &file])).expect("file alone");
    assert_eq!(
        o.services,
        vec![addr("198.18.0.10:7000"), addr("[2001:db8::10]:7000")]
    );
    assert_eq!(o.interface, "veth7");
    assert_eq!(o.mode, CommitMode::Async);
    assert_eq!(o.heartbeat.interval, Duration::from_millis(50));
    assert_eq!(o.heartbeat.misses, 7);
    assert_eq!(o.retention_limit, 1_000_000);
    assert_eq!(o.queue, 12);
    assert_eq!(o.key, key_bytes());

    let o = primary_options(&args(&[
        "--config",
        &file,
        "--service",
        "198.18.0.20:80",
        "--service=198.18.0.20:443",
        "--interface",
        "eth1",
        "--backup",
        "198.18.0.4:7701",
        "--key",
        OTHER_KEY,
        "--mode",
        "sync",
        "--heartbeat-interval-ms",
        "20",
        "--heartbeat-misses",
        "2",
        "--retention-limit",
        "4096",
        "--queue",
        "3",
    ]))
    .expect("flags over file");
    assert_eq!(
        o.services,
        vec![addr("198.18.0.20:80"), addr("198.18.0.20:443")]
    );
    assert_eq!(o.interface, "eth1");
    assert_eq!(o.backup, addr("198.18.0.4:7701"));
    assert_eq!(o.key, parse_key_hex(OTHER_KEY).unwrap());
    assert_eq!(o.mode, CommitMode::Sync);
    assert_eq!(o.heartbeat.interval, Duration::from_millis(20));
    assert_eq!(o.heartbeat.misses, 2);
    assert_eq!(o.retention_limit, 4096);
    assert_eq!(o.queue, 3);
}

#[test]
fn backup_from_file_and_flags_with_defaults() {
    let dir = TempDir::new("config");
    dir.file("psk", format!("{KEY}\n").as_bytes());
    let file = dir.file(
        "backup.toml",
        br#"
service = "198.18.0.10:7000"
listen = "198.18.0.3:7700"
key_file = "psk"
"#,
    );
    let o = backup_options(&args(&["--config", &file])).expect("file");
    assert_eq!(o.services, vec![addr("198.18.0.10:7000")]);
    assert_eq!(o.service_prefix_len, 24);
    assert_eq!(o.interface, "eth0");
    assert_eq!(o.listen, addr("198.18.0.3:7700"));
    assert_eq!(o.key, key_bytes(), "key_file relative to the config file");
    assert_eq!(o.standby, addr("127.0.0.1:7000"));
    assert_eq!(o.heartbeat.interval, Duration::from_millis(100));
    assert_eq!(o.heartbeat.misses, 3);
    assert_eq!(o.announce_count, 3);
    assert_eq!(o.probe, ProbeOptions::DEFAULT);
    assert_eq!(o.fence, None);
    assert_eq!(
        o.observe.status_socket,
        Some(PathBuf::from("/run/cttmd/backup.sock"))
    );
    assert_eq!(o.observe.metrics, None);

    let raw_key = dir.file("raw", &[7u8; 32]);
    let o = backup_options(&args(&[
        "--config",
        &file,
        "--service",
        "[2001:db8::10]:9000",
        "--prefix-len",
        "120",
        "--interface",
        "br-svc",
        "--listen",
        "[::]:7800",
        "--key-file",
        &raw_key,
        "--standby",
        "[::1]:9001",
        "--heartbeat-interval-ms",
        "10",
        "--heartbeat-misses",
        "9",
        "--announce-count",
        "0",
    ]))
    .expect("flags");
    assert_eq!(o.services, vec![addr("[2001:db8::10]:9000")]);
    assert_eq!(o.service_prefix_len, 120);
    assert_eq!(o.interface, "br-svc");
    assert_eq!(o.listen, addr("[::]:7800"));
    assert_eq!(o.key, [7u8; 32]);
    assert_eq!(o.standby, addr("[::1]:9001"));
    assert_eq!(o.heartbeat.interval, Duration::from_millis(10));
    assert_eq!(o.heartbeat.misses, 9);
    assert_eq!(o.announce_count, 0);

    // IPv6 defaults
    let o = backup_options(&args(&["--service", "[2001:db8::10]:9000", "--key", KEY])).expect("v6");
    assert_eq!(o.service_prefix_len, 64);
    assert_eq!(o.standby, addr("[::1]:9000"));
    assert_eq!(o.listen, addr("0.0.0.0:7700"));
}

#[test]
fn the_example_config_files_are_valid() {
    let here = env!("CARGO_MANIFEST_DIR");
    let p = primary_options(&args(&["--config", &format!("{here}/primary.toml")]))
        .expect("primary.toml");
    let b =
        backup_options(&args(&["--config", &format!("{here}/backup.toml")])).expect("backup.toml");
    assert_eq!(p.key, b.key);
    assert_eq!(p.services, b.services);
    assert_eq!(p.backup.port(), b.listen.port());
}

#[test]
fn flag_errors_name_the_flag() {
    let primary_cases: [(&[&str], &str); 5] = [
        (
            &["--frob", "1"],
            "unknown argument \"--frob\" for `cttmd primary`",
        ),
        (&["positional"], "unknown argument \"positional\""),
        (&["--backup"], "flag --backup needs a value"),
        (
            &["--mode", "sync", "--mode", "async"],
            "flag --mode given twice",
        ),
        (
            &["--config", "a", "--config", "b"],
            "flag --config given twice",
        ),
    ];
    for (arguments, expected) in primary_cases {
        assert_says(&primary_err(arguments), &[expected]);
    }
    assert_says(
        &backup_err(&["--queue", "1"]),
        &["unknown argument \"--queue\" for `cttmd backup`"],
    );
}

#[test]
fn value_errors_name_the_key_the_origin_and_the_fix() {
    let base = [
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "198.18.0.3:7700",
        "--key",
        KEY,
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        // later flags for the same key replace the base ones
        for pair in extra.chunks(2) {
            if let Some(i) = a.iter().position(|x| *x == pair[0]) {
                a[i + 1] = pair[1];
            } else {
                a.extend_from_slice(pair);
            }
        }
        primary_err(&a)
    };
    let key_zz = "zz".repeat(32);
    let primary_cases: [(&[&str], &[&str]); 13] = [
        (
            &["--backup", "x"],
            &[
                "key `backup` (flag --backup): expected ADDR:PORT like 198.18.0.3:7700",
                "got \"x\"",
            ],
        ),
        (&["--backup", "198.18.0.3:0"], &["key `backup`", "port 0"]),
        (
            &["--backup", "0.0.0.0:7700"],
            &["key `backup`", "not an address one can connect to"],
        ),
        (
            &["--service", "nope"],
            &["key `service`", "198.18.0.10:7000"],
        ),
        (&["--key", "abcd"], &["key `key`", "64 hex digits", "got 4"]),
        (&["--key", &key_zz], &["key `key`"]),
        (
            &["--mode", "fast"],
            &["key `mode`", "\"sync\" or \"async\", got \"fast\""],
        ),
        (
            &["--heartbeat-interval-ms", "0"],
            &["key `heartbeat_interval_ms`", "from 1 to 60000"],
        ),
        (&["--heartbeat-misses", "-1"], &["key `heartbeat_misses`"]),
        (&["--retention-limit", "lots"], &["key `retention_limit`"]),
        (&["--queue", "65536"], &["key `queue`", "from 0 to 65535"]),
        (&["--interface", "a/b"], &["key `interface`", "like eth0"]),
        (&["--interface", "sixteen-chars-xx"], &["key `interface`"]),
    ];
    for (extra, expected) in primary_cases {
        assert_says(&with(extra), expected);
    }
    let e = primary_err(&[
        "--service",
        "198.18.0.10:7000",
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "198.18.0.3:7700",
        "--key",
        KEY,
    ]);
    assert_says(&e, &["key `service`", "listed twice"]);

    let backup_cases: [(&[&str], &[&str]); 4] = [
        (
            &["--prefix-len", "33"],
            &["key `prefix_len`", "from 1 to 32"],
        ),
        (&["--announce-count", "101"], &["key `announce_count`"]),
        (&["--standby", "127.0.0.1"], &["key `standby`", "ADDR:PORT"]),
        (&["--listen", "[::]"], &["key `listen`"]),
    ];
    for (extra, expected) in backup_cases {
        let mut a = vec!["--service", "198.18.0.10:7000", "--key", KEY];
        a.extend_from_slice(extra);
        assert_says(&backup_err(&a), expected);
    }
}

#[test]
fn missing_required_keys_say_how_to_give_them() {
    let e = primary_err(&["--backup", "198.18.0.3:7700", "--key", KEY]);
    assert!(
        e.contains("key `service` is required") && e.contains("--service"),
        "{e}"
    );
    let e = primary_err(&["--service", "198.18.0.10:7000", "--key", KEY]);
    assert!(
        e.contains("key `backup` is required") && e.contains("--backup"),
        "{e}"
    );
    let e = primary_err(&[
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "198.18.0.3:7700",
    ]);
    assert!(
        e.contains("key `key` is required") && e.contains("--key-file"),
        "{e}"
    );
    let e = backup_err(&["--key", KEY]);
    assert!(e.contains("key `service` is required"), "{e}");
    let dir = TempDir::new("config");
    let file = dir.file("empty-list.toml", b"service = []\n");
    let e = backup_err(&["--config", &file, "--key", KEY]);
    assert!(e.contains("key `service` is required"), "{e}");
}

#[test]
fn file_errors_name_the_file_and_the_key() {
    let dir = TempDir::new("config");
    let e = primary_err(&["--config", &dir.path("absent.toml").to_string_lossy()]);
    assert!(
        e.contains("cannot read config file") && e.contains("absent.toml"),
        "{e}"
    );

    // (file, contents, the role reading it, what the error says)
    type Role = fn(&[&str]) -> String;
    let cases: [(&str, &[u8], Role, &[&str]); 5] = [
        (
            "syntax.toml",
            b"service = [\n",
            primary_err,
            &["config file", "syntax.toml"],
        ),
        (
            "unknown.toml",
            b"servce = \"198.18.0.10:7000\"\n",
            primary_err,
            &["unknown field `servce`"],
        ),
        // a primary-only key in the backup's file
        (
            "wrong-role.toml",
            b"queue = 3\n",
            backup_err,
            &["unknown field `queue`"],
        ),
        (
            "type.toml",
            b"heartbeat_misses = \"three\"\n",
            primary_err,
            &["heartbeat_misses", "invalid type"],
        ),
        (
            "services-type.toml",
            b"service = 7000\n",
            primary_err,
            &["service", "ADDR:PORT"],
        ),
    ];
    for (name, contents, role, expected) in cases {
        let f = dir.file(name, contents);
        assert_says(&role(&["--config", &f]), expected);
    }

    let f = dir.file(
        "bad-value.toml",
        b"service = \"198.18.0.10:7000\"\nbackup = \"x\"\n",
    );
    let e = primary_err(&["--config", &f, "--key", KEY]);
    assert!(
        e.contains("key `backup` (in ") && e.contains("bad-value.toml"),
        "{e}"
    );
    assert!(
        e.contains("expected ADDR:PORT like 198.18.0.3:7700, got \"x\""),
        "{e}"
    );
    // the flag fixes it
    primary_options(&args(&[
        "--config",
        &f,
        "--key",
        KEY,
        "--backup",
        "198.18.0.3:7700",
    ]))
    .expect("flag overrides the bad file value");
}

#[test]
fn key_and_key_file_errors() {
    let dir = TempDir::new("config");
    let base = [
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "198.18.0.3:7700",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        primary_options(&args(&a))
    };
    let key_file = dir.file("k", KEY.as_bytes());
    let e = run(&["--key", KEY, "--key-file", &key_file]).unwrap_err();
    assert!(matches!(e, ConfigError::KeyTwice { .. }), "{e}");
    assert!(e.to_string().contains("keep only one"));

    let f = dir.file(
        "both.toml",
        format!("key = \"{KEY}\"\nkey_file = \"k\"\n").as_bytes(),
    );
    let e = run(&["--config", &f]).unwrap_err();
    assert!(matches!(e, ConfigError::KeyTwice { .. }), "{e}");

    // a key flag replaces the file's key_file (and the other way round)
    let f = dir.file("kf.toml", b"key_file = \"absent\"\n");
    assert_eq!(
        run(&["--config", &f, "--key", OTHER_KEY]).unwrap().key,
        parse_key_hex(OTHER_KEY).unwrap()
    );
    let f = dir.file("kk.toml", format!("key = \"{OTHER_KEY}\"\n").as_bytes());
    assert_eq!(
        run(&["--config", &f, "--key-file", &key_file]).unwrap().key,
        key_bytes()
    );

    let e = run(&["--key-file", &dir.path("absent").to_string_lossy()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("key `key_file` (flag --key-file): cannot read"),
        "{e}"
    );
    let short = dir.file("short", b"0011");
    let e = run(&["--key-file", &short]).unwrap_err().to_string();
    assert!(
        e.contains("key `key_file`")
            && e.contains("holds 4 bytes")
            && e.contains("exactly 32 raw bytes"),
        "{e}"
    );
}

#[test]
fn key_hex_round_trips() {
    assert_eq!(parse_key_hex(KEY), Some(key_bytes()));
    assert_eq!(
        parse_key_hex(&format!("  {}\n", KEY.to_uppercase())),
        Some(key_bytes())
    );
    assert_eq!(key_to_hex(&key_bytes()), KEY);
    assert_eq!(parse_key_hex(&KEY[1..]), None);
    assert_eq!(parse_key_hex(&format!("{}g", &KEY[1..])), None);
}

/// Runs the real `cttmd` binary; returns (exit code, stdout, stderr).
fn cttmd(arguments: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cttmd"))
        .args(arguments)
        .output()
        .expect("run cttmd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_exits_2_with_a_usage_error_for_bad_arguments() {
    let (code, _, err) = cttmd(&[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("a command is required") && err.contains("usage:"),
        "{err}"
    );
    let (code, _, err) = cttmd(&["frobnicate"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown command \"frobnicate\""), "{err}");
    let (code, _, err) = cttmd(&[
        "primary",
        "--service",
        "198.18.0.10:7000",
        "--backup",
        "x",
        "--key",
        KEY,
    ]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(
            "key `backup` (flag --backup): expected ADDR:PORT like 198.18.0.3:7700, got \"x\""
        ),
        "{err}"
    );
    let (code, _, err) = cttmd(&["backup", "--config", "/nonexistent/backup.toml"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cannot read config file /nonexistent/backup.toml"),
        "{err}"
    );
    let (code, _, err) = cttmd(&["demo", "--connections", "0"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--connections") && err.contains("usage: cttmd demo"),
        "{err}"
    );
}

#[test]
fn the_binary_prints_help_for_each_command() {
    let (code, out, _) = cttmd(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("cttmd primary") && out.contains("cttmd demo"),
        "{out}"
    );
    let (code, out, _) = cttmd(&["primary", "--help"]);
    assert_eq!(code, Some(0));
    assert!(
        [
            "--retention-limit",
            "--mode sync|async",
            "--degrade-after-ms",
            "--probe-count",
            "--probe-wait-ms",
            "--status-socket",
            "--metrics-listen",
            "--capture-file"
        ]
        .iter()
        .all(|flag| out.contains(flag)),
        "{out}"
    );
    let (code, out, _) = cttmd(&["backup", "-h"]);
    assert_eq!(code, Some(0));
    assert!(
        [
            "--standby",
            "--announce-count",
            "--probe-count",
            "--fence-command",
            "--fence-timeout-ms",
            "--status-socket",
            "--metrics-listen"
        ]
        .iter()
        .all(|flag| out.contains(flag)),
        "{out}"
    );
    let (code, out, _) = cttmd(&["demo", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--seconds"), "{out}");
    let (code, out, _) = cttmd(&["status", "--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--socket PATH") && out.contains("--json"),
        "{out}"
    );
    let (code, out, _) = cttmd(&["rejoin", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("non-serving"), "{out}");
}

const PRIMARY_BASE: [&str; 6] = [
    "--service",
    "198.18.0.10:7000",
    "--backup",
    "198.18.0.3:7700",
    "--key",
    KEY,
];

fn primary_with(extra: &[&str]) -> Result<cttmd::options::PrimaryOptions, ConfigError> {
    let mut a = PRIMARY_BASE.to_vec();
    a.extend_from_slice(extra);
    primary_options(&args(&a))
}

fn backup_with(extra: &[&str]) -> Result<cttmd::options::BackupOptions, ConfigError> {
    let mut a = vec!["--service", "198.18.0.10:7000", "--key", KEY];
    a.extend_from_slice(extra);
    backup_options(&args(&a))
}

#[test]
fn primary_fault_and_observe_keys_from_file_and_flags() {
    let dir = TempDir::new("config");
    let file = dir.file(
        "primary.toml",
        br#"
degrade_after_ms = 250
probe_count = 0
probe_wait_ms = 5
status_socket = "run/primary.sock"
metrics_listen = "127.0.0.1:9464"
capture_file = "capture.pcapng"
"#,
    );
    let o = primary_with(&["--config", &file]).expect("file");
    assert_eq!(o.degrade_after, Duration::from_millis(250));
    assert_eq!(
        o.probe,
        ProbeOptions {
            count: 0,
            wait: Duration::from_millis(5)
        }
    );
    assert_eq!(
        o.observe.status_socket,
        Some(dir.path("run/primary.sock")),
        "relative to the config file"
    );
    assert_eq!(o.observe.metrics, Some(addr("127.0.0.1:9464")));
    assert_eq!(
        o.capture_file,
        Some(dir.path("capture.pcapng")),
        "relative to the config file"
    );

    let capture = dir.path("flag.pcapng").to_string_lossy().into_owned();
    let o = primary_with(&[
        "--config",
        &file,
        "--degrade-after-ms",
        "3600000",
        "--probe-count",
        "20",
        "--probe-wait-ms=10000",
        "--status-socket",
        "",
        "--metrics-listen",
        "[::1]:9100",
        "--capture-file",
        &capture,
    ])
    .expect("flags over file");
    assert_eq!(o.degrade_after, Duration::from_secs(3600));
    assert_eq!(o.probe.count, 20);
    assert_eq!(o.probe.wait, Duration::from_secs(10));
    assert_eq!(o.observe.status_socket, None, "\"\" disables the socket");
    assert_eq!(o.observe.metrics, Some(addr("[::1]:9100")));
    assert_eq!(o.capture_file, Some(PathBuf::from(&capture)));

    // a flag's relative path stays relative (to the working directory)
    let o = primary_with(&["--status-socket", "agent.sock"]).expect("relative flag");
    assert_eq!(o.observe.status_socket, Some(PathBuf::from("agent.sock")));
    // the file's "" disables too
    let off = dir.file("off.toml", b"status_socket = \"\"\n");
    let o = primary_with(&["--config", &off]).expect("off");
    assert_eq!(o.observe.status_socket, None);
}

#[test]
fn backup_fault_and_observe_keys_from_file_and_flags() {
    let dir = TempDir::new("config");
    let file = dir.file(
        "backup.toml",
        br#"
probe_count = 5
probe_wait_ms = 20
fence_command = "test -e /run/fenced && echo \"$CTTM_SERVICE_ADDRESSES\""
fence_timeout_ms = 1500
status_socket = "/tmp/b.sock"
metrics_listen = "127.0.0.1:9465"
"#,
    );
    let o = backup_with(&["--config", &file]).expect("file");
    assert_eq!(
        o.probe,
        ProbeOptions {
            count: 5,
            wait: Duration::from_millis(20)
        }
    );
    assert_eq!(
        o.fence,
        Some(FenceOptions {
            command: "test -e /run/fenced && echo \"$CTTM_SERVICE_ADDRESSES\"".into(),
            timeout: Duration::from_millis(1500),
        })
    );
    assert_eq!(o.observe.status_socket, Some(PathBuf::from("/tmp/b.sock")));
    assert_eq!(o.observe.metrics, Some(addr("127.0.0.1:9465")));

    let o = backup_with(&[
        "--config",
        &file,
        "--probe-count",
        "0",
        "--fence-command=ipmitool power off",
        "--fence-timeout-ms",
        "600000",
        "--status-socket",
        "/run/other.sock",
        "--metrics-listen",
        "127.0.0.2:9000",
    ])
    .expect("flags");
    assert_eq!(o.probe.count, 0);
    assert_eq!(
        o.fence,
        Some(FenceOptions {
            command: "ipmitool power off".into(),
            timeout: Duration::from_secs(600),
        })
    );
    assert_eq!(
        o.observe.status_socket,
        Some(PathBuf::from("/run/other.sock"))
    );
    assert_eq!(o.observe.metrics, Some(addr("127.0.0.2:9000")));

    // the default timeout goes with a command alone
    let o = backup_with(&["--fence-command", "true"]).expect("command alone");
    assert_eq!(o.fence.map(|f| f.timeout), Some(Duration::from_secs(10)));
}

#[test]
fn fault_and_observe_key_errors_name_the_key_and_the_fix() {
    let dir = TempDir::new("config");
    let long_socket = format!("/run/{}.sock", "s".repeat(110));
    let absent_dir = dir
        .path("absent/capture.pcapng")
        .to_string_lossy()
        .into_owned();
    let a_dir = dir.root().to_string_lossy().into_owned();
    let primary_cases: [(&[&str], &[&str]); 17] = [
        (
            &["--degrade-after-ms", "0"],
            &["key `degrade_after_ms`", "from 1 to 3600000"],
        ),
        (
            &["--degrade-after-ms", "3600001"],
            &["key `degrade_after_ms`"],
        ),
        (
            &["--probe-count", "21"],
            &["key `probe_count`", "from 0 to 20"],
        ),
        (
            &["--probe-wait-ms", "0"],
            &["key `probe_wait_ms`", "from 1 to 10000"],
        ),
        (&["--probe-wait-ms", "10001"], &["key `probe_wait_ms`"]),
        (
            &["--status-socket", "/run/cttmd/"],
            &[
                "key `status_socket`",
                "names a directory",
                "\"\" for no status socket",
            ],
        ),
        (
            &["--status-socket", &long_socket],
            &["key `status_socket`", "at most 107"],
        ),
        (
            &["--metrics-listen", "0.0.0.0:9464"],
            &["key `metrics_listen`", "every interface", "127.0.0.1:9464"],
        ),
        (
            &["--metrics-listen", "[::]:9464"],
            &["key `metrics_listen`", "every interface"],
        ),
        (
            &["--metrics-listen", "127.0.0.1:0"],
            &["key `metrics_listen`", "port 0"],
        ),
        (
            &["--metrics-listen", "localhost"],
            &["key `metrics_listen`", "expected ADDR:PORT"],
        ),
        (
            &["--metrics-listen", "224.0.0.1:9464"],
            &["key `metrics_listen`", "not a host address"],
        ),
        (
            // an address no interface of the test's (root) namespace has
            &["--metrics-listen", "198.18.255.254:9464"],
            &["key `metrics_listen`", "not an address of this host"],
        ),
        (
            &["--capture-file", ""],
            &["key `capture_file`", "give a file path"],
        ),
        (
            &["--capture-file", &absent_dir],
            &["key `capture_file`", "does not exist"],
        ),
        (
            &["--capture-file", &a_dir],
            &["key `capture_file`", "is a directory"],
        ),
        (
            &["--fence-command", "true"],
            &["unknown argument \"--fence-command\" for `cttmd primary`"],
        ),
    ];
    for (extra, expected) in primary_cases {
        let e = primary_with(extra).expect_err("must fail").to_string();
        assert_says(&e, expected);
    }

    let backup_cases: [(&[&str], &[&str]); 8] = [
        (
            &["--fence-command", " "],
            &["key `fence_command`", "leave the key out for no fencing"],
        ),
        (
            &["--fence-command", "true", "--fence-timeout-ms", "0"],
            &["key `fence_timeout_ms`", "from 1 to 600000"],
        ),
        (
            &["--fence-command", "true", "--fence-timeout-ms", "600001"],
            &["key `fence_timeout_ms`"],
        ),
        (
            &["--fence-timeout-ms", "100"],
            &["key `fence_timeout_ms`", "without `fence_command`"],
        ),
        (&["--probe-count", "x"], &["key `probe_count`"]),
        (
            &["--metrics-listen", "0.0.0.0:1"],
            &["key `metrics_listen`", "every interface"],
        ),
        (
            &["--status-socket", "/x/"],
            &["key `status_socket`", "names a directory"],
        ),
        (
            &["--capture-file", "x"],
            &["unknown argument \"--capture-file\" for `cttmd backup`"],
        ),
    ];
    for (extra, expected) in backup_cases {
        let e = backup_with(extra).expect_err("must fail").to_string();
        assert_says(&e, expected);
    }

    // file errors name the file; a primary-only key is unknown to the backup
    let f = dir.file("bad-metrics.toml", b"metrics_listen = \"0.0.0.0:9464\"\n");
    let e = primary_with(&["--config", &f]).unwrap_err().to_string();
    assert_says(&e, &["key `metrics_listen` (in ", "bad-metrics.toml"]);
    let f = dir.file("wrong-role.toml", b"degrade_after_ms = 10\n");
    let e = backup_with(&["--config", &f]).unwrap_err().to_string();
    assert_says(&e, &["unknown field `degrade_after_ms`"]);
    let f = dir.file("nul.toml", b"status_socket = \"/run/a\\u0000b\"\n");
    let e = primary_with(&["--config", &f]).unwrap_err().to_string();
    assert_says(&e, &["key `status_socket`", "NUL"]);
    let f = dir.file("nul-fence.toml", b"fence_command = \"true\\u0000\"\n");
    let e = backup_with(&["--config", &f]).unwrap_err().to_string();
    assert_says(&e, &["key `fence_command`", "NUL"]);
    let f = dir.file("fence-type.toml", b"fence_command = [\"a\"]\n");
    let e = backup_with(&["--config", &f]).unwrap_err().to_string();
    assert_says(&e, &["fence_command", "invalid type"]);
}
