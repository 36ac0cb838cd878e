//! Host power, the pure part (seed 000, SPEC §4; anchor: CloudSim's power
//! models): what the host and each VM draw, and which VMs to keep running
//! when the power available falls below the draw (the seed's Figure 3).
//!
//! The draw model is CloudSim's: the host's power as a function of its CPU
//! use, linear between idle and full load or interpolated in an 11-point
//! SPECpower-style table; a VM draws what it adds to the host's power.
//!
//! The choice is a 0/1 knapsack: keep the subset of VMs with the most value
//! whose draw fits the budget. Draws are counted in whole watts (rounded up,
//! so a plan never overruns) and the dynamic program over watts is exact at
//! that resolution while VMs × budget watts stays under `WORK` (20 VMs up to
//! 20 kW, 1,000 VMs up to 5 kW); beyond, the watt unit grows so the work
//! stays bounded, each draw rounded up to it: never over the budget, at
//! most one unit per kept VM from the optimum.

use crate::human::Span;
use crate::model::VmId;
use serde::{Deserialize, Serialize};

mod plan_view;
pub use plan_view::{model_draw, plan_view, PlanView};

/// Power in watts.
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Watts(pub f64);

impl std::fmt::Display for Watts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} W", self.0)
    }
}

/// Where the host's power comes from, as the platform reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerReading {
    /// "UPS name@host:port" (with " over TLS" when upsd is authenticated) or "sysfs BAT0".
    pub source: String,
    /// The source's own words, e.g. NUT's `ups.status` "OB LB".
    pub status: String,
    pub on_battery: bool,
    pub low_battery: bool,
    /// The UPS (or its master) orders a shutdown now.
    pub forced_shutdown: bool,
    /// Battery charge, percent.
    pub charge: Option<f64>,
    /// Battery runtime left, seconds.
    pub runtime_s: Option<f64>,
    /// What the host draws, as measured by the source.
    pub draw: Option<Watts>,
}

/// When the battery counts as low besides the source's own LB flag: the
/// `[power]` section's `low_charge` and `low_runtime`, whose defaults are
/// these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowBattery {
    /// Percent of charge at or below which the battery is low.
    pub charge: f64,
    /// Runtime left at or below which the battery is low.
    pub runtime: Span,
}

impl Default for LowBattery {
    fn default() -> Self {
        LowBattery { charge: 20.0, runtime: Span::from_secs(300) }
    }
}

/// The power state ebb acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "why")]
pub enum PowerState {
    OnMains,
    OnBattery,
    /// Save every VM and power the host down (the seed's Figure 4); why, in words.
    Low(String),
}

impl PowerReading {
    /// On battery and low (the LB or FSD flag, or under the configured
    /// charge or runtime): every VM is saved and the host powered down.
    pub fn state(&self, low: &LowBattery) -> PowerState {
        let mut why = vec![];
        if self.forced_shutdown {
            why.push("the UPS orders a shutdown (FSD)".to_string());
        }
        if self.on_battery {
            if self.low_battery {
                why.push("the battery is low (LB)".into());
            }
            if let Some(c) = self.charge.filter(|c| *c <= low.charge) {
                why.push(format!("charge {c:.0}% (low at {:.0}%)", low.charge));
            }
            let low_s = low.runtime.as_duration().as_secs_f64();
            if let Some(r) = self.runtime_s.filter(|r| *r <= low_s) {
                why.push(format!("{r:.0} s of runtime left (low at {low_s:.0} s)"));
            }
        }
        match (why.is_empty(), self.on_battery) {
            (false, _) => PowerState::Low(format!("{}: {}", self.source, why.join(", "))),
            (true, true) => PowerState::OnBattery,
            (true, false) => PowerState::OnMains,
        }
    }
}

/// The host's draw as something measured it (RAPL), next to the model's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub source: String,
    pub watts: Watts,
}

