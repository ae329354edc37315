//! Cross-crate test support for CTTM.
//!
//! - [`conversation`]: a generator of random, valid TCP conversations that knows their ground
//!   truth, for property tests, benchmarks and example captures.
//! - [`lab`]: real-kernel labs of network namespaces joined by veth pairs and a bridge, with
//!   cleanup on every exit path.
#![forbid(unsafe_code)]

pub mod conversation;
pub mod lab;
