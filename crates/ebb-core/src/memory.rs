//! The memory policy (seed 003, SPEC §1): ebb as the host's resource
//! scheduler sets each guest's balloon target. INTERFACE ONLY — being filled in.

use crate::model::*;
use crate::units::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tunables of the memory policy; the agent's `[memory]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
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
    pub stuck_after_ms: u64,
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
            pool: None,
            host_reserve: Bytes::from_gib(1),
            idle_tax: 0.75,
            step_min: Bytes::from_mib(32),
            step_max: Bytes::from_mib(512),
            dead_band: Bytes::from_mib(1),
            dead_band_fraction: 0.0025,
            stuck_after_ms: 5_000,
            headroom_min: Bytes::from_mib(64),
            headroom_fraction: 0.2,
            low_free_fraction: 0.1,
            major_fault_rate: 100.0,
        }
    }
}

/// What the policy shows about one VM (API, `ebb vms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmMemoryView {
    pub vm: VmId,
    /// The guest's size now (balloon.current); None without a balloon.
    pub actual: Option<Bytes>,
    /// Where ebb is steering it; None when not managed this tick.
    pub target: Option<Bytes>,
    /// What the guest uses (MemTotal − MemAvailable).
    pub used: Option<Bytes>,
    /// The share of the pool the scheduler allots this VM (its ideal size).
    pub entitlement: Option<Bytes>,
    pub floor: Option<Bytes>,
    pub ceiling: Option<Bytes>,
    /// The VM's current adaptive step.
    pub step: Bytes,
    pub under_pressure: bool,
    /// Why the VM is not managed this tick, when it is not.
    pub skipped: Option<String>,
    pub last_reason: Option<Reason>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryDecision {
    pub pool: Bytes,
    /// Sum of the guests' current sizes.
    pub pool_used: Bytes,
    pub actions: Vec<Action>,
    pub vms: Vec<VmMemoryView>,
}

/// Per-VM memory as the agent restores it from its journal after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Resumed {
    pub step: Bytes,
    pub last_target: Option<Bytes>,
}

#[derive(Debug, Default)]
pub struct MemoryPolicy {}

impl MemoryPolicy {
    pub fn new() -> Self {
        MemoryPolicy::default()
    }
    pub fn resume(&mut self, _vm: VmId, _resumed: Resumed) {}
    pub fn record_failure(&mut self, _vm: &VmId, _now: Millis) {}
    pub fn decide(
        &mut self,
        _obs: &Observation,
        _settings: &BTreeMap<VmId, VmSettings>,
        _cfg: &MemoryConfig,
        _now: Millis,
    ) -> MemoryDecision {
        unimplemented!("being written")
    }
}
