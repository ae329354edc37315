//! The backup agent (being written).
