//! `cttmd`: the CTTM agents (`primary`, `backup`), their operator commands (`status`,
//! `rejoin`) and the crash failover `demo`.
//!
//! Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when the agent or the demo fails
//! (the demo: also when a connection was lost; an agent: also when its status socket or
//! metrics endpoint cannot be opened; `status`: no agent answered; `rejoin`: not rejoined),
//! 2 for a bad command line or configuration, 130 when the demo was interrupted (after
//! cleaning up). Logs go to stderr (`RUST_LOG` filters them, `info` by default).

use cttmd::config::{
    BACKUP_FLAGS, ConfigError, DEFAULT_BACKUP_STATUS_SOCKET, DEFAULT_PRIMARY_STATUS_SOCKET,
    PRIMARY_FLAGS, backup_options, primary_options,
};
#[cfg(feature = "demo")]
use cttmd::demo::{DEMO_USAGE, DemoOptions, locate_binaries, parse_demo_args, run_demo};
use cttmd::observe::{
    AgentRole, AgentView, CLIENT_TIMEOUT, CommitState, MetricsServer, Observer, StatusClientError,
    StatusCommand, StatusServer, query_agent,
};
use cttmd::options::{CommitMode, ObserveOptions};
use cttmd::primary::PrimaryMonitor;
use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const USAGE: &str = "\
usage:
  cttmd primary [--config FILE] [flags]   the primary agent, on the host of the service daemon
  cttmd backup  [--config FILE] [flags]   the backup agent, on the host of the standby daemon
  cttmd status [--socket PATH] [--json]   a running agent's role, mode, lag and connections
  cttmd rejoin [--socket PATH]            tell a non-serving primary to serve again (it probes
                                          the service address first)
  cttmd demo [--connections N] [--seconds S] [--mode sync|async]
                                          a crash failover in network namespaces (root)
  cttmd --help | cttmd <command> --help

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
    Status(Vec<String>),
    Rejoin(Vec<String>),
}

const STATUS_USAGE: &str = "\
usage: cttmd status [--socket PATH] [--json]

Asks a running agent (over its status socket) for its role, output-commit mode, replication
link and lag, held packets, counters and alerts, and every connection with its protection
state (protected, unprotected, diverged, lost, restored) and lag.

  --socket PATH   the agent's status_socket (default: /run/cttmd/primary.sock, else
                  /run/cttmd/backup.sock)
  --json          the agent's view as one line of JSON";

const REJOIN_USAGE: &str = "\
usage: cttmd rejoin [--socket PATH]

Tells a non-serving primary (one that found the service address served by another host) to
serve again. It probes the service address first and refuses while another host answers.
Exit status 0 when it rejoined, 1 otherwise (the answer says why).

  --socket PATH   the primary's status_socket (default /run/cttmd/primary.sock)";

/// The arguments of `cttmd status` / `cttmd rejoin`.
struct ClientArgs {
    socket: Option<PathBuf>,
    json: bool,
}

fn parse_client_args(command: &str, arguments: &[String]) -> Result<ClientArgs, String> {
    let mut parsed = ClientArgs {
        socket: None,
        json: false,
    };
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        let socket = match argument.split_once('=') {
            Some(("--socket", value)) => Some(value.to_string()),
            _ if argument == "--socket" => Some(
                rest.next()
                    .ok_or_else(|| {
                        format!("flag --socket needs a value (see `cttmd {command} --help`)")
                    })?
                    .clone(),
            ),
            _ => None,
        };
        if let Some(path) = socket {
            if path.is_empty() {
                return Err("flag --socket: give the agent's status socket path".into());
            }
            if parsed.socket.replace(PathBuf::from(path)).is_some() {
                return Err("flag --socket given twice: give it once".into());
            }
        } else if argument == "--json" && command == "status" {
            parsed.json = true;
        } else {
            return Err(format!(
                "unknown argument {argument:?} for `cttmd {command}` (see `cttmd {command} --help`)"
            ));
        }
    }
    Ok(parsed)
}

