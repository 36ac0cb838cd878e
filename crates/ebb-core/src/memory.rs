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

use crate::model::*;
use crate::units::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Tunables of the memory policy; the agent's `[memory]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Memory ebb may hand to guests in total. None: host total − host_reserve.
    pub pool: Option<Bytes>,
    /// Host memory kept for the host itself: ebb keeps host available memory above it.
    pub host_reserve: Bytes,
    /// Idle memory tax rate τ in [0, 1): ESX's default 0.75.
    pub idle_tax: f64,
    /// Adaptive step bounds for reclaim (the seed's [min, max] rate).
    pub step_min: Bytes,
    pub step_max: Bytes,
    /// No change smaller than max(dead_band, dead_band_fraction × current).
    pub dead_band: Bytes,
    pub dead_band_fraction: f64,
    /// A balloon with no progress for this long is stuck (Xen squeezed: 5 s).
    pub stuck_after_ms: u64,
    /// Free memory a guest keeps above what it uses: max(headroom_min, headroom_fraction × used).
    pub headroom_min: Bytes,
    pub headroom_fraction: f64,
    /// A guest whose usable memory falls below this fraction of its size is under pressure.
    pub low_free_fraction: f64,
    /// Major faults per second above which a guest is under pressure.
    pub major_fault_rate: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            pool: None,
            host_reserve: Bytes::from_gib(1),
            idle_tax: 0.75,
            step_min: Bytes::from_mib(32),
            step_max: Bytes::from_mib(512),
            dead_band: Bytes::from_mib(1),
            dead_band_fraction: 0.0025,
            stuck_after_ms: 5_000,
            headroom_min: Bytes::from_mib(64),
            headroom_fraction: 0.2,
            low_free_fraction: 0.1,
            major_fault_rate: 100.0,
        }
    }
}

/// What the policy shows about one VM (API, `ebb vms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmMemoryView {
    pub vm: VmId,
    /// The guest's size now (balloon.current); None without a balloon.
    pub actual: Option<Bytes>,
    /// Where ebb is steering it; None when not managed this tick.
    pub target: Option<Bytes>,
    /// What the guest uses (MemTotal − MemAvailable).
    pub used: Option<Bytes>,
    /// The share of the pool the scheduler allots this VM (its ideal size).
    pub entitlement: Option<Bytes>,
    pub floor: Option<Bytes>,
    pub ceiling: Option<Bytes>,
    /// The VM's current adaptive step.
    pub step: Bytes,
    pub under_pressure: bool,
    /// Why the VM is not managed this tick, when it is not.
    pub skipped: Option<String>,
    pub last_reason: Option<Reason>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryDecision {
    /// The pool in effect this tick: the configured one, shrunk when the host
    /// is short of its reserve.
    pub pool: Bytes,
    /// Sum of the guests' current sizes (every VM that is not shut off and has
    /// a balloon, managed or not: they all occupy memory).
    pub pool_used: Bytes,
    pub actions: Vec<Action>,
    pub vms: Vec<VmMemoryView>,
    /// Plain words when the pool cannot be honoured as configured: the host is
    /// short of its reserve, or the guests' floors alone exceed the pool.
    #[serde(default)]
    pub pool_note: Option<String>,
}

/// Per-VM memory as the agent restores it from its journal after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Resumed {
    pub step: Bytes,
    pub last_target: Option<Bytes>,
}

#[derive(Debug, Default)]
pub struct MemoryPolicy {
    /// Per-VM state sorted by id: a tick walks it alongside the id-sorted
    /// observation, which at 10,000 VMs is several times faster than hashing
    /// every name into a map whose entries are scattered over the cache.
    vms: Vec<(VmId, VmMem)>,
    /// Journal entries waiting for the VM's first observation.
    resumed: HashMap<VmId, Resumed>,
    /// The step bounds of the last decide, so `record_failure` (which gets no
    /// config) can keep the step inside them.
    step_bounds: Option<(Bytes, Bytes)>,
    /// Likewise how long a failed VM is left alone.
    quiet_ms: u64,
}

/// What the policy remembers about one VM between ticks.
#[derive(Debug, Clone)]
struct VmMem {
    step: Bytes,
    pending: Option<Pending>,
    counters: Option<Counters>,
    last_current: Option<Bytes>,
    /// Last time the balloon moved at all: "stuck" is no movement, not a
    /// missed deadline, so a slow but moving balloon is left alone.
    moved_at: Millis,
    /// Distress seen before this instant is blamed on the reclaim that just
    /// landed: swapping shows up a tick after the balloon got there.
    reclaim_until: Option<Millis>,
    /// No new reclaim before this (after a stuck balloon or a failed call),
    /// so a guest that cannot give memory up is not hammered every tick.
    no_shrink_until: Option<Millis>,
    /// Memory the guest kernel holds outside its MemTotal (balloon size −
    /// MemTotal, ~55 MiB on a small Linux guest): the floor adds it, or a
    /// guest "at used + headroom" would really have almost nothing free.
    /// None until measured on settled stats.
    overhead: Option<Bytes>,
    last_reason: Option<Reason>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    target: Bytes,
    kind: Move,
    /// When this move began; None for a target restored from the journal,
    /// whose clock starts at the first observation after the restart.
    since: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Shrink,
    Grow,
    Hold,
    /// From the journal: direction unknown until the first observation.
    Resumed,
}

#[derive(Debug, Clone, Copy)]
struct Counters {
    swap_out: Bytes,
    major_faults: u64,
    oom_kills: Option<u64>,
    at: Millis,
}

impl VmMem {
    fn new(step: Bytes, now: Millis) -> VmMem {
        VmMem {
            step,
            pending: None,
            counters: None,
            last_current: None,
            moved_at: now,
            reclaim_until: None,
            no_shrink_until: None,
            overhead: None,
            last_reason: None,
        }
    }
}

/// The config with its numbers forced into ranges where the algorithm is
/// defined, so a bad config degrades instead of dividing by zero.
struct Tuning {
    pool: Option<Bytes>,
    host_reserve: Bytes,
    /// k = 1 / (1 − τ): an idle page costs k times an active one.
    k: f64,
    step_min: Bytes,
    step_max: Bytes,
    dead_band: Bytes,
    dead_band_fraction: f64,
    stuck_after_ms: u64,
    headroom_min: Bytes,
    headroom_fraction: f64,
    low_free_fraction: f64,
    major_fault_rate: f64,
}

impl Tuning {
    fn new(c: &MemoryConfig) -> Tuning {
        let tau = if c.idle_tax.is_finite() { c.idle_tax.clamp(0.0, 0.99) } else { 0.75 };
        let step_min = Bytes(c.step_min.0.max(KIB));
        let frac = |f: f64, hi: f64| if f.is_finite() { f.clamp(0.0, hi) } else { 0.0 };
        Tuning {
            pool: c.pool,
            host_reserve: c.host_reserve,
            k: 1.0 / (1.0 - tau),
            step_min,
            step_max: c.step_max.max(step_min),
            dead_band: c.dead_band,
            dead_band_fraction: frac(c.dead_band_fraction, 0.5),
            stuck_after_ms: c.stuck_after_ms,
            headroom_min: c.headroom_min,
            headroom_fraction: frac(c.headroom_fraction, 10.0),
            low_free_fraction: frac(c.low_free_fraction, 0.9),
            major_fault_rate: if c.major_fault_rate.is_nan() { f64::INFINITY } else { c.major_fault_rate },
        }
    }
    fn band(&self, current: Bytes) -> Bytes {
        self.dead_band.max(current.scale(self.dead_band_fraction))
    }
    fn halve(&self, step: Bytes) -> Bytes {
        Bytes(step.0 / 2).clamp(self.step_min, self.step_max)
    }
    fn double(&self, step: Bytes) -> Bytes {
        Bytes(step.0.saturating_mul(2)).clamp(self.step_min, self.step_max)
    }
}

/// How close a balloon lands to its target (it moves in 4 KiB pages and
/// libvirt reports KiB): gaps below this are not worth a call.
const BALLOON_PRECISION: Bytes = Bytes(64 * KIB);

