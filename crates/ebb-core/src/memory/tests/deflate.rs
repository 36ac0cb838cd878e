//! Guests whose balloon deflates itself on OOM (`autodeflate='on'`): read
//! without their balloon's pages, followed when they take memory back, and
//! never pushed back into their own OOM path.

use super::*;

fn auto(name: &str, used_mib: u64) -> Guest {
    small(name, used_mib, true)
}

fn pool_used(w: &World) -> Bytes {
    w.guests.iter().map(|g| g.current).sum()
}

/// Runs `ticks` ticks after guest "burst" deflated itself into a 700 MiB
/// pool: ebb never takes back what it took, nor pushes it into its OOM
/// path again. Returns the tick the pool was back within its limit, and
/// the balloon moves.
fn after_the_burst(w: &mut World, ticks: usize) -> (usize, usize) {
    let took = w.current("burst");
    let (mut back_after, mut moves) = (None, 0);
    for tick in 1..=ticks {
        let d = w.tick();
        moves += d.actions.len();
        if let Some((t, r)) = action_for(&d, "burst") {
            assert!(t >= took, "tick {tick}: ebb took back what the guest took itself ({took}): {t}: {r}");
        }
        if back_after.is_none() && pool_used(w) <= Bytes::from_mib(701) {
            back_after = Some(tick);
        }
    }
    assert_eq!(w.g("burst").took_back, 1, "ebb pushed it back into its OOM path");
    (back_after.expect("the pool never came back within its limit"), moves)
}

#[test]
fn a_deflate_on_oom_guest_is_read_without_its_balloon_and_reclaimed_like_a_stock_one() {
    let mut w = World::new(vec![small("stock", 100, false), auto("auto", 100)], 500);
    let d = w.run(40);
    // Its MemTotal still says 456 MiB at 250: read as it was, it would use 306.
    assert_eq!(view(&d, "auto").used, Some(Bytes::from_mib(100)));
    assert_eq!(view(&d, "auto").floor, view(&d, "stock").floor);
    assert!(w.current("auto").abs_diff(w.current("stock")) < Bytes::from_mib(2), "{} vs {}", w.current("auto"), w.current("stock"));
    assert!(pool_used(&w) <= Bytes::from_mib(501), "{}", pool_used(&w));
    assert_eq!(w.g("auto").took_back, 0, "ebb pushed it into its OOM path");
}

#[test]
fn lagging_stats_never_sink_a_deflate_on_oom_guests_floor() {
    // Its stats a tick behind while ebb shrinks it: its balloon's pages at
    // the new size, its free memory at the old one, would read as less use.
    let mut w = lagging_busy_and_idle(true);
    let floor = Bytes::from_mib(300 + 64 + 56);
    for _ in 0..30 {
        w.tick();
        assert!(w.current("busy") >= floor, "busy pushed to {} (floor {floor})", w.current("busy"));
    }
    assert_eq!(w.g("busy").took_back, 0);
    assert!(w.current("idle") < Bytes::from_mib(200), "idle not reclaimed: {}", w.current("idle"));
}

#[test]
fn a_guest_that_deflates_itself_is_followed_not_fought_and_the_pool_is_made_up_from_the_idle() {
    let mut w = World::new(vec![auto("burst", 20), auto("idle", 20)], 700);
    w.run(30);
    assert!(w.current("burst").abs_diff(Bytes::from_mib(350)) < Bytes::from_mib(2), "{}", w.current("burst"));
    let idle_before = w.current("idle");

    // 300 MiB at once: faster than a tick, the guest deflates itself past the pool.
    w.g("burst").used = Bytes::from_mib(320);
    let d = w.tick();
    assert_eq!(w.g("burst").took_back, 1);
    assert!(pool_used(&w) > Bytes::from_mib(700));
    let seen = view(&d, "burst");
    assert!(seen.floor.unwrap() >= w.current("burst"), "ebb would take it back: {seen:?}");
    assert!(seen.last_reason.as_ref().is_none_or(|r| r.text.contains("deflate-on-OOM")), "{seen:?}");

    let (back_after, _) = after_the_burst(&mut w, 20);
    assert!(back_after <= 5, "the pool came back after {back_after} ticks");
    assert!(w.current("idle") < idle_before, "the idle guest gave nothing");
    // It holds its memory with headroom: 320 used + 64 + 56 kernel.
    assert!(w.current("burst") >= Bytes::from_mib(320 + 64 + 56 - 1), "{}", w.current("burst"));
}

#[test]
fn memory_the_guests_may_take_back_counts_against_the_hosts_reserve() {
    // Each guest holds 200 MiB the host does not (free page reporting):
    // the host's available memory counts it, but the guests may touch it
    // again at any moment.
    let mut a = guest("a", 512, 100);
    a.untouched = Some(Bytes::from_mib(200));
    let mut b = guest("b", 512, 100);
    b.untouched = Some(Bytes::from_mib(200));
    let mut w = World::new(vec![a, b], 1024);
    let d = w.run(5);
    assert_eq!(d.host.returned, Bytes::from_mib(400));
    assert_eq!(d.host.pool, Bytes::from_mib(1024));
    assert_eq!(view(&d, "a").host_rss, Some(Bytes::from_mib(312)));
    // Something else on the host takes 300 MiB: available is still 400 MiB
    // above the reserve, yet all of it is the guests' to take back.
    w.host_total = w.host_total - Bytes::from_mib(300);
    let d = w.tick();
    assert!(d.host.pool_note.as_deref().is_some_and(|n| n.contains("reserve") && n.contains("may take it again")), "{:?}", d.host);
    assert_eq!(d.host.pool, Bytes::from_mib(724));
    w.run(20);
    let sum = w.current("a") + w.current("b");
    assert!(sum <= Bytes::from_mib(725), "the guests still hold {sum}: the reserve is not kept");
}

