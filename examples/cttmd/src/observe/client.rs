//! The client side of the status socket: what `cttmd status` and `cttmd rejoin` use.

use super::status_socket::{MAX_SOCKET_PATH_LEN, StatusCommand};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the client waits for an answer: a `rejoin` waits for the agent to probe the
/// service address and decide, so this is longer than the server's own waits.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read (a status of many thousands of connections fits).
pub const MAX_ANSWER_LEN: u64 = 64 * 1024 * 1024;

/// Talking to an agent's status socket failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusClientError {
    /// No socket at the path.
    #[error(
        "no status socket at {}: is the agent running? (give the agent's `status_socket` with --socket PATH)",
        path.display()
    )]
    NoSocket {
        /// The path tried.
        path: PathBuf,
    },
    /// A socket file nobody answers on (the agent is gone).
    #[error(
        "nobody answers on {}: the agent that opened it is not running (a stale socket)",
        path.display()
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Connecting, sending or reading failed otherwise.
    #[error("talking to the agent on {} failed: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The answer was not UTF-8 text.
    #[error("the agent on {} answered something that is not text", path.display())]
    NotText {
        /// The socket.
        path: PathBuf,
    },
    /// The agent answered with an error line.
    #[error("the agent on {} says: {message}", path.display())]
    Agent {
        /// The socket.
        path: PathBuf,
        /// The agent's error, without the `error: ` prefix.
        message: String,
    },
}

/// Sends `command` to the agent's status socket at `path` and returns its answer (an
/// `error:` answer becomes [`StatusClientError::Agent`]).
pub fn query_agent(
    path: &Path,
    command: StatusCommand,
    timeout: Duration,
) -> Result<String, StatusClientError> {
    let io_error = |source: io::Error| StatusClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a Unix socket path has at most {MAX_SOCKET_PATH_LEN} bytes"),
        )));
    }
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StatusClientError::NoSocket {
            path: path.to_path_buf(),
        },
        io::ErrorKind::ConnectionRefused => StatusClientError::NotRunning {
            path: path.to_path_buf(),
        },
        _ => io_error(e),
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_error)?;
    stream
        .write_all(format!("{}\n", command.line()).as_bytes())
        .map_err(io_error)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER_LEN)
        .read_to_end(&mut answer)
        .map_err(io_error)?;
    let answer = String::from_utf8(answer).map_err(|_| StatusClientError::NotText {
        path: path.to_path_buf(),
    })?;
    if let Some(message) = answer.strip_prefix("error: ") {
        return Err(StatusClientError::Agent {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        });
    }
    Ok(answer)
}
