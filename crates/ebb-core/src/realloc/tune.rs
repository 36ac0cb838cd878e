//! Each VM's wanted tune, one resource at a time: its CPU weight and cap,
//! its disk weight, its bandwidth limit and its disk I/O limit. Every rule
//! returns the rule that fired, the value, and why.

use super::class::Class;
use super::classify::{is_disk_bound, is_net_bound};
use super::config::{ReallocConfig, ReallocSettings};
use super::view::VmReallocView;
use super::why::{Others, Why};
use crate::model::*;
use crate::units::*;
use std::sync::Arc;

/// libvirt's blkio weight range (cgroup v1).
const IO_WEIGHT_MIN: u32 = 100;
const IO_WEIGHT_MAX: u32 = 1000;

/// The VMs bound on one resource and not critical: two or more conflict.
/// Each conflict's reason names up to three of the others, from one shared
/// list: thousands of contenders must not cost n² or n lists.
#[derive(Default)]
struct Rivals {
    named: Vec<VmId>,
    total: usize,
}

impl Rivals {
    #[inline]
    fn add(&mut self, vm: &VmId) {
        if self.named.len() < 4 {
            self.named.push(vm.clone());
        }
        self.total += 1;
    }
}

/// What the VMs read so far mean for each other, counted as they are read
/// (not in passes of their own over the views afterwards).
#[derive(Default)]
pub(super) struct Tally {
    /// Contended for host CPUs.
    cpu: Rivals,
    disk: Rivals,
    net: Rivals,
    /// A VM that is critical or gains from more CPU.
    gains: bool,
    critical: bool,
}

impl Tally {
    /// Counts one VM, its view complete.
    #[inline]
    pub fn see(&mut self, v: &VmReallocView) {
        if v.skipped.is_some() {
            return;
        }
        if v.critical {
            self.critical = true;
            self.gains = true;
            return;
        }
        self.gains |= v.gains;
        if v.contended {
            self.cpu.add(&v.vm);
        }
        if is_disk_bound(v) {
            self.disk.add(&v.vm);
        }
        if is_net_bound(v, v.class) {
            self.net.add(&v.vm);
        }
    }
}

/// Rivals once all are counted, their names shared.
struct Named {
    named: Arc<[VmId]>,
    total: usize,
}

impl Named {
    fn new(r: Rivals) -> Named {
        Named { named: r.named.into(), total: r.total }
    }

    fn conflict(&self) -> bool {
        self.total >= 2
    }

    fn others(&self, me: &VmId) -> Others {
        Others { named: self.named.clone(), me: me.clone(), total: self.total }
    }
}

/// What the other VMs mean for each one's tune this tick.
pub(super) struct Contention {
    /// Contended for host CPUs: two or more conflict, and raising one robs the other.
    cpu: Named,
    /// Cutting an idle VM's weight only matters when someone can use it.
    someone_gains: bool,
    /// libvirt's counters show no disk contention, so a disk-bound VM is
    /// taken to gain (a weight only matters when the host's disks are
    /// contended), and two disk-bound VMs conflict.
    disk: Named,
    someone_gains_disk: bool,
    /// Net-bound VMs share the host's links: a higher limit for one robs
    /// any other net-bound VM.
    net: Named,
    host_cpus: u32,
    host_demand: f64,
    saturated: bool,
}

impl Contention {
    pub fn new(t: Tally, host_cpus: u32, host_demand: f64, saturated: bool) -> Contention {
        Contention {
            someone_gains: t.gains,
            someone_gains_disk: t.disk.total == 1 || t.critical,
            cpu: Named::new(t.cpu),
            disk: Named::new(t.disk),
            net: Named::new(t.net),
            host_cpus,
            host_demand,
            saturated,
        }
    }
}

/// One VM's inputs: its view (class, gains, limits), its settings, its own
/// tune (the base) and the live one.
pub(super) struct Vm<'a> {
    pub view: &'a VmReallocView,
    pub s: &'a ReallocSettings,
    pub base: Tune,
    pub current: Tune,
}

