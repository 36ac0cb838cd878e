//! The agent's configuration file (TOML). Every field is documented in
//! `ebb.example.toml`; unknown fields, zero sizes and contradictions stop
//! startup with a message that names the field and the line.

use ebb_core::affinity::{AffinityConfig, CpuSet, MAX_CPUS};
use ebb_core::devices::DeviceConfig;
use ebb_core::memory::MemoryConfig;
use ebb_core::power::{LowBattery, PowerModel, Watts};
use ebb_core::realloc::{ReallocConfig, ReallocSettings};
use ebb_core::sleep::SleepSettings;
use ebb_backends::nut::{NutClient, NutTls, TlsSetupError};
use ebb_backends::platform::UpsAddress;
use ebb_core::{Bytes, SleepMode, VmId};
use ebb_surrogate::{AwakePath, FdPlan, Limits, ServiceSpec};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Component, Path, PathBuf};
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
    /// The group whose members may use the API socket besides root
    /// (`socket_gid` resolves it); None: root only.
    pub socket_group: Option<String>,
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
            socket_group: None,
            journal: PathBuf::from("/var/lib/ebb/journal.db"),
            journal_keep_days: 30,
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/ebb/ebb.sock";

/// The longest unix socket path: `sun_path` holds 108 bytes with the NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The shortest tick: each reads every domain from libvirt and may write the
/// journal, so a shorter one only spins.
const MIN_TICK: Duration = Duration::from_millis(10);
/// The longest duration any field takes, a year: no wait of ebb's makes
/// sense past it, and deadlines computed from it (`Instant + Duration`)
/// can then never overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The largest realloc.boost and realloc.yield_divisor: 64 times takes a
/// default weight of 1024 to 65,536 or 16, well inside libvirt's 2..262,144,
/// and disk weights span only 100..1000.
const MAX_WEIGHT_FACTOR: u64 = 64;

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

/// `[power]`: where the host's power comes from and what ebb does when it fails.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct PowerSection {
    /// A UPS served by NUT's upsd: `name@host:port` (port 3493 when left out).
    pub ups: Option<String>,
    /// The CA (a PEM file) upsd's certificate must chain to. Set, every
    /// reading is over TLS (STARTTLS) and a upsd that cannot prove itself
    /// is not read; unset, readings are plain TCP, unauthenticated.
    pub ups_ca: Option<PathBuf>,
    /// The name upsd's certificate must be issued for; default: the host of
    /// `ups` (set it when ebb reaches upsd by an address the certificate
    /// does not name).
    pub ups_tls_name: Option<String>,
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
    /// How long one whole reading of the UPS may take: the name lookup, the
    /// connect, STARTTLS and the handshake (with `ups_ca`) and every line of
    /// the answer.
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
            number(&format!("power.devices.{name}"), v, Range::OpenClosed(0.0, 1.0), "")?;
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
            ups_ca: None,
            ups_tls_name: None,
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

    /// `name@host[:port]` → (name, host:port), as upsc takes it; an IPv6
    /// host goes in brackets (`ups@[::1]:3493`).
    pub fn ups_address(&self) -> Option<Result<(String, String), String>> {
        let text = self.ups.as_ref()?;
        Some(parse_ups(text).map_err(|why| {
            format!("power.ups = {text:?}: {why}; write it as name@host, name@host:port or name@[IPv6]:port, as upsc takes it")
        }))
    }

    /// The name upsd's certificate must hold: `ups_tls_name`, else the
    /// host of `addr` (`host:port`, an IPv6 host in brackets).
    pub fn ups_tls_name(&self, addr: &str) -> String {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        self.ups_tls_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    /// The UPS and the client that reads it, over TLS when `ups_ca` is set
    /// (its CA file loaded now: `ebb check` and `ebb run` refuse one that
    /// cannot be used alike); None without `ups`.
    pub fn ups_reader(&self) -> Option<Result<UpsAddress, String>> {
        let (ups, addr) = match self.ups_address()? {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        };
        let client = NutClient::new(addr.clone(), self.timeout);
        let Some(ca) = &self.ups_ca else {
            return Some(Ok(UpsAddress { ups, client }));
        };
        let name = self.ups_tls_name(&addr);
        Some(match NutTls::new(ca, &name) {
            Ok(tls) => Ok(UpsAddress { ups, client: client.with_tls(tls) }),
            Err(e @ TlsSetupError::BadName) if self.ups_tls_name.is_some() => Err(format!("power.ups_tls_name = {name:?} {e}")),
            Err(e @ TlsSetupError::BadName) => Err(format!("the host of power.ups ({name:?}) {e}: set power.ups_tls_name")),
            Err(e) => Err(format!("power.ups_ca = {:?} {e}", ca.display().to_string())),
        })
    }
}

