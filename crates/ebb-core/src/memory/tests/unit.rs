//! Examples: one behaviour each, with the numbers.

use super::*;
use crate::policy::ActionError;

#[test]
fn the_floor_keeps_the_guest_kernels_own_memory() {
    // Two idle guests in a tiny pool: both go to their floors. The one
    // whose kernel holds 56 MiB outside MemTotal keeps that on top.
    let mut w = World::new(vec![guest("plain", 512, 100), small("kernel", 100, false)], 400);
    let d = w.run(40);
    let floor = |n: &str| view(&d, n).floor.unwrap();
    assert_eq!(floor("kernel"), floor("plain") + Bytes::from_mib(56));
    assert!(w.current("kernel") >= floor("kernel"));
    assert!(w.current("plain") < w.current("kernel"));
    // What the guest itself sees free stays at the headroom.
    let free = w.current("kernel") - Bytes::from_mib(56) - Bytes::from_mib(100);
    assert!(free >= w.cfg.headroom_min, "{free}");
}

#[test]
fn lagging_stats_never_sink_a_loaded_guests_floor() {
    // Stats a tick behind the balloon make (size − MemTotal) read low
    // while shrinking; the floor must hold at used + headroom + kernel.
    let mut w = lagging_busy_and_idle(false);
    let floor = Bytes::from_mib(300 + 64 + 56);
    for _ in 0..30 {
        w.tick();
        assert!(w.current("busy") >= floor, "busy pushed to {} (floor {floor})", w.current("busy"));
        if let Some(t) = w.g("busy").pending {
            assert!(t >= floor, "busy targeted at {t} (floor {floor})");
        }
    }
}

#[test]
fn a_guest_below_its_floor_grows_back_past_an_exhausted_pool() {
    let mut w = World::new(vec![guest("a", 512, 100)], 256);
    w.host_total += Bytes::from_mib(100);
    w.run(20);
    assert!(w.current("a").abs_diff(Bytes::from_mib(256)) < Bytes::from_mib(1), "{}", w.current("a"));
    // Its use grows after the reclaim: floor 250 + 64 = 314 MiB, past the pool.
    w.g("a").used = Bytes::from_mib(250);
    let d = w.run(5);
    assert!(w.current("a") >= Bytes::from_mib(314), "a left at {} below its floor", w.current("a"));
    assert!(d.host.pool_note.is_some());
    // The host's own reserve still bounds it: only 100 MiB were spare.
    w.g("a").used = Bytes::from_mib(400);
    w.run(5);
    assert!(w.current("a") <= Bytes::from_mib(356) + Bytes::from_mib(1), "a took {} past the host's spare", w.current("a"));
}

#[test]
fn balloons_that_land_a_few_kib_off_do_not_churn() {
    for pool in [600, 400] {
        // 400: the floors (364 + 84 MiB) exceed the pool.
        let mut busy = guest("busy", 512, 300);
        busy.lands_off = Bytes::from_kib(3);
        let mut idle = guest("idle", 512, 20);
        idle.lands_off = Bytes::from_kib(20);
        let mut w = World::new(vec![busy, idle], pool);
        w.run(40);
        for _ in 0..10 {
            let d = w.tick();
            assert!(d.actions.is_empty(), "pool {pool}: churn {:?}", d.actions);
        }
    }
}