/// Its CPU weight and cap.
#[inline]
pub(super) fn cpu(vm: &Vm, cfg: &ReallocConfig, c: &Contention) -> (Rule, Tune, Why) {
    let Vm { view, s, base, current } = *vm;
    let shares_max = s.shares_max.unwrap_or(base.shares.saturating_mul(cfg.boost)).max(base.shares);
    // libvirt's least weight is 2, but never above the VM's own:
    // cgroup v2 lets a VM sit at 1.
    let shares_min = s.shares_min.unwrap_or(base.shares / cfg.yield_divisor.max(1)).max(2).min(base.shares);
    let raised_cap = |cap_max: Option<f64>| -> Option<u64> {
        match (base.quota_us, cap_max) {
            (Some(q), Some(m)) => Some(q.max((m * base.period_us as f64) as u64)),
            (q, _) => q,
        }
    };
    if view.critical {
        let tune = Tune { shares: shares_max, quota_us: raised_cap(s.cap_max), ..base };
        (Rule::Critical, tune, Why::Critical)
    } else if view.class.is_none() {
        // What is in place stays: after a restart that is ebb's own
        // change, known from the journal, neither undone nor redone.
        (Rule::Restore, current, Why::Learning)
    } else if view.contended && c.cpu.conflict() {
        let why = Why::Conflict { others: c.cpu.others(&view.vm), host_cpus: c.host_cpus, busy: c.host_demand };
        (Rule::Restore, base, why)
    } else if view.gains {
        let tune = Tune { shares: base.shares.saturating_mul(cfg.boost).min(shares_max), quota_us: raised_cap(s.cap_max), ..base };
        let why = match (view.at_cap, c.saturated) {
            (true, _) if tune.quota_us == base.quota_us => Why::AtCapNoCapMax,
            (true, _) => Why::AtCap,
            (false, true) => Why::Saturated,
            (false, false) => Why::Waiting,
        };
        (Rule::Boost, tune, why)
    } else if view.class == Some(Class::Idle) && c.someone_gains {
        let tune = Tune { shares: (base.shares / cfg.yield_divisor.max(1)).max(shares_min), ..base };
        (Rule::Yield, tune, Why::Idle)
    } else if matches!(view.class, Some(Class::CpuBound | Class::Mixed)) {
        (Rule::Restore, base, Why::NoGain { cpu_use: view.cpu_use.unwrap_or(0.0) })
    } else {
        (Rule::Restore, base, Why::Own(view.class.unwrap_or(Class::Steady)))
    }
}

/// Its disk weight; None (and no reason) when it has none.
#[inline]
pub(super) fn io_weight(vm: &Vm, cfg: &ReallocConfig, c: &Contention) -> (Rule, Option<u32>, Option<Why>) {
    let Vm { view, base, current, .. } = *vm;
    let (Some(b), Some(cur)) = (base.io_weight, current.io_weight) else {
        return (Rule::Restore, current.io_weight, None);
    };
    let (rule, w, why) = if view.critical {
        (Rule::Critical, IO_WEIGHT_MAX, Why::Critical)
    } else if view.class.is_none() {
        (Rule::Restore, cur, Why::Learning)
    } else if is_disk_bound(view) && c.disk.conflict() {
        (Rule::Restore, b, Why::DiskConflict { others: c.disk.others(&view.vm) })
    } else if is_disk_bound(view) {
        // In u64, as boost and yield_divisor are: a cast to u32 would cut 2^32 to 0.
        let raised = u64::from(b).saturating_mul(cfg.boost).min(u64::from(IO_WEIGHT_MAX));
        (Rule::Boost, raised as u32, Why::DiskBound)
    } else if view.class == Some(Class::Idle) && c.someone_gains_disk {
        let cut = u64::from(b) / cfg.yield_divisor.max(1);
        (Rule::Yield, (cut as u32).max(IO_WEIGHT_MIN), Why::DiskIdle)
    } else {
        (Rule::Restore, b, Why::Own(view.class.unwrap_or(Class::Steady)))
    };
    // Never below what the VM had itself, when that was already low.
    (rule, Some(w.max(b.min(IO_WEIGHT_MIN))), Some(why))
}

