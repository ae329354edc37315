//! An in-memory [`RestoreBackend`] that records what it was asked to restore, for tests of the
//! code that plans and drives restores (it applies the same checks as the kernel backend, so a
//! snapshot refused here is refused there too).

use crate::{RestoreBackend, RestoreError, RestoreOptions, check_restorable, plan_server_tsval};
use cttm_core::ConnectionId;
use cttm_core::snapshot::ConnectionSnapshot;
use std::collections::HashSet;

/// One restore the simulated backend performed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RestoreRecord {
    /// The snapshot restored.
    pub snapshot: ConnectionSnapshot,
    /// The options used.
    pub options: RestoreOptions,
    /// The server TSval the restore would have installed (`None` without timestamps).
    pub server_tsval: Option<u32>,
}

/// The endpoint a simulated restore returns: the connection it stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SimulatedEndpoint {
    /// The restored connection.
    pub id: ConnectionId,
    /// Its position in [`SimulatedRestoreBackend::restored`].
    pub index: usize,
}

/// Records restores instead of performing them. Like the kernel, it refuses a second live
/// restore of the same 4-tuple with [`RestoreError::AddressInUse`] until [`Self::close`].
#[derive(Debug, Default)]
pub struct SimulatedRestoreBackend {
    restored: Vec<RestoreRecord>,
    live: HashSet<ConnectionId>,
    fail_next: Option<RestoreError>,
}

impl SimulatedRestoreBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every restore performed so far, in order.
    pub fn restored(&self) -> &[RestoreRecord] {
        &self.restored
    }

    /// True when `id` has been restored and not closed.
    pub fn is_live(&self, id: &ConnectionId) -> bool {
        self.live.contains(id)
    }

    /// Forgets the live socket of `id` (as closing the restored socket would).
    pub fn close(&mut self, id: &ConnectionId) -> bool {
        self.live.remove(id)
    }

    /// Makes the next restore fail with `error` (fault injection for callers' tests).
    pub fn fail_next_with(&mut self, error: RestoreError) {
        self.fail_next = Some(error);
    }
}

impl RestoreBackend for SimulatedRestoreBackend {
    type Endpoint = SimulatedEndpoint;

    fn restore(
        &mut self,
        snapshot: &ConnectionSnapshot,
        options: &RestoreOptions,
    ) -> Result<SimulatedEndpoint, RestoreError> {
        if let Some(error) = self.fail_next.take() {
            return Err(error);
        }
        check_restorable(snapshot)?;
        let server_tsval = plan_server_tsval(snapshot, options)?;
        if self.live.contains(&snapshot.id) {
            return Err(RestoreError::AddressInUse {
                id: snapshot.id,
                step: "bind",
            });
        }
        self.live.insert(snapshot.id);
        self.restored.push(RestoreRecord {
            snapshot: snapshot.clone(),
            options: *options,
            server_tsval,
        });
        Ok(SimulatedEndpoint {
            id: snapshot.id,
            index: self.restored.len() - 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cttm_core::event::{Handshake, UnsafeReason};
    use cttm_core::record::{ClientRetention, ConnectionRecord};
    use cttm_core::snapshot::Restorability;
    use cttm_core::{Instant, SeqNumber};

    /// A connection waiting for its third ACK, promoted to established (what a restore of a
    /// fresh connection looks like), without timestamps.
    fn snapshot() -> ConnectionSnapshot {
        let mut s = ConnectionRecord::open(
            ConnectionId {
                client: "198.18.0.1:40000".parse().expect("addr"),
                server: "198.18.0.2:80".parse().expect("addr"),
            },
            Instant::ZERO,
            Handshake::without_options(SeqNumber(1000), SeqNumber(5000)),
            ClientRetention::DropOnAck,
        )
        .snapshot();
        s.state = cttm_core::TcpState::Established;
        s.restorability = Restorability::Restorable;
        s
    }

    #[test]
    fn the_simulated_backend_records_restores_and_refuses_duplicates() {
        let mut backend = SimulatedRestoreBackend::new();
        let s = snapshot();
        let options = RestoreOptions::at(Instant::from_millis(10_005));
        let endpoint = backend.restore(&s, &options).expect("restore");
        assert_eq!(endpoint.id, s.id);
        assert_eq!(backend.restored().len(), 1);
        assert_eq!(backend.restored()[0].server_tsval, None);
        assert!(backend.is_live(&s.id));
        assert!(matches!(
            backend.restore(&s, &options),
            Err(RestoreError::AddressInUse { .. })
        ));
        assert!(backend.close(&s.id));
        backend.restore(&s, &options).expect("restore again");
        assert_eq!(backend.restored().len(), 2);
        let mut bad = snapshot();
        bad.restorability = Restorability::Unsafe(UnsafeReason::MidStream);
        assert!(backend.restore(&bad, &options).is_err());
        backend.fail_next_with(RestoreError::PermissionDenied);
        let mut other = snapshot();
        other.id.client.set_port(40001);
        assert!(matches!(
            backend.restore(&other, &options),
            Err(RestoreError::PermissionDenied)
        ));
        assert_eq!(backend.restored().len(), 2);
    }
}
