//! `[memory]`: the pool, shares and the idle tax, as the memory policy takes them.

use super::*;
use ebb_core::memory::MemoryConfig;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySection {
    pub enabled: bool,
    pub pool: Option<Spanned<Size>>,
    pub host_reserve: Size,
    pub idle_tax: f64,
    pub step_min: Size,
    pub step_max: Size,
    pub dead_band: Size,
    pub dead_band_fraction: f64,
    #[serde(deserialize_with = "de_duration")]
    pub stuck_after: Duration,
    pub headroom_min: Size,
    pub headroom_fraction: f64,
    pub low_free_fraction: f64,
    pub major_fault_rate: f64,
}

impl Default for MemorySection {
    fn default() -> Self {
        let d = MemoryConfig::default();
        MemorySection {
            enabled: true,
            pool: None,
            host_reserve: Size(d.host_reserve),
            idle_tax: d.idle_tax,
            step_min: Size(d.step_min),
            step_max: Size(d.step_max),
            dead_band: Size(d.dead_band),
            dead_band_fraction: d.dead_band_fraction,
            stuck_after: Duration::from_millis(d.stuck_after_ms),
            headroom_min: Size(d.headroom_min),
            headroom_fraction: d.headroom_fraction,
            low_free_fraction: d.low_free_fraction,
            major_fault_rate: d.major_fault_rate,
        }
    }
}

impl MemorySection {
    pub fn policy_config(&self) -> MemoryConfig {
        MemoryConfig {
            pool: self.pool.as_ref().map(|p| p.get_ref().0),
            host_reserve: self.host_reserve.0,
            idle_tax: self.idle_tax,
            step_min: self.step_min.0,
            step_max: self.step_max.0,
            dead_band: self.dead_band.0,
            dead_band_fraction: self.dead_band_fraction,
            stuck_after_ms: self.stuck_after.as_millis() as u64,
            headroom_min: self.headroom_min.0,
            headroom_fraction: self.headroom_fraction,
            low_free_fraction: self.low_free_fraction,
            major_fault_rate: self.major_fault_rate,
        }
    }
}
