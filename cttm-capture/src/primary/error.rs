//! What can stop the primary agent.

use crate::CaptureError;
use crate::nfqueue::NfqueueError;
use thiserror::Error;

/// Why [`PrimaryAgent::run`](super::PrimaryAgent::run) stopped with an error. Errors of the replication
/// link are not here: the link reconnects by itself, and they are logged.
#[derive(Debug, Error)]
pub enum PrimaryError {
    /// The options name no service endpoint.
    #[error("no service endpoint configured: set `services` to at least one address:port")]
    NoServices,
    /// The AF_PACKET capture (async mode) could not be opened.
    #[error(
        "opening the capture on interface {interface:?} failed: {source} (check `interface` names the service network's interface in this namespace)"
    )]
    OpenCapture {
        /// The interface.
        interface: String,
        /// What failed.
        #[source]
        source: CaptureError,
    },
    /// The NFQUEUE queue or its rules (sync mode) could not be set up.
    #[error("setting up NFQUEUE {queue} failed: {source} (pick another `queue` if it is in use)")]
    OpenQueue {
        /// The queue number.
        queue: u16,
        /// What failed.
        #[source]
        source: NfqueueError,
    },
    /// A required backend was not given to the builder.
    #[error("the primary agent needs {0}: give it to the builder")]
    Missing(&'static str),
    /// The agent's thread panicked (a bug: please report it with the log).
    #[error("the primary agent's thread panicked")]
    Panicked,
    /// Reading captured or queued packets failed.
    #[error("reading the service's packets failed: {0}; restart the agent")]
    Capture(#[source] CaptureError),
    /// A verdict on a queued packet could not be given (sync mode): the packet stays queued.
    #[error("releasing a held packet failed: {0}; restart the agent")]
    Verdict(#[source] NfqueueError),
}
