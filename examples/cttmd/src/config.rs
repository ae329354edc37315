//! Configuration files and flags (being written).
