//! `[realloc]`: activity classes, boosts and the affinity, as the reallocation policy takes them.

use super::*;
use ebb_core::affinity::{AffinityConfig, MAX_CPUS};
use ebb_core::realloc::ReallocConfig;
use serde::Deserialize;
use std::time::Duration;

/// `[realloc]`: the usage model activity-based reallocation classifies VMs
/// by, and the size of its moves. See `ReallocConfig` for each value's why.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct ReallocSection {
    pub enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    pub class_after: Duration,
    pub cpu_busy: f64,
    pub cpu_busy_leave: f64,
    pub at_cap: f64,
    pub wait_contended: f64,
    pub saturated: f64,
    pub disk_busy: Size,
    pub net_busy: Size,
    pub idle_cpu: f64,
    pub idle_disk: Size,
    pub idle_net: Size,
    pub boost: u64,
    pub yield_divisor: u64,
    /// Affinity: a cpu-bound VM waiting on CPUs this busy moves (within its
    /// `cpus` bound) to CPUs others use at most `affinity_free` of…
    pub affinity_busy: f64,
    pub affinity_free: f64,
    /// …and is not moved again for this long.
    #[serde(deserialize_with = "de_duration")]
    pub affinity_hold: Duration,
}

impl Default for ReallocSection {
    fn default() -> Self {
        let d = ReallocConfig::default();
        let a = AffinityConfig::default();
        ReallocSection {
            enabled: d.enabled,
            class_after: Duration::from_millis(d.class_after_ms),
            cpu_busy: d.cpu_busy,
            cpu_busy_leave: d.cpu_busy_leave,
            at_cap: d.at_cap,
            wait_contended: d.wait_contended,
            saturated: d.saturated,
            disk_busy: Size(d.disk_busy),
            net_busy: Size(d.net_busy),
            idle_cpu: d.idle_cpu,
            idle_disk: Size(d.idle_disk),
            idle_net: Size(d.idle_net),
            boost: d.boost,
            yield_divisor: d.yield_divisor,
            affinity_busy: a.busy,
            affinity_free: a.free,
            affinity_hold: Duration::from_millis(a.hold_ms),
        }
    }
}

impl ReallocSection {
    pub fn policy_config(&self) -> ReallocConfig {
        ReallocConfig {
            enabled: self.enabled,
            class_after_ms: self.class_after.as_millis() as u64,
            cpu_busy: self.cpu_busy,
            cpu_busy_leave: self.cpu_busy_leave,
            at_cap: self.at_cap,
            wait_contended: self.wait_contended,
            saturated: self.saturated,
            disk_busy: self.disk_busy.0,
            net_busy: self.net_busy.0,
            idle_cpu: self.idle_cpu,
            idle_disk: self.idle_disk.0,
            idle_net: self.idle_net.0,
            boost: self.boost,
            yield_divisor: self.yield_divisor,
        }
    }

    pub fn affinity_config(&self) -> AffinityConfig {
        AffinityConfig { busy: self.affinity_busy, free: self.affinity_free, hold_ms: self.affinity_hold.as_millis() as u64 }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
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
        if self.affinity_free >= self.affinity_busy {
            return Err(format!(
                "realloc.affinity_free ({}) must be below realloc.affinity_busy ({}): a VM would move between equally busy CPUs",
                self.affinity_free, self.affinity_busy
            ));
        }
        if self.cpu_busy_leave > self.cpu_busy {
            return Err(format!(
                "realloc.cpu_busy_leave ({}) is above realloc.cpu_busy ({}): a VM would leave cpu-bound before it entered",
                self.cpu_busy_leave, self.cpu_busy
            ));
        }
        for (name, v) in [("boost", self.boost), ("yield_divisor", self.yield_divisor)] {
            if !(1..=MAX_WEIGHT_FACTOR).contains(&v) {
                return Err(format!(
                    "realloc.{name} = {v} is out of range: give a whole number from 1 to {MAX_WEIGHT_FACTOR} (past it a weight leaves libvirt's range)"
                ));
            }
        }
        Ok(())
    }
}
