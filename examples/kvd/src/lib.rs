//! # kvd: the reference deterministic daemon
//!
//! A line-oriented key-value session server used by the CTTM demo and tests as "any
//! unmodified daemon": it knows nothing about CTTM. Its only property that matters is that
//! **its output on a connection depends only on the bytes received on that connection**
//! (every key lives in the connection's own [`Session`]), so a standby copy fed the same
//! client bytes produces the same bytes. `--diverge` breaks that on purpose.
//!
//! ## Protocol
//!
//! Requests are lines ending in `\n` (a `\r` before it is ignored), at most
//! [`MAX_LINE`] bytes. The verb is case-insensitive; arguments are separated by one space.
//! Every request gets exactly one reply, in order, so requests may be pipelined.
//!
//! | request | reply |
//! |---|---|
//! | `PING` | `PONG` |
//! | `SET key value` | `OK` (the value is the rest of the line, spaces included) |
//! | `GET key` | `VALUE value`, or `NONE` if the key is not set |
//! | `DEL key` | `OK`, or `NONE` if the key was not set |
//! | `INCR key [delta]` | the new value (a missing key counts as 0; delta defaults to 1, may be negative) |
//! | `COUNT` | the number of request lines received on this connection, this one included |
//! | `ECHO text` | `text` |
//! | `STREAM n seed` | `DATA n`, then `n` bytes of the [`StreamGenerator`] stream for `seed`, then `\n`, then `SUM <16 hex digits>` (FNV-1a 64 of the `n` bytes) |
//! | `QUIT` | `BYE`, then the server closes the connection |
//! | anything else | `ERR <what is wrong and what to do>` |
//!
//! Every reply line ends in `\n`. Limits: [`MAX_LINE`] bytes per request (longer: `ERR`
//! and the connection is closed), [`MAX_KEYS`] keys per connection, [`MAX_STREAM`] bytes per
//! `STREAM`.
//!
//! With [`ServerOptions::diverge`] every reply line gets ` pid=<pid> t=<ns>` appended (the
//! process id and the time): two instances, or the same one twice, answer differently, which
//! is what the divergence detection of the backup must notice.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub mod cli;

/// The longest request line, in bytes (newline excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// The most keys one connection may hold.
pub const MAX_KEYS: usize = 4096;
/// The longest `STREAM`, in bytes (1 TiB).
pub const MAX_STREAM: u64 = 1 << 40;

/// What a request asks the server to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// One line (without its `\n`).
    Line(String),
    /// `DATA n`, the stream bytes, `\n`, `SUM <hex>`.
    Stream {
        /// Bytes of stream data.
        len: u64,
        /// The generator's seed.
        seed: u64,
    },
    /// `BYE`, then close.
    Bye,
}

/// The state of one connection: its keys and its request count. Sans-IO: the server (or a
/// client checking the answers it gets) feeds it lines.
#[derive(Clone, Debug, Default)]
pub struct Session {
    values: BTreeMap<String, String>,
    requests: u64,
}

impl Session {
    /// A fresh connection's state.
    pub fn new() -> Session {
        Session::default()
    }

