//! The agent's status socket: a Unix stream socket (mode 0600, root's) that `cttmd status`
//! and `cttmd rejoin` talk to.
//!
//! The protocol is one request line per connection, one answer, then the agent closes:
//!
//! | request | answer |
//! |---|---|
//! | `status` | the [`render_status`] text |
//! | `status json` | the [`AgentView`](super::AgentView) as one line of JSON |
//! | `rejoin` | one line starting with `rejoined:`, `refused:` or `pending:` |
//! | anything else | one line starting with `error:` |
//!
//! Requests are bounded ([`MAX_REQUEST_LEN`] bytes, [`REQUEST_TIMEOUT`] to arrive), so a
//! stuck or hostile client cannot hold the agent; at most [`MAX_CLIENTS`] are served at once.

use super::{AgentRole, Observer, render_status};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request line accepted, newline excluded.
pub const MAX_REQUEST_LEN: usize = 256;
/// How long a client may take to send its request line (and to read the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Clients served at the same time; more are told to retry.
pub const MAX_CLIENTS: usize = 8;
/// The longest path of a Unix socket: `sun_path` is 108 bytes with the terminating NUL
/// (`include/uapi/linux/un.h`, `UNIX_PATH_MAX`).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
/// How often the idle accept loop looks for a client or for the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// A request to the status socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCommand {
    /// `status`: the human-readable status.
    Status,
    /// `status json`: the view as JSON.
    StatusJson,
    /// `rejoin`: ask a non-serving primary to serve again.
    Rejoin,
}

impl StatusCommand {
    /// The request line (without the newline).
    pub fn line(self) -> &'static str {
        match self {
            StatusCommand::Status => "status",
            StatusCommand::StatusJson => "status json",
            StatusCommand::Rejoin => "rejoin",
        }
    }

    /// Parses a request line (surrounding whitespace and a final `\r` ignored; words
    /// separated by any whitespace).
    pub fn parse(line: &str) -> Option<StatusCommand> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => Some(StatusCommand::Status),
            ["status", "json"] => Some(StatusCommand::StatusJson),
            ["rejoin"] => Some(StatusCommand::Rejoin),
            _ => None,
        }
    }
}

/// How long a `rejoin` request waits for the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejoinWait {
    /// For the agent to take the request (it looks every few milliseconds while
    /// non-serving).
    pub pickup: Duration,
    /// Then for the agent to serve again (it probes the service address first).
    pub outcome: Duration,
}

impl Default for RejoinWait {
    fn default() -> Self {
        RejoinWait {
            pickup: Duration::from_secs(2),
            outcome: Duration::from_secs(5),
        }
    }
}

/// Opening the status socket failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusSocketError {
    /// The path does not fit in a Unix socket address.
    #[error(
        "status socket path {} is {len} bytes long: a Unix socket path has at most {MAX_SOCKET_PATH_LEN}; set `status_socket` to a shorter path",
        path.display()
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The socket's directory could not be created.
    #[error(
        "cannot create the status socket's directory {}: {source}; create it, or set `status_socket` elsewhere (\"\" disables it)",
        path.display()
    )]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process answers on the socket: another agent is running.
    #[error(
        "another agent is running: it answers on the status socket {}; stop it, or give this agent another `status_socket`",
        path.display()
    )]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is at the path.
    #[error(
        "{} exists and is not a socket: remove it, or set `status_socket` to another path",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket (nobody answers) could not be removed.
    #[error("cannot remove the stale status socket {}: {source}; remove it by hand", path.display())]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Binding or restricting the socket failed.
    #[error("cannot open the status socket {}: {source}; check the path and its directory's permissions", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the status socket's thread: {0}; check the process and thread limits")]
    Thread(#[source] io::Error),
}

