//! The standby edge: a connection to the standby daemon on the backup host, one per shadow
//! session. The standby daemon is an unmodified copy of the service; a shadow session feeds
//! it the client's bytes and reads its output. The backend is `cttm-restore`'s
//! `standby::TcpStandby`.

use std::io;
use std::net::TcpStream;

/// Opens connections to the standby daemon.
///
/// Contract: [`connect`](Self::connect) returns a connected, nonblocking stream without
/// Nagle's delay (the shadow session and, after takeover, the splice read and write it
/// without waiting), or an error when the daemon cannot be reached within the backend's
/// timeout; the session is then unprotected with that reason. It is a `TcpStream` because the
/// splice waits on it with `poll(2)` and passes resets on with `SO_LINGER` 0.
pub trait StandbyConnector: Send {
    /// Connects one session.
    fn connect(&mut self) -> io::Result<TcpStream>;
    /// Where the daemon listens, for messages.
    fn describe(&self) -> String;
}
