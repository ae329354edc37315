//! Takeover: claim the service addresses, then per connection either restore it with
//! `TCP_REPAIR` and splice it to its shadow session, or end it at once with a reset; announce
//! the addresses last.
//!
//! The order matters. The address must be local before a half-closed connection is restored
//! (the client's FIN is replayed through the local stack). The announcement comes after every
//! restore. A neighbour may still learn the new location earlier (a restored socket's window
//! probe, or its neighbour solicitation, carries the service address), so the agent holds a
//! network lock (`lock`) from before the claim until the last restore: no client segment is
//! delivered before its connection's socket exists (one that met no socket would be answered
//! with a reset by the standby daemon's listener, RFC 9293 §3.10.7.1).

use super::shadow::{Protection, Shadow};
use super::splice::{Splice, SpliceStart};
use super::{BackupError, ResetReason};
use cttm_core::event::Side;
use cttm_core::seq::SeqNumber;
use cttm_core::snapshot::{ConnectionSnapshot, Restorability, TcpState};
use cttm_core::time::Instant;
use cttm_replicate::ReplicaStore;
use cttm_restore::migrate::resolve_neighbours;
use cttm_restore::repair::restore_connection;
use cttm_restore::takeover::{AnnounceConfig, NetlinkTakeover};
use cttm_restore::{ClockPolicy, RestoreError, RestoreOptions};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far the restored TCP timestamp clock moves forward when the backup's wall clock is
/// behind the capture time of the snapshot (RFC 7323 §5.3: TSvals must never go back, a
/// forward jump is harmless).
const CLOCK_CORRECTION: Duration = Duration::from_secs(1);

/// Now, as the capture sources stamp frames: microseconds since the Unix epoch. The restored
/// timestamp clock continues the primary's from the snapshot's observation time.
pub(crate) fn epoch_now() -> Instant {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Instant::from_micros(micros)
}

/// The longest the takeover waits for the clients' link-layer addresses.
const NEIGHBOUR_BUDGET: Duration = Duration::from_millis(200);

/// Resolves the link-layer address of every client (or its router) before the service
/// address is claimed: a restored socket sends at once (window probe, reset), and without a
/// neighbour entry the kernel would solicit it *from the service address*, teaching the
/// client that the address lives here before every connection is restored (RFC 826 merge,
/// RFC 4861 §7.2.3); its next segment on a connection not restored yet would draw a reset.
/// Returns as soon as every client answered, or after [`NEIGHBOUR_BUDGET`].
pub(crate) fn resolve_clients(connections: &[ConnectionSnapshot]) {
    let mut clients: Vec<IpAddr> = connections.iter().map(|s| s.id.client.ip()).collect();
    clients.sort();
    clients.dedup();
    if clients.is_empty() {
        return;
    }
    let answered = resolve_neighbours(&clients, NEIGHBOUR_BUDGET);
    tracing::debug!(
        clients = clients.len(),
        answered,
        "client neighbours resolved"
    );
}

/// Adds every service address to the interface.
pub(crate) fn claim(
    takeover: &mut NetlinkTakeover,
    addresses: &[IpAddr],
    prefix_len: u8,
) -> Result<(), BackupError> {
    for &address in addresses {
        let outcome = takeover
            .claim_address(address, prefix_len)
            .map_err(BackupError::Claim)?;
        tracing::info!(%address, prefix_len, ?outcome, "service address claimed");
    }
    Ok(())
}

/// Tells the neighbours the service addresses live here now: the first frame for each
/// address at once, the repetitions (which only cover a lost frame) from a thread, whose
/// handle is returned. A failed announcement is not fatal (neighbours learn the address when
/// their cache entries expire): it is logged.
pub(crate) fn announce(
    takeover: NetlinkTakeover,
    addresses: &[IpAddr],
) -> Option<std::thread::JoinHandle<()>> {
    let config = takeover.announce_config();
    let first = takeover.with_announce_config(AnnounceConfig { count: 1, ..config });
    announce_each(&first, addresses);
    if config.count <= 1 {
        return None;
    }
    let rest = first.with_announce_config(AnnounceConfig {
        count: config.count - 1,
        ..config
    });
    let addresses = addresses.to_vec();
    Some(std::thread::spawn(move || {
        std::thread::sleep(config.interval);
        announce_each(&rest, &addresses);
    }))
}

