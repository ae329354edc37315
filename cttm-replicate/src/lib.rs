//! cttm-replicate
