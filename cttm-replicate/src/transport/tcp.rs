//! TCP transport: the primary connects to the backup, reconnects with exponential backoff
//! after a break; the backup listens and takes the newest connection. Every link starts with
//! the authenticated handshake of [`noise`](crate::noise). Sockets can carry an `SO_MARK`
//! (so a capture filter can exempt replication traffic from NFQUEUE).

use super::{ReplicationTransport, TransportError};
use crate::noise::{ChannelLimits, ChannelReader, ChannelWriter, Security, establish};
use crate::wire::{Role, WireMessage};
use cttm_core::endpoint::ServiceSet;
use parking_lot::Mutex;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// TCP transport settings.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Frame protection. [`Security::Noise`] unless benchmarking.
    pub security: Security,
    /// The services protected (both ends must agree).
    pub services: ServiceSet,
    /// `SO_MARK` for the replication sockets (needs CAP_NET_ADMIN), so capture filters can
    /// exempt replication traffic.
    pub mark: Option<u32>,
    /// How long a connection attempt may take (default 1 s).
    pub connect_timeout: Duration,
    /// How long each handshake read may take (default 2 s).
    pub handshake_timeout: Duration,
    /// First reconnection delay (default 50 ms), doubled after each failure.
    pub backoff_initial: Duration,
    /// Longest reconnection delay (default 2 s).
    pub backoff_max: Duration,
    /// Frame and message bounds.
    pub limits: ChannelLimits,
}

impl TcpConfig {
    /// Settings with Noise authentication and defaults.
    pub fn new(security: Security, services: ServiceSet) -> TcpConfig {
        TcpConfig {
            security,
            services,
            mark: None,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            limits: ChannelLimits::default(),
        }
    }
}

/// One established link, or none.
#[derive(Debug)]
struct Link {
    writer: Mutex<Option<ChannelWriter<TcpStream>>>,
    /// A second handle on the writer's socket, so that [`Link::abort`] can shut it down
    /// while a send holds the writer's lock (blocked on a dead peer).
    writer_socket: Mutex<Option<TcpStream>>,
    reader: Mutex<Option<ChannelReader<TcpStream>>>,
    up: AtomicBool,
    epoch: AtomicU64,
    received: AtomicU64,
    /// The read timeout set on the current link's socket, in microseconds (`u64::MAX`: not
    /// set yet), so a loop reading with the same timeout makes one `setsockopt` per link
    /// instead of one per read.
    read_timeout_us: AtomicU64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            writer: Mutex::default(),
            writer_socket: Mutex::default(),
            reader: Mutex::default(),
            up: AtomicBool::default(),
            epoch: AtomicU64::default(),
            received: AtomicU64::default(),
            read_timeout_us: AtomicU64::new(u64::MAX),
        }
    }
}

impl Link {
    fn install(
        &self,
        reader: ChannelReader<TcpStream>,
        writer: ChannelWriter<TcpStream>,
        slot: &mut Option<ChannelReader<TcpStream>>,
    ) {
        if let Some(old) = slot.take() {
            let _ = old.stream().shutdown(Shutdown::Both);
        }
        *slot = Some(reader);
        self.read_timeout_us.store(u64::MAX, Ordering::SeqCst);
        *self.writer_socket.lock() = writer.stream().try_clone().ok();
        *self.writer.lock() = Some(writer);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }

    /// Tears the link down; both halves fail from now on.
    fn teardown(&self, slot: &mut Option<ChannelReader<TcpStream>>) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(r) = slot.take() {
            let _ = r.stream().shutdown(Shutdown::Both);
        }
        if let Some(w) = self.writer.lock().take() {
            let _ = w.stream().shutdown(Shutdown::Both);
        }
        self.writer_socket.lock().take();
    }

    fn send(&self, message: &WireMessage) -> Result<(), TransportError> {
        self.send_batch(std::slice::from_ref(message))
    }

    fn send_batch(&self, messages: &[WireMessage]) -> Result<(), TransportError> {
        let mut w = self.writer.lock();
        let Some(writer) = w.as_mut() else {
            return Err(TransportError::LinkDown);
        };
        match writer.send_batch(messages) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.up.store(false, Ordering::SeqCst);
                let _ = writer.stream().shutdown(Shutdown::Both);
                *w = None;
                Err(e)
            }
        }
    }

    /// Reads from an established link.
    fn recv(
        &self,
        slot: &mut Option<ChannelReader<TcpStream>>,
        timeout: Duration,
    ) -> Result<Option<WireMessage>, TransportError> {
        let Some(reader) = slot.as_mut() else {
            return Ok(None);
        };
        let before = reader.bytes_read();
        let result = if timeout.is_zero() {
            reader.recv_buffered()
        } else {
            let micros = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX - 1);
            let set = if self.read_timeout_us.load(Ordering::SeqCst) == micros {
                Ok(())
            } else {
                let r = reader.stream().set_read_timeout(Some(timeout));
                if r.is_ok() {
                    self.read_timeout_us.store(micros, Ordering::SeqCst);
                }
                r
            };
            match set {
                Ok(()) => reader.recv(),
                Err(e) => Err(e.into()),
            }
        };
        self.received
            .fetch_add(reader.bytes_read() - before, Ordering::SeqCst);
        if result.is_err() {
            self.teardown(slot);
        }
        result
    }

    fn reset(&self) {
        let mut slot = self.reader.lock();
        self.teardown(&mut slot);
    }

    /// Shuts the link down at once, even while a send is blocked on a dead peer (the send
    /// then fails), then tears it down.
    fn abort(&self) {
        if let Some(socket) = self.writer_socket.lock().take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.reset();
    }
}

