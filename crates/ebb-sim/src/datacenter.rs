//! The data centre as CloudSim 3.0.3 runs it: hosts with a time-shared,
//! oversubscribable CPU scheduler, VMs whose demand follows their traces,
//! migrations that take RAM / (BW/2) seconds and cost 10 % of the VM's CPU,
//! energy per interval, and the state history the SLA metrics are taken from.
//!
//! The bookkeeping follows CloudSim's own, quirks included, because the
//! reference figures come out of it: a host's power "now" is the one of its
//! last update, a VM that asks for 0 MIPS leaves the simulation, a VM keeps
//! its "migrating out" mark on a host it left.

use crate::power::{migration_seconds, vm_type_index, HostType, HOST_TYPES, VM_TYPES};
use crate::trace::Trace;

pub type HostId = usize;
pub type VmId = usize;

/// Number of hosts (`PlanetLabConstants.NUMBER_OF_HOSTS`).
pub const HOSTS: usize = 800;
/// VM CPU history kept for the detectors (`PowerVm.HISTORY_LENGTH`).
pub const HISTORY: usize = 30;
/// Share of a migrating VM's CPU request it gets on its source; the target
/// reserves the rest.
const MIGRATION_SOURCE_SHARE: f64 = 0.9;
const MIGRATION_TARGET_SHARE: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Vm {
    pub kind: usize,
    pub mips: f64,
    pub ram_mb: u32,
    pub bw: u64,
    trace: usize,
    /// Requested MIPS as of its last update (the VM asks for all its MIPS
    /// while it is created, and 0 until its first update).
    pub request: f64,
    pub in_migration: bool,
    /// Where the VM is (`Vm.getHost`).
    pub host: Option<HostId>,
    /// Where the allocation policy has it (its VM table).
    table_host: Option<HostId>,
    /// CPU utilisation at decision times, newest first.
    pub history: Vec<f64>,
    history_time: f64,
    /// Left the simulation: it asked for 0 MIPS while not migrating.
    pub gone: bool,
    /// Being created: it holds its RAM and bandwidth. Afterwards its
    /// workload asks for none (CloudSim's PlanetLab cloudlets use a null
    /// RAM and bandwidth model), so only the initial placement is bound by
    /// RAM.
    being_created: bool,
    sla: History<VmState>,
}

impl Vm {
    /// RAM a host must hold for it now (all of it only while created).
    pub fn held_ram_mb(&self) -> u32 {
        self.requested_ram_bw().0
    }

    /// RAM and bandwidth the VM asks a host for (`getCurrentRequestedRam`).
    fn requested_ram_bw(&self) -> (u32, u64) {
        if self.being_created {
            (self.ram_mb, self.bw)
        } else {
            (0, 0)
        }
    }
}

/// A state that, held from its time until the next entry's, adds to sums.
trait HeldState: Copy {
    type Sums: Default + Clone + std::fmt::Debug;
    fn time(&self) -> f64;
    /// What this state, held for `dt` seconds, adds to `sums`.
    fn add_held(&self, dt: f64, sums: &mut Self::Sums);
}

/// Running sums over a state history (CloudSim's `Helper.getSlaMetrics` and
/// `getSlaTimePerActiveHost`, without keeping the history): each state
/// counts until the next; one at the same time as the last replaces it.
#[derive(Debug, Clone)]
struct History<S: HeldState> {
    last: Option<S>,
    sums: S::Sums,
}

impl<S: HeldState> Default for History<S> {
    fn default() -> Self {
        History { last: None, sums: S::Sums::default() }
    }
}

impl<S: HeldState> History<S> {
    fn add(&mut self, s: S) {
        if let Some(prev) = self.last {
            if prev.time() != s.time() {
                prev.add_held(s.time() - prev.time(), &mut self.sums);
            }
        }
        self.last = Some(s);
    }
}

#[derive(Debug, Clone, Copy)]
struct VmState {
    time: f64,
    allocated: f64,
    requested: f64,
    in_migration: bool,
}

#[derive(Debug, Clone, Default)]
struct VmSums {
    requested_mips_s: f64,
    underallocated_in_migration_mips_s: f64,
}

