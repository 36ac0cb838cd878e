//! ebb's consolidation policy for a farm of hosts (issue 13; the farm
//! coordinator's later, `ebb sim --policy ebb` now): which VMs to move so
//! that fewer hosts run without starving the VMs, moving as few as it can.
//!
//! What CloudSim's policies (Beloglazov & Buyya) do differently, and why
//! this one does not: they drain the least loaded host every round as soon
//! as its VMs fit elsewhere at their *current* demand, so a host filled at a
//! quiet moment overloads at the next bump and VMs come straight back off
//! it. Each move costs the VM 10 % of its CPU while it runs, and the
//! overloads cost SLA time. Here, as in ebb's host policies:
//!
//! - a VM's demand estimate has hysteresis: it rises at once and falls only
//!   after a window of quiet samples (the peak over `window`), and never
//!   below what its needs history says it usually asks at this hour, when
//!   the caller has one;
//! - hosts are packed to a band, not to the brim: the estimates on a host
//!   stay at or under `fill` of its capacity, so the bumps between rounds
//!   fit in the rest;
//! - a VM moves only to save a host or to relieve an overloaded one: a
//!   host is drained only after it stayed under `low` for `hold` rounds and
//!   only if all its VMs fit elsewhere (all or nothing); a host is relieved
//!   when its current demand passes `over`, of the VMs whose moves cost least
//!   (least demand × memory, what a live migration degrades), down to `fill`;
//! - a target is chosen by the power model: the running host whose power
//!   grows least; a sleeping host is woken only when no running one fits.
//!
//! Pure and deterministic: views in, moves out; the state it keeps between
//! rounds is the demand windows and the hold counters.

use crate::power::PowerModel;

/// Bands and holds, as shares of a host's CPU capacity and rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Estimates on a host stay at or under this share of its capacity.
    pub fill: f64,
    /// A host whose current demand passes this share is relieved.
    pub over: f64,
    /// A host whose estimates stay under this share may be drained.
    pub low: f64,
    /// Rounds a host must stay under `low` before it is drained.
    pub hold: u32,
    /// Rounds of demand a VM's estimate keeps its peak over.
    pub window: usize,
}

impl Default for Config {
    /// Rounds of 5 minutes: a VM's estimate holds its peak for 30 minutes,
    /// a host is drained after 15 minutes under half load.
    fn default() -> Config {
        Config { fill: 0.8, over: 0.95, low: 0.5, hold: 3, window: 6 }
    }
}

/// One host as the policy sees it.
#[derive(Clone, Debug)]
pub struct HostView<'a> {
    /// CPU capacity, in the unit of the VMs' demands.
    pub capacity: f64,
    /// The most one VM can get on it (one physical CPU for a one-vCPU VM).
    pub per_vm_max: f64,
    pub ram_mb: u64,
    pub power: &'a PowerModel,
    /// Running (holds VMs); a host that is not sleeps and draws nothing.
    pub on: bool,
}

/// One VM as the policy sees it.
#[derive(Clone, Debug)]
pub struct VmView {
    /// Where it runs; None for a VM that is gone.
    pub host: Option<usize>,
    /// CPU it asks for now.
    pub demand: f64,
    /// What its needs history says it usually asks at this hour, if known.
    pub usual: Option<f64>,
    /// Memory a host must hold for it.
    pub ram_mb: u64,
    /// Memory a live migration copies (its time, and so its cost).
    pub migrated_mb: u64,
}

/// Move `vm` to host `to`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Move {
    pub vm: usize,
    pub to: usize,
}

/// The policy with what it remembers between rounds.
#[derive(Clone, Debug)]
pub struct Consolidator {
    pub cfg: Config,
    /// Per VM, its last `window` demands, newest last.
    recent: Vec<Vec<f64>>,
    /// Per host, rounds in a row it stayed under `low`.
    low_for: Vec<u32>,
}