/// One eligible VM's numbers for this tick.
struct Work {
    /// Index into the id-sorted views.
    view: usize,
    shares: f64,
    current: Bytes,
    used: Bytes,
    step: Bytes,
    min: Bytes,
    floor: Bytes,
    ceiling: Bytes,
    /// Where the balloon is already heading (pending target, else current).
    heading: Bytes,
    /// What this VM holds of the pool: an unlanded grow is already spoken for.
    committed: Bytes,
    pressure: Option<String>,
    /// For a pressured VM: the size that relieves it.
    want: Bytes,
    back_off: bool,
    /// Stuck: the target to hold it at, and how long it had not moved.
    stuck: Option<(Bytes, Bytes, u64)>,
    entitlement: Bytes,
    may_shrink: bool,
    /// This tick's new target, if any.
    target: Option<(Bytes, Rule)>,
}

impl MemoryPolicy {
    pub fn new() -> Self {
        MemoryPolicy::default()
    }

    /// Seeds a VM's step and in-flight target after an agent restart. The step
    /// is clamped to the config's bounds at the next decide.
    pub fn resume(&mut self, vm: VmId, resumed: Resumed) {
        match self.vms.binary_search_by(|(id, _)| id.cmp(&vm)) {
            Ok(i) => apply_resumed(&mut self.vms[i].1, resumed),
            Err(_) => {
                self.resumed.insert(vm, resumed);
            }
        }
    }