/// Its bandwidth limit. `refused`: libvirt's words for the last refused
/// change, while it is left alone.
#[inline]
pub(super) fn net(vm: &Vm, c: &Contention, refused: Option<&str>) -> (Rule, Option<NetLimit>, Option<Why>) {
    let Vm { view, s, base, current } = *vm;
    let raised = |n: NetLimit| match s.net_max {
        Some(max) => NetLimit { inbound: raise(n.inbound, max), outbound: raise(n.outbound, max) },
        None => n,
    };
    let is_nb = is_net_bound(view, view.class);
    let (Some(b), Some(cur)) = (base.net, current.net) else {
        return (Rule::Restore, current.net, (is_nb && current.net.is_none()).then_some(Why::NetNoInterface));
    };
    let (rule, n, why) = if let Some(detail) = refused {
        (Rule::Restore, cur, Why::NetRefused(detail.to_owned()))
    } else if view.critical {
        (Rule::Critical, raised(b), Why::Critical)
    } else if view.class.is_none() {
        (Rule::Restore, cur, Why::Learning)
    } else if is_nb && c.net.conflict() {
        (Rule::Restore, b, Why::NetConflict { others: c.net.others(&view.vm) })
    } else if is_nb && b.unlimited() {
        (Rule::Restore, b, Why::NetUnlimited)
    } else if view.at_net_limit && raised(b) == b {
        (Rule::Restore, b, Why::NetAtLimitNoMax)
    } else if view.at_net_limit {
        (Rule::Boost, raised(b), Why::NetAtLimit)
    } else if is_nb {
        (Rule::Restore, b, Why::NetBelowLimit)
    } else {
        (Rule::Restore, b, Why::NetOwn(view.class.unwrap_or(Class::Steady)))
    };
    (rule, Some(n), Some(why))
}

/// Its disk's I/O limit, like the network's.
#[inline]
pub(super) fn disk_limit(vm: &Vm, c: &Contention) -> (Rule, Option<u64>, Option<Why>) {
    let Vm { view, s, base, current } = *vm;
    let raised = |b: u64| match s.disk_max {
        Some(max) if b > 0 => b.max(max.0),
        _ => b,
    };
    let (b, cur) = match (base.disk_limit, current.disk_limit) {
        (Some(b), Some(cur)) if b > 0 || cur > 0 => (b, cur),
        (_, cur) => return (Rule::Restore, cur, None),
    };
    let (rule, l, why) = if view.critical {
        (Rule::Critical, raised(b), Why::Critical)
    } else if view.class.is_none() {
        (Rule::Restore, cur, Why::Learning)
    } else if is_disk_bound(view) && c.disk.conflict() {
        (Rule::Restore, b, Why::DiskConflict { others: c.disk.others(&view.vm) })
    } else if view.at_disk_limit && raised(b) == b {
        (Rule::Restore, b, Why::DiskAtLimitNoMax)
    } else if view.at_disk_limit {
        (Rule::Boost, raised(b), Why::DiskAtLimit)
    } else {
        (Rule::Restore, b, Why::Own(view.class.unwrap_or(Class::Steady)))
    };
    (rule, Some(l), Some(why))
}

/// One direction's limit raised to `max`; an unlimited direction stays so,
/// and a peak set below the new average rises with it.
fn raise(b: Bandwidth, max: Bytes) -> Bandwidth {
    if b.average == 0 {
        return b;
    }
    let average = b.average.max(max.0 / KIB);
    let peak = if b.peak == 0 { 0 } else { b.peak.max(average) };
    Bandwidth { average, peak, ..b }
}
