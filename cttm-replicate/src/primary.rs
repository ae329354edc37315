//! The primary's side of the protocol: the sans-IO endpoint is
//! [`cttm_core::replication::primary`], re-exported here; [`PrimaryService`](crate::PrimaryService)
//! runs it over a transport.

pub use cttm_core::replication::primary::{
    AckedOffsets, Primary, PrimaryConfig, PrimaryReport, SubmitError, Submitted, UnprotectedReason,
};
