//! A fault-injecting wrapper for tests: drops, delays, duplicates and reorders the messages a
//! transport sends, and cuts the link, each decided by a seeded random generator so every
//! failing case replays exactly.
//!
//! Delays are counted in operations (calls to `send` or `recv` on the wrapper), not in time,
//! so a run does not depend on the machine's speed. A delayed message is delivered after
//! later ones: that is how reordering happens.

use super::{ReplicationTransport, TransportError};
use crate::wire::WireMessage;
use parking_lot::Mutex;
use std::time::Duration;

/// How often each fault happens, per message sent (probabilities in `0.0..=1.0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultPlan {
    /// The message is lost.
    pub drop: f64,
    /// The message is delivered twice.
    pub duplicate: f64,
    /// The message is held for 1..=`max_delay_ops` operations, so later ones overtake it.
    pub delay: f64,
    /// The longest hold, in operations.
    pub max_delay_ops: u32,
    /// The link is cut (messages in flight lost) and restored `cut_ops` operations later.
    pub cut: f64,
    /// How long a cut lasts, in operations.
    pub cut_ops: u32,
}

impl FaultPlan {
    /// No faults.
    pub const NONE: FaultPlan = FaultPlan {
        drop: 0.0,
        duplicate: 0.0,
        delay: 0.0,
        max_delay_ops: 0,
        cut: 0.0,
        cut_ops: 0,
    };
}

/// Something that can cut and restore the link under a transport.
pub trait LinkSwitch: Send + Sync {
    /// Breaks the link.
    fn cut(&self);
    /// Re-establishes it.
    fn restore(&self);
}

impl LinkSwitch for super::memory::MemoryLinkControl {
    fn cut(&self) {
        super::memory::MemoryLinkControl::cut(self);
    }
    fn restore(&self) {
        super::memory::MemoryLinkControl::restore(self);
    }
}

/// Counters of injected faults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Messages dropped.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages delayed.
    pub delayed: u64,
    /// Cuts.
    pub cuts: u64,
}

#[derive(Debug)]
struct FaultState {
    plan: FaultPlan,
    rng: SplitMix64,
    ops: u64,
    held: Vec<(u64, WireMessage)>,
    restore_at: Option<u64>,
    stats: FaultStats,
}

/// Wraps a transport and injects faults into what it sends.
pub struct FaultyTransport<T> {
    inner: T,
    switch: Option<Box<dyn LinkSwitch>>,
    state: Mutex<FaultState>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for FaultyTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTransport")
            .field("inner", &self.inner)
            .field("state", &self.state)
            .finish()
    }
}

impl<T: ReplicationTransport> FaultyTransport<T> {
    /// Wraps `inner`, with faults from `plan` drawn from `seed`. Cuts need `switch`.
    pub fn new(inner: T, plan: FaultPlan, seed: u64, switch: Option<Box<dyn LinkSwitch>>) -> Self {
        FaultyTransport {
            inner,
            switch,
            state: Mutex::new(FaultState {
                plan,
                rng: SplitMix64(seed),
                ops: 0,
                held: Vec::new(),
                restore_at: None,
                stats: FaultStats::default(),
            }),
        }
    }

    /// Changes the plan (for example [`FaultPlan::NONE`] to let a run settle). Held messages
    /// are still delivered when due.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state.lock().plan = plan;
    }

    /// The faults injected so far.
    pub fn stats(&self) -> FaultStats {
        self.state.lock().stats
    }

    /// Delivers every held message now and restores a cut link.
    pub fn flush(&self) {
        let mut s = self.state.lock();
        s.restore_at = None;
        if let Some(sw) = &self.switch {
            sw.restore();
        }
        for (_, m) in std::mem::take(&mut s.held) {
            let _ = self.inner.send(&m);
        }
    }

    /// One operation passes: due held messages go out, a cut ends when due.
    fn tick(&self, s: &mut FaultState) {
        s.ops += 1;
        if s.restore_at.is_some_and(|t| s.ops >= t) {
            s.restore_at = None;
            if let Some(sw) = &self.switch {
                sw.restore();
            }
        }
        let ops = s.ops;
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut s.held)
            .into_iter()
            .partition(|(t, _)| *t <= ops);
        s.held = keep;
        for (_, m) in due {
            let _ = self.inner.send(&m);
        }
    }
}

impl<T: ReplicationTransport> ReplicationTransport for FaultyTransport<T> {
    fn send(&self, message: &WireMessage) -> Result<(), TransportError> {
        let mut s = self.state.lock();
        self.tick(&mut s);
        let plan = s.plan;
        if self.switch.is_some() && s.restore_at.is_none() && s.rng.chance(plan.cut) {
            s.stats.cuts += 1;
            s.held.clear();
            s.restore_at = Some(s.ops + u64::from(plan.cut_ops.max(1)));
            if let Some(sw) = &self.switch {
                sw.cut();
            }
            return Err(TransportError::LinkDown);
        }
        if s.rng.chance(plan.drop) {
            s.stats.dropped += 1;
            return Ok(());
        }
        if s.rng.chance(plan.delay) {
            s.stats.delayed += 1;
            let hold = 1 + s.rng.below(u64::from(plan.max_delay_ops.max(1)));
            let at = s.ops + hold;
            s.held.push((at, message.clone()));
            return Ok(());
        }
        self.inner.send(message)?;
        if s.rng.chance(plan.duplicate) {
            s.stats.duplicated += 1;
            self.inner.send(message)?;
        }
        Ok(())
    }

    fn recv(&self, timeout: Duration) -> Result<Option<WireMessage>, TransportError> {
        {
            let mut s = self.state.lock();
            self.tick(&mut s);
        }
        self.inner.recv(timeout)
    }

    fn is_up(&self) -> bool {
        self.inner.is_up()
    }

    fn link_epoch(&self) -> u64 {
        self.inner.link_epoch()
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a small, seedable generator, plenty for faults.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