/// Watts between two readings of a RAPL energy counter (µJ), `secs` apart;
/// the counter wraps at `range_uj`. None without time between them.
pub fn rapl_watts(before_uj: u64, after_uj: u64, range_uj: u64, secs: f64) -> Option<Watts> {
    if secs <= 0.0 {
        return None;
    }
    let used = if after_uj >= before_uj { after_uj - before_uj } else { range_uj.saturating_sub(before_uj) + after_uj };
    Some(Watts(used as f64 / 1e6 / secs))
}

/// The host's power as a function of its CPU use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PowerModel {
    /// Linear from `idle` (no load) to `max` (all CPUs busy).
    Linear { idle: Watts, max: Watts },
    /// Watts at 0 %, 10 %, …, 100 % CPU use (a SPECpower result's 11 points).
    Table([f64; 11]),
}

impl PowerModel {
    /// The host's power at `use_` (0.0 = idle, 1.0 = every CPU busy).
    pub fn host(&self, use_: f64) -> Watts {
        let u = use_.clamp(0.0, 1.0);
        match self {
            PowerModel::Linear { idle, max } => Watts(idle.0 + (max.0 - idle.0) * u),
            PowerModel::Table(points) => {
                let x = u * 10.0;
                let i = (x.floor() as usize).min(9);
                Watts(points[i] + (points[i + 1] - points[i]) * (x - i as f64))
            }
        }
    }

    pub fn idle(&self) -> Watts {
        self.host(0.0)
    }

    /// What each VM adds to the host's idle power, as if it ran alone: its
    /// CPU (in CPUs' worth) against the host's `cpus`. Draws add up, which
    /// the plan needs; on a host whose CPUs are oversubscribed the sum is
    /// more than the host can draw, so a plan on them errs towards saving.
    pub fn vm_draws(&self, cpus: u32, vm_cpu: &[f64]) -> Vec<Watts> {
        let cpus = f64::from(cpus.max(1));
        let idle = self.idle().0;
        vm_cpu.iter().map(|c| Watts((self.host(c / cpus).0 - idle).max(0.0))).collect()
    }
}

/// One VM as the power-drop plan sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub vm: VmId,
    pub draw: Watts,
    /// Its value to the user (settings or the API); higher is kept first.
    pub value: u32,
    /// Idle: saved first, whatever its value (the seed's quiescent VMs).
    pub quiescent: bool,
}

/// Which VMs keep running under a power budget, and the order to save the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerPlan {
    pub budget: Watts,
    pub keep: Vec<VmId>,
    /// Saved in this order: quiescent VMs first, then the least valuable.
    pub save: Vec<VmId>,
    pub kept_value: u64,
    pub kept_draw: Watts,
}

/// Cells of the dynamic program (VMs × budget units) before the unit grows.
const WORK: usize = 5_000_000;
/// Budget units at most, however few the VMs.
const MAX_UNITS: usize = 20_000;

/// The subset with the most value whose draws fit `budget`: indices into
/// `items` of (draw, value); see the module's note on exactness.
pub fn best_subset(budget: Watts, items: &[(Watts, u32)]) -> Vec<usize> {
    if budget.0 <= 0.0 || items.is_empty() {
        return vec![];
    }
    // Units of `scale` watts: draws rounded up, the budget down.
    let units = (WORK / items.len()).clamp(1_000, MAX_UNITS);
    let scale = (budget.0 / units as f64).max(1.0);
    let cap = (budget.0 / scale).floor() as usize;
    let weights: Vec<usize> = items.iter().map(|(w, _)| (w.0.max(0.0) / scale).ceil() as usize).collect();
    // best[c] = the most value within c units; bit (i, c) of `taken`: item i
    // improved best[c] when it was considered.
    let row = cap + 1;
    let mut best = vec![0u64; row];
    let mut taken = vec![0u64; (items.len() * row).div_ceil(64)];
    let bit = |i: usize, c: usize| (i * row + c) / 64;
    let mask = |i: usize, c: usize| 1u64 << ((i * row + c) % 64);
    for (i, (&w, &(_, value))) in weights.iter().zip(items).enumerate() {
        if w > cap {
            continue;
        }
        for c in (w..=cap).rev() {
            let with = best[c - w] + u64::from(value);
            if with > best[c] {
                best[c] = with;
                taken[bit(i, c)] |= mask(i, c);
            }
        }
    }
    let mut out = vec![];
    let mut c = cap;
    for i in (0..items.len()).rev() {
        if taken[bit(i, c)] & mask(i, c) != 0 {
            out.push(i);
            c -= weights[i];
        }
    }
    out.reverse();
    out
}

