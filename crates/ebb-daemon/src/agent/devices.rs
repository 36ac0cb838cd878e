//! Device power: CPU frequency and disk standby. `ebb_core::devices`
//! decides on what the platform reads; its actions go through `act` like
//! every policy's, which carries them out here (`act_on_host`) and reports
//! their outcomes back.

use super::*;
use crate::api_types::{CpufreqView, DevicesView, DisksView};
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::devices::{CpuChange, CpuFreq, CpuSetting, DeviceConfig};
use ebb_core::policy::Outcome as Done;
use ebb_core::{Action, ActionError, Millis, Observation, Reason, Rule, VmId};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use tracing::{info, warn};

impl Agent {
    /// Device power (the seed's Figure 2): reads cpufreq and the disks off
    /// the runtime, decides, and writes or runs what the decision asks.
    pub(super) async fn devices_tick(&mut self, obs: &Observation, at: Millis) {
        let cfg = self.devices.cfg.clone();
        let vms_use = self.devices.policy.observe(obs);
        let want_cpu = cfg.cpufreq || self.devices.policy.cpu_changes().is_some();
        let want_disks = cfg.disk_idle_after.is_some();
        if !want_cpu && !want_disks {
            self.devices.view = None;
            return;
        }
        let images: Vec<(VmId, Result<Vec<PathBuf>, String>)> = self.vms.disks.iter().map(|(vm, (r, _))| (vm.clone(), r.clone())).collect();
        let Some((cpus, disks)) = self
            .with_platform(move |p| {
                let cpus = want_cpu.then(|| p.cpufreq().map_err(|e| e.to_string()));
                let disks = want_disks.then(|| read_disks(p, images));
                (cpus, disks)
            })
            .await
        else {
            return;
        };
        let mut view = self.devices.view.take().unwrap_or_default();
        let mut actions = vec![];
        match cpus {
            None => view.cpu = None,
            Some(read) => actions.extend(self.cpu_decision(read, vms_use, &cfg, &mut view, at)),
        }
        match disks {
            None => view.disks = None,
            Some(read) => actions.extend(self.disk_decision(read, &cfg, &mut view, at)),
        }
        // In place before acting: each action shows itself in it.
        self.devices.view = Some(view);
        let acted = self.act(actions, at).await;
        if acted.iter().any(|(a, r)| matches!(a, Action::CpuSave { .. } | Action::CpuRestore { .. }) && r.is_ok()) {
            self.remember_cpu_changes(at);
        }
        let changes = self.devices.policy.cpu_changes().map(<[CpuChange]>::to_vec).unwrap_or_default();
        if let Some(cpu) = self.devices.view.as_mut().and_then(|v| v.cpu.as_mut()).filter(|c| c.error.is_none()) {
            cpu.policy.saving = !changes.is_empty();
            cpu.policy.changes = changes;
        }
    }

    /// The CPU decision on what cpufreq shows; the writes it asks for.
    fn cpu_decision(&mut self, read: Result<Vec<CpuFreq>, String>, vms_use: Option<f64>, cfg: &DeviceConfig, view: &mut DevicesView, at: Millis) -> Vec<Action> {
        let cpu = view.cpu.get_or_insert_with(CpufreqView::default);
        (cpu.enabled, cpu.cpu_low, cpu.cpu_high) = (cfg.cpufreq, cfg.cpu_low, cfg.cpu_high);
        let cpus = match read {
            Ok(cpus) => cpus,
            Err(e) => {
                if cpu.error.as_deref() != Some(&e) {
                    warn!("cpufreq: {e}");
                    self.journal_event(None, Kind::CpufreqFailed, &e);
                }
                cpu.error = Some(e);
                cpu.cpus.clear();
                return vec![];
            }
        };
        cpu.error = None;
        let d = self.devices.policy.decide_cpu(vms_use, &cpus, cfg, at);
        if !d.host.taken_over.is_empty() {
            let list: Vec<String> = d.host.taken_over.iter().map(|c| format!("cpu{c}")).collect();
            let text = format!("{} changed by someone else since ebb set it: left as it is, not given back", list.join(", "));
            info!("cpufreq: {text}");
            self.journal_event(None, Kind::Cpufreq, &text);
            self.remember_cpu_changes(at);
        }
        cpu.cpus = cpus;
        cpu.policy = d.host;
        d.actions
    }