impl HeldState for VmState {
    type Sums = VmSums;
    fn time(&self) -> f64 {
        self.time
    }
    fn add_held(&self, dt: f64, sums: &mut VmSums) {
        sums.requested_mips_s += self.requested * dt;
        if self.allocated < self.requested && self.in_migration {
            sums.underallocated_in_migration_mips_s += (self.requested - self.allocated) * dt;
        }
    }
}

/// A VM's place in a host's scheduler: what it asked for when allocated, and
/// what it got.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub vm: VmId,
    requested: f64,
    pub allocated: f64,
    ram_mb: u32,
    bw: u64,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub kind: &'static HostType,
    /// The host's VMs in list order, migrating-in ones included.
    pub slots: Vec<Slot>,
    pub migrating_in: Vec<VmId>,
    /// VMs the scheduler holds as migrating out; a VM stays in it after it
    /// left, until it is allocated here again not migrating.
    migrating_out: Vec<VmId>,
    /// MIPS the scheduler has not handed out (0 when oversubscribed).
    pub available_mips: f64,
    ram_used: u32,
    bw_used: u64,
    /// Allocated MIPS at the last update, and at the one before.
    pub util_mips: f64,
    prev_util_mips: f64,
    /// Watts at `util_mips`, and the sum of [`Host::allocated_mips`], kept
    /// with what they follow (placement asks for them of every host, for
    /// every VM it places).
    power_w: f64,
    prev_power_w: f64,
    allocated_sum: f64,
    /// Counts changes to `slots`, for caches of what follows from them.
    slot_changes: u64,
    sla: History<HostState>,
}

#[derive(Debug, Clone, Copy)]
struct HostState {
    time: f64,
    allocated: f64,
    requested: f64,
    active: bool,
}

#[derive(Debug, Clone, Default)]
struct HostSums {
    active_s: f64,
    violation_s: f64,
}

impl HeldState for HostState {
    type Sums = HostSums;
    fn time(&self) -> f64 {
        self.time
    }
    fn add_held(&self, dt: f64, sums: &mut HostSums) {
        if self.active {
            sums.active_s += dt;
            if self.allocated < self.requested {
                sums.violation_s += dt;
            }
        }
    }
}

impl Host {
    fn new(kind: &'static HostType) -> Host {
        Host {
            kind,
            slots: Vec::new(),
            migrating_in: Vec::new(),
            migrating_out: Vec::new(),
            available_mips: kind.total_mips(),
            ram_used: 0,
            bw_used: 0,
            util_mips: 0.0,
            prev_util_mips: 0.0,
            power_w: kind.power(0.0),
            prev_power_w: kind.power(0.0),
            allocated_sum: 0.0,
            slot_changes: 0,
            sla: History::default(),
        }
    }

    pub fn total_mips(&self) -> f64 {
        self.kind.total_mips()
    }

    /// Utilisation at the last update (`getUtilizationOfCpu`).
    pub fn utilization(&self) -> f64 {
        clamp_utilization(self.util_mips / self.total_mips())
    }

    /// Watts at the last update: `kind.power(utilization())`.
    pub fn power_now(&self) -> f64 {
        debug_assert_eq!(self.power_w, self.kind.power(self.utilization()));
        self.power_w
    }

    fn previous_utilization(&self) -> f64 {
        clamp_utilization(self.prev_util_mips / self.total_mips())
    }

    /// Energy (W·s) over the `seconds` before the last update:
    /// `kind.energy(previous_utilization(), utilization(), seconds)` with
    /// the powers already known.
    fn energy_since_previous(&self, seconds: f64) -> f64 {
        debug_assert_eq!(self.prev_power_w, self.kind.power(self.previous_utilization()));
        if self.previous_utilization() == 0.0 {
            return 0.0;
        }
        (self.prev_power_w + (self.power_now() - self.prev_power_w) / 2.0) * seconds
    }

    /// Changes whenever the host's VM list does.
    pub fn slot_changes(&self) -> u64 {
        self.slot_changes
    }

    pub fn has(&self, vm: VmId) -> bool {
        self.slots.iter().any(|s| s.vm == vm)
    }

