//! The primary agent (being written).