fn mark_socket(stream: &TcpStream, mark: Option<u32>) -> std::io::Result<()> {
    let sock = SockRef::from(stream);
    if let Some(m) = mark {
        sock.set_mark(m)?;
    }
    sock.set_tcp_nodelay(true)?;
    Ok(())
}

fn handshake(
    stream: TcpStream,
    config: &TcpConfig,
    role: Role,
) -> Result<(ChannelReader<TcpStream>, ChannelWriter<TcpStream>), TransportError> {
    stream.set_read_timeout(Some(config.handshake_timeout))?;
    stream.set_write_timeout(Some(config.handshake_timeout))?;
    let read = stream.try_clone()?;
    let result = establish(
        read,
        stream,
        &config.security,
        role,
        &config.services,
        config.limits,
    );
    if let Ok((_, w)) = &result {
        // Writes block (TCP backpressure) but never forever on a dead peer.
        w.stream()
            .set_write_timeout(Some(config.handshake_timeout.max(Duration::from_secs(5))))?;
    }
    result
}

/// The primary's end: connects to the backup, and again after every break.
#[derive(Debug)]
pub struct TcpPrimaryTransport {
    config: TcpConfig,
    backup: SocketAddr,
    link: Link,
    next_attempt: Mutex<(Instant, Duration)>,
}

impl TcpPrimaryTransport {
    /// A transport that will connect to `backup` (the first attempt happens in the first
    /// [`recv`](ReplicationTransport::recv)).
    pub fn new(config: TcpConfig, backup: SocketAddr) -> TcpPrimaryTransport {
        let initial = config.backoff_initial;
        TcpPrimaryTransport {
            config,
            backup,
            link: Link::default(),
            next_attempt: Mutex::new((Instant::now(), initial)),
        }
    }

    fn connect(
        &self,
    ) -> Result<(ChannelReader<TcpStream>, ChannelWriter<TcpStream>), TransportError> {
        let socket = Socket::new(
            Domain::for_address(self.backup),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if let Some(m) = self.config.mark {
            socket.set_mark(m)?;
        }
        socket.connect_timeout(&self.backup.into(), self.config.connect_timeout)?;
        let stream: TcpStream = socket.into();
        mark_socket(&stream, None)?;
        handshake(stream, &self.config, Role::Primary)
    }
}

impl ReplicationTransport for TcpPrimaryTransport {
    fn send(&self, message: &WireMessage) -> Result<(), TransportError> {
        self.link.send(message)
    }

    fn send_batch(&self, messages: &[WireMessage]) -> Result<(), TransportError> {
        self.link.send_batch(messages)
    }

    fn recv(&self, timeout: Duration) -> Result<Option<WireMessage>, TransportError> {
        let mut slot = self.link.reader.lock();
        if slot.is_some() && self.link.writer.lock().is_none() {
            self.link.teardown(&mut slot);
        }
        if slot.is_none() {
            let (when, backoff) = *self.next_attempt.lock();
            let now = Instant::now();
            if now < when {
                drop(slot);
                std::thread::sleep((when - now).min(timeout));
                return Ok(None);
            }
            return match self.connect() {
                Ok((r, w)) => {
                    self.link.install(r, w, &mut slot);
                    *self.next_attempt.lock() = (Instant::now(), self.config.backoff_initial);
                    Ok(None)
                }
                Err(e) => {
                    *self.next_attempt.lock() = (
                        Instant::now() + backoff,
                        (backoff * 2).min(self.config.backoff_max),
                    );
                    Err(e)
                }
            };
        }
        self.link.recv(&mut slot, timeout)
    }

    fn is_up(&self) -> bool {
        self.link.up.load(Ordering::SeqCst)
    }

    fn link_epoch(&self) -> u64 {
        self.link.epoch.load(Ordering::SeqCst)
    }

