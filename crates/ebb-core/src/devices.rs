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
//! The agent reads sysfs and carries the actions out; it tells the policy
//! what succeeded, so a failed write leaves the state as it was.

use crate::human::{number, FieldError, Range, Span};
use crate::model::{Activity, Observation, VmId, VmState};
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

/// What the agent is asked to do this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceAction {
    /// Write `changes` (each one's `applied`); on success call `cpu_saved`.
    CpuSave { changes: Vec<CpuChange>, reason: String },
    /// Write these; on success call `cpu_restored`.
    CpuRestore { settings: Vec<CpuSetting>, reason: String },
    /// Put the disk in standby; then call `disk_standby_done` or `disk_failed`.
    DiskStandby { disk: String, reason: String },
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
            (Some(changes), _) if !cfg.cpufreq => Some(DeviceAction::CpuRestore {
                settings: changes.iter().map(CpuChange::undo).collect(),
                reason: "cpufreq is off in the config: giving back what ebb found".into(),
            }),
            (Some(changes), Some(u)) if u >= cfg.cpu_high => Some(DeviceAction::CpuRestore {
                settings: changes.iter().map(CpuChange::undo).collect(),
                reason: format!("the VMs use {} of the host's CPUs (back at {}): giving back what ebb found", pct(u), pct(cfg.cpu_high)),
            }),
            (None, Some(u)) if cfg.cpufreq && self.low_since.is_some_and(|s| now.since(s) >= cfg.cpu_low_after.as_millis()) => {
                let changes: Vec<CpuChange> = cpus.iter().filter_map(|c| c.saving(cfg)).collect();
                let held = now.since(self.low_since.unwrap_or(now)) / 1000;
                (!changes.is_empty()).then(|| DeviceAction::CpuSave {
                    reason: format!("the VMs have used under {} of the host's CPUs for {held} s (now {}): saving power", pct(cfg.cpu_low), pct(u)),
                    changes,
                })
            }
            _ => None,
        };
        let view = CpuView { vms_use, saving: self.changes.is_some(), low_since: self.low_since, changes: self.changes.clone().unwrap_or_default() };
        CpuDecision { action, view, taken_over }
    }

    /// The save was written: ebb holds these changes now.
    pub fn cpu_saved(&mut self, changes: Vec<CpuChange>) {
        self.changes = Some(changes);
    }

    /// The save failed (and was rolled back): the hold starts again, so a
    /// broken sysfs is tried once per hold, not every tick.
    pub fn cpu_save_failed(&mut self, now: Millis) {
        self.low_since = Some(now);
    }

    /// What ebb found is back on these CPUs (a failed write leaves the
    /// others' changes held, to try again).
    pub fn cpu_restored(&mut self, cpus: &[u32]) {
        if let Some(changes) = &mut self.changes {
            changes.retain(|c| !cpus.contains(&c.applied.cpu));
            if changes.is_empty() {
                self.changes = None;
            }
        }
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
    ) -> (Vec<DeviceAction>, Vec<DiskView>) {
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
                        actions.push(DeviceAction::DiskStandby {
                            disk: d.name.clone(),
                            reason: format!("no I/O for {} s (standby after {} s) and no running VM's image on it", now.since(t.last_io) / 1000, after / 1000),
                        });
                        DiskState::Idle { since: t.last_io }
                    }
                    _ if now.since(t.last_io) > 0 => DiskState::Idle { since: t.last_io },
                    _ => DiskState::Active,
                }
            };
            views.push(DiskView { name: d.name.clone(), state, last_io: t.last_io });
        }
        (actions, views)
    }

    /// The disk was put in standby: not again until it has been used.
    pub fn disk_standby_done(&mut self, disk: &str, now: Millis) {
        if let Some(t) = self.disks.get_mut(disk) {
            t.standby_at = Some(now);
        }
    }

    /// The standby failed: tried again after another idle spell, not every tick.
    pub fn disk_failed(&mut self, disk: &str, now: Millis) {
        if let Some(t) = self.disks.get_mut(disk) {
            t.last_io = now;
        }
    }
}

