//! Threads that run the protocol over a transport: [`PrimaryService`] (a sending thread and
//! a receiving thread around a [`Primary`]) and [`BackupService`] (one thread around a
//! [`Backup`]). Errors from the link (authentication failures included) are kept for the
//! caller ([`PrimaryService::take_errors`]); nothing is printed.

use crate::backup::{Backup, BackupConfig, BackupReport};
use crate::primary::{
    AckedOffsets, Primary, PrimaryConfig, PrimaryReport, SubmitError, Submitted, UnprotectedReason,
};
use crate::store::ReplicaStore;
use crate::transport::{ReplicationTransport, TransportError};
use crate::wire::WireMessage;
use cttm_core::ReplicationMessage;
use cttm_core::endpoint::ConnectionId;
use cttm_core::time::Instant;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The most link errors kept for [`PrimaryService::take_errors`] (older ones are dropped and
/// counted).
const MAX_ERRORS: usize = 256;

/// A monotonic clock as the core's [`Instant`] (microseconds since the service started).
#[derive(Clone, Copy, Debug)]
struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_micros(u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

/// Link errors kept for the caller.
#[derive(Debug, Default)]
struct ErrorLog {
    errors: VecDeque<TransportError>,
    dropped: u64,
}

impl ErrorLog {
    fn push(&mut self, e: TransportError) {
        if self.errors.len() == MAX_ERRORS {
            self.errors.pop_front();
            self.dropped += 1;
        }
        self.errors.push_back(e);
    }

    /// The errors kept, oldest first, and how many older ones were discarded; empties the log.
    fn take(&mut self) -> (Vec<TransportError>, u64) {
        let dropped = std::mem::take(&mut self.dropped);
        (self.errors.drain(..).collect(), dropped)
    }
}

struct PrimaryShared {
    primary: Mutex<Primary>,
    wake: Condvar,
    progress: Condvar,
    stop: AtomicBool,
    transport: Arc<dyn ReplicationTransport>,
    clock: Clock,
    errors: Mutex<ErrorLog>,
}

/// The primary's replication running on its own threads.
pub struct PrimaryService {
    shared: Arc<PrimaryShared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PrimaryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryService").finish_non_exhaustive()
    }
}

impl PrimaryService {
    /// Starts replicating over `transport` as primary incarnation `epoch`.
    pub fn start(
        config: PrimaryConfig,
        epoch: u64,
        transport: Arc<dyn ReplicationTransport>,
    ) -> PrimaryService {
        let shared = Arc::new(PrimaryShared {
            primary: Mutex::new(Primary::new(config, epoch)),
            wake: Condvar::new(),
            progress: Condvar::new(),
            stop: AtomicBool::new(false),
            transport,
            clock: Clock(std::time::Instant::now()),
            errors: Mutex::new(ErrorLog::default()),
        });
        let reader = {
            let s = shared.clone();
            std::thread::spawn(move || primary_receive_loop(&s))
        };
        let writer = {
            let s = shared.clone();
            std::thread::spawn(move || primary_send_loop(&s))
        };
        PrimaryService {
            shared,
            threads: vec![reader, writer],
        }
    }

    /// The primary's link over authenticated TCP, in one call: connects (and reconnects) to
    /// the backup listening on `backup`, both protecting `services` and authenticated with
    /// `key` (Noise); its sockets carry `mark` (`SO_MARK`) when given, so a queue rule that
    /// skips the mark never holds the link's own traffic.
    pub fn connect_tcp(
        backup: std::net::SocketAddr,
        key: crate::PreSharedKey,
        services: cttm_core::ServiceSet,
        config: PrimaryConfig,
        mark: Option<u32>,
    ) -> PrimaryService {
        use crate::transport::tcp::{TcpConfig, TcpPrimaryTransport};
        let mut tcp = TcpConfig::new(crate::Security::Noise(key), services);
        tcp.mark = mark;
        let transport = TcpPrimaryTransport::new(tcp, backup);
        PrimaryService::start(config, crate::random_epoch(), Arc::new(transport))
    }

    /// Ships one message (a tracker event, usually).
    pub fn submit(&self, message: ReplicationMessage) -> Result<Submitted, SubmitError> {
        let now = self.shared.clock.now();
        let r = self.shared.primary.lock().submit(message, now);
        self.shared.wake.notify_one();
        r
    }

    /// Ships several messages under one lock.
    pub fn submit_all(
        &self,
        messages: impl IntoIterator<Item = ReplicationMessage>,
    ) -> Result<Vec<Submitted>, SubmitError> {
        let now = self.shared.clock.now();
        let r = {
            let mut p = self.shared.primary.lock();
            messages.into_iter().map(|m| p.submit(m, now)).collect()
        };
        self.shared.wake.notify_one();
        r
    }

    /// Forgets connections closed before `closed_before` (in the events' time), shipping a
    /// `Forget` for each; see [`Primary::forget_closed`]. Call it when the tracker forgets
    /// lingering connections.
    pub fn forget_closed(&self, closed_before: Instant) -> usize {
        let now = self.shared.clock.now();
        let n = self.shared.primary.lock().forget_closed(closed_before, now);
        self.shared.wake.notify_one();
        n
    }

    /// What the backup has acknowledged of a connection (for output commit).
    pub fn acknowledged(&self, id: &ConnectionId) -> Option<AckedOffsets> {
        self.shared.primary.lock().acknowledged(id)
    }

    /// The connections not protected now.
    pub fn unprotected(&self) -> Vec<(ConnectionId, UnprotectedReason)> {
        self.shared.primary.lock().unprotected()
    }

    /// Bytes retained (unacknowledged).
    pub fn retained_bytes(&self) -> usize {
        self.shared.primary.lock().retained_bytes()
    }

    /// The highest sequence number acknowledged by the backup.
    pub fn acked_seq(&self) -> u64 {
        self.shared.primary.lock().acked_seq()
    }

    /// Waits until the backup acknowledged `seq`, at most `timeout`; true if it did.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.shared.primary.lock();
        while p.acked_seq() < seq {
            if self
                .shared
                .progress
                .wait_until(&mut p, deadline)
                .timed_out()
            {
                return p.acked_seq() >= seq;
            }
        }
        true
    }

    /// Waits until retained bytes drop to `bytes` or below, at most `timeout`.
    pub fn wait_retained_below(&self, bytes: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.shared.primary.lock();
        while p.retained_bytes() > bytes {
            if self
                .shared
                .progress
                .wait_until(&mut p, deadline)
                .timed_out()
            {
                return p.retained_bytes() <= bytes;
            }
        }
        true
    }

    /// Waits until the backup acknowledged everything and nothing is unprotected, at most
    /// `timeout`; true if so.
    pub fn wait_synchronised(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.shared.primary.lock();
        while !p.is_synchronised() {
            if self
                .shared
                .progress
                .wait_until(&mut p, deadline)
                .timed_out()
            {
                return p.is_synchronised();
            }
        }
        true
    }

    /// Runs `f` on the protocol state (snapshots of the primary's copy, counters).
    pub fn with_primary<T>(&self, f: impl FnOnce(&Primary) -> T) -> T {
        f(&self.shared.primary.lock())
    }

    /// True while the link is up.
    pub fn link_up(&self) -> bool {
        self.shared.transport.is_up()
    }

    /// The failure detector's verdict on the backup.
    pub fn backup_alive(&self) -> bool {
        let now = self.shared.clock.now();
        self.shared.primary.lock().backup_alive(now)
    }

    /// Link errors since the last call (authentication failures, resets, refused
    /// handshakes), oldest first, and how many older ones were discarded.
    pub fn take_errors(&self) -> (Vec<TransportError>, u64) {
        self.shared.errors.lock().take()
    }

    /// Protocol reports since the last call.
    pub fn take_reports(&self) -> Vec<PrimaryReport> {
        self.shared.primary.lock().take_reports()
    }
}

