//! The farm's store against a real etcd (Debian's etcd-server) started on
//! loopback by each test: client timers, membership, the election, and an
//! etcd that does not answer.

use ebb_core::farm::HostState;
use ebb_lab::etcd::LocalEtcd;
use ebb_farm::{ActiveClients, ClientEntry, ClientKind, Drain, FarmError, LinkState, Member, MemberLink, MemberSettings, Slept, Store, WakeSettings};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(2);

async fn etcd() -> (LocalEtcd, Store) {
    let etcd = LocalEtcd::start().await.expect("etcd starts");
    let store = Store::connect(&[etcd.url().to_string()], TIMEOUT).await.expect("etcd answers");
    (etcd, store)
}

fn entry(vm: &str) -> ClientEntry {
    ClientEntry { vm: vm.into(), kind: ClientKind::Heartbeat, remote: Some("127.0.0.1:5000".into()) }
}

/// Polls the host's client count every 100 ms until it is `want`, at most
/// until `within` after `from`; returns when it was, measured from `from`.
async fn until_count(store: &Store, host: &str, want: u64, from: Instant, within: Duration) -> Duration {
    loop {
        let n = store.client_count(host).await.unwrap();
        if n == want {
            return from.elapsed();
        }
        assert!(from.elapsed() < within, "{host} still has {n} active clients after {:?}, want {want}", from.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The research's etcdctl check, through ebb's calls: two clients with 2 s
/// and 4 s timers; the count goes 2 → 1 → 0 as each lease expires, never
/// before its TTL.
#[tokio::test]
async fn client_keys_expire_after_their_ttl_and_the_count_follows() {
    let (_etcd, store) = etcd().await;
    let t0 = Instant::now();
    let a = store.put_client("h1", "alice", &entry("web"), Duration::from_secs(2)).await.unwrap();
    store.put_client("h1", "bob", &entry("db"), Duration::from_secs(4)).await.unwrap();
    assert_eq!(a.ttl, Duration::from_secs(2));
    assert_eq!(store.client_count("h1").await.unwrap(), 2);
    assert_eq!(store.client_count("h2").await.unwrap(), 0, "counts are per host");
    let view = store.farm().await.unwrap();
    assert_eq!(view.hosts[0].clients["bob"], entry("db"));
    let one = until_count(&store, "h1", 1, t0, Duration::from_secs(4)).await;
    assert!(one >= Duration::from_millis(1900), "alice's 2 s timer ended after {one:?}");
    let none = until_count(&store, "h1", 0, t0, Duration::from_secs(6)).await;
    assert!(none >= Duration::from_millis(3900), "bob's 4 s timer ended after {none:?}");
}

/// Activity keeps a client's timer running past its TTL; a disconnect
/// ends it at once; a refresh after expiry says the key is gone.
#[tokio::test]
async fn a_refreshed_client_stays_and_a_deleted_one_goes_at_once() {
    let (_etcd, store) = etcd().await;
    let carol = store.put_client("h1", "carol", &entry("web"), Duration::from_secs(2)).await.unwrap();
    let dave = store.put_client("h1", "dave", &entry("web"), Duration::from_secs(2)).await.unwrap();
    // Carol is refreshed every 0.7 s until dave's timer has run out (etcd
    // ends a lease on its next expiry check, every 0.5 s).
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(store.refresh_client(carol.id).await.unwrap(), "carol's timer ran out though refreshed");
        if t0.elapsed() >= Duration::from_millis(2800) && store.client_count("h1").await.unwrap() == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(6), "dave's 2 s timer still runs after {:?}", t0.elapsed());
    }
    assert!(!store.refresh_client(dave.id).await.unwrap(), "an expired client's refresh says so");
    store.delete_client("h1", "carol").await.unwrap();
    assert_eq!(store.client_count("h1").await.unwrap(), 0);
    store.delete_client("h1", "carol").await.unwrap();
    let e = store.put_client("h1", "a/b", &entry("web"), Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(e, FarmError::BadName(_)), "{e}");
}

/// Membership lives on its lease; state and wake settings outlive it (a
/// sleeping host has no agent).
#[tokio::test]
async fn membership_goes_with_its_lease_and_state_stays() {
    let (_etcd, store) = etcd().await;
    let lease = store.grant(Duration::from_secs(2)).await.unwrap();
    let wake = WakeSettings { ipmi: Some("10.0.0.9".into()), mac: Some("52:54:00:12:34:56".into()), ..Default::default() };
    store.join("h1", &Member { version: "test".into(), since: ebb_core::Millis(7) }, &wake, lease.id).await.unwrap();
    let h = &store.farm().await.unwrap().hosts[0];
    assert_eq!((h.name.as_str(), h.state, h.member.as_ref().map(|m| m.since)), ("h1", Some(HostState::Awake), Some(ebb_core::Millis(7))));
    assert_eq!(store.wake("h1").await.unwrap(), Some(wake));
    store.set_state("h1", HostState::Sleeping).await.unwrap();
    store.revoke(lease.id).await.unwrap();
    let h = &store.farm().await.unwrap().hosts[0];
    assert!(h.member.is_none(), "revoked: the member key went with its lease");
    assert_eq!(store.state("h1").await.unwrap(), Some(HostState::Sleeping));
    assert_eq!(store.state("h9").await.unwrap(), None);
}

/// The check before a host sleeps is one transaction: it begins only with
/// no client key of the host in etcd and the host still awake, and says
/// what stopped it otherwise.
#[tokio::test]
async fn a_host_begins_to_sleep_only_with_no_client_in_etcd_and_only_once() {
    let (_etcd, store) = etcd().await;
    let lease = store.grant(Duration::from_secs(10)).await.unwrap();
    store.join("h1", &Member { version: "test".into(), since: ebb_core::Millis(0) }, &WakeSettings::default(), lease.id).await.unwrap();
    let slept = Slept { at: ebb_core::Millis(9), why: "no client for 10m".into() };
    // A client of h1 put by someone else (the gateway, another agent): awake.
    let c = store.put_client("h1", "alice", &entry("web"), Duration::from_secs(30)).await.unwrap();
    // Another host's client does not count.
    store.put_client("h2", "bob", &entry("web"), Duration::from_secs(30)).await.unwrap();
    assert_eq!(store.begin_sleep("h1", &slept).await.unwrap(), Drain::Refused { clients: 1, state: Some(HostState::Awake) });
    assert_eq!(store.state("h1").await.unwrap(), Some(HostState::Awake));
    store.revoke(c.id).await.unwrap();
    assert_eq!(store.begin_sleep("h1", &slept).await.unwrap(), Drain::Begun);
    assert_eq!(store.state("h1").await.unwrap(), Some(HostState::Draining));
    assert_eq!(store.farm().await.unwrap().hosts[0].slept, Some(slept.clone()));
    // Draining already: a second decision does not begin again.
    assert_eq!(store.begin_sleep("h1", &slept).await.unwrap(), Drain::Refused { clients: 0, state: Some(HostState::Draining) });
}

/// Two campaigns: one leads; when its lease ends, the other does.
#[tokio::test]
async fn the_election_has_one_leader_and_passes_on_when_its_lease_ends() {
    let (_etcd, store) = etcd().await;
    assert_eq!(store.leader().await.unwrap(), None);
    let (la, lb) = (store.grant(Duration::from_secs(2)).await.unwrap(), store.grant(Duration::from_secs(2)).await.unwrap());
    store.campaign("coord-a", la.id).await.unwrap();
    let b = store.clone();
    let second = tokio::spawn(async move { b.campaign("coord-b", lb.id).await.map(|_| Instant::now()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "coord-b was elected while coord-a leads");
    assert_eq!(store.leader().await.unwrap().as_deref(), Some("coord-a"));
    let revoked = Instant::now();
    store.revoke(la.id).await.unwrap();
    let elected = tokio::time::timeout(Duration::from_secs(2), second).await.expect("coord-b elected").unwrap().unwrap();
    assert!(elected - revoked < Duration::from_secs(1));
    assert_eq!(store.leader().await.unwrap().as_deref(), Some("coord-b"));
}

/// A listener that accepts and never answers stands for an etcd that
/// hangs: every call gives up at its timeout, naming the endpoint.
#[tokio::test]
async fn an_etcd_that_does_not_answer_fails_within_the_timeout() {
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", mute.local_addr().unwrap());
    let started = Instant::now();
    let e = Store::connect(std::slice::from_ref(&url), Duration::from_millis(500)).await.err().expect("no answer, no store");
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert!(matches!(e, FarmError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}

/// The agent's link: a member while etcd answers, gone at once on leave;
/// against an endpoint with nothing behind it, it says why and retries.
#[tokio::test]
async fn the_member_link_joins_leaves_and_says_why_it_cannot() {
    let (etcd, store) = etcd().await;
    let settings = |url: String| MemberSettings { endpoints: vec![url], host: "h1".into(), lease_ttl: Duration::from_secs(2), timeout: Duration::from_millis(500), version: "test".into(), wake: WakeSettings::default() };
    let (clients, wanted) = tokio::sync::watch::channel(ActiveClients::new());
    let (vms, listed) = tokio::sync::watch::channel(None);
    let link = MemberLink::start(settings(etcd.url().into()), wanted, listed);
    let mut status = link.status();
    let joined = tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| matches!(s.state, LinkState::Member { .. }))).await.unwrap().unwrap().clone();
    // The host's active clients: one key each, kept past their TTL while
    // active (renewed every third of it), gone at once when not.
    let entry = |vm: &str| ClientEntry { vm: vm.into(), kind: ClientKind::Heartbeat, remote: None };
    clients.send_replace([("heartbeat:kiosk".to_string(), (entry("web"), Duration::from_secs(2))), ("heartbeat:desk".to_string(), (entry("db"), Duration::from_secs(2)))].into());
    let count = || async { store.client_count("h1").await.unwrap() };
    let started = Instant::now();
    while count().await < 2 {
        assert!(started.elapsed() < Duration::from_secs(3), "the clients never reached etcd");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the lease's TTL: the keep-alives hold it, with no rejoin.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(store.farm().await.unwrap().hosts[0].member.is_some());
    assert_eq!(count().await, 2, "active clients outlive their TTL while the agent renews them");
    assert_eq!(link.status().borrow().state, joined.state, "the same membership throughout");
    clients.send_modify(|c| {
        c.remove("heartbeat:desk");
    });
    let started = Instant::now();
    while count().await != 1 {
        assert!(started.elapsed() < Duration::from_millis(500), "a client no longer active stays in etcd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The host's VMs: written once the agent lists them, and as they change.
    assert!(store.farm().await.unwrap().hosts[0].vms.is_empty(), "nothing written before the agent lists its VMs");
    vms.send_replace(Some(vec!["web".into(), "db".into()]));
    let listed = || async { store.farm().await.unwrap().hosts[0].vms.clone() };
    let started = Instant::now();
    while listed().await != ["web", "db"] {
        assert!(started.elapsed() < Duration::from_secs(2), "the VMs never reached etcd");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vms.send_replace(Some(vec!["web".into()]));
    while listed().await != ["web"] {
        assert!(started.elapsed() < Duration::from_secs(4), "a VM gone from the host stays listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link.leave().await;
    let h = &store.farm().await.unwrap().hosts[0];
    assert!(h.member.is_none(), "left: the member key is gone at once");
    assert_eq!(h.vms, ["web"], "the routing outlives the membership (a sleeping host's VMs)");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let link = MemberLink::start(settings(format!("http://{closed}")), tokio::sync::watch::channel(ActiveClients::new()).1, tokio::sync::watch::channel(None).1);
    let mut status = link.status();
    let s = tokio::time::timeout(Duration::from_secs(5), status.wait_for(|s| matches!(s.state, LinkState::Disconnected { .. }))).await.unwrap().unwrap().clone();
    let LinkState::Disconnected { error, attempts, .. } = s.state else { unreachable!() };
    assert!(error.contains(&closed.to_string()) && attempts >= 1, "{error}");
    link.leave().await;
}