/// Per host tallies during a round.
#[derive(Clone, Debug, Default)]
struct Load {
    now: f64,
    estimate: f64,
    ram_mb: u64,
    vms: Vec<usize>,
}

impl Consolidator {
    pub fn new(cfg: Config, hosts: usize, vms: usize) -> Consolidator {
        Consolidator { cfg, recent: vec![Vec::new(); vms], low_for: vec![0; hosts] }
    }

    /// A VM's demand estimate: its peak over the window, at least what it
    /// usually asks at this hour.
    pub fn estimate(&self, vm: usize, v: &VmView) -> f64 {
        let peak = self.recent[vm].iter().copied().fold(v.demand, f64::max);
        peak.max(v.usual.unwrap_or(0.0))
    }

    /// Whether a VM with `estimate` and `ram_mb` fits on a host with `load`
    /// with the estimates at most `share` of its capacity.
    fn fits(h: &HostView, load: &Load, estimate: f64, ram_mb: u64, share: f64) -> bool {
        estimate <= h.per_vm_max && load.estimate + estimate <= share * h.capacity && load.ram_mb + ram_mb <= h.ram_mb
    }

    /// The host whose power grows least with the VM on it, running hosts
    /// first: a sleeping one is woken only when no running one fits.
    fn best_host(&self, hosts: &[HostView], loads: &[Load], skip: &[bool], estimate: f64, ram_mb: u64) -> Option<usize> {
        self.best_host_within(hosts, loads, skip, estimate, ram_mb, self.cfg.fill)
    }

