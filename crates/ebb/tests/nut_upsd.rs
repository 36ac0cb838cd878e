//! The NUT client against a real upsd (Debian's nut-server) serving the
//! `dummy-ups` driver on loopback; the UPS's state is changed by rewriting
//! the driver's file, as a test of a power event does. Bad input against a
//! scripted server on loopback: replies a real upsd would not send.

use ebb::lab::Upsd;
use ebb_backends::nut::{NutClient, NutError};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn wait_status(c: &NutClient, want: &str) -> ebb_backends::nut::UpsReading {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = c.read("test") {
            if r.status == want {
                return r;
            }
        }
        assert!(Instant::now() < deadline, "ups.status never became {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_real_upsd_going_on_battery_and_back() {
    let upsd = Upsd::start("OL").unwrap();
    let c = NutClient::new(upsd.addr(), Duration::from_secs(2));
    let r = wait_status(&c, "OL");
    assert!(r.on_line && !r.on_battery);
    assert_eq!((r.charge, r.realpower_w, r.load), (Some(100.0), Some(180.0), Some(25.0)));
    let vars = c.list_vars("test").unwrap();
    assert_eq!(vars.get("driver.name").map(String::as_str), Some("dummy-ups"));
    upsd.set("OB").unwrap();
    assert!(wait_status(&c, "OB").on_battery);
    upsd.set("OB LB").unwrap();
    let r = wait_status(&c, "OB LB");
    assert!(r.on_battery && r.low_battery && r.charge == Some(8.0));
    upsd.set("OL").unwrap();
    assert!(wait_status(&c, "OL").on_line);
    // A UPS name upsd does not serve.
    match c.read("nope") {
        Err(NutError::UnknownUps { ups, .. }) => assert_eq!(ups, "nope"),
        other => panic!("expected UnknownUps, got {other:?}"),
    }
}

#[test]
fn an_unreachable_upsd_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = NutClient::new(format!("127.0.0.1:{port}"), Duration::from_secs(1));
    let e = c.read("test").unwrap_err();
    assert!(matches!(e, NutError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("is upsd running"), "{e}");
}

/// A server that answers the first request with `reply`, then closes.
fn scripted(reply: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut s = s;
            let _ = s.write_all(reply.as_bytes());
        }
    });
    addr
}

#[test]
fn bad_replies_are_named() {
    let c = |reply| NutClient::new(scripted(reply), Duration::from_secs(2));
    assert!(matches!(c("ERR ACCESS-DENIED\n").read("test"), Err(NutError::AccessDenied { .. })));
    assert!(matches!(c("ERR DATA-STALE\n").read("test"), Err(NutError::Other { code, .. }) if code == "DATA-STALE"));
    let e = c("BEGIN LIST VAR test\nVAR test ups.status OL-unquoted\n").read("test").unwrap_err();
    assert!(matches!(&e, NutError::Malformed { line, .. } if line.contains("OL-unquoted")), "{e:?}");
    // Closed mid-list.
    assert!(matches!(c("BEGIN LIST VAR test\nVAR test ups.status \"OL\"\n").read("test"), Err(NutError::Dropped { .. })));
    // A list without ups.status.
    assert!(matches!(c("BEGIN LIST VAR test\nVAR test battery.charge \"50\"\nEND LIST VAR test\n").read("test"), Err(NutError::NoStatus { .. })));
    assert!(matches!(c("hello\n").read("test"), Err(NutError::Malformed { .. })));
}
