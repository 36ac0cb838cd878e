//! One tick's decisions: every policy of `ebb_core` on the observation, then
//! their actions composed into one list. No rule of the agent's own here:
//! this module only gives each policy its inputs.

use super::*;
use ebb_core::affinity::{AffinityDecision, AffinityVm};
use ebb_core::compose::{compose, Decided};
use ebb_core::memory::MemoryDecision;
use ebb_core::realloc::ReallocDecision;
use ebb_core::sleep::SleepDecision;
use ebb_core::vcpus::{VcpuDecision, VcpuVm};
use ebb_core::{Action, Millis, Observation, VmId, VmSettings};
use ebb_surrogate::VmPower;

/// What the policies decided this tick.
pub(super) struct Decisions {
    pub memory: MemoryDecision,
    pub idle: SleepDecision,
    /// None when reallocation is off; affinity and vCPUs follow it.
    pub realloc: Option<ReallocDecision>,
    pub affinity: Option<AffinityDecision>,
    pub vcpus: Option<VcpuDecision>,
}

impl Agent {
    pub(super) fn decide(&mut self, obs: &Observation, cpus: &CpuReadings, at: Millis) -> Decisions {
        self.resolve_settings(obs);
        // Each guest's fastest growth from its needs history sizes its headroom.
        let memory_settings = self
            .vms
            .settings
            .iter()
            .map(|(id, r)| {
                let burst_rate = self.realloc.needs.get(id).and_then(|n| n.fastest_growth());
                (id.clone(), VmSettings { burst_rate, ..r.settings.clone() })
            })
            .collect();
        let memory = self.memory.decide(obs, &memory_settings, &self.cfg.memory, at);
        self.note_skips(&memory, at);
        let sleep_settings = self.vms.settings.iter().filter_map(|(id, r)| Some((id.clone(), r.sleep.clone()?))).collect();
        let idle = self.sleep_policy.decide(obs, &sleep_settings, &self.traffic(), at);
        let realloc = self.realloc.cfg.enabled.then(|| {
            let settings = self.realloc_settings(obs);
            self.realloc.policy.decide(obs, &settings, &self.realloc.cfg, at)
        });
        let affinity = realloc.as_ref().filter(|_| !cpus.pins.is_empty()).map(|d| self.decide_affinity(obs, d, cpus, at));
        self.realloc.affinity_views = affinity.iter().flat_map(|d| d.views.iter()).map(|v| (v.vm.clone(), v.clone())).collect();
        let vcpus = realloc.as_ref().filter(|_| !cpus.online.is_empty()).map(|d| {
            let vms: Vec<VcpuVm> = obs
                .vms
                .iter()
                .map(|v| VcpuVm { online: cpus.online.get(&v.id).and_then(|r| r.as_ref().ok().copied()), min: self.vcpus_min(&v.id) })
                .collect();
            self.realloc.vcpus.decide(obs, d, &vms, &self.realloc.cfg, at)
        });
        self.realloc.vcpu_views = cpus
            .online
            .iter()
            .filter_map(|(vm, r)| Some((vm.clone(), r.clone().err()?)))
            .map(|(vm, e)| (vm, Err(e)))
            .chain(vcpus.iter().flat_map(|d| d.views.iter()).map(|v| (v.vm.clone(), Ok(v.clone()))))
            .collect();
        Decisions { memory, idle, realloc, affinity, vcpus }
    }

    /// Pins for the VMs ebb may pin, with what each usually runs at this hour.
    fn decide_affinity(&mut self, obs: &Observation, realloc: &ReallocDecision, cpus: &CpuReadings, at: Millis) -> AffinityDecision {
        let vms: Vec<AffinityVm> = obs
            .vms
            .iter()
            .map(|v| AffinityVm {
                pins: cpus.pins.get(&v.id).cloned(),
                bound: self.cpus_bound(&v.id),
                expected_cpu: self
                    .realloc.needs
                    .get(&v.id)
                    .and_then(|n| n.usual_cpu(at, &self.realloc.cfg))
                    .map(|u| u * f64::from(v.activity.map_or(1, |a| a.vcpus.max(1)))),
            })
            .collect();
        self.realloc.affinity.decide(obs, realloc, &cpus.host_cpus, &vms, &self.realloc.cfg, at)
    }

    /// The tick's actions, as `ebb_core::compose` orders them.
    pub(super) fn compose(&self, d: &Decisions) -> Vec<Action> {
        let cpus = [d.realloc.as_ref().map(|r| &r.actions), d.affinity.as_ref().map(|a| &a.actions), d.vcpus.as_ref().map(|v| &v.actions)];
        let decided = Decided {
            memory: &d.memory.actions,
            cpus: cpus.into_iter().flatten().map(Vec::as_slice).collect(),
            sleep: &d.idle.actions,
        };
        compose(&decided, |vm| self.vms.sleeping.contains_key(vm))
    }

    /// A failed wake refused its held clients; a tick later the next client
    /// may try again.
    pub(super) fn retry_failed_wakes(&mut self) {
        let failed: Vec<VmId> =
            self.vms.sleeping.keys().filter(|vm| matches!(self.surrogate.state(vm), Some(VmPower::WakeFailed(_)))).cloned().collect();
        for vm in failed {
            self.set_power(&vm, VmPower::Asleep);
        }
    }
}
