//! Device power: CPU frequency and disk standby, and giving the CPUs back.

use super::*;
use crate::api_types::{CpufreqView, DevicesView, DisksView};
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::devices::{CpuChange, CpuFreq, CpuSetting, DeviceAction, DeviceConfig};
use ebb_core::{Millis, Observation, Rule, VmId};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use tracing::{info, warn};

impl Agent {
    /// Device power (the seed's Figure 2): reads cpufreq and the disks off
    /// the runtime, decides, and writes or runs what the decision asks.
    pub(super) async fn devices_tick(&mut self, obs: &Observation, at: Millis) {
        let cfg = self.device_cfg.clone();
        let vms_use = self.devices.observe(obs);
        let want_cpu = cfg.cpufreq || self.devices.cpu_changes().is_some();
        let want_disks = cfg.disk_idle_after.is_some();
        if !want_cpu && !want_disks {
            self.devices_view = None;
            return;
        }
        let images: Vec<(VmId, Result<Vec<PathBuf>, String>)> = self.vm_disks.iter().map(|(vm, (r, _))| (vm.clone(), r.clone())).collect();
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
        let mut view = self.devices_view.take().unwrap_or_default();
        match cpus {
            None => view.cpu = None,
            Some(read) => self.cpu_tick(read, vms_use, &cfg, &mut view, at).await,
        }
        match disks {
            None => view.disks = None,
            Some(read) => self.disks_tick(read, &cfg, &mut view, at).await,
        }
        self.devices_view = Some(view);
    }

    pub(super) async fn cpu_tick(&mut self, read: Result<Vec<CpuFreq>, String>, vms_use: Option<f64>, cfg: &DeviceConfig, view: &mut DevicesView, at: Millis) {
        let cpu = view.cpu.get_or_insert_with(CpufreqView::default);
        (cpu.enabled, cpu.cpu_low, cpu.cpu_high) = (cfg.cpufreq, cfg.cpu_low, cfg.cpu_high);
        let mut cpus = match read {
            Ok(cpus) => cpus,
            Err(e) => {
                if cpu.error.as_deref() != Some(&e) {
                    warn!("cpufreq: {e}");
                    self.journal_event(None, Kind::CpufreqFailed, &e);
                }
                cpu.error = Some(e);
                cpu.cpus.clear();
                return;
            }
        };
        cpu.error = None;
        let d = self.devices.decide_cpu(vms_use, &cpus, cfg, at);
        if !d.taken_over.is_empty() {
            let list: Vec<String> = d.taken_over.iter().map(|c| format!("cpu{c}")).collect();
            let text = format!("{} changed by someone else since ebb set it: left as it is, not given back", list.join(", "));
            info!("cpufreq: {text}");
            self.journal_event(None, Kind::Cpufreq, &text);
            self.remember_cpu_changes(at);
        }
        let done = match d.action {
            Some(DeviceAction::CpuSave { changes, reason }) => Some(self.cpu_save(changes, &reason, at).await),
            Some(DeviceAction::CpuRestore { settings, reason }) => Some(self.cpu_restore(settings, &reason, at).await),
            _ => None,
        };
        if let Some((written, text)) = done {
            for s in &written {
                if let Some(c) = cpus.iter_mut().find(|c| c.cpu == s.cpu) {
                    c.governor = s.governor.clone().unwrap_or(std::mem::take(&mut c.governor));
                    c.max_khz = s.max_khz.unwrap_or(c.max_khz);
                }
            }
            view.cpufreq_changes_total += u64::from(!written.is_empty());
            cpu.last_change = Some(format!("{} UTC {text}", crate::words::clock(at)));
        }
        let changes = self.devices.cpu_changes().map(<[CpuChange]>::to_vec).unwrap_or_default();
        cpu.policy = ebb_core::devices::CpuView { saving: !changes.is_empty(), changes, ..d.view };
        cpu.cpus = cpus;
    }

    /// Writes each setting; the per-CPU outcome.
    pub(super) async fn write_cpus(&mut self, settings: Vec<CpuSetting>) -> Vec<(CpuSetting, Result<(), String>)> {
        self.with_platform(move |p| settings.into_iter().map(|s| {
            let r = p.set_cpufreq(&s).map_err(|e| e.to_string());
            (s, r)
        }).collect())
        .await
        .unwrap_or_default()
    }

