//! Headroom that learns: a guest whose history shows fast allocation keeps
//! room for what it allocates before ebb can react.

use super::*;

#[test]
fn a_guest_that_allocated_fast_keeps_headroom_for_what_it_allocates_before_ebb_reacts() {
    let mut fast = guest("fast", 1024, 100);
    fast.settings.burst_rate = Some(Bytes::from_mib(128));
    let mut w = World::new(vec![fast, guest("plain", 1024, 100)], 800);
    let d = w.run(40);
    // 128 MiB/s times (a tick of 1 s and a second of stats lag) = 256 MiB,
    // over the flat max(64 MiB, 20 % of 100 MiB).
    let (f, p) = (view(&d, "fast"), view(&d, "plain"));
    assert_eq!(f.headroom, Some(Bytes::from_mib(256)));
    assert_eq!(f.headroom_learned, Some((Bytes::from_mib(128), 2000)));
    assert_eq!((p.headroom, p.headroom_learned), (Some(Bytes::from_mib(64)), None));
    assert!(w.current("fast") >= Bytes::from_mib(356), "{}", w.current("fast"));
    assert!(w.current("plain") < Bytes::from_mib(400), "{}", w.current("plain"));
    // A slow history teaches nothing the flat rule does not already keep.
    w.g("plain").settings.burst_rate = Some(Bytes::from_mib(16));
    assert_eq!(view(&w.tick(), "plain").headroom_learned, None);
}

#[test]
fn growth_is_measured_between_settled_readings() {
    let mut w = World::new(vec![guest("a", 512, 100)], 1024);
    let d = w.run(3);
    assert_eq!(view(&d, "a").growth, Some(Bytes::ZERO));
    w.g("a").used = Bytes::from_mib(200);
    assert_eq!(view(&w.tick(), "a").growth, Some(Bytes::from_mib(100)), "100 MiB in one second");
    w.g("a").used = Bytes::from_mib(150);
    assert_eq!(view(&w.tick(), "a").growth, Some(Bytes::ZERO), "shrinking is no growth");
}

#[test]
fn the_reaction_time_is_the_configured_tick_and_the_balloons_own_time_to_grow() {
    let mut fast = guest("fast", 1024, 100);
    fast.settings.burst_rate = Some(Bytes::from_mib(128));
    let mut w = World::new(vec![fast], 4096);
    // Ticks come every second here, but the agent's tick is 5 s: ebb may
    // take that long to look.
    w.policy.set_tick(5000);
    assert_eq!(view(&w.tick(), "fast").headroom_learned, Some((Bytes::from_mib(128), 6000)));
    // A balloon that took 2 ticks to grow adds its 2 s.
    w.cfg.pool = Some(Bytes::from_mib(600));
    w.run(30);
    w.g("fast").stall = true;
    w.cfg.pool = Some(Bytes::from_mib(4096));
    w.tick();
    w.tick();
    w.g("fast").stall = false;
    let d = w.run(3);
    assert_eq!(view(&d, "fast").balloon_grow_ms, Some(2000));
    assert_eq!(view(&d, "fast").headroom_learned, Some((Bytes::from_mib(128), 8000)));
}

#[test]
fn a_learned_headroom_never_holds_the_pool_over() {
    // 300 MiB/s times 2 s would keep 600 MiB free: more than the pool has
    // beside the other guest's floor. The flat headroom is the guarantee;
    // the learned one takes what room there is.
    let mut fast = guest("fast", 1024, 300);
    fast.settings.burst_rate = Some(Bytes::from_mib(300));
    let mut w = World::new(vec![fast, guest("other", 1024, 300)], 1000);
    let d = w.run(40);
    assert!(d.host.pool_used <= Bytes::from_mib(1001), "{}", d.host.pool_used);
    assert!(w.current("other") >= Bytes::from_mib(300 + 64), "{}", w.current("other"));
    assert!(w.current("fast") > w.current("other") + Bytes::from_mib(200), "the learned headroom got no room: {}", w.current("fast"));
}

#[test]
fn a_learned_headroom_grows_a_guest_only_as_the_others_give() {
    // Its history changes under a full pool: the room for its headroom
    // comes from the other guest's reclaim, never from past the pool.
    let mut w = World::new(vec![guest("fast", 1024, 100), guest("other", 1024, 100)], 800);
    // The host has plenty beyond the pool: only a guarantee may take it.
    w.host_total += Bytes::from_gib(4);
    w.run(40);
    // The other gives 32 MiB a tick.
    w.cfg.step_max = Bytes::from_mib(32);
    w.g("fast").settings.burst_rate = Some(Bytes::from_mib(300));
    for tick in 1..=30 {
        let d = w.tick();
        assert!(d.host.pool_used <= Bytes::from_mib(801), "tick {tick}: {} in the pool", d.host.pool_used);
    }
    assert!(w.current("fast") > w.current("other") + Bytes::from_mib(200), "{} vs {}", w.current("fast"), w.current("other"));
}