    /// The agent could not set the balloon: the target never reached libvirt,
    /// so forget it, slow down, and leave the guest alone for a while.
    pub fn record_failure(&mut self, vm: &VmId, now: Millis) {
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

    pub fn decide(
        &mut self,
        obs: &Observation,
        settings: &BTreeMap<VmId, VmSettings>,
        cfg: &MemoryConfig,
        now: Millis,
    ) -> MemoryDecision {
        let t = Tuning::new(cfg);
        self.step_bounds = Some((t.step_min, t.step_max));
        self.quiet_ms = t.stuck_after_ms;
        let defaults = VmSettings::default();

        let mut order: Vec<usize> = (0..obs.vms.len()).collect();
        if !obs.vms.windows(2).all(|w| w[0].id <= w[1].id) {
            order.sort_by(|&a, &b| obs.vms[a].id.cmp(&obs.vms[b].id));
        }

        let mut views: Vec<VmMemoryView> = Vec::with_capacity(order.len());
        let mut work: Vec<Work> = Vec::with_capacity(order.len());
        let mut pool_used = Bytes::ZERO;
        // Memory held by VMs ebb does not steer this tick: off limits to the rest.
        let mut unmanaged = Bytes::ZERO;
        let mut committed = Bytes::ZERO;
        // State and settings are sorted by id like `order`. Usually the same
        // VMs are observed as last tick and the state is reused in place;
        // otherwise a merge walk rebuilds it, dropping VMs that are gone.
        let same = self.vms.len() == order.len()
            && order.iter().zip(&self.vms).all(|(&i, (id, _))| &obs.vms[i].id == id);
        let mut states = std::mem::take(&mut self.vms);
        if !same {
            let mut old = states.into_iter().peekable();
            states = Vec::with_capacity(order.len());
            for &i in &order {
                let id = &obs.vms[i].id;
                while old.peek().is_some_and(|(o, _)| o < id) {
                    old.next();
                }
                states.push(match old.peek() {
                    Some((o, _)) if o == id => old.next().expect("peeked"),
                    _ => (id.clone(), VmMem::new(t.step_min, now)),
                });
            }
        }
        let mut set_iter = settings.iter().peekable();

        for (k, &i) in order.iter().enumerate() {
            let vm = &obs.vms[i];
            while set_iter.peek().is_some_and(|(id, _)| *id < &vm.id) {
                set_iter.next();
            }
            let s = match set_iter.peek() {
                Some((id, s)) if *id == &vm.id => *s,
                _ => &defaults,
            };
            let st = &mut states[k].1;
            if !self.resumed.is_empty() {
                if let Some(r) = self.resumed.remove(&vm.id) {
                    apply_resumed(st, r);
                }
            }
            st.step = st.step.clamp(t.step_min, t.step_max);

            let occupies = vm.state != VmState::ShutOff && vm.balloon.is_some();
            if let (true, Some(b)) = (occupies, &vm.balloon) {
                pool_used += b.current;
            }
            let view_index = views.len();
            let skip = skip_reason(vm, s);
            let (b, stats) = match (&skip, &vm.balloon) {
                (None, Some(b)) => (b, b.stats.as_ref().expect("checked by skip_reason")),
                _ => {
                    // Whatever was in flight is no longer ours to judge.
                    st.pending = None;
                    st.counters = None;
                    st.reclaim_until = None;
                    st.last_current = None;
                    if let (true, Some(b)) = (occupies, &vm.balloon) {
                        unmanaged += b.current;
                        committed += b.current;
                    }
                    views.push(VmMemoryView {
                        vm: vm.id.clone(),
                        actual: vm.balloon.as_ref().map(|b| b.current),
                        target: None,
                        used: vm.balloon.as_ref().and_then(|b| b.stats.as_ref()).map(|s| s.used()),
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

            let current = b.current;
            let band = t.band(current);
            let used = stats.used();
            let ceiling = kib_down(s.max.unwrap_or(Bytes(u64::MAX)).min(b.maximum));
            let min = kib_up(s.min.unwrap_or(Bytes::ZERO)).min(ceiling);
            let headroom = t.headroom_min.max(used.scale(t.headroom_fraction));
            // Measured only from stats newer than the balloon's last move
            // (libvirt's last-update is host wall-clock seconds), since a
            // stale MemTotal next to a new size would mis-state it.
            let settled_since = if st.last_current == Some(current) { st.moved_at } else { now };
            // An unsettled reading is only trusted upward: while a balloon
            // shrinks the stale MemTotal makes it read low, which would sink
            // the floor step by step. (While it grows it reads high, which
            // costs a second of caution until the next settled reading.)
            let reading = current.saturating_sub(stats.total);
            let overhead = if stats.last_update.is_some_and(|s| s.saturating_mul(1000) >= settled_since.0 + 1000) {
                reading
            } else {
                st.overhead.map_or(reading, |o| o.max(reading))
            };
            st.overhead = Some(overhead);
            let floor = kib_up(min.max(used + headroom + overhead)).min(ceiling);

            let pressure = pressure_words(&t, stats, current, st.counters.as_ref(), now);
            st.counters = Some(Counters {
                swap_out: stats.swap_out,
                major_faults: stats.major_faults,
                oom_kills: stats.oom_kills,
                at: now,
            });
            if st.last_current != Some(current) {
                st.last_current = Some(current);
                st.moved_at = now;
            }

            let pressured = pressure.is_some();
            let recent_reclaim = st.reclaim_until.is_some_and(|u| now < u);
            let mut back_off = false;
            let mut stuck = None;
            if let Some(p) = st.pending.as_mut() {
                let since = *p.since.get_or_insert(now);
                if p.kind == Move::Resumed {
                    p.kind = if p.target < current { Move::Shrink } else { Move::Grow };
                }
                let p = *p;
                let reached = p.target.abs_diff(current) < band;
                let idle_for = now.since(since.max(st.moved_at));
                if pressured && (p.kind == Move::Shrink || recent_reclaim) {
                    back_off = true;
                } else if reached {
                    if p.kind == Move::Shrink {
                        st.step = t.double(st.step);
                        st.reclaim_until = Some(now.plus(t.stuck_after_ms));
                    }
                    st.pending = None;
                } else if idle_for >= t.stuck_after_ms {
                    st.step = t.halve(st.step);
                    st.reclaim_until = None;
                    st.no_shrink_until = Some(now.plus(t.stuck_after_ms));
                    let hold = current.clamp(min, ceiling.max(min));
                    stuck = Some((hold, p.target, idle_for));
                }
            } else if pressured && recent_reclaim {
                back_off = true;
            }
            if back_off {
                st.step = t.halve(st.step);
                st.reclaim_until = None;
                st.no_shrink_until = Some(now.plus(t.stuck_after_ms));
                if st.pending.is_some_and(|p| p.kind == Move::Shrink) {
                    st.pending = None;
                }
            }

            let heading = st.pending.map_or(current, |p| p.target);
            let mine = match st.pending {
                Some(p) if p.kind == Move::Grow => current.max(p.target),
                _ => current,
            };
            committed += mine;
            let want = if pressured {
                let short = current.scale(t.low_free_fraction).saturating_sub(stats.usable);
                kib_up(current + st.step.max(short)).min(ceiling)
            } else {
                Bytes::ZERO
            };
            views.push(VmMemoryView {
                vm: vm.id.clone(),
                actual: Some(current),
                target: None,
                used: Some(used),
                entitlement: None,
                floor: Some(floor),
                ceiling: Some(ceiling),
                step: st.step,
                under_pressure: pressured,
                skipped: None,
                last_reason: None,
            });
            work.push(Work {
                view: view_index,
                shares: s.shares as f64,
                current,
                used,
                step: st.step,
                min,
                floor,
                ceiling,
                heading,
                committed: mine,
                pressure,
                want,
                back_off,
                stuck,
                entitlement: Bytes::ZERO,
                may_shrink: !pressured && st.no_shrink_until.is_none_or(|u| now >= u),
                target: None,
            });
        }

        // The pool. The host guard reads "the host must keep its reserve
        // available": guests together may hold what they hold now plus what
        // the host can spare above its reserve, which is smaller than the
        // configured pool exactly when the host is short (force reclaim).
        let configured = t.pool.unwrap_or(obs.host.total.saturating_sub(t.host_reserve));
        let mut notes: Vec<String> = Vec::new();
        let pool = if obs.host.total.0 > 0 {
            let spare = (pool_used + obs.host.available).saturating_sub(t.host_reserve);
            if obs.host.available < t.host_reserve && spare < configured {
                notes.push(format!(
                    "the host has only {} available, under its {} reserve: the pool shrinks to {} to take {} back",
                    obs.host.available,
                    t.host_reserve,
                    spare,
                    t.host_reserve.saturating_sub(obs.host.available)
                ));
            }
            configured.min(spare)
        } else {
            configured
        };
        let managed_pool = pool.saturating_sub(unmanaged);

        if let Some(note) = allot(&mut work, managed_pool, t.k) {
            notes.push(note);
        }

        // What the host itself can still give, for guarantees the pool cannot cover.
        let host_spare = if obs.host.total.0 > 0 { obs.host.available.saturating_sub(t.host_reserve) } else { Bytes(u64::MAX) };
        plan(&mut work, &t, pool, committed, host_spare);

        // Actions, views and remembered state, in id order.
        let mut actions = Vec::new();
        for w in &work {
            let view = &mut views[w.view];
            let st = &mut states[w.view].1;
            view.entitlement = Some(w.entitlement);
            view.floor = Some(w.floor);
            if let Some((target, rule)) = w.target {
                let reason = Reason::new(rule, reason_text(w, target, rule, pool, st.step));
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
                st.last_reason = Some(reason.clone());
                actions.push(Action::SetBalloonTarget { vm: view.vm.clone(), target, reason });
            }
            view.target = Some(st.pending.map_or(w.current, |p| p.target));
            view.step = st.step;
            view.last_reason = st.last_reason.clone();
        }

        self.vms = states;
        MemoryDecision {
            pool,
            pool_used,
            actions,
            vms: views,
            pool_note: if notes.is_empty() { None } else { Some(notes.join("; ")) },
        }
    }
}

fn apply_resumed(st: &mut VmMem, r: Resumed) {
    st.step = r.step;
    st.pending = r.last_target.map(|target| Pending { target, kind: Move::Resumed, since: None });
    st.last_current = None;
}

fn skip_reason(vm: &VmObservation, s: &VmSettings) -> Option<String> {
    if vm.state != VmState::Running {
        return Some(format!("not running ({})", vm.state));
    }
    if !s.managed {
        return Some("not managed (managed = false)".into());
    }
    let Some(b) = &vm.balloon else {
        return Some("no balloon device: add <memballoon model='virtio'> to manage its memory".into());
    };
    if b.maximum.0 == 0 || b.current.0 == 0 {
        return Some("the balloon reports no size yet".into());
    }
    match &b.stats {
        None => Some("the guest sends no memory statistics (is virtio_balloon loaded and a stats period set?)".into()),
        // A zero MemTotal would read as "uses nothing" and invite a reclaim to the floor.
        Some(st) if st.total.0 == 0 => {
            Some("the guest's memory statistics are empty (not reported yet)".into())
        }
        Some(_) => None,
    }
}

/// The signs of memory pressure in plain words, or None when there are none.
/// Counter deltas need a previous look; on the first one only the level counts.
fn pressure_words(
    t: &Tuning,
    stats: &GuestMemStats,
    current: Bytes,
    prev: Option<&Counters>,
    now: Millis,
) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    if (stats.usable.0 as f64) < t.low_free_fraction * current.0 as f64 {
        why.push(format!(
            "only {} of {} available (under {:.0}%)",
            stats.usable,
            current,
            t.low_free_fraction * 100.0
        ));
    }
    if let Some(p) = prev {
        // Saturating: a guest reboot resets its counters, which is no distress.
        let swapped = stats.swap_out.saturating_sub(p.swap_out);
        if swapped.0 > 0 {
            why.push(format!("swapping ({swapped} out since the last look)"));
        }
        let secs = now.since(p.at) as f64 / 1000.0;
        if secs > 0.0 {
            let rate = stats.major_faults.saturating_sub(p.major_faults) as f64 / secs;
            if rate > t.major_fault_rate {
                why.push(format!("{rate:.0} major faults/s (over {:.0})", t.major_fault_rate));
            }
        }
        if let (Some(now_k), Some(before)) = (stats.oom_kills, p.oom_kills) {
            if now_k > before {
                why.push(format!("the oom killer fired {} time(s)", now_k - before));
            }
        }
    }
    match why.len() {
        0 => None,
        1 => why.pop(),
        _ => {
            let last = why.pop().expect("len > 1");
            Some(format!("{} and {last}", why.join(", ")))
        }
    }
}

/// ρ(a): shares per page of a VM holding `a` bytes with `active` of them in
/// use, idle pages costing k times more (Waldspurger §5.1). Below `active`
/// every page is active and the cost is plain shares per byte.
fn rho(shares: f64, active: f64, k: f64, a: f64) -> f64 {
    if a <= 0.0 {
        f64::INFINITY
    } else if a >= active {
        shares / (active + k * (a - active))
    } else {
        shares / a
    }
}

/// Sets each VM's entitlement: pressured VMs' floors rise toward what
/// relieves them (in proportion to shares when the pool is short), then the
/// pool is water-filled by the idle-taxed price. Returns a note when even the
/// floors do not fit.
fn allot(work: &mut [Work], pool: Bytes, k: f64) -> Option<String> {
    let base_floors: Bytes = work.iter().map(|w| w.floor).sum();
    let needs: Vec<(usize, f64, f64)> = work
        .iter()
        .enumerate()
        .filter(|(_, w)| w.pressure.is_some() && w.want > w.floor)
        .map(|(i, w)| (i, (w.want - w.floor).0 as f64, w.shares.max(1.0)))
        .collect();
    if !needs.is_empty() {
        let room = pool.saturating_sub(base_floors).0 as f64;
        let total: f64 = needs.iter().map(|n| n.1).sum();
        let level = if total <= room {
            f64::INFINITY
        } else {
            // Give each need min(need, level × shares); find the level that spends `room`.
            let spend = |l: f64| needs.iter().map(|n| n.1.min(l * n.2)).sum::<f64>();
            let (mut lo, mut hi) = (0.0_f64, needs.iter().map(|n| n.1 / n.2).fold(0.0, f64::max));
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if spend(mid) > room { hi = mid } else { lo = mid }
            }
            lo
        };
        for (i, need, shares) in needs {
            let w = &mut work[i];
            w.floor = (w.floor + kib_down(Bytes(need.min(level * shares) as u64))).min(w.ceiling);
        }
    }

    let floors: Bytes = work.iter().map(|w| w.floor).sum();
    let ceilings: Bytes = work.iter().map(|w| w.ceiling).sum();
    if ceilings <= pool {
        work.iter_mut().for_each(|w| w.entitlement = w.ceiling);
        return None;
    }
    if floors >= pool {
        work.iter_mut().for_each(|w| w.entitlement = w.floor);
        return (floors > pool).then(|| {
            format!(
                "the guests' floors add up to {floors}, more than the {pool} pool: every managed guest is held at its floor"
            )
        });
    }

    // [shares, active, floor, ceiling] packed for the inner loop.
    let items: Vec<[f64; 4]> = work
        .iter()
        .map(|w| {
            let active = if w.pressure.is_some() { w.want.max(w.used) } else { w.used };
            [w.shares.max(0.0), active.0 as f64, w.floor.0 as f64, w.ceiling.0 as f64]
        })
        .collect();
    // Rounding each entitlement up to a KiB adds < 1 KiB per VM, and a
    // balloon lands within BALLOON_PRECISION of its target: leave room for both.
    let target = pool.0 as f64 - (items.len() as f64) * (KIB + BALLOON_PRECISION.0) as f64;
    let inv_k = 1.0 / k;
    let fill = |inv_lambda: f64, out: Option<&mut [Work]>| -> f64 {
        let mut sum = 0.0;
        let alloc = |it: &[f64; 4]| {
            let x = it[0] * inv_lambda;
            let a = if x >= it[1] { it[1] + (x - it[1]) * inv_k } else { x };
            a.clamp(it[2], it[3])
        };
        match out {
            None => items.iter().for_each(|it| sum += alloc(it)),
            Some(ws) => {
                for (it, w) in items.iter().zip(ws.iter_mut()) {
                    let a = alloc(it);
                    sum += a;
                    w.entitlement = kib_up(Bytes(a as u64)).clamp(w.floor, w.ceiling);
                }
            }
        }
        sum
    };
    // λ is the price of a page; the allotment falls as it rises. At the
    // lowest ceiling price every VM with shares sits at its ceiling, at the
    // highest floor price every VM sits at its floor: the answer lies between.
    let mut lo = f64::INFINITY;
    let mut hi = 0.0_f64;
    for it in &items {
        if it[0] > 0.0 {
            lo = lo.min(rho(it[0], it[1], k, it[3]));
            hi = hi.max(rho(it[0], it[1], k, it[2].max(1.0)));
        }
    }
    if !(lo.is_finite() && hi > 0.0) {
        fill(0.0, Some(work));
        return None;
    }
    if fill(1.0 / lo, None) <= target {
        fill(1.0 / lo, Some(work));
        return None;
    }
    // Solve in u = ln(1/λ), where the allotment rises with u. Illinois false
    // position keeps a bracket like bisection (the answer never overshoots
    // the pool) but needs ~10 passes over the VMs instead of ~60.
    let f = |u: f64| fill(u.exp(), None) - target;
    let (mut under, mut over) = ((1.0 / hi).ln(), (1.0 / lo).ln());
    let (mut f_under, mut f_over) = (f(under), f(over));
    // Illinois halves the kept end's value to speed up; the stop test needs the true one.
    let mut slack = -f_under;
    let mut last = 0i8;
    for _ in 0..100 {
        if slack < MIB as f64 || over - under < 1e-12 {
            break;
        }
        let mut u = (under * f_over - over * f_under) / (f_over - f_under);
        if !(u > under && u < over) {
            u = 0.5 * (under + over);
        }
        let fu = f(u);
        if fu > 0.0 {
            (over, f_over) = (u, fu);
            if last == 1 {
                f_under *= 0.5;
            }
            last = 1;
        } else {
            (under, f_under, slack) = (u, fu, -fu);
            if last == -1 {
                f_over *= 0.5;
            }
            last = -1;
        }
    }
    fill(under.exp(), Some(work));
    None
}

/// Turns entitlements into this tick's targets: shrinks by at most the step,
/// grows at once out of what the pool has free. A guest below its floor
/// (its use grew after a reclaim) is raised back to it even past the pool,
/// out of the host's own spare memory: the guarantee beats the accounting.
fn plan(work: &mut [Work], t: &Tuning, pool: Bytes, committed: Bytes, mut host_spare: Bytes) {
    let mut shrunk = Bytes::ZERO;
    let mut grows: Vec<usize> = Vec::new();
    // VMs a hair above their entitlement that the dead band lets stay.
    let mut held_over: Vec<usize> = Vec::new();
    let mut settled = Bytes::ZERO;

    for (i, w) in work.iter_mut().enumerate() {
        let step = w.step;
        let c = w.current;
        let band = t.band(c);
        let e = w.entitlement;
        if let Some((hold, _, _)) = w.stuck {
            w.target = Some((hold, Rule::Stuck));
            settled += hold.max(e);
            continue;
        }
        if c > w.ceiling {
            // The operator lowered the max (or the domain's maximum): that is
            // a limit, not an entitlement to approach at the reclaim's pace.
            settled += w.ceiling;
            if w.heading != w.ceiling {
                shrunk += c - w.ceiling;
                w.target = Some((w.ceiling, Rule::Reclaim));
            }
            continue;
        }
        if w.pressure.is_some() || w.back_off {
            settled += c.max(e);
            if e > c || w.back_off {
                grows.push(i);
            }
            continue;
        }
        let goal = if c > e && c - e >= band {
            if !w.may_shrink {
                settled += c;
                continue;
            }
            kib_up(e.max(c.saturating_sub(step.max(band)))).max(w.min).min(c)
        } else if e > c && e - c >= band {
            settled += e;
            grows.push(i);
            continue;
        } else {
            if c > e {
                held_over.push(i);
            }
            c
        };
        settled += if goal < c { e } else { goal };
        if already_heading(goal, w.heading, c, band) {
            continue;
        }
        if goal < c {
            shrunk += c - goal;
            w.target = Some((goal, Rule::Reclaim));
        } else {
            // Stop a move that entitlement no longer asks for.
            w.target = Some((goal, Rule::Hold));
        }
    }

    // The dead band must not let the pool overflow: when it would, the VMs
    // it holds above their entitlement go all the way down, largest first.
    // Only overflow the band itself caused (floors above the pool are not),
    // and only gaps a balloon can close: it lands within a few KiB, and
    // re-aiming at such a gap every tick is churn.
    let entitled: Bytes = work.iter().map(|w| w.entitlement).sum();
    held_over.retain(|&i| work[i].current - work[i].entitlement >= BALLOON_PRECISION);
    if settled > pool.max(entitled) && !held_over.is_empty() {
        held_over.sort_by_key(|&i| std::cmp::Reverse(work[i].current - work[i].entitlement));
        for i in held_over {
            if settled <= pool.max(entitled) {
                break;
            }
            let w = &mut work[i];
            let excess = w.current - w.entitlement;
            settled = settled - excess;
            shrunk += excess;
            w.target = Some((w.entitlement, Rule::Reclaim));
        }
    }

    let mut budget: i128 = pool.0 as i128 - committed.0 as i128 + shrunk.0 as i128;
    grows.sort_by(|&a, &b| {
        let (wa, wb) = (&work[a], &work[b]);
        let key = |w: &Work| rho(w.shares, w.used.0 as f64, t.k, w.current.0 as f64);
        wb.pressure
            .is_some()
            .cmp(&wa.pressure.is_some())
            .then(key(wb).partial_cmp(&key(wa)).unwrap_or(std::cmp::Ordering::Equal))
    });
    for i in grows {
        let w = &mut work[i];
        let c = w.current;
        let band = t.band(c);
        let base = w.committed.max(c);
        let goal = w.entitlement.max(c);
        let need = goal.saturating_sub(base);
        let from_pool = Bytes(need.0.min(budget.max(0) as u64));
        let below_floor = w.floor.saturating_sub(base).min(need);
        let give = if below_floor > from_pool {
            let extra = (below_floor - from_pool).min(host_spare);
            host_spare = host_spare - extra;
            from_pool + extra
        } else {
            from_pool
        };
        // The operator's max wins even over pressure: never a target above the ceiling.
        let target = kib_down(base + give).max(c);
        if w.back_off {
            // Stop the reclaim where it is, whatever the pool can add.
            w.target = Some((target, Rule::BackOff));
        } else if give.0 == 0 || (give < band && give < need) || already_heading(target, w.heading, c, band) {
            continue;
        } else {
            let rule = if w.pressure.is_some() { Rule::GiveBack } else { Rule::Grow };
            w.target = Some((target, rule));
        }
        budget -= target.0 as i128 - base.0 as i128;
    }
}

fn reason_text(w: &Work, target: Bytes, rule: Rule, pool: Bytes, step: Bytes) -> String {
    let c = w.current;
    let pressure = w.pressure.as_deref().unwrap_or("the guest is under pressure");
    let short = |full: Bytes| if target < full { "; the pool has no more to spare yet" } else { "" };
    match rule {
        Rule::Reclaim if target == w.ceiling && c - target > w.step => format!(
            "reclaim {}: bring the guest down to its max {target} (guest uses {} of {c})",
            c - target,
            w.used
        ),
        Rule::Reclaim => format!(
            "reclaim {}: guest uses {} of {} ({:.0}% active); idle-taxed entitlement {} of a {} pool",
            c - target,
            w.used,
            c,
            100.0 * w.used.0 as f64 / c.0.max(1) as f64,
            w.entitlement,
            pool
        ),
        Rule::GiveBack => format!("give back {}: {pressure}{}", target - c, short(w.entitlement.max(w.want))),
        Rule::BackOff if target > c => format!(
            "stop reclaiming and give back {}: {pressure} during the reclaim; reclaim step halved to {step}{}",
            target - c,
            short(w.entitlement.max(w.want))
        ),
        Rule::BackOff => format!(
            "stop reclaiming at {c}: {pressure} during the reclaim; reclaim step halved to {step}; nothing to give back yet"
        ),
        Rule::Grow if c < w.floor => format!(
            "grow {}: guest uses {} of {}, under its floor {} (what it uses plus headroom){}",
            target - c,
            w.used,
            c,
            w.floor,
            short(w.entitlement)
        ),
        Rule::Grow => format!(
            "grow {}: the pool has room; idle-taxed entitlement {} of a {} pool{}",
            target - c,
            w.entitlement,
            pool,
            short(w.entitlement)
        ),
        Rule::Stuck => {
            let (_, was, idle_ms) = w.stuck.expect("stuck rule implies stuck");
            format!(
                "balloon stuck at {c} for {} (target {was}): holding it where it is; reclaim step halved to {step}",
                secs(idle_ms)
            )
        }
        // The memory policy never sets a target under the other policies' rules.
        Rule::Hold
        | Rule::Skip
        | Rule::Sleep
        | Rule::Wake
        | Rule::Boost
        | Rule::Yield
        | Rule::Critical
        | Rule::Restore
        | Rule::Power
        | Rule::Affinity => format!(
            "hold at {target}: idle-taxed entitlement is now {} (guest uses {} of {c}), so the last target no longer applies",
            w.entitlement, w.used
        ),
    }
}

/// Whether a new target would only repeat where the balloon is already
/// going. With nothing in flight any real move counts, even one the dead
/// band's rounding would call small.
fn already_heading(goal: Bytes, heading: Bytes, current: Bytes, band: Bytes) -> bool {
    goal == heading || (heading != current && goal.abs_diff(heading) < band)
}

fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format!("{} s", ms / 1000) } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

fn kib_up(b: Bytes) -> Bytes {
    Bytes(b.0.div_ceil(KIB).saturating_mul(KIB))
}

fn kib_down(b: Bytes) -> Bytes {
    Bytes(b.0 / KIB * KIB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB: u64 = MIB;

    /// A guest in the simulated world: a balloon target lands exactly on the
    /// next tick, unless the guest is stalled.
    #[derive(Clone, Debug)]
    struct Guest {
        id: VmId,
        state: VmState,
        balloon: bool,
        stats: bool,
        current: Bytes,
        maximum: Bytes,
        used: Bytes,
        pending: Option<Bytes>,
        stall: bool,
        swap_out: Bytes,
        major_faults: u64,
        settings: VmSettings,
        /// Held by the guest kernel outside MemTotal.
        overhead: Bytes,
        /// The stats report the size of a tick ago (as a real guest's do).
        lagging: bool,
        /// A real balloon lands a few KiB off its target.
        lands_off: Bytes,
        stats_size: Bytes,
    }

    fn guest(name: &str, size_mib: u64, used_mib: u64) -> Guest {
        Guest {
            id: VmId::new(name),
            state: VmState::Running,
            balloon: true,
            stats: true,
            current: Bytes::from_mib(size_mib),
            maximum: Bytes::from_mib(size_mib),
            used: Bytes::from_mib(used_mib),
            pending: None,
            stall: false,
            swap_out: Bytes::ZERO,
            major_faults: 0,
            settings: VmSettings::default(),
            overhead: Bytes::ZERO,
            lagging: false,
            lands_off: Bytes::ZERO,
            stats_size: Bytes::from_mib(size_mib),
        }
    }

    #[derive(Debug)]
    struct World {
        guests: Vec<Guest>,
        /// Host total; available is what the guests leave of it.
        host_total: Bytes,
        now: Millis,
        cfg: MemoryConfig,
        policy: MemoryPolicy,
    }

    impl World {
        fn new(guests: Vec<Guest>, pool_mib: u64) -> World {
            let cfg = MemoryConfig { pool: Some(Bytes::from_mib(pool_mib)), ..MemoryConfig::default() };
            World {
                guests,
                host_total: Bytes::from_mib(pool_mib) + cfg.host_reserve,
                now: Millis(1_000_000),
                cfg,
                policy: MemoryPolicy::new(),
            }
        }

        fn g(&mut self, name: &str) -> &mut Guest {
            self.guests.iter_mut().find(|g| g.id.as_str() == name).expect("no such guest")
        }

        fn observe(&self) -> Observation {
            let in_use: Bytes = self.guests.iter().filter(|g| g.state != VmState::ShutOff).map(|g| g.current).sum();
            Observation {
                at: self.now,
                host: HostMemory { total: self.host_total, available: self.host_total - in_use },
                host_cpus: 2,
                vms: self
                    .guests
                    .iter()
                    .map(|g| VmObservation {
                        id: g.id.clone(),
                        state: g.state,
                        balloon: g.balloon.then(|| Balloon {
                            current: g.current,
                            maximum: g.maximum,
                            stats: g.stats.then(|| {
                                let size = if g.lagging { g.stats_size } else { g.current };
                                GuestMemStats {
                                total: size - g.overhead,
                                unused: size - g.overhead - g.used,
                                usable: size - g.overhead - g.used,
                                swap_in: Bytes::ZERO,
                                swap_out: g.swap_out,
                                major_faults: g.major_faults,
                                oom_kills: Some(0),
                                last_update: Some(self.now.0 / 1000 - g.lagging as u64),
                            }}),
                        }),
                        activity: None,
                        persistent: true,
                        managed_save: false,
                        tune: None,
                    })
                    .collect(),
            }
        }

        fn settings(&self) -> BTreeMap<VmId, VmSettings> {
            self.guests.iter().map(|g| (g.id.clone(), g.settings.clone())).collect()
        }

        /// One second passes: pending targets land, guests short of memory
        /// swap, then the policy decides and its actions are carried out.
        fn tick(&mut self) -> MemoryDecision {
            self.now = self.now.plus(1_000);
            for g in &mut self.guests {
                g.stats_size = g.current;
                if let (Some(t), false) = (g.pending, g.stall) {
                    g.current = t + g.lands_off;
                    g.pending = None;
                }
                if g.used > g.current {
                    g.swap_out += g.used - g.current;
                }
            }
            let obs = self.observe();
            let d = self.policy.decide(&obs, &self.settings(), &self.cfg, self.now);
            for a in &d.actions {
                let Action::SetBalloonTarget { vm, target, .. } = a else { continue };
                let g = self.guests.iter_mut().find(|g| &g.id == vm).expect("action for an unknown VM");
                g.pending = Some(*target);
            }
            d
        }

        fn run(&mut self, ticks: usize) -> MemoryDecision {
            let mut d = self.tick();
            for _ in 1..ticks {
                d = self.tick();
            }
            d
        }

        fn current(&self, name: &str) -> Bytes {
            self.guests.iter().find(|g| g.id.as_str() == name).unwrap().current
        }
    }

    fn view<'a>(d: &'a MemoryDecision, name: &str) -> &'a VmMemoryView {
        d.vms.iter().find(|v| v.vm.as_str() == name).expect("no view")
    }

    fn action_for<'a>(d: &'a MemoryDecision, name: &str) -> Option<(Bytes, &'a Reason)> {
        d.actions.iter().find(|a| a.vm().as_str() == name).map(|a| match a {
            Action::SetBalloonTarget { target, reason, .. } => (*target, reason),
            other => panic!("the memory policy only sets balloon targets: {other:?}"),
        })
    }