fn announce_each(takeover: &NetlinkTakeover, addresses: &[IpAddr]) {
    for &address in addresses {
        match takeover.announce_address(address) {
            Ok(frames) => tracing::info!(%address, frames, "service address announced"),
            Err(e) => {
                tracing::error!(%address, error = %e, "announcing the service address failed")
            }
        }
    }
}

/// What happens to one connection at takeover.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Restored and spliced.
    Restored(Box<Splice>),
    /// Ended with a reset (or nothing to restore), for this reason.
    Reset(ResetReason),
}

/// Decides and carries out what happens to the connection of `snapshot` at takeover.
pub(crate) fn take_over_connection(
    store: &ReplicaStore,
    snapshot: &ConnectionSnapshot,
    shadow: Option<Shadow>,
) -> Outcome {
    let id = snapshot.id;
    let promoted = established_after_syn_ack(snapshot);
    let snapshot = promoted.as_ref().unwrap_or(snapshot);
    let reason = match blocking_reason(store, snapshot, shadow.as_ref()) {
        Ok(start) => {
            let Some(shadow) = shadow else {
                unreachable!("a splice start needs a shadow session");
            };
            match restore_and_splice(snapshot, shadow, start) {
                Ok(splice) => return Outcome::Restored(Box::new(splice)),
                Err(reason) => reason,
            }
        }
        Err(reason) => reason,
    };
    if matches!(reason, ResetReason::HandshakeIncomplete) {
        // No synchronized state to reset: the client's next segment meets no socket here
        // and the kernel answers it with a reset (RFC 9293 §3.10.7.1).
        return Outcome::Reset(reason);
    }
    if let Err(e) = reset_connection(snapshot) {
        tracing::error!(connection = %id, error = %e, "sending the reset failed");
    }
    Outcome::Reset(reason)
}

/// The snapshot to restore for a connection whose SYN-ACK the primary sent but whose third
/// ACK the backup never held (state SYN-RECEIVED, [`Restorability::HandshakeIncomplete`]).
///
/// The primary releases a SYN-ACK once the backup holds the handshake (output commit), so the
/// client may already be ESTABLISHED and about to send its first request: leaving the
/// connection unrestored would answer that request with a reset. It is restored ESTABLISHED
/// at ISS+1 / IRS+1 instead, as if the third ACK had arrived (RFC 9293 §3.10.7.3: that ACK
/// only moves SYN-RECEIVED to ESTABLISHED). A client that never got the SYN-ACK keeps
/// retransmitting its SYN, which the restored socket answers with an ACK that a SYN-SENT
/// client ignores; its connect then fails as on any handshake lost in the network.
fn established_after_syn_ack(snapshot: &ConnectionSnapshot) -> Option<ConnectionSnapshot> {
    let waiting_for_third_ack = snapshot.restorability == Restorability::HandshakeIncomplete
        && snapshot.state == TcpState::SynReceived;
    waiting_for_third_ack.then(|| ConnectionSnapshot {
        state: TcpState::Established,
        restorability: Restorability::Restorable,
        ..snapshot.clone()
    })
}

/// Where the client's bytes of a restorable connection start, or why it must be reset.
struct ClientStart {
    /// Restored-stream bytes the shadow already has.
    skip: u64,
    /// Restore with `rcv_nxt` at this client offset and an empty receive queue instead of
    /// the replica's (the shadow holds client bytes the primary had not acknowledged).
    acknowledge_to: Option<u64>,
    /// Client offset of the first byte the restored socket delivers.
    client_from: u64,
    /// Server offset after the restored send queue (the primary's last sent byte).
    server_from: u64,
}

