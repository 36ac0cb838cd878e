//! The NUT client against a real upsd (Debian's nut-server) serving the
//! `dummy-ups` driver on loopback; the UPS's state is changed by rewriting
//! the driver's file, as a test of a power event does. Bad input against a
//! scripted server on loopback: replies a real upsd would not send, and
//! upsds that are slow, silent or endless, against the client and against
//! the agent (`ebb run`). Over TLS (`power.ups_ca`): a real upsd with a
//! certificate made by certutil, against impostors: a upsd whose certificate
//! another CA signed, one issued for another name, and upsds that do not
//! take up TLS.

mod common;

use common::AgentProc;
use ebb_lab::lab::{TestCa, Upsd};
use ebb_backends::nut::{NutClient, NutError, NutTls, ReplyError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
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
        Err(NutError::Reply { problem: ReplyError::UnknownUps { ups }, .. }) => assert_eq!(ups, "nope"),
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
    let problem = |reply| match c(reply).read("test") {
        Err(NutError::Reply { problem, .. }) => problem,
        other => panic!("expected a bad reply, got {other:?}"),
    };
    assert_eq!(problem("ERR ACCESS-DENIED\n"), ReplyError::AccessDenied);
    assert_eq!(problem("ERR DATA-STALE\n"), ReplyError::Err { code: "DATA-STALE".into() });
    let p = problem("BEGIN LIST VAR test\nVAR test ups.status OL-unquoted\n");
    assert!(matches!(&p, ReplyError::Malformed { line } if line.contains("OL-unquoted")), "{p:?}");
    // Closed mid-list.
    let e = c("BEGIN LIST VAR test\nVAR test ups.status \"OL\"\n").read("test").unwrap_err();
    assert!(matches!(e, NutError::Closed { .. }), "{e:?}");
    assert!(e.to_string().contains("closed the connection before its answer was complete"), "{e}");
    // A list without ups.status.
    assert!(matches!(c("BEGIN LIST VAR test\nVAR test battery.charge \"50\"\nEND LIST VAR test\n").read("test"), Err(NutError::NoStatus { .. })));
    assert!(matches!(problem("hello\n"), ReplyError::Malformed { .. }));
}

/// A fake upsd on loopback: every connection is served by `serve` on a
/// thread of its own once its request has come. Each behaviour ends when
/// the client goes away, or at a bound of its own.
fn fake_upsd(serve: fn(&mut TcpStream)) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut request = String::new();
                let _ = BufReader::new(&s).read_line(&mut request);
                serve(&mut s);
            });
        }
    });
    addr
}

/// One byte every 1.5 s of a reply that never ends: each read of it is
/// quick, the reading as a whole never finishes.
fn dribble(s: &mut TcpStream) {
    let reply = b"BEGIN LIST VAR test\nVAR test ups.status \"OL\"\n".iter().cycle();
    for b in reply.take(80) {
        if s.write_all(&[*b]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
}

/// `read` of `ups` on its own thread: the error, or a panic when it has not
/// ended after a minute (far past any bound the client is given here).
fn read_err(addr: String, timeout: Duration) -> NutError {
    fails(NutClient::new(addr, timeout))
}

/// As `read_err`, with any client.
fn fails(c: NutClient) -> NutError {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(c.read("test")));
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(r) => r.expect_err("the reading should fail"),
        Err(_) => panic!("the reading did not end within a minute"),
    }
}

#[test]
fn a_upsd_that_answers_one_byte_at_a_time_without_end_fails_the_reading_at_its_deadline() {
    let e = read_err(fake_upsd(dribble), Duration::from_secs(2));
    assert!(matches!(e, NutError::Unfinished { .. }), "{e:?}");
    assert!(e.to_string().contains("did not finish its answer within 2s"), "{e}");
}

