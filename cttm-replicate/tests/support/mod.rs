//! What the replication tests and benchmarks share (the benchmarks include this file with
//! `#[path]`).

use cttm_core::SeqNumber;
use cttm_core::event::Handshake;

/// The handshake of an ordinary Linux-to-Linux connection (MSS 1460, window scale 7, SACK,
/// no timestamps) with the given initial sequence numbers; tests that need other options
/// change them with struct update syntax.
pub(crate) fn handshake(client_isn: u32, server_isn: u32) -> Handshake {
    Handshake {
        client_isn: SeqNumber(client_isn),
        server_isn: SeqNumber(server_isn),
        client_mss: Some(1460),
        server_mss: Some(1460),
        client_window_scale: Some(7),
        server_window_scale: Some(7),
        sack_permitted: true,
        timestamps: false,
        client_syn_tsval: None,
        server_syn_tsval: None,
        client_syn_window: 64_240,
        server_syn_window: 65_160,
        mid_stream: false,
    }
}
