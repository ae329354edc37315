//! # cttm-capture: where the tracker's input comes from
//!
//! Every source implements [`CaptureSource`]: it hands out batches of captured frames, each
//! with its capture time and link type, without a copy per frame where the backend allows it.
//!
//! | source | module | feature |
//! |---|---|---|
//! | in-memory (tests, simulation) | [`memory`] | always |
//! | pcap and pcapng files (replay, and writing what an agent saw) | [`pcap`] | always |
//! | AF_PACKET live capture, TPACKET_V3 ring, kernel BPF filter | `af_packet` | `af-packet` |
//! | NFQUEUE, with verdicts the caller gives later (output commit) | `nfqueue` | `nfqueue` |
//!
//! It also hosts the primary host's driver, [`primary::PrimaryAgent`] (features `af-packet`
//! and `nfqueue`): it runs the core's primary machines (tracker, output hold, degrade policy,
//! ownership check) over these sources, with the replication link, the probe and the address
//! takeover as the core's trait objects ([`cttm_core::io`]). A server embeds a primary with
//! `PrimaryAgent::builder(services, interface).link(|mark| ...).build()?.spawn()`, the link
//! being `cttm_replicate::PrimaryService::connect_tcp(.., Some(mark))`.
#![cfg_attr(
    not(any(feature = "af-packet", feature = "nfqueue")),
    forbid(unsafe_code)
)]

#[cfg(feature = "af-packet")]
pub mod af_packet;
pub mod bpf;
pub mod feed;
pub mod memory;
#[cfg(feature = "nfqueue")]
pub mod nfqueue;
pub mod pcap;
#[cfg(all(feature = "af-packet", feature = "nfqueue"))]
pub mod primary;

pub use feed::{DropWatch, FeedOutcome, feed_tracker};
pub use memory::MemorySource;

pub use cttm_core::io::capture::{CaptureError, CaptureSource, CaptureStats, CapturedFrame};
