//! The primary host's decisions, sans-IO: what the primary agent (or a server embedding it)
//! does with its held output when the backup is slow or gone.
//!
//! | module | decision |
//! |---|---|
//! | [`degrade`] | sync mode's degrade policy: when output commit is given up, and when taken up again |
//!
//! The output-commit gate itself is [`crate::commit::OutputCommit`].

pub mod degrade;

pub use degrade::{BackupHealth, DegradePolicy, DegradeReason, Transition};
