//! The policies of Beloglazov & Buyya (CCPE 2012) as CloudSim 3.0.3 has
//! them: NPA, DVFS, and consolidation with an overload detector (THR, LR,
//! IQR, MAD), minimum-migration-time VM selection and power-aware best-fit
//! decreasing placement, draining underloaded hosts.

pub mod ebb;

use crate::datacenter::{Datacenter, HostId, VmId, HISTORY};
use crate::power::HostType;
use std::fmt;
use std::str::FromStr;

/// When a host counts as overloaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detector {
    /// Requested CPU above a fixed share of the host.
    Threshold(f64),
    /// Least squares over the last 10 host utilisations, one step ahead,
    /// times a safety factor, at or above 1.
    LocalRegression(f64),
    /// Requested CPU above 1 − s·IQR of the host's history.
    InterQuartileRange(f64),
    /// Requested CPU above 1 − s·MAD of the host's history.
    MedianAbsoluteDeviation(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// No power management: every host at full power all day.
    Npa,
    /// First fit at creation, power follows load, no migrations.
    Dvfs,
    /// Overload detection, MMT selection, PABFD placement, underload drain.
    Consolidate(Detector),
    /// ebb's own: `ebb_core::consolidate` (bands, holds, demand estimates
    /// with hysteresis, moves only to save a host or relieve one).
    Ebb,
}

/// The fallback of the history-based detectors while a host's history is
/// short (`RunnerAbstract.getVmAllocationPolicy`).
const FALLBACK_THRESHOLD: f64 = 0.7;
/// Host utilisations the regression is fitted on.
const REGRESSION_POINTS: usize = 10;
/// Host utilisations IQR and MAD need.
const ROBUST_POINTS: usize = 12;

#[derive(Debug, thiserror::Error)]
#[error("unknown policy {0:?}: one of npa, dvfs, ebb, thr-mmt-T, lr-mmt-S, iqr-mmt-S, mad-mmt-S (e.g. thr-mmt-0.8, lr-mmt-1.2)")]
pub struct UnknownPolicy(String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        let err = || UnknownPolicy(s.to_string());
        match s {
            "npa" => return Ok(Policy::Npa),
            "dvfs" => return Ok(Policy::Dvfs),
            "ebb" => return Ok(Policy::Ebb),
            _ => {}
        }
        // CloudSim's runner names use underscores: accept both.
        let norm = s.replace('_', "-");
        let mut parts = norm.splitn(3, '-');
        let (detector, selection, param) = (parts.next(), parts.next(), parts.next());
        if selection != Some("mmt") {
            return Err(err());
        }
        let p: f64 = param
            .and_then(|p| p.parse().ok())
            .filter(|p: &f64| p.is_finite() && *p >= 0.0)
            .ok_or_else(err)?;
        let d = match detector {
            Some("thr") => Detector::Threshold(p),
            Some("lr") | Some("lrr") => Detector::LocalRegression(p),
            Some("iqr") => Detector::InterQuartileRange(p),
            Some("mad") => Detector::MedianAbsoluteDeviation(p),
            _ => return Err(err()),
        };
        Ok(Policy::Consolidate(d))
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Npa => write!(f, "npa"),
            Policy::Dvfs => write!(f, "dvfs"),
            Policy::Ebb => write!(f, "ebb"),
            Policy::Consolidate(Detector::Threshold(t)) => write!(f, "thr-mmt-{t}"),
            Policy::Consolidate(Detector::LocalRegression(s)) => write!(f, "lr-mmt-{s}"),
            Policy::Consolidate(Detector::InterQuartileRange(s)) => write!(f, "iqr-mmt-{s}"),
            Policy::Consolidate(Detector::MedianAbsoluteDeviation(s)) => write!(f, "mad-mmt-{s}"),
        }
    }
}

