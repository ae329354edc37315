//! The demo's child processes (daemons and agents in the lab's namespaces).

use super::DemoError;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(super) struct ChildProcess {
    what: String,
    pub(super) child: Child,
    tail: Arc<Mutex<VecDeque<String>>>,
    forwarder: Option<JoinHandle<()>>,
    graceful: bool,
}

const TAIL_LINES: usize = 20;

impl ChildProcess {
    pub(super) fn spawn(
        what: &str,
        mut command: Command,
        graceful: bool,
    ) -> Result<ChildProcess, DemoError> {
        use std::os::unix::process::CommandExt;
        // its own process group: a Ctrl-C in the terminal reaches the demo only, which then
        // stops its children in order
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.spawn().map_err(|source| DemoError::Spawn {
            what: what.to_string(),
            source,
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let forwarder = child.stderr.take().map(|stderr| {
            let tail = tail.clone();
            let prefix = what.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("  [{prefix}] {line}");
                    let mut t = tail.lock();
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            })
        });
        Ok(ChildProcess {
            what: what.to_string(),
            child,
            tail,
            forwarder,
            graceful,
        })
    }

    /// Fails if the process has exited.
    pub(super) fn check_running(&mut self) -> Result<(), DemoError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                if let Some(f) = self.forwarder.take() {
                    let _ = f.join();
                }
                Err(DemoError::ChildExited {
                    what: self.what.clone(),
                    status: status.to_string(),
                    log: self
                        .tail
                        .lock()
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n"),
                })
            }
            Err(e) => Err(DemoError::NotReady(format!(
                "cannot check {}: {e}",
                self.what
            ))),
        }
    }

    /// Signals the process unless it has been reaped already (its pid may be reused then).
    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// SIGKILL, at once (the crash).
    pub(super) fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.graceful {
            self.stop(Duration::from_secs(3));
        } else {
            self.kill();
        }
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
    }
}