#[test]
fn an_endless_line_is_cut_at_the_line_bound() {
    let addr = fake_upsd(|s| {
        let _ = s.write_all(b"BEGIN LIST VAR test\nVAR test ups.status \"");
        let chunk = [b'O'; 64 * 1024];
        for _ in 0..1024 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let e = read_err(addr, Duration::from_secs(10));
    assert!(matches!(e, NutError::Reply { problem: ReplyError::LineTooLong, .. }), "{e:?}");
    assert!(e.to_string().ends_with("sent a line longer than 4096 bytes"), "{e}");
}

#[test]
fn endless_variables_are_cut_at_the_variable_bound() {
    let addr = fake_upsd(|s| {
        let _ = s.write_all(b"BEGIN LIST VAR test\n");
        for batch in 0..2000 {
            let lines: String = (0..1000).map(|i| format!("VAR test v{batch}.{i} \"1\"\n")).collect();
            if s.write_all(lines.as_bytes()).is_err() {
                return;
            }
        }
    });
    let e = read_err(addr, Duration::from_secs(10));
    assert!(matches!(e, NutError::Reply { problem: ReplyError::TooManyVars, .. }), "{e:?}");
    assert!(e.to_string().ends_with("sent more than 1024 variables"), "{e}");
}

/// Sends `bytes`, then holds the connection until the client leaves.
fn send_and_hold(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.read(&mut [0; 64]);
}

#[test]
fn bytes_that_are_not_text_are_named_undecodable() {
    // A TLS client hello: something other than upsd listens there.
    let e = read_err(fake_upsd(|s| send_and_hold(s, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")), Duration::from_secs(2));
    assert!(matches!(e, NutError::Reply { problem: ReplyError::Undecodable { byte: 0xfc, line: 1 }, .. }), "{e:?}");
    assert!(e.to_string().contains("sent bytes that are not text (byte 0xfc in line 1)"), "{e}");
    // A value in Latin-1.
    let e = read_err(fake_upsd(|s| send_and_hold(s, b"BEGIN LIST VAR test\nVAR test ups.mfr \"Sch\xfctz\"\n")), Duration::from_secs(2));
    assert!(matches!(e, NutError::Reply { problem: ReplyError::Undecodable { byte: 0xfc, line: 2 }, .. }), "{e:?}");
}

#[test]
fn a_silent_upsd_is_told_from_one_that_closes() {
    let e = read_err(fake_upsd(|s| send_and_hold(s, b"")), Duration::from_secs(1));
    assert!(matches!(e, NutError::Silent { .. }), "{e:?}");
    assert!(e.to_string().contains("accepted the connection but sent nothing within 1s"), "{e}");
    let e = read_err(fake_upsd(|_| {}), Duration::from_secs(1));
    assert!(matches!(e, NutError::Closed { .. }), "{e:?}");
}

/// Polls `child` until it exits, for at most `limit`.
fn exited(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The agent reads the UPS off its tick: a upsd that never finishes an
/// answer costs it nothing but the error it shows.
#[test]
fn a_upsd_that_never_finishes_stalls_neither_the_ticks_nor_the_api_nor_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[power]\nups = \"test@{}\"\ntimeout = \"2s\"\n", fake_upsd(dribble));
    let mut agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    let p = agent.wait("the failed reading", Duration::from_secs(30), |a| a.status().power.filter(|p| p.error.is_some()));
    let error = p.error.unwrap();
    assert!(error.contains("did not finish its answer within 2s") && error.contains("no reading from it since"), "{error}");
    let ticks = agent.status().ticks;
    agent.wait("ticks to go on", Duration::from_secs(30), |a| (a.status().ticks >= ticks + 5).then_some(()));
    // A command goes through the agent's actor, as `ebb sleep` does.
    let mut needs = Command::new(common::EBB).arg("--socket").arg(&agent.socket).args(["needs", "test"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let answered = exited(&mut needs, Duration::from_secs(30));
    assert!(answered.is_some_and(|s| s.success()), "`ebb needs test` got no answer: {answered:?}");
    Command::new("kill").arg("-TERM").arg(agent.child.id().to_string()).status().unwrap();
    let status = exited(&mut agent.child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "ebb run did not stop on SIGTERM: {status:?}\n{}", agent.log_text());
}

/// The agent awaits its first UPS reading (within the reading's bound); a
/// SIGTERM meanwhile still stops it cleanly.
#[test]
fn sigterm_during_the_first_reading_stops_the_agent_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[power]\nups = \"test@{}\"\ntimeout = \"5s\"\n", fake_upsd(dribble));
    let mut agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    Command::new("kill").arg("-TERM").arg(agent.child.id().to_string()).status().unwrap();
    let status = exited(&mut agent.child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "ebb run did not stop cleanly on SIGTERM: {status:?}\n{}", agent.log_text());
    assert!(!agent.socket.exists(), "the socket was left behind");
}

/// A network namespace of the test's own whose resolver asks a name server
/// that never answers: its only route leads into a veth pair, to an address
/// with a made-up MAC, so queries vanish without an error. Removed on drop.
struct SilentResolver(String);

impl SilentResolver {
    fn new() -> SilentResolver {
        let name = format!("ebb-dns-{}", std::process::id());
        let ns = SilentResolver(name.clone());
        for args in [
            format!("netns add {name}"),
            format!("-n {name} link set lo up"),
            format!("-n {name} link add v0 type veth peer name v1"),
            format!("-n {name} link set v0 up"),
            format!("-n {name} link set v1 up"),
            format!("-n {name} addr add 192.0.2.1/24 dev v0"),
            format!("-n {name} neigh add 192.0.2.53 lladdr 02:00:00:00:00:01 dev v0 nud permanent"),
        ] {
            let ok = Command::new("ip").args(args.split(' ')).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {args} failed (run as root, with iproute2)");
        }
        // `ip netns exec` mounts this over /etc/resolv.conf: minutes for a lookup to fail.
        std::fs::create_dir_all(format!("/etc/netns/{name}")).unwrap();
        std::fs::write(format!("/etc/netns/{name}/resolv.conf"), "nameserver 192.0.2.53\noptions timeout:30 attempts:5\n").unwrap();
        ns
    }
}

impl Drop for SilentResolver {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.0));
    }
}

/// The threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| t.as_ref().is_ok_and(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)))
        .count()
}

