//! The `Platform` trait: the host's side of power (DESIGN.md): where its
//! power comes from (a UPS through NUT, batteries and mains through sysfs),
//! its devices (CPU frequency and disks in sysfs), and the dangerous actions
//! (power off, disk standby), which run only when configured. Without a
//! configured command they are recorded, not run: tests and a careful first
//! deployment see the decision without losing the host or waking a disk.
//!
//! `host.rs` is the real host; `sysfs.rs` reads and writes the files under
//! it; `ups.rs` polls a UPS through NUT; `error.rs` says what failed.

mod error;
mod host;
pub mod sysfs;
mod ups;

use ebb_core::devices::{CpuFreq, CpuSetting, DiskSample};
use ebb_core::power::{Measured, PowerReading};
use std::path::Path;

pub use error::PlatformError;
pub use host::HostPlatform;
pub use sysfs::{read_power_supply, read_rapl, RaplZone};
pub use ups::{UpsAddress, UpsPoller};

/// What `Platform::sleep_host` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSlept {
    /// The command ran and returned: the host slept and is back.
    Resumed(String),
    /// No command is configured: the sleep is recorded, the host stays up.
    Recorded(String),
}

pub trait Platform: Send {
    /// Where the host's power comes from now; None when no source is
    /// configured and sysfs shows no power supply.
    fn power(&mut self) -> Result<Option<PowerReading>, PlatformError>;
    /// Powers the host down. Returns what was done, in words.
    fn power_off(&mut self) -> Result<String, PlatformError>;
    /// Puts the host in its low-power state (`state` names it in words).
    /// Returns what was done: a command that ran returns once the host is
    /// back (a suspend) or never (a power-off); without a command the
    /// sleep is only recorded.
    fn sleep_host(&mut self, state: &str) -> Result<HostSlept, PlatformError>;
    /// Every online CPU's frequency scaling.
    fn cpufreq(&mut self) -> Result<Vec<CpuFreq>, PlatformError>;
    /// Writes one CPU's governor and/or frequency cap.
    fn set_cpufreq(&mut self, setting: &CpuSetting) -> Result<(), PlatformError>;
    /// The disks that can spin down, with their I/O counters.
    fn disks(&mut self) -> Result<Vec<DiskSample>, PlatformError>;
    /// The whole disks that hold `file` (empty when none is known).
    fn disks_of(&mut self, file: &Path) -> Result<Vec<String>, PlatformError>;
    /// Puts a disk in standby (ATA STANDBY IMMEDIATE). Returns what was done, in words.
    fn disk_standby(&mut self, disk: &str) -> Result<String, PlatformError>;
    /// The host's draw as measured on the host itself (RAPL); None where
    /// nothing measures it, and at the first call (a rate needs two).
    fn measured(&mut self) -> Result<Option<Measured>, PlatformError> {
        Ok(None)
    }
}