impl Drop for PrimaryService {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        // The send thread may be blocked writing to a dead backup (a full socket buffer):
        // end the link so it returns now rather than after the write timeout.
        self.shared.transport.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn poll_interval(config: &PrimaryConfig) -> Duration {
    (config.heartbeat_interval / 2).max(Duration::from_millis(1))
}

fn primary_receive_loop(s: &PrimaryShared) {
    let interval = poll_interval(s.primary.lock().config());
    let mut epoch = s.transport.link_epoch();
    let mut link_since = s.clock.now();
    let mut received = s.transport.bytes_received();
    while !s.stop.load(Ordering::SeqCst) {
        let result = s.transport.recv(interval);
        let now = s.clock.now();
        let bytes = s.transport.bytes_received();
        if bytes != received {
            received = bytes;
            s.primary.lock().on_activity(now);
        }
        let current = s.transport.link_epoch();
        if current != epoch {
            epoch = current;
            link_since = now;
            s.primary.lock().on_link_down();
        }
        match result {
            Ok(Some(m)) => {
                // Everything already buffered is handled under one lock and announced once:
                // a burst of acknowledgements costs one wake-up of the waiters. (Read first,
                // lock after: reading may wait for the writer's lock, and the primary's lock
                // must never wait on the socket.)
                let mut arrived = vec![m];
                drain_buffered(s.transport.as_ref(), &s.errors, &mut arrived);
                let mut p = s.primary.lock();
                for m in arrived {
                    p.on_message(m, now);
                }
                drop(p);
                s.progress.notify_all();
                s.wake.notify_one();
            }
            Ok(None) => {}
            Err(TransportError::LinkDown) => std::thread::sleep(interval),
            Err(e) => s.errors.lock().push(e),
        }
        // Failure detector: a link that carries nothing from the backup for
        // `failure_misses` heartbeats is dead even if TCP has not noticed yet.
        if s.transport.is_up() {
            let p = s.primary.lock();
            let limit = p.config().heartbeat_interval * p.config().failure_misses;
            let silent_link = now.saturating_since(link_since) >= limit && !p.backup_alive(now);
            drop(p);
            if silent_link {
                s.transport.reset();
            }
        }
    }
}

/// The most messages read from the transport's buffer in one go before answering.
const MAX_DRAIN: usize = 1024;
/// The most messages sent in one write.
const MAX_BATCH_MESSAGES: usize = 1024;
/// The most payload bytes (approximately) sent in one write.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Appends the messages already received and buffered (never waits), at most
/// [`MAX_DRAIN`].
fn drain_buffered(
    transport: &dyn ReplicationTransport,
    errors: &Mutex<ErrorLog>,
    arrived: &mut Vec<WireMessage>,
) {
    while arrived.len() < MAX_DRAIN {
        match transport.recv(Duration::ZERO) {
            Ok(Some(m)) => arrived.push(m),
            Ok(None) | Err(TransportError::LinkDown) => break,
            Err(e) => {
                errors.lock().push(e);
                break;
            }
        }
    }
}

/// The approximate bytes a message adds to a batch.
fn batch_size(m: &WireMessage) -> usize {
    match m {
        WireMessage::Data { payload, .. } => payload.approximate_size(),
        _ => 64,
    }
}

/// Sends whatever is waiting as soon as it is submitted: everything pending (bounded) goes
/// out in one write, so a stream of small events costs one system call and one wake-up of
/// the backup per batch instead of per message, and the backup acknowledges per batch. The
/// socket has `TCP_NODELAY`: nothing waits for Nagle's algorithm.
fn primary_send_loop(s: &PrimaryShared) {
    let interval = poll_interval(s.primary.lock().config());
    let mut batch = Vec::new();
    while !s.stop.load(Ordering::SeqCst) {
        {
            let mut p = s.primary.lock();
            p.poll(s.clock.now());
            if s.transport.is_up() {
                let mut bytes = 0;
                while batch.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
                    match p.poll_transmit() {
                        Some(m) => {
                            bytes += batch_size(&m);
                            batch.push(m);
                        }
                        None => break,
                    }
                }
            }
            if batch.is_empty() {
                let _ = s.wake.wait_for(&mut p, interval);
                continue;
            }
        }
        let result = s.transport.send_batch(&batch);
        batch.clear();
        if let Err(e) = result {
            if !matches!(e, TransportError::LinkDown) {
                s.errors.lock().push(e);
            }
            s.primary.lock().on_link_down();
        }
    }
}

