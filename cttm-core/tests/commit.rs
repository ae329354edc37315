//! The output-commit gate: exact releases for crafted sequences of held packets and backup
//! acknowledgements.

use cttm_core::ConnectionId;
use cttm_core::commit::{BackupHolds, CommitRequirement, CommitStats, OutputCommit};
use std::collections::HashMap;

fn id(n: u16) -> ConnectionId {
    ConnectionId {
        client: std::net::SocketAddr::from(([198, 18, 0, 2], 40_000 + n)),
        server: "198.18.0.1:80".parse().unwrap(),
    }
}

fn offsets(client: u64, server: u64) -> CommitRequirement {
    CommitRequirement::Offsets {
        client,
        server,
        checkpoint: None,
    }
}

fn holds(client: u64, server: u64) -> Option<BackupHolds> {
    Some(BackupHolds {
        client,
        server,
        checkpoint: None,
    })
}

/// What the backup holds, per connection, as a lookup the gate can call.
struct Backup(HashMap<ConnectionId, BackupHolds>);

impl Backup {
    fn new() -> Backup {
        Backup(HashMap::new())
    }
    fn set(&mut self, id: ConnectionId, client: u64, server: u64) {
        self.0.insert(
            id,
            BackupHolds {
                client,
                server,
                checkpoint: None,
            },
        );
    }
    fn lookup(&self) -> impl FnMut(&ConnectionId) -> Option<BackupHolds> + '_ {
        |id| self.0.get(id).copied()
    }
}

#[test]
fn requirements_compare_both_offsets_and_need_the_handshake() {
    assert!(!CommitRequirement::Handshake.is_met_by(None));
    assert!(CommitRequirement::Handshake.is_met_by(holds(0, 0)));
    assert!(!offsets(0, 0).is_met_by(None));
    assert!(offsets(0, 0).is_met_by(holds(0, 0)));
    assert!(offsets(10, 20).is_met_by(holds(10, 20)));
    assert!(offsets(10, 20).is_met_by(holds(11, 25)));
    assert!(!offsets(10, 20).is_met_by(holds(9, 20)));
    assert!(!offsets(10, 20).is_met_by(holds(10, 19)));
}

#[test]
fn a_syn_ack_waits_for_the_handshake_then_data_for_its_offsets() {
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    gate.hold(1u32, id(1), CommitRequirement::Handshake);
    gate.hold(2, id(1), offsets(100, 0)); // ACK of 100 client bytes
    gate.hold(3, id(1), offsets(100, 1448)); // first server segment
    gate.hold(4, id(1), offsets(100, 2896)); // second server segment
    assert_eq!(gate.len(), 4);
    assert_eq!(gate.release(backup.lookup()), Vec::<u32>::new());

    backup.set(id(1), 0, 0); // the backup holds the Opened event only
    assert_eq!(gate.release(backup.lookup()), vec![1]);
    backup.set(id(1), 99, 2896); // one client byte short: nothing moves past packet 2
    assert_eq!(gate.release(backup.lookup()), Vec::<u32>::new());
    backup.set(id(1), 100, 1500);
    assert_eq!(gate.release(backup.lookup()), vec![2, 3]);
    assert_eq!(gate.held_for(&id(1)), 1);
    backup.set(id(1), 100, 2896);
    assert_eq!(gate.release(backup.lookup()), vec![4]);
    assert!(gate.is_empty());
    assert_eq!(
        gate.stats(),
        CommitStats {
            held: 4,
            released: 4,
            released_unprotected: 0
        }
    );
}

#[test]
fn a_later_packet_never_overtakes_an_earlier_one_of_its_connection() {
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    // A retransmission can carry a smaller requirement than the packet held before it.
    gate.hold("new data", id(1), offsets(50, 3000));
    gate.hold("retransmission", id(1), offsets(50, 1000));
    backup.set(id(1), 50, 2000);
    assert_eq!(gate.release(backup.lookup()), Vec::<&str>::new());
    backup.set(id(1), 50, 3000);
    assert_eq!(
        gate.release(backup.lookup()),
        vec!["new data", "retransmission"]
    );
}

