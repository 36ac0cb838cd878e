//! Host power: the UPS reading, the power-drop plan, low battery and mains back.

use super::*;
use ebb_core::battery::{self, RunningVm};
use crate::api_types::PlanView;
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::power::{plan_power_drop, Candidate, PowerPlan, PowerState, Watts};
use ebb_core::realloc::{ReallocDecision, VmReallocView};
use ebb_core::{Action, Millis, Observation, Rule, VmId, VmObservation, VmState};
use std::collections::HashMap;
use tracing::{info, warn};

impl Agent {
    /// Reads the power source and acts on it (the seed's Figure 4): on low
    /// battery every VM is saved, then the host powered down through the
    /// platform; when mains power is back the VMs saved for it are restored.
    pub(super) async fn power_tick(&mut self, obs: &Observation, at: Millis) {
        let Some((reading, measured)) = self.with_platform(|p| (p.power(), p.measured())).await else { return };
        let measured = measured.map_err(|e| e.to_string());
        if let (Err(e), false) = (&measured, self.power.measured.is_err()) {
            warn!("measuring the host's draw: {e}");
            self.journal_event(None, Kind::PowerMeasureFailed, e);
        }
        self.power.measured = measured;
        match reading {
            Ok(r) => {
                if self.power.error.take().is_some() {
                    self.journal_event(None, Kind::PowerSource, "the power source answers again");
                }
                self.power.reading = r;
            }
            Err(e) => {
                let text = e.to_string();
                if self.power.error.as_deref() != Some(&text) {
                    warn!("power source: {text}");
                    self.journal_event(None, Kind::PowerSourceFailed, &text);
                }
                // The last reading stands: an unreachable upsd is not a power cut.
                self.power.error = Some(text);
            }
        }
        let state = self.power.reading.as_ref().map(|r| r.state(&self.power.low_battery));
        if state != self.power.state {
            let text = match &state {
                Some(PowerState::OnMains) => "on mains power".to_string(),
                Some(PowerState::OnBattery) => "on battery".to_string(),
                Some(PowerState::Low(why)) => format!("low battery: {why}"),
                None => "no power source".to_string(),
            };
            info!("power: {text}");
            self.journal_event(None, Kind::Power, &text);
            self.power.state = state.clone();
        }
        match state {
            Some(PowerState::Low(why)) => self.power_low(obs, &why, at).await,
            Some(PowerState::OnMains) => {
                self.power.sequence.mains_back();
                self.power_back(at).await;
            }
            Some(PowerState::OnBattery) => self.power_drop(at).await,
            None => {}
        }
    }

    /// The host's draw by the power model at what the VMs run now.
    pub(super) fn model_draw(&self, obs: &Observation, d: &ReallocDecision) -> Watts {
        let cpu: f64 = obs
            .vms
            .iter()
            .zip(&d.views)
            .filter_map(|(v, view)| Some(view.rates?.cpu.min(f64::from(v.activity?.vcpus.max(1)))))
            .sum();
        self.cfg.power.model().host(cpu / f64::from(obs.host_cpus.max(1)))
    }

    /// The seed's Figure 3 for this tick: each running VM's draw from the
    /// power model and its CPU use, its value, and whether it is quiescent.
    pub(super) fn power_plan(&self, obs: &Observation, realloc: Option<&ReallocDecision>, budget: Watts) -> PlanView {
        let model = self.cfg.power.model();
        let views: HashMap<&VmId, &VmReallocView> = realloc.map(|d| d.views.iter().map(|v| (&v.vm, v)).collect()).unwrap_or_default();
        let running: Vec<&VmObservation> =
            obs.vms.iter().filter(|v| v.state == VmState::Running && !self.vms.sleeping.contains_key(&v.id)).collect();
        // What each asks for (run + wait), not what it gets now: saving one
        // lets the others run more, and a plan on use alone would cascade.
        let cpu: Vec<f64> = running
            .iter()
            .map(|v| {
                let vcpus = f64::from(v.activity.map_or(1, |a| a.vcpus.max(1)));
                views.get(&v.id).and_then(|view| view.rates).map_or(0.0, |r| (r.cpu + r.vcpu_wait).min(vcpus))
            })
            .collect();
        let running: Vec<&VmId> = running.iter().map(|v| &v.id).collect();
        let draws = model.vm_draws(obs.host_cpus, &cpu);
        let mut no_value = vec![];
        let candidates: Vec<Candidate> = running
            .iter()
            .zip(draws)
            .map(|(id, draw)| {
                let value = self.value_of(id);
                if value.is_none() {
                    no_value.push(id.to_string());
                }
                let quiescent = views.get(id).is_some_and(|v| v.class == Some(ebb_core::realloc::Class::Idle));
                Candidate { vm: (*id).clone(), draw, value: value.unwrap_or(1), quiescent }
            })
            .collect();
        let host_idle = model.idle();
        let plan = plan_power_drop(Watts((budget.0 - host_idle.0).max(0.0)), &candidates);
        PlanView {
            plan: PowerPlan { budget, ..plan },
            host_idle,
            vms: candidates,
            no_value,
        }
    }