    /// The disk decision on the disks' counters; the standbys it asks for.
    fn disk_decision(&mut self, read: Result<DiskRead, String>, cfg: &DeviceConfig, view: &mut DevicesView, at: Millis) -> Vec<Action> {
        let dv = view.disks.get_or_insert_with(DisksView::default);
        dv.idle_after_ms = cfg.disk_idle_after.map_or(0, |s| s.as_millis());
        let (disks, guards, unknown) = match read {
            Ok(r) => r,
            Err(e) => {
                if dv.error.as_deref() != Some(&e) {
                    warn!("disks: {e}");
                    self.journal_event(None, Kind::DiskFailed, &e);
                }
                dv.error = Some(e);
                return vec![];
            }
        };
        dv.error = None;
        let d = self.devices.policy.decide_disks(&disks, &guards, &unknown, cfg, at);
        dv.disks = d.views;
        d.actions
    }

    /// Carries a device action out through the platform, journals it and
    /// shows it in the devices view; its outcome, per part.
    pub(super) async fn act_on_host(&mut self, action: Action, at: Millis) -> Vec<(Action, Done)> {
        match action {
            Action::CpuSave { changes, reason } => self.cpu_save(changes, reason, at).await,
            Action::CpuRestore { settings, reason } => self.cpu_restore(settings, reason, at).await,
            Action::DiskStandby { disk, reason } => self.disk_standby(disk, reason, at).await,
            Action::PowerOff { reason } => self.power_off(reason, at).await,
            other => unreachable!("{} acts on a VM", other.kind()),
        }
    }

    /// Writes each setting; the per-CPU outcome.
    async fn write_cpus(&mut self, settings: Vec<CpuSetting>) -> Vec<(CpuSetting, Result<(), String>)> {
        self.with_platform(move |p| settings.into_iter().map(|s| {
            let r = p.set_cpufreq(&s).map_err(|e| e.to_string());
            (s, r)
        }).collect())
        .await
        .unwrap_or_default()
    }

    /// Saves power on the CPUs: all of them or, when one write fails, none
    /// (those written are given back).
    async fn cpu_save(&mut self, changes: Vec<CpuChange>, reason: Reason, at: Millis) -> Vec<(Action, Done)> {
        let results = self.write_cpus(changes.iter().map(|c| c.applied.clone()).collect()).await;
        let failed = results.iter().find_map(|(_, r)| r.as_ref().err().cloned());
        let what = describe_cpu_changes(&changes);
        let (written, text, outcome) = match &failed {
            None => (changes.iter().map(|c| c.applied.clone()).collect(), format!("{reason}: {what}"), Outcome::Ok),
            Some(e) => {
                let undo: Vec<CpuSetting> = changes.iter().zip(&results).filter(|(_, (_, r))| r.is_ok()).map(|(c, _)| c.undo()).collect();
                let back = self.write_cpus(undo).await;
                let stuck: Vec<String> = back.iter().filter(|(_, r)| r.is_err()).map(|(s, _)| format!("cpu{}", s.cpu)).collect();
                let left = if stuck.is_empty() { "the CPUs are as ebb found them".to_string() } else { format!("{} could not be given back", stuck.join(", ")) };
                warn!("cpufreq: saving power failed: {e}");
                (vec![], format!("{reason}, but a write failed: {e} ({left}; tried again after another hold)"), Outcome::Failed(e.clone()))
            }
        };
        info!("cpufreq: {text}");
        self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::Cpufreq, text.clone()) });
        self.show_cpu_writes(&written, &text, at);
        vec![(Action::CpuSave { changes, reason }, failed.map_or(Ok(()), |e| Err(ActionError::Failed(e))))]
    }

    /// Writes back what ebb found; a CPU whose write fails keeps its change
    /// (journaled) and is tried again next tick. Two parts: the CPUs
    /// written, and those that failed.
    async fn cpu_restore(&mut self, settings: Vec<CpuSetting>, reason: Reason, at: Millis) -> Vec<(Action, Done)> {
        let results = self.write_cpus(settings).await;
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
        let written: Vec<CpuSetting> = ok.into_iter().map(|(s, _)| s).collect();
        let cpus: Vec<String> = written.iter().map(|s| format!("cpu{}", s.cpu)).collect();
        let mut text = format!("{reason}: {} as found", if cpus.is_empty() { "no CPU".to_string() } else { cpus.join(", ") });
        let error = failed.first().and_then(|(_, r)| r.clone().err());
        let outcome = match &error {
            None => Outcome::Ok,
            Some(e) => {
                let _ = write!(text, "; {} failed, tried again next tick", failed.len());
                Outcome::Failed(e.clone())
            }
        };
        // A restore that keeps failing is journaled once per error, not every tick.
        let journaled = (outcome != Outcome::Ok).then(|| outcome.to_string());
        if journaled.is_none() || self.devices.last_restore_error != journaled {
            info!("cpufreq: {text}");
            self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::Cpufreq, text.clone()) });
        }
        self.devices.last_restore_error = journaled;
        self.show_cpu_writes(&written, &text, at);
        let mut parts = vec![(Action::CpuRestore { settings: written, reason: reason.clone() }, Ok(()))];
        if let Some(e) = error {
            let settings = failed.into_iter().map(|(s, _)| s).collect();
            parts.push((Action::CpuRestore { settings, reason }, Err(ActionError::Failed(e))));
        }
        parts
    }

    /// The CPUs as they are after ebb's writes, and the change in words.
    fn show_cpu_writes(&mut self, written: &[CpuSetting], text: &str, at: Millis) {
        let Some(view) = self.devices.view.as_mut() else { return };
        view.cpufreq_changes_total += u64::from(!written.is_empty());
        let Some(cpu) = view.cpu.as_mut() else { return };
        for s in written {
            if let Some(c) = cpu.cpus.iter_mut().find(|c| c.cpu == s.cpu) {
                c.governor = s.governor.clone().unwrap_or(std::mem::take(&mut c.governor));
                c.max_khz = s.max_khz.unwrap_or(c.max_khz);
            }
        }
        cpu.last_change = Some(format!("{} UTC {text}", crate::words::clock(at)));
    }

    /// At stop: the CPUs get back what ebb found.
    pub(super) async fn give_back_cpus(&mut self, at: Millis) {
        let Some(restore) = self.devices.policy.give_back() else { return };
        self.act(vec![restore], at).await;
        self.remember_cpu_changes(at);
    }

    pub(super) fn remember_cpu_changes(&self, at: Millis) {
        let changes = self.devices.policy.cpu_changes().unwrap_or_default().to_vec();
        self.journal.write(move |j| j.save_cpu_changes(&changes, at));
    }

    /// Puts a disk in standby (or records it, without a command).
    async fn disk_standby(&mut self, disk: String, reason: Reason, at: Millis) -> Vec<(Action, Done)> {
        let name = disk.clone();
        let Some(r) = self.with_platform(move |p| p.disk_standby(&name)).await else { return vec![] };
        let (text, outcome, done) = match r {
            Ok(said) => {
                if let Some(view) = self.devices.view.as_mut() {
                    view.disk_standbys_total += 1;
                    if let Some(dv) = view.disks.as_mut() {
                        if let Some(v) = dv.disks.iter_mut().find(|v| v.name == disk) {
                            v.state = ebb_core::devices::DiskState::Standby { at };
                        }
                        dv.last_standby = Some(format!("{} UTC {disk}: {said}", crate::words::clock(at)));
                    }
                }
                (format!("{disk}: {reason}: {said}"), Outcome::Ok, Ok(()))
            }
            Err(e) => {
                let text = format!("{disk}: {reason}, but the standby failed (tried again after another idle spell)");
                (text, Outcome::Failed(e.to_string()), Err(ActionError::Failed(e.to_string())))
            }
        };
        info!("disk standby: {text} [{outcome}]");
        self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::DiskStandby, text.clone()) });
        vec![(Action::DiskStandby { disk, reason }, done)]
    }
}