    pub fn vm_ids(&self) -> impl Iterator<Item = VmId> + '_ {
        self.slots.iter().map(|s| s.vm)
    }

    /// Hands out MIPS as `VmSchedulerTimeSharedOverSubscription` does: each
    /// request capped at a PE; a migrating-in VM counts for 10 % of it. When
    /// the requests do not fit, every VM gets its share scaled to the
    /// capacity, floored to whole MIPS.
    fn reallocate(&mut self) {
        let capacity = self.total_mips();
        let pe = self.kind.pe_mips;
        let mut available = capacity;
        let mut oversubscribed = false;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            let capped = s.requested.min(pe);
            let counted = if self.migrating_in.contains(&s.vm) {
                capped * MIGRATION_TARGET_SHARE
            } else {
                capped
            };
            if !oversubscribed && available >= counted {
                available -= counted;
                self.slots[i].allocated = capped * self.share(s.vm);
            } else {
                oversubscribed = true;
            }
        }
        if oversubscribed {
            let required: f64 = self
                .slots
                .iter()
                .map(|s| {
                    let capped = s.requested.min(pe);
                    if self.migrating_in.contains(&s.vm) {
                        capped * MIGRATION_TARGET_SHARE
                    } else {
                        capped
                    }
                })
                .sum();
            let scale = capacity / required;
            for i in 0..self.slots.len() {
                let s = self.slots[i];
                let capped = s.requested.min(pe);
                let mips = if self.migrating_out.contains(&s.vm) {
                    capped * scale * MIGRATION_SOURCE_SHARE
                } else if self.migrating_in.contains(&s.vm) {
                    capped * MIGRATION_TARGET_SHARE * scale
                } else {
                    capped * scale
                };
                self.slots[i].allocated = mips.floor();
            }
            available = 0.0;
        }
        self.available_mips = available;
        self.allocated_sum = self.sum_allocated();
    }

    fn share(&self, vm: VmId) -> f64 {
        if self.migrating_out.contains(&vm) {
            MIGRATION_SOURCE_SHARE
        } else if self.migrating_in.contains(&vm) {
            MIGRATION_TARGET_SHARE
        } else {
            1.0
        }
    }

    /// Sum of the MIPS allocated to its VMs, a migrating-in VM at its full
    /// share (`getUtilizationOfCpuMips` of the migration policy).
    pub fn allocated_mips(&self) -> f64 {
        debug_assert_eq!(self.allocated_sum.to_bits(), self.sum_allocated().to_bits());
        self.allocated_sum
    }

    fn sum_allocated(&self) -> f64 {
        let mut sum = 0.0;
        for s in &self.slots {
            if self.migrating_in.contains(&s.vm) {
                sum += s.allocated * MIGRATION_SOURCE_SHARE / MIGRATION_TARGET_SHARE;
            }
            sum += s.allocated;
        }
        sum
    }

    fn remove_slot(&mut self, vm: VmId) {
        if let Some(i) = self.slots.iter().position(|s| s.vm == vm) {
            let s = self.slots.remove(i);
            self.slot_changes += 1;
            self.ram_used -= s.ram_mb;
            self.bw_used -= s.bw;
            self.reallocate();
        }
    }
}

fn clamp_utilization(u: f64) -> f64 {
    if u > 1.0 && u < 1.01 {
        1.0
    } else {
        u
    }
}

/// A migration under way: the VM arrives on `target` at `done`.
#[derive(Debug, Clone, Copy)]
struct Migration {
    vm: VmId,
    target: HostId,
    done: f64,
}

#[derive(Debug, Clone)]
pub struct Datacenter {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    traces: Vec<Trace>,
    last_process_time: f64,
    pub energy_ws: f64,
    pub migrations: usize,
    pending: Vec<Migration>,
    /// Charge every host its full power, loaded or not (no power management).
    pub non_power_aware: bool,
}

impl Datacenter {
    /// 800 hosts alternating G4/G5 and one VM per trace, typed by order.
    pub fn new(traces: Vec<Trace>) -> Datacenter {
        Datacenter::with_hosts(traces, HOSTS)
    }

    pub fn with_hosts(traces: Vec<Trace>, hosts: usize) -> Datacenter {
        let n = traces.len();
        let vms = (0..n)
            .map(|i| {
                let kind = vm_type_index(i, n);
                let t = &VM_TYPES[kind];
                Vm {
                    kind,
                    mips: t.mips,
                    ram_mb: t.ram_mb,
                    bw: t.bw,
                    trace: i,
                    request: t.mips,
                    in_migration: false,
                    host: None,
                    table_host: None,
                    history: Vec::with_capacity(HISTORY),
                    history_time: 0.0,
                    gone: false,
                    being_created: true,
                    sla: History::default(),
                }
            })
            .collect();
        Datacenter {
            hosts: (0..hosts).map(|i| Host::new(HOST_TYPES[i % HOST_TYPES.len()])).collect(),
            vms,
            traces,
            last_process_time: 0.0,
            energy_ws: 0.0,
            migrations: 0,
            pending: Vec::new(),
            non_power_aware: false,
        }
    }