/// The status socket of a running agent, served on its own thread until dropped (which
/// removes the socket file, if it is still this server's).
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
    /// (device, inode) of the socket file this server bound.
    identity: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    /// Serves `observer`'s view on a Unix socket at `path`: creates the parent directory if
    /// needed (mode 0700), replaces a stale socket file nobody answers on, refuses a live
    /// one (another agent), and makes the socket 0600.
    pub fn start(path: &Path, observer: Observer) -> Result<StatusServer, StatusSocketError> {
        StatusServer::start_with(path, observer, RejoinWait::default())
    }

    /// [`start`](StatusServer::start) with other `rejoin` waits.
    pub fn start_with(
        path: &Path,
        observer: Observer,
        rejoin_wait: RejoinWait,
    ) -> Result<StatusServer, StatusSocketError> {
        let listener = bind(path)?;
        let bind_error = |source| StatusSocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("status-socket".into())
            .spawn(move || accept_loop(&listener, &observer, rejoin_wait, &flag))
            .map_err(StatusSocketError::Thread)?;
        tracing::info!(socket = %path.display(), "status socket open (`cttmd status --socket PATH`)");
        Ok(StatusServer {
            path: path.to_path_buf(),
            identity: (metadata.dev(), metadata.ino()),
            stop,
            thread: Some(thread),
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // only our own socket: another agent may have replaced a file we no longer own
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && (metadata.dev(), metadata.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn bind(path: &Path) -> Result<UnixListener, StatusSocketError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN || len == 0 {
        return Err(StatusSocketError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| StatusSocketError::CreateDirectory {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    remove_stale(path)?;
    let bind_error = |source| StatusSocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    // bind(2) creates the file with the umask's mode; only root talks to an agent
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// Removes a socket file at `path` nobody answers on; an answered one is another agent's.
fn remove_stale(path: &Path) -> Result<(), StatusSocketError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StatusSocketError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(StatusSocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(StatusSocketError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale status socket");
            std::fs::remove_file(path).map_err(|source| StatusSocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(StatusSocketError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn accept_loop(
    listener: &UnixListener,
    observer: &Observer,
    rejoin_wait: RejoinWait,
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!("status socket: accept failed: {e} (retrying)");
                    warned = true;
                }
                std::thread::sleep(ACCEPT_POLL * 5);
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_CLIENTS {
            answer_busy(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (observer, count) = (observer.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("status-client".into())
            .spawn(move || {
                serve(stream, &observer, rejoin_wait);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("status socket: cannot start a client thread: {e}");
        }
    }
}

fn answer_busy(mut stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.write_all(b"error: the agent is serving other status requests; retry\n");
}

/// Serves one client: reads its request line, writes the answer. I/O errors only end the
/// exchange (the client went away).
fn serve(stream: UnixStream, observer: &Observer, rejoin_wait: RejoinWait) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)));
    if setup.is_err() {
        return;
    }
    let answer = match read_request(&stream) {
        Ok(line) => answer(&line, observer, rejoin_wait),
        Err(problem) => format!("error: {problem}\n"),
    };
    let mut stream = stream;
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    drain(&mut stream);
}

/// Reads what the client still sends (bounded in bytes and time) before closing: closing a
/// socket with unread data resets the connection, and the client would lose the answer.
pub(super) fn drain(stream: &mut impl Read) {
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The request line, or what is wrong with it.
fn read_request(stream: &UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_LEN as u64 + 1));
    match reader.read_until(b'\n', &mut line) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!(
                "no request line within {} s: send `status`, `status json` or `rejoin` and a newline",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        Err(e) => return Err(format!("reading the request failed: {e}")),
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_REQUEST_LEN {
        return Err(format!(
            "request longer than {MAX_REQUEST_LEN} bytes: send `status`, `status json` or `rejoin`"
        ));
    }
    String::from_utf8(line).map_err(|_| "the request is not UTF-8 text".to_string())
}

/// The answer to one request line.
fn answer(line: &str, observer: &Observer, rejoin_wait: RejoinWait) -> String {
    match StatusCommand::parse(line) {
        Some(StatusCommand::Status) => render_status(&observer.view()),
        Some(StatusCommand::StatusJson) => match serde_json::to_string(&observer.view()) {
            Ok(json) => json + "\n",
            Err(e) => format!("error: cannot encode the view as JSON: {e}\n"),
        },
        Some(StatusCommand::Rejoin) => rejoin(observer, rejoin_wait) + "\n",
        None => {
            let shown: String = line.chars().take(64).collect();
            format!(
                "error: unknown command {shown:?}: the commands are `status`, `status json` and `rejoin`\n"
            )
        }
    }
}

/// Asks a non-serving agent to rejoin and reports what it did (one line: `rejoined:`,
/// `refused:` or `pending:`).
fn rejoin(observer: &Observer, wait: RejoinWait) -> String {
    let before = observer.view();
    if before.role != AgentRole::NonServing {
        return format!(
            "refused: this agent is {}, not non-serving: there is nothing to rejoin",
            before.role.name()
        );
    }
    observer.request_rejoin();
    let picked_up = wait_for(wait.pickup, || !observer.rejoin_requested());
    if !picked_up {
        return format!(
            "pending: rejoin requested, but the agent has not acted on it within {} s; the request stays pending (check `cttmd status`)",
            wait.pickup.as_secs_f64()
        );
    }
    // the agent probes the service address, then serves or says why not (a new alert)
    let mut settled_at = None;
    let decided = wait_for(wait.outcome, || {
        let now = observer.view();
        if now.role != AgentRole::NonServing {
            return true;
        }
        if now.alerts != before.alerts {
            // let a role change published just after the alerts arrive
            let since = *settled_at.get_or_insert_with(Instant::now);
            return since.elapsed() >= Duration::from_millis(100);
        }
        false
    });
    let now = observer.view();
    if now.role != AgentRole::NonServing {
        return format!("rejoined: the agent now runs as {}", now.role.name());
    }
    let why = if now.alerts.is_empty() {
        "no reason given (check the agent's log)".to_string()
    } else {
        now.alerts.join("; ")
    };
    if decided {
        format!("refused: still non-serving: {why}")
    } else {
        format!(
            "refused: still non-serving {} s after taking the request: {why}",
            wait.outcome.as_secs_f64()
        )
    }
}

/// Polls `done` every 10 ms until it holds (true) or `limit` passes (false).
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{AgentView, CommitState};

    #[test]
    fn commands_parse_and_print_back() {
        for command in [
            StatusCommand::Status,
            StatusCommand::StatusJson,
            StatusCommand::Rejoin,
        ] {
            assert_eq!(StatusCommand::parse(command.line()), Some(command));
        }
        assert_eq!(
            StatusCommand::parse("  status \t json\r"),
            Some(StatusCommand::StatusJson)
        );
        for bad in ["", "stat", "status xml", "rejoin now", "STATUS"] {
            assert_eq!(StatusCommand::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_commands_get_an_error_line() {
        let observer = Observer::new(AgentView::new(AgentRole::Primary, CommitState::Sync));
        let a = answer("frob", &observer, RejoinWait::default());
        assert!(a.starts_with("error: unknown command \"frob\""), "{a}");
        assert!(a.ends_with('\n') && a.lines().count() == 1, "{a}");
    }

    #[test]
    fn rejoin_is_refused_for_an_agent_that_serves() {
        let observer = Observer::new(AgentView::new(AgentRole::Primary, CommitState::Sync));
        let a = answer("rejoin", &observer, RejoinWait::default());
        assert!(a.starts_with("refused: this agent is primary"), "{a}");
        assert!(!observer.take_rejoin_request(), "no request left behind");
    }

    #[test]
    fn rejoin_reports_an_agent_that_refuses_after_probing() {
        let observer = Observer::new(AgentView::new(AgentRole::NonServing, CommitState::Sync));
        let agent = observer.clone();
        let fake_agent = std::thread::spawn(move || {
            for _ in 0..500 {
                if agent.take_rejoin_request() {
                    agent.update(|v| {
                        v.alerts.push(
                            "rejoin refused: 198.18.0.10 answered from 02:00:00:00:00:03".into(),
                        )
                    });
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let a = rejoin(
            &observer,
            RejoinWait {
                pickup: Duration::from_secs(2),
                outcome: Duration::from_secs(5),
            },
        );
        assert!(fake_agent.join().unwrap(), "the agent saw the request");
        assert!(
            a.starts_with("refused: still non-serving: ") && a.contains("02:00:00:00:00:03"),
            "{a}"
        );
    }
}
