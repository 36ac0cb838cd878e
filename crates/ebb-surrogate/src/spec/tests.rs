//! The specs' and limits' rules.

use super::*;
use std::time::Duration;

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn canned(method: &str, path: &str, status: u16) -> CannedReply {
    CannedReply {
        method: method.into(),
        path: path.into(),
        status,
        content_type: "text/plain".into(),
        body: "ok".into(),
    }
}

fn with(c: CannedReply) -> ServiceSpec {
    ServiceSpec {
        canned: vec![c],
        ..ServiceSpec::http("web", addr(8080), addr(18080))
    }
}

#[test]
fn good_specs_pass() {
    with(canned("GET", "/healthz", 200)).validate().unwrap();
    ServiceSpec::udp("dns", addr(53), addr(1053))
        .validate()
        .unwrap();
    Limits::default().validate().unwrap();
}

#[test]
fn malformed_canned_replies_are_rejected() {
    let cases = [
        (canned("GET", "/h", 99), "status 99"),
        (canned("GET", "/h", 600), "status 600"),
        (canned("GET", "/h", 101), "status 101"),
        (canned("GET", "", 200), "path \"\""),
        (canned("GET", "healthz", 200), "path \"healthz\""),
        (canned("GET", "/a b", 200), "path \"/a b\""),
        (canned("GET", "/h?x=1", 200), "query"),
        (canned("G ET", "/h", 200), "method \"G ET\""),
        (canned("", "/h", 200), "method \"\""),
        (canned("GET", "/h", 204), "forbids a body"),
    ];
    for (c, needle) in cases {
        let err = with(c.clone()).validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{c:?}: {err}");
        assert!(err.contains("service web"), "{err}");
    }
    let mut ct = canned("GET", "/h", 200);
    ct.content_type = "text/plain\r\nX-Evil: 1".into();
    assert!(matches!(
        with(ct).validate(),
        Err(SpecError::BadContentType { .. })
    ));
}

#[test]
fn contradictory_services_are_rejected() {
    let mut udp_echo = ServiceSpec::udp("e", addr(7), addr(1007));
    udp_echo.echo = true;
    assert!(matches!(
        udp_echo.validate(),
        Err(SpecError::EchoOnUdp { .. })
    ));
    let mut raw_canned = ServiceSpec::tcp("r", addr(81), addr(1081));
    raw_canned.canned.push(canned("GET", "/", 200));
    assert!(matches!(
        raw_canned.validate(),
        Err(SpecError::CannedWithoutHttp { .. })
    ));
    let mut dup = with(canned("GET", "/h", 200));
    dup.canned.push(canned("GET", "/h", 503));
    assert!(matches!(
        dup.validate(),
        Err(SpecError::DuplicateCanned { .. })
    ));
    let looped = ServiceSpec::tcp("l", addr(81), addr(81));
    assert!(matches!(
        looped.validate(),
        Err(SpecError::ListenIsBackend { .. })
    ));
}

