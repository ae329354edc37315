//! Cross-crate test support for CTTM.
//!
//! - [`lab`]: real-kernel labs of network namespaces joined by veth pairs and a bridge, with
//!   cleanup on every exit path.
#![forbid(unsafe_code)]

pub mod lab;
