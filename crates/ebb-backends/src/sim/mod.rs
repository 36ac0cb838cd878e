//! In-memory hypervisor for unit tests and the simulator: guests whose
//! balloons move at a set rate, whose memory demand a test sets, and which
//! swap (or, without swap, lose a process to the oom killer) when the
//! balloon leaves them less than they use.
//!
//! `SimHypervisor` is a cheap handle: clones share one world, so a test keeps
//! a handle to drive the guests (`set_used`, `advance`, `fail_next_call`)
//! while the agent owns another as its `Hypervisor`, made by `connect` (the
//! agent's connector) each time it (re)connects.
//!
//! Sleep and wake follow libvirt: `save` stops the guest and frees its memory
//! (shut off, with a managed save image), `start` restores it after a restore
//! delay in sim time (paused meanwhile, as libvirt shows a domain being
//! restored), with activity counters starting again from zero as a new QEMU
//! process's do. A test can make a VM's save or start fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ebb_core::{Activity, Bytes, HostMemory, Observation, Tune, VmId, VmState, GIB, MIB};

use crate::{BackendError, HvError, Hypervisor};
use guest::Guest;

mod guest;

pub use guest::{SetMemoryCall, SimVm, SimVmStatus};

/// The URI the sim reports in messages.
pub const SIM_URI: &str = "sim:///";

#[derive(Debug)]
struct World {
    host_total: Bytes,
    /// Memory the host itself uses besides its guests.
    host_used: Bytes,
    /// Bytes per second a balloon moves.
    rate: u64,
    now_ms: u64,
    guests: BTreeMap<VmId, Guest>,
    calls: Vec<SetMemoryCall>,
    reachable: bool,
    fail_next: u32,
    connects: u32,
    /// How long a restore from a managed save takes, in sim ms.
    restore_delay_ms: u64,
}

/// The in-memory hypervisor. Clones share the same world.
#[derive(Clone, Debug)]
pub struct SimHypervisor {
    world: Arc<Mutex<World>>,
}

