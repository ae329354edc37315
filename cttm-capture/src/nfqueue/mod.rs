//! NFQUEUE source: the service's outgoing TCP segments, held until the caller gives a verdict
//! (and, with [`QueueDirections::Both`], its incoming ones, for tracking in the same order).
//!
//! This is the output-commit point of DESIGN.md: an outgoing segment is held in the kernel
//! queue until the backup has acknowledged every byte the segment carries or acknowledges,
//! then accepted. Frames are bare IP packets ([`LinkType::RawIp`]).
//!
//! - [`NfqueueSource::read_held`] visits queued packets with their [`PacketId`]; they stay
//!   held until [`NfqueueSource::accept`], [`NfqueueSource::accept_batch`],
//!   [`NfqueueSource::accept_all`] or [`NfqueueSource::drop_packet`].
//! - As a [`CaptureSource`], packets are visited the same way; with
//!   [`NfqueueConfig::hold`] off they are accepted right after the visit.
//! - The rules ([`rules`]) are installed by [`NfqueueSource::open`] in the calling thread's
//!   network namespace and removed by [`NfqueueSource::remove_rules`] or on drop.
//! - The agent's own traffic (replication) must never be held: sockets marked with
//!   [`NfqueueSource::bypass_mark`] (`SO_MARK`) skip the queue.
//! - Fail-open is off by default: when the kernel queue is full, or nobody is bound to it,
//!   packets are dropped (TCP retransmits them later) rather than let out unreplicated.
//!
//! Held packets live in the kernel; this source keeps their netlink messages. On drop the
//! rules are removed first, then every held packet gets the fail-open verdict (accepted if
//! fail-open is on, dropped otherwise).
//!
//! GSO: packets are queued unsegmented (`NFQA_CFG_F_GSO`), so one queued packet can carry
//! up to 64 KiB, with a partial checksum; payloads are never modified, so that is safe. The
//! copy range is 65,535 bytes: an IPv6 super-packet longer than that is visited cut (the
//! parser reports it truncated) but released whole.
//!
//! Waiting: the `nfq` crate does not expose its socket descriptor, so waiting for the first
//! packet polls the socket without blocking, sleeping 50 µs growing to 1 ms between tries.

pub mod rules;

use crate::{CaptureError, CaptureSource, CaptureStats, CapturedFrame};
use cttm_core::{Instant, LinkType, ServiceSet};
use nfq::{Message, Queue, Verdict};
pub use rules::QueueDirections;
use rules::{QueueRules, RuleError};
use std::collections::HashMap;
use std::io;
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// The default socket mark exempting traffic from the queue ("CTM" and 1).
pub const DEFAULT_BYPASS_MARK: u32 = 0x4354_4d01;

/// Settings of an [`NfqueueSource`].
#[derive(Clone, Debug)]
pub struct NfqueueConfig {
    /// The queue number (also names the rule chain, `CTTM-Q<n>`).
    pub queue: u16,
    /// The services whose outgoing segments are queued.
    pub services: ServiceSet,
    /// Packets carrying this mark (`SO_MARK` on the sending socket) bypass the queue.
    pub bypass_mark: u32,
    /// Let packets through when the queue is full or nobody listens (default false).
    pub fail_open: bool,
    /// Packets the kernel queues at most before overflowing (default 16,384).
    pub queue_max_len: u32,
    /// Install and remove the iptables rules (default true). Off: the caller manages them.
    pub install_rules: bool,
    /// As a [`CaptureSource`], keep visited packets held (default true); off: accept each
    /// right after its visit.
    pub hold: bool,
    /// Which segments the rules queue (default [`QueueDirections::Outgoing`]). With
    /// [`QueueDirections::Both`] the service's incoming segments are queued too (INPUT):
    /// visit them and accept them at once, they only need tracking.
    pub directions: QueueDirections,
}

impl NfqueueConfig {
    /// Defaults for `services` on queue `queue`.
    pub fn new(queue: u16, services: ServiceSet) -> Self {
        NfqueueConfig {
            queue,
            services,
            bypass_mark: DEFAULT_BYPASS_MARK,
            fail_open: false,
            queue_max_len: 16_384,
            install_rules: true,
            hold: true,
            directions: QueueDirections::Outgoing,
        }
    }
}

