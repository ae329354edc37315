//! What an agent shows the operator. The [`AgentView`] each agent publishes while it runs
//! (role, mode, replication lag, every connection with its protection state, counters, the
//! hold-time histogram) and the handle ([`Observer`]) through which the agent publishes it
//! and the operator's requests (`rejoin`) reach the agent are library types of
//! [`cttm_core::observe`]; this module serves them.
//!
//! The status socket (`cttmd status`) and the Prometheus metrics endpoint read the same view,
//! so both always agree:
//!
//! - [`StatusServer`]: the agent's Unix socket (`status`, `status json`, `rejoin`), and
//!   [`query_agent`], its client (`cttmd status`, `cttmd rejoin`);
//! - [`render_status`]: the human-readable status (a summary, then one row per connection);
//! - [`render_metrics`] and [`MetricsServer`]: Prometheus text metrics at `GET /metrics`.

pub mod client;
pub mod metrics;
pub mod status_socket;
pub mod status_text;

pub use client::{CLIENT_TIMEOUT, MAX_ANSWER_LEN, StatusClientError, query_agent};
pub use metrics::{MetricsError, MetricsServer, render_metrics};
pub use status_socket::{
    MAX_REQUEST_LEN, MAX_SOCKET_PATH_LEN, RejoinWait, StatusCommand, StatusServer,
    StatusSocketError,
};
pub use status_text::render_status;

// The view and its handle are library types (`cttm_core::observe`): an embedding server reads
// the same view as `cttmd status`.
pub use cttm_core::observe::{
    AgentRole, AgentView, CommitState, ConnectionView, Counters, HOLD_TIME_BOUNDS_US, Histogram,
    Observer, ProtectionState, ViewSubscription,
};