#[test]
fn connections_are_independent_and_releases_keep_hold_order() {
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    gate.hold(10u32, id(1), offsets(0, 100));
    gate.hold(20, id(2), offsets(0, 100));
    gate.hold(11, id(1), offsets(0, 200));
    gate.hold(21, id(2), offsets(0, 200));
    gate.hold(30, id(3), offsets(5, 0));
    // Connection 2 is further along than connection 1; 3 is unknown to the backup.
    backup.set(id(1), 0, 100);
    backup.set(id(2), 0, 200);
    assert_eq!(gate.release(backup.lookup()), vec![10, 20, 21]);
    assert_eq!(gate.held_for(&id(1)), 1);
    assert_eq!(gate.held_for(&id(2)), 0);
    assert_eq!(gate.held_for(&id(3)), 1);
    let mut waiting: Vec<_> = gate.connections().copied().collect();
    waiting.sort();
    assert_eq!(waiting, vec![id(1), id(3)]);
    backup.set(id(1), 0, 200);
    backup.set(id(3), 5, 0);
    assert_eq!(gate.release(backup.lookup()), vec![11, 30]);
    assert!(gate.is_empty());
}

#[test]
fn a_closed_or_forgotten_connection_gives_up_its_packets_at_once() {
    let mut gate = OutputCommit::new();
    let backup = Backup::new();
    gate.hold(1u32, id(1), offsets(10, 10));
    gate.hold(2, id(2), offsets(10, 10));
    gate.hold(3, id(1), offsets(20, 10));
    assert_eq!(gate.release_connection(&id(1)), vec![1, 3]);
    assert_eq!(gate.release_connection(&id(1)), Vec::<u32>::new());
    assert_eq!(gate.len(), 1);
    assert_eq!(gate.release(backup.lookup()), Vec::<u32>::new());
    gate.hold(4, id(3), CommitRequirement::Handshake);
    assert_eq!(gate.release_all(), vec![2, 4]);
    assert!(gate.is_empty());
    assert_eq!(
        gate.stats(),
        CommitStats {
            held: 4,
            released: 0,
            released_unprotected: 4
        }
    );
}

#[test]
fn the_backup_losing_a_connection_holds_its_packets_again() {
    // An unprotected connection (acknowledged offsets unknown) holds even packets whose
    // offsets the backup acknowledged earlier.
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    backup.set(id(1), 100, 100);
    gate.hold(1u32, id(1), offsets(100, 100));
    assert_eq!(gate.release(backup.lookup()), vec![1]);
    gate.hold(2, id(1), offsets(100, 100));
    backup.0.clear();
    assert_eq!(gate.release(backup.lookup()), Vec::<u32>::new());
    backup.set(id(1), 100, 100);
    assert_eq!(gate.release(backup.lookup()), vec![2]);
}

#[test]
fn a_fin_is_one_offset_and_leaves_only_once_the_backup_holds_it() {
    // 100 client bytes then the client's FIN (offset 100), 50 server bytes then the server's
    // FIN (offset 50). Requirements and holdings are in sequence space.
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    gate.hold(1u32, id(1), offsets(101, 50)); // ACK of the client's FIN
    gate.hold(2, id(1), offsets(101, 51)); // the server's FIN
    // The backup holds every byte of both streams but neither FIN: nothing leaves.
    backup.set(id(1), 100, 50);
    assert_eq!(gate.release(backup.lookup()), Vec::<u32>::new());
    // The client's FIN is held: its acknowledgement leaves, the server's FIN still waits.
    backup.set(id(1), 101, 50);
    assert_eq!(gate.release(backup.lookup()), vec![1]);
    backup.set(id(1), 101, 51);
    assert_eq!(gate.release(backup.lookup()), vec![2]);
    assert!(gate.is_empty());
}

#[test]
fn the_longest_held_packet_is_the_first_held_still_waiting() {
    let mut gate = OutputCommit::new();
    let mut backup = Backup::new();
    assert_eq!(gate.longest_held(), None);
    gate.hold(1u32, id(1), offsets(0, 10));
    gate.hold(2, id(2), offsets(0, 10));
    gate.hold(3, id(1), offsets(0, 20));
    assert_eq!(gate.longest_held(), Some(&1));
    backup.set(id(1), 0, 10);
    assert_eq!(gate.release(backup.lookup()), vec![1]);
    assert_eq!(gate.longest_held(), Some(&2), "across connections");
    gate.release_connection(&id(2));
    assert_eq!(gate.longest_held(), Some(&3));
}
