//! Activity-based reallocation of CPU, disk and network (seed 001, SPEC §3;
//! anchors: oVirt MoM's Tune and IoTune controllers, VMware DRS shares).
//!
//! Every tick each running VM's rates are held against a usage model and the
//! VM classified (cpu-bound, disk-bound, net-bound, mixed, idle or steady);
//! a class counts only once it has held for `class_after`, and the CPU
//! thresholds have a band, so a class does not flap. Then, per VM:
//! - bound on its CPU and it would gain (it sits at its cap, its vCPUs wait
//!   for host CPUs, or the host's CPUs are all in use): a higher weight, and
//!   its cap raised up to the bound its settings allow;
//! - idle: its weight cut, which costs it nothing while it stays idle and
//!   stops its claim from diluting the busy ones';
//! - bound on the network at its bandwidth limit (`domiftune`): the limit
//!   raised up to `net_max` from its settings;
//! - time-critical (a setting, or `ebb critical`): put first, at its highest
//!   weight, cap and bandwidth;
//! - anything else: its own weight and cap, as found before ebb changed them.
//!
//! The conflict check of the seed: when two or more VMs are bound on the CPU
//! of a saturated host, on the disk or on the network, raising one only
//! robs the other; none of them changes, and the view says so.
//!
//! What ebb found (the base) and what it set are remembered per VM, so every
//! change is undone when the activity passes, a restarted agent knows its
//! own changes from the journal, and a change made by someone else is taken
//! as the VM's new base instead of being fought.
//!
//! A tick, in the order of the files: `classify` reads each VM and holds
//! its class, `tune` works out each resource's wanted value and `why`, and
//! the views and decision are in `view`.

mod class;
mod classify;
mod config;
mod tune;
mod view;
mod why;

pub use class::{Bound, Class};
pub use config::{ReallocConfig, ReallocSettings};
pub use view::{Demand, ReallocDecision, Tunes, VmReallocView};
pub use why::{Others, Why};

use crate::model::*;
use crate::policy::{ActionError, Outcome, Policy};
use crate::units::*;
use classify::{Held, Track};
use std::collections::HashMap;

/// The policy's memory: per running VM its last counters and class, and
/// per VM its tunes.
#[derive(Debug, Default)]
pub struct ReallocPolicy {
    /// The observed VMs in the last observation's order, so a tick walks
    /// them in step with it (no lookup per VM: at 10,000 VMs a hash lookup's
    /// cache miss per VM was most of a tick), then VMs not seen any more
    /// whose tunes are still remembered.
    vms: Vec<PerVm>,
    /// Where each VM sits in `vms`, for the calls between ticks.
    index: HashMap<VmId, usize>,
    /// Whether the VMs saturate the host's CPUs, held like a class…
    saturated: Held<bool>,
    /// …and whether they did at the last tick, unheld: what a VM's gain and
    /// contention are seen against, so both start holding from the same
    /// moment and a boost never slips in before the conflict shows.
    saturated_last: bool,
}

#[derive(Debug)]
struct PerVm {
    id: VmId,
    /// While it runs.
    track: Option<Track>,
    /// Kept while it is off too: a restart brings its own values back.
    tunes: Option<Tunes>,
    /// A change libvirt refused is not retried before this time.
    retry_at: Option<Millis>,
    /// A bandwidth change libvirt refused (a host whose kernel lacks the tc
    /// modules refuses them all): the limit is left alone until then, while
    /// the CPU and disk go on.
    net_refused: Option<(Millis, String)>,
}

impl PerVm {
    fn new(id: VmId) -> PerVm {
        PerVm { id, track: None, tunes: None, retry_at: None, net_refused: None }
    }
}

/// How long a refused change waits before it is tried again.
const RETRY_AFTER_MS: u64 = 60_000;
/// A refused bandwidth change waits longer: what refuses it (the host's
/// traffic control) does not change from one minute to the next.
const NET_RETRY_AFTER_MS: u64 = 600_000;

impl ReallocPolicy {
    pub fn new() -> ReallocPolicy {
        ReallocPolicy::default()
    }

    /// Tunes remembered from the journal, before the first tick.
    pub fn resume(&mut self, vm: VmId, tunes: Tunes) {
        self.per_vm(&vm).tunes = Some(tunes);
    }

    pub fn tunes(&self, vm: &VmId) -> Option<Tunes> {
        self.index.get(vm).and_then(|&i| self.vms[i].tunes)
    }

    fn per_vm(&mut self, vm: &VmId) -> &mut PerVm {
        let i = *self.index.entry(vm.clone()).or_insert_with(|| {
            self.vms.push(PerVm::new(vm.clone()));
            self.vms.len() - 1
        });
        &mut self.vms[i]
    }

    /// Puts `vms` in the observation's order (a VM came or went, or libvirt
    /// listed them differently): entries of VMs not observed go last, and
    /// only while they hold tunes. The tick checks the order as it goes,
    /// and calls this at the first VM out of place: the entries before it
    /// are in place, and keep what the tick did to them.
    fn align(&mut self, obs: &Observation) {
        let mut old: HashMap<VmId, PerVm> = self.vms.drain(..).map(|p| (p.id.clone(), p)).collect();
        self.vms.extend(obs.vms.iter().map(|o| old.remove(&o.id).unwrap_or_else(|| PerVm::new(o.id.clone()))));
        let mut rest: Vec<PerVm> = old.into_values().filter(|p| p.tunes.is_some()).collect();
        rest.sort_by(|a, b| a.id.cmp(&b.id));
        self.vms.extend(rest);
        self.index = self.vms.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
    }

