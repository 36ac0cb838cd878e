use super::*;

fn vm(name: &str) -> VmId {
    VmId::new(name)
}

fn key(kind: ClientKind, id: &str) -> ClientKey {
    ClientKey::new(kind, id)
}

const S: u64 = 1000;

#[test]
fn a_refreshed_timer_counts_until_its_ttl_runs_out() {
    let mut c = Clients::new();
    let ttl = Span::from_secs(10);
    c.refresh(key(ClientKind::Heartbeat, "kiosk"), &vm("web"), None, ttl, Millis(0));
    assert_eq!(c.active(Millis(9 * S)), 1);
    // A sign of life at 8 s: it counts until 18 s.
    c.refresh(key(ClientKind::Heartbeat, "kiosk"), &vm("web"), None, ttl, Millis(8 * S));
    assert_eq!(c.active(Millis(17_999)), 1);
    assert_eq!(c.active(Millis(18 * S)), 0);
    assert_eq!(c.expire(Millis(18 * S)), vec![key(ClientKind::Heartbeat, "kiosk")]);
    assert!(c.views(Millis(0)).is_empty(), "an expired client is gone from the table");
}

#[test]
fn an_open_connection_stops_the_timer_until_the_last_one_closes() {
    let mut c = Clients::new();
    let k = key(ClientKind::Surrogate, "10.0.0.7");
    let ttl = Span::from_secs(5);
    c.hold(k.clone(), &vm("db"), Some("10.0.0.7".into()), ttl, Millis(0));
    c.hold(k.clone(), &vm("db"), None, ttl, Millis(1000));
    assert_eq!(c.active(Millis(3600 * S)), 1, "held open, it never expires");
    c.release(&k, Millis(100 * S));
    assert_eq!(c.active(Millis(200 * S)), 1, "one connection is still open");
    c.release(&k, Millis(300 * S));
    let v = &c.views(Millis(300 * S))[0];
    assert_eq!((v.open, v.expires_at, v.remote.as_deref()), (0, Some(Millis(305 * S)), Some("10.0.0.7")));
    assert_eq!(c.active(Millis(304_999)), 1);
    assert!(c.expire(Millis(305 * S)).contains(&k));
}

#[test]
fn counts_are_per_vm_and_for_the_host_and_kinds_never_share_a_key() {
    let mut c = Clients::new();
    let (short, long) = (Span::from_secs(2), Span::from_secs(6));
    // The same id from two sources: two clients.
    c.refresh(key(ClientKind::Heartbeat, "127.0.0.1"), &vm("a"), None, short, Millis(0));
    c.hold(key(ClientKind::Surrogate, "127.0.0.1"), &vm("a"), None, short, Millis(0));
    c.refresh(key(ClientKind::Heartbeat, "b1"), &vm("b"), None, long, Millis(0));
    assert_eq!(c.active(Millis(0)), 3);
    assert_eq!(c.active_per_vm(Millis(0)), BTreeMap::from([(vm("a"), 2), (vm("b"), 1)]));
    // At 4 s the 2 s heartbeat ran out; the held client and the 6 s one count.
    assert_eq!(c.active_per_vm(Millis(4 * S)), BTreeMap::from([(vm("a"), 1), (vm("b"), 1)]));
    c.release(&key(ClientKind::Surrogate, "127.0.0.1"), Millis(4 * S));
    assert_eq!(c.active(Millis(7_500)), 0);
}

