//! A three-host crash-failover lab: a client, a primary and a backup on one bridge, the
//! reference daemon kvd running on both servers, and whichever agents the caller starts.
//!
//! | host | addresses | runs |
//! |---|---|---|
//! | client | 198.18.0.1/24, 2001:db8::1/64 | the test's clients |
//! | primary | 198.18.0.2/24, 2001:db8::2/64 + the service address | kvd on `[::]:7000`, the primary agent |
//! | backup | 198.18.0.3/24, 2001:db8::3/64 | kvd on `[::]:7000` (the standby), the backup agent (replication on 198.18.0.3:7700) |
//!
//! The service address is 198.18.0.10/24 ([`ServiceFamily::V4`]) or 2001:db8::10/64
//! ([`ServiceFamily::V6`]). kvd listens on the IPv6 wildcard, which on Linux (with the
//! default `net.ipv6.bindv6only = 0`) also accepts IPv4: the standby answers the shadow
//! sessions on 127.0.0.1 and, once the backup claimed the service address, new clients.
//!
//! This crate cannot depend on the agents (they depend on it), so the agents are closures
//! the caller gives to [`FailoverLab::spawn_agent`]: each runs on a thread inside its host's
//! namespace with a stop flag, e.g.
//! `lab.spawn_agent(&lab.backup, move |stop| cttmd::backup::run_backup(options, stop))`.
//!
//! [`FailoverLab::with_replication_network`] builds the same lab plus a separate replication
//! network between the primary and the backup only (a second bridge, interface `eth1`):
//! 198.19.0.1/24 on the primary, 198.19.0.2/24 on the backup, the backup agent's replication
//! address 198.19.0.2:7700 ([`SEPARATE_REPLICATION`]). The client is not on it.
//!
//! [`FailoverLab::crash`] is the crash: the primary's switch port goes down (nothing it
//! sends reaches anyone, no FIN, no RST), then its agent stops and its daemon's connections
//! are closed (into the void) so their threads and descriptors are freed.

use crate::lab::{Lab, LabError, Netns};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The service port (kvd's, on both servers).
pub const SERVICE_PORT: u16 = 7000;
/// The backup agent's replication address.
pub const REPLICATION: &str = "198.18.0.3:7700";
/// The backup agent's replication address on the separate replication network
/// ([`FailoverLab::with_replication_network`]).
pub const SEPARATE_REPLICATION: &str = "198.19.0.2:7700";
/// The primary's address on the separate replication network.
pub const SEPARATE_REPLICATION_PRIMARY: &str = "198.19.0.1";
/// The interface of the primary and the backup on the separate replication network.
pub const REPLICATION_INTERFACE: &str = "eth1";
/// The bridge of the separate replication network (in the switch namespace).
const REPLICATION_BRIDGE: &str = "br1";
/// The pre-shared key of the lab's replication link.
pub const REPLICATION_KEY: [u8; 32] = *b"cttm failover lab shared key 001";
/// How often an idle accept loop looks at its stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// The address family of the service address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceFamily {
    /// 198.18.0.10/24.
    V4,
    /// 2001:db8::10/64.
    V6,
}

impl ServiceFamily {
    fn cidr(self) -> &'static str {
        match self {
            ServiceFamily::V4 => "198.18.0.10/24",
            ServiceFamily::V6 => "2001:db8::10/64",
        }
    }

    /// The service address and port clients connect to.
    pub fn service(self) -> SocketAddr {
        match self {
            ServiceFamily::V4 => SocketAddr::from(([198, 18, 0, 10], SERVICE_PORT)),
            ServiceFamily::V6 => {
                SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], SERVICE_PORT))
            }
        }
    }

    /// The prefix length the service address has (and gets when the backup claims it).
    pub fn prefix_len(self) -> u8 {
        match self {
            ServiceFamily::V4 => 24,
            ServiceFamily::V6 => 64,
        }
    }
}

