//! Fencing: the operator's command that makes sure the primary no longer serves (powers it
//! off through its management controller, cuts its switch port, ...) before the backup claims
//! the service addresses. It runs with `sh -c`, in a process group of its own, with the
//! service addresses in `CTTM_SERVICE_ADDRESSES` (space separated), stdin closed, stdout
//! discarded and the end of stderr kept for the error message. Success is exit status 0
//! within the timeout; anything else (non-zero status, a signal, the timeout: the whole
//! group is then killed) fails, and a failed fence aborts the takeover.

use cttm_core::io::fence::Fence;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The environment variable carrying the service addresses to the fencing command.
pub const ADDRESSES_VARIABLE: &str = "CTTM_SERVICE_ADDRESSES";
/// How often the command is checked for completion.
const WAIT_STEP: Duration = Duration::from_millis(5);
/// The most stderr bytes kept for the error message (the end of the output).
const STDERR_KEPT: usize = 1024;

/// Why fencing failed.
#[derive(Debug, Error)]
pub enum FenceError {
    /// The shell could not be started.
    #[error("cannot start the fencing command with `sh -c`: {0}; check that /bin/sh exists")]
    Spawn(#[source] std::io::Error),
    /// The command ended unsuccessfully.
    #[error(
        "the fencing command failed ({status}){}; the primary may still serve: fix the command (`fence_command`) or fence the primary by hand",
        stderr_suffix(.stderr)
    )]
    Failed {
        /// Its exit status.
        status: ExitStatus,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// The command ran longer than allowed and was killed.
    #[error(
        "the fencing command did not finish within {timeout:?} and was killed; raise `fence_timeout_ms` or make the command faster"
    )]
    Timeout {
        /// The configured limit.
        timeout: Duration,
    },
    /// Waiting for the command failed.
    #[error("waiting for the fencing command failed: {0}")]
    Wait(#[source] std::io::Error),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// The operator's fencing command and how long it may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandFence {
    /// The command, run with `sh -c`.
    pub command: String,
    /// How long it may run before it is killed and the fence fails.
    pub timeout: Duration,
}

impl Fence for CommandFence {
    fn fence(&mut self, addresses: &[IpAddr]) -> Result<(), String> {
        run_fence(self, addresses).map_err(|e| e.to_string())
    }
}

/// Runs the fencing command for `addresses` and waits for it (at most `fence.timeout`).
pub fn run_fence(fence: &CommandFence, addresses: &[IpAddr]) -> Result<(), FenceError> {
    let list = addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&fence.command)
        .env(ADDRESSES_VARIABLE, &list)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a timeout kills the shell and whatever it started.
        .process_group(0)
        .spawn()
        .map_err(FenceError::Spawn)?;
    // Read stderr on a thread, so a chatty command never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 512];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > STDERR_KEPT {
                    kept.drain(..kept.len() - STDERR_KEPT);
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let status = wait_with_timeout(&mut child, fence.timeout);
    let stderr = match &status {
        // The pipe closes when the command (and every process holding it) has ended.
        Ok(Some(_)) => stderr.and_then(|t| t.join().ok()).unwrap_or_default(),
        _ => String::new(),
    };
    match status {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(FenceError::Failed { status, stderr }),
        Ok(None) => Err(FenceError::Timeout {
            timeout: fence.timeout,
        }),
        Err(e) => Err(FenceError::Wait(e)),
    }
}

/// Waits for `child` at most `timeout`; on timeout kills its process group and reaps it
/// (`Ok(None)`).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return Ok(None);
        }
        std::thread::sleep(WAIT_STEP.min(deadline - now));
    }
}

/// Kills the command's process group (its id is the shell's pid, `process_group(0)`), then
/// the shell itself in case the group is gone, and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(command: &str, timeout: Duration) -> CommandFence {
        CommandFence {
            command: command.to_string(),
            timeout,
        }
    }

    fn addresses() -> Vec<IpAddr> {
        vec![
            "198.18.0.10".parse().expect("v4"),
            "2001:db8::10".parse().expect("v6"),
        ]
    }

    #[test]
    fn a_successful_command_sees_the_addresses() {
        let dir = std::env::temp_dir().join(format!("cttm-fence-ok-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let marker = dir.join("fenced");
        let command = format!("echo \"${ADDRESSES_VARIABLE}\" > '{}'", marker.display());
        run_fence(&fence(&command, Duration::from_secs(10)), &addresses()).expect("fenced");
        let written = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(written.trim(), "198.18.0.10 2001:db8::10");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_command_fails_with_its_status_and_stderr() {
        let error = run_fence(
            &fence(
                "echo 'no power controller' >&2; exit 3",
                Duration::from_secs(10),
            ),
            &addresses(),
        )
        .expect_err("must fail");
        match &error {
            FenceError::Failed { status, stderr } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr.trim(), "no power controller");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(error.to_string().contains("no power controller"), "{error}");
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_fails() {
        let dir = std::env::temp_dir().join(format!("cttm-fence-slow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let late = dir.join("late");
        // The child of the shell must die with it: it would create `late` after 1 s.
        let command = format!("(sleep 1; touch '{}') & wait", late.display());
        let error = run_fence(&fence(&command, Duration::from_millis(100)), &addresses())
            .expect_err("must time out");
        assert!(matches!(error, FenceError::Timeout { .. }), "{error:?}");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !late.exists(),
            "the fencing command's children outlived the timeout"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
