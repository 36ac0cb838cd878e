//! The memory policy (seed 003, SPEC §1): ebb is the host's resource scheduler
//! and sets each guest's balloon target; the guest's own virtio_balloon driver
//! picks which pages to give up.
//!
//! Who gives memory up follows ESX's idle memory tax (Waldspurger, OSDI 2002):
//! shares per page, with idle pages taxed at τ, so an idle guest pays more for
//! the memory it sits on and is reclaimed before a busy one of equal shares.
//! How fast follows the seed's adaptive rate: every VM has its own step that
//! doubles when a reclaim lands and halves when one fails.
//!
//! Safety rules, in the order they win: never below a VM's floor (its minimum,
//! or what it uses plus headroom), never above its ceiling, never shrink a
//! guest under pressure, never grow the sum of guests past the pool.
//!
//! A tick, in the order of the files: `state` lines the remembered VMs up
//! with the observation, `assess` reads each managed VM (floor, pressure, the
//! move in flight), `allot` water-fills the pool into entitlements, `plan`
//! turns them into targets, and `words` says why.

mod allot;
mod assess;
mod config;
mod plan;
mod state;
mod words;

pub use config::MemoryConfig;
pub use assess::DEFLATED_HOLD_MS;
pub use state::Resumed;

use crate::model::*;
use crate::policy::{Decision, Outcome, Policy};
use crate::units::*;
use assess::Work;
use config::Tuning;
use serde::{Deserialize, Serialize};
use state::{Move, Pending, VmMem};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What the policy shows about one VM (API, `ebb vms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmMemoryView {
    pub vm: VmId,
    /// The guest's size now (balloon.current); None without a balloon.
    pub actual: Option<Bytes>,
    /// Where ebb is steering it; None when not managed this tick.
    pub target: Option<Bytes>,
    /// What the guest uses (MemTotal − MemAvailable, less what the balloon
    /// holds for a deflate-on-OOM guest).
    pub used: Option<Bytes>,
    /// What the host really holds for it (QEMU's RSS); None when not reported.
    #[serde(default)]
    pub host_rss: Option<Bytes>,
    /// Its balloon's safety nets; None without a balloon.
    #[serde(default)]
    pub features: Option<BalloonFeatures>,
    /// How fast its use grew, per second, since the last settled reading
    /// (the needs history learns from it).
    #[serde(default)]
    pub growth: Option<Bytes>,
    /// The headroom its floor keeps above what it uses.
    #[serde(default)]
    pub headroom: Option<Bytes>,
    /// When its history sized that headroom: its fastest growth per second,
    /// and the reaction time (ms) it was multiplied by: the configured
    /// tick, the second its stats lag, and `balloon_grow_ms`. Kept as far
    /// as the pool has room: past the flat headroom it is no guarantee.
    #[serde(default)]
    pub headroom_learned: Option<(Bytes, u64)>,
    /// How long its balloon last took to grow, from ebb's target to the
    /// size: part of ebb's reaction time.
    #[serde(default)]
    pub balloon_grow_ms: Option<u64>,
    /// When the guest last took pages back from its balloon itself
    /// (deflate-on-OOM), and how much.
    #[serde(default)]
    pub deflated: Option<(Millis, Bytes)>,
    /// The share of the pool the scheduler allots this VM (its ideal size).
    pub entitlement: Option<Bytes>,
    pub floor: Option<Bytes>,
    pub ceiling: Option<Bytes>,
    /// The VM's current adaptive step.
    pub step: Bytes,
    pub under_pressure: bool,
    /// Why the VM is not managed this tick, when it is not.
    pub skipped: Option<String>,
    /// The reason of its last target, shared with the policy's memory of
    /// it: every view of every tick carries it, and copying its text for
    /// 10,000 VMs a tick cost more than any other part of the views.
    pub last_reason: Option<Arc<Reason>>,
}

/// The pool as the memory policy holds it this tick: the host-wide part of
/// its decision (`ebb status` shows it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// The pool in effect this tick: the configured one, shrunk when the host
    /// is short of its reserve.
    pub pool: Bytes,
    /// Sum of the guests' current sizes (every VM that is not shut off and has
    /// a balloon, managed or not: they all occupy memory).
    pub pool_used: Bytes,
    /// Plain words when the pool cannot be honoured as configured: the host is
    /// short of its reserve, or the guests' floors alone exceed the pool.
    #[serde(default)]
    pub pool_note: Option<String>,
    /// What the guests may take back from the host without asking: their
    /// sizes less what the host holds for them (never touched, or handed
    /// back by free page reporting). The host's available memory counts
    /// it, so ebb takes it off before it weighs the host's reserve.
    #[serde(default)]
    pub returned: Bytes,
}

/// Balloon targets, one view per observed VM (in id order), and the pool.
pub type MemoryDecision = Decision<VmMemoryView, Pool>;

#[derive(Debug)]
pub struct MemoryPolicy {
    /// Per-VM state sorted by id: a tick walks it alongside the id-sorted
    /// observation, which at 10,000 VMs is several times faster than hashing
    /// every name into a map whose entries are scattered over the cache.
    vms: Vec<(VmId, VmMem)>,
    /// Journal entries waiting for the VM's first observation.
    resumed: HashMap<VmId, Resumed>,
    /// The step bounds of the last decide, so `outcome` (which gets no
    /// config) can keep the step inside them.
    step_bounds: Option<(Bytes, Bytes)>,
    /// Likewise how long a failed VM is left alone.
    quiet_ms: u64,
    /// The agent's configured tick: how long ebb may take to look.
    tick_ms: u64,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy { vms: Vec::new(), resumed: HashMap::new(), step_bounds: None, quiet_ms: 0, tick_ms: DEFAULT_TICK_MS }
    }
}

/// The agent's default tick, for a policy not told its own.
const DEFAULT_TICK_MS: u64 = 2000;

impl MemoryPolicy {
    pub fn new() -> Self {
        MemoryPolicy::default()
    }

    /// The agent's configured tick (`agent.tick`): part of ebb's reaction
    /// time, which sizes a learned headroom.
    pub fn set_tick(&mut self, tick_ms: u64) {
        self.tick_ms = tick_ms;
    }

    /// Seeds a VM's step and in-flight target after an agent restart. The step
    /// is clamped to the config's bounds at the next decide.
    pub fn resume(&mut self, vm: VmId, resumed: Resumed) {
        match self.vms.binary_search_by(|(id, _)| id.cmp(&vm)) {
            Ok(i) => self.vms[i].1.resume(resumed),
            Err(_) => {
                self.resumed.insert(vm, resumed);
            }
        }
    }

    pub fn decide(
        &mut self,
        obs: &Observation,
        settings: &BTreeMap<VmId, VmSettings>,
        cfg: &MemoryConfig,
        now: Millis,
    ) -> MemoryDecision {
        let t = Tuning::new(cfg, self.tick_ms);
        self.step_bounds = Some((t.step_min, t.step_max));
        self.quiet_ms = t.stuck_after_ms;
        let defaults = VmSettings::default();

        // State and settings are sorted by id like `order`.
        let (order, mut states) = state::align(std::mem::take(&mut self.vms), obs, t.step_min, now);
        let mut views: Vec<VmMemoryView> = Vec::with_capacity(order.len());
        let mut work: Vec<Work> = Vec::with_capacity(order.len());
        let mut pool_used = Bytes::ZERO;
        // Memory held by VMs ebb does not steer this tick: off limits to the rest.
        let mut unmanaged = Bytes::ZERO;
        let mut committed = Bytes::ZERO;
        let mut returned = Bytes::ZERO;
        let mut set_iter = settings.iter().peekable();

        for (k, &i) in order.iter().enumerate() {
            let vm = &obs.vms[i];
            // Equal first: ids shared with the observation compare by pointer.
            while set_iter.peek().is_some_and(|(id, _)| *id != &vm.id && *id < &vm.id) {
                set_iter.next();
            }
            let s = match set_iter.peek() {
                Some((id, s)) if *id == &vm.id => *s,
                _ => &defaults,
            };
            let st = &mut states[k].1;
            if !self.resumed.is_empty() {
                if let Some(r) = self.resumed.remove(&vm.id) {
                    st.resume(r);
                }
            }
            st.step = st.step.clamp(t.step_min, t.step_max);

            let occupies = vm.state != VmState::ShutOff && vm.balloon.is_some();
            if let (true, Some(b)) = (occupies, &vm.balloon) {
                pool_used += b.current;
                returned += b.returned();
            }
            let skip = words::skip_reason(vm, s);
            let (b, stats) = match (&skip, &vm.balloon) {
                (None, Some(b)) => (b, b.stats.as_ref().expect("checked by skip_reason")),
                _ => {
                    st.let_go();
                    if let (true, Some(b)) = (occupies, &vm.balloon) {
                        unmanaged += b.current;
                        committed += b.current;
                    }
                    views.push(VmMemoryView {
                        vm: vm.id.clone(),
                        actual: vm.balloon.as_ref().map(|b| b.current),
                        target: None,
                        used: vm.balloon.as_ref().and_then(|b| b.used()),
                        host_rss: vm.balloon.as_ref().and_then(|b| b.host_rss),
                        features: vm.balloon.as_ref().map(|b| b.features),
                        deflated: None,
                        growth: None,
                        headroom: None,
                        headroom_learned: None,
                        balloon_grow_ms: None,
                        entitlement: None,
                        floor: None,
                        ceiling: None,
                        step: st.step,
                        under_pressure: false,
                        skipped: skip,
                        last_reason: st.last_reason.clone(),
                    });
                    continue;
                }
            };

            let w = assess::assess(st, s, b, stats, &t, now, views.len());
            committed += w.committed;
            views.push(VmMemoryView {
                vm: vm.id.clone(),
                // What libvirt reads, like the pool's sum (ebb may not trust it yet: `assess::read_unasked`).
                actual: Some(b.current),
                target: None,
                used: Some(w.used),
                host_rss: b.host_rss,
                features: Some(b.features),
                deflated: st.deflated.map(|d| (d.at, d.by)),
                growth: w.growth,
                headroom: Some(w.headroom),
                headroom_learned: w.learned,
                balloon_grow_ms: st.grow_ms,
                entitlement: None,
                floor: Some(w.floor),
                ceiling: Some(w.ceiling),
                step: w.step,
                under_pressure: w.pressure.is_some(),
                skipped: None,
                last_reason: None,
            });
            work.push(w);
        }

        // The host's available memory counts the pages guests hold but the
        // host does not: they are spoken for (see `Pool::returned`).
        let host = HostMemory { available: obs.host.available.saturating_sub(returned), ..obs.host };
        let (pool, host_note) = allot::pool_in_effect(&host, &t, pool_used);
        let host_note = host_note.map(|n| {
            if returned.0 > 0 {
                format!("{n} ({returned} of what the host has free is the guests' own, handed back or never touched: they may take it again)")
            } else {
                n
            }
        });
        let mut notes: Vec<String> = host_note.into_iter().collect();
        let managed_pool = pool.saturating_sub(unmanaged);
        if let Some(note) = allot::allot(&mut work, managed_pool, t.k) {
            notes.push(note);
        }

        // What the host itself can still give, for guarantees the pool cannot cover.
        let host_spare = if host.total.0 > 0 { host.available.saturating_sub(t.host_reserve) } else { Bytes(u64::MAX) };
        plan::plan(&mut work, &t, pool, committed, host_spare);

        let actions = conclude(&work, &mut views, &mut states, pool, now, cfg.enabled);
        self.vms = states;
        let pool_note = if notes.is_empty() { None } else { Some(notes.join("; ")) };
        Decision { actions, views, host: Pool { pool, pool_used, pool_note, returned } }
    }
}

impl Policy for MemoryPolicy {
    /// A balloon target that could not be set never reached libvirt: it is
    /// forgotten, the step slows down, and the guest is left alone a while.
    fn outcome(&mut self, action: &Action, result: &Outcome, now: Millis) {
        let (Action::SetBalloonTarget { vm, .. }, Err(_)) = (action, result) else { return };
        let bounds = self.step_bounds;
        if let Ok(i) = self.vms.binary_search_by(|(id, _)| id.cmp(vm)) {
            let st = &mut self.vms[i].1;
            st.step = match bounds {
                Some((lo, hi)) => Bytes(st.step.0 / 2).clamp(lo, hi),
                None => Bytes(st.step.0 / 2).max(Bytes(KIB)),
            };
            st.pending = None;
            st.reclaim_until = None;
            st.no_shrink_until = Some(now.plus(self.quiet_ms));
        }
    }
}

/// Actions, views and remembered state, in id order: each new target
/// becomes a pending move with its reason.
/// The targets become actions and the VMs' pending moves. With memory
/// management off (`enabled = false`) nothing is sent, so nothing is
/// believed pending: each view shows the target ebb would set, with its reason.
fn conclude(work: &[Work], views: &mut [VmMemoryView], states: &mut [(VmId, VmMem)], pool: Bytes, now: Millis, enabled: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    for w in work {
        let view = &mut views[w.view];
        let st = &mut states[w.view].1;
        view.entitlement = Some(w.entitlement);
        view.floor = Some(w.floor);
        view.step = st.step;
        if !enabled {
            view.target = Some(w.target.map_or(w.current, |(target, _)| target));
            view.last_reason = w.target.map(|(target, rule)| Arc::new(Reason::new(rule, words::reason_text(w, target, rule, pool, st.step))));
            continue;
        }
        if let Some((target, rule)) = w.target {
            let reason = Reason::new(rule, words::reason_text(w, target, rule, pool, st.step));
            let kind = match target.cmp(&w.current) {
                std::cmp::Ordering::Less => Move::Shrink,
                std::cmp::Ordering::Greater => Move::Grow,
                std::cmp::Ordering::Equal => Move::Hold,
            };
            let since = match st.pending {
                Some(p) if p.kind == kind && kind != Move::Hold => p.since.unwrap_or(now),
                _ => now,
            };
            st.pending = Some(Pending { target, kind, since: Some(since) });
            st.aimed_at = Some(now);
            st.last_reason = Some(Arc::new(reason.clone()));
            actions.push(Action::SetBalloonTarget { vm: view.vm.clone(), target, reason });
        }
        view.target = Some(st.pending.map_or(w.current, |p| p.target));
        view.last_reason = st.last_reason.clone();
    }
    actions
}

#[cfg(test)]
mod tests;
