//! `ebb plan` from one tick: each running VM's draw by the power model at
//! the CPU it asks for, its value and whether it is quiescent (the seed's
//! Figure 3), and the plan under the budget.

use super::{plan_power_drop, Candidate, PowerModel, PowerPlan, Watts};
use crate::realloc::{Class, VmReallocView};
use crate::{Observation, VmId, VmObservation, VmState};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What ebb keeps and saves if the host runs on its battery budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub plan: PowerPlan,
    /// The host's idle power (from the model), taken off the budget first.
    pub host_idle: Watts,
    /// Each running VM with its draw from the model, its value, and whether it is quiescent.
    pub vms: Vec<Candidate>,
    /// VMs with no value set (counted as 1).
    pub no_value: Vec<String>,
}

/// The plan under `budget` for the VMs running now, not those ebb holds
/// `asleep`. `realloc` holds the reallocation views (their rates and
/// classes); a VM without one asks for no CPU and is not quiescent.
pub fn plan_view(
    obs: &Observation,
    realloc: &[VmReallocView],
    asleep: impl Fn(&VmId) -> bool,
    value: impl Fn(&VmId) -> Option<u32>,
    model: &PowerModel,
    budget: Watts,
) -> PlanView {
    let views: HashMap<&VmId, &VmReallocView> = realloc.iter().map(|v| (&v.vm, v)).collect();
    let running: Vec<&VmObservation> = obs.vms.iter().filter(|v| v.state == VmState::Running && !asleep(&v.id)).collect();
    // What each asks for (run + wait), not what it gets now: saving one
    // lets the others run more, and a plan on use alone would cascade.
    let cpu: Vec<f64> = running
        .iter()
        .map(|v| {
            let vcpus = f64::from(v.activity.map_or(1, |a| a.vcpus.max(1)));
            views.get(&v.id).and_then(|view| view.rates).map_or(0.0, |r| (r.cpu + r.vcpu_wait).min(vcpus))
        })
        .collect();
    let draws = model.vm_draws(obs.host_cpus, &cpu);
    let mut no_value = vec![];
    let candidates: Vec<Candidate> = running
        .iter()
        .zip(draws)
        .map(|(v, draw)| {
            let set = value(&v.id);
            if set.is_none() {
                no_value.push(v.id.to_string());
            }
            let quiescent = views.get(&v.id).is_some_and(|view| view.class == Some(Class::Idle));
            Candidate { vm: v.id.clone(), draw, value: set.unwrap_or(1), quiescent }
        })
        .collect();
    let host_idle = model.idle();
    let plan = plan_power_drop(Watts((budget.0 - host_idle.0).max(0.0)), &candidates);
    PlanView { plan: PowerPlan { budget, ..plan }, host_idle, vms: candidates, no_value }
}

/// The host's draw by the power model at what the VMs run now (each VM's
/// CPU use, at most its vCPUs); `realloc` is in observation order.
pub fn model_draw(obs: &Observation, realloc: &[VmReallocView], model: &PowerModel) -> Watts {
    let cpu: f64 = obs
        .vms
        .iter()
        .zip(realloc)
        .filter_map(|(v, view)| Some(view.rates?.cpu.min(f64::from(v.activity?.vcpus.max(1)))))
        .sum();
    model.host(cpu / f64::from(obs.host_cpus.max(1)))
}

#[cfg(test)]
#[path = "plan_view_tests.rs"]
mod tests;
