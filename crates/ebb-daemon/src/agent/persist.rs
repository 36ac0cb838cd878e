//! Journaling what changed (and only that), and the needs history.

use super::*;
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::memory::MemoryDecision;
use ebb_core::realloc::ReallocDecision;
use ebb_core::{Bytes, Millis, Observation, VmId, Rule};
use std::collections::HashMap;
use tracing::{info, warn};

impl Agent {
    /// After acting: journals what changed this tick (memory steps, tunes,
    /// pins, vCPUs) and adds the tick to the needs history.
    pub(super) fn remember_changes(&mut self, obs: &Observation, d: &Decisions, at: Millis) {
        self.remember_memory_state(&d.memory, at);
        self.remember_tunes(obs, at);
        self.remember_pins(at);
        self.remember_vcpus(at);
        if let Some(r) = &d.realloc {
            self.record_needs(obs, r, at);
        }
    }

    /// Journals a VM's skip reason when it changes.
    pub(super) fn note_skips(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.views {
            if self.last_skip.get(&view.vm) != Some(&view.skipped) {
                if let Some(why) = &view.skipped {
                    info!(vm = %view.vm, "not managing its memory: {why}");
                    self.journal_vm(&view.vm, at, Kind::Skipped, Some(Rule::Skip), why, None, None);
                }
                self.last_skip.insert(view.vm.clone(), view.skipped.clone());
            }
        }
    }

    /// Counts this tick's rates into each running VM's needs history; writes
    /// the changed histories to the journal every `NEEDS_FLUSH`.
    pub(super) fn record_needs(&mut self, obs: &Observation, d: &ReallocDecision, at: Millis) {
        for (v, view) in obs.vms.iter().zip(&d.views) {
            let (Some(r), Some(a)) = (view.rates, v.activity) else { continue };
            self.needs.entry(v.id.clone()).or_default().record(at, &r, a.vcpus);
            self.needs_dirty.insert(v.id.clone());
        }
        if at.since(self.needs_flushed_at) >= NEEDS_FLUSH.as_millis() as u64 {
            self.flush_needs(at);
        }
    }

    pub(super) fn flush_needs(&mut self, at: Millis) {
        for vm in std::mem::take(&mut self.needs_dirty) {
            if let Some(n) = self.needs.get(&vm) {
                if let Err(e) = self.journal.save_needs(&vm, n, at) {
                    warn!("{e}");
                }
            }
        }
        self.needs_flushed_at = at;
    }

    /// Journals each VM's tunes (as found, as ebb set them) when they change,
    /// so a restarted agent knows its own changes.
    pub(super) fn remember_tunes(&mut self, obs: &Observation, at: Millis) {
        let now = obs.vms.iter().filter_map(|v| Some((v.id.clone(), self.realloc.tunes(&v.id)?))).collect();
        remember_changed(&mut self.saved_tunes, now, |vm, t| self.journal.save_tunes(vm, t, at));
    }

    /// Writes the pinnings the affinity policy holds when they change.
    pub(super) fn remember_pins(&mut self, at: Millis) {
        let now = self.affinity_views.keys().filter_map(|vm| Some((vm.clone(), self.affinity.pins(vm)?.clone()))).collect();
        remember_changed(&mut self.saved_pins, now, |vm, p| self.journal.save_pins(vm, p, at));
    }

    /// Writes the online vCPU counts the policy holds when they change.
    pub(super) fn remember_vcpus(&mut self, at: Millis) {
        let now = self.vcpu_views.keys().filter_map(|vm| Some((vm.clone(), self.vcpus.state(vm)?))).collect();
        remember_changed(&mut self.saved_vcpus, now, |vm, v| self.journal.save_online_vcpus(vm, v, at));
    }

    /// Persists each VM's adaptive step and target when they change, so a
    /// restarted agent resumes instead of starting over.
    pub(super) fn remember_memory_state(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.views {
            if view.skipped.is_some() {
                continue;
            }
            let state = (view.step, view.target);
            if self.saved_memory.get(&view.vm) != Some(&state) {
                match self.journal.save_memory_state(&view.vm, view.step, view.target, at) {
                    Ok(()) => {
                        self.saved_memory.insert(view.vm.clone(), state);
                    }
                    Err(e) => warn!("{e}"),
                }
            }
        }
    }

    pub(super) fn journal_event(&self, vm: Option<&str>, kind: Kind, text: &str) {
        self.journal_entry(&Entry { vm, ..Entry::event(self.clock.now(), kind, text) });
    }

    /// Writes an entry; a journal that cannot take it is logged, never fatal.
    pub(super) fn journal_entry(&self, entry: &Entry) {
        if let Err(e) = self.journal.record(entry) {
            warn!("{e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn journal_vm(&self, vm: &VmId, at: Millis, kind: Kind, rule: Option<Rule>, text: &str, target: Option<Bytes>, outcome: Option<Outcome>) {
        self.journal_entry(&Entry { at, vm: Some(vm.as_str()), kind, rule, text, target, outcome });
    }
}

/// Journals each VM's value that differs from what was last written, and
/// remembers it once written.
pub(super) fn remember_changed<T: PartialEq>(
    saved: &mut HashMap<VmId, T>,
    now: Vec<(VmId, T)>,
    save: impl Fn(&VmId, &T) -> Result<(), crate::journal::JournalError>,
) {
    for (vm, value) in now {
        if saved.get(&vm) == Some(&value) {
            continue;
        }
        match save(&vm, &value) {
            Ok(()) => {
                saved.insert(vm, value);
            }
            Err(e) => warn!("{e}"),
        }
    }
}