/// A kvd server whose connections can all be closed at once (the crash of its host).
struct Daemon {
    stop: Arc<AtomicBool>,
    /// A second handle on each open connection, by accept number, to close it at the
    /// crash; removed when its serving thread ends (so the socket closes and sends its FIN).
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Binds `[::]:SERVICE_PORT` inside `host` and serves it with kvd.
    fn start(host: &Netns) -> Result<Daemon, LabError> {
        let address = SocketAddr::from(([0u16; 8], SERVICE_PORT));
        let listener = host
            .run(move || TcpListener::bind(address))?
            .map_err(|e| LabError(format!("kvd cannot listen on {address}: {e}")))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let acceptor = {
            let (stop, connections) = (stop.clone(), connections.clone());
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted += 1;
                            let number = accepted;
                            if let Ok(clone) = stream.try_clone() {
                                lock(&connections).insert(number, clone);
                            }
                            let connections = connections.clone();
                            std::thread::spawn(move || {
                                let _ = cttm_kvd::serve_connection(
                                    stream,
                                    cttm_kvd::ServerOptions::default(),
                                );
                                lock(&connections).remove(&number);
                            });
                        }
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })
        };
        Ok(Daemon {
            stop,
            connections,
            acceptor: Some(acceptor),
        })
    }

    /// Stops accepting and closes every connection (their serving threads then end).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for (_, c) in lock(&self.connections).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An agent running on a thread inside a lab host, with its stop flag. Dropping it stops it
/// and waits for it.
#[derive(Debug)]
pub struct Agent<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<T>>,
}

impl<T> Agent<T> {
    /// The agent ended on its own (an error, or a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the agent and returns what it returned (`None` if it panicked).
    pub fn stop(mut self) -> Option<T> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<T> Drop for Agent<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The three hosts, the lab joining them and the kvd daemons on the two servers.
pub struct FailoverLab {
    lab: Lab,
    /// The client host.
    pub client: Netns,
    /// The primary host (holds the service address until it crashes).
    pub primary: Netns,
    /// The backup host.
    pub backup: Netns,
    /// The address family of the service address.
    pub family: ServiceFamily,
    /// The backup agent's replication address.
    replication: SocketAddr,
    /// The replication link has a network of its own (`eth1` on the primary and the backup).
    separate_replication: bool,
    primary_daemon: Daemon,
    standby_daemon: Daemon,
}

impl std::fmt::Debug for FailoverLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverLab")
            .field("lab", &self.lab)
            .field("family", &self.family)
            .field("replication", &self.replication)
            .finish_non_exhaustive()
    }
}

impl FailoverLab {
    /// Builds the hosts and starts kvd on the primary and the backup. `tag` (a few letters)
    /// appears in the namespace names.
    pub fn new(tag: &str, family: ServiceFamily) -> Result<FailoverLab, LabError> {
        FailoverLab::build(tag, family, false)
    }

    /// As [`FailoverLab::new`], plus a replication network of its own between the primary
    /// and the backup (see the module documentation): [`FailoverLab::replication`] is then
    /// [`SEPARATE_REPLICATION`], and [`FailoverLab::crash`] cuts the primary off both
    /// networks.
    pub fn with_replication_network(
        tag: &str,
        family: ServiceFamily,
    ) -> Result<FailoverLab, LabError> {
        FailoverLab::build(tag, family, true)
    }

    fn build(tag: &str, family: ServiceFamily, separate: bool) -> Result<FailoverLab, LabError> {
        let mut lab = Lab::new(tag)?;
        let client = lab.add_host("c", &["198.18.0.1/24", "2001:db8::1/64"])?;
        let primary = lab.add_host("p", &["198.18.0.2/24", "2001:db8::2/64", family.cidr()])?;
        let backup = lab.add_host("b", &["198.18.0.3/24", "2001:db8::3/64"])?;
        let replication = if separate {
            lab.add_network(REPLICATION_BRIDGE)?;
            let primary_cidr = format!("{SEPARATE_REPLICATION_PRIMARY}/24");
            lab.attach(
                &primary,
                REPLICATION_BRIDGE,
                REPLICATION_INTERFACE,
                &[&primary_cidr],
            )?;
            lab.attach(
                &backup,
                REPLICATION_BRIDGE,
                REPLICATION_INTERFACE,
                &["198.19.0.2/24"],
            )?;
            SEPARATE_REPLICATION
        } else {
            REPLICATION
        };
        let replication = replication
            .parse()
            .map_err(|e| LabError(format!("replication address {replication}: {e}")))?;
        let primary_daemon = Daemon::start(&primary)?;
        let standby_daemon = Daemon::start(&backup)?;
        Ok(FailoverLab {
            lab,
            client,
            primary,
            backup,
            family,
            replication,
            separate_replication: separate,
            primary_daemon,
            standby_daemon,
        })
    }

    /// The lab (to cut or reconnect hosts by hand).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The service address and port clients connect to.
    pub fn service(&self) -> SocketAddr {
        self.family.service()
    }