    /// On battery with a budget: saves the VMs the plan drops, quiescent
    /// ones first, then the least valuable. Nothing is restored before
    /// mains power is back.
    pub(super) async fn power_drop(&mut self, at: Millis) {
        let Some(plan) = &self.power.plan else { return };
        let saves = battery::power_drop_saves(&plan.plan);
        if !saves.is_empty() {
            self.save_for_power(saves, at).await;
        }
    }

    /// Saves VMs for a power event and remembers them (journaled) for the
    /// restore.
    pub(super) async fn save_for_power(&mut self, actions: Vec<Action>, at: Millis) {
        for (action, result) in self.act(actions, at).await {
            let (Some(vm), Ok(())) = (action.vm().cloned(), result) else { continue };
            let id = vm.clone();
            self.journal.write(move |j| j.set_power_saved(&id, true, at));
            self.power.saved.insert(vm);
        }
    }

    /// Low battery (the seed's Figure 4), as `ebb_core::battery` decides it:
    /// saves, shutdowns of guests whose save failed, the power-off once
    /// nothing runs.
    pub(super) async fn power_low(&mut self, obs: &Observation, why: &str, at: Millis) {
        let running: Vec<RunningVm> = obs
            .vms
            .iter()
            .filter(|v| matches!(v.state, VmState::Running | VmState::Paused) && !self.vms.sleeping.contains_key(&v.id))
            .map(|v| RunningVm {
                id: v.id.clone(),
                handles_power_events: self.handles_power_events(&v.id),
            })
            .collect();
        let saves = self.power.sequence.saves(running.clone(), why);
        // The saves' outcomes reach the sequence through `report`.
        self.save_for_power(saves, at).await;
        let after = self.power.sequence.after_saves(&running, why, at, self.cfg.power.shutdown_timeout);
        // Asked once; a refused request is not repeated every tick either.
        self.act(after.shutdowns, at).await;
        for vm in &after.overdue {
            let text = format!(
                "its guest did not shut down within {} s: the host is not powered down under it",
                self.cfg.power.shutdown_timeout.as_secs()
            );
            warn!(vm = %vm, "{text}");
            self.journal_event(Some(vm.as_str()), Kind::ShutdownOverdue, &text);
        }
        if !after.power_off {
            return;
        }
        let Some(done) = self.with_platform(|p| p.power_off()).await else { return };
        let (text, outcome) = match done {
            Ok(t) => (t, Outcome::Ok),
            Err(e) => (e.to_string(), Outcome::Failed(e.to_string())),
        };
        warn!("power off: {text}");
        self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::PowerOff, text.clone()) });
        self.power.last_off = Some(text);
    }

    /// Mains power is back: restores the VMs saved for power, as
    /// `ebb_core::battery::restores` orders them.
    pub(super) async fn power_back(&mut self, at: Millis) {
        // Woken by hand or gone meanwhile: nothing left to restore.
        let stale: Vec<VmId> = self.power.saved.iter().filter(|vm| !self.vms.sleeping.contains_key(*vm)).cloned().collect();
        for vm in stale {
            self.forget_power_saved(&vm, at);
        }
        let saved: Vec<(VmId, u32)> = self.power.saved.iter().map(|vm| (vm.clone(), self.value_of(vm).unwrap_or(1))).collect();
        for (action, result) in self.act(battery::restores(&saved), at).await {
            if let (Some(vm), Ok(())) = (action.vm(), result) {
                self.forget_power_saved(vm, at);
            }
        }
    }

    pub(super) fn forget_power_saved(&mut self, vm: &VmId, at: Millis) {
        self.power.saved.remove(vm);
        let id = vm.clone();
        self.journal.write(move |j| j.set_power_saved(&id, false, at));
    }

    pub(super) fn power_is_low(&self) -> bool {
        matches!(self.power.state, Some(PowerState::Low(_)))
    }
}