impl SimHypervisor {
    /// An empty host with `host_total` of memory and balloons that move at
    /// 1 GiB/s (what a Linux guest did here even under emulation).
    pub fn new(host_total: Bytes) -> SimHypervisor {
        SimHypervisor {
            world: Arc::new(Mutex::new(World {
                host_total,
                host_used: Bytes::ZERO,
                rate: GIB,
                now_ms: 0,
                guests: BTreeMap::new(),
                calls: Vec::new(),
                reachable: true,
                fail_next: 0,
                connects: 0,
                restore_delay_ms: 500,
            })),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // A test that panicked while holding the lock leaves a usable world.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_guest<R>(&self, vm: &VmId, f: impl FnOnce(&mut Guest) -> R) -> R {
        let mut w = self.world();
        let g = w.guests.get_mut(vm).unwrap_or_else(|| panic!("sim has no VM {vm}"));
        f(g)
    }

    /// Adds (or replaces) a guest. Its balloon target starts at `current`.
    pub fn add_vm(&self, vm: SimVm) {
        let mut g = Guest {
            target: vm.current,
            vm,
            stalled: false,
            refuses_memory: false,
            swapped: Bytes::ZERO,
            swap_in: Bytes::ZERO,
            swap_out: Bytes::ZERO,
            major_faults: 0,
            oom_kills: 0,
            activity: Activity::default(),
            managed_save: false,
            restoring_until: None,
            fail_save: None,
            fail_start: None,
        };
        g.settle();
        self.world().guests.insert(g.vm.id.clone(), g);
    }

    pub fn remove_vm(&self, vm: &VmId) {
        self.world().guests.remove(vm);
    }

    /// Sets what the guest's workload needs; the guest swaps or oom-kills
    /// at once if that exceeds its current size.
    pub fn set_used(&self, vm: &VmId, used: Bytes) {
        self.with_guest(vm, |g| {
            g.vm.used = used;
            g.settle();
        })
    }

    pub fn set_state(&self, vm: &VmId, state: VmState) {
        self.with_guest(vm, |g| g.vm.state = state)
    }

    /// A stalled balloon stays where it is whatever the target.
    pub fn set_stalled(&self, vm: &VmId, stalled: bool) {
        self.with_guest(vm, |g| g.stalled = stalled)
    }

    /// Every `set_memory` on this VM fails with an operation error.
    pub fn set_refuses_memory(&self, vm: &VmId, refuses: bool) {
        self.with_guest(vm, |g| g.refuses_memory = refuses);
    }

    pub fn set_sends_stats(&self, vm: &VmId, sends: bool) {
        self.with_guest(vm, |g| g.vm.sends_stats = sends)
    }

    pub fn set_metadata(&self, vm: &VmId, metadata: Option<String>) {
        self.with_guest(vm, |g| g.vm.metadata = metadata)
    }

    pub fn set_persistent(&self, vm: &VmId, persistent: bool) {
        self.with_guest(vm, |g| g.vm.persistent = persistent)
    }

    /// CPU use while running, as a fraction of one vCPU.
    pub fn set_cpu_load(&self, vm: &VmId, load: f64) {
        self.with_guest(vm, |g| g.vm.cpu_load = load)
    }

    /// Bytes per second the guest would send (its outbound limit caps it).
    pub fn set_net_load(&self, vm: &VmId, load: Bytes) {
        self.with_guest(vm, |g| g.vm.net_load = load)
    }

    /// `set_tune` refuses a change of bandwidth limit with `detail` until cleared.
    pub fn set_refuse_bandwidth(&self, vm: &VmId, detail: Option<&str>) {
        self.with_guest(vm, |g| g.vm.refuse_bandwidth = detail.map(str::to_owned))
    }

    /// Sets the VM's activity counters outright.
    pub fn set_activity(&self, vm: &VmId, activity: Activity) {
        self.with_guest(vm, |g| g.activity = activity)
    }

    /// Adds network and disk bytes to the VM's counters (received, sent,
    /// read, written), as traffic between two ticks would.
    pub fn add_io(&self, vm: &VmId, rx: u64, tx: u64, read: u64, write: u64) {
        self.with_guest(vm, |g| {
            g.activity.net_rx_bytes += rx;
            g.activity.net_tx_bytes += tx;
            g.activity.disk_read_bytes += read;
            g.activity.disk_write_bytes += write;
        })
    }

    /// `save` on this VM fails with `detail` (say "No space left on device")
    /// until cleared with None; the VM keeps running.
    pub fn set_fail_save(&self, vm: &VmId, detail: Option<&str>) {
        self.with_guest(vm, |g| g.fail_save = detail.map(str::to_owned))
    }

    /// `start` on this VM fails with `detail` until cleared; a save image stays.
    pub fn set_fail_start(&self, vm: &VmId, detail: Option<&str>) {
        self.with_guest(vm, |g| g.fail_start = detail.map(str::to_owned))
    }

    /// How long a restore from a managed save takes in sim time (default
    /// 500 ms, what a 512 MiB guest took here).
    pub fn set_restore_delay(&self, ms: u64) {
        self.world().restore_delay_ms = ms;
    }

    /// Memory the host uses besides its guests (default none).
    pub fn set_host_used(&self, used: Bytes) {
        self.world().host_used = used;
    }

    /// How fast balloons move, in bytes per second (default 1 GiB/s).
    pub fn set_balloon_rate(&self, bytes_per_sec: Bytes) {
        self.world().rate = bytes_per_sec.0;
    }

    /// The next call (any trait method) fails as unreachable; the ones after
    /// it work again.
    pub fn fail_next_call(&self) {
        self.world().fail_next += 1;
    }

    /// While unreachable every call fails, `connect` included.
    pub fn set_reachable(&self, reachable: bool) {
        self.world().reachable = reachable;
    }

    /// What the agent's connector does for the sim: another handle on the
    /// same world, or `Disconnected` while the sim is set unreachable.
    pub fn connect(&self) -> Result<SimHypervisor, HvError> {
        let mut w = self.world();
        if !w.reachable {
            return Err(unreachable("the sim is set unreachable"));
        }
        w.fail_next = 0;
        w.connects += 1;
        Ok(self.clone())
    }

    /// How many times `connect` succeeded.
    pub fn connects(&self) -> u32 {
        self.world().connects
    }

    /// Successful `set_memory` calls, oldest first.
    pub fn calls(&self) -> Vec<SetMemoryCall> {
        self.world().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.world().calls.clear();
    }

    pub fn status(&self, vm: &VmId) -> Option<SimVmStatus> {
        self.world().guests.get(vm).map(Guest::status)
    }

    /// Sim time, ms since the sim started.
    pub fn now_ms(&self) -> u64 {
        self.world().now_ms
    }

    /// Lets `ms` of time pass: every running guest's balloon that is not
    /// stalled moves toward its target at the balloon rate, and the guest
    /// swaps or oom-kills if it is left with less than it uses.
    pub fn advance(&self, ms: u64) {
        let mut w = self.world();
        w.now_ms += ms;
        let step = Bytes((u128::from(w.rate) * u128::from(ms) / 1000).min(u128::from(u64::MAX)) as u64);
        let now_ms = w.now_ms;
        for g in w.guests.values_mut() {
            // The guest runs (and uses CPU) only for the part of the step
            // after its restore completed.
            let mut ran_ms = ms;
            if let Some(at) = g.restoring_until.filter(|&at| at <= now_ms) {
                g.restoring_until = None;
                g.vm.state = VmState::Running;
                ran_ms = now_ms - at;
            }
            if g.vm.state == VmState::Running {
                let vcpus = f64::from(g.vm.vcpus.max(1));
                let allowed = g.vm.tune.cap().map_or(vcpus, |c| c * vcpus);
                let ran = g.vm.cpu_load.min(allowed).min(vcpus);
                g.activity.cpu_time_ns += (ran * ran_ms as f64 * 1e6) as u64;
                g.activity.vcpu_wait_ns += ((g.vm.cpu_load.min(vcpus) - ran) * ran_ms as f64 * 1e6) as u64;
                g.activity.vcpus = g.vm.vcpus;
                let limit = g.vm.tune.net.and_then(|n| n.outbound.limit()).unwrap_or(Bytes(u64::MAX));
                let sent = g.vm.net_load.min(limit);
                g.activity.net_tx_bytes += (u128::from(sent.0) * u128::from(ran_ms) / 1000) as u64;
            }
            if g.vm.state != VmState::Running || !g.vm.has_balloon || g.stalled {
                continue;
            }
            let (cur, target) = (g.vm.current, g.target);
            g.vm.current = if target < cur { (cur - step).max(target) } else { (cur + step).min(target) };
            g.settle();
        }
    }

    /// Fails the call if the sim is unreachable right now.
    fn gate(w: &mut World) -> Result<(), HvError> {
        if w.fail_next > 0 {
            w.fail_next -= 1;
            return Err(unreachable("the sim was told to fail this call"));
        }
        if !w.reachable {
            return Err(unreachable("the sim is set unreachable"));
        }
        Ok(())
    }
}

fn unreachable(detail: &str) -> HvError {
    HvError::Disconnected { uri: SIM_URI.to_owned(), detail: BackendError::said(detail) }
}

impl Hypervisor for SimHypervisor {
    fn uri(&self) -> &str {
        SIM_URI
    }