    /// Whether `vm` fits on `host` now (`Host.isSuitableForVm`): its request
    /// within a PE and within the free MIPS, its RAM and bandwidth free.
    pub fn is_suitable(&self, host: HostId, vm: VmId) -> bool {
        let h = &self.hosts[host];
        let v = &self.vms[vm];
        let (ram, bw) = v.requested_ram_bw();
        h.kind.pe_mips >= v.request && h.available_mips >= v.request && h.ram_used + ram <= h.kind.ram_mb && h.bw_used + bw <= h.kind.bw
    }

    /// Sets the scheduler's migrating-out mark for `vm` on `host` as
    /// `VmSchedulerTimeShared.allocatePesForVm` does.
    pub fn mark_migration(&mut self, host: HostId, vm: VmId) {
        let in_migration = self.vms[vm].in_migration;
        let h = &mut self.hosts[host];
        if h.migrating_out.is_empty() && !in_migration {
            return;
        }
        if in_migration {
            if !h.migrating_in.contains(&vm) && !h.migrating_out.contains(&vm) {
                h.migrating_out.push(vm);
            }
        } else {
            h.migrating_out.retain(|&v| v != vm);
        }
    }

    /// Places `vm` on `host` (`Host.vmCreate`); false when RAM or bandwidth
    /// is short. CPU is always granted: the scheduler oversubscribes.
    pub fn vm_create(&mut self, host: HostId, vm: VmId) -> bool {
        let ((ram, bw), request) = (self.vms[vm].requested_ram_bw(), self.vms[vm].request);
        let h = &self.hosts[host];
        if h.ram_used + ram > h.kind.ram_mb || h.bw_used + bw > h.kind.bw {
            return false;
        }
        self.mark_migration(host, vm);
        let h = &mut self.hosts[host];
        h.ram_used += ram;
        h.bw_used += bw;
        h.slots.push(Slot {
            vm,
            requested: request,
            allocated: 0.0,
            ram_mb: ram,
            bw,
        });
        h.slot_changes += 1;
        h.reallocate();
        self.vms[vm].host = Some(host);
        true
    }

    /// Takes `vm` off `host` (`Host.vmDestroy`).
    pub fn vm_destroy(&mut self, host: HostId, vm: VmId) {
        self.hosts[host].remove_slot(vm);
        self.vms[vm].host = None;
    }

    /// Creates `vm` on `host` for good, at the start (the allocation
    /// policy's table records it). From then on the VM asks for what its
    /// not yet started workload asks, nothing, while its slot keeps the MIPS
    /// and RAM it was created with (`Datacenter.processVmCreate` ends
    /// `beingInstantiated` right after each VM): so the next VMs' overload
    /// checks see only their own request on a host, not the earlier VMs'.
    pub fn place(&mut self, host: HostId, vm: VmId) -> bool {
        if !self.vm_create(host, vm) {
            return false;
        }
        let v = &mut self.vms[vm];
        v.table_host = Some(host);
        v.request = 0.0;
        v.being_created = false;
        true
    }

    /// After the initial placement: VMs are no longer being created, and ask
    /// for what their (not yet started) workload asks, 0, until their first
    /// update.
    pub fn finish_creation(&mut self) {
        for v in &mut self.vms {
            v.request = 0.0;
            v.being_created = false;
        }
    }

    /// A host's VM list and allocation, to put back after trying placements.
    pub fn save(&self) -> Vec<Vec<VmId>> {
        self.hosts.iter().map(|h| h.vm_ids().collect()).collect()
    }

