//! `cttmd`: the CTTM agents (`primary`, `backup`) and the crash failover `demo`.
//!
//! Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when the agent or the demo fails
//! (the demo: also when a connection was lost), 2 for a bad command line or configuration,
//! 130 when the demo was interrupted (after cleaning up). Logs go to stderr (`RUST_LOG` filters them,
//! `info` by default).

use cttmd::config::{BACKUP_FLAGS, ConfigError, PRIMARY_FLAGS, backup_options, primary_options};
use cttmd::demo::{DEMO_USAGE, DemoOptions, locate_binaries, parse_demo_args, run_demo};
use nix::sys::signal::{SigSet, Signal};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const USAGE: &str = "\
usage:
  cttmd primary [--config FILE] [flags]   the primary agent, on the host of the service daemon
  cttmd backup  [--config FILE] [flags]   the backup agent, on the host of the standby daemon
  cttmd demo [--connections N] [--seconds S] [--mode sync|async]
                                          a crash failover in network namespaces (root)
  cttmd --help | cttmd primary --help | cttmd backup --help | cttmd demo --help

Client-Transparent TCP Migration: the primary replicates every connection of the service to
the backup; when the primary host dies, the backup takes over the service address and carries
on every connection at the exact byte. The agents need root (NFQUEUE, AF_PACKET, TCP_REPAIR).
SIGINT or SIGTERM stops an agent cleanly. RUST_LOG sets the log filter (default info).";

/// What the command line asks for.
enum Mode {
    Help(String),
    Primary(Vec<String>),
    Backup(Vec<String>),
    Demo(Vec<String>),
    Kvd(Vec<String>),
}

fn parse(arguments: &[String]) -> Result<Mode, String> {
    let wants_help = |rest: &[String]| rest.iter().any(|a| a == "--help" || a == "-h");
    let Some((command, rest)) = arguments.split_first() else {
        return Err("a command is required: primary, backup or demo".into());
    };
    let rest = rest.to_vec();
    match command.as_str() {
        "--help" | "-h" | "help" => Ok(Mode::Help(USAGE.into())),
        "primary" if wants_help(&rest) => Ok(Mode::Help(format!(
            "usage: cttmd primary [--config FILE] [flags]\n\n{PRIMARY_FLAGS}\n\nEvery flag is also a key of the TOML file (--heartbeat-interval-ms: heartbeat_interval_ms); flags override the file."
        ))),
        "backup" if wants_help(&rest) => Ok(Mode::Help(format!(
            "usage: cttmd backup [--config FILE] [flags]\n\n{BACKUP_FLAGS}\n\nEvery flag is also a key of the TOML file (--prefix-len: prefix_len); flags override the file."
        ))),
        "demo" if wants_help(&rest) => Ok(Mode::Help(DEMO_USAGE.into())),
        "primary" => Ok(Mode::Primary(rest)),
        "backup" => Ok(Mode::Backup(rest)),
        "demo" => Ok(Mode::Demo(rest)),
        // not in the usage: the reference daemon linked in, for the demo when no `kvd`
        // binary is built
        "kvd" => Ok(Mode::Kvd(rest)),
        other => Err(format!(
            "unknown command {other:?}: expected primary, backup or demo"
        )),
    }
}

fn usage_error(message: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("cttmd: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("cttmd: {e}");
    ExitCode::from(2)
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after it) and
/// starts a thread that takes them synchronously (sigwait) and sets the stop flag. No signal
/// handler runs, so nothing unsafe is needed. With `force_exit_on_second`, a second signal
/// ends the process at once (status 130).
fn stop_on_signals(force_exit_on_second: bool) -> Result<Arc<AtomicBool>, String> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block SIGINT/SIGTERM: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let Ok(signal) = signals.wait() else {
                    continue;
                };
                if flag.swap(true, Ordering::SeqCst) {
                    if force_exit_on_second {
                        tracing::warn!(?signal, "second signal: exiting at once");
                        std::process::exit(130);
                    }
                    tracing::warn!(?signal, "already stopping, cleaning up");
                } else {
                    tracing::info!(?signal, "stopping");
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(stop)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse(&arguments) {
        Ok(Mode::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Mode::Kvd(rest)) => {
            // a child of the demo inherits its blocked SIGINT/SIGTERM: take the defaults back
            let mut signals = SigSet::empty();
            signals.add(Signal::SIGINT);
            signals.add(Signal::SIGTERM);
            let _ = signals.thread_unblock();
            return cttm_kvd::cli::main(&rest);
        }
        Ok(mode) => mode,
        Err(e) => return usage_error(&e),
    };
    init_logging();
    match mode {
        Mode::Help(_) => ExitCode::SUCCESS,
        Mode::Primary(rest) => run_agent("primary", primary_options(&rest), |options, stop| {
            cttmd::primary::run_primary(options, stop).map(|exit| format!("{exit:?}"))
        }),
        Mode::Backup(rest) => run_agent("backup", backup_options(&rest), |options, stop| {
            cttmd::backup::run_backup(options, stop).map(|exit| format!("{exit:?}"))
        }),
        Mode::Demo(rest) => demo(&rest),
        Mode::Kvd(rest) => cttm_kvd::cli::main(&rest),
    }
}

/// Runs one agent role with its resolved options until SIGINT/SIGTERM, logging how it ended.
fn run_agent<O, E: std::fmt::Display>(
    role: &str,
    options: Result<O, ConfigError>,
    run: impl FnOnce(O, std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<String, E>,
) -> ExitCode {
    let options = match options {
        Ok(o) => o,
        Err(e) => return config_error(&e),
    };
    let stop = match stop_on_signals(true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cttmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(options, stop) {
        Ok(exit) => {
            tracing::info!(exit, "{role} agent stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{role} agent failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(arguments: &[String]) -> ExitCode {
    let options: DemoOptions = match parse_demo_args(arguments) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cttmd: {e}\n\n{DEMO_USAGE}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("cttmd demo: {}", cttmd::demo::DemoError::NotRoot);
        return ExitCode::FAILURE;
    }
    let binaries = match locate_binaries() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cttmd demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    // a second Ctrl-C must not skip the cleanup: it only says so
    let stop = match stop_on_signals(false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cttmd demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run_demo(&options, &binaries, &stop) {
        Ok(report) => {
            println!("\nwhat the client saw:\n{report}");
            if report.kept == report.connections {
                println!("every connection survived the crash of the primary, every byte checked");
                ExitCode::SUCCESS
            } else {
                println!("some connections were lost (reasons above)");
                ExitCode::FAILURE
            }
        }
        Err(e @ cttmd::demo::DemoError::Interrupted) => {
            eprintln!("cttmd demo: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("cttmd demo: {e}");
            ExitCode::FAILURE
        }
    }
}