fn parse_ups(text: &str) -> Result<(String, String), &'static str> {
    let (name, rest) = text.split_once('@').filter(|(n, h)| !n.is_empty() && !h.is_empty()).ok_or("it names no UPS or no host")?;
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (ip, after) = v6.split_once(']').ok_or("the IPv6 address has no closing ']'")?;
            ip.parse::<Ipv6Addr>().map_err(|_| "the text in brackets is not an IPv6 address")?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("only :port may follow the ']'")?),
            };
            (format!("[{ip}]"), port)
        }
        None => match rest.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err("an IPv6 address goes in brackets"),
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (rest.to_string(), None),
        },
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("the host is empty or has spaces");
    }
    let port = match port {
        None => 3493,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or("the port must be a number from 1 to 65535")?,
    };
    Ok((name.to_string(), format!("{host}:{port}")))
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
    /// Beyond wake_deadline, how long a held client waits for its replay's
    /// first answer: its answer or refusal comes within the sum.
    #[serde(deserialize_with = "de_duration")]
    pub replay_deadline: Duration,
    /// Between connection attempts to a waking VM's service.
    #[serde(deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// Held clients per service replayed to a woken VM at once, to begin with.
    pub replay_in_flight: usize,
    /// How an awake VM's connections reach it: "auto" (the kernel forwards
    /// the services that qualify, where nft works), "kernel" (the same,
    /// and an nft that does not work stops startup) or "splice" (ebb
    /// splices every connection itself).
    pub awake_path: AwakePath,
    /// The nft program the kernel path runs.
    pub nft: String,
    /// The agent's split of its descriptor limit, set at start (not config).
    #[serde(skip)]
    pub fd_plan: Option<FdPlan>,
}

impl Default for SurrogateSection {
    fn default() -> Self {
        let d = Limits::default();
        SurrogateSection {
            queue_depth: d.queue_depth,
            max_held_bytes: Size(Bytes(d.max_held_bytes as u64)),
            max_held_bytes_per_vm: Size(Bytes(d.max_held_bytes_per_vm as u64)),
            wake_deadline: d.wake_deadline,
            replay_deadline: d.replay_deadline,
            probe_interval: d.probe_interval,
            replay_in_flight: d.replay_in_flight,
            awake_path: AwakePath::default(),
            nft: "nft".into(),
            fd_plan: None,
        }
    }
}

