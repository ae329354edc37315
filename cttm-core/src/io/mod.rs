//! The traits at every I/O edge, with their contracts. The core calls none of them: drivers
//! do, and backends implement them, so a driver takes its backends as trait objects and no
//! backend crate depends on another.
//!
//! | module | edge | implemented by |
//! |---|---|---|
//! | [`capture`] | captured frames in, with deferred verdicts for held packets | `cttm-capture` (AF_PACKET, NFQUEUE, pcap, memory) |
//! | [`link`] | the replication link as the agents see it: submit, acknowledgements, liveness, the backup's replica and its changes | `cttm-replicate` (`PrimaryService`, `BackupService`, `ReplicaStore`) |
//! | [`restore`] | a connection's server side recreated from a snapshot | `cttm-restore` (`TCP_REPAIR`, simulated) |
//! | [`takeover`] | claiming, releasing and announcing a service address | `cttm-restore` (`NetlinkTakeover`) |
//! | [`probe`] | asking the service network whether another host holds an address | `cttm-restore` (ARP probe, DAD) |
//! | [`fence`] | making sure a silent primary no longer serves (the operator's command) | `cttm-restore` (`CommandFence`) |
//! | [`standby`] | a connection to the standby daemon for a shadow session | `cttm-restore` (`TcpStandby`) |

pub mod capture;
pub mod fence;
pub mod link;
pub mod probe;
pub mod restore;
pub mod standby;
pub mod takeover;