/// The UPS's host name is looked up within the reading's deadline: a hung
/// resolver fails the reading, holds one thread however many readings
/// wait on it, and stalls nothing else.
#[test]
fn a_host_name_whose_lookup_hangs_fails_the_reading_at_its_deadline() {
    let ns = SilentResolver::new();
    let dir = tempfile::tempdir().unwrap();
    let (socket, journal, config) = (dir.path().join("ebb.sock"), dir.path().join("journal.db"), dir.path().join("ebb.toml"));
    let text = format!(
        "[agent]\nuri = \"test:///default\"\ntick = \"200ms\"\nsocket = \"{}\"\njournal = \"{}\"\n[power]\nups = \"test@ups.example:3493\"\ntimeout = \"1s\"\n",
        socket.display(),
        journal.display()
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("agent.log");
    // `ip netns exec` execs ebb: the child is the agent itself.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, common::EBB, "run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = AgentProc { child, socket, journal, config, log, wrapper: Vec::new() };
    common::wait_for("the agent's API", Duration::from_secs(20), || common::answers(&agent.socket).then_some(()));
    let p = agent.wait("the failed lookup", Duration::from_secs(30), |a| a.status().power.filter(|p| p.error.is_some()));
    let error = p.error.unwrap();
    assert!(error.contains("the host name in ups.example:3493 does not resolve (the lookup did not finish within 1s)"), "{error}");
    let ticks = agent.status().ticks;
    agent.wait("ticks to go on", Duration::from_secs(30), |a| (a.status().ticks >= ticks + 5).then_some(()));
    assert_eq!(threads_named(agent.child.id(), "ebb-ups-lookup"), 1);
    Command::new("kill").arg("-TERM").arg(agent.child.id().to_string()).status().unwrap();
    let status = exited(&mut agent.child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "ebb run did not stop on SIGTERM: {status:?}\n{}", agent.log_text());
}

/// A client of the upsd at `addr` that reads only over TLS, trusting `ca`
/// for certificates issued for `name`.
fn tls_client(addr: String, ca: &std::path::Path, name: &str) -> NutClient {
    NutClient::new(addr, Duration::from_secs(2)).with_tls(NutTls::new(ca, name).unwrap())
}

#[test]
fn over_tls_a_real_upsd_is_read_once_its_certificate_verifies() {
    let ca = TestCa::new().unwrap();
    let upsd = Upsd::start_tls("OL", ca.issue("ip:127.0.0.1").unwrap()).unwrap();
    let c = tls_client(upsd.addr(), &ca.pem(), "127.0.0.1");
    let r = wait_status(&c, "OL");
    assert_eq!((r.charge, r.realpower_w), (Some(100.0), Some(180.0)));
    upsd.set("OB LB").unwrap();
    assert!(wait_status(&c, "OB LB").low_battery);
    // The same upsd read without TLS answers too: TLS is the client's choice.
    assert_eq!(NutClient::new(upsd.addr(), Duration::from_secs(2)).read("test").unwrap().status, "OB LB");
}

#[test]
fn a_upsd_whose_certificate_another_ca_signed_is_refused() {
    let (ca, impostor) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    // Both CAs are named "ebb test CA": only the signature tells them apart.
    let upsd = Upsd::start_tls("OB LB", impostor.issue("ip:127.0.0.1").unwrap()).unwrap();
    let e = fails(tls_client(upsd.addr(), &ca.pem(), "127.0.0.1"));
    assert!(matches!(e, NutError::Untrusted { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("upsd at {} presented a certificate ebb does not trust (", upsd.addr())), "{text}");
    assert!(text.contains(&format!("it is not signed by a CA in power.ups_ca ({})", ca.pem().display())), "{text}");
    // The impostor's own CA verifies it: the refusal is about the CA alone.
    assert!(wait_status(&tls_client(upsd.addr(), &impostor.pem(), "127.0.0.1"), "OB LB").low_battery);
}

#[test]
fn a_certificate_for_another_name_is_refused_unless_ups_tls_name_names_it() {
    let ca = TestCa::new().unwrap();
    let upsd = Upsd::start_tls("OL", ca.issue("dns:ups.example").unwrap()).unwrap();
    // Reached by IP, as power.ups = "test@127.0.0.1:PORT" does without ups_tls_name.
    let e = fails(tls_client(upsd.addr(), &ca.pem(), "127.0.0.1"));
    assert!(matches!(e, NutError::Untrusted { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("not valid for name \"127.0.0.1\"") && text.contains("ups.example"), "{text}");
    assert!(text.contains("it is not issued for 127.0.0.1: set power.ups_tls_name to a name it is issued for"), "{text}");
    let e = fails(tls_client(upsd.addr(), &ca.pem(), "other.example"));
    assert!(e.to_string().contains("it is not issued for other.example"), "{e}");
    // The name it is issued for, given as power.ups_tls_name gives it.
    assert!(wait_status(&tls_client(upsd.addr(), &ca.pem(), "ups.example"), "OL").on_line);
}

#[test]
fn with_a_ca_set_a_upsd_that_does_not_take_up_tls_is_refused() {
    let ca = TestCa::new().unwrap();
    // A real upsd without a certificate.
    let upsd = Upsd::start("OB LB").unwrap();
    let e = fails(tls_client(upsd.addr(), &ca.pem(), "127.0.0.1"));
    assert!(matches!(&e, NutError::NoTls { answer, .. } if answer == "ERR FEATURE-NOT-CONFIGURED"), "{e:?}");
    assert!(e.to_string().contains("did not take up TLS (it answered STARTTLS with \"ERR FEATURE-NOT-CONFIGURED\")"), "{e}");
    assert!(e.to_string().contains("give upsd a certificate (CERTPATH and CERTIDENT in upsd.conf)"), "{e}");
    // A fake that answers any request with low battery.
    let low = |s: &mut TcpStream| send_and_hold(s, b"BEGIN LIST VAR test\nVAR test ups.status \"OB LB\"\nEND LIST VAR test\n");
    let e = fails(tls_client(fake_upsd(low), &ca.pem(), "127.0.0.1"));
    assert!(matches!(&e, NutError::NoTls { answer, .. } if answer == "BEGIN LIST VAR test"), "{e:?}");
    // One that agrees to TLS, then goes on in the clear.
    let plain = |s: &mut TcpStream| send_and_hold(s, b"OK STARTTLS\nBEGIN LIST VAR test\nVAR test ups.status \"OB LB\"\nEND LIST VAR test\n");
    let e = fails(tls_client(fake_upsd(plain), &ca.pem(), "127.0.0.1"));
    assert!(matches!(e, NutError::Handshake { .. }), "{e:?}");
    assert!(e.to_string().starts_with("the TLS handshake with upsd at 127.0.0.1:"), "{e}");
    // One that agrees, then never shakes hands: the reading's deadline covers the handshake.
    let mute = |s: &mut TcpStream| {
        let _ = s.write_all(b"OK STARTTLS\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = std::io::copy(s, &mut std::io::sink());
    };
    let e = fails(tls_client(fake_upsd(mute), &ca.pem(), "127.0.0.1"));
    assert!(e.to_string().ends_with("failed: it did not finish within 2s"), "{e:?}");
}

/// The agent over TLS: what a verified upsd reports is acted on…
#[test]
fn the_agent_reads_a_verified_upsd_and_acts_on_its_low_battery() {
    let ca = TestCa::new().unwrap();
    let upsd = Upsd::start_tls("OL", ca.issue("ip:127.0.0.1").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[power]\nups = \"{}\"\nups_ca = \"{}\"\n", upsd.ups(), ca.pem().display());
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    agent.wait("the UPS read", Duration::from_secs(30), |a| a.status().power.and_then(|p| p.reading).filter(|r| r.status == "OL"));
    let text = agent.text(&["power"]);
    assert!(text.contains(&format!("source: {} over TLS (OL)", upsd.ups().replace("test@", "UPS test@"))) && text.contains("on mains"), "{text}");
    upsd.set("OB LB").unwrap();
    let power = agent.wait("the VM saved and the power-off recorded", Duration::from_secs(60), |a| a.status().power.filter(|p| p.last_power_off.is_some()));
    assert_eq!(power.saved_for_power, ["test"]);
}

/// …and what an impostor reports is not: its reading fails, as an
/// unreachable upsd's does.
#[test]
fn the_agent_does_not_act_on_a_upsd_whose_certificate_another_ca_signed() {
    let (ca, impostor) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let upsd = Upsd::start_tls("OB LB", impostor.issue("ip:127.0.0.1").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[power]\nups = \"{}\"\nups_ca = \"{}\"\n", upsd.ups(), ca.pem().display());
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    let p = agent.wait("the failed reading", Duration::from_secs(30), |a| a.status().power.filter(|p| p.error.is_some()));
    assert!(p.error.unwrap().contains("presented a certificate ebb does not trust"));
    // Readings go on failing tick after tick; none is taken for low battery.
    let ticks = agent.status().ticks;
    let power = agent.wait("more ticks", Duration::from_secs(30), |a| (a.status().ticks >= ticks + 10).then(|| a.status().power.unwrap()));
    assert!(power.reading.is_none() && power.saved_for_power.is_empty() && power.last_power_off.is_none(), "{power:?}");
    assert!(agent.vm("test").is_some_and(|v| v.state == ebb_core::VmState::Running && v.sleeping.is_none()), "{:?}", agent.vm("test"));
    let text = agent.text(&["power"]);
    assert!(text.contains(&format!("last reading failed: upsd at {} presented a certificate ebb does not trust", upsd.addr())), "{text}");
    assert!(text.contains("it is not signed by a CA in power.ups_ca") && !text.contains("LOW BATTERY"), "{text}");
}