    fn observe(&mut self) -> Result<Observation, HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let guests: Bytes = w
            .guests
            .values()
            .filter(|g| matches!(g.vm.state, VmState::Running | VmState::Paused))
            .map(|g| g.vm.current)
            .sum();
        let host = HostMemory { total: w.host_total, available: w.host_total - w.host_used - guests };
        let vms = w.guests.values().map(|g| g.observe(w.now_ms)).collect();
        Ok(Observation { at: Default::default(), host, host_cpus: 2, vms })
    }

    fn set_memory(&mut self, vm: &VmId, target: Bytes) -> Result<(), HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let now_ms = w.now_ms;
        let g = w.guests.get_mut(vm).ok_or_else(|| HvError::NoSuchVm(vm.clone()))?;
        let op = |detail: String| HvError::Operation { op: "set memory", vm: vm.clone(), detail: BackendError::said(detail) };
        if !g.vm.has_balloon {
            return Err(HvError::NoBalloon(vm.clone()));
        }
        if g.vm.state != VmState::Running && g.vm.state != VmState::Paused {
            return Err(op("the domain is not running".into()));
        }
        if target > g.vm.max {
            return Err(op(format!("{target} is above the domain's maximum of {}", g.vm.max)));
        }
        if g.refuses_memory {
            return Err(op("the sim was told to refuse it".into()));
        }
        if target < Bytes(MIB) {
            return Err(op(format!("{target} is below 1 MiB")));
        }
        g.target = target;
        w.calls.push(SetMemoryCall { vm: vm.clone(), target, at_ms: now_ms });
        Ok(())
    }

    fn ebb_metadata(&mut self, vm: &VmId) -> Result<Option<String>, HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let g = w.guests.get(vm).ok_or_else(|| HvError::NoSuchVm(vm.clone()))?;
        Ok(g.vm.metadata.clone())
    }

    fn disk_sources(&mut self, vm: &VmId) -> Result<Vec<std::path::PathBuf>, HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let g = w.guests.get(vm).ok_or_else(|| HvError::NoSuchVm(vm.clone()))?;
        Ok(g.vm.disks.clone())
    }

    fn tune(&mut self, vm: &VmId) -> Result<Tune, HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let g = w.guests.get(vm).ok_or_else(|| HvError::NoSuchVm(vm.clone()))?;
        Ok(g.vm.tune)
    }

    fn set_tune(&mut self, vm: &VmId, tune: Tune) -> Result<(), HvError> {
        self.guest_op("set CPU tune", vm, |g, _| {
            if g.vm.state != VmState::Running {
                return Err(Op::Failed("domain is not running".into()));
            }
            if let Some(detail) = g.vm.refuse_bandwidth.as_ref().filter(|_| tune.net != g.vm.tune.net) {
                return Err(Op::Bandwidth(detail.clone()));
            }
            g.vm.tune = tune;
            Ok(())
        })
    }

    fn save(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.guest_op("save", vm, |g, _| {
            if !g.vm.persistent {
                return Err(Op::Transient);
            }
            if !matches!(g.vm.state, VmState::Running | VmState::Paused) || g.restoring_until.is_some() {
                return Err(Op::Failed("domain is not running".into()));
            }
            if let Some(detail) = &g.fail_save {
                return Err(Op::Failed(detail.clone()));
            }
            // Shut off with an image: its memory goes back to the host.
            g.vm.state = VmState::ShutOff;
            g.managed_save = true;
            Ok(())
        })
    }

    fn pause(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.guest_op("pause", vm, |g, _| {
            if g.vm.state != VmState::Running {
                return Err(Op::Failed("domain is not running".into()));
            }
            g.vm.state = VmState::Paused;
            Ok(())
        })
    }

    fn resume(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.guest_op("resume", vm, |g, _| {
            if g.vm.state != VmState::Paused || g.restoring_until.is_some() {
                return Err(Op::Failed("domain is not paused".into()));
            }
            g.vm.state = VmState::Running;
            Ok(())
        })
    }

    fn start(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.guest_op("start", vm, |g, (now_ms, delay)| {
            if g.vm.state != VmState::ShutOff {
                return Err(Op::Failed("domain is already running".into()));
            }
            if let Some(detail) = &g.fail_start {
                return Err(Op::Failed(detail.clone()));
            }
            g.new_process();
            if std::mem::take(&mut g.managed_save) && delay > 0 {
                // libvirt shows a domain being restored as paused.
                g.vm.state = VmState::Paused;
                g.restoring_until = Some(now_ms + delay);
            } else {
                g.vm.state = VmState::Running;
            }
            Ok(())
        })
    }

    /// The sim's guests heed the power button at once.
    fn shutdown(&mut self, vm: &VmId) -> Result<(), HvError> {
        self.guest_op("shut down", vm, |g, _| {
            if !matches!(g.vm.state, VmState::Running | VmState::Paused) {
                return Err(Op::Failed("domain is not running".into()));
            }
            g.vm.state = VmState::ShutOff;
            Ok(())
        })
    }
}

/// Why a sim operation on one guest failed.
enum Op {
    Transient,
    Bandwidth(String),
    Failed(String),
}

impl SimHypervisor {
    /// Runs one operation on one guest, with the gate and errors as the
    /// libvirt backend maps them. `f` gets the guest and (now, restore delay).
    fn guest_op(
        &self,
        op: &'static str,
        vm: &VmId,
        f: impl FnOnce(&mut Guest, (u64, u64)) -> Result<(), Op>,
    ) -> Result<(), HvError> {
        let mut w = self.world();
        Self::gate(&mut w)?;
        let clock = (w.now_ms, w.restore_delay_ms);
        let g = w.guests.get_mut(vm).ok_or_else(|| HvError::NoSuchVm(vm.clone()))?;
        f(g, clock).map_err(|e| match e {
            Op::Transient => HvError::Transient(vm.clone()),
            Op::Bandwidth(detail) => HvError::Bandwidth { vm: vm.clone(), detail: BackendError::said(detail) },
            Op::Failed(detail) => HvError::Operation { op, vm: vm.clone(), detail: BackendError::said(detail) },
        })
    }
}
