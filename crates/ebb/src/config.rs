//! The agent's configuration file (TOML). Every field is documented in
//! `ebb.example.toml`; unknown fields, zero sizes and contradictions stop
//! startup with a message that names the field and the line.

use ebb_core::affinity::{AffinityConfig, CpuSet};
use ebb_core::devices::DeviceConfig;
use ebb_core::memory::MemoryConfig;
use ebb_core::power::{LowBattery, PowerModel, Watts};
use ebb_core::realloc::{ReallocConfig, ReallocSettings};
use ebb_core::sleep::SleepSettings;
use ebb_core::{Bytes, SleepMode, VmId};
use ebb_surrogate::{Limits, ServiceSpec};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub memory: MemorySection,
    #[serde(default)]
    pub surrogate: SurrogateSection,
    #[serde(default)]
    pub realloc: ReallocSection,
    #[serde(default)]
    pub power: PowerSection,
    /// Per-VM settings: `[vm.NAME]`. These win over the domain's metadata.
    #[serde(default)]
    pub vm: BTreeMap<String, VmSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    pub uri: String,
    /// Only domains whose names match one of these patterns (`*` matches
    /// any run of characters) are ebb's; empty means every domain.
    pub domains: Vec<String>,
    #[serde(deserialize_with = "de_duration")]
    pub tick: Duration,
    /// Tick used while a balloon is moving, to follow it closely.
    #[serde(deserialize_with = "de_duration")]
    pub fast_tick: Duration,
    pub socket: PathBuf,
    pub journal: PathBuf,
    /// Journal entries older than this are pruned.
    pub journal_keep_days: u32,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            uri: "qemu:///system".into(),
            domains: vec![],
            tick: Duration::from_secs(2),
            fast_tick: Duration::from_millis(100),
            socket: PathBuf::from(DEFAULT_SOCKET),
            journal: PathBuf::from("/var/lib/ebb/journal.db"),
            journal_keep_days: 30,
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/ebb/ebb.sock";

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

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    pub shares: Option<Spanned<u32>>,
    pub min: Option<Spanned<Size>>,
    pub max: Option<Spanned<Size>>,
    pub managed: Option<bool>,
    /// Its value to the user when power drops: the most valuable VMs that
    /// fit the budget keep running. Unset: 1 (and `ebb plan` says so).
    pub value: Option<u32>,
    /// false: the VM cannot handle power events itself (no UPS client of
    /// its own), so on low battery it is saved before the others.
    pub handles_power_events: Option<bool>,
    /// `[vm.NAME.sleep]`: the VM may be put to sleep when idle (opt-in).
    pub sleep: Option<SleepSection>,
    /// `[[vm.NAME.service]]`: addresses ebb owns for the VM at all times,
    /// splicing them through while it runs, standing in while it sleeps.
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
    /// `[vm.NAME.realloc]`: bounds and flags for activity-based reallocation.
    pub realloc: Option<VmReallocSection>,
}

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

    fn validate(&self) -> Result<(), String> {
        if self.affinity_free >= self.affinity_busy {
            return Err(format!(
                "realloc.affinity_free ({}) must be below realloc.affinity_busy ({}): a VM would move between equally busy CPUs",
                self.affinity_free, self.affinity_busy
            ));
        }
        for (name, v) in [
            ("cpu_busy", self.cpu_busy),
            ("cpu_busy_leave", self.cpu_busy_leave),
            ("at_cap", self.at_cap),
            ("saturated", self.saturated),
            ("affinity_busy", self.affinity_busy),
            ("affinity_free", self.affinity_free),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("realloc.{name} = {v} is outside (0, 1]"));
            }
        }
        if self.cpu_busy_leave > self.cpu_busy {
            return Err(format!(
                "realloc.cpu_busy_leave ({}) is above realloc.cpu_busy ({}): a VM would leave cpu-bound before it entered",
                self.cpu_busy_leave, self.cpu_busy
            ));
        }
        if self.boost < 1 || self.yield_divisor < 1 {
            return Err("realloc.boost and realloc.yield_divisor must be at least 1".into());
        }
        Ok(())
    }
}