    #[test]
    fn the_floor_keeps_the_guest_kernels_own_memory() {
        // Two idle guests in a tiny pool: both go to their floors. The one
        // whose kernel holds 56 MiB outside MemTotal keeps that on top.
        let mut plain = guest("plain", 512, 100);
        plain.settings.min = None;
        let mut kernel = guest("kernel", 512, 100);
        kernel.overhead = Bytes::from_mib(56);
        let mut w = World::new(vec![plain, kernel], 400);
        let d = w.run(40);
        let floor = |n: &str| view(&d, n).floor.unwrap();
        assert_eq!(floor("kernel"), floor("plain") + Bytes::from_mib(56));
        assert!(w.current("kernel") >= floor("kernel"));
        assert!(w.current("plain") < w.current("kernel"));
        // What the guest itself sees free stays at the headroom.
        let free = w.current("kernel") - Bytes::from_mib(56) - Bytes::from_mib(100);
        assert!(free >= w.cfg.headroom_min, "{free}");
    }

    #[test]
    fn lagging_stats_never_sink_a_loaded_guests_floor() {
        // Stats a tick behind the balloon make (size − MemTotal) read low
        // while shrinking; the floor must hold at used + headroom + kernel.
        let mut busy = guest("busy", 512, 300);
        busy.overhead = Bytes::from_mib(56);
        busy.lagging = true;
        let mut idle = guest("idle", 512, 20);
        idle.overhead = Bytes::from_mib(56);
        idle.lagging = true;
        let mut w = World::new(vec![busy, idle], 600);
        let floor = Bytes::from_mib(300 + 64 + 56);
        for _ in 0..30 {
            w.tick();
            assert!(w.current("busy") >= floor, "busy pushed to {} (floor {floor})", w.current("busy"));
            if let Some(t) = w.g("busy").pending {
                assert!(t >= floor, "busy targeted at {t} (floor {floor})");
            }
        }
    }

