//! The reallocation policy's host-wide usage model and each VM's bounds.

use super::class::Class;
use crate::units::*;
use serde::{Deserialize, Serialize};

/// The usage model and the size of the moves; host-wide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReallocConfig {
    pub enabled: bool,
    /// A new class counts once it has held this long. 10 s (5 ticks): a
    /// compile or a backup is classified, a burst of a page load is not.
    pub class_after_ms: u64,
    /// CPU use, as a fraction of the VM's vCPUs, at which it is cpu-bound…
    pub cpu_busy: f64,
    /// …and below which it stops being so (the band against flapping).
    pub cpu_busy_leave: f64,
    /// Use at this fraction of its cap or more: it sits at its cap.
    pub at_cap: f64,
    /// vCPU wait, in vCPUs' worth, that shows contention for host CPUs.
    pub wait_contended: f64,
    /// Host CPU used by VMs, as a fraction of the host's CPUs, at which the
    /// host is saturated: one VM's gain is then another's loss.
    pub saturated: f64,
    /// Disk and network rates at which a VM is bound on them (a VM at its
    /// bandwidth limit is net-bound at any rate).
    pub disk_busy: Bytes,
    pub net_busy: Bytes,
    /// At or below all of these a VM is idle (the sleep policy's defaults).
    pub idle_cpu: f64,
    pub idle_disk: Bytes,
    pub idle_net: Bytes,
    /// A VM that gains gets its weight multiplied by this (within its max)…
    pub boost: u64,
    /// …and an idle one divided by this (within its min).
    pub yield_divisor: u64,
}

impl Default for ReallocConfig {
    fn default() -> Self {
        ReallocConfig {
            enabled: true,
            class_after_ms: 10_000,
            cpu_busy: 0.8,
            cpu_busy_leave: 0.6,
            at_cap: 0.9,
            wait_contended: 0.1,
            saturated: 0.9,
            disk_busy: Bytes::from_mib(4),
            net_busy: Bytes::from_mib(1),
            idle_cpu: 0.05,
            idle_disk: Bytes::from_kib(64),
            idle_net: Bytes::from_kib(2),
            boost: 4,
            yield_divisor: 4,
        }
    }
}

/// Per-VM bounds and flags. Missing bounds follow from the VM's own weight
/// (its base): at most `boost` times it, at least its `yield_divisor`th.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReallocSettings {
    /// False: ebb leaves this VM's allocations alone.
    pub disabled: bool,
    /// Time-critical: put first while set.
    pub critical: bool,
    pub shares_min: Option<u64>,
    pub shares_max: Option<u64>,
    /// The highest cap ebb may give it, as a fraction of one vCPU (1.0 = a
    /// whole CPU per vCPU). None: ebb never raises its cap above its own.
    pub cap_max: Option<f64>,
    /// The highest bandwidth limit (per second, each direction) ebb may
    /// give it. None: ebb never raises its limit above its own.
    #[serde(default)]
    pub net_max: Option<Bytes>,
    /// The highest disk I/O limit (`blkdeviotune`, bytes per second) ebb
    /// may give it. None: ebb never raises its limit above its own.
    #[serde(default)]
    pub disk_max: Option<Bytes>,
    /// The class its history (the needs database) gives for this hour: a
    /// VM that starts or returns begins there instead of unclassified.
    pub expected: Option<Class>,
}
