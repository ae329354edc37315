//! Time as a parameter: the core never reads a clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time in microseconds from an origin the caller chooses (capture timestamps,
/// a simulation clock). Only differences between instants of one source are meaningful.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant { micros: 0 };

    /// An instant `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Instant {
        Instant { micros }
    }

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Instant {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// Microseconds since the origin.
    pub const fn micros(self) -> u64 {
        self.micros
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let add = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant {
            micros: self.micros.saturating_add(add),
        }
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// The instant `d` earlier, the origin at the earliest.
    fn sub(self, d: Duration) -> Instant {
        let sub = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant {
            micros: self.micros.saturating_sub(sub),
        }
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.micros / 1_000_000,
            self.micros % 1_000_000
        )
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A driver's monotonic origin: turns the `std::time::Instant`s a driver reads into the core's
/// [`Instant`] (microseconds since the origin) and back. It holds an instant the driver read;
/// it reads no clock itself (a driver writes `origin.at(std::time::Instant::now())`).
#[derive(Clone, Copy, Debug)]
pub struct MonotonicOrigin {
    origin: std::time::Instant,
}

impl MonotonicOrigin {
    /// An origin at `origin` (a driver passes `std::time::Instant::now()` when it starts).
    pub fn new(origin: std::time::Instant) -> MonotonicOrigin {
        MonotonicOrigin { origin }
    }

    /// `at` as the core's time; instants before the origin map to the origin.
    pub fn at(&self, at: std::time::Instant) -> Instant {
        let micros = at.saturating_duration_since(self.origin).as_micros();
        Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    /// A core time back as a monotonic instant.
    pub fn instant(&self, at: Instant) -> std::time::Instant {
        self.origin + Duration::from_micros(at.micros())
    }
}
