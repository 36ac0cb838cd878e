//! The memory policy's config, its clamped working copy, and the byte
//! rounding every part of the policy shares (a leaf: nothing here imports
//! the rest of the policy).

use crate::human::{nonzero, number, FieldError, Range, Span};
use crate::units::*;
use serde::{Deserialize, Serialize};

/// Tunables of the memory policy: the agent's `[memory]` config section
/// itself (sizes and spans as people write them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// false: ebb observes and says what it would do, and moves no balloon.
    pub enabled: bool,
    /// Memory ebb may hand to guests in total. None: host total − host_reserve.
    pub pool: Option<Bytes>,
    /// Host memory kept for the host itself: ebb keeps host available memory above it.
    pub host_reserve: Bytes,
    /// Idle memory tax rate τ in [0, 1): ESX's default 0.75.
    pub idle_tax: f64,
    /// Adaptive step bounds for reclaim (the seed's [min, max] rate).
    pub step_min: Bytes,
    pub step_max: Bytes,
    /// No change smaller than max(dead_band, dead_band_fraction × current).
    pub dead_band: Bytes,
    pub dead_band_fraction: f64,
    /// A balloon with no progress for this long is stuck (Xen squeezed: 5 s).
    pub stuck_after: Span,
    /// Free memory a guest keeps above what it uses: max(headroom_min, headroom_fraction × used).
    pub headroom_min: Bytes,
    pub headroom_fraction: f64,
    /// A guest whose usable memory falls below this fraction of its size is under pressure.
    pub low_free_fraction: f64,
    /// Major faults per second above which a guest is under pressure.
    pub major_fault_rate: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            enabled: true,
            pool: None,
            host_reserve: Bytes::from_gib(1),
            idle_tax: 0.75,
            step_min: Bytes::from_mib(32),
            step_max: Bytes::from_mib(512),
            dead_band: Bytes::from_mib(1),
            dead_band_fraction: 0.0025,
            stuck_after: Span::from_secs(5),
            headroom_min: Bytes::from_mib(64),
            headroom_fraction: 0.2,
            low_free_fraction: 0.1,
            major_fault_rate: 100.0,
        }
    }
}

impl MemoryConfig {
    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        number("memory.idle_tax", self.idle_tax, Range::ClosedOpen(0.0, 1.0), " (0.75 is ESX's default)")?;
        for (name, v) in [
            ("dead_band_fraction", self.dead_band_fraction),
            ("headroom_fraction", self.headroom_fraction),
            ("low_free_fraction", self.low_free_fraction),
        ] {
            number(&format!("memory.{name}"), v, Range::ClosedOpen(0.0, 1.0), "")?;
        }
        number("memory.major_fault_rate", self.major_fault_rate, Range::Above(0.0), " (major page faults per second)")?;
        for (name, b) in [
            ("pool", self.pool.unwrap_or(Bytes(1))),
            ("host_reserve", self.host_reserve),
            ("step_min", self.step_min),
            ("step_max", self.step_max),
            ("dead_band", self.dead_band),
            ("headroom_min", self.headroom_min),
        ] {
            nonzero(&format!("memory.{name}"), b)?;
        }
        if self.step_min > self.step_max {
            return Err(FieldError::new("memory.step_min", format!("memory.step_min ({}) is above memory.step_max ({})", self.step_min.0, self.step_max.0)));
        }
        Ok(())
    }
}

/// The config with its numbers forced into ranges where the algorithm is
/// defined, so a bad config degrades instead of dividing by zero.
pub(super) struct Tuning {
    pub pool: Option<Bytes>,
    pub host_reserve: Bytes,
    /// k = 1 / (1 − τ): an idle page costs k times an active one.
    pub k: f64,
    pub step_min: Bytes,
    pub step_max: Bytes,
    pub dead_band: Bytes,
    pub dead_band_fraction: f64,
    pub stuck_after_ms: u64,
    pub headroom_min: Bytes,
    pub headroom_fraction: f64,
    pub low_free_fraction: f64,
    pub major_fault_rate: f64,
    /// How long ebb takes to see a guest's allocation: up to a tick until
    /// it looks (the configured tick: the fast ticks follow only a balloon
    /// already moving), and the second a guest's stats lag behind. Its
    /// balloon's own time to grow comes on top, per guest.
    pub sees_in_ms: u64,
}

/// How far a guest's stats lag behind it (QEMU polls them every second).
const STATS_LAG_MS: u64 = 1000;

impl Tuning {
    pub fn new(c: &MemoryConfig, tick_ms: u64) -> Tuning {
        let tau = if c.idle_tax.is_finite() { c.idle_tax.clamp(0.0, 0.99) } else { 0.75 };
        let step_min = Bytes(c.step_min.0.max(KIB));
        let frac = |f: f64, hi: f64| if f.is_finite() { f.clamp(0.0, hi) } else { 0.0 };
        Tuning {
            pool: c.pool,
            host_reserve: c.host_reserve,
            k: 1.0 / (1.0 - tau),
            step_min,
            step_max: c.step_max.max(step_min),
            dead_band: c.dead_band,
            dead_band_fraction: frac(c.dead_band_fraction, 0.5),
            stuck_after_ms: c.stuck_after.as_millis(),
            headroom_min: c.headroom_min,
            headroom_fraction: frac(c.headroom_fraction, 10.0),
            low_free_fraction: frac(c.low_free_fraction, 0.9),
            major_fault_rate: if c.major_fault_rate.is_nan() { f64::INFINITY } else { c.major_fault_rate },
            sees_in_ms: tick_ms + STATS_LAG_MS,
        }
    }
    pub fn band(&self, current: Bytes) -> Bytes {
        self.dead_band.max(current.scale(self.dead_band_fraction))
    }
    pub fn halve(&self, step: Bytes) -> Bytes {
        Bytes(step.0 / 2).clamp(self.step_min, self.step_max)
    }
    pub fn double(&self, step: Bytes) -> Bytes {
        Bytes(step.0.saturating_mul(2)).clamp(self.step_min, self.step_max)
    }
}

/// How close a balloon lands to its target (it moves in 4 KiB pages and
/// libvirt reports KiB): gaps below this are not worth a call.
pub(super) const BALLOON_PRECISION: Bytes = Bytes(64 * KIB);

pub(super) fn kib_up(b: Bytes) -> Bytes {
    Bytes(b.0.div_ceil(KIB).saturating_mul(KIB))
}

pub(super) fn kib_down(b: Bytes) -> Bytes {
    Bytes(b.0 / KIB * KIB)
}