    /// The prefix length of the service address.
    pub fn service_prefix_len(&self) -> u8 {
        self.family.prefix_len()
    }

    /// The backup agent's replication address.
    pub fn replication(&self) -> SocketAddr {
        self.replication
    }

    /// Whether the replication link has a network of its own
    /// ([`FailoverLab::with_replication_network`]).
    pub fn has_replication_network(&self) -> bool {
        self.separate_replication
    }

    /// Where the backup's standby daemon answers its shadow sessions.
    pub fn standby(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], SERVICE_PORT))
    }

    /// Runs `agent` on a thread inside `host` with a fresh stop flag.
    pub fn spawn_agent<T: Send + 'static>(
        &self,
        host: &Netns,
        agent: impl FnOnce(Arc<AtomicBool>) -> T + Send + 'static,
    ) -> Result<Agent<T>, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            host.spawn(move || agent(stop))?
        };
        Ok(Agent {
            stop,
            thread: Some(thread),
        })
    }

    /// The crash of the primary: its switch port goes down (and its port on the replication
    /// network, if the lab has one), then `primary_agent` stops (what it still sends goes
    /// nowhere) and the primary's daemon closes every connection. Returns when the service
    /// port went down and what the agent returned.
    pub fn crash<T>(&mut self, primary_agent: Agent<T>) -> Result<(Instant, Option<T>), LabError> {
        self.lab.cut(&self.primary)?;
        let crashed_at = Instant::now();
        if self.separate_replication {
            self.lab
                .cut_attachment(&self.primary, REPLICATION_INTERFACE)?;
        }
        let exit = primary_agent.stop();
        self.primary_daemon.kill();
        Ok((crashed_at, exit))
    }
}

impl Drop for FailoverLab {
    fn drop(&mut self) {
        self.primary_daemon.kill();
        self.standby_daemon.kill();
    }
}

/// Waits until `done` holds, checking every 10 ms; false if `limit` passed first.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Both agents of a [`FailoverLab`] running, the replication link up: the primary agent
/// (returning `P`) and the backup agent (returning `B`), started from the caller's closures
/// (this crate cannot name the agents, see the module documentation).
#[derive(Debug)]
pub struct AgentPair<P, B> {
    /// The lab the agents run in.
    pub lab: FailoverLab,
    primary: Option<Agent<P>>,
    backup: Option<Agent<B>>,
}

impl<P: Send + std::fmt::Debug + 'static, B: Send + std::fmt::Debug + 'static> AgentPair<P, B> {
    /// Starts `backup` on the backup host, then `primary` on the primary host, and waits
    /// (at most `limit`) until `link_up` says the replication link is up, so that every
    /// connection opened afterwards is protected from its handshake on. An agent that ends
    /// before is an error carrying what both returned.
    pub fn start(
        lab: FailoverLab,
        backup: impl FnOnce(Arc<AtomicBool>) -> B + Send + 'static,
        primary: impl FnOnce(Arc<AtomicBool>) -> P + Send + 'static,
        limit: Duration,
        mut link_up: impl FnMut() -> bool,
    ) -> Result<AgentPair<P, B>, LabError> {
        let backup = lab.spawn_agent(&lab.backup, backup)?;
        let primary = lab.spawn_agent(&lab.primary, primary)?;
        let mut pair = AgentPair {
            lab,
            primary: Some(primary),
            backup: Some(backup),
        };
        let mut ended_early = false;
        let ready = wait_until(limit, || {
            ended_early = pair.primary.as_ref().is_some_and(Agent::is_finished)
                || pair.backup.as_ref().is_some_and(Agent::is_finished);
            ended_early || link_up()
        });
        if ended_early {
            let primary = pair.primary.take().and_then(Agent::stop);
            let backup = pair.backup.take().and_then(Agent::stop);
            return Err(LabError(format!(
                "an agent stopped early: primary {primary:?}, backup {backup:?}"
            )));
        }
        if !ready {
            return Err(LabError(format!(
                "the replication link did not come up within {limit:?}"
            )));
        }
        Ok(pair)
    }

    /// The crash of the primary ([`FailoverLab::crash`]); returns when the service port went
    /// down and what the primary agent returned.
    pub fn crash(&mut self) -> Result<(Instant, P), LabError> {
        let primary = self
            .primary
            .take()
            .ok_or_else(|| LabError("the primary already crashed".into()))?;
        let (at, exit) = self.lab.crash(primary)?;
        let exit = exit.ok_or_else(|| LabError("the primary agent panicked".into()))?;
        Ok((at, exit))
    }

