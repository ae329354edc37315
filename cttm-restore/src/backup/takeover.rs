//! The takeover's steps, carried out: resolving the clients' neighbours, claiming and
//! announcing the service addresses, restoring a connection with `TCP_REPAIR` and splicing it
//! to its shadow session, or resetting it. The order and every per-connection decision are
//! `cttm_core::backup::takeover`'s (`TakeoverPlan`, `plan_connection`).

use super::resume::ResumedConnection;
use super::shadow::Shadow;
use super::splice::Splice;
use crate::migrate::resolve_neighbours;
use crate::repair::restore_connection;
use crate::takeover::{AnnounceConfig, ClaimError, NetlinkTakeover};
use crate::{ClockPolicy, RestoreError, RestoreOptions};
use cttm_core::backup::resume::plan_resume;
use cttm_core::backup::splice::SpliceStart;
use cttm_core::backup::takeover::{
    ClientStart, ConnectionPlan, ReplicaEnds, ResetReason, plan_connection, reset_snapshot,
};
use cttm_core::backup::watch::ClientWatch;
use cttm_core::io::link::ReplicaAccess;
use cttm_core::snapshot::ConnectionSnapshot;
use cttm_core::time::Instant;
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
/// address is claimed (why: `cttm_core::backup::takeover`). Returns as soon as every client
/// answered, or after [`NEIGHBOUR_BUDGET`].
pub(crate) fn resolve_clients(clients: &[IpAddr]) {
    let answered = resolve_neighbours(clients, NEIGHBOUR_BUDGET);
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
) -> Result<(), ClaimError> {
    for &address in addresses {
        let outcome = takeover.claim_address(address, prefix_len)?;
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
    /// Checkpointed: restored at its checkpoint, for the application.
    Resumed(ResumedConnection),
    /// Ended with a reset (or nothing to restore), for this reason.
    Reset(ResetReason),
}

/// What the takeover plans for a connection: a checkpointed one is resumed by the
/// application (`resumable`: one takes resumed connections) or reset, any other follows
/// its shadow session (`cttm_core::backup::takeover::plan_connection`).
fn plan(
    store: &dyn ReplicaAccess,
    snapshot: &ConnectionSnapshot,
    shadow: Option<&Shadow>,
    resumable: bool,
) -> ConnectionPlan {
    let (ends, resume) = store
        .read(|r| {
            let record = r.record(&snapshot.id);
            let resume = record
                .filter(|rec| rec.checkpoint().is_some())
                .map(|rec| resumable.then(|| plan_resume(rec)));
            (record.map(ReplicaEnds::of), resume)
        })
        .unwrap_or((None, None));
    match resume {
        Some(Some(plan)) => plan,
        Some(None) => ConnectionPlan::Reset {
            snapshot: reset_snapshot(snapshot),
            reason: ResetReason::NoApplication,
        },
        None => plan_connection(snapshot, shadow.map(|s| &s.session), ends),
    }
}

/// Carries out what the takeover plans for the connection of `snapshot`: restore and splice
/// it, restore it for the application, or reset it.
pub(crate) fn take_over_connection(
    store: &dyn ReplicaAccess,
    snapshot: &ConnectionSnapshot,
    shadow: Option<Shadow>,
    resumable: bool,
) -> Outcome {
    let (reset, reason) = match plan(store, snapshot, shadow.as_ref(), resumable) {
        ConnectionPlan::Restore {
            snapshot: restore,
            start,
        } => match restore_and_splice(&restore, shadow, start) {
            Ok(splice) => return Outcome::Restored(Box::new(splice)),
            Err(reason) => (reset_snapshot(snapshot), reason),
        },
        ConnectionPlan::Resume(plan) => match restore(&plan.snapshot) {
            Ok(stream) => {
                return Outcome::Resumed(ResumedConnection {
                    stream,
                    checkpoint: plan.checkpoint,
                    discarded: plan.discarded,
                });
            }
            Err(e) => (
                reset_snapshot(snapshot),
                ResetReason::RestoreFailed(e.to_string()),
            ),
        },
        ConnectionPlan::Reset { snapshot, reason } => (snapshot, reason),
        ConnectionPlan::Abandon(reason) => return Outcome::Reset(reason),
    };
    if let Err(e) = reset_connection(&reset) {
        tracing::error!(connection = %snapshot.id, error = %e, "sending the reset failed");
    }
    Outcome::Reset(reason)
}

fn restore_and_splice(
    snapshot: &ConnectionSnapshot,
    shadow: Option<Shadow>,
    start: ClientStart,
) -> Result<Splice, ResetReason> {
    let Some(mut shadow) = shadow else {
        return Err(ResetReason::NoShadow("no shadow session".into()));
    };
    let Some(standby) = shadow.standby.take() else {
        return Err(ResetReason::NoShadow("the shadow session is closed".into()));
    };
    let restored_at = epoch_now();
    let client = restore(snapshot).map_err(|e| ResetReason::RestoreFailed(e.to_string()))?;
    let session = &mut shadow.session;
    let start = SpliceStart {
        pending_client: session.take_pending_client(),
        skip: start.skip,
        client_fin_known: session.client().fin_known(),
        standby_shut: session.client().shut(),
        compare: session.take_comparison(),
        client_from: start.client_from,
        server_from: start.server_from,
    };
    Splice::start(
        snapshot.id,
        client,
        standby,
        start,
        ClientWatch::new(snapshot, restored_at),
    )
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

/// Ends a connection with a reset carrying the right sequence numbers: restores `reset`
/// (a `cttm_core::backup::takeover::reset_snapshot`) and closes it with `SO_LINGER` 0.
pub(crate) fn reset_connection(reset: &ConnectionSnapshot) -> Result<(), RestoreError> {
    let stream = restore_connection(reset, &restore_options())?;
    let stream = stream.into_stream();
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|source| RestoreError::Io {
            id: reset.id,
            step: "setsockopt(SO_LINGER 0)",
            source,
        })?;
    drop(stream);
    Ok(())
}
