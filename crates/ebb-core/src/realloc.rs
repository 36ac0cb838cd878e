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

use crate::model::*;
use crate::rates::ActivityRates;
use crate::units::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// The usage model and the size of the moves; host-wide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReallocConfig {
    pub enabled: bool,
    /// A new class counts once it has held this long. 10 s (5 ticks): a
    /// compile or a backup is classified, a burst of a page load is not.
    pub class_after_ms: u64,
    /// CPU use, as a fraction of the VM's vCPUs, at which it is cpu-bound…
    pub cpu_busy: f64,
    /// …and below which it stops being so (the band against flapping).
    pub cpu_busy_leave: f64,
    /// Use at this fraction of its cap or more: it sits at its cap.
    pub at_cap: f64,
    /// vCPU wait, in vCPUs' worth, that shows contention for host CPUs.
    pub wait_contended: f64,
    /// Host CPU used by VMs, as a fraction of the host's CPUs, at which the
    /// host is saturated: one VM's gain is then another's loss.
    pub saturated: f64,
    /// Disk and network rates at which a VM is bound on them (a VM at its
    /// bandwidth limit is net-bound at any rate).
    pub disk_busy: Bytes,
    pub net_busy: Bytes,
    /// At or below all of these a VM is idle (the sleep policy's defaults).
    pub idle_cpu: f64,
    pub idle_disk: Bytes,
    pub idle_net: Bytes,
    /// A VM that gains gets its weight multiplied by this (within its max)…
    pub boost: u64,
    /// …and an idle one divided by this (within its min).
    pub yield_divisor: u64,
}

impl Default for ReallocConfig {
    fn default() -> Self {
        ReallocConfig {
            enabled: true,
            class_after_ms: 10_000,
            cpu_busy: 0.8,
            cpu_busy_leave: 0.6,
            at_cap: 0.9,
            wait_contended: 0.1,
            saturated: 0.9,
            disk_busy: Bytes::from_mib(4),
            net_busy: Bytes::from_mib(1),
            idle_cpu: 0.05,
            idle_disk: Bytes::from_kib(64),
            idle_net: Bytes::from_kib(2),
            boost: 4,
            yield_divisor: 4,
        }
    }
}

/// Per-VM bounds and flags. Missing bounds follow from the VM's own weight
/// (its base): at most `boost` times it, at least its `yield_divisor`th.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReallocSettings {
    /// False: ebb leaves this VM's allocations alone.
    pub disabled: bool,
    /// Time-critical: put first while set.
    pub critical: bool,
    pub shares_min: Option<u64>,
    pub shares_max: Option<u64>,
    /// The highest cap ebb may give it, as a fraction of one vCPU (1.0 = a
    /// whole CPU per vCPU). None: ebb never raises its cap above its own.
    pub cap_max: Option<f64>,
    /// The highest bandwidth limit (per second, each direction) ebb may
    /// give it. None: ebb never raises its limit above its own.
    #[serde(default)]
    pub net_max: Option<Bytes>,
    /// The highest disk I/O limit (`blkdeviotune`, bytes per second) ebb
    /// may give it. None: ebb never raises its limit above its own.
    #[serde(default)]
    pub disk_max: Option<Bytes>,
    /// The class its history (the needs database) gives for this hour: a
    /// VM that starts or returns begins there instead of unclassified.
    pub expected: Option<Class>,
}

/// What a VM's activity is bound on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Idle,
    /// Busy, bound on nothing.
    Steady,
    CpuBound,
    DiskBound,
    NetBound,
    /// Bound on more than one resource.
    Mixed,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Idle => "idle",
            Class::Steady => "steady",
            Class::CpuBound => "cpu-bound",
            Class::DiskBound => "disk-bound",
            Class::NetBound => "net-bound",
            Class::Mixed => "mixed",
        }
    }
}

/// The resources a VM is bound on at one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub cpu: bool,
    pub disk: bool,
    pub net: bool,
}

impl Bound {
    fn class(self, idle: bool) -> Class {
        match (self.cpu, self.disk, self.net) {
            (false, false, false) if idle => Class::Idle,
            (false, false, false) => Class::Steady,
            (true, false, false) => Class::CpuBound,
            (false, true, false) => Class::DiskBound,
            (false, false, true) => Class::NetBound,
            _ => Class::Mixed,
        }
    }
}

/// Why a VM has the tune it has. Kept as data and put in words only when
/// shown: formatting 10,000 sentences a tick would cost more than deciding.
/// Crosses the API as its text.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    Critical,
    Learning,
    /// Bound on the CPU with others on a saturated host.
    Conflict { others: Others, host_cpus: u32, busy: f64 },
    AtCapNoCapMax,
    AtCap,
    Saturated,
    Waiting,
    Idle,
    /// Cpu-bound but nothing holds it back.
    NoGain { cpu_use: f64 },
    Own(Class),
    DiskBound,
    DiskConflict { others: Others },
    DiskIdle,
    /// Disk-bound at its I/O limit: raised to `disk_max`…
    DiskAtLimit,
    /// …which its settings do not give.
    DiskAtLimitNoMax,
    /// Net-bound at its bandwidth limit: raised to `net_max`.
    NetAtLimit,
    NetAtLimitNoMax,
    /// Net-bound with no limit on its interface.
    NetUnlimited,
    /// Net-bound but below its limit.
    NetBelowLimit,
    /// Net-bound, and none of its interfaces can take a limit.
    NetNoInterface,
    NetConflict { others: Others },
    /// libvirt refused the last bandwidth change (its words).
    NetRefused(String),
    /// Anything else: its own limit.
    NetOwn(Class),
    /// As read back from the API.
    Text(String),
}

/// The others a VM conflicts with: a few named (shared by every VM of the
/// conflict), the VM itself left out when shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Others {
    named: Arc<[VmId]>,
    me: VmId,
    total: usize,
}

