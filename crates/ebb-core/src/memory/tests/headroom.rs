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
