//! Device power, the pure part (seed 000's Figure 2, SPEC §4): watch how
//! much of the host's CPUs and disks the VMs use, put an under-used device in
//! a lower power state and bring it back when use returns.
//!
//! - CPU frequency: while the VMs use under `cpu_low` of the host's CPUs for
//!   `cpu_low_after` straight, every CPU is set to save power (the configured
//!   governor when the CPU offers it, else a lower `scaling_max_freq`); at
//!   `cpu_high` or more it goes back at once to what ebb found. The band and
//!   the hold keep it from flapping. What was found is kept (and journaled
//!   by the agent) so it is restored on return, at stop and after a restart;
//!   a value someone else writes meanwhile is theirs and is left alone.
//! - Disk standby: a disk whose I/O counters have not moved for
//!   `disk_idle_after` is put in standby once, and again only after it has
//!   been used and gone idle again. A disk that holds a running VM's image is
//!   never put in standby under it, and the view names the VM.
//!
//! The agent reads sysfs and carries the actions out; their outcomes come
//! back through `Policy::outcome`, so a failed write leaves the state as it was.

use crate::human::{number, FieldError, Range, Span};
use crate::model::{Action, Activity, Observation, Reason, Rule, VmId, VmState};
use crate::policy::{Decision, Outcome, Policy};
use crate::rates::ActivityRates;
use crate::units::Millis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Device power: the agent's `[power.devices]` config section itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// ebb may change the CPUs' frequency scaling (off by default: the
    /// host's governor is the operator's until they ask).
    pub cpufreq: bool,
    /// VMs' CPU use, as a fraction of the host's CPUs, under which the CPUs save…
    pub cpu_low: f64,
    /// …held this long first…
    pub cpu_low_after: Span,
    /// …and at or above which they are given back at once.
    pub cpu_high: f64,
    /// The governor that saves power, when a CPU offers it.
    pub governor: String,
    /// Otherwise `scaling_max_freq` is lowered to this fraction of the CPU's
    /// top frequency (never below its lowest).
    pub max_freq_fraction: f64,
    /// A disk without I/O for this long goes to standby; None: never.
    pub disk_idle_after: Option<Span>,
    /// What the platform runs for a standby, with `/dev/NAME` appended;
    /// None: the standby is recorded, not run. (The policy never reads it.)
    pub disk_standby_command: Option<Vec<String>>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            cpufreq: false,
            cpu_low: 0.25,
            cpu_low_after: Span::from_secs(60),
            cpu_high: 0.5,
            governor: "powersave".into(),
            max_freq_fraction: 0.5,
            disk_idle_after: None,
            disk_standby_command: None,
        }
    }
}

/// The governors Linux's cpufreq offers.
const GOVERNORS: [&str; 6] = ["performance", "powersave", "userspace", "ondemand", "conservative", "schedutil"];

impl DeviceConfig {
    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (name, v) in [("cpu_low", self.cpu_low), ("cpu_high", self.cpu_high), ("max_freq_fraction", self.max_freq_fraction)] {
            number(&format!("power.devices.{name}"), v, Range::OpenClosed(0.0, 1.0), "")?;
        }
        if self.cpu_low >= self.cpu_high {
            return Err(FieldError::new("power.devices.cpu_low", format!(
                "power.devices.cpu_low ({}) must be below power.devices.cpu_high ({}): the band between them keeps the CPUs from flapping",
                self.cpu_low, self.cpu_high
            )));
        }
        if !GOVERNORS.contains(&self.governor.as_str()) {
            return Err(FieldError::new("power.devices.governor", format!(
                "power.devices.governor = {:?} is not a cpufreq governor: use one of {} (powersave or conservative save power)",
                self.governor,
                GOVERNORS.join(", ")
            )));
        }
        if self.disk_standby_command.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(FieldError::new("power.devices.disk_standby_command", "power.devices.disk_standby_command is empty: give the command and its arguments, e.g. [\"hdparm\", \"-y\"] (ebb adds /dev/NAME)"));
        }
        Ok(())
    }
}