    #[test]
    fn a_guest_below_its_floor_grows_back_past_an_exhausted_pool() {
        let mut w = World::new(vec![guest("a", 512, 100)], 256);
        w.host_total += Bytes::from_mib(100);
        w.run(20);
        assert!(w.current("a").abs_diff(Bytes::from_mib(256)) < Bytes::from_mib(1), "{}", w.current("a"));
        // Its use grows after the reclaim: floor 250 + 64 = 314 MiB, past the pool.
        w.g("a").used = Bytes::from_mib(250);
        let d = w.run(5);
        assert!(w.current("a") >= Bytes::from_mib(314), "a left at {} below its floor", w.current("a"));
        assert!(d.pool_note.is_some());
        // The host's own reserve still bounds it: only 100 MiB were spare.
        w.g("a").used = Bytes::from_mib(400);
        w.run(5);
        assert!(w.current("a") <= Bytes::from_mib(356) + Bytes::from_mib(1), "a took {} past the host's spare", w.current("a"));
    }

    #[test]
    fn balloons_that_land_a_few_kib_off_do_not_churn() {
        for pool in [600, 400] {
            // 400: the floors (364 + 84 MiB) exceed the pool.
            let mut busy = guest("busy", 512, 300);
            busy.lands_off = Bytes::from_kib(3);
            let mut idle = guest("idle", 512, 20);
            idle.lands_off = Bytes::from_kib(20);
            let mut w = World::new(vec![busy, idle], pool);
            w.run(40);
            for _ in 0..10 {
                let d = w.tick();
                assert!(d.actions.is_empty(), "pool {pool}: churn {:?}", d.actions);
            }
        }
    }

