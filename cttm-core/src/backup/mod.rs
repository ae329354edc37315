//! The backup host's decisions, sans-IO: what the backup agent (or a server embedding it)
//! does when the primary falls silent.
//!
//! | module | decision |
//! |---|---|
//! | [`guard`] | no split brain: probe the service addresses, fence the primary, refuse and retry, or take over |

pub mod guard;

pub use guard::{
    GuardCommand, GuardConfig, Liveness, ProbeResult, Refusal, Refused, TakeoverGuard, mac_text,
};