pub struct CpuDecision {
    pub action: Option<DeviceAction>,
    pub view: CpuView,
    /// CPUs whose setting someone else changed after ebb set it: ebb
    /// forgets its change to them (and will not "restore" over theirs).
    pub taken_over: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostMemory, VmObservation};

    fn cpu(n: u32, governor: &str, governors: &[&str]) -> CpuFreq {
        CpuFreq {
            cpu: n,
            governor: governor.into(),
            governors: governors.iter().map(|g| g.to_string()).collect(),
            max_khz: 3_000_000,
            hw_min_khz: 800_000,
            hw_max_khz: 3_000_000,
        }
    }

    fn cfg() -> DeviceConfig {
        DeviceConfig { cpufreq: true, cpu_low_after: Span::from_secs(10), disk_idle_after: Some(Span::from_secs(60)), ..DeviceConfig::default() }
    }

    /// Applies what the policy asks, as the agent does when every write succeeds.
    fn apply(p: &mut DevicePolicy, cpus: &mut [CpuFreq], d: &CpuDecision) {
        match &d.action {
            Some(DeviceAction::CpuSave { changes, .. }) => {
                for c in changes {
                    write(cpus, &c.applied);
                }
                p.cpu_saved(changes.clone());
            }
            Some(DeviceAction::CpuRestore { settings, .. }) => {
                for s in settings {
                    write(cpus, s);
                }
                p.cpu_restored(&settings.iter().map(|s| s.cpu).collect::<Vec<_>>());
            }
            _ => {}
        }
    }

    fn write(cpus: &mut [CpuFreq], s: &CpuSetting) {
        let c = cpus.iter_mut().find(|c| c.cpu == s.cpu).unwrap();
        if let Some(g) = &s.governor {
            c.governor = g.clone();
        }
        if let Some(k) = s.max_khz {
            c.max_khz = k;
        }
    }

    #[test]
    fn low_use_held_saves_high_use_restores_and_the_band_holds() {
        let (mut p, cfg) = (DevicePolicy::new(), cfg());
        let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"]), cpu(1, "schedutil", &["performance", "powersave", "schedutil"])];
        // Low, but not for long enough yet.
        for t in [0, 2, 4, 8] {
            let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(t * 1000));
            assert!(d.action.is_none(), "{t}: {:?}", d.action);
        }
        let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(10_000));
        let Some(DeviceAction::CpuSave { changes, reason }) = &d.action else { panic!("{:?}", d.action) };
        assert!(reason.contains("under 25%") && reason.contains("10 s"), "{reason}");
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[1].found.governor.as_deref(), Some("schedutil"));
        apply(&mut p, &mut cpus, &d);
        assert!(cpus.iter().all(|c| c.governor == "powersave"));
        // In the band (between low and high): it stays saving, no flapping.
        for t in 11..40 {
            let u = if t % 2 == 0 { 0.45 } else { 0.1 };
            let d = p.decide_cpu(Some(u), &cpus, &cfg, Millis(t * 1000));
            assert!(d.action.is_none() && d.view.saving, "{t}");
        }
        // At cpu_high: back at once, each CPU to what was found.
        let d = p.decide_cpu(Some(0.5), &cpus, &cfg, Millis(40_000));
        assert!(matches!(&d.action, Some(DeviceAction::CpuRestore { reason, .. }) if reason.contains("50%")));
        apply(&mut p, &mut cpus, &d);
        assert_eq!((cpus[0].governor.as_str(), cpus[1].governor.as_str()), ("performance", "schedutil"));
        // A dip under low right after starts a new hold: no save before it ends.
        let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(41_000));
        assert!(d.action.is_none() && !d.view.saving);
        // Between low and high the hold is broken.
        p.decide_cpu(Some(0.3), &cpus, &cfg, Millis(45_000));
        assert!(p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(52_000)).action.is_none());
    }

    #[test]
    fn without_the_governor_the_max_frequency_is_capped_and_given_back() {
        let (mut p, cfg) = (DevicePolicy::new(), cfg());
        let mut cpus = vec![cpu(0, "performance", &["performance"])];
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
        apply(&mut p, &mut cpus, &d);
        assert_eq!((cpus[0].governor.as_str(), cpus[0].max_khz), ("performance", 1_500_000));
        // Never below the hardware's lowest.
        let low = CpuFreq { hw_min_khz: 2_000_000, ..cpu(0, "performance", &[]) };
        assert_eq!(low.saving(&cfg).unwrap().applied.max_khz, Some(2_000_000));
        let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(11_000));
        let Some(DeviceAction::CpuRestore { settings, .. }) = &d.action else { panic!() };
        assert_eq!(settings[0], CpuSetting { cpu: 0, governor: None, max_khz: Some(3_000_000) }, "only what ebb changed");
    }

    #[test]
    fn unknown_use_nothing_to_change_and_off_do_nothing() {
        let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
        let cpus = vec![cpu(0, "powersave", &["performance", "powersave"])];
        for t in 0..20 {
            assert!(p.decide_cpu(None, &cpus, &cfg, Millis(t * 1000)).action.is_none());
        }
        // Saving already: nothing to write, nothing held.
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(20_000));
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(40_000));
        assert!(d.action.is_none() && !d.view.saving);
        cfg.cpufreq = false;
        let cpus = vec![cpu(0, "performance", &["performance", "powersave"])];
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(50_000));
        assert!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(90_000)).action.is_none());
    }

    #[test]
    fn a_failed_save_waits_a_whole_hold_and_a_restart_resumes_or_gives_back() {
        let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
        let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"])];
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
        assert!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000)).action.is_some());
        p.cpu_save_failed(Millis(10_000));
        assert!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(15_000)).action.is_none());
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(20_000));
        apply(&mut p, &mut cpus, &d);
        // A restarted agent resumes the journaled changes and gives them back;
        // with cpufreq turned off it gives them back at once.
        let mut again = DevicePolicy::new();
        again.resume_cpu(p.cpu_changes().unwrap().to_vec());
        assert!(again.decide_cpu(None, &cpus, &cfg, Millis(0)).view.saving);
        cfg.cpufreq = false;
        let d = again.decide_cpu(None, &cpus, &cfg, Millis(0));
        assert!(matches!(&d.action, Some(DeviceAction::CpuRestore { reason, .. }) if reason.contains("off in the config")));
    }

    #[test]
    fn a_partly_failed_restore_keeps_the_rest_to_try_again() {
        let (mut p, cfg) = (DevicePolicy::new(), cfg());
        let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"]), cpu(1, "performance", &["performance", "powersave"])];
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
        apply(&mut p, &mut cpus, &d);
        // cpu0 was written back, cpu1's write failed.
        cpus[0].governor = "performance".into();
        p.cpu_restored(&[0]);
        let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(11_000));
        assert!(d.taken_over.is_empty());
        let Some(DeviceAction::CpuRestore { settings, .. }) = &d.action else { panic!("{:?}", d.action) };
        assert_eq!(settings.iter().map(|s| s.cpu).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_value_someone_else_writes_is_left_alone() {
        let (mut p, cfg) = (DevicePolicy::new(), cfg());
        let mut cpus = vec![cpu(0, "performance", &["performance", "powersave", "ondemand"]), cpu(1, "performance", &["performance", "powersave"])];
        p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
        apply(&mut p, &mut cpus, &d);
        cpus[0].governor = "ondemand".into();
        let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(11_000));
        assert_eq!(d.taken_over, vec![0]);
        let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(12_000));
        let Some(DeviceAction::CpuRestore { settings, .. }) = &d.action else { panic!() };
        assert_eq!(settings.iter().map(|s| s.cpu).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn vms_use_is_their_cpu_over_the_hosts_cpus() {
        let mut p = DevicePolicy::new();
        let obs = |at: u64, ns: u64| Observation {
            at: Millis(at),
            host: HostMemory::default(),
            host_cpus: 4,
            vms: vec![VmObservation {
                id: VmId::new("a"),
                state: VmState::Running,
                balloon: None,
                activity: Some(Activity { cpu_time_ns: ns, ..Activity::default() }),
                persistent: true,
                managed_save: false,
                tune: None,
            }],
        };
        assert_eq!(p.observe(&obs(0, 0)), None, "one reading is not a rate");
        assert_eq!(p.observe(&obs(1000, 2_000_000_000)), Some(0.5));
        let none = Observation { vms: vec![], ..obs(2000, 0) };
        assert_eq!(p.observe(&none), Some(0.0));
    }

    fn disks(io: &[(&str, u64)]) -> Vec<DiskSample> {
        io.iter().map(|(n, io)| DiskSample { name: n.to_string(), io: *io }).collect()
    }

    #[test]
    fn an_idle_disk_goes_to_standby_once_until_used_again_and_a_guarded_one_never() {
        let (mut p, cfg) = (DevicePolicy::new(), cfg());
        let guards: BTreeMap<String, Vec<VmId>> = [("sda".to_string(), vec![VmId::new("web")])].into();
        let standby = |p: &mut DevicePolicy, io: &[(&str, u64)], t: u64| {
            let (actions, views) = p.decide_disks(&disks(io), &guards, &[], &cfg, Millis(t * 1000));
            let names: Vec<String> = actions
                .iter()
                .map(|a| match a {
                    DeviceAction::DiskStandby { disk, .. } => disk.clone(),
                    _ => panic!("{a:?}"),
                })
                .collect();
            for n in &names {
                p.disk_standby_done(n, Millis(t * 1000));
            }
            (names, views)
        };
        assert!(standby(&mut p, &[("sda", 5), ("sdb", 7)], 0).0.is_empty());
        assert!(standby(&mut p, &[("sda", 5), ("sdb", 7)], 59).0.is_empty());
        let (names, views) = standby(&mut p, &[("sda", 5), ("sdb", 7)], 60);
        assert_eq!(names, vec!["sdb"]);
        assert_eq!(views[0].state, DiskState::Guarded { vms: vec![VmId::new("web")] });
        // Once: not again while it stays unused.
        let (names, views) = standby(&mut p, &[("sda", 5), ("sdb", 7)], 200);
        assert!(names.is_empty());
        assert_eq!(views[1].state, DiskState::Standby { at: Millis(60_000) });
        // Used: active, then idle again for the whole spell before another standby.
        let (_, views) = standby(&mut p, &[("sda", 5), ("sdb", 9)], 201);
        assert_eq!(views[1].state, DiskState::Active);
        assert!(standby(&mut p, &[("sda", 5), ("sdb", 9)], 260).0.is_empty());
        assert_eq!(standby(&mut p, &[("sda", 5), ("sdb", 9)], 261).0, vec!["sdb"]);
    }

    #[test]
    fn no_standby_while_a_vm_image_has_no_known_disk_or_when_off_and_a_failure_waits() {
        let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
        let none = BTreeMap::new();
        p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(0));
        let (a, v) = p.decide_disks(&disks(&[("sdb", 1)]), &none, &["db (/srv/db.img)".into()], &cfg, Millis(100_000));
        assert!(a.is_empty());
        assert!(matches!(&v[0].state, DiskState::Held { why } if why.contains("db (/srv/db.img)")));
        let (a, _) = p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(100_000));
        assert_eq!(a.len(), 1);
        p.disk_failed("sdb", Millis(100_000));
        assert!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(150_000)).0.is_empty());
        assert_eq!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(160_000)).0.len(), 1);
        cfg.disk_idle_after = None;
        assert!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(900_000)).0.is_empty());
    }
}
