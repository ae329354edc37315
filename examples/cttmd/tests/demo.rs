//! `cttmd demo` end to end: the real agents, kvd, the lab and a crash of the primary. The
//! client must keep every connection and every byte must check.

use cttmd::demo::{DemoBinaries, DemoOptions, WorkloadReport, run_demo};
use cttmd::options::CommitMode;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// One demo at a time: each runs three hosts, the agents and 12 client connections, enough
/// to keep this 2-core machine busy; two at once would measure each other.
static ONE_DEMO_AT_A_TIME: Mutex<()> = Mutex::new(());

fn demo(mode: CommitMode) -> WorkloadReport {
    let _one_at_a_time = ONE_DEMO_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let binaries = DemoBinaries::with_cttmd(PathBuf::from(env!("CARGO_BIN_EXE_cttmd")));
    let options = DemoOptions {
        connections: 12,
        duration: Duration::from_secs(8),
        mode,
    };
    let report = run_demo(&options, &binaries, &AtomicBool::new(false)).expect("demo runs");
    eprintln!("{report}");
    report
}

fn run(mode: CommitMode) {
    let report = demo(mode);
    assert_eq!(report.lost, Vec::new(), "{report}");
    assert_eq!(report.kept, 12);
    assert!(report.requests > 0 && report.bytes_verified > 0, "{report}");
}

#[test]
fn sync_mode_demo_keeps_every_connection_across_the_crash() {
    if !cttm_tests::lab::kernel_tests_enabled("cttmd demo, sync mode") {
        return;
    }
    run(CommitMode::Sync);
}

/// Async mode holds nothing, so a crash loses the bytes of its loss window: the server bytes
/// a client acknowledged that had not reached the backup yet (the takeover then resets the
/// connection at once, with that reason). Measured with this test (the primary agent logs
/// its "async loss window" once a second), 12 connections, crash at 4 s:
/// - debug build (`cargo test -p cttmd --test demo -- --ignored`): 0/12 kept in 3 of 3 runs.
///   The replication link cannot keep up (unoptimised ChaCha20-Poly1305 of the Noise link
///   dominates a profile of the primary's replication thread): the bytes at risk grow to
///   9-15 MB by the crash, every connection is behind.
/// - release build (`cargo test --release -p cttmd --test demo -- --ignored async_mode`):
///   12/12 kept in 7 of 9 runs; the other two lost 2 and 11 connections. Bytes at risk
///   peak at 0.3-2.6 MB while the streams burst (the replication queue drains slower than
///   the wire, and the request/response connections wait behind the burst), 2-92 KB
///   otherwise; 2-15 % of the connection samples have bytes at risk.
#[test]
#[ignore = "async mode may lose the bytes of its loss window: debug build 0/12 kept in 3 runs (the replication link falls behind, 9-15 MB at risk); --release 12/12 kept in 7 of 9 runs, 2 and 11 lost in the others (crash during a stream burst: 0.3-2.6 MB at risk); see the comment; run with --ignored"]
fn async_mode_demo_keeps_every_connection_across_the_crash() {
    if !cttm_tests::lab::kernel_tests_enabled("cttmd demo, async mode") {
        return;
    }
    run(CommitMode::Async);
}

/// What async mode does promise across a crash: every connection is either kept with every
/// byte checked, or (its loss window lost) reset at once by the takeover; none hangs until
/// the client's reply timeout, none sees a wrong byte.
#[test]
fn async_mode_demo_resets_what_it_cannot_keep_and_corrupts_nothing() {
    if !cttm_tests::lab::kernel_tests_enabled("cttmd demo, async mode crash outcome") {
        return;
    }
    let report = demo(CommitMode::Async);
    assert_eq!(report.kept + report.lost.len(), 12, "{report}");
    for (connection, reason) in &report.lost {
        assert!(
            reason.contains("Connection reset by peer") || reason.contains("Broken pipe"),
            "connection {connection} was lost by something else than the takeover's reset: {reason}\n{report}"
        );
    }
    assert!(report.requests > 0 && report.bytes_verified > 0, "{report}");
}
