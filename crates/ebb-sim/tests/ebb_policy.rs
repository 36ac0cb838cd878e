//! `--policy ebb` end to end on a small synthetic day: the policy's glue
//! (placement, decisions, migrations back into the model) on a trace folder
//! of a handful of VMs, cheap enough for a debug build.

use ebb_sim::datacenter::Datacenter;
use ebb_sim::policy::{Detector, Policy};
use ebb_sim::trace::{load_day, SAMPLES};

/// Twelve VMs over a day: a daily wave with its own phase and height per
/// VM, plus a deterministic jitter, so hosts fill, empty and overload.
fn write_day(dir: &std::path::Path) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for vm in 0..12u32 {
        let lines: Vec<String> = (0..SAMPLES)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let phase = f64::from(vm) * 0.5;
                let wave = ((i as f64 / SAMPLES as f64) * std::f64::consts::TAU + phase).sin();
                let base = 15.0 + f64::from(vm % 4) * 12.0;
                let pct = base + 20.0 * wave + (seed % 15) as f64;
                (pct.clamp(1.0, 100.0) as u32).to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("vm{vm:02}")), lines.join("\n") + "\n").unwrap();
    }
}

fn run(dir: &std::path::Path, policy: Policy) -> ebb_sim::Report {
    let dc = Datacenter::with_hosts(load_day(dir).unwrap(), 8);
    ebb_sim::simulate_on(dc, policy, &mut |_, _| {})
}

#[test]
fn ebb_policy_runs_a_small_day_with_fewer_migrations_than_lr() {
    let policy: Policy = "ebb".parse().unwrap();
    assert_eq!(policy, Policy::Ebb);
    assert_eq!(policy.to_string(), "ebb");

    let dir = tempfile::tempdir().unwrap();
    write_day(dir.path());
    let ebb = run(dir.path(), policy);
    let lr = run(
        dir.path(),
        Policy::Consolidate(Detector::LocalRegression(1.2)),
    );

    assert_eq!((ebb.vms, ebb.hosts), (12, 8));
    assert_eq!(ebb.steps.len(), 287);
    assert!(
        ebb.energy_kwh > 0.0 && ebb.energy_kwh.is_finite(),
        "{}",
        ebb.energy_kwh
    );
    // Never more hosts on than there are, and some always on: no VM leaves.
    assert!(ebb
        .steps
        .iter()
        .all(|s| (1..=8).contains(&s.active_hosts) && s.power_w > 0.0));
    for f in [ebb.slatah, ebb.pdm, ebb.slav, ebb.esv] {
        assert!((0.0..1.0).contains(&f), "{ebb:?}");
    }
    assert!(lr.migrations > 0, "the day makes LR move VMs");
    assert!(
        ebb.migrations < lr.migrations,
        "ebb {} migrations, lr-mmt-1.2 {}",
        ebb.migrations,
        lr.migrations
    );
    // Consolidating beats leaving every host on at full power.
    let all_on = ebb_sim::simulate_on(
        Datacenter::with_hosts(load_day(dir.path()).unwrap(), 8),
        Policy::Npa,
        &mut |_, _| {},
    );
    assert!(ebb.energy_kwh < all_on.energy_kwh);
}