fn blocking_reason(
    store: &ReplicaStore,
    snapshot: &ConnectionSnapshot,
    shadow: Option<&Shadow>,
) -> Result<ClientStart, ResetReason> {
    match snapshot.restorability {
        Restorability::Restorable => {}
        Restorability::HandshakeIncomplete => return Err(ResetReason::HandshakeIncomplete),
        Restorability::Closed => return Err(ResetReason::NotRestorable("closed".into())),
        Restorability::Unsafe(reason) => {
            return Err(ResetReason::NotRestorable(format!("{reason:?}")));
        }
    }
    let Some(shadow) = shadow else {
        return Err(ResetReason::NoShadow("no shadow session".into()));
    };
    match &shadow.status {
        Protection::Protected => {}
        Protection::Diverged { offset } => return Err(ResetReason::Diverged { offset: *offset }),
        Protection::Unprotected(reason) => return Err(ResetReason::NoShadow(reason.clone())),
    }
    let Some((client_acked, client_end, server_end)) = store.with_replica(|r| {
        r.record(&snapshot.id).map(|rec| {
            let client = rec.stream(Side::Client);
            (
                client.acked().min(client.received_end()),
                client.received_end(),
                rec.stream(Side::Server).received_end(),
            )
        })
    }) else {
        return Err(ResetReason::NoShadow("connection left the replica".into()));
    };
    if shadow.compare.primary_end() != server_end {
        return Err(ResetReason::NoShadow(format!(
            "the shadow compared server bytes up to {} but the primary sent up to {server_end}",
            shadow.compare.primary_end()
        )));
    }
    // The restored socket delivers client bytes from here on.
    let restored_from = client_acked - snapshot.receive.bytes.len() as u64;
    let shadow_end = shadow.client.end();
    if restored_from > shadow_end {
        return Err(ResetReason::MissingClientBytes {
            from: shadow_end,
            to: restored_from,
        });
    }
    debug_assert!(client_end >= shadow_end);
    // Every client byte the shadow holds is safe with the backup: acknowledge them all. The
    // primary may have acknowledged them without the backup learning it (async mode); a
    // client that believes them delivered would never send them again, and the restored
    // socket would wait for them forever. One the primary had not acknowledged is
    // retransmitted by the client and dropped as a duplicate (RFC 9293 §3.10.7.4).
    if !snapshot.receive.fin && shadow_end > client_acked {
        return Ok(ClientStart {
            skip: 0,
            acknowledge_to: Some(shadow_end),
            client_from: shadow_end,
            server_from: server_end,
        });
    }
    Ok(ClientStart {
        skip: shadow_end - restored_from,
        acknowledge_to: None,
        client_from: restored_from,
        server_from: server_end,
    })
}

fn restore_and_splice(
    snapshot: &ConnectionSnapshot,
    mut shadow: Shadow,
    start: ClientStart,
) -> Result<Splice, ResetReason> {
    let Some(standby) = shadow.standby.take() else {
        return Err(ResetReason::NoShadow("the shadow session is closed".into()));
    };
    let restored_at = epoch_now();
    let client = match start.acknowledge_to {
        None => restore(snapshot),
        Some(offset) => {
            let mut adjusted = snapshot.clone();
            adjusted.receive.next = SeqNumber::from_offset(snapshot.client_isn.add(1), offset);
            adjusted.receive.bytes.clear();
            restore(&adjusted)
        }
    }
    .map_err(|e| ResetReason::RestoreFailed(e.to_string()))?;
    let start = SpliceStart {
        client,
        standby,
        pending_client: std::mem::take(&mut shadow.client.pending),
        skip: start.skip,
        client_fin_known: shadow.client.fin.is_some(),
        standby_shut: shadow.client.shut,
        compare: std::mem::take(&mut shadow.compare),
        client_base: snapshot.client_isn.add(1),
        server_base: snapshot.server_isn.add(1),
        client_from: start.client_from,
        server_from: start.server_from,
        restored_at,
    };
    Splice::start(snapshot.id, start)
        .map_err(|e| ResetReason::RestoreFailed(format!("preparing the splice: {e}")))
}

pub(crate) fn restore_options() -> RestoreOptions {
    RestoreOptions::at(epoch_now()).with_clock(ClockPolicy::Correct {
        margin: CLOCK_CORRECTION,
    })
}

/// Restores one connection at the replica's sequence numbers.
fn restore(snapshot: &ConnectionSnapshot) -> Result<TcpStream, RestoreError> {
    restore_connection(snapshot, &restore_options()).map(|c| c.into_stream())
}