fn at(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn one_vm(services: &[ServiceSpec]) -> Result<(), SpecError> {
    validate_services(&[("web", services)])
}

#[test]
fn a_wildcard_listen_clashes_with_every_address_of_its_family_on_the_port() {
    let clashes = [
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8080", "[::1]:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "[::]:8080"),
        ("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "[::ffff:10.0.0.1]:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
    ];
    for (a, b) in clashes {
        let services = [
            ServiceSpec::tcp("a", at(a), addr(1)),
            ServiceSpec::tcp("b", at(b), addr(2)),
        ];
        let e = one_vm(&services).unwrap_err();
        assert!(matches!(e, SpecError::ListenClash { .. }), "{a} {b}: {e:?}");
        let text = e.to_string();
        assert!(
            text.contains("vm.web.service b listens on") && text.contains("vm.web.service a listens already"),
            "{text}"
        );
    }
    // What the kernel lets both bind: other families, other addresses,
    // the other protocol (DNS: 53/tcp and 53/udp).
    for (a, b) in [
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8081"),
    ] {
        let services = [
            ServiceSpec::tcp("a", at(a), addr(1)),
            ServiceSpec::tcp("b", at(b), addr(2)),
        ];
        one_vm(&services).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
    }
    one_vm(&[
        ServiceSpec::tcp("dns-tcp", addr(53), addr(1053)),
        ServiceSpec::udp("dns-udp", addr(53), addr(1053)),
    ])
    .unwrap();
}

#[test]
fn service_sets_are_checked_across_vms() {
    let a = [ServiceSpec::tcp("x", addr(8080), addr(1))];
    let b = [ServiceSpec::tcp("y", at("0.0.0.0:8080"), addr(2))];
    let e = validate_services(&[("a", &a), ("b", &b)]).unwrap_err();
    assert!(e.to_string().contains("vm.b.service y listens on 0.0.0.0:8080 (tcp), where vm.a.service x listens already (127.0.0.1:8080)"), "{e}");
    let twice = [
        ServiceSpec::tcp("http", addr(80), addr(1)),
        ServiceSpec::tcp("http", addr(81), addr(2)),
    ];
    assert_eq!(
        one_vm(&twice),
        Err(SpecError::DuplicateName { vm: "web".into(), service: "http".into() })
    );
    // The same name in two VMs is fine.
    validate_services(&[("a", &twice[..1]), ("b", &twice[1..])]).unwrap();
    let bad = [with(canned("GET", "/h", 99))];
    let e = validate_services(&[("a", &a), ("b", &bad)]).unwrap_err();
    assert!(e.to_string().starts_with("vm.b.service: service web has a canned reply"), "{e}");
}

#[test]
fn a_service_that_would_forward_to_the_surrogate_is_a_loop() {
    for (listen, backend) in [
        ("0.0.0.0:18181", "127.0.0.1:18181"),
        ("0.0.0.0:18181", "127.0.0.9:18181"),
        ("[::]:18181", "[::1]:18181"),
        ("[::]:18181", "127.0.0.1:18181"),
        ("[::]:18181", "[::ffff:127.0.0.1]:18181"),
        ("127.0.0.1:18181", "[::ffff:127.0.0.1]:18181"),
    ] {
        let e = one_vm(&[ServiceSpec::tcp("http", at(listen), at(backend))]).unwrap_err();
        assert!(
            matches!(&e, SpecError::InVm { source, .. } if matches!(**source, SpecError::ListenIsBackend { .. })),
            "{listen} → {backend}: {e:?}"
        );
        assert!(e.to_string().contains("would forward to itself"), "{e}");
    }
    // Two services pointing at each other, across VMs; and a chain.
    let a = [ServiceSpec::tcp("a", addr(8001), addr(8002))];
    let b = [ServiceSpec::tcp("b", at("0.0.0.0:8002"), addr(8001))];
    let e = validate_services(&[("one", &a), ("two", &b)]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm.one.service a forwards to 127.0.0.1:8002, where vm.two.service b listens (0.0.0.0:8002): the surrogate would forward to itself; point backend at the VM's forward"
    );
    let chain = [
        ServiceSpec::tcp("front", addr(8001), addr(8002)),
        ServiceSpec::tcp("back", addr(8002), addr(18002)),
    ];
    assert!(matches!(one_vm(&chain), Err(SpecError::Loop { .. })));
    // Not the surrogate: another host's address, or the other protocol.
    one_vm(&[ServiceSpec::tcp("lan", at("0.0.0.0:8080"), at("10.0.0.5:8080"))]).unwrap();
    one_vm(&[
        ServiceSpec::udp("dns", addr(53), addr(1053)),
        ServiceSpec::tcp("fwd", addr(54), addr(53)),
    ])
    .unwrap();
}

#[test]
fn limits_that_hold_nothing_or_without_bound_are_rejected() {
    for (limits, field) in [
        (Limits { queue_depth: 0, ..Limits::default() }, "queue_depth"),
        (Limits { max_held_bytes_per_vm: 1000 << 40, ..Limits::default() }, "max_held_bytes_per_vm"),
        (Limits { replay_in_flight: usize::MAX, ..Limits::default() }, "replay_in_flight"),
    ] {
        let e = limits.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
}

#[test]
fn limits_that_would_spin_are_rejected() {
    let l = Limits {
        probe_interval: Duration::ZERO,
        ..Limits::default()
    };
    assert!(l
        .validate()
        .unwrap_err()
        .to_string()
        .contains("probe_interval"));
}
