//! What a platform reading or action can fail with.

use crate::nut::NutError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{error}; no reading from it since {since} UTC")]
    Ups { error: NutError, since: String },
    #[error("upsd at {addr} has not answered since {since} UTC: a reading has run past its bound of {bound:?}")]
    UpsStale { addr: String, since: String, bound: Duration },
    #[error("cannot read {}: {source}", path.display())]
    Sysfs { path: PathBuf, source: std::io::Error },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("no CPU under {} has cpufreq (no frequency scaling driver, as in most VMs): ebb leaves the CPU frequency alone", path.display())]
    NoCpufreq { path: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
}