#[test]
fn skipped_vms_say_why_and_still_occupy_the_pool() {
    let mut off = guest("off", 1024, 100);
    off.state = VmState::ShutOff;
    let mut nob = guest("noballoon", 1024, 100);
    nob.balloon = false;
    let mut nostats = guest("nostats", 1024, 100);
    nostats.stats = false;
    let mut unmanaged = guest("unmanaged", 1024, 100);
    unmanaged.settings.managed = false;
    let mut paused = guest("paused", 1024, 100);
    paused.state = VmState::Paused;
    let mut w = World::new(vec![off, nob, nostats, unmanaged, paused, guest("z-ok", 1024, 100)], 3072);
    let d = w.tick();
    let skipped = |n: &str| view(&d, n).skipped.clone().unwrap_or_default();
    assert!(skipped("off").contains("not running (shut off)"));
    assert!(skipped("paused").contains("not running (paused)"));
    assert!(skipped("noballoon").contains("<memballoon model='virtio'>"));
    assert!(skipped("nostats").contains("no memory statistics"));
    assert!(skipped("unmanaged").contains("managed = false"));
    assert!(view(&d, "z-ok").skipped.is_none());
    assert!(d.actions.iter().all(|a| a.vm().is_some_and(|vm| vm.as_str() == "z-ok")));
    // nostats, unmanaged, paused and z-ok occupy memory; off and noballoon do not count.
    assert_eq!(d.host.pool_used, Bytes::from_mib(4096));
    // 3 GiB pool − 3 GiB held by the unmanageable ones: z-ok must go to its floor.
    assert_eq!(view(&d, "z-ok").entitlement, view(&d, "z-ok").floor);
    assert!(action_for(&d, "z-ok").is_some_and(|(t, r)| t < Bytes::from_mib(1024) && r.rule == Rule::Reclaim));
}

#[test]
fn views_are_sorted_by_id_even_when_observed_out_of_order() {
    let mut w = World::new(vec![guest("c", 512, 100), guest("a", 512, 100), guest("b", 512, 100)], 4096);
    let d = w.tick();
    let ids: Vec<&str> = d.views.iter().map(|v| v.vm.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

#[test]
fn no_contention_means_no_reclaim() {
    let mut w = World::new(vec![guest("a", 2048, 100), guest("b", 2048, 1500)], 8192);
    let d = w.tick();
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(view(&d, "a").entitlement, Some(Bytes::from_mib(2048)));
}

#[test]
fn idle_vm_is_reclaimed_before_an_active_one() {
    let mut w = World::new(vec![guest("active", 4096, 3072), guest("idle", 4096, 512)], 6144);
    let d = w.tick();
    let (t, r) = action_for(&d, "idle").expect("idle VM reclaimed first");
    assert_eq!(r.rule, Rule::Reclaim);
    assert_eq!(t, Bytes::from_mib(4096 - 32), "first reclaim is one step_min");
    assert!(r.text.starts_with("reclaim 32 MiB: guest uses 512 MiB of 4 GiB (12% active); idle-taxed entitlement"), "{}", r.text);
    assert!(r.text.ends_with("of a 6 GiB pool"), "{}", r.text);
    // Both are over the 6 GiB pool, but the idle one pays the tax.
    let (ea, ei) = (view(&d, "active").entitlement.unwrap(), view(&d, "idle").entitlement.unwrap());
    assert!(ei + Bytes::from_gib(1) < ea, "idle {ei} vs active {ea}");
    assert!(ea > Bytes::from_mib(3900), "the active VM keeps nearly all it has: {ea}");
    let d = w.run(60);
    assert!(w.current("idle") < w.current("active"));
    assert!(w.current("active") >= Bytes::from_mib(3072 + 614));
    assert!(d.host.pool_used <= Bytes::from_mib(6144));
}

#[test]
fn higher_shares_end_with_more_memory() {
    let mut rich = guest("rich", 4096, 1024);
    rich.settings.shares = 3000;
    let mut w = World::new(vec![rich, guest("poor", 4096, 1024)], 5120);
    w.run(60);
    assert!(w.current("rich") > w.current("poor") + Bytes::from_mib(256), "{} vs {}", w.current("rich"), w.current("poor"));
}

#[test]
fn step_doubles_as_reclaims_land_and_stays_bounded() {
    let mut w = World::new(vec![guest("big", 16384, 1024), guest("busy", 4096, 3500)], 8192);
    let mut steps = vec![];
    for _ in 0..40 {
        let d = w.tick();
        steps.push(view(&d, "big").step.0 / MB);
    }
    assert_eq!(&steps[..6], &[32, 64, 128, 256, 512, 512], "{steps:?}");
    assert!(steps.iter().all(|&s| (32..=512).contains(&s)));
    assert!(w.current("big") <= Bytes::from_mib(8192 - 3500 - 700 + 1024));
}

#[test]
fn converged_world_stops_acting() {
    let mut w = World::new(
        vec![guest("a", 4096, 300), guest("b", 4096, 2000), guest("c", 2048, 1900), guest("d", 1024, 10)],
        6000,
    );
    w.run(60);
    for _ in 0..10 {
        let d = w.tick();
        assert!(d.actions.is_empty(), "churn after convergence: {:?}", d.actions);
    }
}

#[test]
fn pressured_vm_gets_memory_back() {
    let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 500)], 4096);
    w.run(60);
    let before = w.current("a");
    // The guest's load grows past what it has left: it is now low on free memory.
    w.g("a").used = before - before.scale(0.05);
    let d = w.tick();
    assert!(view(&d, "a").under_pressure);
    let (t, r) = action_for(&d, "a").expect("give back");
    assert_eq!(r.rule, Rule::GiveBack);
    assert!(t > before);
    assert!(r.text.starts_with("give back "), "{}", r.text);
    assert!(r.text.contains("available (under 10%)"), "{}", r.text);
    // b pays for it: its entitlement falls so a can grow within the pool.
    let d = w.run(30);
    let used_a = w.g("a").used;
    assert!(w.current("a") >= used_a + Bytes::from_mib(64), "a relieved: {} for {}", w.current("a"), used_a);
    assert!(!view(&d, "a").under_pressure);
    assert!(d.host.pool_used <= Bytes::from_mib(4096));
}