struct BackupShared {
    backup: Mutex<Backup>,
    stop: AtomicBool,
    transport: Arc<dyn ReplicationTransport>,
    clock: Clock,
    errors: Mutex<ErrorLog>,
    config: BackupConfig,
}

/// The backup's replication running on its own thread.
pub struct BackupService {
    shared: Arc<BackupShared>,
    store: ReplicaStore,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupService").finish_non_exhaustive()
    }
}

impl BackupService {
    /// Starts applying what arrives over `transport` to `store`, as backup incarnation
    /// `epoch`.
    pub fn start(
        config: BackupConfig,
        store: ReplicaStore,
        epoch: u64,
        transport: Arc<dyn ReplicationTransport>,
    ) -> BackupService {
        let shared = Arc::new(BackupShared {
            backup: Mutex::new(Backup::new(config, store.clone(), epoch)),
            stop: AtomicBool::new(false),
            transport,
            clock: Clock(std::time::Instant::now()),
            errors: Mutex::new(ErrorLog::default()),
            config,
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || backup_loop(&s));
        BackupService {
            shared,
            store,
            thread: Some(thread),
        }
    }

    /// The backup's link over authenticated TCP, in one call: listens on `listen` (in the
    /// calling thread's network namespace) for the primary protecting `services`, both
    /// authenticated with `key` (Noise), and applies what it replicates to a new, empty
    /// replica.
    pub fn listen_tcp(
        listen: std::net::SocketAddr,
        key: crate::PreSharedKey,
        services: cttm_core::ServiceSet,
        config: BackupConfig,
    ) -> Result<BackupService, TransportError> {
        use crate::transport::tcp::{TcpBackupTransport, TcpConfig};
        let tcp = TcpConfig::new(crate::Security::Noise(key), services);
        let transport = TcpBackupTransport::bind(tcp, listen)?;
        Ok(BackupService::start(
            config,
            ReplicaStore::new(cttm_core::ReplicaConfig::default()),
            crate::random_epoch(),
            Arc::new(transport),
        ))
    }

    /// The replica store (a handle readers may clone).
    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    /// The failure detector's verdict on the primary.
    pub fn primary_alive(&self) -> bool {
        let now = self.shared.clock.now();
        self.shared.backup.lock().primary_alive(now)
    }

    /// True while the link is up.
    pub fn link_up(&self) -> bool {
        self.shared.transport.is_up()
    }

    /// Link errors since the last call (authentication failures included), and how many
    /// older ones were discarded.
    pub fn take_errors(&self) -> (Vec<TransportError>, u64) {
        self.shared.errors.lock().take()
    }

    /// Protocol reports since the last call.
    pub fn take_reports(&self) -> Vec<BackupReport> {
        self.shared.backup.lock().take_reports()
    }
}

impl Drop for BackupService {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn backup_loop(s: &BackupShared) {
    let interval = (s.config.heartbeat_interval / 2).max(Duration::from_millis(1));
    let mut epoch = 0;
    let mut link_since = s.clock.now();
    let mut received = s.transport.bytes_received();
    while !s.stop.load(Ordering::SeqCst) {
        let result = s.transport.recv(interval);
        let now = s.clock.now();
        let bytes = s.transport.bytes_received();
        if bytes != received {
            received = bytes;
            s.backup.lock().on_activity(now);
        }
        let current = s.transport.link_epoch();
        if current != epoch && s.transport.is_up() {
            epoch = current;
            link_since = now;
            s.backup.lock().on_link_up(now);
        }
        // Apply what arrived, then everything already buffered, then answer once (one
        // acknowledgement per batch the primary wrote).
        let mut arrived = Vec::new();
        match result {
            Ok(Some(m)) => {
                arrived.push(m);
                drain_buffered(s.transport.as_ref(), &s.errors, &mut arrived);
            }
            Ok(None) | Err(TransportError::LinkDown) => {}
            Err(e) => s.errors.lock().push(e),
        }
        let mut out = Vec::new();
        {
            let mut b = s.backup.lock();
            for m in arrived {
                b.on_message(m, now);
            }
            b.poll(now);
            if s.transport.is_up() {
                while let Some(m) = b.poll_transmit(true) {
                    out.push(m);
                }
            }
        }
        if !out.is_empty()
            && let Err(e) = s.transport.send_batch(&out)
            && !matches!(e, TransportError::LinkDown)
        {
            s.errors.lock().push(e);
        }
        if s.transport.is_up() {
            let limit = s.config.heartbeat_interval * s.config.failure_misses;
            if now.saturating_since(link_since) >= limit && !s.backup.lock().primary_alive(now) {
                s.transport.reset();
            }
        }
    }
}

fn error_messages((errors, dropped): (Vec<TransportError>, u64)) -> (Vec<String>, u64) {
    (errors.iter().map(ToString::to_string).collect(), dropped)
}

impl cttm_core::io::link::PrimaryLink for PrimaryService {
    fn submit_all(&self, messages: Vec<ReplicationMessage>) -> Result<Vec<Submitted>, SubmitError> {
        PrimaryService::submit_all(self, messages)
    }