fn parse(arguments: &[String]) -> Result<Mode, String> {
    let wants_help = |rest: &[String]| rest.iter().any(|a| a == "--help" || a == "-h");
    let Some((command, rest)) = arguments.split_first() else {
        return Err("a command is required: primary, backup, status, rejoin or demo".into());
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
        "status" if wants_help(&rest) => Ok(Mode::Help(STATUS_USAGE.into())),
        "rejoin" if wants_help(&rest) => Ok(Mode::Help(REJOIN_USAGE.into())),
        "status" => Ok(Mode::Status(rest)),
        "rejoin" => Ok(Mode::Rejoin(rest)),
        "primary" => Ok(Mode::Primary(rest)),
        "backup" => Ok(Mode::Backup(rest)),
        "demo" => Ok(Mode::Demo(rest)),
        // not in the usage: the reference daemon linked in, for the demo when no `kvd`
        // binary is built
        "kvd" => Ok(Mode::Kvd(rest)),
        other => Err(format!(
            "unknown command {other:?}: expected primary, backup, status, rejoin or demo"
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
            return kvd(&rest);
        }
        Ok(Mode::Status(rest)) => return status(&rest),
        Ok(Mode::Rejoin(rest)) => return rejoin(&rest),
        Ok(mode) => mode,
        Err(e) => return usage_error(&e),
    };
    init_logging();
    match mode {
        // answered above, before logging starts
        Mode::Help(_) | Mode::Status(_) | Mode::Rejoin(_) => ExitCode::SUCCESS,
        Mode::Primary(rest) => match primary_options(&rest) {
            Err(e) => config_error(&e),
            Ok(options) => {
                let mode = match options.mode {
                    CommitMode::Sync => CommitState::Sync,
                    CommitMode::Async => CommitState::Async,
                };
                let view = AgentView::new(AgentRole::Primary, mode);
                let observe = options.observe.clone();
                run_agent("primary", &observe, view, |stop, observer| {
                    let monitor = PrimaryMonitor::with_observer(observer);
                    cttmd::primary::run_primary_monitored(options, stop, monitor)
                        .map(|exit| format!("{exit:?}"))
                })
            }
        },
        Mode::Backup(rest) => match backup_options(&rest) {
            Err(e) => config_error(&e),
            Ok(options) => {
                // the backup learns the primary's mode only from what it replicates
                let view = AgentView::new(AgentRole::Backup, CommitState::Async);
                let observe = options.observe.clone();
                run_agent("backup", &observe, view, |stop, observer| {
                    cttmd::backup::run_backup_observed(options, stop, observer)
                        .map(|exit| format!("{exit:?}"))
                })
            }
        },
        Mode::Demo(rest) => demo(&rest),
        Mode::Kvd(rest) => kvd(&rest),
    }
}

/// Runs one agent role until SIGINT/SIGTERM, with its status socket and metrics endpoint
/// serving the agent's view meanwhile, logging how it ended.
fn run_agent<E: std::fmt::Display>(
    role: &str,
    observe: &ObserveOptions,
    initial: AgentView,
    run: impl FnOnce(Arc<AtomicBool>, Observer) -> Result<String, E>,
) -> ExitCode {
    // signals are blocked first, so every thread started below inherits the mask
    let stop = match stop_on_signals(true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cttmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let observer = Observer::new(initial);
    // dropped after the agent stopped: the socket file goes with it
    let _status_server = match &observe.status_socket {
        None => None,
        Some(path) => match StatusServer::start(path, observer.clone()) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("cttmd {role}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let _metrics_server = match observe.metrics {
        None => None,
        Some(address) => match MetricsServer::start(address, observer.clone()) {
            Ok(server) => Some(server),
            Err(e) => {
                eprintln!("cttmd {role}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match run(stop, observer) {
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

/// `cttmd status`: prints a running agent's status; exit 1 when no agent answers.
fn status(arguments: &[String]) -> ExitCode {
    let parsed = match parse_client_args("status", arguments) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cttmd: {e}\n\n{STATUS_USAGE}");
            return ExitCode::from(2);
        }
    };
    let command = if parsed.json {
        StatusCommand::StatusJson
    } else {
        StatusCommand::Status
    };
    let sockets = match parsed.socket {
        Some(path) => vec![path],
        None => vec![
            PathBuf::from(DEFAULT_PRIMARY_STATUS_SOCKET),
            PathBuf::from(DEFAULT_BACKUP_STATUS_SOCKET),
        ],
    };
    let mut failures = Vec::new();
    for socket in &sockets {
        match query_agent(socket, command, CLIENT_TIMEOUT) {
            Ok(answer) => {
                print!("{answer}");
                return ExitCode::SUCCESS;
            }
            // no agent there: try the next default place
            Err(
                e @ (StatusClientError::NoSocket { .. } | StatusClientError::NotRunning { .. }),
            ) if sockets.len() > 1 => {
                failures.push(e.to_string());
            }
            Err(e) => {
                eprintln!("cttmd status: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!(
        "cttmd status: no agent answered:\n  {}\ngive the agent's status socket with --socket PATH",
        failures.join("\n  ")
    );
    ExitCode::FAILURE
}

/// `cttmd rejoin`: asks a non-serving primary to serve again; exit 0 only if it did.
fn rejoin(arguments: &[String]) -> ExitCode {
    let parsed = match parse_client_args("rejoin", arguments) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cttmd: {e}\n\n{REJOIN_USAGE}");
            return ExitCode::from(2);
        }
    };
    let socket = parsed
        .socket
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PRIMARY_STATUS_SOCKET));
    match query_agent(&socket, StatusCommand::Rejoin, CLIENT_TIMEOUT) {
        Ok(answer) if answer.starts_with("rejoined:") => {
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprint!("cttmd rejoin: {answer}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cttmd rejoin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cttmd kvd`: the reference daemon the demo runs on both servers.
#[cfg(feature = "demo")]
fn kvd(arguments: &[String]) -> ExitCode {
    cttm_kvd::cli::main(arguments)
}

/// `cttmd kvd` in a build without the demo.
#[cfg(not(feature = "demo"))]
fn kvd(_arguments: &[String]) -> ExitCode {
    without_demo("kvd")
}

/// `cttmd demo` in a build without the demo.
#[cfg(not(feature = "demo"))]
fn demo(_arguments: &[String]) -> ExitCode {
    without_demo("demo")
}

#[cfg(not(feature = "demo"))]
fn without_demo(command: &str) -> ExitCode {
    eprintln!(
        "cttmd {command}: this cttmd was built without the `demo` feature; build it with `--features demo`"
    );
    ExitCode::from(2)
}

#[cfg(feature = "demo")]
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