/// Why the queue could not be opened or a verdict not given.
#[derive(Debug, Error)]
pub enum NfqueueError {
    /// The service set is empty.
    #[error("no service endpoint configured: add at least one service address and port")]
    NoServices,
    /// The netfilter netlink socket could not be opened.
    #[error(
        "opening the NFQUEUE netlink socket failed: {0} (needs CAP_NET_ADMIN; is nfnetlink_queue available?)"
    )]
    Open(#[source] io::Error),
    /// Binding the queue number failed (another process may already own it).
    #[error(
        "binding NFQUEUE {queue} failed: {source} (is another process using this queue number?)"
    )]
    Bind {
        /// The queue number.
        queue: u16,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Configuring the queue failed.
    #[error("configuring NFQUEUE ({what}) failed: {source}")]
    Configure {
        /// The setting.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The firewall rules could not be installed or removed.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// No packet with this id is held (already given a verdict, or never seen).
    #[error("no held packet with id {0}: it was already given a verdict or never queued")]
    UnknownPacket(PacketId),
    /// Sending a verdict failed; the packet stays in the kernel queue.
    #[error("sending the verdict for packet {id} failed: {source}")]
    Verdict {
        /// The packet.
        id: PacketId,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

pub use cttm_core::io::capture::{HeldFrame, PacketId};

/// The queue, its rules, and the packets held.
pub struct NfqueueSource {
    // `Drop` removes the rules and settles the held packets before the queue closes.
    queue: Queue,
    config: NfqueueConfig,
    rules: Option<QueueRules>,
    held: HashMap<u32, Message>,
    stats: CaptureStats,
    /// The network namespace the queue lives in (its drop counters are per namespace).
    namespace: Option<std::fs::File>,
    last_drop_refresh: Option<std::time::Instant>,
    /// The queue's netlink socket, found when the queue was opened, so an idle read can
    /// `poll(2)` it instead of sleeping (the `nfq` crate does not expose it); `None` falls
    /// back to short sleeps.
    socket: Option<std::os::fd::RawFd>,
}

impl std::fmt::Debug for NfqueueSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfqueueSource")
            .field("config", &self.config)
            .field("rules", &self.rules)
            .field("held", &self.held.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Descriptors of this process's netlink netfilter sockets (from `/proc/self/fd`).
fn netlink_sockets() -> Vec<std::os::fd::RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<std::os::fd::RawFd>().ok())
        .filter(|&fd| is_netfilter_socket(fd))
        .collect()
}

/// True when `fd` is an `AF_NETLINK` socket of protocol `NETLINK_NETFILTER` (the kernel's
/// `SO_DOMAIN` / `SO_PROTOCOL`).
fn is_netfilter_socket(fd: std::os::fd::RawFd) -> bool {
    let option = |name: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes of a c_int and its length; on a
        // descriptor that is not a socket (or closed meanwhile) the call only fails.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        (r == 0).then_some(value)
    };
    option(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
        && option(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
}

/// The netfilter socket that appeared since `before`, if exactly one did (another thread
/// opening one at the same moment makes it ambiguous: then the source polls by sleeping).
fn the_new_netfilter_socket(before: &[std::os::fd::RawFd]) -> Option<std::os::fd::RawFd> {
    let mut new = netlink_sockets()
        .into_iter()
        .filter(|fd| !before.contains(fd));
    let fd = new.next()?;
    new.next().is_none().then_some(fd)
}

/// Waits until `fd` is readable or `timeout` passes.
fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut entry = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a sub-millisecond wait still waits instead of spinning.
    let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `entry` is one valid pollfd for the duration of the call; `fd` belongs to the
    // queue this source owns, which outlives the call.
    unsafe {
        libc::poll(&raw mut entry, 1, millis);
    }
}

fn configure(what: &'static str) -> impl FnOnce(io::Error) -> NfqueueError {
    move |source| NfqueueError::Configure { what, source }
}

impl NfqueueSource {
    /// Binds the queue and installs the rules in the calling thread's network namespace.
    pub fn open(config: NfqueueConfig) -> Result<NfqueueSource, NfqueueError> {
        if config.services.endpoints().is_empty() {
            return Err(NfqueueError::NoServices);
        }
        let before = netlink_sockets();
        let mut queue = Queue::open().map_err(NfqueueError::Open)?;
        let socket = the_new_netfilter_socket(&before);
        queue
            .bind(config.queue)
            .map_err(|source| NfqueueError::Bind {
                queue: config.queue,
                source,
            })?;
        queue
            .set_fail_open(config.queue, config.fail_open)
            .map_err(configure("fail-open"))?;
        queue
            .set_queue_max_len(config.queue, config.queue_max_len)
            .map_err(configure("queue length"))?;
        // GSO super-segments are queued whole instead of being segmented first; their
        // checksums may be partial, which is fine since payloads are never modified.
        queue
            .set_recv_gso(config.queue, true)
            .map_err(configure("GSO"))?;
        queue.set_nonblocking(true);
        let rules = if config.install_rules {
            Some(QueueRules::install_directions(
                config.queue,
                &config.services,
                config.bypass_mark,
                config.fail_open,
                config.directions,
            )?)
        } else {
            None
        };
        Ok(NfqueueSource {
            queue,
            config,
            rules,
            held: HashMap::new(),
            stats: CaptureStats::default(),
            namespace: std::fs::File::open(THREAD_NETNS).ok(),
            last_drop_refresh: None,
            socket,
        })
    }

    /// The mark whose packets skip the queue: set it with `SO_MARK` on replication sockets.
    pub fn bypass_mark(&self) -> u32 {
        self.config.bypass_mark
    }

    /// The queue number.
    pub fn queue_number(&self) -> u16 {
        self.config.queue
    }

    /// The installed rules, if this source manages them and they are still installed.
    pub fn rules(&self) -> Option<&QueueRules> {
        self.rules.as_ref()
    }

    /// Removes the rules now (they are also removed on drop). Packets already queued stay
    /// held.
    pub fn remove_rules(&mut self) -> Result<(), NfqueueError> {
        if let Some(mut rules) = self.rules.take() {
            rules.remove()?;
        }
        Ok(())
    }

    /// Packets held.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Ids of the packets held, in queue order.
    pub fn held_ids(&self) -> Vec<PacketId> {
        let mut ids: Vec<PacketId> = self.held.keys().map(|id| PacketId(*id)).collect();
        ids.sort();
        ids
    }

    /// Visits queued packets (waiting at most `timeout` for the first); each stays held.
    pub fn read_held(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(HeldFrame<'_>),
    ) -> Result<usize, CaptureError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut pause = Duration::from_micros(50);
        let mut visited = 0usize;
        loop {
            match self.queue.recv() {
                Ok(message) => {
                    // Stamped at reception, never with `Message::get_timestamp()`: nfq 0.2.5
                    // reads that attribute through a misaligned pointer (undefined behaviour;
                    // debug builds abort) whenever something on the host turned on receive
                    // timestamps. Queueing delay is microseconds, so reception time serves.
                    let at = instant_of(SystemTime::now());
                    let id = message.get_packet_id();
                    visit(HeldFrame {
                        id: PacketId(id),
                        frame: CapturedFrame {
                            at,
                            link: LinkType::RawIp,
                            data: message.get_payload(),
                        },
                    });
                    self.held.insert(id, message);
                    visited += 1;
                    self.stats.frames += 1;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if visited > 0 {
                        break;
                    }
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match self.socket {
                        Some(fd) => wait_readable(fd, left),
                        None => {
                            std::thread::sleep(pause.min(left));
                            pause = (pause * 2).min(Duration::from_millis(1));
                        }
                    }
                }
                Err(source) => {
                    return Err(CaptureError::Io {
                        what: "receiving from NFQUEUE",
                        source,
                    });
                }
            }
        }
        let stale = self
            .last_drop_refresh
            .is_none_or(|t| t.elapsed() >= DROP_REFRESH_INTERVAL);
        if stale {
            self.refresh_drops();
        }
        Ok(visited)
    }

    /// Updates [`CaptureStats::dropped`] from the kernel's counters of this queue
    /// (`/proc/net/netfilter/nfnetlink_queue`: `queue_dropped` + `user_dropped`, packets lost
    /// because the queue was full or could not be delivered). Returns false when the counters
    /// cannot be read from this thread (it is not in the queue's network namespace, or the
    /// file is missing); the previous value stays. [`NfqueueSource::read_held`] calls it
    /// every 100 ms. With fail-open on, packets let through because the queue was full are
    /// not counted by the kernel.
    pub fn refresh_drops(&mut self) -> bool {
        self.last_drop_refresh = Some(std::time::Instant::now());
        let Some(namespace) = &self.namespace else {
            return false;
        };
        if !same_file(namespace, THREAD_NETNS) {
            return false;
        }
        let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
        else {
            return false;
        };
        match queue_drops(&table, self.config.queue) {
            Some(dropped) => {
                self.stats.dropped = dropped;
                true
            }
            None => false,
        }
    }

    fn verdict(&mut self, id: PacketId, verdict: Verdict) -> Result<(), NfqueueError> {
        let mut message = self
            .held
            .remove(&id.0)
            .ok_or(NfqueueError::UnknownPacket(id))?;
        message.set_verdict(verdict);
        self.queue
            .verdict(message)
            .map_err(|source| NfqueueError::Verdict { id, source })
    }

    /// Lets one held packet out.
    pub fn accept(&mut self, id: PacketId) -> Result<(), NfqueueError> {
        self.verdict(id, Verdict::Accept)
    }

    /// Lets several held packets out, in the order given. Stops at the first error (the
    /// packets before it are out).
    pub fn accept_batch(&mut self, ids: &[PacketId]) -> Result<(), NfqueueError> {
        ids.iter().try_for_each(|id| self.accept(*id))
    }

    /// Lets every held packet out, in queue order; returns how many.
    pub fn accept_all(&mut self) -> Result<usize, NfqueueError> {
        let ids = self.held_ids();
        self.accept_batch(&ids)?;
        Ok(ids.len())
    }

    /// Discards one held packet (TCP will retransmit it).
    pub fn drop_packet(&mut self, id: PacketId) -> Result<(), NfqueueError> {
        self.verdict(id, Verdict::Drop)
    }
}

/// The calling thread's network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";
const DROP_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

fn same_file(file: &std::fs::File, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `queue_dropped + user_dropped` of `queue` in the kernel's queue table (one line per
/// queue: number, peer port id, queued, copy mode, copy range, queue_dropped, user_dropped,
/// last id, 1; net/netfilter/nfnetlink_queue.c `seq_show`).
fn queue_drops(table: &str, queue: u16) -> Option<u64> {
    table.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        let queue_dropped: u64 = fields.get(5)?.parse().ok()?;
        let user_dropped: u64 = fields.get(6)?.parse().ok()?;
        Some(queue_dropped + user_dropped)
    })
}

fn instant_of(t: SystemTime) -> Instant {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Instant::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl CaptureSource for NfqueueSource {
    fn read_batch(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(CapturedFrame<'_>),
    ) -> Result<usize, CaptureError> {
        let mut ids = Vec::new();
        let n = self.read_held(timeout, &mut |held| {
            ids.push(held.id);
            visit(held.frame);
        })?;
        if !self.config.hold {
            self.accept_batch(&ids).map_err(|e| CaptureError::Io {
                what: "accepting visited NFQUEUE packets",
                source: io::Error::other(e.to_string()),
            })?;
        }
        Ok(n)
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }
}

impl cttm_core::io::capture::HeldPacketQueue for NfqueueSource {
    type VerdictError = NfqueueError;

    fn read_held(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(HeldFrame<'_>),
    ) -> Result<usize, CaptureError> {
        NfqueueSource::read_held(self, timeout, visit)
    }

    fn accept(&mut self, ids: &[PacketId]) -> Result<(), NfqueueError> {
        self.accept_batch(ids)
    }

    fn discard(&mut self, id: PacketId) -> Result<(), NfqueueError> {
        self.drop_packet(id)
    }

    fn held_ids(&self) -> Vec<PacketId> {
        NfqueueSource::held_ids(self)
    }
}

impl Drop for NfqueueSource {
    fn drop(&mut self) {
        // Rules first, so nothing new is queued; then settle what is held.
        if let Some(mut rules) = self.rules.take() {
            let _ = rules.remove();
        }
        let verdict = if self.config.fail_open {
            Verdict::Accept
        } else {
            Verdict::Drop
        };
        for (_, mut message) in self.held.drain() {
            message.set_verdict(verdict);
            let _ = self.queue.verdict(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_service_set_is_refused() {
        let err = NfqueueSource::open(NfqueueConfig::new(7, ServiceSet::default()))
            .expect_err("no services");
        assert!(matches!(err, NfqueueError::NoServices));
    }

    #[test]
    fn drop_counters_are_read_from_the_queue_table() {
        let table = "    0  23105     0 2 65535     0     0        7  1\n    3  23106    12 2 65535     5     2       90  1\n";
        assert_eq!(queue_drops(table, 3), Some(7));
        assert_eq!(queue_drops(table, 0), Some(0));
        assert_eq!(queue_drops(table, 4), None);
        assert_eq!(queue_drops("garbage\n3 x", 3), None);
    }

    #[test]
    fn chain_names_follow_the_queue_number() {
        assert_eq!(rules::chain_name(0), "CTTM-Q0");
        assert_eq!(rules::chain_name(65535), "CTTM-Q65535");
    }

    #[test]
    fn only_outgoing_segments_are_queued_by_default() {
        let config = NfqueueConfig::new(1, ServiceSet::default());
        assert_eq!(config.directions, QueueDirections::Outgoing);
    }
}