    /// Request lines handled so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Handles one request line (without its `\n`; a trailing `\r` is ignored).
    pub fn handle(&mut self, line: &[u8]) -> Reply {
        self.requests += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            return error("request is not UTF-8 text");
        };
        let (verb, rest) = match line.split_once(' ') {
            Some((v, r)) => (v, Some(r)),
            None => (line, None),
        };
        match verb.to_ascii_uppercase().as_str() {
            "PING" => Reply::Line("PONG".into()),
            "SET" => self.set(rest),
            "GET" => match key_only(rest, "GET key") {
                Ok(key) => match self.values.get(key) {
                    Some(v) => Reply::Line(format!("VALUE {v}")),
                    None => Reply::Line("NONE".into()),
                },
                Err(e) => e,
            },
            "DEL" => match key_only(rest, "DEL key") {
                Ok(key) => match self.values.remove(key) {
                    Some(_) => Reply::Line("OK".into()),
                    None => Reply::Line("NONE".into()),
                },
                Err(e) => e,
            },
            "INCR" => self.incr(rest),
            "COUNT" => Reply::Line(self.requests.to_string()),
            "ECHO" => Reply::Line(rest.unwrap_or("").to_string()),
            "STREAM" => stream(rest),
            "QUIT" => Reply::Bye,
            "" => error("empty request (try PING)"),
            _ => error(&format!(
                "unknown command {verb:?} (try PING, SET, GET, DEL, INCR, COUNT, ECHO, STREAM, QUIT)"
            )),
        }
    }

    fn set(&mut self, rest: Option<&str>) -> Reply {
        let Some((key, value)) = rest.and_then(|r| r.split_once(' ')) else {
            return error("usage: SET key value");
        };
        if key.is_empty() {
            return error("usage: SET key value (the key is empty)");
        }
        if !self.values.contains_key(key) && self.values.len() >= MAX_KEYS {
            return error(&format!(
                "too many keys on this connection (at most {MAX_KEYS}; DEL some)"
            ));
        }
        self.values.insert(key.to_string(), value.to_string());
        Reply::Line("OK".into())
    }

    fn incr(&mut self, rest: Option<&str>) -> Reply {
        let Some(rest) = rest else {
            return error("usage: INCR key [delta]");
        };
        let (key, delta) = match rest.split_once(' ') {
            Some((k, d)) => match d.parse::<i64>() {
                Ok(d) => (k, d),
                Err(_) => return error("usage: INCR key [delta] (delta is a whole number)"),
            },
            None => (rest, 1),
        };
        if key.is_empty() {
            return error("usage: INCR key [delta] (the key is empty)");
        }
        let current = match self.values.get(key) {
            Some(v) => match v.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return error(&format!("the value of {key:?} is not a whole number")),
            },
            None if self.values.len() >= MAX_KEYS => {
                return error(&format!(
                    "too many keys on this connection (at most {MAX_KEYS}; DEL some)"
                ));
            }
            None => 0,
        };
        let Some(next) = current.checked_add(delta) else {
            return error(&format!("INCR {key:?} would overflow a 64-bit integer"));
        };
        self.values.insert(key.to_string(), next.to_string());
        Reply::Line(next.to_string())
    }
}

fn error(message: &str) -> Reply {
    Reply::Line(format!("ERR {message}"))
}

fn key_only<'a>(rest: Option<&'a str>, usage: &str) -> Result<&'a str, Reply> {
    match rest {
        Some(key) if !key.is_empty() && !key.contains(' ') => Ok(key),
        _ => Err(error(&format!("usage: {usage}"))),
    }
}

fn stream(rest: Option<&str>) -> Reply {
    let usage = || error(&format!("usage: STREAM n seed (n at most {MAX_STREAM})"));
    let Some((len, seed)) = rest.and_then(|r| r.split_once(' ')) else {
        return usage();
    };
    match (len.parse::<u64>(), seed.parse::<u64>()) {
        (Ok(len), Ok(seed)) if len <= MAX_STREAM => Reply::Stream { len, seed },
        _ => usage(),
    }
}

/// The deterministic byte stream of `STREAM n seed`: lowercase letters from a xorshift64*
/// generator seeded through splitmix64, and its FNV-1a 64 checksum. Clients use it to check
/// what they receive.
#[derive(Clone, Debug)]
pub struct StreamGenerator {
    state: u64,
    remaining: u64,
    checksum: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl StreamGenerator {
    /// The stream of `len` bytes for `seed`.
    pub fn new(seed: u64, len: u64) -> StreamGenerator {
        // splitmix64 of the seed: never zero for xorshift, and nearby seeds differ at once
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        StreamGenerator {
            state: if z == 0 { 1 } else { z },
            remaining: len,
            checksum: FNV_OFFSET,
        }
    }

    /// Bytes not generated yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fills the front of `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for byte in &mut buf[..n] {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
            *byte = b'a' + (r % 26) as u8;
            self.checksum = (self.checksum ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        self.remaining -= n as u64;
        n
    }

    /// FNV-1a 64 of the bytes generated so far (of the whole stream once `remaining` is 0).
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The `SUM` line that ends the stream (without its `\n`), once every byte is generated.
    pub fn sum_line(&self) -> String {
        format!("SUM {:016x}", self.checksum)
    }
}

/// How the server behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// Append ` pid=<pid> t=<ns>` to every reply line: output no longer depends only on the
    /// input (for divergence tests).
    pub diverge: bool,
}

/// Binding a listening address failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {address}: {source} (is another daemon using the port, or the address not on this host?)"
    )]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The listener could not be set up for polling.
    #[error("cannot set up the listener on {address}: {source}")]
    Setup {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
}

