//! What ebb does on power events, in order (the seed's Figures 3 and 4), as
//! decisions the agent carries out: on battery with a budget, save what the
//! plan drops; on low battery, save every VM (those that cannot handle power
//! events first), ask the guest of a VM whose save failed to shut down, and
//! power the host down once nothing runs, once; on mains, restore what was
//! saved, the most valuable first. A VM that neither saves nor shuts down
//! keeps the host up: ebb never destroys it.

use crate::policy::{Outcome, Policy};
use crate::power::PowerPlan;
use crate::{Action, Millis, Reason, Rule, SleepMode, VmId};
use std::collections::BTreeMap;
use std::time::Duration;

/// A running VM as the low-battery sequence sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningVm {
    pub id: VmId,
    /// The guest handles power events itself: it is saved after those that do not.
    pub handles_power_events: bool,
}

/// The low-battery sequence's memory across ticks.
#[derive(Clone, Debug, Default)]
pub struct LowBatterySequence {
    /// VMs whose guests were asked to shut down, their saves having failed:
    /// since when, and whether that was reported overdue.
    shutting_down: BTreeMap<VmId, (Millis, bool)>,
    /// The host was powered down (or the power-off recorded) in this event.
    powered_off: bool,
    /// This tick's saves, from `saves` to `after_saves`…
    saving: Vec<VmId>,
    /// …and those of them that failed, as their outcomes told.
    failed: Vec<VmId>,
}

/// What to do after this tick's saves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AfterSaves {
    /// Guests to ask to shut down (asked once each), or, once nothing runs
    /// any more, the host's power-off (once per low-battery event).
    pub actions: Vec<Action>,
    /// Guests asked to shut down that did not within the limit (reported once).
    pub overdue: Vec<VmId>,
}

impl LowBatterySequence {
    /// The saves to try this tick: every running VM not already asked to
    /// shut down, those that cannot handle power events first.
    pub fn saves(&mut self, mut running: Vec<RunningVm>, why: &str) -> Vec<Action> {
        running.sort_by_key(|v| v.handles_power_events);
        let reason = Reason::new(Rule::Power, format!("low battery ({why}): saving every VM before the host powers down"));
        running.retain(|v| !self.shutting_down.contains_key(&v.id));
        self.saving = running.iter().map(|v| v.id.clone()).collect();
        running.into_iter().map(|v| Action::Sleep { vm: v.id, mode: SleepMode::Save, reason: reason.clone() }).collect()
    }

    /// Given the VMs still `running` (before this tick's saves) and the
    /// saves' outcomes, decides the shutdowns, what is overdue and whether
    /// the host powers down now.
    pub fn after_saves(&mut self, running: &[RunningVm], why: &str, at: Millis, limit: Duration) -> AfterSaves {
        self.saving.clear();
        let failed = std::mem::take(&mut self.failed);
        let mut after = AfterSaves::default();
        let reason = Reason::new(
            Rule::Power,
            format!("low battery ({why}) and its save failed: its guest is asked to shut down before the host powers down"),
        );
        for vm in &failed {
            after.actions.push(Action::Shutdown { vm: vm.clone(), reason: reason.clone() });
            self.shutting_down.insert(vm.clone(), (at, false));
        }
        let stopping: Vec<&VmId> = running.iter().map(|v| &v.id).filter(|vm| self.shutting_down.contains_key(*vm) && !failed.contains(vm)).collect();
        for vm in &stopping {
            if let Some((since, overdue)) = self.shutting_down.get_mut(*vm) {
                if !*overdue && at.since(*since) >= limit.as_millis() as u64 {
                    *overdue = true;
                    after.overdue.push((*vm).clone());
                }
            }
        }
        if failed.is_empty() && stopping.is_empty() && !self.powered_off {
            self.powered_off = true;
            let reason = Reason::new(Rule::Power, format!("low battery ({why}): every VM is saved or stopped, the host powers down"));
            after.actions.push(Action::PowerOff { reason });
        }
        after
    }

    /// Mains power is back: the next low battery starts afresh.
    pub fn mains_back(&mut self) {
        *self = LowBatterySequence::default();
    }
}

impl Policy for LowBatterySequence {
    /// A save of this tick's that failed: its guest is asked to shut down.
    fn outcome(&mut self, action: &Action, result: &Outcome, _: Millis) {
        if let (Action::Sleep { vm, .. }, Err(_)) = (action, result) {
            if self.saving.contains(vm) && !self.failed.contains(vm) {
                self.failed.push(vm.clone());
            }
        }
    }
}

/// On battery with a budget: the saves that keep the most valuable VMs that
/// fit running (the plan's `save` list, in its order).
pub fn power_drop_saves(plan: &PowerPlan) -> Vec<Action> {
    let keep = plan.keep.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ");
    let reason = Reason::new(
        Rule::Power,
        format!(
            "on battery with a budget of {}: keeping the most valuable VMs that fit ({})",
            plan.budget,
            if keep.is_empty() { "none" } else { &keep }
        ),
    );
    plan.save.iter().map(|vm| Action::Sleep { vm: vm.clone(), mode: SleepMode::Save, reason: reason.clone() }).collect()
}

/// Mains power is back: wakes what was saved for power and still sleeps,
/// the most valuable first (equal values by name, so the order is stable).
pub fn restores(saved: &[(VmId, u32)]) -> Vec<Action> {
    let mut saved: Vec<&(VmId, u32)> = saved.iter().collect();
    saved.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let reason = Reason::new(Rule::Power, "mains power is back: restoring what ebb saved for power");
    saved.into_iter().map(|(vm, _)| Action::Wake { vm: vm.clone(), reason: reason.clone() }).collect()
}

#[cfg(test)]
#[path = "battery_tests.rs"]
mod tests;