    #[test]
    fn skipped_vms_say_why_and_still_occupy_the_pool() {
        let mut off = guest("off", 1024, 100);
        off.state = VmState::ShutOff;
        let mut nob = guest("noballoon", 1024, 100);
        nob.balloon = false;
        let mut nostats = guest("nostats", 1024, 100);
        nostats.stats = false;
        let mut unmanaged = guest("unmanaged", 1024, 100);
        unmanaged.settings.managed = false;
        let mut paused = guest("paused", 1024, 100);
        paused.state = VmState::Paused;
        let mut w = World::new(vec![off, nob, nostats, unmanaged, paused, guest("z-ok", 1024, 100)], 3072);
        let d = w.tick();
        let skipped = |n: &str| view(&d, n).skipped.clone().unwrap_or_default();
        assert!(skipped("off").contains("not running (shut off)"));
        assert!(skipped("paused").contains("not running (paused)"));
        assert!(skipped("noballoon").contains("<memballoon model='virtio'>"));
        assert!(skipped("nostats").contains("no memory statistics"));
        assert!(skipped("unmanaged").contains("managed = false"));
        assert!(view(&d, "z-ok").skipped.is_none());
        assert!(d.actions.iter().all(|a| a.vm().as_str() == "z-ok"));
        // nostats, unmanaged, paused and z-ok occupy memory; off and noballoon do not count.
        assert_eq!(d.pool_used, Bytes::from_mib(4096));
        // 3 GiB pool − 3 GiB held by the unmanageable ones: z-ok must go to its floor.
        assert_eq!(view(&d, "z-ok").entitlement, view(&d, "z-ok").floor);
        assert!(action_for(&d, "z-ok").is_some_and(|(t, r)| t < Bytes::from_mib(1024) && r.rule == Rule::Reclaim));
    }