/// The disks with their counters, and which running VMs' images each
/// holds; an image whose disk cannot be told holds every disk (in words).
pub(super) fn read_disks(p: &mut dyn Platform, images: Vec<(VmId, Result<Vec<PathBuf>, String>)>) -> Result<DiskRead, String> {
    let disks = p.disks().map_err(|e| e.to_string())?;
    let (mut guards, mut unknown) = (BTreeMap::<String, Vec<VmId>>::new(), vec![]);
    for (vm, files) in images {
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                unknown.push(format!("{vm}'s images (its disks could not be read: {e})"));
                continue;
            }
        };
        for file in files {
            match p.disks_of(&file) {
                Ok(names) if names.is_empty() => unknown.push(format!("{vm}'s {}", file.display())),
                Ok(names) => names.into_iter().for_each(|n| guards.entry(n).or_default().push(vm.clone())),
                Err(e) => unknown.push(format!("{vm}'s {} ({e})", file.display())),
            }
        }
    }
    for vms in guards.values_mut() {
        vms.sort();
        vms.dedup();
    }
    Ok((disks, guards, unknown))
}

/// "cpu0 governor performance → powersave, cpu1 max 3000 → 1500 MHz".
pub(super) fn describe_cpu_changes(changes: &[CpuChange]) -> String {
    let one = |c: &CpuChange| {
        let mut parts = vec![];
        if let (Some(from), Some(to)) = (&c.found.governor, &c.applied.governor) {
            parts.push(format!("governor {from} → {to}"));
        }
        if let (Some(from), Some(to)) = (c.found.max_khz, c.applied.max_khz) {
            parts.push(format!("max {} → {} MHz", from / 1000, to / 1000));
        }
        format!("cpu{} {}", c.applied.cpu, parts.join(", "))
    };
    changes.iter().map(one).collect::<Vec<_>>().join("; ")
}