    /// Puts back the allocation saved by [`save`] (`restoreAllocation`).
    pub fn restore(&mut self, saved: &[Vec<VmId>]) {
        for h in &mut self.hosts {
            debug_assert!(h.migrating_in.is_empty(), "decisions happen between migrations");
            h.slots.clear();
            h.ram_used = 0;
            h.bw_used = 0;
            h.available_mips = h.total_mips();
            h.allocated_sum = 0.0;
            h.slot_changes += 1;
        }
        for (host, vms) in saved.iter().enumerate() {
            for &vm in vms {
                let ok = self.vm_create(host, vm);
                debug_assert!(ok, "a saved allocation fits");
            }
        }
    }

    /// Updates one host at `time` (`HostDynamicWorkload.updateVmsProcessing`):
    /// its VMs' requests follow their traces, the scheduler reallocates, the
    /// state history records what was asked and given.
    fn update_host(&mut self, host: HostId, time: f64) {
        let ids: Vec<VmId> = self.hosts[host].vm_ids().collect();
        for &vm in &ids {
            self.update_vm(vm, time);
        }
        {
            let vms = &self.vms;
            let h = &mut self.hosts[host];
            h.prev_util_mips = h.util_mips;
            h.prev_power_w = h.power_w;
            for s in &mut h.slots {
                s.requested = vms[s.vm].request;
            }
        }
        for &vm in &ids {
            self.mark_migration(host, vm);
        }
        self.hosts[host].reallocate();
        let mut util = 0.0;
        let mut requested = 0.0;
        for i in 0..self.hosts[host].slots.len() {
            let s = self.hosts[host].slots[i];
            let vm = &mut self.vms[s.vm];
            let mut allocated = s.allocated;
            if !self.hosts[host].migrating_in.contains(&s.vm) {
                vm.sla.add(VmState {
                    time,
                    allocated,
                    requested: vm.request,
                    in_migration: vm.in_migration,
                });
                if vm.in_migration {
                    allocated /= MIGRATION_SOURCE_SHARE;
                }
            }
            util += allocated;
            requested += vm.request;
        }
        let h = &mut self.hosts[host];
        h.util_mips = util;
        h.power_w = h.kind.power(h.utilization());
        h.sla.add(HostState {
            time,
            allocated: util,
            requested,
            active: util > 0.0,
        });
    }

    /// A VM's demand at `time`; at decision times it also enters the VM's
    /// CPU history (`PowerVm.updateVmProcessing`).
    fn update_vm(&mut self, vm: VmId, time: f64) {
        let v = &mut self.vms[vm];
        let u = self.traces[v.trace].utilization(time);
        v.request = u * v.mips;
        if time > v.history_time && (time - 0.1) % crate::trace::SAMPLE_SECONDS == 0.0 {
            v.history.insert(0, u);
            v.history.truncate(HISTORY);
            v.history_time = time;
        }
    }

    /// Every host updated at `time`, the energy since the last update
    /// charged, VMs that ask for nothing removed
    /// (`updateCloudetProcessingWithoutSchedulingFutureEventsForce`).
    pub fn update_all(&mut self, time: f64) {
        let dt = time - self.last_process_time;
        if self.non_power_aware && dt > 0.0 {
            self.energy_ws += self.hosts.iter().map(|h| h.kind.max_power() * dt).sum::<f64>();
        }
        for host in 0..self.hosts.len() {
            self.update_host(host, time);
        }
        if !self.non_power_aware && dt > 0.0 {
            for h in &self.hosts {
                self.energy_ws += h.energy_since_previous(dt);
            }
        }
        for host in 0..self.hosts.len() {
            let done: Vec<VmId> = self.hosts[host]
                .vm_ids()
                .filter(|&v| !self.vms[v].in_migration && self.vms[v].request == 0.0)
                .collect();
            for vm in done {
                if let Some(h) = self.vms[vm].table_host.take() {
                    self.vm_destroy(h, vm);
                }
                self.vms[vm].gone = true;
            }
        }
        self.last_process_time = time;
    }