/// `[power]`: where the host's power comes from and what ebb does when it fails.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct PowerSection {
    /// A UPS served by NUT's upsd: `name@host:port` (port 3493 when left out).
    pub ups: Option<String>,
    /// Root of the sysfs tree read for mains and batteries when no UPS is set.
    pub sysfs: PathBuf,
    /// On battery, at or below this charge (percent) the battery is low.
    pub low_charge: f64,
    /// On battery, at or below this runtime the battery is low.
    #[serde(deserialize_with = "de_duration")]
    pub low_runtime: Duration,
    /// The command that powers the host down once every VM is saved. Unset:
    /// the power-off is recorded in the journal, not run.
    pub power_off_command: Option<Vec<String>>,
    /// On low battery, how long the guest of a VM that could not be saved
    /// has to shut down; past it the host stays up under it (never destroyed).
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// How long a read of the UPS may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Watts the host may draw on battery. Set, ebb plans for a power drop
    /// every tick (`ebb plan`) and, on battery, saves the VMs the plan drops.
    pub budget: Option<f64>,
    /// The host's power model: watts idle and at full CPU load…
    pub idle_watts: f64,
    pub max_watts: f64,
    /// …or 11 points, watts at 0 %, 10 %, …, 100 % CPU (a SPECpower result).
    pub model_table: Option<Vec<f64>>,
    /// `[power.devices]`: CPU frequency and disk standby.
    pub devices: DevicesSection,
}

/// `[power.devices]`: what ebb does with under-used host devices (the
/// seed's Figure 2). Both parts are off until asked for.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesSection {
    pub cpufreq: bool,
    pub cpu_low: f64,
    #[serde(deserialize_with = "de_duration")]
    pub cpu_low_after: Duration,
    pub cpu_high: f64,
    pub governor: String,
    pub max_freq_fraction: f64,
    #[serde(deserialize_with = "de_some_duration")]
    pub disk_idle_after: Option<Duration>,
    /// Run with `/dev/NAME` appended; unset: the standby is recorded, not run.
    pub disk_standby_command: Option<Vec<String>>,
}

impl Default for DevicesSection {
    fn default() -> Self {
        let d = DeviceConfig::default();
        DevicesSection {
            cpufreq: d.cpufreq,
            cpu_low: d.cpu_low,
            cpu_low_after: Duration::from_millis(d.cpu_low_after_ms),
            cpu_high: d.cpu_high,
            governor: d.governor,
            max_freq_fraction: d.max_freq_fraction,
            disk_idle_after: d.disk_idle_after_ms.map(Duration::from_millis),
            disk_standby_command: None,
        }
    }
}

/// The governors Linux's cpufreq has; a CPU offers some of them.
const GOVERNORS: [&str; 6] = ["performance", "powersave", "userspace", "ondemand", "conservative", "schedutil"];

impl DevicesSection {
    pub fn policy_config(&self) -> DeviceConfig {
        DeviceConfig {
            cpufreq: self.cpufreq,
            cpu_low: self.cpu_low,
            cpu_low_after_ms: self.cpu_low_after.as_millis() as u64,
            cpu_high: self.cpu_high,
            governor: self.governor.clone(),
            max_freq_fraction: self.max_freq_fraction,
            disk_idle_after_ms: self.disk_idle_after.map(|d| d.as_millis() as u64),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (name, v) in [("cpu_low", self.cpu_low), ("cpu_high", self.cpu_high), ("max_freq_fraction", self.max_freq_fraction)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(format!("power.devices.{name} = {v} is outside (0, 1]"));
            }
        }
        if self.cpu_low >= self.cpu_high {
            return Err(format!(
                "power.devices.cpu_low ({}) must be below power.devices.cpu_high ({}): the band between them keeps the CPUs from flapping",
                self.cpu_low, self.cpu_high
            ));
        }
        if !GOVERNORS.contains(&self.governor.as_str()) {
            return Err(format!(
                "power.devices.governor = {:?} is not a cpufreq governor: use one of {} (powersave or conservative save power)",
                self.governor,
                GOVERNORS.join(", ")
            ));
        }
        if self.disk_standby_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("power.devices.disk_standby_command is empty: give the command and its arguments, e.g. [\"hdparm\", \"-y\"] (ebb adds /dev/NAME)".into());
        }
        Ok(())
    }
}

