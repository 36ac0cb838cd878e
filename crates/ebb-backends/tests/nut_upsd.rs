//! The NUT client against a real upsd (Debian's nut-server) serving the
//! `dummy-ups` driver on loopback; the UPS's state is changed by rewriting
//! the driver's file, as a test of a power event does. Bad input against a
//! scripted server on loopback: replies a real upsd would not send.

use ebb_backends::nut::{NutClient, NutError};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// dummy-ups + upsd in a folder of their own; both stopped on drop.
struct Upsd {
    dir: tempfile::TempDir,
    port: u16,
}

impl Upsd {
    fn start(status: &str) -> Upsd {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let p = dir.path();
        let dev = p.join("ups.dev");
        write_status(&dev, status);
        std::fs::write(p.join("nut.conf"), "MODE=standalone\n").unwrap();
        std::fs::write(p.join("ups.conf"), format!("[test]\ndriver = dummy-ups\nport = {}\ndesc = \"ebb test\"\n", dev.display())).unwrap();
        std::fs::write(p.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\nSTATEPATH {}\n", p.display())).unwrap();
        std::fs::write(p.join("upsd.users"), "").unwrap();
        let run = |prog: &str, args: &[&str]| {
            let out = Command::new(prog)
                .args(args)
                .env("NUT_CONFPATH", p)
                .env("NUT_STATEPATH", p)
                .output()
                .unwrap_or_else(|e| panic!("{prog}: {e}: install nut-server (scripts/setup-host.sh)"));
            assert!(out.status.success(), "{prog}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run("/lib/nut/dummy-ups", &["-a", "test", "-u", "root"]);
        run("/lib/nut/upsd", &["-u", "root"]);
        Upsd { dir, port }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set(&self, status: &str) {
        write_status(&self.dir.path().join("ups.dev"), status);
    }
}

fn write_status(dev: &Path, status: &str) {
    let charge = if status.contains("LB") { 8 } else { 100 };
    std::fs::write(dev, format!("ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: 1200\nups.load: 25\nups.realpower: 180\n")).unwrap();
}

impl Drop for Upsd {
    fn drop(&mut self) {
        for pidfile in ["upsd.pid", "dummy-ups-test.pid"] {
            let path: PathBuf = self.dir.path().join(pidfile);
            if let Ok(pid) = std::fs::read_to_string(&path) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

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
    let upsd = Upsd::start("OL");
    let c = NutClient::new(upsd.addr(), Duration::from_secs(2));
    let r = wait_status(&c, "OL");
    assert!(r.on_line && !r.on_battery);
    assert_eq!((r.charge, r.realpower_w, r.load), (Some(100.0), Some(180.0), Some(25.0)));
    let vars = c.list_vars("test").unwrap();
    assert_eq!(vars.get("driver.name").map(String::as_str), Some("dummy-ups"));
    upsd.set("OB");
    assert!(wait_status(&c, "OB").on_battery);
    upsd.set("OB LB");
    let r = wait_status(&c, "OB LB");
    assert!(r.on_battery && r.low_battery && r.charge == Some(8.0));
    upsd.set("OL");
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
