//! A simulated guest: what a test declares (`SimVm`), what it can inspect
//! (`SimVmStatus`), and the model of its memory under a balloon (swap,
//! the oom killer) and what it reports as libvirt would.

use ebb_core::{Activity, Balloon, BalloonFeatures, Bytes, GuestMemStats, Tune, VmId, VmObservation, VmState};

/// A guest as a test declares it. Start from [`SimVm::new`] and change
/// fields: `SimVm { used: Bytes::from_mib(300), ..SimVm::new("web", Bytes::from_mib(512)) }`.
#[derive(Clone, Debug, PartialEq)]
pub struct SimVm {
    pub id: VmId,
    pub state: VmState,
    /// The domain's maximum memory (`<memory>`).
    pub max: Bytes,
    /// The guest's current size (what the balloon leaves it); also the
    /// initial balloon target.
    pub current: Bytes,
    /// Memory the guest's workload needs (what it could not free).
    pub used: Bytes,
    pub has_balloon: bool,
    /// The guest driver sends statistics (a stats period is set).
    pub sends_stats: bool,
    /// The guest has swap: pressure shows as swap-out, not as oom kills.
    pub has_swap: bool,
    /// The guest reports oom kills in its balloon stats (Linux ≥ 6.12).
    pub reports_oom: bool,
    /// ebb's `<metadata>` element, as `ebb_metadata` returns it.
    pub metadata: Option<String>,
    /// Has a persistent definition: only such a VM can be saved.
    pub persistent: bool,
    /// CPU the guest asks for while running, in vCPUs' worth: `advance`
    /// adds what its cap lets it run to its CPU time, the rest to its
    /// vCPUs' wait (as a throttled thread's run delay on Linux).
    pub cpu_load: f64,
    pub vcpus: u32,
    /// Bytes per second the guest would send: `advance` counts what its
    /// outbound limit lets through.
    pub net_load: Bytes,
    /// Its live CPU weight and cap, disk weight and bandwidth limit.
    pub tune: Tune,
    /// The host files behind its disks.
    pub disks: Vec<std::path::PathBuf>,
    /// `set_tune` refuses a change of bandwidth limit with this detail
    /// (a host without tc's modules), changing nothing.
    pub refuse_bandwidth: Option<String>,
}

impl SimVm {
    /// A running guest with a balloon and stats, at its maximum size, using a
    /// quarter of it, with swap.
    pub fn new(id: impl Into<String>, max: Bytes) -> SimVm {
        SimVm {
            id: VmId::new(id.into()),
            state: VmState::Running,
            max,
            current: max,
            used: max.scale(0.25),
            has_balloon: true,
            sends_stats: true,
            has_swap: true,
            reports_oom: false,
            metadata: None,
            persistent: true,
            cpu_load: 0.0,
            vcpus: 1,
            net_load: Bytes::ZERO,
            tune: Tune { shares: 1024, quota_us: None, period_us: 100_000, io_weight: Some(500), net: None, disk_limit: None },
            disks: vec![],
            refuse_bandwidth: None,
        }
    }
}

/// One `set_memory` call that reached the sim and succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetMemoryCall {
    pub vm: VmId,
    pub target: Bytes,
    /// Sim time of the call, ms since the sim started.
    pub at_ms: u64,
}

/// A guest's full state, for tests to inspect.
#[derive(Clone, Debug, PartialEq)]
pub struct SimVmStatus {
    pub vm: SimVm,
    pub target: Bytes,
    pub stalled: bool,
    /// Part of `used` pushed out to swap.
    pub swapped: Bytes,
    pub swap_in: Bytes,
    pub swap_out: Bytes,
    pub major_faults: u64,
    pub oom_kills: u64,
    /// The VM's activity counters (kept while it is shut off; observations
    /// show them only while it is active).
    pub activity: Activity,
    /// A managed save image exists.
    pub managed_save: bool,
    /// Sim time at which a restore in progress completes.
    pub restoring_until: Option<u64>,
}

#[derive(Debug)]
pub(super) struct Guest {
    pub(super) vm: SimVm,
    pub(super) target: Bytes,
    pub(super) stalled: bool,
    /// `set_memory` fails with an operation error (libvirt refusing).
    pub(super) refuses_memory: bool,
    pub(super) swapped: Bytes,
    pub(super) swap_in: Bytes,
    pub(super) swap_out: Bytes,
    pub(super) major_faults: u64,
    pub(super) oom_kills: u64,
    pub(super) activity: Activity,
    pub(super) managed_save: bool,
    pub(super) restoring_until: Option<u64>,
    /// `save` / `start` fail with this detail (libvirt's own message).
    pub(super) fail_save: Option<String>,
    pub(super) fail_start: Option<String>,
}

impl Guest {
    pub(super) fn status(&self) -> SimVmStatus {
        SimVmStatus {
            vm: self.vm.clone(),
            target: self.target,
            stalled: self.stalled,
            swapped: self.swapped,
            swap_in: self.swap_in,
            swap_out: self.swap_out,
            major_faults: self.major_faults,
            oom_kills: self.oom_kills,
            activity: self.activity,
            managed_save: self.managed_save,
            restoring_until: self.restoring_until,
        }
    }

    /// A new QEMU process: counters start from zero.
    pub(super) fn new_process(&mut self) {
        self.activity = Activity::default();
    }

    /// Brings swap and oom counters in line with `used` against `current`:
    /// what does not fit is swapped out (or, without swap, the oom killer
    /// frees it), and swapped pages fault back in once there is room.
    pub(super) fn settle(&mut self) {
        let cur = self.vm.current;
        if self.vm.used > cur && !self.vm.has_swap {
            // The oom killer frees the biggest process: model it as the
            // guest dropping back to 90% of what it has.
            self.oom_kills += 1;
            self.vm.used = cur.scale(0.9);
        }
        let excess = self.vm.used - cur;
        if excess > self.swapped {
            self.swap_out += excess - self.swapped;
        } else {
            let back = self.swapped - excess;
            self.swap_in += back;
            self.major_faults += back.0 / (4 * 1024);
        }
        self.swapped = excess;
    }

    pub(super) fn observe(&self, now_ms: u64) -> VmObservation {
        let v = &self.vm;
        let balloon = v.has_balloon.then(|| Balloon {
            current: v.current,
            maximum: v.max,
            stats: (v.sends_stats && v.state == VmState::Running).then(|| {
                let free = v.current - v.used.min(v.current);
                GuestMemStats {
                    total: v.current,
                    unused: free,
                    usable: free,
                    swap_in: self.swap_in,
                    swap_out: self.swap_out,
                    major_faults: self.major_faults,
                    oom_kills: v.reports_oom.then_some(self.oom_kills),
                    last_update: Some(now_ms / 1000),
                }
            }),
            features: BalloonFeatures::default(),
            host_rss: None,
        });
        let active = matches!(v.state, VmState::Running | VmState::Paused);
        VmObservation {
            id: v.id.clone(),
            state: v.state,
            balloon,
            activity: active.then_some(self.activity),
            persistent: v.persistent,
            managed_save: self.managed_save,
            // Read with `tune`, as from libvirt.
            tune: None,
        }
    }
}