/// The seed's Figure 3: quiescent VMs are saved first; if the others still
/// draw more than `budget`, the most valuable subset that fits is kept and
/// the rest are saved, least valuable first.
pub fn plan_power_drop(budget: Watts, vms: &[Candidate]) -> PowerPlan {
    let active: Vec<&Candidate> = vms.iter().filter(|c| !c.quiescent).collect();
    let total: f64 = active.iter().map(|c| c.draw.0).sum();
    let keep_idx: Vec<usize> = if total <= budget.0 {
        (0..active.len()).collect()
    } else {
        best_subset(budget, &active.iter().map(|c| (c.draw, c.value)).collect::<Vec<_>>())
    };
    let keep: Vec<&Candidate> = keep_idx.iter().map(|&i| active[i]).collect();
    let mut dropped: Vec<&Candidate> = active.iter().enumerate().filter(|(i, _)| !keep_idx.contains(i)).map(|(_, c)| *c).collect();
    dropped.sort_by(|a, b| a.value.cmp(&b.value).then(b.draw.0.total_cmp(&a.draw.0)));
    let mut quiescent: Vec<&Candidate> = vms.iter().filter(|c| c.quiescent).collect();
    quiescent.sort_by_key(|c| c.value);
    PowerPlan {
        budget,
        kept_value: keep.iter().map(|c| u64::from(c.value)).sum(),
        kept_draw: Watts(keep.iter().map(|c| c.draw.0).sum()),
        keep: keep.iter().map(|c| c.vm.clone()).collect(),
        save: quiescent.iter().chain(dropped.iter()).map(|c| c.vm.clone()).collect(),
    }
}

/// The reference the tests check `best_subset` against; the power bench
/// includes the same file by path. Not part of the crate's API.
#[cfg(test)]
mod brute_force;

#[cfg(test)]
mod tests {
    use super::brute_force::best_value_by_brute_force;
    use super::*;

    #[test]
    fn rapl_counters_give_watts_across_a_wrap() {
        assert_eq!(rapl_watts(1_000_000, 21_000_000, 100_000_000, 2.0), Some(Watts(10.0)));
        // Wrapped: 5 J to the end of the range, then 15 J.
        assert_eq!(rapl_watts(95_000_000, 15_000_000, 100_000_000, 2.0), Some(Watts(10.0)));
        assert_eq!(rapl_watts(1, 2, 10, 0.0), None);
    }
    use proptest::prelude::*;


    proptest! {
        #[test]
        fn the_subset_is_optimal_and_fits(
            items in proptest::collection::vec((1u32..300, 0u32..1000), 0..12),
            budget in 0u32..1500,
        ) {
            let items: Vec<(Watts, u32)> = items.into_iter().map(|(w, v)| (Watts(f64::from(w)), v)).collect();
            let budget = Watts(f64::from(budget));
            let chosen = best_subset(budget, &items);
            let draw: f64 = chosen.iter().map(|&i| items[i].0 .0).sum();
            let value: u64 = chosen.iter().map(|&i| u64::from(items[i].1)).sum();
            prop_assert!(draw <= budget.0);
            prop_assert_eq!(value, best_value_by_brute_force(budget, &items));
        }

        #[test]
        fn a_scaled_budget_still_fits(
            items in proptest::collection::vec((1u32..20_000, 1u32..1000), 1..10),
            budget in 20_000u32..200_000,
        ) {
            let items: Vec<(Watts, u32)> = items.into_iter().map(|(w, v)| (Watts(f64::from(w)), v)).collect();
            let chosen = best_subset(Watts(f64::from(budget)), &items);
            let draw: f64 = chosen.iter().map(|&i| items[i].0 .0).sum();
            prop_assert!(draw <= f64::from(budget));
        }
    }

