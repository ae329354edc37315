//! # cttmd: the CTTM agents
//!
//! | module | role |
//! |---|---|
//! | [`options`] | the resolved settings each role runs with (what the config file and flags become) |
//! | [`config`] | TOML configuration files and command-line flags, with errors naming the key |
//! | [`primary`] | the primary agent: capture, track, replicate, output commit |
//! | [`demo`] | `cttmd demo`: a crash failover in network namespaces, with a checking client workload |
//! | [`backup`] | the backup agent: replica, shadow sessions, failure detection, takeover |
//! | [`observe`] | what an agent shows the operator: the view behind `cttmd status` and `/metrics` |

pub mod backup;
mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod observe;
pub mod options;
pub mod primary;