impl Others {
    /// "a, b, c" or "a, b, c, others".
    fn names(&self) -> String {
        let mut names: Vec<&str> = self.named.iter().filter(|v| **v != self.me).take(3).map(VmId::as_str).collect();
        if self.total > names.len() + 1 {
            names.push("others");
        }
        names.join(", ")
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Critical => f.write_str("time-critical: put first"),
            Why::Learning => f.write_str("learning its activity, no class yet: no change"),
            Why::Conflict { others, host_cpus, busy } => {
                let names = others.names();
                write!(
                    f,
                    "cpu-bound, as is {}, on a host whose {host_cpus} CPUs are all asked for ({busy:.1} CPUs' worth): raising one would only rob the other, so neither changes",
                    names
                )
            }
            Why::AtCapNoCapMax => {
                f.write_str("cpu-bound at its cap; its settings allow no higher cap (cap_max), so only its weight rises")
            }
            Why::AtCap => f.write_str("cpu-bound at its cap: it would gain from a higher cap"),
            Why::Saturated => f.write_str("cpu-bound on a host whose CPUs are all in use: it gains from a higher weight"),
            Why::Waiting => f.write_str("cpu-bound and its vCPUs wait for host CPUs: it gains from a higher weight"),
            Why::Idle => f.write_str("idle: its weight is cut until it is busy again"),
            Why::NoGain { cpu_use } => write!(
                f,
                "cpu-bound ({:.0}% of its vCPUs) but it gets all the CPU it asks for: more would not help",
                cpu_use * 100.0
            ),
            Why::Own(class) => write!(f, "{}: its own weight", class.as_str()),
            Why::DiskBound => f.write_str("disk-bound: it gets a higher disk weight"),
            Why::DiskConflict { others } => {
                let names = others.names();
                write!(f, "disk-bound, as is {}: raising one's disk weight would only rob the other, so neither changes", names)
            }
            Why::DiskIdle => f.write_str("idle while another VM is disk-bound: its disk weight is cut"),
            Why::DiskAtLimit => f.write_str("disk-bound at its I/O limit: it gets a higher limit, up to disk_max"),
            Why::DiskAtLimitNoMax => {
                f.write_str("disk-bound at its I/O limit; its settings allow no higher limit (disk_max), so it keeps its own")
            }
            Why::NetAtLimit => f.write_str("net-bound at its bandwidth limit: it gets a higher limit, up to net_max"),
            Why::NetAtLimitNoMax => {
                f.write_str("net-bound at its bandwidth limit; its settings allow no higher limit (net_max), so it keeps its own")
            }
            Why::NetUnlimited => f.write_str("net-bound with no bandwidth limit on its interface: ebb has no limit to raise"),
            Why::NetBelowLimit => f.write_str("net-bound but below its bandwidth limit: a higher limit would not help"),
            Why::NetNoInterface => f.write_str(
                "net-bound, but none of its interfaces can take a bandwidth limit (QEMU user-mode networking cannot; bridge, network, direct and ethernet ones can): nothing to raise",
            ),
            Why::NetConflict { others } => {
                let names = others.names();
                write!(f, "net-bound, as is {}: raising one's bandwidth would only rob the other, so neither changes", names)
            }
            Why::NetRefused(detail) => write!(
                f,
                "libvirt refused its last bandwidth change ({detail}): its limit is left as it is for {} minutes",
                NET_RETRY_AFTER_MS / 60_000
            ),
            Why::NetOwn(class) => write!(f, "{}: its own bandwidth limit", class.as_str()),
            Why::Text(t) => f.write_str(t),
        }
    }
}

reason_as_text!(Why);

/// One VM as the reallocation policy sees it, for `ebb vms` and `explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmReallocView {
    pub vm: VmId,
    /// None until a class has held for `class_after`.
    pub class: Option<Class>,
    pub bound: Bound,
    /// A different class it is showing, and since when.
    pub pending: Option<(Class, Millis)>,
    /// The class its history gives for this hour, which it started from.
    #[serde(default)]
    pub expected: Option<Class>,
    pub rates: Option<ActivityRates>,
    /// CPU use as a fraction of its vCPUs.
    pub cpu_use: Option<f64>,
    pub at_cap: bool,
    /// Bound on the CPU, and more CPU would help it (held like its class).
    pub gains: bool,
    /// …and it competes with other VMs for host CPUs.
    pub contended: bool,
    pub critical: bool,
    /// Its own CPU tune, as found before ebb changed it.
    pub base: Option<Tune>,
    /// What libvirt has now.
    pub current: Option<Tune>,
    /// What ebb wants it to have.
    pub wanted: Option<Tune>,
    /// Why it has the CPU tune it has; in words through `Display`.
    pub why: Option<Why>,
    /// Why it has the disk weight it has; None without a disk weight.
    #[serde(default)]
    pub io_why: Option<Why>,
    /// Its traffic sits at its own bandwidth limit (held like its class).
    #[serde(default)]
    pub at_net_limit: bool,
    /// Why it has the bandwidth limit it has; None when it has no
    /// interface that can take one and is not net-bound.
    #[serde(default)]
    pub net_why: Option<Why>,
    /// At its own disk I/O limit, held like its class.
    #[serde(default)]
    pub at_disk_limit: bool,
    /// Why its disk I/O limit is what it is; None when its disk has none.
    #[serde(default)]
    pub disk_why: Option<Why>,
    /// Why ebb leaves it alone this tick.
    pub skipped: Option<String>,
}

