//! `cttmd demo`: a crash failover, end to end, on one machine.
//!
//! The demo builds a lab of network namespaces (a client host, a primary and a backup on one
//! bridge, addresses from 198.18.0.0/15):
//!
//! | host | address | runs |
//! |---|---|---|
//! | client | 198.18.0.1/24 | the [`Workload`]: request/response connections and long streams |
//! | primary | 198.18.0.2/24 + service address 198.18.0.10/24 | `kvd --listen 0.0.0.0:7000`, `cttmd primary` |
//! | backup | 198.18.0.3/24 | `kvd --listen 0.0.0.0:7000` (the standby), `cttmd backup` (replication on 198.18.0.3:7700) |
//!
//! The daemons and agents are child processes started with `ip netns exec` (each in its own
//! process group, so a Ctrl-C reaches the demo only). Binaries ([`locate_binaries`]): the
//! agents are `$CTTM_CTTMD` or the running `cttmd`; kvd is `$CTTM_KVD` if set, else the `kvd`
//! binary in cttmd's directory or its parent (where `cargo build -p cttm-kvd` puts it), else
//! `cttmd kvd`, the same server linked into cttmd. The agents run with heartbeats every
//! 100 ms and 10 misses (1 s) to tell a busy machine from a crash. Halfway through the run the
//! primary crashes:
//! its switch port goes down (nothing it sends can reach anyone, no FIN, no RST), then its
//! processes are killed. The client keeps talking to the service address all along and
//! checks every byte against what the deterministic daemon must answer (the
//! [`cttm_kvd::Session`] and [`cttm_kvd::StreamGenerator`] oracles). At the end the demo
//! prints what the client saw: connections kept, bytes verified, requests answered and the
//! longest stall.
//!
//! Each agent gets a status socket in a directory of this run (`/tmp/cttmd-demo-<pid>-<run>/`,
//! removed at the end); after the takeover the demo prints the backup's `cttmd status`.
//!
//! Cleanup happens on every exit path, Ctrl-C included (the caller's stop flag): child
//! processes are stopped (the agents with SIGTERM, then SIGKILL after 3 s; the daemons with
//! SIGKILL) and the namespaces deleted when the lab is dropped; namespaces of a killed run are
//! removed by the next one.

mod process;
mod workload;

pub use workload::{Progress, Workload, WorkloadOptions, WorkloadReport, connect_all};

use crate::config::key_to_hex;
use crate::options::CommitMode;
use cttm_tests::lab::{Lab, Netns};
use process::ChildProcess;
use std::fmt;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The service address and port clients use in the demo lab.
pub const SERVICE: &str = "198.18.0.10:7000";
const SERVICE_CIDR: &str = "198.18.0.10/24";
const CLIENT_CIDR: &str = "198.18.0.1/24";
const PRIMARY_CIDR: &str = "198.18.0.2/24";
const BACKUP_CIDR: &str = "198.18.0.3/24";
const REPLICATION: &str = "198.18.0.3:7700";
/// Heartbeats of the demo's agents: every 100 ms, the primary is dead after 10 missed ones
/// (1 s). Looser than the default (3) because the demo runs three hosts, the agents and the
/// client workload on one machine, often a debug build: a busy scheduler must not look like a
/// crash.
const HEARTBEAT_INTERVAL_MS: &str = "100";
const HEARTBEAT_MISSES: &str = "10";

/// The usage of `cttmd demo`.
pub const DEMO_USAGE: &str = "\
usage: cttmd demo [--connections N] [--seconds S] [--mode sync|async]

Builds a lab of network namespaces (client, primary, backup on one bridge, 198.18.0.0/24),
runs kvd and the agents on the servers, runs a client workload against 198.18.0.10:7000
and crashes the primary halfway through (switch port down, then its processes killed).
Prints what the client saw. Needs root. kvd is found via $CTTM_KVD or next to cttmd
(build it with `cargo build -p cttm-kvd`).

  --connections N   client connections, 2 to 1000 (default 32; one in eight is a long stream)
  --seconds S       length of the run, 4 to 600 (default 12); the crash is at S/2
  --mode sync|async the primary's output commit (default sync)";

