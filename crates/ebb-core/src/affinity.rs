//! Core affinity (SPEC §3, seed 001's "fashion another change"): when a
//! cpu-bound VM competes for the CPU it is pinned to, a higher weight only
//! robs its neighbour there (the conflict the reallocation policy refuses).
//! If another CPU within the VM's bound is free, moving the VM's vCPUs there
//! helps it and costs nobody anything. The needs history counts too: a CPU
//! whose pinned VMs are usually busy at this hour is not free, even when
//! they happen to rest right now.
//!
//! ebb moves only VMs whose settings give a bound (`cpus`): an operator's
//! pinning without one is left as it is. What the VM had (its base) is
//! remembered, and put back once it is no longer cpu-bound; a change made
//! by someone else becomes its new base.

use crate::model::*;
use crate::policy::{Decision, Outcome, Policy};
use crate::realloc::{Class, ReallocConfig, ReallocDecision};
use crate::units::Millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

pub use crate::cpuset::{CpuSet, HostCpuTime, MAX_CPUS};

/// One observed VM as the affinity policy takes it, in observation order.
#[derive(Clone, Debug, Default)]
pub struct AffinityVm {
    /// Each vCPU's live pinning; None when not read (not running, or the
    /// driver cannot tell).
    pub pins: Option<Vec<CpuSet>>,
    /// The CPUs ebb may pin it to (`[vm.NAME.realloc] cpus`); None: ebb
    /// leaves its affinity alone.
    pub bound: Option<CpuSet>,
    /// What its history says it usually runs at this hour (p90), in CPUs' worth.
    pub expected_cpu: Option<f64>,
}

/// Why a VM has the affinity it has. In words through `Display`.
#[derive(Clone, Debug, PartialEq)]
pub enum AffinityWhy {
    Moved { from: CpuSet, from_busy: f64, to: CpuSet, to_busy: f64 },
    StaysMoved,
    NoFreerCpu { bound: CpuSet, from: CpuSet, from_busy: f64 },
    Back,
    Own,
    /// As read back from the API.
    Text(String),
}

impl fmt::Display for AffinityWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AffinityWhy::Moved { from, from_busy, to, to_busy } => write!(
                f,
                "cpu-bound and waiting on CPU {from}, {:.0}% busy: a higher weight would only rob what runs there too, so its vCPUs move to CPU {to} ({:.0}% busy with others, their usual use at this hour included)",
                from_busy * 100.0,
                to_busy * 100.0
            ),
            AffinityWhy::StaysMoved => f.write_str("still cpu-bound: stays on the CPUs ebb moved it to"),
            AffinityWhy::NoFreerCpu { bound, from, from_busy } => write!(
                f,
                "cpu-bound and waiting on CPU {from} ({:.0}% busy), but no CPU of its bound {bound} is free: stays",
                from_busy * 100.0
            ),
            AffinityWhy::Back => f.write_str("no longer cpu-bound: back on its own CPUs"),
            AffinityWhy::Own => f.write_str("its own CPUs"),
            AffinityWhy::Text(t) => f.write_str(t),
        }
    }
}

reason_as_text!(AffinityWhy);

/// A VM's pinning as ebb found it and as ebb last set it (journaled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    pub base: Vec<CpuSet>,
    /// None: ebb has nothing of its own in place.
    pub applied: Option<Vec<CpuSet>>,
}

/// One VM with a bound, for `ebb vms` and `ebb explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AffinityView {
    pub vm: VmId,
    pub bound: CpuSet,
    pub base: Vec<CpuSet>,
    pub current: Vec<CpuSet>,
    pub wanted: Vec<CpuSet>,
    pub why: AffinityWhy,
}

/// Pinnings, and one view per VM with a bound.
pub type AffinityDecision = Decision<AffinityView>;

#[derive(Debug, Default)]
pub struct AffinityPolicy {
    pins: HashMap<VmId, Pins>,
    moved_at: HashMap<VmId, Millis>,
    last_host: Option<Vec<HostCpuTime>>,
}

impl AffinityPolicy {
    pub fn new() -> AffinityPolicy {
        AffinityPolicy::default()
    }

    /// Pinnings remembered from the journal, before the first tick.
    pub fn resume(&mut self, vm: VmId, pins: Pins) {
        self.pins.insert(vm, pins);
    }

    pub fn pins(&self, vm: &VmId) -> Option<&Pins> {
        self.pins.get(vm)
    }