    /// Stops the backup agent and returns what it returned.
    pub fn stop_backup(mut self) -> Result<B, LabError> {
        self.backup
            .take()
            .and_then(Agent::stop)
            .ok_or_else(|| LabError("the backup agent panicked".into()))
    }
}

/// How long a [`KvClient`] waits for a byte before it counts as hung.
pub const KV_CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A kvd client that checks every answer against its own [`cttm_kvd::Session`] oracle (and
/// `STREAM` bytes against [`cttm_kvd::StreamGenerator`]), so a lost, duplicated or changed
/// byte in either direction is an error. Reads and writes time out after
/// [`KV_CLIENT_TIMEOUT`].
#[derive(Debug)]
pub struct KvClient {
    /// The connection (requests are written here).
    pub writer: TcpStream,
    /// The same connection, buffered for the answers.
    pub reader: std::io::BufReader<TcpStream>,
    /// What the server must answer.
    pub oracle: cttm_kvd::Session,
    /// The longest wait for an answer or for the next `STREAM` bytes.
    pub longest_stall: Duration,
}

impl KvClient {
    /// Connects to `service` within `timeout`.
    pub fn connect(service: SocketAddr, timeout: Duration) -> std::io::Result<KvClient> {
        KvClient::from_stream(TcpStream::connect_timeout(&service, timeout)?)
    }

    /// A client on an established connection.
    pub fn from_stream(stream: TcpStream) -> std::io::Result<KvClient> {
        stream.set_read_timeout(Some(KV_CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(KV_CLIENT_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(KvClient {
            reader: std::io::BufReader::with_capacity(256 << 10, stream.try_clone()?),
            writer: stream,
            oracle: cttm_kvd::Session::new(),
            longest_stall: Duration::ZERO,
        })
    }

    /// The client's address.
    pub fn local(&self) -> std::io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Sends one request line and checks its one-line answer.
    pub fn request(&mut self, line: &str) -> Result<(), String> {
        use std::io::Write;
        let started = Instant::now();
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("writing {line:?}: {e}"))?;
        let expected = match self.oracle.handle(line.as_bytes()) {
            cttm_kvd::Reply::Line(text) => format!("{text}\n"),
            cttm_kvd::Reply::Bye => "BYE\n".to_string(),
            cttm_kvd::Reply::Stream { .. } => return Err("use stream() for STREAM".into()),
        };
        self.expect_line(&expected, line)?;
        self.longest_stall = self.longest_stall.max(started.elapsed());
        Ok(())
    }

    /// Reads one answer line and compares it with `expected` (`request` names it in errors).
    pub fn expect_line(&mut self, expected: &str, request: &str) -> Result<(), String> {
        use std::io::BufRead;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => Err(format!("the server closed before answering {request:?}")),
            Ok(_) if answer == expected => Ok(()),
            Ok(_) => Err(format!(
                "wrong answer to {request:?}: {answer:?}, expected {expected:?} (a byte was lost, duplicated or changed)"
            )),
            Err(e) => Err(format!("reading the answer to {request:?}: {e}")),
        }
    }

    /// `COUNT`, expecting `count` (the oracle is not asked: callers that bypassed it say
    /// what the server must have counted; it is brought in step for what follows).
    pub fn expect_count(&mut self, count: u64) -> Result<(), String> {
        use std::io::Write;
        self.writer
            .write_all(b"COUNT\n")
            .map_err(|e| format!("COUNT: {e}"))?;
        self.expect_line(&format!("{count}\n"), "COUNT")?;
        while self.oracle.requests() < count {
            let _ = self.oracle.handle(b"PING");
        }
        Ok(())
    }

    /// `STREAM len seed`: every byte compared with the generator, then the `SUM` line.
    /// `progress` counts the bytes received.
    pub fn stream(
        &mut self,
        len: u64,
        seed: u64,
        progress: &std::sync::atomic::AtomicUsize,
    ) -> Result<(), String> {
        use std::io::{Read, Write};
        let request = format!("STREAM {len} {seed}");
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|e| format!("{request}: {e}"))?;
        match self.oracle.handle(request.as_bytes()) {
            cttm_kvd::Reply::Stream { len: l, seed: s } if l == len && s == seed => {}
            other => return Err(format!("the oracle answers {request:?} with {other:?}")),
        }
        self.expect_line(&format!("DATA {len}\n"), &request)?;
        let mut generator = cttm_kvd::StreamGenerator::new(seed, len);
        let mut expected = vec![0u8; 256 << 10];
        let mut got = vec![0u8; 256 << 10];
        let mut offset = 0u64;
        let mut last = Instant::now();
        while generator.remaining() > 0 {
            let want = generator.fill(&mut expected);
            let mut have = 0;
            while have < want {
                let n = self
                    .reader
                    .read(&mut got[have..want])
                    .map_err(|e| format!("{request}: byte {}: {e}", offset + have as u64))?;
                if n == 0 {
                    return Err(format!(
                        "{request}: the stream ended at byte {}",
                        offset + have as u64
                    ));
                }
                self.longest_stall = self.longest_stall.max(last.elapsed());
                last = Instant::now();
                have += n;
                progress.fetch_add(n, Ordering::SeqCst);
            }
            if got[..want] != expected[..want] {
                let at = got[..want]
                    .iter()
                    .zip(&expected[..want])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!("{request}: byte {} differs", offset + at as u64));
            }
            offset += want as u64;
        }
        self.expect_line("\n", &request)?;
        self.expect_line(&format!("{}\n", generator.sum_line()), &request)
    }

    /// `QUIT`: `BYE`, then the server's FIN (nothing more). Returns the longest stall.
    pub fn quit(mut self) -> Result<Duration, String> {
        use std::io::Read;
        self.request("QUIT")?;
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .map_err(|e| format!("waiting for the close after BYE: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after BYE", rest.len()));
        }
        Ok(self.longest_stall)
    }

    /// `COUNT` (checked by the oracle: no request lost or repeated), then [`KvClient::quit`].
    pub fn finish(mut self) -> Result<Duration, String> {
        self.request("COUNT")?;
        self.quit()
    }
}