/// A running server: one accept thread per listening address, one thread per connection.
/// Dropping it (or [`Server::stop`]) stops accepting; open connections run until their
/// client leaves.
#[derive(Debug)]
pub struct Server {
    addresses: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

/// How often an idle accept loop looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

impl Server {
    /// Binds every address (port 0 picks a free port) and starts serving.
    pub fn start(addresses: &[SocketAddr], options: ServerOptions) -> Result<Server, BindError> {
        let mut listeners = Vec::new();
        for &address in addresses {
            let listener =
                TcpListener::bind(address).map_err(|source| BindError::Bind { address, source })?;
            listeners.push(listener);
        }
        Server::from_listeners(listeners, options)
    }

    /// Serves already-bound listeners.
    pub fn from_listeners(
        listeners: Vec<TcpListener>,
        options: ServerOptions,
    ) -> Result<Server, BindError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addresses = Vec::new();
        let mut acceptors = Vec::new();
        for listener in listeners {
            let address = listener.local_addr().map_err(|source| BindError::Setup {
                address: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| BindError::Setup { address, source })?;
            addresses.push(address);
            let stop = stop.clone();
            acceptors.push(std::thread::spawn(move || {
                accept_loop(&listener, options, &stop)
            }));
        }
        Ok(Server {
            addresses,
            stop,
            acceptors,
        })
    }

    /// The addresses served (with the ports actually bound).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops accepting new connections and waits for the accept threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, options: ServerOptions, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // a connection's errors end that connection only (its client went away)
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, options);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // out of descriptors, or a connection reset before accept: back off and go on
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

/// Serves one connection until the client closes it, sends `QUIT`, or sends a line longer
/// than [`MAX_LINE`]. Replies are flushed whenever no further request is already buffered,
/// so pipelined requests get batched replies.
pub fn serve_connection(stream: TcpStream, options: ServerOptions) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(64 * 1024, stream);
    let mut session = Session::new();
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let limit = (MAX_LINE + 1) as u64;
        let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
        if n == 0 {
            writer.flush()?;
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE {
                write_line(
                    &mut writer,
                    &format!("ERR request longer than {MAX_LINE} bytes; closing"),
                    options,
                )?;
            }
            // else: the client closed in the middle of a line
            writer.flush()?;
            return Ok(());
        }
        line.pop();
        match session.handle(&line) {
            Reply::Line(text) => write_line(&mut writer, &text, options)?,
            Reply::Stream { len, seed } => write_stream(&mut writer, len, seed, options)?,
            Reply::Bye => {
                write_line(&mut writer, "BYE", options)?;
                writer.flush()?;
                return Ok(());
            }
        }
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
    }
}

fn write_line(out: &mut impl Write, text: &str, options: ServerOptions) -> io::Result<()> {
    out.write_all(text.as_bytes())?;
    if options.diverge {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        write!(out, " pid={} t={nanos}", std::process::id())?;
    }
    out.write_all(b"\n")
}