    /// Starts moving `vm` to `target` at `time` (`Host.addMigratingInVm`):
    /// the target reserves 10 % of its request, the source gives it 90 %.
    pub fn start_migration(&mut self, vm: VmId, target: HostId, time: f64) {
        self.vms[vm].in_migration = true;
        if !self.hosts[target].migrating_in.contains(&vm) {
            let ((ram, bw), request) = (self.vms[vm].requested_ram_bw(), self.vms[vm].request);
            let h = &mut self.hosts[target];
            debug_assert!(h.ram_used + ram <= h.kind.ram_mb, "the placement checked the RAM");
            h.ram_used += ram;
            h.bw_used += bw;
            h.migrating_in.push(vm);
            self.mark_migration(target, vm);
            let h = &mut self.hosts[target];
            h.slots.push(Slot {
                vm,
                requested: request,
                allocated: 0.0,
                ram_mb: ram,
                bw,
            });
            h.slot_changes += 1;
            h.reallocate();
            self.update_host(target, time);
            if let Some(source) = self.vms[vm].host {
                self.update_host(source, time);
            }
        }
        self.migrations += 1;
        let done = time + migration_seconds(self.vms[vm].ram_mb, self.hosts[target].kind.bw);
        self.pending.push(Migration { vm, target, done });
    }

    /// Runs the migrations that end before `until`, in time order (ties in
    /// start order), with the updates CloudSim makes around each
    /// (`PowerDatacenter.processVmMigrate`).
    pub fn finish_migrations(&mut self, until: f64) {
        // Stable: same-time arrivals stay in the order they were started.
        self.pending.sort_by(|a, b| a.done.total_cmp(&b.done));
        let ready = self.pending.iter().take_while(|m| m.done <= until).count();
        let ready: Vec<Migration> = self.pending.drain(..ready).collect();
        for (i, m) in ready.iter().enumerate() {
            if m.done > self.last_process_time {
                self.update_all(m.done);
            }
            self.arrive(m.vm, m.target);
            let last_at_this_time = ready.get(i + 1).is_none_or(|next| next.done > m.done);
            if last_at_this_time {
                self.update_all(m.done);
            }
        }
    }

    fn arrive(&mut self, vm: VmId, target: HostId) {
        if let Some(h) = self.vms[vm].table_host.take() {
            self.vm_destroy(h, vm);
        }
        let h = &mut self.hosts[target];
        h.remove_slot(vm);
        h.migrating_in.retain(|&v| v != vm);
        self.vms[vm].in_migration = false;
        let ok = self.vm_create(target, vm);
        debug_assert!(ok, "the target held the VM's RAM during the migration");
        self.vms[vm].table_host = Some(target);
    }

    /// SLA time per active host: the share of hosts' active time during which
    /// they gave less CPU than was asked.
    pub fn slatah(&self) -> f64 {
        let (mut violation, mut active) = (0.0, 0.0);
        for h in &self.hosts {
            violation += h.sla.sums.violation_s;
            active += h.sla.sums.active_s;
        }
        if active == 0.0 {
            0.0
        } else {
            violation / active
        }
    }

    /// Performance degradation due to migrations: CPU the VMs asked for and
    /// did not get while migrating, over all they asked for.
    pub fn pdm(&self) -> f64 {
        let (mut under, mut requested) = (0.0, 0.0);
        for v in &self.vms {
            under += v.sla.sums.underallocated_in_migration_mips_s;
            requested += v.sla.sums.requested_mips_s;
        }
        if requested == 0.0 {
            0.0
        } else {
            under / requested
        }
    }

    /// Hosts with a VM on them at their last update, and their power (W).
    pub fn active_hosts_and_power(&self) -> (usize, f64) {
        let mut active = 0;
        let mut watts = 0.0;
        for h in &self.hosts {
            if self.non_power_aware {
                watts += h.kind.max_power();
            } else if h.util_mips > 0.0 {
                watts += h.kind.power(h.utilization());
            }
            if h.util_mips > 0.0 {
                active += 1;
            }
        }
        (active, watts)
    }