/// One CPU's frequency scaling as sysfs shows it (kHz, as sysfs counts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuFreq {
    pub cpu: u32,
    pub governor: String,
    /// `scaling_available_governors`.
    pub governors: Vec<String>,
    /// `scaling_max_freq`.
    pub max_khz: u64,
    /// `cpuinfo_min_freq` and `cpuinfo_max_freq`: what the hardware can do.
    pub hw_min_khz: u64,
    pub hw_max_khz: u64,
}

/// What ebb writes to one CPU: a governor, a frequency cap, or both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSetting {
    pub cpu: u32,
    pub governor: Option<String>,
    pub max_khz: Option<u64>,
}

/// A change ebb made to one CPU: what it wrote and what it found there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuChange {
    pub applied: CpuSetting,
    pub found: CpuSetting,
}

impl CpuChange {
    /// The writes that undo it: only the fields ebb changed.
    pub fn undo(&self) -> CpuSetting {
        CpuSetting {
            cpu: self.found.cpu,
            governor: self.applied.governor.as_ref().and(self.found.governor.clone()),
            max_khz: self.applied.max_khz.and(self.found.max_khz),
        }
    }

    /// The CPU still shows what ebb wrote (nobody changed it since).
    fn holds(&self, now: &CpuFreq) -> bool {
        self.applied.governor.as_ref().is_none_or(|g| *g == now.governor)
            && self.applied.max_khz.is_none_or(|k| k == now.max_khz)
    }
}

impl CpuFreq {
    /// What saving power means for this CPU; None when it saves already.
    pub fn saving(&self, cfg: &DeviceConfig) -> Option<CpuChange> {
        let found = CpuSetting { cpu: self.cpu, governor: Some(self.governor.clone()), max_khz: Some(self.max_khz) };
        let applied = if self.governors.contains(&cfg.governor) {
            (self.governor != cfg.governor).then(|| CpuSetting { cpu: self.cpu, governor: Some(cfg.governor.clone()), max_khz: None })
        } else {
            let cap = ((self.hw_max_khz as f64 * cfg.max_freq_fraction) as u64).max(self.hw_min_khz);
            (self.max_khz > cap).then_some(CpuSetting { cpu: self.cpu, governor: None, max_khz: Some(cap) })
        }?;
        Some(CpuChange { applied, found })
    }
}

/// One I/O counter per host disk: sectors read plus written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSample {
    pub name: String,
    pub io: u64,
}