/// What `cttmd demo` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoOptions {
    /// Client connections (request/response and streams).
    pub connections: usize,
    /// Length of the run.
    pub duration: Duration,
    /// The primary's output commit mode.
    pub mode: CommitMode,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            connections: 32,
            duration: Duration::from_secs(12),
            mode: CommitMode::Sync,
        }
    }
}

/// A bad `cttmd demo` argument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DemoArgsError {
    /// An argument the demo does not know.
    #[error("unknown argument {0:?} for `cttmd demo` (see `cttmd demo --help`)")]
    Unknown(String),
    /// A flag without its value.
    #[error("flag {0} needs a value (see `cttmd demo --help`)")]
    MissingValue(String),
    /// A value out of range or not a number.
    #[error("flag {flag}: expected {expected}, got {value:?}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is accepted.
        expected: &'static str,
        /// What was given.
        value: String,
    },
}

/// Parses the arguments after `cttmd demo`.
pub fn parse_demo_args(arguments: &[String]) -> Result<DemoOptions, DemoArgsError> {
    let mut options = DemoOptions::default();
    let mut rest = arguments.iter();
    while let Some(argument) = rest.next() {
        let (flag, inline) = match argument.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (argument.as_str(), None),
        };
        if !matches!(flag, "--connections" | "--seconds" | "--mode") {
            return Err(DemoArgsError::Unknown(argument.clone()));
        }
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .ok_or_else(|| DemoArgsError::MissingValue(flag.to_string()))?
                .clone(),
        };
        match flag {
            "--connections" => {
                options.connections = match value.parse::<usize>() {
                    Ok(n) if (2..=1000).contains(&n) => n,
                    _ => {
                        return Err(DemoArgsError::Invalid {
                            flag: "--connections",
                            expected: "a whole number from 2 to 1000",
                            value,
                        });
                    }
                }
            }
            "--seconds" => {
                options.duration = match value.parse::<u64>() {
                    Ok(n) if (4..=600).contains(&n) => Duration::from_secs(n),
                    _ => {
                        return Err(DemoArgsError::Invalid {
                            flag: "--seconds",
                            expected: "a whole number from 4 to 600",
                            value,
                        });
                    }
                }
            }
            _ => {
                options.mode = match value.as_str() {
                    "sync" => CommitMode::Sync,
                    "async" => CommitMode::Async,
                    _ => {
                        return Err(DemoArgsError::Invalid {
                            flag: "--mode",
                            expected: "sync or async",
                            value,
                        });
                    }
                }
            }
        }
    }
    Ok(options)
}

/// The demo could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not root.
    #[error(
        "the demo needs root: it creates network namespaces, veth pairs and a bridge (CAP_SYS_ADMIN, CAP_NET_ADMIN), and the agents use NFQUEUE, AF_PACKET and TCP_REPAIR (CAP_NET_ADMIN, CAP_NET_RAW); run it with sudo"
    )]
    NotRoot,
    /// A binary the demo runs was not found.
    #[error("cannot find the `{name}` binary (looked at {}); {hint}", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingBinary {
        /// The binary.
        name: &'static str,
        /// Where the demo looked.
        looked: Vec<PathBuf>,
        /// How to provide it.
        hint: &'static str,
    },
    /// Building the lab failed.
    #[error("building the lab failed: {0} (is iproute2 installed?)")]
    Lab(String),
    /// A child process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A child process ended while it should have been running.
    #[error("{what} exited early ({status}); its last log lines:\n{log}")]
    ChildExited {
        /// Which process.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        log: String,
    },
    /// Something did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// The client could not open its connections.
    #[error("the client could not connect to {SERVICE}: {0}")]
    Connect(io::Error),
    /// Stopped by a signal (Ctrl-C) before the end; everything was cleaned up.
    #[error("interrupted; the lab and its processes were cleaned up")]
    Interrupted,
}

