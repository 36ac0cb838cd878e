//! The API's types, shared by the server (agent) and the client (CLI) so
//! neither re-declares a struct. The journal's events, the settings' sources
//! and the sleep records are defined where they are decided and served as
//! they are: this module depends on them, never the other way.

pub use crate::journal::Event;
pub use crate::settings::{SettingSources, Source};
pub use ebb_core::sleep::SleepRecord;

pub use ebb_core::clients::ClientView;

use ebb_core::human::Span;
use ebb_core::memory::VmMemoryView;
use ebb_core::realloc::VmReallocView;
use ebb_core::sleep::VmIdleView;
use ebb_core::{Bytes, Millis, VmSettings, VmState};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Connection {
    Connected { since: Millis },
    Disconnected { since: Millis, error: String, attempts: u32, next_try_at: Millis },
}

/// Everything the agent knows now; published after every tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub status: Status,
    pub vms: Vec<VmInfo>,
    /// The active clients of the VMs (`ebb clients`).
    #[serde(default)]
    pub clients: Vec<ClientView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uri: String,
    pub connection: Connection,
    pub started_at: Millis,
    pub tick_ms: u64,
    pub ticks: u64,
    pub last_tick_at: Option<Millis>,
    /// Wall time of the last tick's observe + decide + act.
    pub last_tick_ms: f64,
    pub memory_enabled: bool,
    pub pool: Option<Bytes>,
    pub pool_used: Bytes,
    /// Why the pool is smaller than asked (the host short of its reserve,
    /// the floors adding up past it), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_note: Option<String>,
    /// Of the guests' sizes, what the host does not hold (see `Pool::returned`).
    #[serde(default)]
    pub returned: Bytes,
    pub host_total: Bytes,
    pub host_available: Bytes,
    pub vms: usize,
    pub vms_managed: usize,
    pub actions_total: u64,
    pub action_failures_total: u64,
    pub sleeps_total: u64,
    pub wakes_total: u64,
    /// Wall time of the last wake (restore or resume call), for /metrics.
    pub last_wake_ms: Option<f64>,
    /// The host's active clients: their timers not yet run out (seed 002).
    #[serde(default)]
    pub active_clients: usize,
    pub journal: String,
    /// Why journal writes are waiting (a full disk), while they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_trouble: Option<String>,
    /// The host's power source; None when none is configured or seen.
    #[serde(default)]
    pub power: Option<PowerStatus>,
    /// The link to the farm's etcd, with `[farm]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm: Option<ebb_farm::LinkStatus>,
    /// The host's own sleep, with `[farm.sleep]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_sleep: Option<HostSleepView>,
}

/// The host's sleep cycle in the farm, as `ebb status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSleepView {
    /// awake, draining, or "asleep (recorded)".
    pub state: String,
    /// What keeps it awake, or why it sleeps, in words.
    pub why: String,
    pub last_sleep: Option<(Millis, String)>,
    pub last_wake: Option<(Millis, String)>,
    pub sleeps_total: u64,
    pub wakes_total: u64,
    /// The farm's last wake of this host (its `woke` key): from the
    /// coordinator's first send to this agent's `awake`, in ms.
    #[serde(default)]
    pub last_wake_took_ms: Option<u64>,
}

/// `ebb power`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerStatus {
    pub reading: Option<ebb_core::power::PowerReading>,
    pub state: Option<ebb_core::power::PowerState>,
    /// Why the last reading failed (upsd unreachable, unknown UPS, …).
    pub error: Option<String>,
    /// VMs ebb saved on low battery, restored when mains power is back.
    pub saved_for_power: Vec<String>,
    /// The last power-off, in words (run, or recorded when no command is set).
    pub last_power_off: Option<String>,
    /// With a budget: the plan for a power drop, as it stands this tick.
    #[serde(default)]
    pub plan: Option<PlanView>,
    /// The host's draw by the power model at the VMs' CPU use now…
    #[serde(default)]
    pub model_draw: Option<ebb_core::power::Watts>,
    /// …and measured on the host (RAPL), or why that failed.
    #[serde(default)]
    pub measured: Option<ebb_core::power::Measured>,
    #[serde(default)]
    pub measured_error: Option<String>,
    /// CPU frequency and disk standby, when either is on (or ebb still
    /// holds a CPU change to give back).
    #[serde(default)]
    pub devices: Option<DevicesView>,
}

