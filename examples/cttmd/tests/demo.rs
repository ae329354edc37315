//! `cttmd demo` end to end: the real agents, kvd, the lab and a crash of the primary. The
//! client must keep every connection and every byte must check.

use cttmd::demo::{DemoBinaries, DemoOptions, run_demo};
use cttmd::options::CommitMode;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

fn run(mode: CommitMode) {
    let binaries = DemoBinaries::with_cttmd(PathBuf::from(env!("CARGO_BIN_EXE_cttmd")));
    let options = DemoOptions {
        connections: 12,
        duration: Duration::from_secs(8),
        mode,
    };
    let report = run_demo(&options, &binaries, &AtomicBool::new(false)).expect("demo runs");
    eprintln!("{report}");
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

#[test]
#[ignore = "fails while the async replication lags: the backup holds far fewer server bytes than the clients acknowledged, so the takeover resets those connections at once (with the reason) instead of keeping them; run with --ignored"]
fn async_mode_demo_keeps_every_connection_across_the_crash() {
    if !cttm_tests::lab::kernel_tests_enabled("cttmd demo, async mode") {
        return;
    }
    run(CommitMode::Async);
}