impl VmReallocView {
    pub(crate) fn new(vm: VmId) -> VmReallocView {
        VmReallocView {
            vm,
            class: None,
            bound: Bound::default(),
            pending: None,
            expected: None,
            rates: None,
            cpu_use: None,
            at_cap: false,
            gains: false,
            contended: false,
            critical: false,
            base: None,
            current: None,
            wanted: None,
            why: None,
            io_why: None,
            at_net_limit: false,
            net_why: None,
            at_disk_limit: false,
            disk_why: None,
            skipped: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReallocDecision {
    pub actions: Vec<Action>,
    /// One view per observed VM, in observation order.
    pub views: Vec<VmReallocView>,
    /// What the VMs ask of the host's CPUs: what they ran plus what their
    /// vCPUs waited to run (a capped VM's wait included), in CPUs' worth.
    pub host_demand: f64,
    /// Whether that demand saturates the host's CPUs (held like a class).
    pub saturated: bool,
}

/// A VM's CPU tune as ebb found it and as ebb last set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunes {
    pub base: Tune,
    /// None: ebb has nothing of its own in place.
    pub applied: Option<Tune>,
}

/// A value that changes only once a new one has been seen for a while.
#[derive(Clone, Debug)]
struct Held<T> {
    value: Option<T>,
    pending: Option<(T, Millis)>,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held { value: None, pending: None }
    }
}

impl<T: Copy + PartialEq> Held<T> {
    fn see(&mut self, seen: T, now: Millis, hold_ms: u64) {
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
struct Track {
    /// The tick that last saw it running: tracks not seen this tick go.
    seen: Millis,
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

    /// The edge carried a `SetTune` out.
    pub fn applied(&mut self, vm: &VmId, tune: Tune) {
        let per = self.per_vm(vm);
        if let Some(t) = per.tunes.as_mut() {
            t.applied = (tune != t.base).then_some(tune);
        }
        per.retry_at = None;
    }

    /// libvirt refused a `SetTune`: it is not retried for a minute.
    pub fn failed(&mut self, vm: &VmId, now: Millis) {
        self.per_vm(vm).retry_at = Some(now.plus(RETRY_AFTER_MS));
    }

    fn per_vm(&mut self, vm: &VmId) -> &mut PerVm {
        let i = *self.index.entry(vm.clone()).or_insert_with(|| {
            self.vms.push(PerVm::new(vm.clone()));
            self.vms.len() - 1
        });
        &mut self.vms[i]
    }

    /// Puts `vms` in the observation's order when it is not already (a VM
    /// came or went, or libvirt listed them differently): entries of VMs
    /// not observed go last, and only while they hold tunes.
    fn align(&mut self, obs: &Observation) {
        let n = obs.vms.len();
        let aligned = self.vms.len() >= n && obs.vms.iter().zip(&self.vms).all(|(o, p)| o.id == p.id);
        if aligned {
            return;
        }
        let mut old: HashMap<VmId, PerVm> = self.vms.drain(..).map(|p| (p.id.clone(), p)).collect();
        self.vms.extend(obs.vms.iter().map(|o| old.remove(&o.id).unwrap_or_else(|| PerVm::new(o.id.clone()))));
        let mut rest: Vec<PerVm> = old.into_values().filter(|p| p.tunes.is_some()).collect();
        rest.sort_by(|a, b| a.id.cmp(&b.id));
        self.vms.extend(rest);
        self.index = self.vms.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
    }

    /// libvirt refused the bandwidth part of a `SetTune` (before touching
    /// the rest): the limit stays as it is for ten minutes, the CPU and
    /// disk go on at once, and the view says why.
    pub fn net_failed(&mut self, vm: &VmId, now: Millis, detail: impl Into<String>) {
        self.per_vm(vm).net_refused = Some((now.plus(NET_RETRY_AFTER_MS), detail.into()));
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
        let mut d = ReallocDecision::default();

        // Read: rates, bound, class, and whose tunes changed behind ebb.
        let own: Vec<&ReallocSettings> = (0..obs.vms.len()).map(|i| settings.get(i).unwrap_or(&defaults)).collect();
        self.align(obs);
        for ((v, per), &s) in obs.vms.iter().zip(self.vms.iter_mut()).zip(&own) {
            let mut view = VmReallocView::new(v.id.clone());
            view.critical = s.critical;
            view.expected = s.expected;
            view.current = v.tune;
            let (Some(activity), Some(current), VmState::Running) = (v.activity, v.tune, v.state) else {
                view.skipped = Some(match (v.state, v.tune) {
                    (VmState::Running, None) => "libvirt reports no CPU scheduler parameters for it".into(),
                    (VmState::Running, Some(_)) => "the hypervisor reports no activity counters for it".into(),
                    (state, _) => format!("not running ({state})"),
                });
                d.views.push(view);
                continue;
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
                track.class.see(bound.class(idle), now, cfg.class_after_ms);
                view.rates = Some(r);
                view.cpu_use = Some(demand);
                view.at_cap = at_cap;
                view.bound = bound;
                track.net_gains.see(at_net_limit, now, cfg.class_after_ms);
                track.disk_gains.see(at_disk_limit, now, cfg.class_after_ms);
                d.host_demand += (r.cpu + r.vcpu_wait).min(vcpus);
                // Against the last tick's saturation: one pass over the VMs.
                let waits = r.vcpu_wait >= cfg.wait_contended;
                let saturated = self.saturated_last;
                track.gains.see(bound.cpu && (at_cap || waits || saturated), now, cfg.class_after_ms);
                // A capped VM's wait is its own cap holding it back.
                track.contended.see(bound.cpu && ((waits && !at_cap) || saturated), now, cfg.class_after_ms);
            }
            view.gains = matches!(track.class.value, Some(Class::CpuBound | Class::Mixed)) && track.gains.value == Some(true);
            // Contention counts from the moment it shows, held or not: a
            // boost must not slip in before a neighbour's claim is confirmed.
            view.contended = matches!(track.class.value, Some(Class::CpuBound | Class::Mixed))
                && (track.contended.value == Some(true) || matches!(track.contended.pending, Some((true, _))));
            // Held like the class: a raised limit lets its rate pass the old
            // one, and a dip below it for a tick must not undo the raise.
            view.at_net_limit = is_net_bound(&view, track.class.value) && track.net_gains.value == Some(true);
            view.at_disk_limit = matches!(track.class.value, Some(Class::DiskBound | Class::Mixed))
                && view.bound.disk
                && track.disk_gains.value == Some(true);
            view.class = track.class.value;
            view.pending = track.class.pending;
            if s.disabled {
                view.skipped = Some("reallocation is disabled for this VM".into());
            }
            d.views.push(view);
        }
        for per in &mut self.vms {
            if per.track.as_ref().is_some_and(|t| t.seen != now) {
                per.track = None;
            }
        }
        let host_cpus = f64::from(obs.host_cpus.max(1));
        // On demand, not use: raising a capped VM's cap must not be what
        // makes the host saturated (and then undone as a conflict).
        self.saturated_last = d.host_demand >= cfg.saturated * host_cpus;
        self.saturated.see(self.saturated_last, now, cfg.class_after_ms);
        d.saturated = self.saturated.value == Some(true);

        // The conflict check: two or more VMs that would gain, competing
        // for the same host CPUs: raising one robs the other.
        let contenders: Vec<VmId> = d
            .views
            .iter()
            .filter(|v| v.skipped.is_none() && !v.critical && v.contended)
            .map(|v| v.vm.clone())
            .collect();
        let conflict = contenders.len() >= 2;
        // Cutting an idle VM's weight only matters when someone can use it.
        let someone_gains = d.views.iter().any(|v| v.skipped.is_none() && (v.critical || v.gains));
        // The disk: libvirt's counters show no disk contention, so a
        // disk-bound VM is taken to gain (a weight only matters when the
        // host's disks are contended), and two disk-bound VMs conflict.
        let disk_bound: Vec<VmId> = d
            .views
            .iter()
            .filter(|v| v.skipped.is_none() && !v.critical && is_disk_bound(v))
            .map(|v| v.vm.clone())
            .collect();
        let disk_conflict = disk_bound.len() >= 2;
        let someone_gains_disk = disk_bound.len() == 1 || d.views.iter().any(|v| v.skipped.is_none() && v.critical);
        // The network, likewise: net-bound VMs share the host's links, so a
        // higher limit for one robs any other net-bound VM.
        let net_bound: Vec<VmId> = d
            .views
            .iter()
            .filter(|v| v.skipped.is_none() && !v.critical && is_net_bound(v, v.class))
            .map(|v| v.vm.clone())
            .collect();
        let net_conflict = net_bound.len() >= 2;

        // Each conflict's reason names up to three of the others, from one
        // shared list: thousands of contenders must not cost n² or n lists.
        let named = |all: &[VmId]| -> Arc<[VmId]> { all.iter().take(4).cloned().collect() };
        let (named_contenders, named_disk_bound, named_net_bound) = (named(&contenders), named(&disk_bound), named(&net_bound));

        // Decide each VM's tune.
        for ((view, s), per) in d.views.iter_mut().zip(own).zip(&self.vms).filter(|((v, _), _)| v.skipped.is_none()) {
            let retry_at = per.retry_at;
            let net_refused = per.net_refused.as_ref().filter(|(until, _)| now < *until);
            let (Some(base), Some(current)) = (view.base, view.current) else { continue };
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
            let (cpu_rule, cpu_wanted, cpu_why) = if view.critical {
                let tune = Tune { shares: shares_max, quota_us: raised_cap(s.cap_max), ..base };
                (Rule::Critical, tune, Why::Critical)
            } else if view.class.is_none() {
                // What is in place stays: after a restart that is ebb's own
                // change, known from the journal, neither undone nor redone.
                (Rule::Restore, current, Why::Learning)
            } else if view.contended && conflict {
                // Named up to three: thousands of contenders must not cost n².
                let others = Others { named: named_contenders.clone(), me: view.vm.clone(), total: contenders.len() };
                let why = Why::Conflict { others, host_cpus: obs.host_cpus, busy: d.host_demand };
                (Rule::Restore, base, why)
            } else if view.gains {
                let tune = Tune {
                    shares: base.shares.saturating_mul(cfg.boost).min(shares_max),
                    quota_us: raised_cap(s.cap_max),
                    ..base
                };
                let why = match (view.at_cap, d.saturated) {
                    (true, _) if tune.quota_us == base.quota_us => Why::AtCapNoCapMax,
                    (true, _) => Why::AtCap,
                    (false, true) => Why::Saturated,
                    (false, false) => Why::Waiting,
                };
                (Rule::Boost, tune, why)
            } else if view.class == Some(Class::Idle) && someone_gains {
                let tune = Tune { shares: (base.shares / cfg.yield_divisor.max(1)).max(shares_min), ..base };
                (Rule::Yield, tune, Why::Idle)
            } else if matches!(view.class, Some(Class::CpuBound | Class::Mixed)) {
                (Rule::Restore, base, Why::NoGain { cpu_use: view.cpu_use.unwrap_or(0.0) })
            } else {
                (Rule::Restore, base, Why::Own(view.class.unwrap_or(Class::Steady)))
            };
            let (io_rule, io_weight, io_why) = match (base.io_weight, current.io_weight) {
                (Some(b), Some(c)) => {
                    let (rule, w, why) = if view.critical {
                        (Rule::Critical, IO_WEIGHT_MAX, Why::Critical)
                    } else if view.class.is_none() {
                        (Rule::Restore, c, Why::Learning)
                    } else if is_disk_bound(view) && disk_conflict {
                        let others = Others { named: named_disk_bound.clone(), me: view.vm.clone(), total: disk_bound.len() };
                        (Rule::Restore, b, Why::DiskConflict { others })
                    } else if is_disk_bound(view) {
                        // In u64, as boost and yield_divisor are: a cast to u32 would cut 2^32 to 0.
                        let raised = u64::from(b).saturating_mul(cfg.boost).min(u64::from(IO_WEIGHT_MAX));
                        (Rule::Boost, raised as u32, Why::DiskBound)
                    } else if view.class == Some(Class::Idle) && someone_gains_disk {
                        let cut = u64::from(b) / cfg.yield_divisor.max(1);
                        (Rule::Yield, (cut as u32).max(IO_WEIGHT_MIN), Why::DiskIdle)
                    } else {
                        (Rule::Restore, b, Why::Own(view.class.unwrap_or(Class::Steady)))
                    };
                    // Never below what the VM had itself, when that was already low.
                    (rule, Some(w.max(b.min(IO_WEIGHT_MIN))), Some(why))
                }
                _ => (Rule::Restore, current.io_weight, None),
            };
            let raised_net = |n: NetLimit| match s.net_max {
                Some(max) => NetLimit { inbound: raise(n.inbound, max), outbound: raise(n.outbound, max) },
                None => n,
            };
            let is_nb = is_net_bound(view, view.class);
            let (net_rule, net, net_why) = match (base.net, current.net) {
                (Some(b), Some(c)) => {
                    let (rule, n, why) = if let Some((_, detail)) = net_refused {
                        (Rule::Restore, c, Why::NetRefused(detail.clone()))
                    } else if view.critical {
                        (Rule::Critical, raised_net(b), Why::Critical)
                    } else if view.class.is_none() {
                        (Rule::Restore, c, Why::Learning)
                    } else if is_nb && net_conflict {
                        let others = Others { named: named_net_bound.clone(), me: view.vm.clone(), total: net_bound.len() };
                        (Rule::Restore, b, Why::NetConflict { others })
                    } else if is_nb && b.unlimited() {
                        (Rule::Restore, b, Why::NetUnlimited)
                    } else if view.at_net_limit && raised_net(b) == b {
                        (Rule::Restore, b, Why::NetAtLimitNoMax)
                    } else if view.at_net_limit {
                        (Rule::Boost, raised_net(b), Why::NetAtLimit)
                    } else if is_nb {
                        (Rule::Restore, b, Why::NetBelowLimit)
                    } else {
                        (Rule::Restore, b, Why::NetOwn(view.class.unwrap_or(Class::Steady)))
                    };
                    (rule, Some(n), Some(why))
                }
                (_, c) => (Rule::Restore, c, (is_nb && c.is_none()).then_some(Why::NetNoInterface)),
            };
            // The disk's I/O limit, like the network's.
            let raised_disk = |b: u64| match s.disk_max {
                Some(max) if b > 0 => b.max(max.0),
                _ => b,
            };
            let (disk_rule, disk_limit, disk_why) = match (base.disk_limit, current.disk_limit) {
                (Some(b), Some(c)) if b > 0 || c > 0 => {
                    let (rule, l, why) = if view.critical {
                        (Rule::Critical, raised_disk(b), Why::Critical)
                    } else if view.class.is_none() {
                        (Rule::Restore, c, Why::Learning)
                    } else if is_disk_bound(view) && disk_conflict {
                        let others = Others { named: named_disk_bound.clone(), me: view.vm.clone(), total: disk_bound.len() };
                        (Rule::Restore, b, Why::DiskConflict { others })
                    } else if view.at_disk_limit && raised_disk(b) == b {
                        (Rule::Restore, b, Why::DiskAtLimitNoMax)
                    } else if view.at_disk_limit {
                        (Rule::Boost, raised_disk(b), Why::DiskAtLimit)
                    } else {
                        (Rule::Restore, b, Why::Own(view.class.unwrap_or(Class::Steady)))
                    };
                    (rule, Some(l), Some(why))
                }
                (_, c) => (Rule::Restore, c, None),
            };
            let wanted = Tune { io_weight, net, disk_limit, ..cpu_wanted };
            view.wanted = Some(wanted);
            view.why = Some(cpu_why);
            view.io_why = io_why;
            view.net_why = net_why;
            view.disk_why = disk_why;
            if wanted == current || retry_at.is_some_and(|t| now < t) {
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
            let text = format!("{why}{}: {current} → {wanted}", rates_words(view));
            d.actions.push(Action::SetTune { vm: view.vm.clone(), tune: wanted, reason: Reason::new(rule, text) });
        }
        d
    }
}

/// libvirt's blkio weight range (cgroup v1).
const IO_WEIGHT_MIN: u32 = 100;
const IO_WEIGHT_MAX: u32 = 1000;

fn is_disk_bound(v: &VmReallocView) -> bool {
    v.class == Some(Class::DiskBound) || (v.class == Some(Class::Mixed) && v.bound.disk)
}

/// Net-bound by its held class (passed apart: it is asked before the view
/// has its class).
fn is_net_bound(v: &VmReallocView, class: Option<Class>) -> bool {
    class == Some(Class::NetBound) || (class == Some(Class::Mixed) && v.bound.net)
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

/// " (CPU 97% of its 1 vCPU, waiting 0%)": the numbers behind a change.
fn rates_words(v: &VmReallocView) -> String {
    match (v.rates, v.cpu_use) {
        (Some(r), Some(u)) => format!(
            " (CPU {:.0}% of its vCPUs, vCPU wait {:.0}%, disk {}/s, network {}/s)",
            u * 100.0,
            r.vcpu_wait * 100.0,
            r.disk,
            r.net
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TUNE: Tune = Tune { shares: 1024, quota_us: None, period_us: 100_000, io_weight: None, net: None, disk_limit: None };

    fn capped(frac: f64) -> Tune {
        Tune { quota_us: Some((frac * 100_000.0) as u64), ..TUNE }
    }

    fn vm(name: &str, vcpus: u32, cpu_time_ns: u64, tune: Tune) -> VmObservation {
        VmObservation {
            id: VmId::new(name),
            state: VmState::Running,
            balloon: None,
            activity: Some(Activity { cpu_time_ns, vcpus, ..Activity::default() }),
            persistent: true,
            managed_save: false,
            tune: Some(tune),
        }
    }

    /// The map's settings in the observation's order, as the agent builds them.
    fn aligned(o: &Observation, settings: &BTreeMap<VmId, ReallocSettings>) -> Vec<ReallocSettings> {
        o.vms.iter().map(|v| settings.get(&v.id).cloned().unwrap_or_default()).collect()
    }

    fn obs(host_cpus: u32, vms: Vec<VmObservation>) -> Observation {
        Observation { at: Millis(0), host: HostMemory::default(), host_cpus, vms }
    }

    /// VMs whose CPU counters run at a given rate, and whose tunes follow
    /// what the policy sets, as libvirt's would.
    #[derive(Default)]
    struct World {
        tunes: BTreeMap<String, Tune>,
        cpu_ns: BTreeMap<String, u64>,
        /// Disk bytes per second, by VM (none: 0).
        disk_rate: BTreeMap<String, u64>,
        disk_bytes: BTreeMap<String, u64>,
        wait_ns: BTreeMap<String, u64>,
        /// Bytes per second each VM would send, by VM (none: 0); its
        /// outbound limit lets that much through, as tc's would.
        net_offered: BTreeMap<String, u64>,
        net_bytes: BTreeMap<String, u64>,
        /// Every change the policy made, in order.
        changes: Vec<(String, Tune)>,
        settings: BTreeMap<VmId, ReallocSettings>,
        cfg: ReallocConfig,
    }

    impl World {
        fn with(vms: &[(&str, Tune)]) -> World {
            World { tunes: vms.iter().map(|(n, t)| (n.to_string(), *t)).collect(), ..World::default() }
        }

        fn tune(&self, name: &str) -> Tune {
            self.tunes[name]
        }

        /// Ticks every 2 s from `start` for `secs`; `vms` are (name, vCPUs, CPUs' worth used).
        fn run(&mut self, p: &mut ReallocPolicy, start: u64, secs: u64, host_cpus: u32, vms: &[(&str, u32, f64)]) -> ReallocDecision {
            let cfg = self.cfg.clone();
            let mut last = ReallocDecision::default();
            for t in (start..=start + secs).step_by(2) {
                let at = Millis(t * 1000);
                let o = obs(
                    host_cpus,
                    vms.iter()
                        .map(|(n, c, u)| {
                            // `u` is what it asks for; its cap lets it run
                            // that much, the rest waits (as Linux counts a
                            // throttled vCPU's delay).
                            let tune = self.tunes[*n];
                            let ran = tune.cap().map_or(*u, |cap| u.min(cap * f64::from(*c)));
                            let ns = self.cpu_ns.entry(n.to_string()).or_default();
                            *ns += (ran * 2e9) as u64;
                            let wait = self.wait_ns.entry(n.to_string()).or_default();
                            *wait += ((u - ran).max(0.0) * 2e9) as u64;
                            let disk = self.disk_bytes.entry(n.to_string()).or_default();
                            // Its disk's I/O limit lets that much through, as QEMU's throttle would.
                            let wants = self.disk_rate.get(*n).copied().unwrap_or(0);
                            *disk += 2 * tune.disk_limit.filter(|l| *l > 0).map_or(wants, |l| wants.min(l));
                            let wait = *wait;
                            let offered = self.net_offered.get(*n).copied().unwrap_or(0);
                            let let_through = tune.net.and_then(|l| l.outbound.limit()).map_or(offered, |l| offered.min(l.0));
                            let sent = self.net_bytes.entry(n.to_string()).or_default();
                            *sent += 2 * let_through;
                            let sent = *sent;
                            let mut o = vm(n, *c, *ns, self.tunes[*n]);
                            o.activity.as_mut().unwrap().net_tx_bytes = sent;
                            o.activity.as_mut().unwrap().disk_write_bytes = *disk;
                            o.activity.as_mut().unwrap().vcpu_wait_ns = wait;
                            o
                        })
                        .collect(),
                );
                last = p.decide(&o, &aligned(&o, &self.settings), &cfg, at);
                for a in &last.actions {
                    if let Action::SetTune { vm, tune, .. } = a {
                        self.changes.push((vm.as_str().to_string(), *tune));
                        self.tunes.insert(vm.as_str().to_string(), *tune);
                        p.applied(vm, *tune);
                    }
                }
            }
            last
        }
    }

    fn view<'a>(d: &'a ReallocDecision, name: &str) -> &'a VmReallocView {
        d.views.iter().find(|v| v.vm.as_str() == name).unwrap()
    }

    #[test]
    fn busy_at_its_cap_is_raised_idle_yields_and_both_return() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("busy", capped(0.3)), ("idle", TUNE)]);
        w.settings.insert(VmId::new("busy"), ReallocSettings { cap_max: Some(1.0), ..Default::default() });
        let d = w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3), ("idle", 1, 0.01)]);
        assert_eq!(view(&d, "busy").class, Some(Class::CpuBound));
        assert_eq!(view(&d, "idle").class, Some(Class::Idle));
        let raised = Tune { shares: 4096, quota_us: Some(100_000), ..TUNE };
        assert_eq!(w.tune("busy"), raised);
        assert_eq!(w.tune("idle").shares, 256);
        // Load gone: not before class_after, then both back where they were.
        let d = w.run(&mut p, 22, 6, 2, &[("busy", 1, 0.01), ("idle", 1, 0.2)]);
        assert_eq!(w.tune("busy"), raised, "not before class_after");
        assert_eq!(view(&d, "busy").pending.map(|p| p.0), Some(Class::Idle));
        w.run(&mut p, 30, 10, 2, &[("busy", 1, 0.01), ("idle", 1, 0.2)]);
        assert_eq!(w.tune("busy"), capped(0.3), "its own weight and cap back");
        assert_eq!(w.tune("idle"), TUNE, "nobody gains: its own weight back");
    }

    #[test]
    fn without_cap_max_only_the_weight_rises() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("busy", capped(0.3))]);
        let d = w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3)]);
        assert_eq!(w.tune("busy"), Tune { shares: 4096, ..capped(0.3) });
        assert!(view(&d, "busy").why.as_ref().unwrap().to_string().contains("cap_max"));
    }

    #[test]
    fn two_cpu_bound_on_a_saturated_host_is_a_conflict_and_nothing_changes() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", TUNE), ("b", TUNE)]);
        let d = w.run(&mut p, 0, 30, 2, &[("a", 1, 1.0), ("b", 1, 0.95)]);
        assert!(d.saturated);
        assert_eq!((w.tune("a"), w.tune("b")), (TUNE, TUNE));
        let why = view(&d, "a").why.as_ref().unwrap().to_string();
        assert!(why.contains("as is b") && why.contains("rob"), "{why}");
        assert!(d.actions.is_empty());
    }

    #[test]
    fn raising_a_cap_into_a_busy_neighbour_is_a_steady_conflict() {
        // Capped at 30% but asking for a whole CPU, beside a busy neighbour
        // on two CPUs: together they ask for both CPUs, so raising the cap
        // would rob the neighbour. Nothing changes, tick after tick.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("capped", capped(0.3)), ("busy", TUNE)]);
        w.settings.insert(VmId::new("capped"), ReallocSettings { cap_max: Some(1.0), ..Default::default() });
        for start in [0, 32, 64] {
            let d = w.run(&mut p, start, 30, 2, &[("capped", 1, 1.0), ("busy", 1, 1.0)]);
            assert!(d.saturated);
            assert_eq!((w.tune("capped"), w.tune("busy")), (capped(0.3), TUNE), "at {start} s");
            assert!(view(&d, "capped").why.as_ref().unwrap().to_string().contains("rob"));
        }
        assert_eq!(w.changes, vec![], "not even for a moment");
        // The neighbour goes quiet: now the cap rises.
        w.run(&mut p, 96, 30, 2, &[("capped", 1, 1.0), ("busy", 1, 0.0)]);
        assert_eq!(w.tune("capped").quota_us, Some(100_000));
    }

    #[test]
    fn two_at_their_caps_with_cpu_to_spare_both_gain() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", capped(0.3)), ("b", capped(0.3))]);
        for n in ["a", "b"] {
            w.settings.insert(VmId::new(n), ReallocSettings { cap_max: Some(0.6), ..Default::default() });
        }
        let d = w.run(&mut p, 0, 20, 4, &[("a", 1, 0.3), ("b", 1, 0.3)]);
        assert!(!d.saturated);
        assert_eq!((w.tune("a").shares, w.tune("b").shares), (4096, 4096), "{:?}", d.views);
        assert_eq!(w.tune("a").quota_us, Some(60_000));
    }

    #[test]
    fn one_cpu_bound_with_cpu_to_spare_would_not_gain() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", TUNE)]);
        let d = w.run(&mut p, 0, 20, 4, &[("a", 1, 0.97)]);
        assert_eq!(w.tune("a"), TUNE);
        assert!(view(&d, "a").why.as_ref().unwrap().to_string().contains("would not help"));
        // At 30% of a whole-vCPU cap it is not at its cap either.
        let mut w = World::with(&[("a", capped(1.0))]);
        let d = w.run(&mut ReallocPolicy::new(), 0, 20, 4, &[("a", 1, 0.3)]);
        assert_eq!(w.tune("a"), capped(1.0));
        assert_eq!(view(&d, "a").class, Some(Class::Steady));
    }

    #[test]
    fn waiting_vcpus_show_contention() {
        let mut p = ReallocPolicy::new();
        let cfg = ReallocConfig::default();
        let mut d = ReallocDecision::default();
        for t in 0..=10u64 {
            let mut o = obs(4, vec![vm("a", 1, t * 2_000_000_000 * 95 / 100, TUNE)]);
            o.vms[0].activity.as_mut().unwrap().vcpu_wait_ns = t * 2_000_000_000 / 5;
            d = p.decide(&o, &[], &cfg, Millis(t * 2000));
        }
        assert_eq!(d.actions.len(), 1, "{:?}", d.views);
        assert!(d.actions[0].reason().text.contains("wait for host CPUs"), "{:?}", d.actions[0]);
    }

    #[test]
    fn a_disk_bound_vm_gets_the_disk_weight_and_two_conflict() {
        let disk = Tune { io_weight: Some(500), ..TUNE };
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("db", disk), ("idle", disk)]);
        w.disk_rate.insert("db".into(), 8 << 20);
        let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!(view(&d, "db").class, Some(Class::DiskBound));
        assert_eq!((w.tune("db").io_weight, w.tune("idle").io_weight), (Some(1000), Some(125)));
        assert_eq!((w.tune("db").shares, w.tune("idle").shares), (1024, 1024), "the CPU is not what it needs");
        // The writes stop: both back.
        w.disk_rate.clear();
        w.run(&mut p, 22, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!((w.tune("db"), w.tune("idle")), (disk, disk));
        // Two disk-bound: neither changes, and the view says why.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", disk), ("b", disk)]);
        w.disk_rate.insert("a".into(), 8 << 20);
        w.disk_rate.insert("b".into(), 8 << 20);
        let d = w.run(&mut p, 0, 20, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
        assert_eq!((w.tune("a"), w.tune("b")), (disk, disk));
        assert!(view(&d, "a").io_why.as_ref().unwrap().to_string().contains("as is b"));
    }

    #[test]
    fn weights_from_libvirt_under_its_minimum_cannot_panic() {
        // cgroup v2 lets cpu_shares be 1; a driver may say 0.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("busy", Tune { shares: 1, ..capped(0.3) }), ("idle", Tune { shares: 1, ..TUNE }), ("zero", Tune { shares: 0, ..TUNE })]);
        w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3), ("idle", 1, 0.0), ("zero", 1, 0.0)]);
        assert_eq!((w.tune("busy").shares, w.tune("idle").shares, w.tune("zero").shares), (4, 1, 0), "raised by boost; never cut below their own");
    }

    #[test]
    fn a_boost_or_divisor_past_u32_neither_divides_by_zero_nor_cuts_the_disk_bound() {
        let disk = Tune { io_weight: Some(500), ..TUNE };
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("db", disk), ("idle", disk)]);
        w.cfg = ReallocConfig { boost: 1 << 32, yield_divisor: 1 << 32, ..ReallocConfig::default() };
        w.disk_rate.insert("db".into(), 8 << 20);
        w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!((w.tune("db").io_weight, w.tune("idle").io_weight), (Some(1000), Some(100)));
    }

    #[test]
    fn a_vm_at_its_disk_limit_is_raised_to_disk_max_and_restored() {
        // 1 MiB/s is far under disk_busy: held at its limit, it is disk-bound all the same.
        let own = Tune { disk_limit: Some(1 << 20), ..TUNE };
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("db", own), ("other", TUNE)]);
        w.settings.insert(VmId::new("db"), ReallocSettings { disk_max: Some(Bytes::from_mib(8)), ..Default::default() });
        w.disk_rate.insert("db".into(), 32 << 20);
        let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("other", 1, 0.0)]);
        assert!(view(&d, "db").at_disk_limit, "{:?}", view(&d, "db"));
        assert_eq!(w.tune("db").disk_limit, Some(8 << 20));
        assert!(view(&d, "db").disk_why.as_ref().unwrap().to_string().contains("up to disk_max"));
        assert_eq!(w.tune("other"), TUNE, "a VM without a disk limit is left alone");
        // Its writes stop: its own limit comes back.
        w.disk_rate.clear();
        w.run(&mut p, 22, 20, 2, &[("db", 1, 0.1), ("other", 1, 0.0)]);
        assert_eq!(w.tune("db"), own);
        // Without disk_max it keeps its own, and says so.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("db", own)]);
        w.disk_rate.insert("db".into(), 32 << 20);
        let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1)]);
        assert_eq!(w.tune("db"), own);
        assert!(view(&d, "db").disk_why.as_ref().unwrap().to_string().contains("no higher limit (disk_max)"));
    }

    fn limited(out_kib: u64) -> Tune {
        let outbound = Bandwidth { average: out_kib, peak: 0, burst: 0 };
        Tune { net: Some(NetLimit { inbound: Bandwidth::default(), outbound }), ..TUNE }
    }

    fn net_why(d: &ReallocDecision, name: &str) -> String {
        view(d, name).net_why.as_ref().map(ToString::to_string).unwrap_or_default()
    }

    #[test]
    fn a_vm_at_its_bandwidth_limit_is_raised_to_net_max_and_restored() {
        // 64 KiB/s is far under net_busy: held at its limit, it is net-bound all the same.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("web", limited(64)), ("idle", limited(64))]);
        w.settings.insert(VmId::new("web"), ReallocSettings { net_max: Some(Bytes::from_mib(1)), ..Default::default() });
        w.net_offered.insert("web".into(), 4 << 20);
        let d = w.run(&mut p, 0, 20, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!(view(&d, "web").class, Some(Class::NetBound));
        assert!(view(&d, "web").at_net_limit);
        assert_eq!(w.tune("web"), limited(1024), "raised to net_max, nothing else changed");
        assert_eq!(w.tune("idle"), limited(64), "an idle VM's limit is not cut");
        assert!(net_why(&d, "web").contains("higher limit"), "{}", net_why(&d, "web"));
        let reason = &d.actions.iter().find(|a| a.vm().as_str() == "web");
        assert!(reason.is_none() || reason.unwrap().reason().text.contains("bandwidth"));
        // At the raised limit it stays raised: no flapping back.
        let d = w.run(&mut p, 22, 20, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!(w.tune("web"), limited(1024));
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // The traffic stops: its own limit back once the class has passed.
        w.net_offered.clear();
        let d = w.run(&mut p, 44, 6, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!(w.tune("web"), limited(1024), "not before class_after");
        assert_eq!(view(&d, "web").pending.map(|p| p.0), Some(Class::Steady));
        w.run(&mut p, 52, 10, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
        assert_eq!(w.tune("web"), limited(64));
        let raise_then_restore: Vec<u64> = w.changes.iter().map(|(_, t)| t.net.unwrap().outbound.average).collect();
        assert_eq!(raise_then_restore, vec![1024, 64]);
    }

    #[test]
    fn two_at_their_bandwidth_limits_conflict_and_nothing_changes() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", limited(256)), ("b", limited(512))]);
        for n in ["a", "b"] {
            w.settings.insert(VmId::new(n), ReallocSettings { net_max: Some(Bytes::from_mib(10)), ..Default::default() });
            w.net_offered.insert(n.into(), 4 << 20);
        }
        let d = w.run(&mut p, 0, 30, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
        assert_eq!((w.tune("a"), w.tune("b")), (limited(256), limited(512)));
        assert_eq!(w.changes, vec![], "not even for a moment");
        let why = net_why(&d, "a");
        assert!(why.contains("as is b") && why.contains("rob"), "{why}");
        // b goes quiet: a's limit rises.
        w.net_offered.remove("b");
        w.run(&mut p, 32, 30, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
        assert_eq!((w.tune("a"), w.tune("b")), (limited(10 << 10), limited(512)));
    }

    #[test]
    fn without_a_limit_or_net_max_or_an_interface_nothing_changes_and_the_view_says_why() {
        let unlimited = limited(0);
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("free", unlimited), ("nomax", limited(256)), ("slirp", TUNE)]);
        w.settings.insert(VmId::new("free"), ReallocSettings { net_max: Some(Bytes::from_mib(10)), ..Default::default() });
        w.net_offered.insert("free".into(), 4 << 20);
        w.net_offered.insert("nomax".into(), 4 << 20);
        w.net_offered.insert("slirp".into(), 4 << 20);
        // One at a time: together they would conflict.
        for (name, words) in [
            ("free", "no bandwidth limit"),
            ("nomax", "no higher limit (net_max)"),
            ("slirp", "none of its interfaces can take a bandwidth limit"),
        ] {
            let d = w.run(&mut p, 0, 20, 2, &[(name, 1, 0.1)]);
            assert_eq!(view(&d, name).class, Some(Class::NetBound));
            assert!(net_why(&d, name).contains(words), "{name}: {}", net_why(&d, name));
            p = ReallocPolicy::new();
        }
        assert_eq!(w.changes, vec![]);
        // Not net-bound and no interface: nothing to say about the network.
        w.net_offered.clear();
        let d = w.run(&mut p, 0, 20, 2, &[("slirp", 1, 0.0)]);
        assert_eq!(view(&d, "slirp").net_why, None);
    }

    #[test]
    fn a_refused_bandwidth_change_is_left_alone_while_the_cpu_goes_on() {
        let cfg = ReallocConfig::default();
        let mut p = ReallocPolicy::new();
        // One VM: its settings are the first.
        let settings = [ReallocSettings { critical: true, net_max: Some(Bytes::from_mib(1)), ..Default::default() }];
        let o = |t: Tune| obs(2, vec![vm("c", 1, 0, t)]);
        let d = p.decide(&o(limited(64)), &settings, &cfg, Millis(0));
        let want = Tune { shares: 4096, ..limited(1024) };
        assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == want), "{:?}", d.actions);
        // libvirt refused the bandwidth before touching the rest: the CPU
        // change goes on at once without it, and the view says why.
        p.net_failed(&VmId::new("c"), Millis(0), "Failed to load TC action module");
        let d = p.decide(&o(limited(64)), &settings, &cfg, Millis(2000));
        let cpu_only = Tune { shares: 4096, ..limited(64) };
        assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == cpu_only), "{:?}", d.actions);
        assert!(net_why(&d, "c").contains("TC action module") && net_why(&d, "c").contains("10 minutes"));
        p.applied(&VmId::new("c"), cpu_only);
        assert!(p.decide(&o(cpu_only), &settings, &cfg, Millis(4000)).actions.is_empty(), "no retry loop");
        let d = p.decide(&o(cpu_only), &settings, &cfg, Millis(600_000));
        assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == want), "tried again after 10 minutes");
    }

    #[test]
    fn critical_goes_first_and_back_when_cleared() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("c", capped(0.5))]);
        w.settings.insert(VmId::new("c"), ReallocSettings { critical: true, cap_max: Some(2.0), ..Default::default() });
        let d = w.run(&mut p, 0, 0, 2, &[("c", 2, 0.2)]);
        assert_eq!(w.tune("c"), Tune { shares: 4096, quota_us: Some(200_000), ..TUNE }, "at once, no class needed");
        assert_eq!(d.actions[0].reason().rule, Rule::Critical);
        w.settings.clear();
        w.run(&mut p, 2, 12, 2, &[("c", 2, 0.2)]);
        assert_eq!(w.tune("c"), capped(0.5));
    }

    #[test]
    fn a_returning_vm_starts_from_its_history() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("idle", TUNE), ("busy", capped(0.3))]);
        w.settings.insert(VmId::new("busy"), ReallocSettings { expected: Some(Class::CpuBound), ..Default::default() });
        w.settings.insert(VmId::new("idle"), ReallocSettings { expected: Some(Class::Idle), ..Default::default() });
        // From its first ticks, before class_after: history says cpu-bound.
        let d = w.run(&mut p, 0, 2, 2, &[("idle", 1, 0.0), ("busy", 1, 0.3)]);
        assert_eq!(view(&d, "busy").class, Some(Class::CpuBound));
        assert_eq!(view(&d, "busy").expected, Some(Class::CpuBound));
        // Gains are still held for class_after: weights move once the load is confirmed.
        w.run(&mut p, 4, 10, 2, &[("idle", 1, 0.0), ("busy", 1, 0.3)]);
        assert_eq!((w.tune("busy").shares, w.tune("idle").shares), (4096, 256));
    }

    #[test]
    fn class_needs_to_hold_and_the_band_stops_flapping() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("a", TUNE)]);
        let d = w.run(&mut p, 0, 6, 1, &[("a", 1, 0.95)]);
        assert_eq!(view(&d, "a").class, None, "6 s is under class_after");
        let d = w.run(&mut p, 8, 10, 1, &[("a", 1, 0.95)]);
        assert_eq!(view(&d, "a").class, Some(Class::CpuBound));
        // Between the leave and enter thresholds it stays cpu-bound.
        let d = w.run(&mut p, 20, 30, 1, &[("a", 1, 0.7)]);
        assert_eq!(view(&d, "a").class, Some(Class::CpuBound));
        let d = w.run(&mut p, 52, 30, 1, &[("a", 1, 0.5)]);
        assert_eq!(view(&d, "a").class, Some(Class::Steady));
    }

    #[test]
    fn a_change_made_by_someone_else_becomes_the_base() {
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("idle", TUNE), ("busy", capped(0.5))]);
        let both = [("idle", 1, 0.0), ("busy", 1, 0.5)];
        w.run(&mut p, 0, 20, 2, &both);
        assert_eq!(w.tune("idle").shares, 256);
        // An operator sets 2000 by hand: taken as its own, then cut from there.
        w.tunes.insert("idle".into(), Tune { shares: 2000, ..TUNE });
        w.run(&mut p, 22, 0, 2, &both);
        assert_eq!(p.tunes(&VmId::new("idle")).unwrap().base.shares, 2000);
        assert_eq!(w.tune("idle").shares, 500);
    }

    #[test]
    fn resumed_tunes_are_not_reapplied_and_a_refusal_waits() {
        let cfg = ReallocConfig::default();
        let mine = Tune { shares: 256, ..TUNE };
        let mut p = ReallocPolicy::new();
        p.resume(VmId::new("idle"), Tunes { base: TUNE, applied: Some(mine) });
        let d = p.decide(&obs(2, vec![vm("idle", 1, 0, mine)]), &[], &cfg, Millis(0));
        assert_eq!(d.views[0].base, Some(TUNE), "the journal's base, not what it has now");
        assert!(d.actions.is_empty());
        // Refused: not retried within the minute.
        let mut p = ReallocPolicy::new();
        let mut w = World::with(&[("idle", TUNE)]);
        w.settings.insert(VmId::new("idle"), ReallocSettings { critical: true, ..Default::default() });
        let o = || obs(2, vec![vm("idle", 1, 0, TUNE)]);
        let settings = aligned(&o(), &w.settings);
        let d = p.decide(&o(), &settings, &cfg, Millis(12_000));
        assert_eq!(d.actions.len(), 1);
        p.failed(&VmId::new("idle"), Millis(12_000));
        assert!(p.decide(&o(), &settings, &cfg, Millis(14_000)).actions.is_empty());
        assert_eq!(p.decide(&o(), &settings, &cfg, Millis(72_000)).actions.len(), 1);
    }
}
