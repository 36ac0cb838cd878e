//! Journaling what changed (and only that), and the needs history.

use super::*;
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::memory::MemoryDecision;
use ebb_core::realloc::ReallocDecision;
use ebb_core::{Bytes, Millis, Observation, VmId, Rule};
use std::collections::HashMap;
use tracing::info;

impl Agent {
    /// After acting: journals what changed this tick (memory steps, tunes,
    /// pins, vCPUs) and adds the tick to the needs history.
    pub(super) fn remember_changes(&mut self, obs: &Observation, d: &Decisions, at: Millis) {
        self.remember_memory_state(&d.memory, at);
        self.remember_tunes(obs, at);
        self.remember_pins(at);
        self.remember_vcpus(at);
        self.record_needs(obs, d.realloc.as_ref(), &d.memory, at);
    }

    /// Journals a VM's skip reason when it changes.
    pub(super) fn note_skips(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.views {
            if self.said.skip.changed(&view.vm, &view.skipped) {
                if let Some(why) = &view.skipped {
                    info!(vm = %view.vm, "not managing its memory: {why}");
                    self.journal_vm(&view.vm, at, Kind::Skipped, Some(Rule::Skip), why, None, None);
                }
            }
        }
    }

    /// Counts this tick's rates (with reallocation on) and each managed
    /// guest's memory growth into its needs history; writes the changed
    /// histories to the journal every `NEEDS_FLUSH`.
    pub(super) fn record_needs(&mut self, obs: &Observation, d: Option<&ReallocDecision>, memory: &MemoryDecision, at: Millis) {
        for (v, view) in obs.vms.iter().zip(d.iter().flat_map(|d| &d.views)) {
            let (Some(r), Some(a)) = (view.rates, v.activity) else { continue };
            self.realloc.needs.entry(v.id.clone()).or_default().record(at, &r, a.vcpus);
            self.realloc.needs_dirty.insert(v.id.clone());
        }
        for view in &memory.views {
            let Some(g) = view.growth else { continue };
            self.realloc.needs.entry(view.vm.clone()).or_default().record_growth(at, g);
            self.realloc.needs_dirty.insert(view.vm.clone());
        }
        if at.since(self.realloc.needs_flushed_at) >= NEEDS_FLUSH.as_millis() as u64 {
            self.flush_needs(at);
        }
    }

    pub(super) fn flush_needs(&mut self, at: Millis) {
        for vm in std::mem::take(&mut self.realloc.needs_dirty) {
            if let Some(n) = self.realloc.needs.get(&vm).cloned() {
                self.journal.write(move |j| j.save_needs(&vm, &n, at));
            }
        }
        self.realloc.needs_flushed_at = at;
    }

    /// Journals each VM's tunes (as found, as ebb set them) when they change,
    /// so a restarted agent knows its own changes.
    pub(super) fn remember_tunes(&mut self, obs: &Observation, at: Millis) {
        for (vm, t) in obs.vms.iter().filter_map(|v| Some((v.id.clone(), self.realloc.policy.tunes(&v.id)?))) {
            if self.said.tunes.changed(&vm, &t) {
                self.journal.write(move |j| j.save_tunes(&vm, &t, at));
            }
        }
    }

    /// Writes the pinnings the affinity policy holds when they change.
    pub(super) fn remember_pins(&mut self, at: Millis) {
        for (vm, p) in self.realloc.affinity_views.keys().filter_map(|vm| Some((vm.clone(), self.realloc.affinity.pins(vm)?.clone()))) {
            if self.said.pins.changed(&vm, &p) {
                self.journal.write(move |j| j.save_pins(&vm, &p, at));
            }
        }
    }

    /// Writes the online vCPU counts the policy holds when they change.
    pub(super) fn remember_vcpus(&mut self, at: Millis) {
        for (vm, v) in self.realloc.vcpu_views.keys().filter_map(|vm| Some((vm.clone(), self.realloc.vcpus.state(vm)?))) {
            if self.said.vcpus.changed(&vm, &v) {
                self.journal.write(move |j| j.save_online_vcpus(&vm, &v, at));
            }
        }
    }

    /// Persists each VM's adaptive step and target when they change, so a
    /// restarted agent resumes instead of starting over.
    pub(super) fn remember_memory_state(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.views {
            if view.skipped.is_some() {
                continue;
            }
            if self.said.memory.changed(&view.vm, &(view.step, view.target)) {
                let (vm, step, target) = (view.vm.clone(), view.step, view.target);
                self.journal.write(move |j| j.save_memory_state(&vm, step, target, at));
            }
        }
    }

    pub(super) fn journal_event(&self, vm: Option<&str>, kind: Kind, text: &str) {
        self.journal_entry(Entry { vm: vm.map(str::to_owned), ..Entry::event(self.clock.now(), kind, text) });
    }

    /// Sends an entry to the journal's writer, which retries it while the
    /// journal fails (a full disk): never fatal, never a wait.
    pub(super) fn journal_entry(&self, entry: Entry) {
        self.journal.write(move |j| j.record(&entry).map(drop));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn journal_vm(&self, vm: &VmId, at: Millis, kind: Kind, rule: Option<Rule>, text: &str, target: Option<Bytes>, outcome: Option<Outcome>) {
        self.journal_entry(Entry { at, vm: Some(vm.to_string()), kind, rule, text: text.to_owned(), target, outcome });
    }
}

/// What was last journaled about each VM, so the journal records changes,
/// not repeats (change tracking as one small type, not a memo per fact).
pub(super) struct Said<V>(HashMap<VmId, V>);

impl<V: PartialEq + Clone> Said<V> {
    pub fn resumed(known: impl IntoIterator<Item = (VmId, V)>) -> Said<V> {
        Said(known.into_iter().collect())
    }

    /// True, and remembered, when `value` is not what was last said about `vm`.
    pub fn changed(&mut self, vm: &VmId, value: &V) -> bool {
        if self.0.get(vm) == Some(value) {
            return false;
        }
        self.0.insert(vm.clone(), value.clone());
        true
    }

    pub fn forget(&mut self, vm: &VmId) {
        self.0.remove(vm);
    }
}

impl<V> Default for Said<V> {
    fn default() -> Self {
        Said(HashMap::new())
    }
}

/// Everything the agent journals about a VM only when it changes.
#[derive(Default)]
pub(super) struct SaidAbout {
    /// Why its memory is not managed.
    pub skip: Said<Option<String>>,
    /// What is wrong with its settings.
    pub problems: Said<Vec<String>>,
    /// Its adaptive step and last target (resumed at start).
    pub memory: Said<(Bytes, Option<Bytes>)>,
    /// Its CPU tunes, as found and as ebb set them.
    pub tunes: Said<Tunes>,
    pub pins: Said<Pins>,
    pub vcpus: Said<OnlineVcpus>,
}