    #[test]
    fn low_battery_from_flags_charge_and_runtime() {
        let r = |on_battery, lb, charge, runtime| PowerReading {
            source: "UPS t".into(),
            status: String::new(),
            on_battery,
            low_battery: lb,
            forced_shutdown: false,
            charge,
            runtime_s: runtime,
            draw: None,
        };
        let low = LowBattery::default();
        assert_eq!(r(false, false, Some(100.0), None).state(&low), PowerState::OnMains);
        assert_eq!(r(true, false, Some(90.0), Some(3000.0)).state(&low), PowerState::OnBattery);
        assert!(matches!(r(true, true, Some(90.0), None).state(&low), PowerState::Low(w) if w.contains("LB")));
        assert!(matches!(r(true, false, Some(15.0), None).state(&low), PowerState::Low(w) if w.contains("charge 15%")));
        assert!(matches!(r(true, false, None, Some(100.0)).state(&low), PowerState::Low(w) if w.contains("100 s")));
        // A low charge while on mains (charging back up) is not an emergency.
        assert_eq!(r(false, false, Some(10.0), None).state(&low), PowerState::OnMains);
        let fsd = PowerReading { forced_shutdown: true, ..r(false, false, None, None) };
        assert!(matches!(fsd.state(&low), PowerState::Low(w) if w.contains("FSD")));
    }

    #[test]
    fn models() {
        let lin = PowerModel::Linear { idle: Watts(100.0), max: Watts(200.0) };
        assert_eq!(lin.host(0.5), Watts(150.0));
        // Two VMs each busy on one of 4 CPUs: each adds a quarter of the range.
        assert_eq!(lin.vm_draws(4, &[1.0, 1.0, 0.0]), vec![Watts(25.0), Watts(25.0), Watts(0.0)]);
        let spec = PowerModel::Table([93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0]);
        assert!((spec.host(0.25).0 - 103.0).abs() < 1e-9);
        assert_eq!(spec.idle(), Watts(93.7));
        assert_eq!(spec.host(1.5), Watts(135.0));
    }

    #[test]
    fn power_drop_saves_quiescent_first_then_the_least_valuable() {
        let c = |n: &str, draw: f64, value: u32, quiescent: bool| Candidate { vm: VmId::new(n), draw: Watts(draw), value, quiescent };
        let vms = [c("idle", 5.0, 900, true), c("db", 40.0, 100, false), c("web", 30.0, 60, false), c("batch", 30.0, 10, false)];
        let plan = plan_power_drop(Watts(75.0), &vms);
        assert_eq!(plan.keep, vec![VmId::new("db"), VmId::new("web")]);
        assert_eq!(plan.save, vec![VmId::new("idle"), VmId::new("batch")]);
        assert_eq!((plan.kept_value, plan.kept_draw), (160, Watts(70.0)));
        // Everything fits: only the quiescent one is saved.
        assert_eq!(plan_power_drop(Watts(500.0), &vms).save, vec![VmId::new("idle")]);
        // A budget below every single VM: all saved, least valuable first.
        let none = plan_power_drop(Watts(3.0), &vms);
        assert!(none.keep.is_empty());
        assert_eq!(none.save, vec![VmId::new("idle"), VmId::new("batch"), VmId::new("web"), VmId::new("db")]);
    }
}