    /// One tick. `vms` is aligned with `obs.vms` and `realloc.views`.
    pub fn decide(
        &mut self,
        obs: &Observation,
        realloc: &ReallocDecision,
        host: &[HostCpuTime],
        vms: &[AffinityVm],
        cfg: &ReallocConfig,
        now: Millis,
    ) -> AffinityDecision {
        let mut d = AffinityDecision::default();
        // Each host CPU's use this tick (0–1); empty before two readings.
        let mut cpu_busy = vec![];
        if let Some(last) = self.last_host.replace(host.to_vec()).filter(|l| l.len() == host.len()) {
            cpu_busy = last
                .iter()
                .zip(host)
                .map(|(a, b)| {
                    let total = b.total_ns.saturating_sub(a.total_ns);
                    if total == 0 { 0.0 } else { (b.busy_ns.saturating_sub(a.busy_ns) as f64 / total as f64).clamp(0.0, 1.0) }
                })
                .collect();
        }
        let ncpus = cpu_busy.len() as u32;

        // What each CPU is kept busy with by VMs pinned to a few CPUs,
        // expected from their history: the part of their usual load that
        // is not running now still counts against moving onto the CPU.
        let mut expected = vec![0.0; cpu_busy.len()];
        for ((v, a), view) in obs.vms.iter().zip(vms).zip(&realloc.views) {
            let (Some(pins), Some(usual)) = (&a.pins, a.expected_cpu) else { continue };
            let on = CpuSet::union(pins);
            if v.state != VmState::Running || on.is_empty() || on.len() as u32 >= ncpus {
                continue;
            }
            let now_cpu = view.rates.map_or(0.0, |r| r.cpu);
            let missing = (usual - now_cpu).max(0.0) / on.len() as f64;
            for c in on.iter().filter(|&c| c < ncpus) {
                expected[c as usize] += missing;
            }
        }

        for ((v, a), view) in obs.vms.iter().zip(vms).zip(&realloc.views) {
            let (Some(bound), Some(current)) = (&a.bound, &a.pins) else { continue };
            if v.state != VmState::Running || cpu_busy.is_empty() {
                continue;
            }
            let pins = self.pins.entry(v.id.clone()).or_insert_with(|| Pins { base: current.clone(), applied: None });
            let in_place = pins.applied.as_ref().unwrap_or(&pins.base);
            if current != in_place {
                // Changed by someone else (or restarted with its own): its own now.
                *pins = Pins { base: current.clone(), applied: None };
            }
            let on = CpuSet::union(current);
            let vcpus = current.len().max(1);
            // Others' use of a CPU: the measured use less the VM's own share
            // on the CPUs it runs on, or the history, whichever is more.
            let own = view.rates.map_or(0.0, |r| r.cpu) / on.len().max(1) as f64;
            let others = |c: u32| {
                let measured = cpu_busy.get(c as usize).copied().unwrap_or(1.0) - if on.contains(c) { own } else { 0.0 };
                measured.max(0.0).max(expected.get(c as usize).copied().unwrap_or(0.0)).min(1.0)
            };
            let mean = |set: &CpuSet, f: &dyn Fn(u32) -> f64| set.iter().map(f).sum::<f64>() / set.len().max(1) as f64;
            let total = |c: u32| cpu_busy.get(c as usize).copied().unwrap_or(1.0);
            let cpu_bound = matches!(view.class, Some(Class::CpuBound | Class::Mixed));
            let held = self.moved_at.get(&v.id).is_some_and(|t| now.since(*t) < cfg.affinity_hold.as_millis());
            let (wanted, why) = if cpu_bound && view.rates.is_some_and(|r| r.vcpu_wait > 0.0 || view.contended) {
                // Its own CPUs count whole: it waits on them, with whatever runs there.
                let from_busy = mean(&on, &total);
                // The least busy CPUs of its bound, one per vCPU; ties keep
                // the ones it is on, then the lowest numbers.
                let mut choice: Vec<u32> = bound.iter().filter(|&c| c < ncpus).collect();
                choice.sort_by(|&x, &y| others(x).total_cmp(&others(y)).then(on.contains(y).cmp(&on.contains(x))).then(x.cmp(&y)));
                choice.truncate(vcpus);
                let to = CpuSet::new(choice);
                let to_busy = mean(&to, &others);
                if pins.applied.is_some() {
                    (current.clone(), AffinityWhy::StaysMoved)
                } else if from_busy >= cfg.affinity_busy && to_busy <= cfg.affinity_free && to != on && !held {
                    (vec![to.clone(); vcpus], AffinityWhy::Moved { from: on.clone(), from_busy, to, to_busy })
                } else if from_busy >= cfg.affinity_busy {
                    (current.clone(), AffinityWhy::NoFreerCpu { bound: bound.clone(), from: on.clone(), from_busy })
                } else {
                    (current.clone(), AffinityWhy::Own)
                }
            } else if cpu_bound && pins.applied.is_some() {
                (current.clone(), AffinityWhy::StaysMoved)
            } else if pins.applied.is_some() && view.class.is_some() && !held {
                (pins.base.clone(), AffinityWhy::Back)
            } else {
                (current.clone(), AffinityWhy::Own)
            };
            if &wanted != current {
                let text = format!("{why}: CPU {} → {}", describe(current), describe(&wanted));
                d.actions.push(Action::SetPins { vm: v.id.clone(), pins: wanted.clone(), reason: Reason::new(Rule::Affinity, text) });
            }
            d.views.push(AffinityView { vm: v.id.clone(), bound: bound.clone(), base: pins.base.clone(), current: current.clone(), wanted, why });
        }
        d
    }
}

