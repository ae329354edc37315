//! Cross-crate test support for CTTM.
//!
//! - [`conversation`]: a generator of random, valid TCP conversations that knows their ground
//!   truth, for property tests, benchmarks and example captures.
//! - [`failover_lab`]: the three-host crash-failover lab (client, primary, backup) with kvd
//!   on both servers, shared by the failover tests and the blackout benchmark.
//! - [`temp_dir`]: temporary directories removed on drop.
//! - [`rng`]: the seeded random generator every test and benchmark draws from.
//! - [`lab`]: real-kernel labs of network namespaces joined by veth pairs and a bridge, with
//!   cleanup on every exit path.
#![forbid(unsafe_code)]

pub mod conversation;
pub mod failover_lab;
pub mod lab;
pub mod rng;
pub mod temp_dir;