#[test]
fn the_size_a_guest_took_is_held_only_until_its_stats_show_what_it_needs() {
    let mut w = World::new(vec![auto("burst", 20), auto("idle", 20)], 700);
    w.run(30);
    w.g("burst").used = Bytes::from_mib(320);
    w.tick();
    let took = w.current("burst");
    assert_eq!(w.g("burst").took_back, 1);
    // The burst is over at once: held for stuck_after (5 ticks) all the same,
    // then its settled stats say what it needs and ebb takes the rest back.
    w.g("burst").used = Bytes::from_mib(20);
    for tick in 1..=4 {
        w.tick();
        assert!(w.current("burst") >= took, "tick {tick}: {} below the {took} it took", w.current("burst"));
    }
    w.run(20);
    w.run(20);
    assert!(w.current("burst") + Bytes::from_mib(16) < took, "still held at {}", w.current("burst"));
    assert_eq!(w.g("burst").took_back, 1);
}

#[test]
fn a_stale_reading_of_its_old_size_is_not_taken_for_a_deflation() {
    // Measured on real guests: just shrunk to 320 MiB, a guest read its old
    // size again for over a second (libvirt's size from QEMU's throttled
    // events), with plenty free. Taken for a deflation, it was held there
    // and the pool stayed over for good.
    let mut w = World::new(vec![auto("a", 20), auto("b", 20)], 700);
    w.run(30);
    let (a, b) = (w.current("a"), w.current("b"));
    w.g("a").reads = Some(Bytes::from_mib(506));
    let mut moves = 0;
    for tick in 1..=3 {
        let d = w.tick();
        moves += d.actions.len();
        assert!(view(&d, "a").deflated.is_none(), "tick {tick}: a stale reading taken for a deflation: {:?}", view(&d, "a"));
    }
    w.g("a").reads = None;
    for _ in 0..10 {
        moves += w.tick().actions.len();
    }
    assert_eq!((w.current("a"), w.current("b")), (a, b), "the stale reading moved a balloon");
    assert_eq!(moves, 0, "the stale reading cost balloon moves");
}

#[test]
fn stats_that_lag_several_ticks_after_a_self_deflation_neither_fight_it_nor_keep_the_pool_over() {
    // Stats three ticks behind: after the guest deflates itself they still
    // show it before the burst, then with its balloon's pages at a size it
    // no longer has.
    let mut burst = auto("burst", 20);
    burst.stats_lag = 3;
    let mut idle = auto("idle", 20);
    idle.stats_lag = 3;
    let mut w = World::new(vec![burst, idle], 700);
    w.run(40);
    assert!(w.current("burst").abs_diff(Bytes::from_mib(350)) < Bytes::from_mib(2), "{}", w.current("burst"));

    w.g("burst").used = Bytes::from_mib(320);
    w.tick();
    assert_eq!(w.g("burst").took_back, 1);
    let (back_after, moves) = after_the_burst(&mut w, 30);
    assert!(back_after <= 8, "the pool came back after {back_after} ticks");
    assert!(pool_used(&w) <= Bytes::from_mib(701), "over again: {}", pool_used(&w));
    assert!(w.current("burst") >= Bytes::from_mib(320 + 56), "{}", w.current("burst"));
    assert!(moves <= 10, "{moves} balloon moves after the burst");
}

#[test]
fn stats_taken_before_the_reading_shows_ebbs_own_target_are_not_settled() {
    // libvirt reads a balloon's size from QEMU's events, at most one a
    // second: ebb's target may have landed, and the guest's stats show it,
    // while the reading still says the old size. Beside the old size those
    // stats read a deflate-on-OOM guest's use high by the whole reclaim.
    let mut w = World::new(vec![auto("a", 35), auto("b", 35)], 700);
    w.run(40);
    assert!(w.run(5).actions.is_empty(), "not settled");
    w.cfg.pool = Some(Bytes::from_mib(600));
    let d = w.tick();
    let (target, _) = action_for(&d, "a").expect("a reclaim");
    let before = w.current("a");
    assert!(target + Bytes::from_mib(16) < before, "{target} from {before}");
    // It lands; the reading lags behind it.
    w.g("a").reads = Some(before);
    let d = w.tick();
    assert_eq!(w.current("a"), target);
    let used = view(&d, "a").used.unwrap();
    assert!(used.abs_diff(Bytes::from_mib(35)) < Bytes::from_mib(2), "a read as using {used}");
    w.g("a").reads = None;
    for _ in 0..5 {
        let used = view(&w.tick(), "a").used.unwrap();
        assert!(used.abs_diff(Bytes::from_mib(35)) < Bytes::from_mib(2), "a read as using {used}");
    }
}