#[test]
fn swapping_during_a_reclaim_backs_off() {
    let mut w = World::new(vec![guest("a", 8192, 1000), guest("b", 2048, 1800)], 6144);
    w.tick();
    w.tick();
    w.tick();
    let step_before = view(&w.tick(), "a").step;
    assert!(step_before >= Bytes::from_mib(128), "the reclaim has been landing");
    w.g("a").swap_out = Bytes::from_mib(40);
    let d = w.tick();
    let (t, r) = action_for(&d, "a").expect("back off");
    assert_eq!(r.rule, Rule::BackOff, "{}", r.text);
    assert!(t >= w.current("a"), "never shrinks a swapping guest");
    assert!(r.text.contains("swapping"), "{}", r.text);
    assert_eq!(view(&d, "a").step, Bytes(step_before.0 / 2));
    assert!(view(&d, "a").under_pressure);
    // The next look sees no new swapping: the guest is not blamed twice.
    let d = w.tick();
    assert!(!view(&d, "a").under_pressure);
    assert_eq!(view(&d, "a").step, Bytes(step_before.0 / 2));
    assert!(action_for(&d, "a").is_none(), "no reclaim right after a back-off");
}

#[test]
fn stuck_balloon_is_held_where_it_is() {
    let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 3000)], 6144);
    w.tick();
    let d = w.tick();
    let (pending, _) = action_for(&d, "a").expect("still reclaiming");
    let step = view(&d, "a").step;
    w.g("a").stall = true;
    let stalled_at = w.current("a");
    let mut stuck = None;
    let mut quiet = 0;
    for _ in 0..6 {
        let d = w.tick();
        if let Some((t, r)) = action_for(&d, "a") {
            stuck = Some((t, r.clone(), view(&d, "a").step));
            break;
        }
        quiet += 1;
    }
    assert_eq!(quiet, 4, "no nagging a balloon that is still within its 5 s");
    let (t, r, new_step) = stuck.expect("stuck detected");
    assert_eq!(r.rule, Rule::Stuck);
    assert_eq!(t, stalled_at);
    assert_eq!(new_step, Bytes(step.0 / 2).max(Bytes::from_mib(32)));
    assert_eq!(r.text, format!("balloon stuck at {stalled_at} for 5 s (target {pending}): holding it where it is; reclaim step halved to {new_step}"));
}