impl Default for PowerSection {
    fn default() -> Self {
        let low = LowBattery::default();
        PowerSection {
            ups: None,
            sysfs: PathBuf::from("/sys"),
            low_charge: low.charge,
            low_runtime: Duration::from_secs_f64(low.runtime_s),
            power_off_command: None,
            shutdown_timeout: Duration::from_secs(120),
            timeout: Duration::from_secs(2),
            budget: None,
            idle_watts: 100.0,
            max_watts: 250.0,
            model_table: None,
            devices: DevicesSection::default(),
        }
    }
}

impl PowerSection {
    pub fn model(&self) -> PowerModel {
        match &self.model_table {
            Some(t) if t.len() == 11 => {
                let mut points = [0.0; 11];
                points.copy_from_slice(t);
                PowerModel::Table(points)
            }
            _ => PowerModel::Linear { idle: Watts(self.idle_watts), max: Watts(self.max_watts) },
        }
    }

    pub fn low_battery(&self) -> LowBattery {
        LowBattery { charge: self.low_charge, runtime_s: self.low_runtime.as_secs_f64() }
    }

    /// `name@host[:port]` → (name, host:port).
    pub fn ups_address(&self) -> Option<Result<(String, String), String>> {
        let text = self.ups.as_ref()?;
        let Some((name, host)) = text.split_once('@').filter(|(n, h)| !n.is_empty() && !h.is_empty()) else {
            return Some(Err(format!("power.ups = {text:?}: write it as name@host or name@host:port, as upsc takes it")));
        };
        let addr = if host.contains(':') { host.to_string() } else { format!("{host}:3493") };
        Some(Ok((name.to_string(), addr)))
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
fn de_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CpuSet>, D::Error> {
    let text = String::deserialize(d)?;
    let set = CpuSet::parse(&text).map_err(serde::de::Error::custom)?;
    if set.is_empty() {
        return Err(serde::de::Error::custom(format!("{text:?} names no CPU")));
    }
    Ok(Some(set))
}

impl VmReallocSection {
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

/// `[surrogate]`: bounds on what ebb holds for sleeping VMs.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SurrogateSection {
    /// Connections held per VM while it wakes (Knative's activator: 10,000).
    pub queue_depth: usize,
    /// Bytes buffered per held connection.
    pub max_held_bytes: Size,
    /// Bytes buffered across one VM's held connections.
    pub max_held_bytes_per_vm: Size,
    /// A held client gets a refusal if the VM has not answered by then.
    #[serde(deserialize_with = "de_duration")]
    pub wake_deadline: Duration,
    /// Between connection attempts to a waking VM's service.
    #[serde(deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// Held clients per service replayed to a woken VM at once.
    pub replay_in_flight: usize,
}

impl Default for SurrogateSection {
    fn default() -> Self {
        let d = Limits::default();
        SurrogateSection {
            queue_depth: d.queue_depth,
            max_held_bytes: Size(Bytes(d.max_held_bytes as u64)),
            max_held_bytes_per_vm: Size(Bytes(d.max_held_bytes_per_vm as u64)),
            wake_deadline: d.wake_deadline,
            probe_interval: d.probe_interval,
            replay_in_flight: d.replay_in_flight,
        }
    }
}

impl SurrogateSection {
    pub fn limits(&self) -> Limits {
        Limits {
            queue_depth: self.queue_depth,
            max_held_bytes: self.max_held_bytes.0 .0 as usize,
            max_held_bytes_per_vm: self.max_held_bytes_per_vm.0 .0 as usize,
            wake_deadline: self.wake_deadline,
            probe_interval: self.probe_interval,
            replay_in_flight: self.replay_in_flight,
            ..Limits::default()
        }
    }
}

/// `[vm.NAME.sleep]`. The section is the opt-in: `enabled` defaults to true
/// inside it, so `enabled = false` pauses the opt-in without deleting it.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SleepSection {
    pub enabled: bool,
    /// "save" (managed save: memory freed, ~0.5 s to wake) or "pause" (memory kept, instant wake).
    pub mode: SleepMode,
    #[serde(deserialize_with = "de_duration")]
    pub idle_after: Duration,
    /// Below this fraction of one vCPU the VM counts as idle.
    pub cpu_threshold: f64,
    /// Network and disk bytes per second below which the VM counts as idle.
    pub net_threshold: Size,
    pub disk_threshold: Size,
}

impl Default for SleepSection {
    fn default() -> Self {
        let d = SleepSettings::default();
        SleepSection {
            enabled: true,
            mode: d.mode,
            idle_after: Duration::from_millis(d.idle_after_ms),
            cpu_threshold: d.cpu_threshold,
            net_threshold: Size(d.net_threshold),
            disk_threshold: Size(d.disk_threshold),
        }
    }
}

impl SleepSection {
    pub fn settings(&self) -> SleepSettings {
        SleepSettings {
            enabled: self.enabled,
            mode: self.mode,
            idle_after_ms: self.idle_after.as_millis() as u64,
            cpu_threshold: self.cpu_threshold,
            net_threshold: self.net_threshold.0,
            disk_threshold: self.disk_threshold.0,
        }
    }
}

/// A memory size in a config file: `"512MiB"`, `"2GiB"` or a number of
/// bytes. Zero and negative sizes are refused where they are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub Bytes);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let bytes = match Raw::deserialize(d)? {
            Raw::Int(n) if n < 0 => {
                return Err(serde::de::Error::custom(format!("{n} is negative: a size must be more than zero")))
            }
            Raw::Int(n) => Bytes(n as u64),
            Raw::Text(s) => s.parse::<Bytes>().map_err(serde::de::Error::custom)?,
        };
        if bytes == Bytes::ZERO {
            return Err(serde::de::Error::custom("a size of zero is not allowed here"));
        }
        Ok(Size(bytes))
    }
}

