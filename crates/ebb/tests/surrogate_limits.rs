//! The surrogate's limits through the real binary, on libvirt's test driver
//! and loopback backends: past its share of the descriptors a flooded
//! service refuses with a reason while another VM's service and the API go
//! on answering; a request line full of terminal escapes reaches the
//! journal, `ebb events` and the log escaped.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// A backend that takes connections and reads until the client leaves,
/// never answering: an idle client stays idle and open.
/// A backend answering every request `200 other`.
fn http_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nother");
        }
    });
    port
}

fn service(vm: &str, listen: u16, backend: u16) -> String {
    format!("[[vm.{vm}.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n")
}

/// Runs the CLI with a bound, so an agent that stopped answering fails the
/// test instead of hanging it.
fn cli_within(agent: &AgentProc, secs: u32, args: &[&str]) -> std::process::Output {
    Command::new("timeout").arg(secs.to_string()).arg(EBB).arg("--socket").arg(&agent.socket).args(args).output().unwrap()
}

#[test]
fn past_its_descriptors_a_flooded_service_refuses_with_a_reason_and_the_api_and_another_vm_answer() {
    let (listen, other_listen) = (free_port(), free_port());
    // On ebb's own splice: the kernel path would take the awake clients
    // without a descriptor of the agent's.
    let rest = format!(
        "[surrogate]\nawake_path = \"splice\"\n{}{}",
        service("test", listen, idle_backend()),
        service("other", other_listen, http_backend())
    );
    let dir = tempfile::tempdir().unwrap();
    // 400 descriptors: 200 kept, 175 for TCP clients, 129 of them per VM:
    // about 14 spliced connections of 6.
    let agent = AgentProc::start_through(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest, &nofile(400));
    wait_for("the test domain", Duration::from_secs(10), || agent.vm("test").filter(|v| v.surrogate.is_some()));
    assert!(agent.log_text().contains("file descriptors: limit 400: 200 kept"), "{}", agent.log_text());

    // 100 clients that send nothing: each one is either open (spliced,
    // idle) or told why it is refused; none is closed empty or reset.
    let clients: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(("127.0.0.1", listen)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let (mut open, mut refused) = (0, 0);
    for (i, mut c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut text = Vec::new();
        match c.read_to_end(&mut text) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) && text.is_empty() => open += 1,
            Ok(_) => {
                let text = String::from_utf8_lossy(&text);
                assert!(text.starts_with("HTTP/1.1 503") && text.contains("file descriptors"), "client {i}: {text:?}");
                refused += 1;
            }
            other => panic!("client {i}: {other:?} after {:?}", String::from_utf8_lossy(&text)),
        }
    }
    // 6 each while pipes fit, then copied instead of spliced: 2 each.
    assert!((21..=64).contains(&open) && open + refused == 100, "open {open}, refused {refused}");

    // The other VM's service and the API answer all along.
    let mut s = TcpStream::connect(("127.0.0.1", other_listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("other"), "{text}");
    let out = cli_within(&agent, 10, &["status"]);
    assert!(out.status.success(), "ebb status: {}", String::from_utf8_lossy(&out.stderr));
    let events = String::from_utf8_lossy(&cli_within(&agent, 10, &["events", "--vm", "test"]).stdout).into_owned();
    assert!(events.contains("refused a client of web") && events.contains("file descriptors"), "{events}");
    drop(clients);
}

#[test]
fn terminal_escapes_in_a_request_line_reach_the_journal_and_the_log_escaped() {
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    // With a canned reply the surrogate reads the request line to match it.
    let rest = format!("{}[[vm.test.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 200\n", service("test", listen, free_port()));
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    wait_for("the test domain", Duration::from_secs(10), || agent.vm("test").filter(|v| v.surrogate.is_some()));
    let out = agent.cli(&["sleep", "test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.write_all(b"GET /\x1b]0;PWNED\x07\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    let events = loop {
        let out = cli_within(&agent, 10, &["events", "--vm", "test"]);
        if String::from_utf8_lossy(&out.stdout).contains("PWNED") || started.elapsed() > Duration::from_secs(10) {
            break out.stdout;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = String::from_utf8_lossy(&events);
    assert!(text.contains(r"/\u{1b}]0;PWNED\u{7}\u{1b}[2J"), "{text}");
    assert!(!events.iter().any(|b| *b == 0x1b || *b == 0x07), "raw escapes in ebb events: {text:?}");
    let explain = cli_within(&agent, 10, &["explain", "test"]).stdout;
    assert!(!explain.iter().any(|b| *b == 0x1b || *b == 0x07), "{:?}", String::from_utf8_lossy(&explain));
    // The log's colours are ESC sequences of its own; a title needs BEL.
    let log = agent.log_text();
    assert!(log.contains("PWNED") && !log.contains('\x07'), "{log}");
}