    #[allow(clippy::too_many_arguments)]
    fn best_host_within(&self, hosts: &[HostView], loads: &[Load], skip: &[bool], estimate: f64, ram_mb: u64, share: f64) -> Option<usize> {
        let mut best: Option<(bool, f64, usize)> = None;
        for (i, h) in hosts.iter().enumerate() {
            if skip[i] || !Self::fits(h, &loads[i], estimate, ram_mb, share) {
                continue;
            }
            let on = h.on || !loads[i].vms.is_empty();
            let before = if on { h.power.host(loads[i].estimate / h.capacity).0 } else { 0.0 };
            let increase = h.power.host((loads[i].estimate + estimate) / h.capacity).0 - before;
            let key = (!on, increase, i);
            if best.is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
                best = Some(key);
            }
        }
        best.map(|b| b.2)
    }

    /// Where a new VM goes, asking `demand`. What a new VM will ask is not
    /// known, so the caller gives its full size (and the VMs placed before
    /// it theirs): that is conservative enough to fill hosts to their
    /// capacity; the band applies from the first round, when demands are
    /// known.
    pub fn place(&self, hosts: &[HostView], vms: &[VmView], demand: f64, ram_mb: u64) -> Option<usize> {
        let loads = self.loads(hosts, vms);
        self.best_host_within(hosts, &loads, &vec![false; hosts.len()], demand, ram_mb, 1.0)
    }

    fn loads(&self, hosts: &[HostView], vms: &[VmView]) -> Vec<Load> {
        let mut loads = vec![Load::default(); hosts.len()];
        for (i, v) in vms.iter().enumerate() {
            if let Some(h) = v.host {
                let l = &mut loads[h];
                l.now += v.demand;
                l.estimate += self.estimate(i, v);
                l.ram_mb += v.ram_mb;
                l.vms.push(i);
            }
        }
        loads
    }

    /// One round: records the demands, then the moves to make.
    pub fn step(&mut self, hosts: &[HostView], vms: &[VmView]) -> Vec<Move> {
        let cfg = self.cfg.clone();
        for (i, v) in vms.iter().enumerate() {
            let r = &mut self.recent[i];
            if v.host.is_some() {
                r.push(v.demand);
                if r.len() > cfg.window {
                    r.remove(0);
                }
            }
        }
        let mut loads = self.loads(hosts, vms);
        let est: Vec<f64> = vms.iter().enumerate().map(|(i, v)| self.estimate(i, v)).collect();
        let mut moves = Vec::new();
        // A host VMs leave this round takes none, and one VMs come to is
        // not drained: no VM moves twice, no host both gives and takes.
        let mut source = vec![false; hosts.len()];
        let mut receiving = vec![false; hosts.len()];
        // The hold counters: rounds in a row under `low`.
        for (h, host) in hosts.iter().enumerate() {
            let low = !loads[h].vms.is_empty() && loads[h].estimate < cfg.low * host.capacity;
            self.low_for[h] = if low { self.low_for[h] + 1 } else { 0 };
        }

        // Relieve overloaded hosts (and VMs a host's CPU cannot hold).
        for h in 0..hosts.len() {
            let host = &hosts[h];
            let too_big: Vec<usize> = loads[h].vms.iter().copied().filter(|&v| est[v] > host.per_vm_max).collect();
            if loads[h].now <= cfg.over * host.capacity && too_big.is_empty() {
                continue;
            }
            source[h] = true;
            let mut candidates = loads[h].vms.clone();
            // VMs the CPU cannot hold first, then the cheapest moves: least
            // CPU degraded for the least time.
            candidates.sort_by(|&a, &b| {
                let key = |v: usize| (est[v] <= host.per_vm_max, vms[v].demand * vms[v].migrated_mb as f64);
                key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
            });
            for v in candidates {
                if loads[h].now <= cfg.fill * host.capacity && !too_big.contains(&v) {
                    break;
                }
                let Some(to) = self.best_host(hosts, &loads, &source, est[v], vms[v].ram_mb) else { continue };
                self.commit(&mut loads, vms, &est, v, h, to);
                receiving[to] = true;
                moves.push(Move { vm: v, to });
            }
        }

        // Drain hosts held under `low`, least loaded first, all or nothing,
        // onto running hosts only.
        let mut under: Vec<usize> = (0..hosts.len()).filter(|&h| self.low_for[h] >= cfg.hold && !source[h] && !receiving[h]).collect();
        under.sort_by(|&a, &b| {
            let share = |h: usize| loads[h].estimate / hosts[h].capacity;
            share(a).total_cmp(&share(b)).then(a.cmp(&b))
        });
        for h in under {
            if receiving[h] {
                continue;
            }
            source[h] = true;
            let asleep = |i: usize| !hosts[i].on && loads[i].vms.is_empty();
            let skip: Vec<bool> = (0..hosts.len()).map(|i| source[i] || asleep(i)).collect();
            let mut here = loads[h].vms.clone();
            here.sort_by(|&a, &b| est[b].total_cmp(&est[a]).then(a.cmp(&b)));
            let mut trial = loads.clone();
            let mut planned = Vec::new();
            for &v in &here {
                let Some(to) = self.best_host(hosts, &trial, &skip, est[v], vms[v].ram_mb) else {
                    planned.clear();
                    break;
                };
                self.commit(&mut trial, vms, &est, v, h, to);
                planned.push(Move { vm: v, to });
            }
            if planned.is_empty() {
                source[h] = false;
                continue;
            }
            loads = trial;
            self.low_for[h] = 0;
            for m in &planned {
                receiving[m.to] = true;
            }
            moves.extend(planned);
        }
        moves
    }

    fn commit(&self, loads: &mut [Load], vms: &[VmView], est: &[f64], v: usize, from: usize, to: usize) {
        let (d, e, r) = (vms[v].demand, est[v], vms[v].ram_mb);
        let f = &mut loads[from];
        f.now -= d;
        f.estimate -= e;
        f.ram_mb -= r;
        f.vms.retain(|&x| x != v);
        let t = &mut loads[to];
        t.now += d;
        t.estimate += e;
        t.ram_mb += r;
        t.vms.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PowerModel {
        PowerModel::Linear { idle: crate::power::Watts(100.0), max: crate::power::Watts(200.0) }
    }

    fn host(p: &PowerModel, on: bool) -> HostView<'_> {
        HostView { capacity: 100.0, per_vm_max: 50.0, ram_mb: 4096, power: p, on }
    }

    fn vm(host: usize, demand: f64) -> VmView {
        VmView { host: Some(host), demand, usual: None, ram_mb: 512, migrated_mb: 512 }
    }

    fn cfg() -> Config {
        Config { fill: 0.8, over: 0.95, low: 0.5, hold: 2, window: 3 }
    }

    #[test]
    fn a_host_is_drained_only_after_its_hold() {
        let p = model();
        let hosts = [host(&p, true), host(&p, true)];
        let vms = [vm(0, 10.0), vm(1, 40.0)];
        let mut c = Consolidator::new(cfg(), 2, 2);
        assert!(c.step(&hosts, &vms).is_empty(), "one round under low is not enough");
        assert_eq!(c.step(&hosts, &vms), [Move { vm: 0, to: 1 }]);
    }

    #[test]
    fn a_drain_is_all_or_nothing() {
        let p = model();
        let hosts = [host(&p, true), host(&p, true)];
        // Host 0's two VMs (30 + 15) do not both fit beside host 1's 40 under 80.
        let vms = [vm(0, 30.0), vm(0, 15.0), vm(1, 40.0)];
        let mut c = Consolidator::new(Config { hold: 1, ..cfg() }, 2, 3);
        let moves = c.step(&hosts, &vms);
        // Host 1 (40) is drained into host 0 instead: 45 + 40 > 80, so nothing.
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn the_estimate_keeps_a_peak_for_the_window() {
        let p = model();
        let hosts = [host(&p, true)];
        let mut c = Consolidator::new(cfg(), 1, 1);
        c.step(&hosts, &[vm(0, 45.0)]);
        for _ in 0..2 {
            c.step(&hosts, &[vm(0, 5.0)]);
            assert_eq!(c.estimate(0, &vm(0, 5.0)), 45.0);
        }
        c.step(&hosts, &[vm(0, 5.0)]);
        assert_eq!(c.estimate(0, &vm(0, 5.0)), 5.0, "three quiet rounds later it falls");
        let usual = VmView { usual: Some(20.0), ..vm(0, 5.0) };
        assert_eq!(c.estimate(0, &usual), 20.0, "never below its usual demand");
    }

    #[test]
    fn an_overloaded_host_sheds_its_cheapest_vms_down_to_fill() {
        let p = model();
        let hosts = [host(&p, true), host(&p, true), host(&p, false)];
        // Host 0 asks 98 > 95: shedding the 20 (least demand × memory) is
        // enough to get to 78 ≤ 80. It goes to the running host 1, not the
        // sleeping host 2.
        let vms = [vm(0, 38.0), vm(0, 40.0), vm(0, 20.0), vm(1, 50.0)];
        let mut c = Consolidator::new(Config { hold: 100, ..cfg() }, 3, 4);
        assert_eq!(c.step(&hosts, &vms), [Move { vm: 2, to: 1 }]);
    }

    #[test]
    fn a_sleeping_host_wakes_only_when_no_running_one_fits() {
        let p = model();
        let hosts = [host(&p, true), host(&p, true), host(&p, false)];
        let vms = [vm(0, 38.0), vm(0, 40.0), vm(0, 20.0), vm(1, 70.0)];
        let mut c = Consolidator::new(Config { hold: 100, ..cfg() }, 3, 4);
        assert_eq!(c.step(&hosts, &vms), [Move { vm: 2, to: 2 }]);
    }

    #[test]
    fn a_vm_too_big_for_its_hosts_cpu_moves_to_one_that_holds_it() {
        let p = model();
        let small = HostView { per_vm_max: 30.0, ..host(&p, true) };
        let hosts = [small, host(&p, true)];
        let vms = [vm(0, 40.0), vm(1, 10.0)];
        let mut c = Consolidator::new(Config { hold: 100, ..cfg() }, 2, 2);
        assert_eq!(c.step(&hosts, &vms), [Move { vm: 0, to: 1 }]);
    }
}