impl From<cttm_tests::lab::LabError> for DemoError {
    fn from(e: cttm_tests::lab::LabError) -> Self {
        DemoError::Lab(e.0)
    }
}

/// A program to run, with the arguments that come before the caller's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    /// The executable.
    pub path: PathBuf,
    /// Arguments before the caller's (e.g. `kvd` for `cttmd kvd ...`).
    pub leading_args: Vec<String>,
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        for a in &self.leading_args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The programs the demo starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoBinaries {
    /// `cttmd` (the agents).
    pub cttmd: PathBuf,
    /// `kvd` (the service and standby daemon).
    pub kvd: Program,
}

impl DemoBinaries {
    /// `cttmd` at `cttmd`, and kvd as found by [`locate_binaries`] from there.
    pub fn with_cttmd(cttmd: PathBuf) -> DemoBinaries {
        let kvd = match find_binary("kvd", "CTTM_KVD", &cttmd) {
            Some(path) => Program {
                path,
                leading_args: Vec::new(),
            },
            // the same server code, linked into cttmd
            None => Program {
                path: cttmd.clone(),
                leading_args: vec!["kvd".to_string()],
            },
        };
        DemoBinaries { cttmd, kvd }
    }
}

/// Finds the programs: `cttmd` is `$CTTM_CTTMD` or the running executable; kvd is
/// `$CTTM_KVD`, else the `kvd` binary in `cttmd`'s directory or its parent (where
/// `cargo build -p cttm-kvd` puts it), else `cttmd kvd` (the same server, linked into cttmd).
pub fn locate_binaries() -> Result<DemoBinaries, DemoError> {
    let cttmd = match std::env::var_os("CTTM_CTTMD") {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .map_err(|e| DemoError::NotReady(format!("cannot find the running executable: {e}")))?,
    };
    if !cttmd.is_file() {
        return Err(DemoError::MissingBinary {
            name: "cttmd",
            looked: vec![cttmd],
            hint: "set CTTM_CTTMD=/path/to/cttmd",
        });
    }
    Ok(DemoBinaries::with_cttmd(cttmd))
}

fn candidates(name: &str, variable: &str, exe: &Path) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(variable) {
        return vec![PathBuf::from(p)];
    }
    let mut all = Vec::new();
    if let Some(dir) = exe.parent() {
        all.push(dir.join(name));
        if let Some(up) = dir.parent() {
            all.push(up.join(name));
        }
    }
    all
}

fn find_binary(name: &str, variable: &str, exe: &Path) -> Option<PathBuf> {
    candidates(name, variable, exe)
        .into_iter()
        .find(|p| p.is_file())
}

/// A directory of this demo run for the agents' status sockets, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> Result<SocketDir, DemoError> {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cttmd-demo-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            DemoError::NotReady(format!(
                "cannot create {} for the agents' status sockets: {e}",
                dir.display()
            ))
        })?;
        Ok(SocketDir(dir))
    }

    fn socket(&self, role: &str) -> PathBuf {
        self.0.join(format!("{role}.sock"))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Prints the backup agent's `cttmd status` (to stderr, like the demo's progress).
fn print_backup_status(sockets: &SocketDir) {
    let socket = sockets.socket("backup");
    match crate::observe::query_agent(
        &socket,
        crate::observe::StatusCommand::Status,
        crate::observe::CLIENT_TIMEOUT,
    ) {
        Ok(text) => eprintln!(
            "the backup after the takeover (`cttmd status --socket {}`):\n{text}",
            socket.display()
        ),
        Err(e) => eprintln!("(the backup's status is not available: {e})"),
    }
}

/// The demo's lab: the namespaces (deleted when dropped, after the processes).
struct DemoLab {
    // field order is drop order: processes first, then the namespaces
    processes: Vec<ChildProcess>,
    client: Netns,
    primary: Netns,
    backup: Netns,
    lab: Lab,
}