/// The host's devices under device power (`[power.devices]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DevicesView {
    /// None when cpufreq is off and ebb holds no change.
    pub cpu: Option<CpufreqView>,
    /// None when disk standby is off.
    pub disks: Option<DisksView>,
    /// CPU changes and disk standbys since the agent started.
    pub cpufreq_changes_total: u64,
    pub disk_standbys_total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpufreqView {
    pub enabled: bool,
    pub cpu_low: f64,
    pub cpu_high: f64,
    /// The VMs' use, whether ebb saves, and what it changed and found.
    pub policy: ebb_core::devices::CpuView,
    /// Each CPU as it is now (after this tick's writes).
    pub cpus: Vec<ebb_core::devices::CpuFreq>,
    /// The last change ebb made and why, in words.
    pub last_change: Option<String>,
    /// Why cpufreq could not be read or written (no cpufreq, a file that
    /// cannot be written, …).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DisksView {
    pub idle_after_ms: u64,
    pub disks: Vec<ebb_core::devices::DiskView>,
    /// The last standby, in words (run, or recorded when no command is set).
    pub last_standby: Option<String>,
    pub error: Option<String>,
}

/// `ebb plan`: the core's view of the power-drop plan, served as it is.
pub use ebb_core::power::PlanView;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub memory: VmMemoryView,
    pub settings: VmSettings,
    pub sources: SettingSources,
    /// Settings that were ignored (bad metadata, contradictions), in words.
    pub settings_problems: Vec<String>,
    /// Set while ebb holds the VM asleep.
    pub sleeping: Option<SleepRecord>,
    /// What the idle detector sees; None when sleep is not enabled for it.
    pub idle: Option<VmIdleView>,
    /// Its declared services as the surrogate serves them; None without services.
    pub surrogate: Option<SurrogateView>,
    /// Its class and CPU tune under activity-based reallocation; None when
    /// reallocation is off.
    #[serde(default)]
    pub realloc: Option<VmReallocView>,
    /// With `vcpus_min`: its guest's online vCPUs and why, or why they could not be read.
    #[serde(default)]
    pub vcpus: Option<Result<ebb_core::vcpus::VcpuView, String>>,
    /// With a `cpus` bound: its pinning and why.
    #[serde(default)]
    pub affinity: Option<ebb_core::affinity::AffinityView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurrogateView {
    /// awake, asleep, waking, or wake failed: …
    pub state: String,
    /// "name listen→backend" of each service.
    pub services: Vec<String>,
    pub open_connections: u64,
    pub held_connections: u64,
    pub answered_locally: u64,
    pub refused: u64,
    /// Client bytes spliced through, both ways (on the kernel path: IP
    /// packet bytes the kernel forwarded, headers included).
    pub bytes: u64,
    /// How each TCP service reaches the VM while it is awake, and why:
    /// "http: kernel (…)" or "ssh: splice (…)".
    #[serde(default)]
    pub awake_paths: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    pub vm: String,
    /// The VM as the agent sees it now; None when it is not on the host.
    pub now: Option<VmInfo>,
    /// Plain-words sentences: what ebb is doing with this VM and why.
    pub summary: Vec<String>,
    /// The recent journal entries about it, newest first.
    pub events: Vec<Event>,
}

/// `ebb needs VM`: its history hour by hour (UTC), hours without samples left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Needs {
    pub vm: String,
    pub hours: Vec<ebb_core::needs::HourNeeds>,
}

/// `POST /v1/clients/NAME/heartbeat`: the VM the client uses and how long
/// this heartbeat keeps it active (seconds, or "30s"; default
/// `clients.heartbeat_ttl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub vm: String,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "span_as_text")]
    pub ttl: Option<Span>,
}

/// As people write it ("30s"): `Span` serializes as milliseconds, but a
/// bare number reads back as seconds.
fn span_as_text<S: serde::Serializer>(t: &Option<Span>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

/// The answer to a request the agent carried out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub done: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A VM's value for power drops as the CLI and the API take it: a whole
/// number, or `clear` (back to the config's) as `None`.
pub fn parse_value(text: &str) -> Result<Option<u32>, String> {
    match text {
        "clear" => Ok(None),
        v => v.parse::<u32>().map(Some).map_err(|_| format!("a value is a whole number from 0 to {}, or clear; not {v:?}", u32::MAX)),
    }
}
