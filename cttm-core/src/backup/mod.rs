//! The backup host's decisions, sans-IO: what the backup agent (or a server embedding it)
//! does when the primary falls silent.
//!
//! | module | decision |
//! |---|---|
//! | [`guard`] | no split brain: probe the service addresses, fence the primary, refuse and retry, or take over |
//! | [`shadow`] | shadow sessions: the client's bytes fed to the standby daemon, its output compared with the primary's (divergence) |
//! | [`resume`] | at takeover: a checkpointed connection restored at its last checkpoint for the application (bytes after it discarded) |
//! | [`takeover`] | the takeover's order (neighbours, lock, claim, connections, answers, re-seat, unlock, announce) and what happens to each connection (restore, reset, abandon) |
//! | [`splice`] | after takeover: the bytes between a restored socket and its shadow session |
//! | [`watch`] | after takeover: clients ahead of what the backup holds (reset), clients that never got the SYN-ACK (withdraw), re-seating at the client's acknowledgement |

pub mod guard;
pub mod resume;
pub mod shadow;
pub mod splice;
pub mod takeover;
pub mod watch;

pub use guard::{
    GuardCommand, GuardConfig, Liveness, ProbeResult, Refusal, Refused, TakeoverGuard, mac_text,
};