impl SurrogateSection {
    pub fn limits(&self) -> Limits {
        let limits = Limits {
            queue_depth: self.queue_depth,
            max_held_bytes: self.max_held_bytes.0 .0 as usize,
            max_held_bytes_per_vm: self.max_held_bytes_per_vm.0 .0 as usize,
            wake_deadline: self.wake_deadline,
            replay_deadline: self.replay_deadline,
            probe_interval: self.probe_interval,
            replay_in_flight: self.replay_in_flight,
            ..Limits::default()
        };
        match &self.fd_plan {
            Some(plan) => plan.apply(limits),
            None => limits,
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
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512MiB\" or a whole number of bytes")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Bytes, E> {
                u64::try_from(n).map(Bytes).map_err(|_| E::custom(format!("{n} is negative: a size must be more than zero")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Bytes, E> {
                Ok(Bytes(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bytes, E> {
                s.parse().map_err(E::custom)
            }
        }
        let bytes = d.deserialize_any(SizeVisitor)?;
        if bytes == Bytes::ZERO {
            return Err(de::Error::custom("a size of zero is not allowed here"));
        }
        Ok(Size(bytes))
    }
}

/// `"2s"`, `"250ms"`, `"1m"`, `"1h"`, or a number of seconds; more than
/// zero and at most `MAX_DURATION`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"2s\" or \"250ms\", or a number of seconds")
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            seconds(n as f64, &n.to_string()).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            seconds(n as f64, &n.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
            seconds(n, &n.to_string()).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    d.deserialize_any(DurationVisitor)
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
    seconds(secs, &format!("\"{s}\""))
}

/// A number of seconds as a duration, within [1 ms, MAX_DURATION]: what
/// `Duration::from_secs_f64` would panic on (infinite, too large) is
/// refused first. `text` is the value as written, for the message.
fn seconds(secs: f64, text: &str) -> Result<Duration, String> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{text}: a duration must be more than zero"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("{text} is longer than a year, the longest duration ebb takes"));
    }
    // The policies count time in whole milliseconds: less would be zero.
    if secs < 0.001 {
        return Err(format!("{text} is shorter than a millisecond, the finest time ebb keeps"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where a config number must lie. Every float of the config goes through
/// `number`, which refuses NaN and the infinities whatever the range.
#[derive(Clone, Copy)]
enum Range {
    Closed(f64, f64),
    ClosedOpen(f64, f64),
    OpenClosed(f64, f64),
    Above(f64),
    AtLeast(f64),
}

impl Range {
    fn contains(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Range::Closed(lo, hi) => lo <= v && v <= hi,
                Range::ClosedOpen(lo, hi) => lo <= v && v < hi,
                Range::OpenClosed(lo, hi) => lo < v && v <= hi,
                Range::Above(lo) => lo < v,
                Range::AtLeast(lo) => lo <= v,
            }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Closed(lo, hi) => write!(f, "in [{lo}, {hi}]"),
            Range::ClosedOpen(lo, hi) => write!(f, "in [{lo}, {hi})"),
            Range::OpenClosed(lo, hi) => write!(f, "in ({lo}, {hi}]"),
            Range::Above(lo) => write!(f, "above {lo}"),
            Range::AtLeast(lo) => write!(f, "of at least {lo}"),
        }
    }
}

/// `field = v` must be a finite number within `range`; `hint` (may be
/// empty) ends the message.
fn number(field: &str, v: f64, range: Range, hint: &str) -> Result<(), String> {
    if range.contains(v) {
        Ok(())
    } else {
        Err(format!("{field} = {v} is out of range: give a finite number {range}{hint}"))
    }
}

/// The sleep threshold's one rule, for `[vm.NAME.sleep]` and a domain's
/// `<sleep cpu_threshold>` metadata alike.
pub fn check_cpu_threshold(field: &str, v: f64) -> Result<(), String> {
    number(field, v, Range::Closed(0.0, 1.0), " (a fraction of one vCPU, like 0.05)")
}

/// A path with `.` dropped and `..` taken off lexically: the files need
/// not exist yet, so no link is followed.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            c => out.push(c),
        }
    }
    out
}

impl AgentSection {
    pub fn is_ebbs(&self, name: &str) -> bool {
        self.domains.is_empty() || self.domains.iter().any(|p| glob_match(p, name))
    }

    /// The gid of `socket_group` on this host; None: no group, root only.
    pub fn socket_gid(&self) -> Result<Option<u32>, String> {
        let Some(name) = &self.socket_group else { return Ok(None) };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            Ok(None) => Err(format!("agent.socket_group = {name:?}: this host has no such group; create it (groupadd {name}) or leave socket_group out (root only)")),
            Err(e) => Err(format!("agent.socket_group = {name:?} could not be looked up: {e}")),
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (name, tick) in [("tick", self.tick), ("fast_tick", self.fast_tick)] {
            if tick < MIN_TICK {
                return Err(format!("agent.{name} = {tick:?} is shorter than {MIN_TICK:?}: each tick reads every domain from libvirt, so a shorter one only spins"));
            }
        }
        let socket = self.socket.as_os_str();
        if socket.is_empty() {
            return Err("agent.socket is empty: an empty path would make Linux bind an abstract socket, which no file permission protects; give a path such as /run/ebb/ebb.sock".into());
        }
        if socket.len() > MAX_SOCKET_PATH {
            return Err(format!(
                "agent.socket is {} bytes long: a unix socket path holds at most {MAX_SOCKET_PATH} bytes (SUN_LEN); pick a shorter path",
                socket.len()
            ));
        }
        // A stale socket is removed at start: on the journal or one of
        // SQLite's files beside it, that would delete the journal.
        let (socket, journal) = (lexical(&self.socket), lexical(&self.journal));
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = journal.clone().into_os_string();
            file.push(suffix);
            if socket.as_os_str() == file {
                return Err(format!(
                    "agent.socket = {} is the journal's own file {}: ebb would remove it as a stale socket; give the socket a path of its own",
                    self.socket.display(),
                    file.to_string_lossy()
                ));
            }
        }
        self.socket_gid().map(|_| ())
    }
}

/// `*` matches any run of characters; everything else matches itself.
/// Domain names come from whoever defines domains, so the match is the
/// classic greedy walk: on a mismatch the last `*` takes one character
/// more, and nothing before it is tried again. At most pattern × name
/// steps, never exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    // The last `*` seen: the pattern index after it, and the name index it
    // has taken characters up to.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if p.get(i) == Some(&'*') {
            star = Some((i + 1, j));
            i += 1;
        } else if p.get(i) == Some(&n[j]) {
            i += 1;
            j += 1;
        } else if let Some((after, taken)) = star {
            star = Some((after, taken + 1));
            i = after;
            j = taken + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
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
        self.agent.validate()?;
        number("memory.idle_tax", m.idle_tax, Range::ClosedOpen(0.0, 1.0), " (0.75 is ESX's default)")?;
        for (name, v) in [
            ("dead_band_fraction", m.dead_band_fraction),
            ("headroom_fraction", m.headroom_fraction),
            ("low_free_fraction", m.low_free_fraction),
        ] {
            number(&format!("memory.{name}"), v, Range::ClosedOpen(0.0, 1.0), "")?;
        }
        number("memory.major_fault_rate", m.major_fault_rate, Range::Above(0.0), " (major page faults per second)")?;
        if m.step_min.0 > m.step_max.0 {
            return Err(format!(
                "memory.step_min ({}) is above memory.step_max ({})",
                m.step_min.0, m.step_max.0
            ));
        }
        self.surrogate.limits().validate().map_err(|e| format!("[surrogate]: {e}"))?;
        self.realloc.validate()?;
        if let Some(Err(e)) = self.power.ups_reader() {
            return Err(e);
        }
        if self.power.ups.is_none() && (self.power.ups_ca.is_some() || self.power.ups_tls_name.is_some()) {
            return Err("power.ups_ca and power.ups_tls_name authenticate the UPS's upsd, but power.ups is not set: set it, or remove them".into());
        }
        if self.power.ups_ca.is_none() && self.power.ups_tls_name.is_some() {
            return Err("power.ups_tls_name is set without power.ups_ca: set power.ups_ca to the CA that signed upsd's certificate (the name is checked only over TLS)".into());
        }
        if let Some(t) = &self.power.model_table {
            if t.len() != 11 {
                return Err(format!("power.model_table has {} values: give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling", t.len()));
            }
            for (i, w) in t.iter().enumerate() {
                number(&format!("power.model_table[{i}]"), *w, Range::AtLeast(0.0), " (watts)")?;
            }
            if t.windows(2).any(|w| w[1] < w[0]) {
                return Err("power.model_table falls: give 11 watt figures, at 0 %, 10 %, …, 100 % CPU, never falling".into());
            }
        }
        number("power.idle_watts", self.power.idle_watts, Range::AtLeast(0.0), "")?;
        number("power.max_watts", self.power.max_watts, Range::AtLeast(0.0), "")?;
        if self.power.max_watts < self.power.idle_watts {
            return Err(format!(
                "power.max_watts ({}) must be at least power.idle_watts ({})",
                self.power.max_watts, self.power.idle_watts
            ));
        }
        if let Some(b) = self.power.budget {
            number("power.budget", b, Range::Above(0.0), " (watts the host may draw on battery)")?;
        }
        number("power.low_charge", self.power.low_charge, Range::Closed(0.0, 100.0), " (percent)")?;
        if self.power.power_off_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err("power.power_off_command is empty: give the command and its arguments, e.g. [\"systemctl\", \"poweroff\"]".into());
        }
        self.power.devices.validate()?;
        // The surrogate's own rules, through the function it runs them with:
        // `ebb check` and `ebb run` cannot disagree on a service.
        let services: Vec<(&str, &[ServiceSpec])> = self.vm.iter().map(|(name, vm)| (name.as_str(), vm.service.as_slice())).collect();
        ebb_surrogate::validate_services(&services).map_err(|e| e.to_string())?;
        for (name, vm) in &self.vm {
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
                check_cpu_threshold(&format!("vm.{name}.sleep.cpu_threshold"), sleep.cpu_threshold)?;
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
                    let hint = " (a fraction of one vCPU: 1.0 is a whole CPU)";
                    number(&format!("vm.{name}.realloc.cpu_cap_max"), c, Range::OpenClosed(0.0, f64::from(MAX_CPUS)), hint)?;
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

/// toml's message on one line, with the line and the key it was reading,
/// without the source excerpt.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
    // Without the input toml's text is the message and, when it knows the
    // key, a last line "in `agent.tick`".
    let mut bare = e.clone();
    bare.set_input(None);
    let bare = bare.to_string();
    let key = bare.trim_end().rsplit_once('\n').and_then(|(_, last)| last.strip_prefix("in `")?.strip_suffix('`'));
    let key = key.map(|k| format!("{k}: ")).unwrap_or_default();
    format!("{line}{key}{}", e.message().trim())
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
            (c.power.low_battery(), c.power.sysfs, c.power.timeout, c.power.ups, c.power.shutdown_timeout, c.power.ups_ca, c.power.ups_tls_name),
            (d.low_battery(), d.sysfs, d.timeout, d.ups, d.shutdown_timeout, d.ups_ca, d.ups_tls_name)
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
    fn a_pattern_with_many_stars_matches_in_linear_time() {
        // Exponential backtracking would never finish these.
        let name = format!("relx-{}", "a".repeat(200));
        let stars = format!("relx-{}b", "*a".repeat(30));
        assert!(!glob_match(&stars, &name));
        assert!(glob_match(&format!("{}*", "*a".repeat(30)), &name));
        assert!(glob_match(&format!("relx-{}", "*a".repeat(30)), &name));
        let c = Config::parse(&format!("[agent]\ndomains = [{stars:?}]\n")).unwrap();
        assert!(!c.agent.is_ebbs(&name));
        assert!(glob_match("wé*🚀", "wéb-🚀") && !glob_match("w?b", "web"));
    }

    /// The plain definition, exponential but fine on small inputs.
    fn glob_reference(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|k| glob_reference(rest, &n[k..])),
            Some((c, rest)) => n.first() == Some(c) && glob_reference(rest, &n[1..]),
        }
    }

    proptest::proptest! {
        #[test]
        fn glob_match_agrees_with_the_definition(pattern in "[ab*é]{0,8}", name in "[abé]{0,10}") {
            let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
            proptest::prop_assert_eq!(glob_match(&pattern, &name), glob_reference(&p, &n));
        }
    }

    #[test]
    fn ups_addresses_parse_host_and_port_as_upsc_does() {
        let ups = |text: &str| PowerSection { ups: Some(text.into()), ..PowerSection::default() }.ups_address().unwrap();
        assert_eq!(ups("u@host").unwrap(), ("u".into(), "host:3493".into()));
        assert_eq!(ups("u@10.0.0.5:3494").unwrap(), ("u".into(), "10.0.0.5:3494".into()));
        assert_eq!(ups("u@[::1]").unwrap(), ("u".into(), "[::1]:3493".into()));
        assert_eq!(ups("u@[fe80::1]:3494").unwrap(), ("u".into(), "[fe80::1]:3494".into()));
        for (bad, why) in [
            ("u@127.0.0.1:99999", "from 1 to 65535"),
            ("u@127.0.0.1:0", "from 1 to 65535"),
            ("u@127.0.0.1:", "from 1 to 65535"),
            ("u@[::1", "no closing ']'"),
            ("u@[::1]x", "only :port"),
            ("u@[nope]:1", "not an IPv6 address"),
            ("u@::1", "in brackets"),
            ("u@:3493", "host is empty"),
            ("u@a b", "host is empty or has spaces"),
            ("@host", "names no UPS"),
        ] {
            let e = ups(bad).unwrap_err();
            assert!(e.contains(&format!("power.ups = {bad:?}")) && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ups_ca_that_cannot_be_used_is_refused_with_the_field_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let parse = |power: String| Config::parse(&format!("[power]\nups = \"u@127.0.0.1\"\n{power}")).unwrap_err();
        let e = parse("ups_ca = \"/nonexistent/ca.pem\"\n".into());
        assert!(e.starts_with("power.ups_ca = \"/nonexistent/ca.pem\" cannot be read (No such file or directory"), "{e}");
        // A wrong path is refused, not read without end (or waited on).
        for path in ["/dev/zero", "/"] {
            let e = parse(format!("ups_ca = \"{path}\"\n"));
            assert!(e.starts_with(&format!("power.ups_ca = \"{path}\" is not a file")), "{e}");
        }
        let big = dir.path().join("big.pem");
        std::fs::File::create(&big).unwrap().set_len(ebb_backends::nut::MAX_CA_BYTES + 1).unwrap();
        let e = parse(format!("ups_ca = \"{}\"\n", big.display()));
        assert!(e.contains("big.pem\" is larger than 1048576 bytes"), "{e}");
        let block = |body: &str| format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n");
        for (name, text, why) in [
            ("empty.pem", String::new(), "holds no certificate: give the CA certificate in PEM"),
            ("binary.der", "0\u{82}\u{1}\n".into(), "holds no certificate"),
            ("key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(), "holds no certificate"),
            ("base64.pem", block("!!!!"), "is not a PEM file ("),
            ("junk.pem", block("AAAA"), "certificate 1 in it cannot be a CA ("),
        ] {
            let path = file(name, &text);
            let e = parse(format!("ups_ca = \"{path}\"\n"));
            assert!(e.starts_with(&format!("power.ups_ca = \"{path}\" {why}")), "{name}: {e}");
        }
        let ca = file("junk2.pem", &block("AAAA"));
        let e = parse(format!("ups_ca = \"{ca}\"\nups_tls_name = \"no spaces please\"\n"));
        assert!(e.starts_with("power.ups_tls_name = \"no spaces please\" is neither a host name nor an IP address"), "{e}");
        let e = Config::parse(&format!("[power]\nups_ca = \"{ca}\"\n")).unwrap_err();
        assert!(e.contains("power.ups is not set"), "{e}");
        let e = Config::parse("[power]\nups = \"u@h\"\nups_tls_name = \"h\"\n").unwrap_err();
        assert!(e.starts_with("power.ups_tls_name is set without power.ups_ca"), "{e}");
    }

    #[test]
    fn the_tls_name_is_the_host_of_power_ups_unless_given() {
        let power = |ups: &str, name: Option<&str>| PowerSection { ups: Some(ups.into()), ups_tls_name: name.map(Into::into), ..PowerSection::default() };
        let name = |p: PowerSection| p.ups_tls_name(&p.ups_address().unwrap().unwrap().1);
        assert_eq!(name(power("u@ups.lan", None)), "ups.lan");
        assert_eq!(name(power("u@10.0.0.5:3494", None)), "10.0.0.5");
        assert_eq!(name(power("u@[fe80::1]:3494", None)), "fe80::1");
        assert_eq!(name(power("u@10.0.0.5", Some("ups.lan"))), "ups.lan");
    }

    #[test]
    fn paths_compare_after_lexical_normalisation() {
        assert_eq!(lexical(Path::new("/var/lib/./ebb/../ebb//j.db")), PathBuf::from("/var/lib/ebb/j.db"));
        assert_eq!(lexical(Path::new("/../j.db")), PathBuf::from("/j.db"));
        assert_eq!(lexical(Path::new("../a/./b/..")), PathBuf::from("../a"));
        let e = Config::parse("[agent]\nsocket = \"/var/lib/ebb/../ebb/journal.db-wal\"\n").unwrap_err();
        assert!(e.contains("the journal's own file /var/lib/ebb/journal.db-wal"), "{e}");
    }

    #[test]
    fn the_sleep_threshold_is_one_rule_for_the_config_and_the_metadata() {
        for v in ["-0.1", "1.5", "inf", "NaN"] {
            let from_config = Config::parse(&format!("[vm.web.sleep]\ncpu_threshold = {}\n", v.to_lowercase())).unwrap_err();
            let from_metadata = crate::settings::parse_metadata(&format!(r#"<vm><sleep cpu_threshold="{v}"/></vm>"#)).unwrap_err();
            assert!(from_config.contains("in [0, 1]") && from_metadata.contains("in [0, 1]"), "{v}: {from_config} / {from_metadata}");
        }
        for v in ["0", "0.05", "1"] {
            Config::parse(&format!("[vm.web.sleep]\ncpu_threshold = {v}\n")).unwrap();
            crate::settings::parse_metadata(&format!(r#"<vm><sleep cpu_threshold="{v}"/></vm>"#)).unwrap();
        }
    }

    #[test]
    fn durations_are_more_than_zero_and_at_most_a_year() {
        assert_eq!(parse_duration("366h").unwrap(), Duration::from_secs(366 * 3600));
        assert!(parse_duration("9000h").unwrap_err().contains("longer than a year"));
        assert!(parse_duration("0.0000000000001ms").unwrap_err().contains("shorter than a millisecond"));
        assert!(parse_duration("0.5ms").unwrap_err().contains("shorter than a millisecond"));
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
        let e = Config::parse("[vm.web.sleep]\nidle_after = 1e-12\n").unwrap_err();
        assert!(e.contains("line 2: vm.web.sleep.idle_after") && e.contains("shorter than a millisecond"), "{e}");
        let e = crate::settings::parse_metadata(r#"<vm><sleep idle_after="99999999999999999999999h"/></vm>"#).unwrap_err();
        assert!(e.contains("longer than a year"), "{e}");
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