/// Places every VM at the start, in VM order, each asking for all its MIPS
/// while it is created and nothing once it is (see [`Datacenter::place`]).
pub fn place_initial(dc: &mut Datacenter, policy: Policy) {
    let ebb = ebb::Ebb::new(dc);
    let mut histories = Histories::new(dc);
    for vm in 0..dc.vms.len() {
        let host = match policy {
            Policy::Npa | Policy::Dvfs => (0..dc.hosts.len()).find(|&h| dc.is_suitable(h, vm)),
            Policy::Consolidate(d) => find_host(dc, &mut histories, d, vm, &Excluded::none(dc.hosts.len())),
            Policy::Ebb => ebb.place(dc, vm),
        };
        // CloudSim leaves a VM that fits nowhere out; the day's VMs all fit.
        if let Some(h) = host {
            dc.place(h, vm);
        }
    }
    dc.finish_creation();
}

/// Hosts left out of a search.
#[derive(Debug, Clone)]
pub struct Excluded {
    hosts: Vec<bool>,
    count: usize,
}

impl Excluded {
    pub fn none(hosts: usize) -> Excluded {
        Excluded {
            hosts: vec![false; hosts],
            count: 0,
        }
    }
    fn add(&mut self, h: HostId) {
        if !self.hosts[h] {
            self.hosts[h] = true;
            self.count += 1;
        }
    }
    fn has(&self, h: HostId) -> bool {
        self.hosts[h]
    }
    fn count(&self) -> usize {
        self.count
    }
}

/// Host utilisation histories (`PowerHostUtilizationHistory`): its VMs'
/// histories weighted by their MIPS, newest first. VM histories stay put
/// during a decision, so a host's is summed once until its VM list changes;
/// the VM being tried on it is added last, as CloudSim's list has it.
struct Histories {
    /// Per host: the sum over its VMs, and the host's slot changes then.
    sums: Vec<Option<(u64, [f64; HISTORY])>>,
}

impl Histories {
    fn new(dc: &Datacenter) -> Histories {
        Histories {
            sums: vec![None; dc.hosts.len()],
        }
    }

    /// The host's history with `extra` on it, trailing zeros cut: the
    /// values and how many there are.
    fn get(&mut self, dc: &Datacenter, host: HostId, extra: Option<VmId>) -> ([f64; HISTORY], usize) {
        let h = &dc.hosts[host];
        let host_mips = h.total_mips();
        let add = |hist: &mut [f64; HISTORY], vm: VmId| {
            let v = &dc.vms[vm];
            for (i, u) in v.history.iter().enumerate() {
                hist[i] += u * v.mips / host_mips;
            }
        };
        let mut hist = match self.sums[host] {
            Some((changes, sum)) if changes == h.slot_changes() => sum,
            _ => {
                let mut sum = [0.0; HISTORY];
                for vm in h.vm_ids() {
                    add(&mut sum, vm);
                }
                self.sums[host] = Some((h.slot_changes(), sum));
                sum
            }
        };
        if let Some(vm) = extra {
            add(&mut hist, vm);
        }
        let len = hist.iter().rposition(|&u| u != 0.0).map_or(0, |i| i + 1);
        (hist, len)
    }
}

fn requested_share(dc: &Datacenter, host: HostId, extra: Option<VmId>) -> f64 {
    let h = &dc.hosts[host];
    let mut sum = 0.0;
    for vm in h.vm_ids().chain(extra) {
        sum += dc.vms[vm].request;
    }
    sum / h.total_mips()
}

/// Whether the host (with `extra` on it, if given) is overloaded.
fn is_overloaded(dc: &Datacenter, histories: &mut Histories, d: Detector, host: HostId, extra: Option<VmId>) -> bool {
    let fallback = || requested_share(dc, host, extra) > FALLBACK_THRESHOLD;
    match d {
        Detector::Threshold(t) => requested_share(dc, host, extra) > t,
        Detector::LocalRegression(safety) => {
            let (hist, len) = histories.get(dc, host, extra);
            if len < REGRESSION_POINTS {
                return fallback();
            }
            let mut oldest_first = [0.0; REGRESSION_POINTS];
            for (o, &u) in oldest_first.iter_mut().zip(hist[..REGRESSION_POINTS].iter().rev()) {
                *o = u;
            }
            let (intercept, slope) = least_squares(&oldest_first);
            // Steps a migration of the host's largest VM takes (1 for ≤ 1740 MB).
            let max_ram = dc.hosts[host].vm_ids().chain(extra).map(|v| dc.vms[v].ram_mb).max().unwrap_or(0);
            let seconds = crate::power::migration_seconds(max_ram, dc.hosts[host].kind.bw);
            let steps = (seconds / crate::trace::SAMPLE_SECONDS).ceil();
            let predicted = (intercept + slope * (REGRESSION_POINTS as f64 + steps)) * safety;
            predicted >= 1.0
        }
        Detector::InterQuartileRange(s) | Detector::MedianAbsoluteDeviation(s) => {
            let (hist, len) = histories.get(dc, host, extra);
            let hist = &hist[..len];
            if len < ROBUST_POINTS {
                return fallback();
            }
            let spread = match d {
                Detector::InterQuartileRange(_) => iqr(hist),
                _ => mad(hist),
            };
            requested_share(dc, host, extra) > 1.0 - s * spread
        }
    }
}