    fn forget_closed(&self, closed_before: Instant) -> usize {
        PrimaryService::forget_closed(self, closed_before)
    }

    fn acknowledged(&self, id: &ConnectionId) -> Option<AckedOffsets> {
        PrimaryService::acknowledged(self, id)
    }

    fn unprotected(&self) -> Vec<(ConnectionId, UnprotectedReason)> {
        PrimaryService::unprotected(self)
    }

    fn acked_seq(&self) -> u64 {
        PrimaryService::acked_seq(self)
    }

    fn progress(&self) -> cttm_core::io::link::LinkProgress {
        self.with_primary(|p| cttm_core::io::link::LinkProgress {
            acked_seq: p.acked_seq(),
            last_seq: p.last_seq(),
            all_protected: p.unprotected().is_empty(),
        })
    }

    fn wait_acked(&self, seq: u64, timeout: Duration) -> bool {
        PrimaryService::wait_acked(self, seq, timeout)
    }

    fn link_up(&self) -> bool {
        PrimaryService::link_up(self)
    }

    fn backup_alive(&self) -> bool {
        PrimaryService::backup_alive(self)
    }

    fn take_errors(&self) -> (Vec<String>, u64) {
        error_messages(PrimaryService::take_errors(self))
    }

    fn take_reports(&self) -> Vec<PrimaryReport> {
        PrimaryService::take_reports(self)
    }
}

impl cttm_core::io::link::BackupLink for BackupService {
    fn primary_alive(&self) -> bool {
        BackupService::primary_alive(self)
    }

    fn link_up(&self) -> bool {
        BackupService::link_up(self)
    }

    fn take_errors(&self) -> (Vec<String>, u64) {
        error_messages(BackupService::take_errors(self))
    }

    fn take_reports(&self) -> Vec<BackupReport> {
        BackupService::take_reports(self)
    }

    fn replica(&self) -> Arc<dyn cttm_core::io::link::ReplicaAccess> {
        Arc::new(self.store.clone())
    }
}
