//! `[vm.NAME]`: one domain's settings (memory, realloc, sleep, services, value).

use super::*;
use ebb_core::affinity::{CpuSet, MAX_CPUS};
use ebb_core::human::FieldError;
use ebb_core::realloc::ReallocSettings;
use ebb_core::sleep::SleepSettings;
use ebb_surrogate::ServiceSpec;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    pub shares: Option<u32>,
    pub min: Option<Size>,
    pub max: Option<Size>,
    pub managed: Option<bool>,
    /// Its value to the user when power drops: the most valuable VMs that
    /// fit the budget keep running. Unset: 1 (and `ebb plan` says so).
    pub value: Option<u32>,
    /// false: the VM cannot handle power events itself (no UPS client of
    /// its own), so on low battery it is saved before the others.
    pub handles_power_events: Option<bool>,
    /// `[vm.NAME.sleep]`: the VM may be put to sleep when idle (opt-in:
    /// `enabled` is on inside the section).
    pub sleep: Option<SleepSettings>,
    /// `[[vm.NAME.service]]`: addresses ebb owns for the VM at all times,
    /// splicing them through while it runs, standing in while it sleeps.
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
    /// `[vm.NAME.realloc]`: bounds and flags for activity-based reallocation.
    pub realloc: Option<VmReallocSection>,
}

impl VmSection {
    /// The section's rules; `field` names it (`vm.NAME`).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        if let (Some(Size(min)), Some(Size(max))) = (self.min, self.max) {
            if min > max {
                return Err(FieldError::new(format!("{field}.min"), format!("{field}.min ({min}) is above {field}.max ({max})")));
            }
        }
        if let Some(sleep) = &self.sleep {
            sleep.validate(&format!("{field}.sleep"))?;
        }
        if let Some(r) = &self.realloc {
            r.validate(&format!("{field}.realloc"))?;
        }
        if self.shares == Some(0) {
            return Err(FieldError::new(format!("{field}.shares"), format!("{field}.shares must be more than zero")));
        }
        Ok(())
    }
}

/// `[vm.NAME.realloc]`.
#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VmReallocSection {
    /// false: ebb leaves this VM's CPU weight and cap alone.
    pub enabled: Option<bool>,
    /// Time-critical: put first (`ebb critical VM on|off` overrides it).
    pub critical: bool,
    /// Bounds on its CPU weight (default: its own weight ÷ yield_divisor … × boost).
    pub cpu_shares_min: Option<u64>,
    pub cpu_shares_max: Option<u64>,
    /// The highest cap ebb may give it, as a fraction of one vCPU; without
    /// it ebb never raises its cap above the VM's own.
    pub cpu_cap_max: Option<f64>,
    /// The highest bandwidth limit ebb may give it, per second in each
    /// direction; without it ebb never raises its limit above the VM's own.
    pub net_max: Option<Size>,
    /// The highest disk I/O limit (`blkdeviotune`) ebb may give its first
    /// disk, per second; without it ebb never raises its limit above its own.
    pub disk_max: Option<Size>,
    /// The fewest vCPUs its guest keeps online while idle (the guest agent
    /// offlines the rest); without it ebb leaves its vCPUs alone.
    pub vcpus_min: Option<u32>,
    /// The host CPUs ebb may pin its vCPUs to ("0-3,6"); without it ebb
    /// leaves its affinity alone.
    #[serde(default, deserialize_with = "de_cpus")]
    pub cpus: Option<CpuSet>,
}

/// A CPU list such as "0-3,6".
pub(crate) fn de_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CpuSet>, D::Error> {
    let text = String::deserialize(d)?;
    let set = CpuSet::parse(&text).map_err(serde::de::Error::custom)?;
    if set.is_empty() {
        return Err(serde::de::Error::custom(format!("{text:?} names no CPU")));
    }
    Ok(Some(set))
}

impl VmReallocSection {
    /// The section's own rules, for the config file (`field` is
    /// `vm.NAME.realloc`) and the domain's metadata alike.
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        let refuse = |name: &str, message: String| Err(FieldError::new(format!("{field}.{name}"), message));
        if let (Some(lo), Some(hi)) = (self.cpu_shares_min, self.cpu_shares_max) {
            if lo > hi {
                return refuse("cpu_shares_min", format!("{field}.cpu_shares_min ({lo}) is above cpu_shares_max ({hi})"));
            }
        }
        if self.cpu_shares_min == Some(0) || self.cpu_shares_max == Some(0) {
            let name = if self.cpu_shares_min == Some(0) { "cpu_shares_min" } else { "cpu_shares_max" };
            return refuse(name, format!("{field}: CPU weights start at 2 (libvirt's minimum)"));
        }
        if let Some(c) = self.cpu_cap_max {
            let hint = " (a fraction of one vCPU: 1.0 is a whole CPU)";
            number(&format!("{field}.cpu_cap_max"), c, Range::OpenClosed(0.0, f64::from(MAX_CPUS)), hint)?;
        }
        if self.disk_max.is_some_and(|Size(m)| m < Bytes::from_kib(1)) {
            return refuse("disk_max", format!("{field}.disk_max must be at least 1 KiB per second"));
        }
        if self.vcpus_min == Some(0) {
            return refuse("vcpus_min", format!("{field}.vcpus_min = 0: a guest keeps at least one vCPU online"));
        }
        // libvirt takes limits as whole KiB/s in 32 bits.
        if let Some(Size(max)) = self.net_max {
            if max < Bytes::from_kib(1) || max.0 / 1024 > u64::from(u32::MAX) {
                return refuse("net_max", format!("{field}.net_max = {max} is outside what libvirt takes: 1 KiB to 4 TiB per second"));
            }
        }
        Ok(())
    }

    pub fn settings(&self) -> ReallocSettings {
        ReallocSettings {
            disabled: self.enabled == Some(false),
            critical: self.critical,
            shares_min: self.cpu_shares_min,
            shares_max: self.cpu_shares_max,
            cap_max: self.cpu_cap_max,
            net_max: self.net_max.map(|s| s.0),
            disk_max: self.disk_max.map(|s| s.0),
            expected: None,
        }
    }
}