impl Policy for AffinityPolicy {
    /// A `SetPins` carried out is the VM's pinning now; either way the VM
    /// is held where it is for `affinity_hold`.
    fn outcome(&mut self, action: &Action, result: &Outcome, now: Millis) {
        let Action::SetPins { vm, pins, .. } = action else { return };
        if let (Ok(()), Some(p)) = (result, self.pins.get_mut(vm)) {
            p.applied = (pins != &p.base).then(|| pins.clone());
        }
        self.moved_at.insert(vm.clone(), now);
    }
}

/// A pinning in words: "1" when every vCPU has the same CPUs, else per vCPU.
pub fn describe(pins: &[CpuSet]) -> String {
    match pins.split_first() {
        Some((first, rest)) if rest.iter().all(|p| p == first) => first.to_string(),
        _ => pins.iter().enumerate().map(|(i, p)| format!("vCPU{i}:{p}")).collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rates::ActivityRates;
    use crate::realloc::VmReallocView;

    fn vm(name: &str) -> VmObservation {
        VmObservation {
            id: VmId::new(name),
            state: VmState::Running,
            balloon: None,
            activity: Some(Activity { vcpus: 1, ..Activity::default() }),
            persistent: true,
            managed_save: false,
            tune: None,
        }
    }

    fn view(name: &str, class: Option<Class>, cpu: f64, wait: f64) -> VmReallocView {
        let mut v = VmReallocView::new(VmId::new(name));
        v.class = class;
        v.rates = Some(ActivityRates { cpu, vcpu_wait: wait, ..ActivityRates::default() });
        v.contended = wait > 0.1;
        v
    }

    /// Two CPUs' cumulative times after `secs` seconds at the given use.
    fn host(secs: u64, busy: [f64; 2]) -> Vec<HostCpuTime> {
        busy.iter().map(|b| HostCpuTime { busy_ns: (secs as f64 * b * 1e9) as u64, total_ns: secs * 1_000_000_000 }).collect()
    }

    fn cpus(s: &str) -> CpuSet {
        CpuSet::parse(s).unwrap()
    }

    struct World {
        p: AffinityPolicy,
        cfg: ReallocConfig,
        pins: Vec<Vec<CpuSet>>,
        t: u64,
    }

    impl World {
        /// One tick: a and b with their classes, CPU use and wait; CPU use per host CPU.
        fn tick(&mut self, views: [VmReallocView; 2], busy: [f64; 2], bounds: [Option<&str>; 2], expected: [Option<f64>; 2]) -> AffinityDecision {
            self.t += 2;
            let obs = Observation { at: Millis(self.t * 1000), host: HostMemory::default(), host_cpus: 2, vms: vec![vm("a"), vm("b")] };
            let realloc = ReallocDecision { views: views.to_vec(), ..ReallocDecision::default() };
            let vms: Vec<AffinityVm> = (0..2)
                .map(|i| AffinityVm { pins: Some(self.pins[i].clone()), bound: bounds[i].map(cpus), expected_cpu: expected[i] })
                .collect();
            // Cumulative: each tick adds two seconds at `busy`.
            let base = self.p.last_host.clone().unwrap_or_else(|| host(0, [0.0, 0.0]));
            let now: Vec<HostCpuTime> = base
                .iter()
                .zip(host(2, busy))
                .map(|(a, b)| HostCpuTime { busy_ns: a.busy_ns + b.busy_ns, total_ns: a.total_ns + b.total_ns })
                .collect();
            let d = self.p.decide(&obs, &realloc, &now, &vms, &self.cfg, Millis(self.t * 1000));
            for a in &d.actions {
                if let Action::SetPins { vm, pins, .. } = a {
                    let i = if vm.as_str() == "a" { 0 } else { 1 };
                    self.pins[i] = pins.clone();
                    self.p.outcome(a, &Ok(()), Millis(self.t * 1000));
                }
            }
            d
        }
    }

    fn world() -> World {
        // Both pinned to CPU 0.
        World { p: AffinityPolicy::new(), cfg: ReallocConfig::default(), pins: vec![vec![cpus("0")], vec![cpus("0")]], t: 0 }
    }

    const BOUND: Option<Class> = Some(Class::CpuBound);

    #[test]
    fn a_cpu_bound_vm_waiting_on_a_busy_cpu_moves_to_a_free_one_and_back_when_it_rests() {
        let mut w = world();
        let both_busy = || [view("a", BOUND, 0.5, 0.5), view("b", BOUND, 0.5, 0.5)];
        w.tick(both_busy(), [1.0, 0.05], [Some("0-1"), None], [None, None]);
        let d = w.tick(both_busy(), [1.0, 0.05], [Some("0-1"), None], [None, None]);
        assert_eq!(d.actions.len(), 1, "{d:?}");
        assert_eq!(w.pins, vec![vec![cpus("1")], vec![cpus("0")]], "a moves to CPU 1, b (no bound) stays");
        let text = d.actions[0].reason().text.clone();
        assert!(text.contains("CPU 0") && text.contains("move to CPU 1"), "{text}");
        // Still busy on CPU 1 (its own use now): it stays, no hopping back.
        for _ in 0..20 {
            let d = w.tick([view("a", BOUND, 1.0, 0.0), view("b", BOUND, 1.0, 0.0)], [1.0, 1.0], [Some("0-1"), None], [None, None]);
            assert!(d.actions.is_empty(), "{d:?}");
        }
        // Idle: back to its own CPU once the hold has passed.
        let d = w.tick([view("a", Some(Class::Idle), 0.0, 0.0), view("b", BOUND, 1.0, 0.0)], [1.0, 0.0], [Some("0-1"), None], [None, None]);
        assert_eq!(d.views[0].why, AffinityWhy::Back);
        assert_eq!(w.pins[0], vec![cpus("0")]);
    }

    #[test]
    fn no_bound_no_move_and_no_free_cpu_stays_with_the_reason() {
        let mut w = world();
        let busy = || [view("a", BOUND, 0.5, 0.5), view("b", BOUND, 0.5, 0.5)];
        for _ in 0..3 {
            let d = w.tick(busy(), [1.0, 0.05], [None, None], [None, None]);
            assert!(d.actions.is_empty() && d.views.is_empty());
        }
        // CPU 1 is busy too: nowhere better to go.
        let d = w.tick(busy(), [1.0, 0.95], [Some("0-1"), None], [None, None]);
        assert!(d.actions.is_empty());
        assert!(matches!(d.views[0].why, AffinityWhy::NoFreerCpu { .. }), "{:?}", d.views[0].why);
        assert!(d.views[0].why.to_string().contains("no CPU of its bound 0-1 is free"));
    }

    #[test]
    fn a_cpu_whose_pinned_vm_is_usually_busy_at_this_hour_is_not_free() {
        let mut w = world();
        // b rests on CPU 1 now, but its history says it runs a whole CPU at this hour.
        w.pins[1] = vec![cpus("1")];
        let ticks = |w: &mut World, usual: Option<f64>| {
            w.tick([view("a", BOUND, 0.5, 0.5), view("b", Some(Class::Idle), 0.0, 0.0)], [1.0, 0.0], [Some("0-1"), None], [None, usual])
        };
        ticks(&mut w, Some(1.0));
        let d = ticks(&mut w, Some(1.0));
        assert!(d.actions.is_empty(), "moved onto b's usual CPU: {d:?}");
        let d = ticks(&mut w, None);
        assert_eq!(d.actions.len(), 1, "without that history CPU 1 is free: {d:?}");
    }

    #[test]
    fn a_pinning_changed_by_someone_else_becomes_the_base() {
        let mut w = world();
        let busy = || [view("a", BOUND, 0.5, 0.5), view("b", BOUND, 0.5, 0.5)];
        w.tick(busy(), [1.0, 0.0], [Some("0-1"), None], [None, None]);
        w.tick(busy(), [1.0, 0.0], [Some("0-1"), None], [None, None]);
        assert_eq!(w.pins[0], vec![cpus("1")]);
        // The operator pins a to 0-1 by hand.
        w.pins[0] = vec![cpus("0-1")];
        let d = w.tick([view("a", Some(Class::Idle), 0.0, 0.0), view("b", BOUND, 1.0, 0.0)], [1.0, 0.0], [Some("0-1"), None], [None, None]);
        assert!(d.actions.is_empty(), "{d:?}");
        assert_eq!(w.p.pins(&VmId::new("a")).unwrap(), &Pins { base: vec![cpus("0-1")], applied: None });
    }
}