    pub fn trace_name(&self, vm: VmId) -> &str {
        &self.traces[self.vms[vm].trace].name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::{HP_ML110_G4, HP_ML110_G5};
    use crate::trace::SAMPLES;

    fn flat(percent: u32) -> Trace {
        Trace::from_percent("vm", &vec![percent; SAMPLES])
    }

    #[test]
    fn a_migration_takes_ram_over_half_bandwidth_and_costs_ten_percent() {
        // One VM of type 0 (2500 MIPS, 870 MB) at 40 %: 1000 MIPS, on host 1 (G5).
        let mut dc = Datacenter::with_hosts(vec![flat(40)], 2);
        assert!(dc.place(1, 0));
        dc.finish_creation();
        dc.update_all(300.1);
        dc.start_migration(0, 0, 300.1);
        // During the move the source gives 90 %, the target holds 10 %.
        assert_eq!(dc.hosts[1].slots[0].allocated, 900.0);
        assert_eq!(dc.hosts[0].slots[0].allocated, 100.0);
        assert!(
            (dc.hosts[1].util_mips - 1000.0).abs() < 1e-9,
            "the source counts the VM's whole share"
        );
        dc.finish_migrations(600.1);
        // 870 MB / 62.5 MB/s = 13.92 s later the VM is on host 0 alone.
        assert_eq!(dc.last_process_time, 300.1 + 13.92);
        assert_eq!(dc.vms[0].host, Some(0));
        assert!(dc.hosts[1].slots.is_empty());
        dc.update_all(600.1);
        // Missing: 100 MIPS for 13.92 s, out of 1000 MIPS asked for 300 s.
        assert!((dc.pdm() - 1392.0 / 300_000.0).abs() < 1e-9, "{}", dc.pdm());
        assert_eq!(dc.migrations, 1);
        // Energy, by hand: 13.92 s of host 0 at 100/3720 (86.914 W) and of
        // host 1 at 1000/5320 (100.519 W), then 286.08 s of host 0 at
        // 1000/3720 (94.940 W); host 1 is off after it.
        let expected =
            (HP_ML110_G4.power(100.0 / 3720.0) + HP_ML110_G5.power(1000.0 / 5320.0)) * 13.92 + HP_ML110_G4.power(1000.0 / 3720.0) * 286.08;
        assert!((dc.energy_ws - expected).abs() < 1e-6);
        assert!((dc.energy_ws - 29_769.4).abs() < 1.0, "{}", dc.energy_ws);
    }

    #[test]
    fn slatah_counts_active_time_short_of_cpu() {
        // VM 0: 2500 MIPS at 80 % = 2000 MIPS on a G4 host, whose PEs give
        // 1860 at most: short all the time. VM 1: 2000 MIPS at 50 % on a
        // G5 host: served. Host 2 stays empty and does not count.
        let mut dc = Datacenter::with_hosts(vec![flat(80), flat(50), flat(10), flat(10)], 3);
        assert!(dc.place(0, 0));
        assert!(dc.place(1, 1));
        dc.finish_creation();
        for t in [300.1, 600.1, 900.1] {
            dc.update_all(t);
        }
        assert_eq!(dc.hosts[0].slots[0].allocated, 1860.0);
        // 600 s short out of 1200 s of active host time.
        assert!((dc.slatah() - 0.5).abs() < 1e-12, "{}", dc.slatah());
        assert_eq!(dc.pdm(), 0.0);
    }

    #[test]
    fn an_oversubscribed_host_scales_every_vm_and_floors() {
        // Types 0, 1 and 2 at 99 %: 2475 and 1980 MIPS (each capped at a
        // PE, 1860) and 990 MIPS, 4710 in all on a G4 host of 3720: each
        // gets its share × 3720/4710, floored.
        let mut dc = Datacenter::with_hosts(vec![flat(99), flat(99), flat(99), flat(10)], 1);
        assert!(dc.place(0, 0));
        dc.finish_creation();
        dc.update_all(300.1);
        assert!(dc.vm_create(0, 1));
        assert!(dc.vm_create(0, 2));
        dc.update_all(600.1);
        let scale: f64 = 3720.0 / 4710.0;
        let allocated: Vec<f64> = dc.hosts[0].slots.iter().map(|s| s.allocated).collect();
        assert_eq!(
            allocated,
            [(1860.0 * scale).floor(), (1860.0 * scale).floor(), (990.0 * scale).floor()]
        );
        assert_eq!(allocated, [1469.0, 1469.0, 781.0]);
        assert_eq!(dc.hosts[0].available_mips, 0.0);
    }

    #[test]
    fn a_vm_asking_for_nothing_leaves() {
        let mut samples = vec![30; SAMPLES];
        samples[1] = 0;
        samples[2] = 0;
        let mut dc = Datacenter::with_hosts(vec![Trace::from_percent("idle", &samples)], 2);
        assert!(dc.place(0, 0));
        dc.finish_creation();
        dc.update_all(300.1);
        assert!(dc.vms[0].gone);
        assert!(dc.hosts[0].slots.is_empty());
    }
}