#[test]
fn ending_a_vms_consoles_leaves_its_other_clients_and_other_vms() {
    let mut c = Clients::new();
    let ttl = Span::from_secs(60);
    c.hold(key(ClientKind::Console, "127.0.0.1:40000"), &vm("a"), None, ttl, Millis(0));
    c.hold(key(ClientKind::Console, "127.0.0.1:40001"), &vm("a"), None, ttl, Millis(0));
    c.hold(key(ClientKind::Console, "127.0.0.1:40002"), &vm("b"), None, ttl, Millis(0));
    c.refresh(key(ClientKind::Heartbeat, "h"), &vm("a"), None, ttl, Millis(0));
    assert_eq!(c.end_vm(&vm("a"), ClientKind::Console), 2);
    assert_eq!(c.active_per_vm(Millis(1)), BTreeMap::from([(vm("a"), 1), (vm("b"), 1)]));
    assert!(c.end(&key(ClientKind::Heartbeat, "h")));
    assert!(!c.end(&key(ClientKind::Heartbeat, "h")), "ended twice");
    // A late close of an ended session does not bring it back.
    c.release(&key(ClientKind::Console, "127.0.0.1:40000"), Millis(2));
    assert_eq!(c.active(Millis(2)), 1);
}

#[test]
fn a_client_seen_for_another_vm_moves_to_it() {
    let mut c = Clients::new();
    let k = key(ClientKind::Heartbeat, "thin-1");
    c.refresh(k.clone(), &vm("a"), None, Span::from_secs(9), Millis(0));
    c.refresh(k.clone(), &vm("b"), None, Span::from_secs(9), Millis(1));
    assert_eq!(c.active_per_vm(Millis(1)), BTreeMap::from([(vm("b"), 1)]));
    assert_eq!(c.views(Millis(1)).iter().map(|v| v.vm.as_str()).collect::<Vec<_>>(), ["b"]);
}

#[test]
fn heartbeat_ttls_are_bounded_and_the_config_names_a_bad_default() {
    let cfg = ClientsConfig::default();
    assert_eq!(cfg.heartbeat(None), Ok(Span::from_secs(60)));
    assert_eq!(cfg.heartbeat(Some(Span::from_secs(5))), Ok(Span::from_secs(5)));
    let e = cfg.heartbeat(Some(Span::from_secs(7200))).unwrap_err();
    assert!(e.contains("2h") && e.contains("clients.heartbeat_max_ttl = 1h"), "{e}");
    assert_eq!(cfg.ttl(ClientKind::Console), Span::from_secs(300));
    let bad = ClientsConfig { heartbeat_ttl: Span::from_secs(7200), ..cfg };
    assert_eq!(bad.validate().unwrap_err().field, "clients.heartbeat_ttl");
}

#[test]
fn reconciling_releases_sessions_gone_unseen_and_holds_those_found() {
    let mut c = Clients::new();
    let ttl = Span::from_secs(60);
    let (a, b, n) = (ConsoleEvent::key("127.0.0.1:40000"), ConsoleEvent::key("127.0.0.1:40001"), ConsoleEvent::key("127.0.0.1:40002"));
    c.hold(a.clone(), &vm("x"), None, ttl, Millis(0));
    c.hold(b.clone(), &vm("x"), None, ttl, Millis(0));
    c.hold(key(ClientKind::Surrogate, "10.0.0.1"), &vm("x"), None, ttl, Millis(0));
    // Across a reconnect: b closed unseen, n opened unseen.
    c.reconcile(ClientKind::Console, &[(a.clone(), vm("x"), None), (n.clone(), vm("x"), Some("127.0.0.1:40002".into()))], ttl, Millis(5 * S));
    let open: Vec<(String, u32)> = c.views(Millis(5 * S)).into_iter().map(|v| (v.id, v.open)).collect();
    assert_eq!(open, [("127.0.0.1:40000".to_string(), 1), ("127.0.0.1:40001".to_string(), 0), ("127.0.0.1:40002".to_string(), 1), ("10.0.0.1".to_string(), 1)]);
    // Reconciled again with the same list: nothing is counted twice.
    c.reconcile(ClientKind::Console, &[(a.clone(), vm("x"), None), (n.clone(), vm("x"), None)], ttl, Millis(6 * S));
    c.release(&a, Millis(7 * S));
    assert_eq!(c.views(Millis(7 * S))[0].open, 0);
    assert_eq!(c.active(Millis(65 * S)), 3, "b's minute ran out (it ran from the reconcile, at 5 s), a's has not (from its close)");
}
