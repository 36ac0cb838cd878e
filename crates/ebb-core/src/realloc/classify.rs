//! The read-and-classify pass: each running VM's rates from its counters,
//! what it is bound on, and a class (and its gains and contention) that
//! counts only once it has held for `class_after`.

use super::class::{Bound, Class};
use super::config::{ReallocConfig, ReallocSettings};
use super::view::{Tunes, VmReallocView};
use super::PerVm;
use crate::model::*;
use crate::rates::ActivityRates;
use crate::units::*;

/// A value that changes only once a new one has been seen for a while.
#[derive(Clone, Debug)]
pub(super) struct Held<T> {
    pub value: Option<T>,
    pub pending: Option<(T, Millis)>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held { value: None, pending: None }
    }
}

impl<T: Copy + PartialEq> Held<T> {
    pub fn see(&mut self, seen: T, now: Millis, hold_ms: u64) {
        if self.value == Some(seen) {
            self.pending = None;
            return;
        }
        let since = match self.pending {
            Some((p, since)) if p == seen => since,
            _ => now,
        };
        if now.since(since) >= hold_ms {
            self.value = Some(seen);
            self.pending = None;
        } else {
            self.pending = Some((seen, since));
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Track {
    /// The tick that last saw it running: tracks not seen this tick go.
    pub seen: Millis,
    last: (Millis, Activity),
    rates: Option<ActivityRates>,
    bound: Bound,
    class: Held<Class>,
    /// More CPU would help it (at its own cap, waiting, or a saturated host).
    gains: Held<bool>,
    /// It competes with others for host CPUs: its vCPUs wait (not for its
    /// own cap) or the host is saturated.
    contended: Held<bool>,
    /// Its traffic sits at its own bandwidth limit.
    net_gains: Held<bool>,
    /// At its own disk I/O limit (held like the class).
    disk_gains: Held<bool>,
}

impl Track {
    fn fresh(at: Millis, activity: Activity, expected: Option<Class>) -> Track {
        Track {
            seen: at,
            last: (at, activity),
            rates: None,
            bound: Bound::default(),
            class: Held { value: expected, pending: None },
            gains: Held::default(),
            contended: Held::default(),
            net_gains: Held::default(),
            disk_gains: Held::default(),
        }
    }
}

/// Reads one observed VM into its `view` (fresh, in place: a view is big,
/// and 10,000 of them are not built aside and copied over): its rates, what
/// it is bound on and its held class, and whether its tunes were changed
/// behind ebb. Returns what a VM with rates asks of the host's CPUs, in
/// CPUs' worth. Its gain and contention are seen against the last tick's
/// saturation (`saturated_last`), so the pass over the VMs is one.
pub(super) fn read(
    v: &VmObservation,
    per: &mut PerVm,
    s: &ReallocSettings,
    cfg: &ReallocConfig,
    saturated_last: bool,
    now: Millis,
    view: &mut VmReallocView,
) -> Option<f64> {
    view.critical = s.critical;
    view.expected = s.expected;
    view.current = v.tune;
    let (Some(activity), Some(current), VmState::Running) = (v.activity, v.tune, v.state) else {
        view.skipped = Some(match (v.state, v.tune) {
            (VmState::Running, None) => "libvirt reports no CPU scheduler parameters for it".into(),
            (VmState::Running, Some(_)) => "the hypervisor reports no activity counters for it".into(),
            (state, _) => format!("not running ({state})"),
        });
        return None;
    };
    let track = per.track.get_or_insert_with(|| Track::fresh(now, activity, s.expected));
    track.seen = now;
    if let Some(r) = ActivityRates::between(track.last.0, &track.last.1, now, &activity) {
        track.rates = Some(r);
    } else if activity.went_back(&track.last.1) {
        // Restarted or restored: its class starts over, from its history.
        *track = Track::fresh(now, activity, s.expected);
    }
    track.last = (now, activity);

    let tunes = per.tunes.get_or_insert(Tunes { base: current, applied: None });
    let expected = tunes.applied.unwrap_or(tunes.base);
    if current != expected {
        // Changed by someone else (or the VM restarted with its
        // configured values): that is its own setting now.
        *tunes = Tunes { base: current, applied: None };
    }
    view.base = Some(tunes.base);

    let mut demand_on_host = None;
    if let Some(r) = track.rates {
        let vcpus = activity.vcpus.max(1) as f64;
        // What it asks for: what it ran plus what it waited to run.
        let demand = (r.cpu + r.vcpu_wait) / vcpus;
        // Against its own cap: a VM that needed the raised cap keeps
        // needing it, and does not flap back and forth.
        let at_cap = tunes.base.cap().is_some_and(|c| r.cpu / vcpus >= cfg.at_cap * c);
        let cpu_threshold = if track.bound.cpu { cfg.cpu_busy_leave } else { cfg.cpu_busy };
        // Against its own limit too, in each direction: a VM held at
        // its limit is bound on the network however low that limit is.
        let held = |limit: &Bandwidth, rate: Bytes| limit.limit().is_some_and(|l| rate >= l.scale(cfg.at_cap));
        let at_net_limit = tunes.base.net.is_some_and(|n| held(&n.inbound, r.net_in) || held(&n.outbound, r.net_out));
        // …and its disk's I/O limit, likewise.
        let at_disk_limit = tunes.base.disk_limit.is_some_and(|l| l > 0 && r.disk >= Bytes(l).scale(cfg.at_cap));
        let bound = Bound {
            cpu: at_cap || demand >= cpu_threshold,
            disk: at_disk_limit || r.disk >= cfg.disk_busy,
            net: at_net_limit || r.net >= cfg.net_busy,
        };
        let idle = r.cpu <= cfg.idle_cpu && r.disk <= cfg.idle_disk && r.net <= cfg.idle_net;
        track.bound = bound;
        track.class.see(bound.class(idle), now, cfg.class_after.as_millis());
        view.rates = Some(r);
        view.cpu_use = Some(demand);
        view.at_cap = at_cap;
        view.bound = bound;
        track.net_gains.see(at_net_limit, now, cfg.class_after.as_millis());
        track.disk_gains.see(at_disk_limit, now, cfg.class_after.as_millis());
        demand_on_host = Some((r.cpu + r.vcpu_wait).min(vcpus));
        let waits = r.vcpu_wait >= cfg.wait_contended;
        track.gains.see(bound.cpu && (at_cap || waits || saturated_last), now, cfg.class_after.as_millis());
        // A capped VM's wait is its own cap holding it back.
        track.contended.see(bound.cpu && ((waits && !at_cap) || saturated_last), now, cfg.class_after.as_millis());
    }
    view.gains = matches!(track.class.value, Some(Class::CpuBound | Class::Mixed)) && track.gains.value == Some(true);
    // Contention counts from the moment it shows, held or not: a
    // boost must not slip in before a neighbour's claim is confirmed.
    view.contended = matches!(track.class.value, Some(Class::CpuBound | Class::Mixed))
        && (track.contended.value == Some(true) || matches!(track.contended.pending, Some((true, _))));
    // Held like the class: a raised limit lets its rate pass the old
    // one, and a dip below it for a tick must not undo the raise.
    view.at_net_limit = is_net_bound(view, track.class.value) && track.net_gains.value == Some(true);
    view.at_disk_limit = matches!(track.class.value, Some(Class::DiskBound | Class::Mixed))
        && view.bound.disk
        && track.disk_gains.value == Some(true);
    view.class = track.class.value;
    view.pending = track.class.pending;
    if s.disabled {
        view.skipped = Some("reallocation is disabled for this VM".into());
    }
    demand_on_host
}

pub(super) fn is_disk_bound(v: &VmReallocView) -> bool {
    v.class == Some(Class::DiskBound) || (v.class == Some(Class::Mixed) && v.bound.disk)
}

/// Net-bound by its held class (passed apart: it is asked before the view
/// has its class).
pub(super) fn is_net_bound(v: &VmReallocView, class: Option<Class>) -> bool {
    class == Some(Class::NetBound) || (class == Some(Class::Mixed) && v.bound.net)
}