impl DemoLab {
    fn build() -> Result<DemoLab, DemoError> {
        let mut lab = Lab::new("demo")?;
        let client = lab.add_host("client", &[CLIENT_CIDR])?;
        let primary = lab.add_host("primary", &[PRIMARY_CIDR, SERVICE_CIDR])?;
        let backup = lab.add_host("backup", &[BACKUP_CIDR])?;
        Ok(DemoLab {
            processes: Vec::new(),
            client,
            primary,
            backup,
            lab,
        })
    }

    /// Starts `program args` in `host`. `graceful`: stopped with SIGTERM first (the agents
    /// take it with sigwait); otherwise with SIGKILL (the daemons inherit the demo's blocked
    /// SIGTERM and would ignore it).
    fn start(
        &mut self,
        what: &str,
        host: &Netns,
        program: &Program,
        args: &[String],
        graceful: bool,
    ) -> Result<usize, DemoError> {
        let mut command = host.command(&program.path.to_string_lossy());
        command.args(&program.leading_args).args(args);
        self.processes
            .push(ChildProcess::spawn(what, command, graceful)?);
        Ok(self.processes.len() - 1)
    }

    fn check_all(&mut self) -> Result<(), DemoError> {
        self.processes
            .iter_mut()
            .try_for_each(ChildProcess::check_running)
    }
}

fn random_key() -> Result<[u8; 32], DemoError> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| {
            DemoError::NotReady(format!(
                "cannot read /dev/urandom for the replication key: {e}"
            ))
        })?;
    Ok(key)
}

/// Sleeps up to `d` in small steps; false if `stop` was set meanwhile.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::Relaxed)
}

/// Polls `ready` until it is true, `deadline` passes (an error saying `what`), a child
/// exits, or `stop` is set.
fn wait_until(
    lab: &mut DemoLab,
    what: &str,
    deadline: Duration,
    stop: &AtomicBool,
    mut ready: impl FnMut(&DemoLab) -> bool,
) -> Result<(), DemoError> {
    let end = Instant::now() + deadline;
    loop {
        lab.check_all()?;
        if ready(lab) {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(DemoError::NotReady(format!(
                "{what} not ready within {} s (see the log lines above)",
                deadline.as_secs()
            )));
        }
        if !pause(Duration::from_millis(100), stop) {
            return Err(DemoError::Interrupted);
        }
    }
}

