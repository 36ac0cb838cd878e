//! The processor side of seed 003: a guest gives back the processors it
//! does not use, through its own agent, as its balloon driver gives back
//! memory. An idle VM's guest offlines its vCPUs down to the VM's
//! `vcpus_min` (`virsh setvcpus --guest`: the guest itself takes them out of
//! its scheduler, so its idle ticks and wakeups stop costing the host); the
//! moment it runs again it gets them all back.
//!
//! Opt-in per VM (`[vm.NAME.realloc] vcpus_min`): it needs the QEMU guest
//! agent in the guest. What the guest had online (its base) is remembered
//! and journaled; a count changed by someone else becomes the new base.

use crate::model::*;
use crate::policy::{Decision, Outcome, Policy};
use crate::realloc::{Class, ReallocConfig, ReallocDecision};
use crate::units::Millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One observed VM as this policy takes it, in observation order.
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuVm {
    /// vCPUs online in the guest, as its agent says; None when not read.
    pub online: Option<u32>,
    /// The fewest ebb may leave online; None: ebb leaves its vCPUs alone.
    pub min: Option<u32>,
}

/// A guest's online vCPUs as ebb found them and as ebb set them (journaled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineVcpus {
    pub base: u32,
    pub applied: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuView {
    pub vm: VmId,
    pub min: u32,
    pub base: u32,
    pub online: u32,
    pub wanted: u32,
    pub why: String,
}

/// Online counts, and one view per VM with `vcpus_min`.
pub type VcpuDecision = Decision<VcpuView>;

#[derive(Debug, Default)]
pub struct VcpuPolicy {
    state: HashMap<VmId, OnlineVcpus>,
    /// When each VM last got its vCPUs back: it is not cut again before its
    /// idleness has held a whole `class_after` since, so bursts do not flap.
    restored_at: HashMap<VmId, Millis>,
}

impl VcpuPolicy {
    pub fn new() -> VcpuPolicy {
        VcpuPolicy::default()
    }

    /// Counts remembered from the journal, before the first tick.
    pub fn resume(&mut self, vm: VmId, v: OnlineVcpus) {
        self.state.insert(vm, v);
    }

    pub fn state(&self, vm: &VmId) -> Option<OnlineVcpus> {
        self.state.get(vm).copied()
    }

    /// One tick. `vms` is aligned with `obs.vms` and `realloc.views`.
    pub fn decide(&mut self, obs: &Observation, realloc: &ReallocDecision, vms: &[VcpuVm], cfg: &ReallocConfig, now: Millis) -> VcpuDecision {
        let mut d = VcpuDecision::default();
        for ((v, a), view) in obs.vms.iter().zip(vms).zip(&realloc.views) {
            // A guest always has a vCPU online: one that says none (its agent
            // is the guest's own, so untrusted) is left alone.
            let (Some(online @ 1..), Some(min), VmState::Running) = (a.online, a.min, v.state) else { continue };
            let s = self.state.entry(v.id.clone()).or_insert(OnlineVcpus { base: online, applied: None });
            if online != s.applied.unwrap_or(s.base) || s.base == 0 {
                // Changed by someone else (or the guest restarted, or the
                // journal held no real count): its own now.
                *s = OnlineVcpus { base: online, applied: None };
            }
            let min = min.min(s.base).max(1);
            // Running at all, now (not held like the class): back at once.
            let runs = view.rates.is_some_and(|r| r.cpu > cfg.idle_cpu);
            let settled = self.restored_at.get(&v.id).is_none_or(|t| now.since(*t) >= cfg.class_after.as_millis());
            let (wanted, why, rule) = if view.critical {
                (s.base, "time-critical: all its vCPUs".to_string(), Rule::Critical)
            } else if view.class == Some(Class::Idle) && !runs && settled {
                (min, format!("idle: its guest keeps {min} of its {} vCPUs online until it runs again", s.base), Rule::Yield)
            } else if s.applied.is_some() && runs {
                (s.base, format!("running again: all {} of its vCPUs back online", s.base), Rule::Restore)
            } else if s.applied.is_some() {
                (online, format!("idle: its guest keeps {online} of its {} vCPUs online until it runs again", s.base), Rule::Yield)
            } else {
                (s.base, format!("not idle: all {} of its vCPUs online", s.base), Rule::Restore)
            };
            if wanted != online {
                let text = format!("{why}: {online} → {wanted} online");
                d.actions.push(Action::SetGuestVcpus { vm: v.id.clone(), count: wanted, reason: Reason::new(rule, text) });
            }
            d.views.push(VcpuView { vm: v.id.clone(), min, base: s.base, online, wanted, why });
        }
        d
    }
}

