//! Whole days against CloudSim 3.0.3's published figures (README of the
//! traces). The cheap policies run here; the migrating ones run in
//! `ebb bench sim`, which prints every day's differences.

use ebb_sim::policy::Policy;
use std::path::PathBuf;

fn day(name: &str) -> Vec<ebb_sim::trace::Trace> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/planetlab")
        .join(name);
    ebb_sim::trace::load_day(&dir).unwrap_or_else(|e| panic!("the PlanetLab traces: {e}"))
}

#[test]
fn npa_charges_every_host_full_power_all_day() {
    let r = ebb_sim::simulate(day("20110306"), Policy::Npa, &mut |_, _| {});
    assert_eq!(format!("{:.2}", r.energy_kwh), "2410.80");
    // (400 × 117 W + 400 × 135 W) over 300.1 s then 286 × 300 s.
    assert!((r.energy_kwh - 100_800.0 * 86_100.1 / 3.6e6).abs() < 1e-6);
    assert_eq!((r.migrations, r.slav), (0, 0.0));
}

#[test]
fn dvfs_on_20110303_matches_cloudsim() {
    let r = ebb_sim::simulate(day("20110303"), Policy::Dvfs, &mut |_, _| {});
    let reference = 802.75;
    let diff = (r.energy_kwh - reference) / reference;
    assert!(diff.abs() < 0.05, "{} kWh against {reference}", r.energy_kwh);
    // It reproduces to the printed digits.
    assert_eq!(format!("{:.2}", r.energy_kwh), "802.75");
    assert_eq!(r.steps.len(), 287);
    assert_eq!(r.vms, 1052);
}

#[test]
fn the_same_day_gives_the_same_figures() {
    let a = ebb_sim::simulate(day("20110309"), Policy::Dvfs, &mut |_, _| {});
    let b = ebb_sim::simulate(day("20110309"), Policy::Dvfs, &mut |_, _| {});
    assert_eq!(a, b);
}
