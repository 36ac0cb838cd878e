//! ebb under systemd: the unit file in contrib/systemd, and the notify
//! protocol it relies on (`Type=notify`, `WatchdogSec`), spoken to a socket
//! the test listens on as systemd would (systemd is not PID 1 here).

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The datagrams the agent sends until one contains `want`, or a panic after `within`.
fn until_message(socket: &UnixDatagram, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want:?} within {within:?}; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains(want) {
                return text;
            }
            seen.push(text);
        }
    }
}

#[test]
fn the_agent_tells_systemd_it_is_ready_its_status_and_that_its_ticks_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&path).unwrap();
    let wrapper = ["env".to_string(), format!("NOTIFY_SOCKET={}", path.display()), "WATCHDOG_USEC=3000000".into()];
    let mut agent = AgentProc::start_through(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", "", &wrapper);
    let ready = until_message(&systemd, "READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS="), "{ready}");
    // After each tick: the status line and the watchdog's ping.
    let tick = until_message(&systemd, "WATCHDOG=1", Duration::from_secs(5));
    let status = tick.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or_default().to_string();
    assert!(status.contains("1 VMs (0 managed, 0 asleep)") && status.contains("ticks"), "{tick}");
    agent.stop();
    until_message(&systemd, "STOPPING=1", Duration::from_secs(5));
}

#[test]
fn without_a_watchdog_no_ping_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&path).unwrap();
    let wrapper = ["env".to_string(), format!("NOTIFY_SOCKET={}", path.display())];
    let _agent = AgentProc::start_through(dir.path(), "uri = \"test:///default\"\ntick = \"100ms\"", "", &wrapper);
    until_message(&systemd, "READY=1", Duration::from_secs(10));
    // A second's ticks: statuses, never a ping.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    let mut statuses = 0;
    while Instant::now() < deadline {
        systemd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        if let Ok(n) = systemd.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(!text.contains("WATCHDOG"), "{text}");
            statuses += text.contains("STATUS=") as usize;
        }
    }
    assert!(statuses >= 2, "{statuses} status updates in a second of 100 ms ticks");
}

/// `systemd-analyze verify` on the unit (its binary pointed at this build's
/// ebb, its man: page the one `ebb man` writes): the directives exist and
/// fit, the command runs.
#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = include_str!("../../../contrib/systemd/ebb.service");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("RuntimeDirectory=ebb"));
    std::fs::write(dir.path().join("ebb.service"), unit.replace("/usr/bin/ebb", EBB)).unwrap();
    let man = dir.path().join("man/man1");
    std::fs::create_dir_all(&man).unwrap();
    std::fs::write(man.join("ebb.1"), ebb(&["man"]).stdout).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("ebb.service"))
        .env("MANPATH", dir.path().join("man"))
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (scripts/setup-host.sh installs systemd)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A broken unit is refused: the check can fail.
    std::fs::write(dir.path().join("broken.service"), unit.replace("/usr/bin/ebb", EBB).replace("Type=notify", "Type=notifyy")).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(dir.path().join("broken.service")).env("MANPATH", dir.path().join("man")).output().unwrap();
    assert!(!out.status.success() || String::from_utf8_lossy(&out.stderr).contains("notifyy"), "{}", String::from_utf8_lossy(&out.stderr));
}