    /// Saves power on the CPUs: all of them or, when one write fails, none
    /// (those written are given back). Returns what stays written and what
    /// happened, in words.
    pub(super) async fn cpu_save(&mut self, changes: Vec<CpuChange>, reason: &str, at: Millis) -> (Vec<CpuSetting>, String) {
        let results = self.write_cpus(changes.iter().map(|c| c.applied.clone()).collect()).await;
        let failed = results.iter().find_map(|(_, r)| r.as_ref().err().cloned());
        let what = describe_cpu_changes(&changes);
        let (written, text, outcome) = match failed {
            None => {
                self.devices.cpu_saved(changes.clone());
                self.remember_cpu_changes(at);
                (changes.iter().map(|c| c.applied.clone()).collect(), format!("{reason}: {what}"), Outcome::Ok)
            }
            Some(e) => {
                let undo: Vec<CpuSetting> = changes.iter().zip(&results).filter(|(_, (_, r))| r.is_ok()).map(|(c, _)| c.undo()).collect();
                let back = self.write_cpus(undo).await;
                let stuck: Vec<String> = back.iter().filter(|(_, r)| r.is_err()).map(|(s, _)| format!("cpu{}", s.cpu)).collect();
                self.devices.cpu_save_failed(at);
                let left = if stuck.is_empty() { "the CPUs are as ebb found them".to_string() } else { format!("{} could not be given back", stuck.join(", ")) };
                warn!("cpufreq: saving power failed: {e}");
                (vec![], format!("{reason}, but a write failed: {e} ({left}; tried again after another hold)"), Outcome::Failed(e))
            }
        };
        info!("cpufreq: {text}");
        self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::Cpufreq, text.clone()) });
        (written, text)
    }

    /// Writes back what ebb found; a CPU whose write fails keeps its change
    /// (journaled) and is tried again next tick.
    pub(super) async fn cpu_restore(&mut self, settings: Vec<CpuSetting>, reason: &str, at: Millis) -> (Vec<CpuSetting>, String) {
        let results = self.write_cpus(settings).await;
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
        let written: Vec<CpuSetting> = ok.into_iter().map(|(s, _)| s).collect();
        self.devices.cpu_restored(&written.iter().map(|s| s.cpu).collect::<Vec<_>>());
        self.remember_cpu_changes(at);
        let cpus: Vec<String> = written.iter().map(|s| format!("cpu{}", s.cpu)).collect();
        let mut text = format!("{reason}: {} as found", if cpus.is_empty() { "no CPU".to_string() } else { cpus.join(", ") });
        let outcome = match failed.first() {
            None => Outcome::Ok,
            Some((_, Err(e))) => {
                let _ = write!(text, "; {} failed, tried again next tick", failed.len());
                Outcome::Failed(e.clone())
            }
            Some(_) => unreachable!("partitioned by result"),
        };
        // A restore that keeps failing is journaled once per error, not every tick.
        let failed = (outcome != Outcome::Ok).then(|| outcome.to_string());
        if failed.is_none() || self.last_restore_error != failed {
            info!("cpufreq: {text}");
            self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::Cpufreq, text.clone()) });
        }
        self.last_restore_error = failed;
        (written, text)
    }

    /// At stop: the CPUs get back what ebb found.
    pub(super) async fn give_back_cpus(&mut self, at: Millis) {
        let Some(changes) = self.devices.cpu_changes().map(<[CpuChange]>::to_vec) else { return };
        self.cpu_restore(changes.iter().map(CpuChange::undo).collect(), "ebb stops: giving back what it found", at).await;
    }

    pub(super) fn remember_cpu_changes(&self, at: Millis) {
        let changes = self.devices.cpu_changes().unwrap_or_default().to_vec();
        self.journal.write(move |j| j.save_cpu_changes(&changes, at));
    }

    pub(super) async fn disks_tick(
        &mut self,
        read: Result<DiskRead, String>,
        cfg: &DeviceConfig,
        view: &mut DevicesView,
        at: Millis,
    ) {
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
                return;
            }
        };
        dv.error = None;
        let (actions, mut views) = self.devices.decide_disks(&disks, &guards, &unknown, cfg, at);
        for action in actions {
            let DeviceAction::DiskStandby { disk, reason } = action else { continue };
            let name = disk.clone();
            let Some(r) = self.with_platform(move |p| p.disk_standby(&name)).await else { continue };
            let (text, outcome) = match r {
                Ok(done) => {
                    self.devices.disk_standby_done(&disk, at);
                    view.disk_standbys_total += 1;
                    if let Some(v) = views.iter_mut().find(|v| v.name == disk) {
                        v.state = ebb_core::devices::DiskState::Standby { at };
                    }
                    dv.last_standby = Some(format!("{} UTC {disk}: {done}", crate::words::clock(at)));
                    (format!("{disk}: {reason}: {done}"), Outcome::Ok)
                }
                Err(e) => {
                    self.devices.disk_failed(&disk, at);
                    (format!("{disk}: {reason}, but the standby failed (tried again after another idle spell)"), Outcome::Failed(e.to_string()))
                }
            };
            info!("disk standby: {text} [{outcome}]");
            self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::DiskStandby, text.clone()) });
        }
        dv.disks = views;
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
