//! kvd (being written).