#[test]
fn min_and_max_are_respected() {
    let mut a = guest("a", 4096, 100);
    a.settings.min = Some(Bytes::from_mib(3000));
    let mut b = guest("b", 4096, 100);
    b.settings.max = Some(Bytes::from_mib(1024));
    let mut w = World::new(vec![a, b], 16384);
    let d = w.run(40);
    assert_eq!(w.current("a"), Bytes::from_mib(4096), "no contention: a keeps everything");
    assert_eq!(w.current("b"), Bytes::from_mib(1024), "b is brought down to its max");
    assert_eq!(view(&d, "b").ceiling, Some(Bytes::from_mib(1024)));
    // Now contention: a never goes under its min.
    w.cfg.pool = Some(Bytes::from_mib(3500));
    w.run(40);
    assert_eq!(w.current("a"), Bytes::from_mib(3000));
}

#[test]
fn floors_over_the_pool_hold_everyone_at_their_floor() {
    let mut w = World::new(vec![guest("a", 2048, 1500), guest("b", 2048, 1500)], 3000);
    let d = w.run(30);
    let floor = Bytes::from_mib(1800);
    for n in ["a", "b"] {
        assert_eq!(view(&d, n).entitlement, Some(floor));
        assert_eq!(w.current(n), floor);
    }
    assert!(d.host.pool_note.as_deref().unwrap_or("").contains("floors add up to 3.52 GiB"), "{:?}", d.host.pool_note);
}

#[test]
fn host_short_of_its_reserve_forces_a_reclaim() {
    let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 500)], 65536);
    assert!(w.tick().actions.is_empty());
    // Something on the host ate memory: available falls 512 MiB under the reserve.
    w.host_total = Bytes::from_mib(8192) + Bytes::from_gib(1) - Bytes::from_mib(512);
    let d = w.tick();
    assert_eq!(d.host.pool, Bytes::from_mib(8192 - 512));
    assert!(d.host.pool_note.as_deref().unwrap_or("").contains("under its 1 GiB reserve"));
    assert_eq!(d.actions.len(), 2);
    w.run(20);
    assert!(w.current("a") + w.current("b") <= Bytes::from_mib(8192 - 512));
}

#[test]
fn failure_and_resume_seed_the_step() {
    let mut w = World::new(vec![guest("a", 8192, 500), guest("b", 4096, 3000)], 8192);
    w.tick();
    w.tick();
    let d = w.tick();
    assert_eq!(view(&d, "a").step, Bytes::from_mib(128));
    let a = VmId::new("a");
    let set = Action::SetBalloonTarget { vm: a.clone(), target: w.current("a"), reason: Reason::new(Rule::Reclaim, "test") };
    w.policy.outcome(&set, &Err(ActionError::Failed("libvirt refused".into())), w.now);
    w.g("a").pending = None; // the call failed: nothing lands
    let d = w.tick();
    assert_eq!(view(&d, "a").step, Bytes::from_mib(64));
    assert_eq!(view(&d, "a").target, Some(w.current("a")), "the failed target is forgotten");

    // A restarted agent with a journal: the step carries on where it was.
    w.policy = MemoryPolicy::new();
    let cur = w.current("a");
    w.policy.resume(a.clone(), Resumed { step: Bytes::from_mib(256), last_target: Some(cur - Bytes::from_mib(64)) });
    let d = w.tick();
    assert_eq!(view(&d, "a").step, Bytes::from_mib(256));
    let (t, _) = action_for(&d, "a").expect("reclaim continues with the resumed step");
    assert_eq!(t, cur - Bytes::from_mib(256));
    let d = w.tick();
    assert_eq!(view(&d, "a").step, Bytes::from_mib(512), "the landed shrink doubles the resumed step");
    // A resumed step out of bounds is clamped.
    let mut fresh = MemoryPolicy::new();
    fresh.resume(a, Resumed { step: Bytes::from_gib(64), last_target: None });
    let d = fresh.decide(&w.observe(), &w.settings(), &w.cfg, w.now.plus(1000));
    assert_eq!(view(&d, "a").step, Bytes::from_mib(512));
}