/// The CPUs as `ebb power` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuView {
    /// The VMs' CPU use as a fraction of the host's CPUs; None until two
    /// readings of every running VM's counters.
    pub vms_use: Option<f64>,
    /// ebb holds the CPUs in their power-saving setting.
    pub saving: bool,
    /// Since when the use has been under `cpu_low`.
    pub low_since: Option<Millis>,
    /// What ebb changed and what it found, per CPU, while saving.
    pub changes: Vec<CpuChange>,
    /// CPUs whose setting someone else changed after ebb set it, this tick:
    /// ebb forgets its change to them (and will not "restore" over theirs).
    /// The agent journals it; not shown.
    #[serde(skip)]
    pub taken_over: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DiskState {
    /// I/O within `disk_idle_after`.
    Active,
    /// No I/O since `since`; standby comes at `since + disk_idle_after`.
    Idle { since: Millis },
    /// ebb put it in standby at `at`; it has had no I/O since.
    Standby { at: Millis },
    /// It holds the image of these running VMs: never put in standby.
    Guarded { vms: Vec<VmId> },
    /// ebb cannot tell which disk holds some running VM's image, so it
    /// puts no disk in standby; why, in words.
    Held { why: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiskView {
    pub name: String,
    pub state: DiskState,
    /// When its counters last moved (or ebb first saw it).
    pub last_io: Millis,
}

#[derive(Clone, Debug)]
struct DiskTrack {
    io: u64,
    last_io: Millis,
    standby_at: Option<Millis>,
}

#[derive(Debug, Default)]
pub struct DevicePolicy {
    activity: HashMap<VmId, (Millis, Activity)>,
    low_since: Option<Millis>,
    /// Some while saving: what ebb changed.
    changes: Option<Vec<CpuChange>>,
    disks: BTreeMap<String, DiskTrack>,
}

impl DevicePolicy {
    pub fn new() -> DevicePolicy {
        DevicePolicy::default()
    }

    /// Resumes the CPU changes a previous run made (from the journal).
    pub fn resume_cpu(&mut self, changes: Vec<CpuChange>) {
        self.changes = (!changes.is_empty()).then_some(changes);
    }

    pub fn cpu_changes(&self) -> Option<&[CpuChange]> {
        self.changes.as_deref()
    }

    /// The running VMs' CPU use (run time, not wait) as a fraction of the
    /// host's CPUs; None while some running VM has only one reading.
    pub fn observe(&mut self, obs: &Observation) -> Option<f64> {
        let mut total = 0.0;
        let mut known = true;
        let mut seen = HashMap::new();
        for vm in obs.vms.iter().filter(|v| v.state == VmState::Running) {
            let Some(a) = vm.activity else { continue };
            match self.activity.get(&vm.id).and_then(|(at, last)| ActivityRates::between(*at, last, obs.at, &a)) {
                Some(r) => total += r.cpu,
                None => known = false,
            }
            seen.insert(vm.id.clone(), (obs.at, a));
        }
        self.activity = seen;
        known.then(|| total / f64::from(obs.host_cpus.max(1)))
    }

    /// The CPU decision for this tick. `cpus` is what sysfs shows now.
    pub fn decide_cpu(&mut self, vms_use: Option<f64>, cpus: &[CpuFreq], cfg: &DeviceConfig, now: Millis) -> CpuDecision {
        // A value someone else wrote over ebb's is theirs now.
        let mut taken_over = vec![];
        if let Some(changes) = &mut self.changes {
            changes.retain(|c| {
                let holds = cpus.iter().find(|f| f.cpu == c.applied.cpu).is_some_and(|f| c.holds(f));
                if !holds {
                    taken_over.push(c.applied.cpu);
                }
                holds
            });
            if changes.is_empty() {
                self.changes = None;
            }
        }
        let low = vms_use.is_some_and(|u| u < cfg.cpu_low);
        self.low_since = if low { Some(self.low_since.unwrap_or(now)) } else { None };
        let pct = |f: f64| format!("{:.0}%", f * 100.0);
        let action = match (&self.changes, vms_use) {
            (Some(changes), _) if !cfg.cpufreq => Some(restore(changes, "cpufreq is off in the config: giving back what ebb found")),
            (Some(changes), Some(u)) if u >= cfg.cpu_high => Some(restore(
                changes,
                &format!("the VMs use {} of the host's CPUs (back at {}): giving back what ebb found", pct(u), pct(cfg.cpu_high)),
            )),
            (None, Some(u)) if cfg.cpufreq && self.low_since.is_some_and(|s| now.since(s) >= cfg.cpu_low_after.as_millis()) => {
                let changes: Vec<CpuChange> = cpus.iter().filter_map(|c| c.saving(cfg)).collect();
                let held = now.since(self.low_since.unwrap_or(now)) / 1000;
                (!changes.is_empty()).then(|| Action::CpuSave {
                    reason: power(format!("the VMs have used under {} of the host's CPUs for {held} s (now {}): saving power", pct(cfg.cpu_low), pct(u))),
                    changes,
                })
            }
            _ => None,
        };
        let host = CpuView { vms_use, saving: self.changes.is_some(), low_since: self.low_since, changes: self.changes.clone().unwrap_or_default(), taken_over };
        Decision { actions: action.into_iter().collect(), views: vec![], host }
    }

    /// At stop: what gives the CPUs back what ebb found, if it holds any.
    pub fn give_back(&self) -> Option<Action> {
        self.changes.as_deref().map(|c| restore(c, "ebb stops: giving back what it found"))
    }

    /// The disk decision for this tick. `guards`: disk → the running VMs
    /// whose images it holds; `unknown`: running VMs' images whose disk
    /// cannot be told, in words (then no disk is put in standby).
    pub fn decide_disks(
        &mut self,
        disks: &[DiskSample],
        guards: &BTreeMap<String, Vec<VmId>>,
        unknown: &[String],
        cfg: &DeviceConfig,
        now: Millis,
    ) -> Decision<DiskView> {
        self.disks.retain(|name, _| disks.iter().any(|d| &d.name == name));
        let (mut actions, mut views) = (vec![], vec![]);
        for d in disks {
            let t = self.disks.entry(d.name.clone()).or_insert(DiskTrack { io: d.io, last_io: now, standby_at: None });
            if t.io != d.io {
                *t = DiskTrack { io: d.io, last_io: now, standby_at: None };
            }
            let state = if let Some(vms) = guards.get(&d.name) {
                DiskState::Guarded { vms: vms.clone() }
            } else if let Some(at) = t.standby_at {
                DiskState::Standby { at }
            } else if !unknown.is_empty() {
                DiskState::Held { why: format!("ebb cannot tell which disk holds {}", unknown.join(", ")) }
            } else {
                match cfg.disk_idle_after.map(Span::as_millis) {
                    Some(after) if now.since(t.last_io) >= after => {
                        actions.push(Action::DiskStandby {
                            disk: d.name.clone(),
                            reason: power(format!("no I/O for {} s (standby after {} s) and no running VM's image on it", now.since(t.last_io) / 1000, after / 1000)),
                        });
                        DiskState::Idle { since: t.last_io }
                    }
                    _ if now.since(t.last_io) > 0 => DiskState::Idle { since: t.last_io },
                    _ => DiskState::Active,
                }
            };
            views.push(DiskView { name: d.name.clone(), state, last_io: t.last_io });
        }
        Decision { actions, views, host: () }
    }
}

impl Policy for DevicePolicy {
    fn outcome(&mut self, action: &Action, result: &Outcome, now: Millis) {
        match (action, result) {
            // Written: ebb holds these changes now.
            (Action::CpuSave { changes, .. }, Ok(())) => self.changes = Some(changes.clone()),
            // Failed (and rolled back): the hold starts again, so a broken
            // sysfs is tried once per hold, not every tick.
            (Action::CpuSave { .. }, Err(_)) => self.low_since = Some(now),
            // What ebb found is back on these CPUs; a failed part keeps its
            // changes held, to try again.
            (Action::CpuRestore { settings, .. }, Ok(())) => {
                if let Some(changes) = &mut self.changes {
                    changes.retain(|c| !settings.iter().any(|s| s.cpu == c.applied.cpu));
                    if changes.is_empty() {
                        self.changes = None;
                    }
                }
            }
            // In standby: not again until it has been used.
            (Action::DiskStandby { disk, .. }, Ok(())) => {
                if let Some(t) = self.disks.get_mut(disk) {
                    t.standby_at = Some(now);
                }
            }
            // Failed: tried again after another idle spell, not every tick.
            (Action::DiskStandby { disk, .. }, Err(_)) => {
                if let Some(t) = self.disks.get_mut(disk) {
                    t.last_io = now;
                }
            }
            _ => {}
        }
    }
}

/// The CPU decision: no per-CPU views (the CPUs are decided as one), the
/// policy's view of them as its host part.
pub type CpuDecision = Decision<(), CpuView>;

fn power(text: String) -> Reason {
    Reason::new(Rule::Power, text)
}

/// Writes back what ebb found, for each of `changes`.
fn restore(changes: &[CpuChange], why: &str) -> Action {
    Action::CpuRestore { settings: changes.iter().map(CpuChange::undo).collect(), reason: power(why.to_string()) }
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