    fn bytes_received(&self) -> u64 {
        self.link.received.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.link.reset();
    }

    fn close(&self) {
        self.link.abort();
    }
}

/// A link whose handshake finished on the acceptor thread, waiting to be installed.
type Established = (ChannelReader<TcpStream>, ChannelWriter<TcpStream>);

/// What the acceptor thread hands over.
#[derive(Debug, Default)]
struct Accepted {
    /// The newest established link not yet installed.
    link: Option<Established>,
    /// Refused connections (wrong key, other version, other services), oldest first.
    errors: std::collections::VecDeque<TransportError>,
}

/// The most refused-connection errors kept until [`ReplicationTransport::recv`] returns them.
const MAX_ACCEPT_ERRORS: usize = 64;

/// The backup's end: listens, and takes each new connection from a primary (the newest one
/// wins: a primary that reconnects after a break replaces its dead link).
///
/// Connections are accepted and authenticated on a separate thread, so a peer that connects
/// and stalls (or lacks the key) never holds up the established link.
#[derive(Debug)]
pub struct TcpBackupTransport {
    local_addr: SocketAddr,
    link: Link,
    accepted: Arc<Mutex<Accepted>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl TcpBackupTransport {
    /// Listens on `addr` (port 0 picks one; see [`local_addr`](Self::local_addr)). The
    /// listening socket is created in the calling thread's network namespace.
    pub fn bind(config: TcpConfig, addr: SocketAddr) -> Result<TcpBackupTransport, TransportError> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if let Some(m) = config.mark {
            socket.set_mark(m)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(8)?;
        let listener: TcpListener = socket.into();
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let accepted = Arc::new(Mutex::new(Accepted::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(&listener, &config, &accepted, &stop))
        };
        Ok(TcpBackupTransport {
            local_addr,
            link: Link::default(),
            accepted,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.local_addr)
    }

    /// Installs a link the acceptor established, or returns a refused connection's error.
    fn take_accepted(
        &self,
        slot: &mut Option<ChannelReader<TcpStream>>,
    ) -> Result<bool, TransportError> {
        let mut a = self.accepted.lock();
        if let Some(e) = a.errors.pop_front() {
            return Err(e);
        }
        match a.link.take() {
            Some((r, w)) => {
                self.link.install(r, w, slot);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Drop for TcpBackupTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections and runs their handshakes until `stop`.
fn accept_loop(
    listener: &TcpListener,
    config: &TcpConfig,
    accepted: &Mutex<Accepted>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                push_accept_error(accepted, e.into());
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let result = stream
            .set_nonblocking(false)
            .map_err(TransportError::from)
            .and_then(|()| mark_socket(&stream, config.mark).map_err(TransportError::from))
            .and_then(|()| handshake(stream, config, Role::Backup));
        match result {
            Ok(link) => {
                if let Some((old, _)) = accepted.lock().link.replace(link) {
                    let _ = old.stream().shutdown(Shutdown::Both);
                }
            }
            Err(e) => push_accept_error(accepted, e),
        }
    }
}

fn push_accept_error(accepted: &Mutex<Accepted>, e: TransportError) {
    let mut a = accepted.lock();
    if a.errors.len() == MAX_ACCEPT_ERRORS {
        a.errors.pop_front();
    }
    a.errors.push_back(e);
}

impl ReplicationTransport for TcpBackupTransport {
    fn send(&self, message: &WireMessage) -> Result<(), TransportError> {
        self.link.send(message)
    }

    fn send_batch(&self, messages: &[WireMessage]) -> Result<(), TransportError> {
        self.link.send_batch(messages)
    }

    fn recv(&self, timeout: Duration) -> Result<Option<WireMessage>, TransportError> {
        let mut slot = self.link.reader.lock();
        if slot.is_some() && self.link.writer.lock().is_none() {
            self.link.teardown(&mut slot);
        }
        if self.take_accepted(&mut slot)? {
            return Ok(None);
        }
        if slot.is_none() {
            let deadline = Instant::now() + timeout;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    return Ok(None);
                }
                drop(slot);
                std::thread::sleep((deadline - now).min(Duration::from_millis(5)));
                slot = self.link.reader.lock();
                if self.take_accepted(&mut slot)? {
                    return Ok(None);
                }
            }
        }
        self.link.recv(&mut slot, timeout)
    }

    fn is_up(&self) -> bool {
        self.link.up.load(Ordering::SeqCst)
    }

    fn link_epoch(&self) -> u64 {
        self.link.epoch.load(Ordering::SeqCst)
    }

    fn bytes_received(&self) -> u64 {
        self.link.received.load(Ordering::SeqCst)
    }

    fn reset(&self) {
        self.link.reset();
    }

    fn close(&self) {
        self.link.abort();
    }
}