/// Intercept and slope of y over x = 1..n, with the update formulas of
/// commons-math's `SimpleRegression` (what CloudSim's "loess" reduces to:
/// its weights are never applied).
pub fn least_squares(y: &[f64]) -> (f64, f64) {
    let (mut n, mut xbar, mut ybar) = (0.0f64, 0.0, 0.0);
    let (mut sxx, mut sxy, mut sum_x, mut sum_y) = (0.0, 0.0, 0.0, 0.0);
    for (i, &yi) in y.iter().enumerate() {
        let x = (i + 1) as f64;
        if n == 0.0 {
            xbar = x;
            ybar = yi;
        } else {
            let fact1 = 1.0 + n;
            let fact2 = n / (1.0 + n);
            let dx = x - xbar;
            let dy = yi - ybar;
            sxx += dx * dx * fact2;
            sxy += dx * dy * fact2;
            xbar += dx / fact1;
            ybar += dy / fact1;
        }
        sum_x += x;
        sum_y += yi;
        n += 1.0;
    }
    let slope = sxy / sxx;
    ((sum_y - slope * sum_x) / n, slope)
}

/// commons-math's default percentile estimate.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len() as f64;
    let pos = p * (n + 1.0) / 100.0;
    if pos < 1.0 {
        return sorted[0];
    }
    if pos >= n {
        return sorted[sorted.len() - 1];
    }
    let lower = sorted[pos.floor() as usize - 1];
    let upper = sorted[pos.floor() as usize];
    lower + (pos - pos.floor()) * (upper - lower)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn mad(data: &[f64]) -> f64 {
    let median = percentile(&sorted(data), 50.0);
    let dev: Vec<f64> = data.iter().map(|x| (median - x).abs()).collect();
    percentile(&sorted(&dev), 50.0)
}

fn iqr(data: &[f64]) -> f64 {
    let s = sorted(data);
    let n = s.len() as f64;
    let q1 = (0.25 * (n + 1.0)).round() as usize - 1;
    let q3 = (0.75 * (n + 1.0)).round() as usize - 1;
    s[q3] - s[q1]
}