#[test]
fn vms_coming_and_going_keep_their_own_state() {
    let mut w = World::new(vec![guest("b", 8192, 500), guest("d", 4096, 3500)], 8192);
    w.run(3);
    let step_b = view(&w.tick(), "b").step;
    assert!(step_b > Bytes::from_mib(32));
    // "a" and "c" appear around "b"; "d" leaves.
    let d_guest = w.guests.pop().unwrap();
    w.guests.insert(0, guest("a", 1024, 100));
    w.guests.push(guest("c", 1024, 100));
    let d = w.tick();
    assert_eq!(d.views.iter().map(|v| v.vm.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(view(&d, "b").step >= step_b, "b keeps its step");
    assert_eq!(view(&d, "a").step, Bytes::from_mib(32));
    // "d" comes back as a stranger: fresh step, no memory of its past.
    w.guests.push(d_guest);
    let d = w.tick();
    assert_eq!(view(&d, "d").step, Bytes::from_mib(32));
    assert_eq!(view(&d, "d").last_reason, None);
}

#[test]
fn last_reason_persists_across_quiet_ticks() {
    let mut w = World::new(vec![guest("a", 2048, 100), guest("b", 2048, 1800)], 3500);
    let d = w.run(50);
    assert!(d.actions.is_empty());
    let r = view(&d, "a").last_reason.clone().expect("a was reclaimed once");
    assert_eq!(r.rule, Rule::Reclaim);
}

#[test]
fn dead_band_ignores_tiny_changes() {
    let mut w = World::new(vec![guest("a", 4096, 500), guest("b", 4096, 3000)], 6000);
    w.run(60);
    // A few hundred KiB of extra use moves the entitlement by less than the band.
    w.g("a").used += Bytes::from_kib(300);
    w.g("b").used += Bytes::from_kib(300);
    assert!(w.tick().actions.is_empty());
}

/// The reclaim reason's share rounds as float formatting did.
#[test]
fn whole_prints_as_float_formatting_does() {
    let mut x = 0x5eed_u64;
    for i in 0..100_000u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let used = x >> (x % 64);
        let c = (x >> 7).max(1) >> (i % 64);
        for v in [100.0 * used as f64 / c.max(1) as f64, i as f64 / 2.0, i as f64 / 4.0, (x >> 11) as f64 / (1u64 << 53) as f64 * 200.0] {
            assert_eq!(words::Whole(v).to_string(), format!("{v:.0}"), "{v}");
        }
    }
    for v in [0.0, -0.0, 0.5, 1.5, 2.5, 99.5, 100.0, 1e300, f64::INFINITY, -1.5, 4503599627370495.5, 4503599627370496.0] {
        assert_eq!(words::Whole(v).to_string(), format!("{v:.0}"), "{v}");
    }
}

#[test]
fn with_memory_management_off_nothing_is_sent_or_believed_pending_and_the_would_be_target_is_shown() {
    // Over the pool by 512 MiB: the idle guest would give some back.
    let mut w = World::new(vec![guest("idle", 2048, 100), guest("busy", 1024, 900)], 2560);
    w.cfg.enabled = false;
    for _ in 0..5 {
        let d = w.tick();
        assert!(d.actions.is_empty(), "an action was sent with memory management off: {:?}", d.actions);
        let idle = view(&d, "idle");
        assert!(idle.target.is_some_and(|t| t < idle.actual.unwrap()), "the target ebb would set is shown: {idle:?}");
        assert!(idle.last_reason.is_some(), "with its reason");
    }
    assert!(w.policy.vms.iter().all(|(_, st)| st.pending.is_none()), "a move was believed pending although nothing was sent");
    assert_eq!(w.current("idle"), Bytes::from_mib(2048), "a balloon moved");
    // Switched on, it acts at once from what it sees, not from targets it believed sent.
    w.cfg.enabled = true;
    let d = w.tick();
    assert!(d.actions.iter().any(|a| a.vm().is_some_and(|vm| vm.as_str() == "idle")), "{:?}", d.actions);
}