    #[test]
    fn views_are_sorted_by_id_even_when_observed_out_of_order() {
        let mut w = World::new(vec![guest("c", 512, 100), guest("a", 512, 100), guest("b", 512, 100)], 4096);
        let d = w.tick();
        let ids: Vec<&str> = d.vms.iter().map(|v| v.vm.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn no_contention_means_no_reclaim() {
        let mut w = World::new(vec![guest("a", 2048, 100), guest("b", 2048, 1500)], 8192);
        let d = w.tick();
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert_eq!(view(&d, "a").entitlement, Some(Bytes::from_mib(2048)));
    }

    #[test]
    fn idle_vm_is_reclaimed_before_an_active_one() {
        let mut w = World::new(vec![guest("active", 4096, 3072), guest("idle", 4096, 512)], 6144);
        let d = w.tick();
        let (t, r) = action_for(&d, "idle").expect("idle VM reclaimed first");
        assert_eq!(r.rule, Rule::Reclaim);
        assert_eq!(t, Bytes::from_mib(4096 - 32), "first reclaim is one step_min");
        assert!(r.text.starts_with("reclaim 32 MiB: guest uses 512 MiB of 4 GiB (12% active); idle-taxed entitlement"), "{}", r.text);
        assert!(r.text.ends_with("of a 6 GiB pool"), "{}", r.text);
        // Both are over the 6 GiB pool, but the idle one pays the tax.
        let (ea, ei) = (view(&d, "active").entitlement.unwrap(), view(&d, "idle").entitlement.unwrap());
        assert!(ei + Bytes::from_gib(1) < ea, "idle {ei} vs active {ea}");
        assert!(ea > Bytes::from_mib(3900), "the active VM keeps nearly all it has: {ea}");
        let d = w.run(60);
        assert!(w.current("idle") < w.current("active"));
        assert!(w.current("active") >= Bytes::from_mib(3072 + 614));
        assert!(d.pool_used <= Bytes::from_mib(6144));
    }

    #[test]
    fn higher_shares_end_with_more_memory() {
        let mut rich = guest("rich", 4096, 1024);
        rich.settings.shares = 3000;
        let mut w = World::new(vec![rich, guest("poor", 4096, 1024)], 5120);
        w.run(60);
        assert!(w.current("rich") > w.current("poor") + Bytes::from_mib(256), "{} vs {}", w.current("rich"), w.current("poor"));
    }

    #[test]
    fn step_doubles_as_reclaims_land_and_stays_bounded() {
        let mut w = World::new(vec![guest("big", 16384, 1024), guest("busy", 4096, 3500)], 8192);
        let mut steps = vec![];
        for _ in 0..40 {
            let d = w.tick();
            steps.push(view(&d, "big").step.0 / MB);
        }
        assert_eq!(&steps[..6], &[32, 64, 128, 256, 512, 512], "{steps:?}");
        assert!(steps.iter().all(|&s| (32..=512).contains(&s)));
        assert!(w.current("big") <= Bytes::from_mib(8192 - 3500 - 700 + 1024));
    }

    #[test]
    fn converged_world_stops_acting() {
        let mut w = World::new(
            vec![guest("a", 4096, 300), guest("b", 4096, 2000), guest("c", 2048, 1900), guest("d", 1024, 10)],
            6000,
        );
        w.run(60);
        for _ in 0..10 {
            let d = w.tick();
            assert!(d.actions.is_empty(), "churn after convergence: {:?}", d.actions);
        }
    }

    #[test]
    fn pressured_vm_gets_memory_back() {
        let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 500)], 4096);
        w.run(60);
        let before = w.current("a");
        // The guest's load grows past what it has left: it is now low on free memory.
        w.g("a").used = before - before.scale(0.05);
        let d = w.tick();
        assert!(view(&d, "a").under_pressure);
        let (t, r) = action_for(&d, "a").expect("give back");
        assert_eq!(r.rule, Rule::GiveBack);
        assert!(t > before);
        assert!(r.text.starts_with("give back "), "{}", r.text);
        assert!(r.text.contains("available (under 10%)"), "{}", r.text);
        // b pays for it: its entitlement falls so a can grow within the pool.
        let d = w.run(30);
        let used_a = w.g("a").used;
        assert!(w.current("a") >= used_a + Bytes::from_mib(64), "a relieved: {} for {}", w.current("a"), used_a);
        assert!(!view(&d, "a").under_pressure);
        assert!(d.pool_used <= Bytes::from_mib(4096));
    }

    #[test]
    fn swapping_during_a_reclaim_backs_off() {
        let mut w = World::new(vec![guest("a", 8192, 1000), guest("b", 2048, 1800)], 6144);
        w.tick();
        w.tick();
        w.tick();
        let step_before = view(&w.tick(), "a").step;
        assert!(step_before >= Bytes::from_mib(128), "the reclaim has been landing");
        w.g("a").swap_out = Bytes::from_mib(40);
        let d = w.tick();
        let (t, r) = action_for(&d, "a").expect("back off");
        assert_eq!(r.rule, Rule::BackOff, "{}", r.text);
        assert!(t >= w.current("a"), "never shrinks a swapping guest");
        assert!(r.text.contains("swapping"), "{}", r.text);
        assert_eq!(view(&d, "a").step, Bytes(step_before.0 / 2));
        assert!(view(&d, "a").under_pressure);
        // The next look sees no new swapping: the guest is not blamed twice.
        let d = w.tick();
        assert!(!view(&d, "a").under_pressure);
        assert_eq!(view(&d, "a").step, Bytes(step_before.0 / 2));
        assert!(action_for(&d, "a").is_none(), "no reclaim right after a back-off");
    }

    #[test]
    fn stuck_balloon_is_held_where_it_is() {
        let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 3000)], 6144);
        w.tick();
        let d = w.tick();
        let (pending, _) = action_for(&d, "a").expect("still reclaiming");
        let step = view(&d, "a").step;
        w.g("a").stall = true;
        let stalled_at = w.current("a");
        let mut stuck = None;
        let mut quiet = 0;
        for _ in 0..6 {
            let d = w.tick();
            if let Some((t, r)) = action_for(&d, "a") {
                stuck = Some((t, r.clone(), view(&d, "a").step));
                break;
            }
            quiet += 1;
        }
        assert_eq!(quiet, 4, "no nagging a balloon that is still within its 5 s");
        let (t, r, new_step) = stuck.expect("stuck detected");
        assert_eq!(r.rule, Rule::Stuck);
        assert_eq!(t, stalled_at);
        assert_eq!(new_step, Bytes(step.0 / 2).max(Bytes::from_mib(32)));
        assert_eq!(r.text, format!("balloon stuck at {stalled_at} for 5 s (target {pending}): holding it where it is; reclaim step halved to {new_step}"));
    }

    #[test]
    fn min_and_max_are_respected() {
        let mut a = guest("a", 4096, 100);
        a.settings.min = Some(Bytes::from_mib(3000));
        let mut b = guest("b", 4096, 100);
        b.settings.max = Some(Bytes::from_mib(1024));
        let mut w = World::new(vec![a, b], 16384);
        let d = w.run(40);
        assert_eq!(w.current("a"), Bytes::from_mib(4096), "no contention: a keeps everything");
        assert_eq!(w.current("b"), Bytes::from_mib(1024), "b is brought down to its max");
        assert_eq!(view(&d, "b").ceiling, Some(Bytes::from_mib(1024)));
        // Now contention: a never goes under its min.
        w.cfg.pool = Some(Bytes::from_mib(3500));
        w.run(40);
        assert_eq!(w.current("a"), Bytes::from_mib(3000));
    }

    #[test]
    fn floors_over_the_pool_hold_everyone_at_their_floor() {
        let mut w = World::new(vec![guest("a", 2048, 1500), guest("b", 2048, 1500)], 3000);
        let d = w.run(30);
        let floor = Bytes::from_mib(1800);
        for n in ["a", "b"] {
            assert_eq!(view(&d, n).entitlement, Some(floor));
            assert_eq!(w.current(n), floor);
        }
        assert!(d.pool_note.as_deref().unwrap_or("").contains("floors add up to 3.52 GiB"), "{:?}", d.pool_note);
    }

    #[test]
    fn host_short_of_its_reserve_forces_a_reclaim() {
        let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 500)], 65536);
        assert!(w.tick().actions.is_empty());
        // Something on the host ate memory: available falls 512 MiB under the reserve.
        w.host_total = Bytes::from_mib(8192) + Bytes::from_gib(1) - Bytes::from_mib(512);
        let d = w.tick();
        assert_eq!(d.pool, Bytes::from_mib(8192 - 512));
        assert!(d.pool_note.as_deref().unwrap_or("").contains("under its 1 GiB reserve"));
        assert_eq!(d.actions.len(), 2);
        w.run(20);
        assert!(w.current("a") + w.current("b") <= Bytes::from_mib(8192 - 512));
    }

    #[test]
    fn failure_and_resume_seed_the_step() {
        let mut w = World::new(vec![guest("a", 8192, 500), guest("b", 4096, 3000)], 8192);
        w.tick();
        w.tick();
        let d = w.tick();
        assert_eq!(view(&d, "a").step, Bytes::from_mib(128));
        let a = VmId::new("a");
        w.policy.record_failure(&a, w.now);
        w.g("a").pending = None; // the call failed: nothing lands
        let d = w.tick();
        assert_eq!(view(&d, "a").step, Bytes::from_mib(64));
        assert_eq!(view(&d, "a").target, Some(w.current("a")), "the failed target is forgotten");

        // A restarted agent with a journal: the step carries on where it was.
        w.policy = MemoryPolicy::new();
        let cur = w.current("a");
        w.policy.resume(a.clone(), Resumed { step: Bytes::from_mib(256), last_target: Some(cur - Bytes::from_mib(64)) });
        let d = w.tick();
        assert_eq!(view(&d, "a").step, Bytes::from_mib(256));
        let (t, _) = action_for(&d, "a").expect("reclaim continues with the resumed step");
        assert_eq!(t, cur - Bytes::from_mib(256));
        let d = w.tick();
        assert_eq!(view(&d, "a").step, Bytes::from_mib(512), "the landed shrink doubles the resumed step");
        // A resumed step out of bounds is clamped.
        let mut fresh = MemoryPolicy::new();
        fresh.resume(a, Resumed { step: Bytes::from_gib(64), last_target: None });
        let d = fresh.decide(&w.observe(), &w.settings(), &w.cfg, w.now.plus(1000));
        assert_eq!(view(&d, "a").step, Bytes::from_mib(512));
    }

    #[test]
    fn vms_coming_and_going_keep_their_own_state() {
        let mut w = World::new(vec![guest("b", 8192, 500), guest("d", 4096, 3500)], 8192);
        w.run(3);
        let step_b = view(&w.tick(), "b").step;
        assert!(step_b > Bytes::from_mib(32));
        // "a" and "c" appear around "b"; "d" leaves.
        let d_guest = w.guests.pop().unwrap();
        w.guests.insert(0, guest("a", 1024, 100));
        w.guests.push(guest("c", 1024, 100));
        let d = w.tick();
        assert_eq!(d.vms.iter().map(|v| v.vm.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(view(&d, "b").step >= step_b, "b keeps its step");
        assert_eq!(view(&d, "a").step, Bytes::from_mib(32));
        // "d" comes back as a stranger: fresh step, no memory of its past.
        w.guests.push(d_guest);
        let d = w.tick();
        assert_eq!(view(&d, "d").step, Bytes::from_mib(32));
        assert_eq!(view(&d, "d").last_reason, None);
    }

    #[test]
    fn last_reason_persists_across_quiet_ticks() {
        let mut w = World::new(vec![guest("a", 2048, 100), guest("b", 2048, 1800)], 3500);
        let d = w.run(50);
        assert!(d.actions.is_empty());
        let r = view(&d, "a").last_reason.clone().expect("a was reclaimed once");
        assert_eq!(r.rule, Rule::Reclaim);
    }

    #[test]
    fn dead_band_ignores_tiny_changes() {
        let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 3000)], 6000);
        w.run(60);
        // A few hundred KiB of extra use moves the entitlement by less than the band.
        w.g("a").used += Bytes::from_kib(300);
        w.g("b").used += Bytes::from_kib(300);
        assert!(w.tick().actions.is_empty());
    }

    // ---- properties ----

    fn arb_guest(i: usize) -> impl Strategy<Value = Guest> {
        (256u64..8192, 0u64..=80, 100u32..4000, proptest::option::of(0u64..4096), proptest::option::of(256u64..8192))
            .prop_map(move |(size, used_pct, shares, min, max)| {
                let mut g = guest(&format!("vm{i:02}"), size, size * used_pct / 100);
                g.settings.shares = shares;
                g.settings.min = min.map(Bytes::from_mib);
                g.settings.max = max.map(Bytes::from_mib);
                g
            })
    }

    fn arb_world() -> impl Strategy<Value = World> {
        (proptest::collection::vec(any::<u8>(), 1..10), 512u64..40_000).prop_flat_map(|(n, pool)| {
            let guests: Vec<_> = (0..n.len()).map(arb_guest).collect();
            guests.prop_map(move |g| World::new(g, pool))
        })
    }

    /// Invariants that hold on every tick, whatever the world does.
    fn check_tick(w: &World, d: &MemoryDecision) -> Result<(), TestCaseError> {
        for v in &d.vms {
            prop_assert!(v.step >= w.cfg.step_min && v.step <= w.cfg.step_max, "step {} out of bounds", v.step);
        }
        for a in &d.actions {
            let Action::SetBalloonTarget { vm, target, reason } = a else { continue };
            let g = w.guests.iter().find(|g| &g.id == vm).unwrap();
            let v = view(d, vm.as_str());
            let ceiling = g.settings.max.unwrap_or(Bytes(u64::MAX)).min(g.maximum);
            let min = g.settings.min.unwrap_or(Bytes::ZERO).min(ceiling);
            prop_assert!(*target <= ceiling, "{vm}: target {target} above ceiling {ceiling}");
            prop_assert!(*target + Bytes(KIB) > min, "{vm}: target {target} below min {min}");
            prop_assert!(v.skipped.is_none());
            prop_assert!(!reason.text.is_empty());
            if *target < g.current {
                prop_assert!(Some(*target) >= v.floor, "{vm}: shrink to {target} under floor {:?}", v.floor);
                // Only the operator's max may shrink a guest under pressure.
                prop_assert!(!v.under_pressure || *target == ceiling, "{vm}: shrinking a guest under pressure");
                prop_assert!(*target >= g.current - w.cfg.step_max.max(g.current.scale(0.0025)) || *target == ceiling,
                    "{vm}: shrink of more than a step");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn converges_inside_the_pool_and_then_stays_still(mut w in arb_world()) {
            let mut d = w.tick();
            check_tick(&w, &d)?;
            for _ in 0..60 {
                d = w.tick();
                check_tick(&w, &d)?;
            }
            let floors: Bytes = d.vms.iter().filter_map(|v| v.floor).sum();
            let pool = w.cfg.pool.unwrap();
            let sum: Bytes = w.guests.iter().map(|g| g.current).sum();
            if floors <= pool {
                prop_assert!(sum <= pool, "Σcurrent {sum} over pool {pool} with Σfloor {floors}");
            }
            for v in &d.vms {
                prop_assert!(v.actual >= v.floor, "{} below its floor", v.vm);
            }
            for _ in 0..5 {
                let d = w.tick();
                prop_assert!(d.actions.is_empty(), "churn: {:?}", d.actions);
            }
        }

        #[test]
        fn more_shares_never_means_less_memory(
            size in 1024u64..8192, used_pct in 5u64..70, lo in 100u32..2000, extra in 1u32..4000,
            pool_pct in 30u64..150, others in proptest::collection::vec(arb_guest(9), 0..3),
        ) {
            let mut a = guest("high", size, size * used_pct / 100);
            a.settings.shares = lo + extra;
            let mut b = guest("low", size, size * used_pct / 100);
            b.settings.shares = lo;
            let mut gs = vec![a, b];
            for (i, mut g) in others.into_iter().enumerate() {
                g.id = VmId::new(format!("other{i}"));
                gs.push(g);
            }
            let total: u64 = gs.iter().map(|g| g.current.0 / MB).sum();
            let mut w = World::new(gs, total * pool_pct / 100);
            let d = w.run(60);
            prop_assert!(view(&d, "high").entitlement >= view(&d, "low").entitlement);
            prop_assert!(w.current("high") >= w.current("low"));
        }

        #[test]
        fn idle_is_reclaimed_before_active(
            size in 1024u64..8192, idle_pct in 0u64..40, gap in 10u64..50, pool_pct in 50u64..100,
        ) {
            let mut w = World::new(
                vec![guest("active", size, size * (idle_pct + gap) / 100), guest("idle", size, size * idle_pct / 100)],
                2 * size * pool_pct / 100,
            );
            let d = w.tick();
            if let Some((ta, _)) = action_for(&d, "active") {
                let (ti, _) = action_for(&d, "idle").expect("active reclaimed while idle was not");
                prop_assert!(ti <= ta);
            }
            w.run(60);
            prop_assert!(w.current("idle") <= w.current("active"));
        }

        #[test]
        fn chaos_keeps_the_invariants(
            mut w in arb_world(),
            step_min in 1u64..64, step_mul in 1u64..32,
            events in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, 0u64..100), 0..40),
        ) {
            w.cfg.step_min = Bytes::from_mib(step_min);
            w.cfg.step_max = Bytes::from_mib(step_min * step_mul);
            let mut events = events.into_iter();
            for tick in 0..80 {
                if tick % 2 == 0 {
                    if let Some((which, kind, amount)) = events.next() {
                        let n = w.guests.len();
                        let g = &mut w.guests[which.index(n)];
                        match kind {
                            0 => g.used = g.current.scale(amount as f64 / 100.0),
                            1 => g.stall = !g.stall,
                            2 => g.major_faults += amount * 1000,
                            _ => g.swap_out += Bytes::from_mib(amount),
                        }
                    }
                }
                let d = w.tick();
                check_tick(&w, &d)?;
            }
        }
    }
}