fn write_stream(
    out: &mut impl Write,
    len: u64,
    seed: u64,
    options: ServerOptions,
) -> io::Result<()> {
    write_line(out, &format!("DATA {len}"), options)?;
    let mut generator = StreamGenerator::new(seed, len);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = generator.fill(&mut chunk);
        if n == 0 {
            break;
        }
        out.write_all(&chunk[..n])?;
    }
    out.write_all(b"\n")?;
    write_line(out, &generator.sum_line(), options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &mut Session, request: &str) -> String {
        match s.handle(request.as_bytes()) {
            Reply::Line(l) => l,
            other => panic!("{request}: expected a line, got {other:?}"),
        }
    }

    #[test]
    fn set_get_del_keep_per_connection_values() {
        let mut s = Session::new();
        assert_eq!(line(&mut s, "GET a"), "NONE");
        assert_eq!(line(&mut s, "SET a hello world"), "OK");
        assert_eq!(line(&mut s, "get a"), "VALUE hello world");
        assert_eq!(line(&mut s, "SET a "), "OK");
        assert_eq!(line(&mut s, "GET a"), "VALUE ");
        assert_eq!(line(&mut s, "DEL a"), "OK");
        assert_eq!(line(&mut s, "DEL a"), "NONE");
        let mut other = Session::new();
        assert_eq!(line(&mut s, "SET b 1"), "OK");
        assert_eq!(line(&mut other, "GET b"), "NONE");
    }

    #[test]
    fn incr_counts_and_rejects_bad_values() {
        let mut s = Session::new();
        assert_eq!(line(&mut s, "INCR n"), "1");
        assert_eq!(line(&mut s, "INCR n 41"), "42");
        assert_eq!(line(&mut s, "INCR n -50"), "-8");
        assert_eq!(line(&mut s, "GET n"), "VALUE -8");
        assert!(line(&mut s, "INCR n x").starts_with("ERR usage"));
        assert_eq!(line(&mut s, "SET t text"), "OK");
        assert!(line(&mut s, "INCR t").contains("not a whole number"));
        assert_eq!(line(&mut s, &format!("SET m {}", i64::MAX)), "OK");
        assert!(line(&mut s, "INCR m").contains("overflow"));
        assert_eq!(line(&mut s, "GET m"), format!("VALUE {}", i64::MAX));
    }

    #[test]
    fn count_includes_every_request_and_errors_are_explained() {
        let mut s = Session::new();
        assert_eq!(line(&mut s, "PING"), "PONG");
        assert!(line(&mut s, "FROB x").starts_with("ERR unknown command \"FROB\""));
        assert!(line(&mut s, "").starts_with("ERR empty"));
        assert!(line(&mut s, "SET onlykey").starts_with("ERR usage: SET"));
        assert!(line(&mut s, "GET").starts_with("ERR usage: GET"));
        assert!(s.handle(&[0xff, 0xfe]) == Reply::Line("ERR request is not UTF-8 text".into()));
        assert_eq!(line(&mut s, "COUNT\r"), "7");
        assert_eq!(line(&mut s, "ECHO  two  spaces"), " two  spaces");
        assert_eq!(s.handle(b"QUIT"), Reply::Bye);
    }

    #[test]
    fn stream_requests_are_checked() {
        let mut s = Session::new();
        assert_eq!(s.handle(b"STREAM 10 7"), Reply::Stream { len: 10, seed: 7 });
        assert!(line(&mut s, "STREAM 10").starts_with("ERR usage: STREAM"));
        assert!(line(&mut s, "STREAM -1 3").starts_with("ERR usage: STREAM"));
        let too_long = format!("STREAM {} 1", MAX_STREAM + 1);
        assert!(line(&mut s, &too_long).starts_with("ERR usage: STREAM"));
    }

    #[test]
    fn key_count_is_bounded() {
        let mut s = Session::new();
        for i in 0..MAX_KEYS {
            assert_eq!(line(&mut s, &format!("SET k{i} v")), "OK");
        }
        assert!(line(&mut s, "SET another v").contains("too many keys"));
        assert!(line(&mut s, "INCR another").contains("too many keys"));
        assert_eq!(line(&mut s, "SET k0 replaced"), "OK");
        assert_eq!(line(&mut s, "DEL k1"), "OK");
        assert_eq!(line(&mut s, "SET another v"), "OK");
    }

    #[test]
    fn the_stream_is_deterministic_whatever_the_chunking() {
        let mut whole = StreamGenerator::new(99, 10_000);
        let mut a = vec![0u8; 10_000];
        assert_eq!(whole.fill(&mut a), 10_000);
        assert_eq!(whole.fill(&mut a), 0);
        let mut pieces = StreamGenerator::new(99, 10_000);
        let mut b = Vec::new();
        let mut chunk = [0u8; 333];
        loop {
            let n = pieces.fill(&mut chunk);
            if n == 0 {
                break;
            }
            b.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(a, b);
        assert_eq!(whole.checksum(), pieces.checksum());
        assert!(a.iter().all(u8::is_ascii_lowercase));
        // checksum is FNV-1a 64 of the bytes
        let fnv = a.iter().fold(FNV_OFFSET, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(FNV_PRIME)
        });
        assert_eq!(whole.checksum(), fnv);
        // another seed gives another stream
        let mut other = StreamGenerator::new(100, 10_000);
        let mut c = vec![0u8; 10_000];
        other.fill(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn connection_replies_in_order_and_stream_is_framed() {
        let mut out = Vec::new();
        write_stream(&mut out, 5, 1, ServerOptions::default()).expect("write");
        let mut generator = StreamGenerator::new(1, 5);
        let mut data = [0u8; 5];
        generator.fill(&mut data);
        let mut expected = b"DATA 5\n".to_vec();
        expected.extend_from_slice(&data);
        expected.extend_from_slice(format!("\n{}\n", generator.sum_line()).as_bytes());
        assert_eq!(out, expected);
        let mut diverging = Vec::new();
        write_line(&mut diverging, "OK", ServerOptions { diverge: true }).expect("write");
        let text = String::from_utf8(diverging).expect("utf8");
        assert!(text.starts_with(&format!("OK pid={} t=", std::process::id())));
    }
}
