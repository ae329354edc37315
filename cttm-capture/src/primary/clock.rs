//! The drivers' one clock for the core's machines, which read none: a monotonic origin taken
//! when the driver starts ([`cttm_core::time::MonotonicOrigin`]), and the time now given to a
//! machine as microseconds since it.

use cttm_core::time::MonotonicOrigin;
use std::time::Instant;

/// A monotonic origin; times before it map to the origin.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreClock {
    origin: MonotonicOrigin,
}

impl CoreClock {
    /// A clock whose origin is now.
    pub(crate) fn start() -> CoreClock {
        CoreClock {
            origin: MonotonicOrigin::new(Instant::now()),
        }
    }

    /// The time now, as the core's time.
    pub(crate) fn now(&self) -> cttm_core::Instant {
        self.origin.at(Instant::now())
    }
}
