//! Host power: the UPS reading, the power-drop plan, low battery and mains back.

use super::*;
use ebb_core::battery::{self, RunningVm};
use crate::journal::{Entry, Kind, Outcome};
use ebb_core::power::PowerState;
use ebb_core::policy::Outcome as Done;
use ebb_core::{Action, ActionError, Millis, Observation, Reason, Rule, VmId, VmState};
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
        for vm in &after.overdue {
            let text = format!(
                "its guest did not shut down within {} s: the host is not powered down under it",
                self.cfg.power.shutdown_timeout.as_secs()
            );
            warn!(vm = %vm, "{text}");
            self.journal_event(Some(vm.as_str()), Kind::ShutdownOverdue, &text);
        }
        // Shutdowns are asked once (a refused one is not repeated every
        // tick either); the power-off comes once nothing runs.
        self.act(after.actions, at).await;
    }

    /// Powers the host down through the platform (or records it, when no
    /// command is configured).
    pub(super) async fn power_off(&mut self, reason: Reason, at: Millis) -> Vec<(Action, Done)> {
        let Some(done) = self.with_platform(|p| p.power_off()).await else { return vec![] };
        let (text, outcome, result) = match done {
            Ok(t) => (t, Outcome::Ok, Ok(())),
            Err(e) => (e.to_string(), Outcome::Failed(e.to_string()), Err(ActionError::Failed(e.to_string()))),
        };
        warn!("power off: {text}");
        self.journal_entry(Entry { rule: Some(Rule::Power), outcome: Some(outcome), ..Entry::event(at, Kind::PowerOff, text.clone()) });
        self.power.last_off = Some(text);
        vec![(Action::PowerOff { reason }, result)]
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