impl Policy for VcpuPolicy {
    /// A `SetGuestVcpus` carried out is the guest's count now; one that
    /// failed changes nothing (the next tick reads the guest again).
    fn outcome(&mut self, action: &Action, result: &Outcome, now: Millis) {
        let (Action::SetGuestVcpus { vm, count, .. }, Ok(())) = (action, result) else { return };
        if let Some(s) = self.state.get_mut(vm) {
            if *count == s.base {
                s.applied = None;
                self.restored_at.insert(vm.clone(), now);
            } else {
                s.applied = Some(*count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rates::ActivityRates;
    use crate::realloc::VmReallocView;

    fn obs() -> Observation {
        let vm = VmObservation {
            id: VmId::new("g"),
            state: VmState::Running,
            balloon: None,
            activity: Some(Activity { vcpus: 2, ..Activity::default() }),
            persistent: true,
            managed_save: false,
            tune: None,
        };
        Observation { at: Millis(0), host: HostMemory::default(), host_cpus: 2, vms: vec![vm] }
    }

    fn realloc(class: Class, cpu: f64) -> ReallocDecision {
        let mut v = VmReallocView::new(VmId::new("g"));
        v.class = Some(class);
        v.rates = Some(ActivityRates { cpu, ..ActivityRates::default() });
        ReallocDecision { views: vec![v], ..ReallocDecision::default() }
    }

    /// Runs a tick and carries its action out; returns the count online after it.
    fn tick(p: &mut VcpuPolicy, online: u32, class: Class, cpu: f64, t: u64) -> (u32, VcpuDecision) {
        let cfg = ReallocConfig::default();
        let d = p.decide(&obs(), &realloc(class, cpu), &[VcpuVm { online: Some(online), min: Some(1) }], &cfg, Millis(t));
        let mut now = online;
        for a in &d.actions {
            if let Action::SetGuestVcpus { count, .. } = a {
                p.outcome(a, &Ok(()), Millis(t));
                now = *count;
            }
        }
        (now, d)
    }

    #[test]
    fn an_idle_guest_gives_back_its_vcpus_and_gets_them_back_the_moment_it_runs() {
        let mut p = VcpuPolicy::new();
        let (n, d) = tick(&mut p, 2, Class::Idle, 0.0, 0);
        assert_eq!(n, 1, "{d:?}");
        assert!(d.actions[0].reason().text.contains("idle"));
        let (n, _) = tick(&mut p, 1, Class::Idle, 0.0, 2_000);
        assert_eq!(n, 1, "stays down while idle");
        // It runs (its class still idle, held): back at once.
        let (n, d) = tick(&mut p, 1, Class::Idle, 0.8, 4_000);
        assert_eq!(n, 2, "{d:?}");
        // A pause in the burst does not cut it again before class_after.
        let (n, _) = tick(&mut p, 2, Class::Idle, 0.0, 6_000);
        assert_eq!(n, 2);
        let (n, _) = tick(&mut p, 2, Class::Idle, 0.0, 14_000);
        assert_eq!(n, 1);
    }

    #[test]
    fn busy_and_critical_keep_all_and_a_change_by_someone_else_is_the_base() {
        let mut p = VcpuPolicy::new();
        assert_eq!(tick(&mut p, 2, Class::CpuBound, 1.5, 0).0, 2);
        // Someone sets 3 online by hand: that is its own now.
        let (n, d) = tick(&mut p, 3, Class::Steady, 0.5, 2_000);
        assert_eq!((n, d.views[0].base), (3, 3));
        let (n, _) = tick(&mut p, 3, Class::Idle, 0.0, 4_000);
        assert_eq!(n, 1);
        assert_eq!(p.state(&VmId::new("g")), Some(OnlineVcpus { base: 3, applied: Some(1) }));
    }

    #[test]
    fn a_guest_that_reports_no_vcpu_online_or_a_journal_with_none_cannot_panic_or_offline_all() {
        let mut p = VcpuPolicy::new();
        let (n, d) = tick(&mut p, 0, Class::Idle, 0.0, 0);
        assert_eq!((n, d.actions.len(), d.views.len()), (0, 0, 0), "left alone");
        // A journal that remembered a base of none: the guest's count is its own.
        p.resume(VmId::new("g"), OnlineVcpus { base: 0, applied: Some(2) });
        let (n, d) = tick(&mut p, 2, Class::Steady, 0.5, 2_000);
        assert_eq!((n, d.views[0].base), (2, 2), "{d:?}");
        let (n, _) = tick(&mut p, 2, Class::Idle, 0.0, 4_000);
        assert_eq!(n, 1);
    }
}
