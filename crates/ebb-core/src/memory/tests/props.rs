//! Properties: what holds on every tick of any world, and the orderings
//! the idle tax promises (shares, idle before active).

use super::*;
use proptest::prelude::*;

fn arb_guest(i: usize) -> impl Strategy<Value = Guest> {
    (256u64..8192, 0u64..=80, 100u32..4000, proptest::option::of(0u64..4096), proptest::option::of(256u64..8192))
        .prop_map(move |(size, used_pct, shares, min, max)| {
            let mut g = guest(&format!("vm{i:02}"), size, size * used_pct / 100);
            g.settings.shares = shares;
            g.settings.min = min.map(Bytes::from_mib);
            g.settings.max = max.map(Bytes::from_mib);
            g
        })
}

fn arb_world() -> impl Strategy<Value = World> {
    (proptest::collection::vec(any::<u8>(), 1..10), 512u64..40_000).prop_flat_map(|(n, pool)| {
        let guests: Vec<_> = (0..n.len()).map(arb_guest).collect();
        guests.prop_map(move |g| World::new(g, pool))
    })
}

/// Invariants that hold on every tick, whatever the world does.
fn check_tick(w: &World, d: &MemoryDecision) -> Result<(), TestCaseError> {
    for v in &d.views {
        prop_assert!(v.step >= w.cfg.step_min && v.step <= w.cfg.step_max, "step {} out of bounds", v.step);
    }
    for a in &d.actions {
        let Action::SetBalloonTarget { vm, target, reason } = a else { continue };
        let g = w.guests.iter().find(|g| &g.id == vm).unwrap();
        let v = view(d, vm.as_str());
        let ceiling = g.settings.max.unwrap_or(Bytes(u64::MAX)).min(g.maximum);
        let min = g.settings.min.unwrap_or(Bytes::ZERO).min(ceiling);
        prop_assert!(*target <= ceiling, "{vm}: target {target} above ceiling {ceiling}");
        prop_assert!(*target + Bytes(KIB) > min, "{vm}: target {target} below min {min}");
        prop_assert!(v.skipped.is_none());
        prop_assert!(!reason.text.is_empty());
        if *target < g.current {
            prop_assert!(Some(*target) >= v.floor, "{vm}: shrink to {target} under floor {:?}", v.floor);
            // Only the operator's max may shrink a guest under pressure.
            prop_assert!(!v.under_pressure || *target == ceiling, "{vm}: shrinking a guest under pressure");
            prop_assert!(*target >= g.current - w.cfg.step_max.max(g.current.scale(0.0025)) || *target == ceiling,
                "{vm}: shrink of more than a step");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn converges_inside_the_pool_and_then_stays_still(mut w in arb_world()) {
        let mut d = w.tick();
        check_tick(&w, &d)?;
        for _ in 0..60 {
            d = w.tick();
            check_tick(&w, &d)?;
        }
        let floors: Bytes = d.views.iter().filter_map(|v| v.floor).sum();
        let pool = w.cfg.pool.unwrap();
        let sum: Bytes = w.guests.iter().map(|g| g.current).sum();
        if floors <= pool {
            prop_assert!(sum <= pool, "Σcurrent {sum} over pool {pool} with Σfloor {floors}");
        }
        for v in &d.views {
            prop_assert!(v.actual >= v.floor, "{} below its floor", v.vm);
        }
        for _ in 0..5 {
            let d = w.tick();
            prop_assert!(d.actions.is_empty(), "churn: {:?}", d.actions);
        }
    }

    #[test]
    fn more_shares_never_means_less_memory(
        size in 1024u64..8192, used_pct in 5u64..70, lo in 100u32..2000, extra in 1u32..4000,
        pool_pct in 30u64..150, others in proptest::collection::vec(arb_guest(9), 0..3),
    ) {
        let mut a = guest("high", size, size * used_pct / 100);
        a.settings.shares = lo + extra;
        let mut b = guest("low", size, size * used_pct / 100);
        b.settings.shares = lo;
        let mut gs = vec![a, b];
        for (i, mut g) in others.into_iter().enumerate() {
            g.id = VmId::new(format!("other{i}"));
            gs.push(g);
        }
        let total: u64 = gs.iter().map(|g| g.current.0 / MB).sum();
        let mut w = World::new(gs, total * pool_pct / 100);
        let d = w.run(60);
        prop_assert!(view(&d, "high").entitlement >= view(&d, "low").entitlement);
        // Sizes settle within the dead band of their targets (ebb does not
        // move a balloon for less): a share more may end a band's width lower.
        let (high, low) = (w.current("high"), w.current("low"));
        prop_assert!(high + w.cfg.dead_band >= low, "high {} low {}", high.0, low.0);
    }

    #[test]
    fn idle_is_reclaimed_before_active(
        size in 1024u64..8192, idle_pct in 0u64..40, gap in 10u64..50, pool_pct in 50u64..100,
    ) {
        let mut w = World::new(
            vec![guest("active", size, size * (idle_pct + gap) / 100), guest("idle", size, size * idle_pct / 100)],
            2 * size * pool_pct / 100,
        );
        let d = w.tick();
        if let Some((ta, _)) = action_for(&d, "active") {
            let (ti, _) = action_for(&d, "idle").expect("active reclaimed while idle was not");
            prop_assert!(ti <= ta);
        }
        w.run(60);
        prop_assert!(w.current("idle") <= w.current("active"));
    }

    #[test]
    fn chaos_keeps_the_invariants(
        mut w in arb_world(),
        step_min in 1u64..64, step_mul in 1u64..32,
        events in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, 0u64..100), 0..40),
    ) {
        w.cfg.step_min = Bytes::from_mib(step_min);
        w.cfg.step_max = Bytes::from_mib(step_min * step_mul);
        let mut events = events.into_iter();
        for tick in 0..80 {
            if tick % 2 == 0 {
                if let Some((which, kind, amount)) = events.next() {
                    let n = w.guests.len();
                    let g = &mut w.guests[which.index(n)];
                    match kind {
                        0 => g.used = g.current.scale(amount as f64 / 100.0),
                        1 => g.stall = !g.stall,
                        2 => g.major_faults += amount * 1000,
                        _ => g.swap_out += Bytes::from_mib(amount),
                    }
                }
            }
            let d = w.tick();
            check_tick(&w, &d)?;
        }
    }
}