/// `"2s"`, `"250ms"`, `"1m"`, `"1h"`, or a number of seconds.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let dur = match Raw::deserialize(d)? {
        Raw::Int(n) if n > 0 => Duration::from_secs(n as u64),
        Raw::Float(f) if f > 0.0 => Duration::try_from_secs_f64(f).map_err(|_| serde::de::Error::custom(format!("{f} seconds is too long a duration")))?,
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom)?,
        _ => return Err(serde::de::Error::custom("a duration must be more than zero")),
    };
    Ok(dur)
}

fn de_some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration: write a number with a unit, like 2s or 250ms"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("\"{s}\" has an unknown unit: use ms, s, m or h")),
    };
    if secs <= 0.0 {
        return Err(format!("\"{s}\": a duration must be more than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("\"{s}\" is too long a duration"))
}

impl AgentSection {
    pub fn is_ebbs(&self, name: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|p| glob_match(p, name))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }

    /// Parses and validates; the error names the field and its line.
    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        cfg.validate(text)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str) -> Result<(), String> {
        let m = &self.memory;
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        if !(0.0..1.0).contains(&m.idle_tax) {
            return Err(format!("memory.idle_tax = {} is outside [0, 1): 0.75 is ESX's default", m.idle_tax));
        }
        for (name, v) in [
            ("dead_band_fraction", m.dead_band_fraction),
            ("headroom_fraction", m.headroom_fraction),
            ("low_free_fraction", m.low_free_fraction),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("memory.{name} = {v} is outside [0, 1)"));
            }
        }
        if m.major_fault_rate <= 0.0 {
            return Err(format!("memory.major_fault_rate = {} must be more than zero", m.major_fault_rate));
        }
        if m.step_min.0 > m.step_max.0 {
            return Err(format!(
                "memory.step_min ({}) is above memory.step_max ({})",
                m.step_min.0, m.step_max.0
            ));
        }
        self.surrogate.limits().validate().map_err(|e| format!("[surrogate]: {e}"))?;
        self.realloc.validate()?;
        if let Some(Err(e)) = self.power.ups_address() {
            return Err(e);
        }
        if let Some(t) = &self.power.model_table {
            if t.len() != 11 || t.windows(2).any(|w| w[1] < w[0]) || t.iter().any(|w| w.is_nan() || *w < 0.0) {
                return Err(format!(
                    "power.model_table has {} values: give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling",
                    t.len()
                ));
            }
        }
        if !(self.power.idle_watts >= 0.0 && self.power.max_watts >= self.power.idle_watts) {
            return Err(format!(
                "power.max_watts ({}) must be at least power.idle_watts ({}), and both at least zero",
                self.power.max_watts, self.power.idle_watts
            ));
        }
        if let Some(b) = self.power.budget {
            if b.is_nan() || b <= 0.0 {
                return Err(format!("power.budget = {b} must be more than zero watts"));
            }
        }
        if !(0.0..=100.0).contains(&self.power.low_charge) {
            return Err(format!("power.low_charge = {} is outside [0, 100] (percent)", self.power.low_charge));
        }
        if self.power.power_off_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("power.power_off_command is empty: give the command and its arguments, e.g. [\"systemctl\", \"poweroff\"]".into());
        }
        self.power.devices.validate()?;
        let mut listens = std::collections::HashMap::new();
        for (name, vm) in &self.vm {
            for svc in &vm.service {
                svc.validate().map_err(|e| format!("vm.{name}.service: {e}"))?;
                if let Some(other) = listens.insert(svc.listen, format!("vm.{name}.service {}", svc.name)) {
                    return Err(format!("vm.{name}.service {} listens on {}, as {other} does already", svc.name, svc.listen));
                }
            }
            if let (Some(min), Some(max)) = (&vm.min, &vm.max) {
                if min.get_ref().0 > max.get_ref().0 {
                    return Err(format!(
                        "line {}: vm.{name}.min ({}) is above vm.{name}.max ({})",
                        at(min.span()),
                        min.get_ref().0,
                        max.get_ref().0
                    ));
                }
            }
            if let Some(sleep) = &vm.sleep {
                if !(0.0..=1.0).contains(&sleep.cpu_threshold) {
                    return Err(format!("vm.{name}.sleep.cpu_threshold = {} is outside [0, 1] (a fraction of one vCPU)", sleep.cpu_threshold));
                }
            }
            if let Some(r) = &vm.realloc {
                if let (Some(lo), Some(hi)) = (r.cpu_shares_min, r.cpu_shares_max) {
                    if lo > hi {
                        return Err(format!("vm.{name}.realloc.cpu_shares_min ({lo}) is above cpu_shares_max ({hi})"));
                    }
                }
                if r.cpu_shares_min == Some(0) || r.cpu_shares_max == Some(0) {
                    return Err(format!("vm.{name}.realloc: CPU weights start at 2 (libvirt's minimum)"));
                }
                if let Some(c) = r.cpu_cap_max {
                    if !(c > 0.0 && c.is_finite()) {
                        return Err(format!("vm.{name}.realloc.cpu_cap_max = {c} must be more than zero (a fraction of one vCPU: 1.0 is a whole CPU)"));
                    }
                }
                if r.disk_max.is_some_and(|Size(m)| m < Bytes::from_kib(1)) {
                    return Err(format!("vm.{name}.realloc.disk_max must be at least 1 KiB per second"));
                }
                if r.vcpus_min == Some(0) {
                    return Err(format!("vm.{name}.realloc.vcpus_min = 0: a guest keeps at least one vCPU online"));
                }
                // libvirt takes limits as whole KiB/s in 32 bits.
                if let Some(Size(max)) = r.net_max {
                    if max < Bytes::from_kib(1) || max.0 / 1024 > u64::from(u32::MAX) {
                        return Err(format!(
                            "vm.{name}.realloc.net_max = {max} is outside what libvirt takes: 1 KiB to 4 TiB per second"
                        ));
                    }
                }
            }
            if let Some(shares) = &vm.shares {
                if *shares.get_ref() == 0 {
                    return Err(format!("line {}: vm.{name}.shares must be more than zero", at(shares.span())));
                }
            }
        }
        if let Some(pool) = &m.pool {
            let mins: Bytes = self.vm.values().filter_map(|v| v.min.as_ref().map(|m| m.get_ref().0)).sum();
            let pool_bytes = pool.get_ref().0;
            if mins > pool_bytes {
                return Err(format!(
                    "line {}: memory.pool ({pool_bytes}) is smaller than the sum of the VMs' minimums ({mins}) by {}: raise the pool or lower some vm.*.min",
                    at(pool.span()),
                    mins - pool_bytes
                ));
            }
        }
        Ok(())
    }

    /// The per-VM section for a domain, if the config has one.
    pub fn vm_section(&self, vm: &VmId) -> Option<&VmSection> {
        self.vm.get(vm.as_str())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// toml's own message already carries line and column; keep it on one line
/// without the source excerpt.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
    format!("{line}{}", e.message().trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.agent.uri, "qemu:///system");
        assert_eq!(c.agent.tick, Duration::from_secs(2));
        assert_eq!(c.memory.policy_config(), MemoryConfig::default());
    }

    #[test]
    fn example_config_documents_the_defaults() {
        let c = Config::parse(include_str!("../../../ebb.example.toml")).unwrap();
        assert_eq!(c.memory.policy_config(), MemoryConfig::default());
        assert_eq!(c.surrogate.limits(), Limits::default());
        assert_eq!(c.realloc.policy_config(), ReallocConfig::default());
        assert_eq!(c.realloc.affinity_config(), AffinityConfig::default());
        let d = PowerSection::default();
        assert_eq!(
            (c.power.low_battery(), c.power.sysfs, c.power.timeout, c.power.ups, c.power.shutdown_timeout),
            (d.low_battery(), d.sysfs, d.timeout, d.ups, d.shutdown_timeout)
        );
        assert_eq!(c.power.devices.policy_config(), DeviceConfig::default());
        assert_eq!(c.power.devices.disk_standby_command, None);
        let d = AgentSection::default();
        assert_eq!((c.agent.uri, c.agent.tick, c.agent.fast_tick, c.agent.socket, c.agent.journal), (d.uri, d.tick, d.fast_tick, d.socket, d.journal));
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"
            [agent]
            uri = "test:///default"
            tick = "500ms"
            [memory]
            pool = "2GiB"
            idle_tax = 0.5
            [vm.web]
            shares = 2000
            min = "256MiB"
            max = "1GiB"
            "#,
        )
        .unwrap();
        assert_eq!(c.agent.tick, Duration::from_millis(500));
        assert_eq!(c.memory.policy_config().pool, Some(Bytes::from_gib(2)));
        let web = c.vm_section(&VmId::new("web")).unwrap();
        assert_eq!(web.min.as_ref().unwrap().get_ref().0, Bytes::from_mib(256));
    }

    #[test]
    fn realloc_bounds_that_contradict_are_named() {
        let e = Config::parse("[vm.web.realloc]\ncpu_shares_min = 5000\ncpu_shares_max = 100\n").unwrap_err();
        assert!(e.contains("vm.web.realloc.cpu_shares_min"), "{e}");
        let e = Config::parse("[vm.web.realloc]\nvcpus_min = 0\n").unwrap_err();
        assert!(e.contains("vcpus_min = 0"), "{e}");
        let e = Config::parse("[vm.web.realloc]\ncpu_cap_max = 0\n").unwrap_err();
        assert!(e.contains("cpu_cap_max"), "{e}");
        let e = Config::parse("[vm.web.realloc]\nnet_max = \"512B\"\n").unwrap_err();
        assert!(e.contains("vm.web.realloc.net_max = 512 B") && e.contains("1 KiB"), "{e}");
        let e = Config::parse("[vm.web.realloc]\nnet_max = \"fast\"\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("\"fast\" is not a size"), "{e}");
        let c = Config::parse("[vm.web.realloc]\nnet_max = \"100MiB\"\n").unwrap();
        assert_eq!(c.vm_section(&VmId::new("web")).unwrap().realloc.as_ref().unwrap().settings().net_max, Some(Bytes::from_mib(100)));
        let e = Config::parse("[realloc]\ncpu_busy = 0.5\ncpu_busy_leave = 0.7\n").unwrap_err();
        assert!(e.contains("cpu_busy_leave"), "{e}");
        let c = Config::parse("[vm.web.realloc]\ncritical = true\ncpu_cap_max = 2.0\n").unwrap();
        let s = c.vm_section(&VmId::new("web")).unwrap().realloc.as_ref().unwrap().settings();
        assert!(s.critical && !s.disabled && s.cap_max == Some(2.0));
    }

    #[test]
    fn power_settings_are_checked() {
        let e = Config::parse("[power]\nups = \"127.0.0.1\"\n").unwrap_err();
        assert!(e.contains("name@host"), "{e}");
        let c = Config::parse("[power]\nups = \"ups1@10.0.0.5\"\n").unwrap();
        assert_eq!(c.power.ups_address().unwrap().unwrap(), ("ups1".to_string(), "10.0.0.5:3493".to_string()));
        assert!(Config::parse("[power]\nlow_charge = 120\n").unwrap_err().contains("low_charge"));
        assert!(Config::parse("[power]\npower_off_command = []\n").unwrap_err().contains("power_off_command"));
        assert!(Config::parse("[power]\nmodel_table = [1, 2, 3]\n").unwrap_err().contains("11 watt figures"));
        assert!(Config::parse("[power]\nidle_watts = 300.0\nmax_watts = 200.0\n").unwrap_err().contains("max_watts"));
        assert!(Config::parse("[power]\nbudget = 0.0\n").unwrap_err().contains("budget"));
        let c = Config::parse("[power]\nmodel_table = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]\n").unwrap();
        assert_eq!(c.power.model().host(0.55), Watts(65.0));
    }

    #[test]
    fn device_settings_are_checked() {
        let e = Config::parse("[power.devices]\ngovernor = \"turbo\"\n").unwrap_err();
        assert!(e.contains("power.devices.governor = \"turbo\"") && e.contains("powersave"), "{e}");
        let e = Config::parse("[power.devices]\ncpu_low = 0.6\ncpu_high = 0.5\n").unwrap_err();
        assert!(e.contains("power.devices.cpu_low (0.6) must be below"), "{e}");
        assert!(Config::parse("[power.devices]\nmax_freq_fraction = 0\n").unwrap_err().contains("max_freq_fraction"));
        assert!(Config::parse("[power.devices]\ndisk_standby_command = []\n").unwrap_err().contains("disk_standby_command"));
        assert!(Config::parse("[power.devices]\ndisk_idle_after = \"0s\"\n").unwrap_err().contains("more than zero"));
        let e = Config::parse("[power.devices]\nspindown = true\n").unwrap_err();
        assert!(e.contains("spindown") && e.contains("line 2"), "{e}");
        let c = Config::parse("[power.devices]\ncpufreq = true\ncpu_low_after = \"5s\"\ndisk_idle_after = \"20m\"\ndisk_standby_command = [\"hdparm\", \"-y\"]\n").unwrap();
        let d = c.power.devices.policy_config();
        assert!(d.cpufreq);
        assert_eq!((d.cpu_low_after_ms, d.disk_idle_after_ms), (5_000, Some(1_200_000)));
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = Config::parse("[memory]\npool = \"1GiB\"\nballoon_speed = 3\n").unwrap_err();
        assert!(e.contains("balloon_speed"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn zero_and_negative_sizes_are_refused() {
        let e = Config::parse("[memory]\npool = \"0MiB\"\n").unwrap_err();
        assert!(e.contains("zero") && e.contains("line 2"), "{e}");
        let e = Config::parse("[vm.a]\nmin = -5\n").unwrap_err();
        assert!(e.contains("negative"), "{e}");
        let e = Config::parse("[vm.a]\nmin = \"-1GiB\"\n").unwrap_err();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn min_above_max_is_refused() {
        let e = Config::parse("[vm.db]\nmin = \"1GiB\"\nmax = \"512MiB\"\n").unwrap_err();
        assert!(e.contains("vm.db.min (1 GiB) is above vm.db.max (512 MiB)"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn pool_below_sum_of_minimums_says_by_how_much() {
        let e = Config::parse(
            "[memory]\npool = \"1GiB\"\n[vm.a]\nmin = \"768MiB\"\n[vm.b]\nmin = \"512MiB\"\n",
        )
        .unwrap_err();
        assert!(e.contains("by 256 MiB"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn domain_patterns() {
        assert!(glob_match("ebb-demo-*", "ebb-demo-1"));
        assert!(glob_match("*web*", "prod-web-2"));
        assert!(!glob_match("ebb-demo-*", "prod"));
        assert!(glob_match("db", "db") && !glob_match("db", "db2"));
        let c = Config::parse("[agent]\ndomains = [\"a*\", \"b\"]\n").unwrap();
        assert!(c.agent.is_ebbs("alpha") && c.agent.is_ebbs("b") && !c.agent.is_ebbs("c"));
        assert!(Config::parse("").unwrap().agent.is_ebbs("anything"));
    }

    #[test]
    fn sleep_sections_opt_in() {
        let c = Config::parse("[vm.web.sleep]\nidle_after = \"5m\"\nmode = \"pause\"\n").unwrap();
        let s = c.vm["web"].sleep.as_ref().unwrap().settings();
        assert!(s.enabled);
        assert_eq!(s.mode, SleepMode::Pause);
        assert_eq!(s.idle_after_ms, 300_000);
        assert!(Config::parse("[vm.web.sleep]\nmode = \"hibernate\"\n").unwrap_err().contains("hibernate"));
        assert!(Config::parse("[vm.web.sleep]\ncpu_threshold = 2.0\n").unwrap_err().contains("cpu_threshold"));
        assert!(!c.vm.contains_key("db"));
    }

    #[test]
    fn services_parse_and_are_checked() {
        let c = Config::parse(
            "[[vm.web.service]]\nname = \"http\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:18080\"\nhttp = true\n\
             [[vm.web.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 200\nbody = \"ok\"\n",
        )
        .unwrap();
        assert_eq!(c.vm["web"].service[0].canned[0].path, "/healthz");
        let e = Config::parse(
            "[[vm.web.service]]\nname = \"http\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:18080\"\nhttp = true\n\
             [[vm.web.service.canned]]\nmethod = \"GET\"\npath = \"healthz\"\nstatus = 200\n",
        )
        .unwrap_err();
        assert!(e.contains("vm.web.service") && e.contains("healthz"), "{e}");
        let e = Config::parse(
            "[[vm.a.service]]\nname = \"x\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:1\"\n\
             [[vm.b.service]]\nname = \"y\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:2\"\n",
        )
        .unwrap_err();
        assert!(e.contains("127.0.0.1:8080") && e.contains("already"), "{e}");
        assert!(Config::parse("[surrogate]\nwake_deadline = \"10s\"\nqueue_depth = 5\n").is_ok());
    }

    #[test]
    fn bad_values_are_explained() {
        assert!(Config::parse("[memory]\nidle_tax = 1.5\n").unwrap_err().contains("idle_tax"));
        assert!(Config::parse("[memory]\nstep_min = \"1GiB\"\nstep_max = \"64MiB\"\n")
            .unwrap_err()
            .contains("step_min"));
        assert!(Config::parse("[agent]\ntick = \"2 fortnights\"\n").unwrap_err().contains("unknown unit"));
        assert!(Config::parse("[memory]\npool = \"lots\"\n").unwrap_err().contains("not a size"));
    }
}