/// A line of `len` letters, different for each `seed` (kvd values).
pub fn kv_text(seed: u64, len: usize) -> String {
    let mut generator = cttm_kvd::StreamGenerator::new(seed ^ 0x5eed, len as u64);
    let mut bytes = vec![0u8; len];
    generator.fill(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

impl<P, B> AgentPair<P, B> {
    /// Stops the backup agent alone (the primary keeps running) and returns what it
    /// returned (`None` if it was already stopped or it panicked).
    pub fn stop_backup_agent(&mut self) -> Option<B> {
        self.backup.take().and_then(Agent::stop)
    }

    /// Runs `backup` (e.g. a new backup agent started with [`FailoverLab::spawn_agent`]) as
    /// the pair's backup agent; a backup agent still running is stopped first.
    pub fn replace_backup_agent(&mut self, backup: Agent<B>) {
        if let Some(old) = self.backup.replace(backup) {
            let _ = old.stop();
        }
    }
}

/// How big the random requests of [`KvClient::random_request`] get.
#[derive(Clone, Copy, Debug)]
pub struct RandomLoad {
    /// The largest `SET` value (an upload), in bytes.
    pub max_value: usize,
    /// The largest `STREAM` (a download), in bytes.
    pub max_stream: u64,
    /// Distinct keys.
    pub keys: u64,
}

impl KvClient {
    /// One random request of a mixed load, checked by the oracle: `SET` of a value up to
    /// `load.max_value` bytes (30 %), `GET` (20 %), `INCR` (10 %), `STREAM` up to
    /// `load.max_stream` bytes (20 %), `ECHO` (10 %), `PING` (10 %).
    pub fn random_request(
        &mut self,
        rng: &mut crate::rng::SplitMix64,
        load: RandomLoad,
    ) -> Result<(), String> {
        let key = rng.below(load.keys.max(1));
        match rng.range(0, 9) {
            0..=2 => {
                let len = rng.range(1, load.max_value.max(1) as u64) as usize;
                self.request(&format!("SET k{key} {}", kv_text(rng.next_u64(), len)))
            }
            3 | 4 => self.request(&format!("GET k{key}")),
            5 => self.request(&format!("INCR n{key} {}", rng.range(0, 1000))),
            6 | 7 => {
                let len = rng.range(1, load.max_stream.max(1));
                self.stream(len, rng.next_u64(), &std::sync::atomic::AtomicUsize::new(0))
            }
            8 => self.request(&format!("ECHO {}", kv_text(rng.next_u64(), 64))),
            _ => self.request("PING"),
        }
    }
}