    /// One tick. `settings` holds each observed VM's, in the observation's
    /// order (what the edge builds from the observation anyway: no lookup
    /// by name per VM); VMs past its end take the defaults.
    pub fn decide(
        &mut self,
        obs: &Observation,
        settings: &[ReallocSettings],
        cfg: &ReallocConfig,
        now: Millis,
    ) -> ReallocDecision {
        let defaults = ReallocSettings::default();
        let mut d = ReallocDecision { views: Vec::with_capacity(obs.vms.len()), ..ReallocDecision::default() };

        // Read: rates, bound, class, and whose tunes changed behind ebb;
        // the conflicts are counted on the way. A track not seen this tick
        // goes (the VMs past the observed ones are not).
        let own: Vec<&ReallocSettings> = (0..obs.vms.len()).map(|i| settings.get(i).unwrap_or(&defaults)).collect();
        let mut tally = tune::Tally::default();
        for (i, (v, &s)) in obs.vms.iter().zip(&own).enumerate() {
            if self.vms.get(i).is_none_or(|p| p.id != v.id) {
                self.align(obs);
            }
            let per = &mut self.vms[i];
            d.views.push(VmReallocView::new(v.id.clone()));
            let view = d.views.last_mut().expect("just pushed");
            if let Some(demand) = classify::read(v, per, s, cfg, self.saturated_last, now, view) {
                d.host.host_demand += demand;
            }
            tally.see(view);
            if per.track.as_ref().is_some_and(|t| t.seen != now) {
                per.track = None;
            }
        }
        for per in &mut self.vms[obs.vms.len()..] {
            if per.track.as_ref().is_some_and(|t| t.seen != now) {
                per.track = None;
            }
        }
        let host_cpus = f64::from(obs.host_cpus.max(1));
        // On demand, not use: raising a capped VM's cap must not be what
        // makes the host saturated (and then undone as a conflict).
        self.saturated_last = d.host.host_demand >= cfg.saturated * host_cpus;
        self.saturated.see(self.saturated_last, now, cfg.class_after.as_millis());
        d.host.saturated = self.saturated.value == Some(true);

        // The conflict checks: two or more VMs that would gain, competing
        // for the same host CPUs, disks or links: raising one robs the other.
        let contention = tune::Contention::new(tally, obs.host_cpus, d.host.host_demand, d.host.saturated);

        // Decide each VM's tune.
        for ((view, s), per) in d.views.iter_mut().zip(own).zip(&self.vms).filter(|((v, _), _)| v.skipped.is_none()) {
            let (Some(base), Some(current)) = (view.base, view.current) else { continue };
            let refused = per.net_refused.as_ref().filter(|(until, _)| now < *until).map(|(_, detail)| detail.as_str());
            let vm = tune::Vm { view: &*view, s, base, current };
            let (cpu_rule, cpu_wanted, cpu_why) = tune::cpu(&vm, cfg, &contention);
            let (io_rule, io_weight, io_why) = tune::io_weight(&vm, cfg, &contention);
            let (net_rule, net, net_why) = tune::net(&vm, &contention, refused);
            let (disk_rule, disk_limit, disk_why) = tune::disk_limit(&vm, &contention);
            let wanted = Tune { io_weight, net, disk_limit, ..cpu_wanted };
            view.wanted = Some(wanted);
            view.why = Some(cpu_why);
            view.io_why = io_why;
            view.net_why = net_why;
            view.disk_why = disk_why;
            if wanted == current || per.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            // The action's reason: the CPU's when the CPU part changes, else
            // the disk's when the disk weight does, else the network's.
            let cpu_changes = (wanted.shares, wanted.quota_us) != (current.shares, current.quota_us);
            let io_changes = wanted.io_weight != current.io_weight;
            let net_changes = wanted.net != current.net;
            let (rule, why) = match (&view.why, &view.io_why, &view.net_why, &view.disk_why) {
                (_, Some(io), _, _) if !cpu_changes && io_changes => (io_rule, io),
                (_, _, Some(net), _) if !cpu_changes && !io_changes && net_changes => (net_rule, net),
                (_, _, _, Some(disk)) if !cpu_changes && !io_changes && !net_changes => (disk_rule, disk),
                (Some(cpu), ..) => (cpu_rule, cpu),
                (None, ..) => unreachable!("the CPU reason is set above"),
            };
            let text = format!("{why}{}: {current} → {wanted}", view::rates_words(view));
            d.actions.push(Action::SetTune { vm: view.vm.clone(), tune: wanted, reason: Reason::new(rule, text) });
        }
        d
    }
}

impl Policy for ReallocPolicy {
    /// A `SetTune` carried out is the VM's tune now; one libvirt refused is
    /// not retried for a minute, and a refused bandwidth (refused before the
    /// rest was touched) is left alone for ten while the CPU and disk go on
    /// at once, the view saying why.
    fn outcome(&mut self, action: &Action, result: &Outcome, now: Millis) {
        let Action::SetTune { vm, tune, .. } = action else { return };
        let per = self.per_vm(vm);
        match result {
            Ok(()) => {
                if let Some(t) = per.tunes.as_mut() {
                    t.applied = (*tune != t.base).then_some(*tune);
                }
                per.retry_at = None;
            }
            Err(ActionError::Bandwidth(detail)) => per.net_refused = Some((now.plus(NET_RETRY_AFTER_MS), detail.clone())),
            Err(ActionError::Failed(_)) => per.retry_at = Some(now.plus(RETRY_AFTER_MS)),
        }
    }
}

#[cfg(test)]
mod tests;
