//! # cttmd: the CTTM agents
//!
//! Glue around the library's drivers: configuration and flags, building the agents, the
//! status socket and metrics endpoint, the demo. Every decision is in `cttm-core`.
//!
//! | module | role |
//! |---|---|
//! | [`options`] | the resolved settings each role runs with (what the config file and flags become) |
//! | [`config`] | TOML configuration files and command-line flags, with errors naming the key |
//! | [`primary`] | the primary agent (`cttm_capture::primary`) built from the options: the TCP link, the probe, the address takeover |
//! | [`demo`] | `cttmd demo`: a crash failover in network namespaces, with a checking client workload |
//! | [`backup`] | the backup agent (`cttm_restore::backup`) built from the options: the TCP link, the standby, probe, fence and watch capture |
//! | [`observe`] | what an agent shows the operator: the view behind `cttmd status` and `/metrics` |

pub mod backup;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod observe;
pub mod options;
pub mod primary;