/// Power-aware best fit: of the hosts not excluded that fit the VM and would
/// not be overloaded with it (unless empty), the one whose power grows least
/// (`findHostForVm`). A host's power "now" is the one of its last update.
fn find_host(dc: &mut Datacenter, histories: &mut Histories, d: Detector, vm: VmId, excluded: &Excluded) -> Option<HostId> {
    let mut min_increase = f64::MAX;
    let mut best = None;
    let request = dc.vms[vm].request;
    // Most hosts are empty, and an empty host's power with the VM on it
    // depends on its type only: looked up once per type.
    let mut empty_after: Vec<(&'static HostType, f64)> = Vec::with_capacity(2);
    for host in 0..dc.hosts.len() {
        if excluded.has(host) || !dc.is_suitable(host, vm) {
            continue;
        }
        let allocated = dc.hosts[host].allocated_mips();
        if allocated != 0.0 {
            // CloudSim tries the VM on the host before anything else
            // (`isHostOverUtilizedAfterAllocation`); of that trial only its
            // side effect on the VM's migrating-out mark there lasts (a
            // suitable host always takes the VM, and giving it back leaves
            // the scheduler's shares as they were).
            dc.mark_migration(host, vm);
        }
        let h = &dc.hosts[host];
        let power_with_vm = || h.kind.power((allocated + request) / h.total_mips());
        let after = if allocated == 0.0 {
            match empty_after.iter().find(|(kind, _)| std::ptr::eq(*kind, h.kind)) {
                Some(&(_, after)) => after,
                None => {
                    let after = power_with_vm();
                    empty_after.push((h.kind, after));
                    after
                }
            }
        } else {
            power_with_vm()
        };
        let increase = after - h.power_now();
        // The overload check is the expensive part: only for a host that
        // would be chosen otherwise.
        if increase < min_increase && !(allocated != 0.0 && is_overloaded(dc, histories, d, host, Some(vm))) {
            min_increase = increase;
            best = Some(host);
        }
    }
    best
}

/// Minimum migration time: the VM with the least RAM not migrating, first in
/// the host's list on a tie.
fn select_mmt(dc: &Datacenter, host: HostId) -> Option<VmId> {
    let mut best: Option<VmId> = None;
    for vm in dc.hosts[host].vm_ids() {
        let v = &dc.vms[vm];
        if v.in_migration {
            continue;
        }
        if best.is_none_or(|b| v.ram_mb < dc.vms[b].ram_mb) {
            best = Some(vm);
        }
    }
    best
}

/// VMs in decreasing order of current CPU demand (stable).
fn sort_by_demand(dc: &Datacenter, vms: &mut [VmId]) {
    vms.sort_by(|&a, &b| dc.vms[b].request.total_cmp(&dc.vms[a].request));
}

/// One consolidation round (`optimizeAllocation`): the migrations to start.
pub fn optimize(dc: &mut Datacenter, d: Detector) -> Vec<(VmId, HostId)> {
    let n = dc.hosts.len();
    let mut histories = Histories::new(dc);
    let overloaded: Vec<HostId> = (0..n).filter(|&h| is_overloaded(dc, &mut histories, d, h, None)).collect();
    let saved = dc.save();

    // Take VMs off each overloaded host until it is not.
    let mut to_move = Vec::new();
    for &host in &overloaded {
        while let Some(vm) = select_mmt(dc, host) {
            to_move.push(vm);
            dc.vm_destroy(host, vm);
            if !is_overloaded(dc, &mut histories, d, host, None) {
                break;
            }
        }
    }
    let mut excluded = Excluded::none(n);
    for &h in &overloaded {
        excluded.add(h);
    }
    let mut plan = Vec::new();
    sort_by_demand(dc, &mut to_move);
    for vm in to_move {
        if let Some(target) = find_host(dc, &mut histories, d, vm, &excluded) {
            dc.vm_create(target, vm);
            plan.push((vm, target));
        }
    }

    // Drain the least loaded hosts, all VMs or none.
    let switched_off: Vec<HostId> = (0..n).filter(|&h| dc.hosts[h].utilization() == 0.0).collect();
    let mut not_source = excluded.clone();
    let mut not_target = excluded;
    for &h in &switched_off {
        not_source.add(h);
        not_target.add(h);
    }
    let mut by_utilization = UtilizationOrder::new(dc);
    while not_source.count() < n {
        let Some(host) = by_utilization.least(dc, &not_source) else { break };
        not_source.add(host);
        not_target.add(host);
        let mut vms: Vec<VmId> = dc.hosts[host].vm_ids().filter(|&v| !dc.vms[v].in_migration).collect();
        if vms.is_empty() {
            continue;
        }
        sort_by_demand(dc, &mut vms);
        let mut moves = Vec::new();
        for &vm in &vms {
            match find_host(dc, &mut histories, d, vm, &not_target) {
                Some(target) => {
                    dc.vm_create(target, vm);
                    moves.push((vm, target));
                }
                None => {
                    for &(vm, target) in &moves {
                        dc.vm_destroy(target, vm);
                    }
                    moves.clear();
                    break;
                }
            }
        }
        for &(_, target) in &moves {
            not_source.add(target);
        }
        plan.extend(moves);
    }
    dc.restore(&saved);
    plan
}

/// The active hosts by utilisation at their last update, which stays put
/// during a decision: least first, by id on a tie.
struct UtilizationOrder {
    hosts: Vec<HostId>,
    /// Hosts before this one are all excluded (exclusions only grow).
    start: usize,
}

impl UtilizationOrder {
    fn new(dc: &Datacenter) -> UtilizationOrder {
        let mut hosts: Vec<HostId> = (0..dc.hosts.len())
            .filter(|&h| {
                let u = dc.hosts[h].utilization();
                u > 0.0 && u < 1.0
            })
            .collect();
        // Stable: equal utilisations stay in id order.
        hosts.sort_by(|&a, &b| dc.hosts[a].utilization().total_cmp(&dc.hosts[b].utilization()));
        UtilizationOrder { hosts, start: 0 }
    }

    /// The active host with the least utilisation, below 1, not excluded,
    /// that is not only sending or receiving VMs (`getUnderUtilizedHost`).
    fn least(&mut self, dc: &Datacenter, excluded: &Excluded) -> Option<HostId> {
        while self.hosts.get(self.start).is_some_and(|&h| excluded.has(h)) {
            self.start += 1;
        }
        self.hosts[self.start..]
            .iter()
            .copied()
            .find(|&h| !excluded.has(h) && !all_migrating_out_or_any_in(dc, h))
    }
}

fn all_migrating_out_or_any_in(dc: &Datacenter, host: HostId) -> bool {
    let h = &dc.hosts[host];
    for vm in h.vm_ids() {
        if !dc.vms[vm].in_migration {
            return false;
        }
        if h.migrating_in.contains(&vm) {
            return true;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_and_print() {
        assert_eq!("npa".parse::<Policy>().unwrap(), Policy::Npa);
        assert_eq!(
            "thr-mmt-0.8".parse::<Policy>().unwrap(),
            Policy::Consolidate(Detector::Threshold(0.8))
        );
        assert_eq!(
            "lr_mmt_1.2".parse::<Policy>().unwrap(),
            Policy::Consolidate(Detector::LocalRegression(1.2))
        );
        assert_eq!("mad-mmt-2.5".parse::<Policy>().unwrap().to_string(), "mad-mmt-2.5");
        assert!("thr-mu-0.8".parse::<Policy>().is_err());
        assert!("thr-mmt-x".parse::<Policy>().is_err());
    }

    #[test]
    fn initial_placement_checks_overload_with_only_the_new_vms_request() {
        // Eight VMs: 0 and 1 are type 0 (2500 MIPS), which only a G5 PE
        // (2660) holds; host 1 is the only G5. Both asking in full would be
        // 5000 / 5320 > 0.8, but VM 0 asks for nothing once created, so VM 1
        // joins it (CloudSim places every VM of the PlanetLab days this way).
        let traces = (0..8).map(|_| crate::trace::Trace::from_percent("vm", &[50; crate::trace::SAMPLES])).collect();
        let mut dc = Datacenter::with_hosts(traces, 2);
        place_initial(&mut dc, Policy::Consolidate(Detector::Threshold(0.8)));
        assert_eq!(dc.vms[0].host, Some(1));
        assert_eq!(dc.vms[1].host, Some(1));
    }

    #[test]
    fn least_squares_fits_a_line_exactly() {
        let y: Vec<f64> = (1..=10).map(|x| 0.3 + 0.05 * x as f64).collect();
        let (a, b) = least_squares(&y);
        assert!((a - 0.3).abs() < 1e-12 && (b - 0.05).abs() < 1e-12);
    }

    #[test]
    fn robust_spreads_match_commons_math() {
        let data = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.6, 0.8, 0.7, 0.0, 0.55, 0.45];
        // Sorted: 0, .1, .2, .3, .4, .45, .5, .55, .6, .7, .8, .9; q1 index 2, q3 index 9.
        assert!((iqr(&data) - 0.5).abs() < 1e-12);
        // Median (pos 6.5) = .475; the deviations' median (pos 6.5) = (.175 + .225) / 2.
        assert!((mad(&data) - 0.2).abs() < 1e-12, "{}", mad(&data));
    }
}
