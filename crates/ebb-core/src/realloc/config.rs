//! The reallocation policy's host-wide usage model and each VM's bounds.

use super::class::Class;
use crate::cpuset::MAX_CPUS;
use crate::human::{nonzero, number, FieldError, Range, Span};
use crate::rates::{IDLE_CPU, IDLE_DISK, IDLE_NET};
use crate::units::*;
use serde::{Deserialize, Serialize};

/// The usage model, the size of the moves and the affinity thresholds;
/// host-wide. The agent's `[realloc]` config section itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReallocConfig {
    pub enabled: bool,
    /// A new class counts once it has held this long. 10 s (5 ticks): a
    /// compile or a backup is classified, a burst of a page load is not.
    pub class_after: Span,
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
    /// At or below all of these a VM is idle (`rates::IDLE_*` by default, as for sleep).
    pub idle_cpu: f64,
    pub idle_disk: Bytes,
    pub idle_net: Bytes,
    /// A VM that gains gets its weight multiplied by this (within its max)…
    pub boost: u64,
    /// …and an idle one divided by this (within its min).
    pub yield_divisor: u64,
    /// Affinity: a cpu-bound VM waiting on CPUs this busy moves (within its
    /// `cpus` bound) to CPUs others use at most `affinity_free` of…
    pub affinity_busy: f64,
    pub affinity_free: f64,
    /// …and is not moved again for this long.
    pub affinity_hold: Span,
}

/// The largest `boost` and `yield_divisor`: 64 times takes a default weight
/// of 1024 to 65,536 or 16, well inside libvirt's 2..262,144, and disk
/// weights span only 100..1000.
pub const MAX_WEIGHT_FACTOR: u64 = 64;

impl ReallocConfig {
    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (name, v) in [
            ("cpu_busy", self.cpu_busy),
            ("cpu_busy_leave", self.cpu_busy_leave),
            ("at_cap", self.at_cap),
            ("saturated", self.saturated),
            ("affinity_busy", self.affinity_busy),
            ("affinity_free", self.affinity_free),
        ] {
            number(&format!("realloc.{name}"), v, Range::OpenClosed(0.0, 1.0), "")?;
        }
        number("realloc.idle_cpu", self.idle_cpu, Range::Closed(0.0, 1.0), " (a fraction of one CPU)")?;
        number("realloc.wait_contended", self.wait_contended, Range::OpenClosed(0.0, f64::from(MAX_CPUS)), " (vCPUs' worth of waiting)")?;
        for (name, b) in [("disk_busy", self.disk_busy), ("net_busy", self.net_busy), ("idle_disk", self.idle_disk), ("idle_net", self.idle_net)] {
            nonzero(&format!("realloc.{name}"), b)?;
        }
        if self.affinity_free >= self.affinity_busy {
            return Err(FieldError::new("realloc.affinity_free", format!(
                "realloc.affinity_free ({}) must be below realloc.affinity_busy ({}): a VM would move between equally busy CPUs",
                self.affinity_free, self.affinity_busy
            )));
        }
        if self.cpu_busy_leave > self.cpu_busy {
            return Err(FieldError::new("realloc.cpu_busy_leave", format!(
                "realloc.cpu_busy_leave ({}) is above realloc.cpu_busy ({}): a VM would leave cpu-bound before it entered",
                self.cpu_busy_leave, self.cpu_busy
            )));
        }
        for (name, v) in [("boost", self.boost), ("yield_divisor", self.yield_divisor)] {
            if !(1..=MAX_WEIGHT_FACTOR).contains(&v) {
                return Err(FieldError::new(format!("realloc.{name}"), format!(
                    "realloc.{name} = {v} is out of range: give a whole number from 1 to {MAX_WEIGHT_FACTOR} (past it a weight leaves libvirt's range)"
                )));
            }
        }
        Ok(())
    }
}

impl Default for ReallocConfig {
    fn default() -> Self {
        ReallocConfig {
            enabled: true,
            class_after: Span::from_secs(10),
            cpu_busy: 0.8,
            cpu_busy_leave: 0.6,
            at_cap: 0.9,
            wait_contended: 0.1,
            saturated: 0.9,
            disk_busy: Bytes::from_mib(4),
            net_busy: Bytes::from_mib(1),
            idle_cpu: IDLE_CPU,
            idle_disk: IDLE_DISK,
            idle_net: IDLE_NET,
            boost: 4,
            yield_divisor: 4,
            affinity_busy: 0.7,
            affinity_free: 0.3,
            affinity_hold: Span::from_secs(30),
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
