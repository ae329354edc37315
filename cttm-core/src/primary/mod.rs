//! The primary host's decisions, sans-IO: whether the primary agent (or a server embedding
//! it) may serve the service address, and what becomes of its output in sync mode.
//!
//! | module | decision |
//! |---|---|
//! | [`ownership`] | no split brain: probe at start, non-serving on another holder, rejoin, the watch that demotes while the backup is silent |
//! | [`hold`] | sync mode's output-commit loop: hold or pass each packet, release on acknowledgement, give up on reset or unprotection, hold times, degrade |
//! | [`degrade`] | sync mode's degrade policy: when output commit is given up, and when taken up again |
//!
//! The output-commit gate itself is [`crate::commit::OutputCommit`]; [`hold`] runs it.

pub mod degrade;
pub mod hold;
pub mod ownership;

pub use degrade::{BackupHealth, DegradePolicy, DegradeReason, Transition};
pub use hold::{
    Ending, HoldChange, HoldCommand, HoldConfig, HoldDecision, HoldStats, OutputHold, decide,
    gives_up_output,
};
pub use ownership::{
    OtherHolder, OwnershipCheck, OwnershipCommand, OwnershipConfig, OwnershipEvent,
};