fn listening(host: &Netns, port: u16) -> bool {
    host.exec("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false)
}

fn replication_established(primary: &Netns) -> bool {
    primary
        .exec("ss", &["-Htn", "state", "established", "dport = :7700"])
        .map(|out| !out.trim().is_empty())
        .unwrap_or(false)
}

fn nfqueue_rules_present(primary: &Netns) -> bool {
    primary
        .exec("iptables", &["-S"])
        .map(|out| out.contains("NFQUEUE"))
        .unwrap_or(false)
}

/// Runs the demo, printing progress to stderr; returns what the client saw. Stops early,
/// cleaning up, when `stop` is set (Ctrl-C).
pub fn run_demo(
    options: &DemoOptions,
    binaries: &DemoBinaries,
    stop: &AtomicBool,
) -> Result<WorkloadReport, DemoError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(DemoError::NotRoot);
    }
    eprintln!(
        "building the lab: client 198.18.0.1, primary 198.18.0.2 (service {SERVICE}), backup 198.18.0.3"
    );
    // declared before the lab: removed after the agents have stopped
    let sockets = SocketDir::create()?;
    let mut lab = DemoLab::build()?;
    let key = key_to_hex(&random_key()?);
    let kvd_args = vec!["--listen".to_string(), "0.0.0.0:7000".to_string()];
    let (primary, backup, client) = (lab.primary.clone(), lab.backup.clone(), lab.client.clone());
    let primary_kvd = lab.start("primary kvd", &primary, &binaries.kvd, &kvd_args, false)?;
    lab.start("backup kvd", &backup, &binaries.kvd, &kvd_args, false)?;
    wait_until(&mut lab, "kvd", Duration::from_secs(10), stop, |l| {
        listening(&l.primary, 7000) && listening(&l.backup, 7000)
    })?;
    let common = |role: &str| -> Vec<String> {
        let socket = sockets.socket(role).to_string_lossy().into_owned();
        [
            role,
            "--status-socket",
            &socket,
            "--service",
            SERVICE,
            "--interface",
            "eth0",
            "--key",
            &key,
            "--heartbeat-interval-ms",
            HEARTBEAT_INTERVAL_MS,
            "--heartbeat-misses",
            HEARTBEAT_MISSES,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut backup_args = common("backup");
    backup_args.extend(
        [
            "--listen",
            REPLICATION,
            "--standby",
            "127.0.0.1:7000",
            "--prefix-len",
            "24",
        ]
        .map(String::from),
    );
    let mut primary_args = common("primary");
    let mode = match options.mode {
        CommitMode::Sync => "sync",
        CommitMode::Async => "async",
    };
    primary_args.extend(["--backup", REPLICATION, "--mode", mode].map(String::from));
    eprintln!("starting the agents (output commit: {mode})");
    let agent = Program {
        path: binaries.cttmd.clone(),
        leading_args: Vec::new(),
    };
    lab.start("backup agent", &backup, &agent, &backup_args, true)?;
    wait_until(
        &mut lab,
        "the backup agent's listener",
        Duration::from_secs(10),
        stop,
        |l| listening(&l.backup, 7700),
    )?;
    let primary_agent = lab.start("primary agent", &primary, &agent, &primary_args, true)?;
    wait_until(
        &mut lab,
        "the replication link",
        Duration::from_secs(10),
        stop,
        |l| {
            replication_established(&l.primary)
                && (options.mode == CommitMode::Async || nfqueue_rules_present(&l.primary))
        },
    )?;
    if !pause(Duration::from_millis(300), stop) {
        return Err(DemoError::Interrupted);
    }

    let service: SocketAddr = SERVICE.parse().expect("constant address");
    let count = options.connections;
    let streams = client
        .run(move || connect_all(service, count, Duration::from_secs(5)))?
        .map_err(DemoError::Connect)?;
    let workload_options = WorkloadOptions::default();
    let workload = Workload::start(streams, workload_options).map_err(DemoError::Connect)?;
    eprintln!(
        "client: {count} connections to {SERVICE} ({} long streams at {:.1} MB/s, the others request/response); the primary crashes at {} s",
        count.div_ceil(workload_options.stream_every),
        workload_options.stream_rate as f64 / 1e6,
        options.duration.as_secs() / 2
    );
    let started = Instant::now();
    let crash_at = options.duration / 2;
    let mut crashed = false;
    let mut next_report = Duration::from_secs(1);
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Err(DemoError::Interrupted);
        }
        let elapsed = started.elapsed();
        if elapsed >= options.duration {
            print_backup_status(&sockets);
            break Ok(());
        }
        if !crashed && elapsed >= crash_at {
            eprintln!(
                "{:5.1} s  CRASH: the primary's switch port goes down, then its processes are killed",
                elapsed.as_secs_f64()
            );
            if let Err(e) = lab.lab.cut(&primary) {
                break Err(e.into());
            }
            lab.processes[primary_agent].kill();
            lab.processes[primary_kvd].kill();
            // the crashed processes are gone: no longer checked (higher index removed first)
            lab.processes.remove(primary_agent.max(primary_kvd));
            lab.processes.remove(primary_agent.min(primary_kvd));
            crashed = true;
        }
        if let Err(e) = lab.check_all() {
            break Err(e);
        }
        if elapsed >= next_report {
            let p = workload.progress();
            eprintln!(
                "{:5.1} s  connections alive {}/{}  requests {}  verified {:.1} MB  longest stall {} ms",
                elapsed.as_secs_f64(),
                p.alive,
                count,
                p.requests,
                p.bytes_verified as f64 / 1e6,
                p.longest_stall.as_millis()
            );
            next_report += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match outcome {
        Ok(()) => {
            eprintln!(
                "finishing: each connection completes its request, sends QUIT and checks BYE"
            );
            Ok(workload.finish(false))
        }
        Err(e) => {
            workload.finish(true);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_tests::lab::kernel_tests_enabled;
    use std::net::TcpStream;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn demo_arguments_have_defaults_and_clear_errors() {
        assert_eq!(parse_demo_args(&[]), Ok(DemoOptions::default()));
        assert_eq!(
            parse_demo_args(&args(&[
                "--connections",
                "5",
                "--seconds=20",
                "--mode",
                "async"
            ])),
            Ok(DemoOptions {
                connections: 5,
                duration: Duration::from_secs(20),
                mode: CommitMode::Async
            })
        );
        let e = parse_demo_args(&args(&["--connections", "1"])).unwrap_err();
        assert!(e.to_string().contains("from 2 to 1000, got \"1\""), "{e}");
        let e = parse_demo_args(&args(&["--seconds", "x"])).unwrap_err();
        assert!(e.to_string().contains("--seconds"), "{e}");
        let e = parse_demo_args(&args(&["--mode", "fast"])).unwrap_err();
        assert!(e.to_string().contains("sync or async"), "{e}");
        let e = parse_demo_args(&args(&["--seconds"])).unwrap_err();
        assert_eq!(e, DemoArgsError::MissingValue("--seconds".into()));
        let e = parse_demo_args(&args(&["--crash"])).unwrap_err();
        assert_eq!(e, DemoArgsError::Unknown("--crash".into()));
    }

    #[test]
    fn the_lab_and_its_processes_are_cleaned_up_when_dropped() {
        if !kernel_tests_enabled("demo lab cleanup") {
            return;
        }
        let mut lab = DemoLab::build().expect("lab");
        let names: Vec<String> = [&lab.client, &lab.primary, &lab.backup]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        let sleeper = Program {
            path: PathBuf::from("sleep"),
            leading_args: Vec::new(),
        };
        let backup = lab.backup.clone();
        let graceful = lab
            .start("sleeper", &backup, &sleeper, &args(&["60"]), true)
            .expect("start");
        let killed = lab
            .start("sleeper 2", &backup, &sleeper, &args(&["60"]), false)
            .expect("start");
        let pids: Vec<u32> = [graceful, killed]
            .iter()
            .map(|&i| lab.processes[i].child.id())
            .collect();
        lab.check_all().expect("running");
        // the service address is on the primary, the client reaches it through the bridge:
        // a connection to a closed port there is refused (a RST came back)
        let refused = lab
            .client
            .run(|| {
                TcpStream::connect_timeout(
                    &"198.18.0.10:9".parse().unwrap(),
                    Duration::from_secs(2),
                )
                .map(|_| ())
                .map_err(|e| e.kind())
            })
            .expect("in client namespace");
        assert_eq!(refused, Err(io::ErrorKind::ConnectionRefused));
        drop(lab);
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} left running"
            );
        }
        let listed = cttm_tests::lab::run("ip", &["netns", "list"]).expect("list");
        for n in names {
            assert!(!listed.contains(&n), "namespace {n} left behind");
        }
    }

    #[test]
    fn a_child_that_exits_early_is_reported_with_its_log() {
        if !kernel_tests_enabled("demo child exit") {
            return;
        }
        let mut lab = DemoLab::build().expect("lab");
        let sh = Program {
            path: PathBuf::from("sh"),
            leading_args: Vec::new(),
        };
        let primary = lab.primary.clone();
        lab.start(
            "failing",
            &primary,
            &sh,
            &args(&["-c", "echo something broke >&2; exit 3"]),
            true,
        )
        .expect("start");
        let stop = AtomicBool::new(false);
        let e =
            wait_until(&mut lab, "never", Duration::from_secs(10), &stop, |_| false).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("failing exited early"), "{text}");
        assert!(text.contains("something broke"), "{text}");
    }
}