/// Ends a connection with a reset carrying the right sequence numbers: a socket restored in
/// ESTABLISHED with empty queues at `snd_nxt` = the primary's last sent byte and `rcv_nxt` =
/// the client bytes acknowledged, closed with `SO_LINGER` 0 (the kernel sends a RST with
/// `SEG.SEQ = snd_nxt`, which the client accepts: RFC 9293 §3.10.7.4, RFC 5961 §3.2). A
/// client that did not get every byte the primary sent answers with a challenge ACK, which
/// meets no socket here and is answered with a reset at the exact sequence number.
pub(crate) fn reset_connection(snapshot: &ConnectionSnapshot) -> Result<(), RestoreError> {
    let stream = restore_connection(&reset_snapshot(snapshot), &restore_options())?;
    let stream = stream.into_stream();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|source| RestoreError::Io {
            id: snapshot.id,
            step: "setsockopt(SO_LINGER 0)",
            source,
        })?;
    drop(stream);
    Ok(())
}

/// The snapshot of a socket that only exists to send a reset (queues empty, established).
fn reset_snapshot(snapshot: &ConnectionSnapshot) -> ConnectionSnapshot {
    let mut s = snapshot.clone();
    s.restorability = Restorability::Restorable;
    s.state = TcpState::Established;
    s.send.una = s.send.una.add(s.send.sent_unacked().len() as u32);
    s.send.bytes.clear();
    s.send.unsent = 0;
    s.send.fin = false;
    s.receive.bytes.clear();
    s.receive.fin = false;
    if s.clock.is_none() {
        s.options.timestamps = false;
    }
    s
}

/// The connections of `store` to take over (closed ones have nothing left to continue).
pub(crate) fn connections(store: &ReplicaStore) -> Vec<ConnectionSnapshot> {
    store
        .snapshots()
        .into_iter()
        .filter(|s| !matches!(s.restorability, Restorability::Closed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::event::{ConnectionEvent, EventKind, Handshake};
    use cttm_core::record::{ClientRetention, ConnectionRecord};
    use cttm_core::{ConnectionId, Instant};

    fn syn_received_snapshot() -> ConnectionSnapshot {
        let id = ConnectionId {
            client: "198.18.0.1:40000".parse().expect("addr"),
            server: "198.18.0.10:7000".parse().expect("addr"),
        };
        let handshake = Handshake {
            client_mss: Some(1460),
            client_syn_window: 64240,
            server_syn_window: 65160,
            ..Handshake::without_options(SeqNumber(1000), SeqNumber(5000))
        };
        ConnectionRecord::open(id, Instant::ZERO, handshake, ClientRetention::DropOnAck).snapshot()
    }

    #[test]
    fn a_connection_waiting_for_its_third_ack_is_restored_established() {
        let snapshot = syn_received_snapshot();
        assert_eq!(snapshot.state, TcpState::SynReceived);
        assert_eq!(snapshot.restorability, Restorability::HandshakeIncomplete);
        let promoted = established_after_syn_ack(&snapshot).expect("promoted");
        assert_eq!(promoted.state, TcpState::Established);
        assert_eq!(promoted.restorability, Restorability::Restorable);
        // ISS+1 and IRS+1: what the client's third ACK and first data segment carry.
        assert_eq!(promoted.send.una, SeqNumber(5001));
        assert_eq!(promoted.receive.next, SeqNumber(1001));
        assert!(promoted.send.bytes.is_empty() && promoted.receive.bytes.is_empty());
    }

    #[test]
    fn other_connections_are_left_as_they_are() {
        let mut record = {
            let s = syn_received_snapshot();
            let handshake = Handshake::without_options(s.client_isn, s.server_isn);
            ConnectionRecord::open(s.id, Instant::ZERO, handshake, ClientRetention::DropOnAck)
        };
        let third_ack = ConnectionEvent {
            id: record.id(),
            at: Instant::from_millis(1),
            kind: EventKind::ClientAck {
                offset: 0,
                seq_offset: 0,
                window: 64240,
                timestamps: None,
            },
        };
        record.apply(&third_ack).expect("third ACK");
        assert_eq!(established_after_syn_ack(&record.snapshot()), None);
        let mid_stream = ConnectionRecord::open(
            record.id(),
            Instant::ZERO,
            Handshake::mid_stream(SeqNumber(1), SeqNumber(2)),
            ClientRetention::DropOnAck,
        );
        assert_eq!(established_after_syn_ack(&mid_stream.snapshot()), None);
    }
}
