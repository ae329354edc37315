//! The drivers' one clock for the core's machines, which read none: a monotonic origin taken
//! when the driver starts, and every time given to a machine as microseconds since it.

use std::time::{Duration, Instant};

/// A monotonic origin; times before it map to the origin.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreClock {
    origin: Instant,
}

impl CoreClock {
    /// A clock whose origin is now.
    pub(crate) fn start() -> CoreClock {
        CoreClock {
            origin: Instant::now(),
        }
    }

    /// `at` as the core's time.
    pub(crate) fn at(&self, at: Instant) -> cttm_core::Instant {
        let micros = at.saturating_duration_since(self.origin).as_micros();
        cttm_core::Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// The time now, as the core's time.
    pub(crate) fn now(&self) -> cttm_core::Instant {
        self.at(Instant::now())
    }

    /// A core time back as a monotonic instant.
    pub(crate) fn instant(&self, at: cttm_core::Instant) -> Instant {
        self.origin + Duration::from_micros(at.micros())
    }
}
