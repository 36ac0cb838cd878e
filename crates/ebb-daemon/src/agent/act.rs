//! Carrying out the policies' actions and feeding the outcomes back: each
//! outcome goes to every policy once (`report`), whoever decided it.

use super::*;
use crate::journal::{Kind, Outcome};
use crate::api_types::SleepRecord;
use ebb_backends::HvError;
use ebb_surrogate::VmPower;
use ebb_core::policy::Outcome as Done;
use ebb_core::{Action, ActionError, Millis, Policy, SleepMode};
use std::time::Instant;
use tracing::{info, warn};

impl Agent {
    /// Carries out actions and journals each outcome; returns them.
    pub(super) async fn act(&mut self, actions: Vec<Action>, at: Millis) -> Vec<(Action, Result<(), String>)> {
        if actions.is_empty() {
            return vec![];
        }
        // The host's (device power, the power-off) go through the platform, one by one.
        let (host, actions): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| a.vm().is_none());
        let mut out = Vec::new();
        for a in host {
            for (part, result) in self.act_on_host(a, at).await {
                self.report(&part, &result, at);
                out.push((part, result.map_err(|e| e.to_string())));
            }
        }
        if actions.is_empty() {
            return out;
        }
        // The surrogate holds new clients from the moment a save begins (if
        // the save fails they are spliced to the still-running VM), and while
        // a wake runs. A VM whose ports the kernel still forwards (nft
        // failed to remove its rules) is not saved: its clients would meet
        // a stopped VM.
        let mut kept = Vec::with_capacity(actions.len());
        for a in actions {
            match &a {
                Action::Sleep { vm, .. } => {
                    if let Err(e) = self.try_set_power(vm, VmPower::Asleep) {
                        let vm = vm.clone();
                        self.set_power(&vm, VmPower::Awake);
                        self.counters.actions += 1;
                        self.counters.action_failures += 1;
                        self.journal_vm(&vm, at, Kind::of(&a), Some(a.reason().rule), &a.reason().text, None, Some(Outcome::Failed(e.clone())));
                        self.report(&a, &Err(ActionError::Failed(e.clone())), at);
                        out.push((a, Err(e)));
                        continue;
                    }
                }
                Action::Wake { vm, .. } => self.set_power(vm, VmPower::Waking),
                _ => {}
            }
            kept.push(a);
        }
        let actions = kept;
        // Waking a paused VM resumes it; waking a saved one starts it from its image.
        let sleeping = self.vms.sleeping.clone();
        let Some(results) = self
            .with_hv(move |hv| {
                actions
                    .into_iter()
                    .map(|a| {
                        let t0 = Instant::now();
                        let r = match &a {
                            Action::SetBalloonTarget { vm, target, .. } => hv.set_memory(vm, *target),
                            Action::SetTune { vm, tune, .. } => hv.set_tune(vm, *tune),
                            Action::Shutdown { vm, .. } => hv.shutdown(vm),
                            Action::SetPins { vm, pins, .. } => hv.set_vcpu_pins(vm, pins),
                            Action::SetGuestVcpus { vm, count, .. } => hv.set_guest_vcpus(vm, *count),
                            Action::Sleep { vm, mode: SleepMode::Save, .. } => hv.save(vm),
                            Action::Sleep { vm, mode: SleepMode::Pause, .. } => hv.pause(vm),
                            Action::Wake { vm, .. } => match sleeping.get(vm).map(|r| r.mode) {
                                Some(SleepMode::Pause) => hv.resume(vm),
                                _ => hv.start(vm).or_else(|e| hv.resume(vm).map_err(|_| e)),
                            },
                            Action::CpuSave { .. } | Action::CpuRestore { .. } | Action::DiskStandby { .. } | Action::PowerOff { .. } => {
                                unreachable!("host actions go to the platform")
                            }
                        };
                        (a, r, t0.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return out;
        };
        for (action, result, took) in results {
            self.counters.actions += 1;
            let vm = action.vm().expect("a VM's action").clone();
            let reason = action.reason().clone();
            if let Err(e) = &result {
                self.counters.action_failures += 1;
                warn!(vm = %vm, "{} failed: {e}", action.kind());
            } else {
                info!(vm = %vm, "{}: {reason}", action.kind());
            }
            let done: Done = match &result {
                Ok(()) => Ok(()),
                Err(HvError::Bandwidth { detail, .. }) => Err(ActionError::Bandwidth(detail.to_string())),
                Err(e) => Err(ActionError::Failed(e.to_string())),
            };
            self.report(&action, &done, at);
            let target = match &action {
                Action::SetBalloonTarget { target, .. } => Some(*target),
                _ => None,
            };
            // What the agent itself keeps of each outcome (not the policies').
            if let (Some(known), Ok(())) = (KnownState::after(&action), &result) {
                self.vms.states.insert(vm.clone(), known);
            }
            match (&action, &result) {
                (Action::SetTune { tune, .. }, Ok(())) => {
                    self.vms.live_tunes.insert(vm.clone(), (*tune, at));
                }
                (Action::Sleep { mode, .. }, Ok(())) => {
                    self.counters.sleeps += 1;
                    let rec = SleepRecord { mode: *mode, since: at, reason: reason.text.clone() };
                    let (id, record) = (vm.clone(), rec.clone());
                    self.journal.write(move |j| j.set_sleeping(&id, &record));
                    self.vms.sleeping.insert(vm.clone(), rec);
                }
                (Action::Sleep { .. }, Err(_)) => self.set_power(&vm, VmPower::Awake),
                (Action::Wake { .. }, Ok(())) => {
                    self.counters.wakes += 1;
                    self.counters.last_wake_ms = Some(took.as_secs_f64() * 1000.0);
                    self.forget_sleep(&vm);
                    self.set_power(&vm, VmPower::Awake);
                }
                (Action::Wake { .. }, Err(e)) => self.set_power(&vm, VmPower::WakeFailed(e.to_string())),
                _ => {}
            }
            self.journal_vm(&vm, at, Kind::of(&action), Some(reason.rule), &reason.text, target, Some(Outcome::of(&result)));
            // The backend's own error goes on: its message is told once.
            let lost = result.as_ref().err().is_some_and(HvError::is_connection_lost);
            if let (true, Err(e)) = (lost, &result) {
                self.lost_connection(at, e);
            }
            out.push((action, result.map_err(|e| e.to_string())));
            if lost {
                break;
            }
        }
        out
    }

    /// Every policy hears how each action went, once; each keeps to its own.
    pub(super) fn report(&mut self, action: &Action, result: &Done, at: Millis) {
        let policies: [&mut dyn Policy; 7] = [
            &mut self.memory,
            &mut self.sleep_policy,
            &mut self.realloc.policy,
            &mut self.realloc.affinity,
            &mut self.realloc.vcpus,
            &mut self.devices.policy,
            &mut self.power.sequence,
        ];
        for p in policies {
            p.outcome(action, result, at);
        }
    }
}
