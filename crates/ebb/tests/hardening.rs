//! The cases of the reliability probe (shared/reviews/reliability.md) that
//! concern the agent's own surroundings, through the real binary on
//! libvirt's test driver: its socket and journal, asking twice, signals,
//! the API's bounds and what reaches the operator's terminal.

mod common;
use common::*;
use ebb_lab::lab::free_port;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn config(dir: &Path, socket: &Path, journal: &Path, rest: &str) -> std::path::PathBuf {
    let path = dir.join("ebb.toml");
    let text = format!(
        "[agent]\nuri = \"test:///default\"\ntick = \"200ms\"\nsocket = \"{}\"\njournal = \"{}\"\n{rest}\n",
        socket.display(),
        journal.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `ebb run` on a config it should refuse; an agent that starts
/// anyway is stopped after a few seconds and counts as started.
fn run_briefly(config: &Path) -> (bool, String) {
    let dir = config.parent().unwrap();
    let log = dir.join("refused.log");
    let mut child = Command::new(EBB).args(["run", "--config"]).arg(config).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break !status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (!refused, std::fs::read_to_string(&log).unwrap_or_default())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep.txt");
    std::fs::write(&keep, "data").unwrap();
    let cfg = config(dir.path(), &keep, &dir.path().join("j.db"), "");
    let (ok, err) = run_briefly(&cfg);
    assert!(!ok, "the agent started on a regular file");
    assert!(err.contains(&keep.display().to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "data", "the file was touched");

    // The socket named as the journal: the journal survives, named.
    let journal = dir.path().join("journal.db");
    let cfg = config(dir.path(), &journal, &journal, "");
    let (ok, err) = run_briefly(&cfg);
    assert!(!ok);
    assert!(err.contains(&journal.display().to_string()), "{err}");
    if journal.exists() {
        assert!(!std::fs::symlink_metadata(&journal).unwrap().file_type().is_dir());
    }

    // An empty path would bind an abstract socket no file mode protects.
    let cfg = config(dir.path(), Path::new(""), &dir.path().join("j2.db"), "");
    let (ok, err) = run_briefly(&cfg);
    assert!(!ok);
    assert!(err.contains("agent.socket"), "{err}");
}

#[test]
fn the_socket_gets_its_mode_whatever_the_umask_and_others_are_told_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    // Others may walk to the socket: its own mode must stop them.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sockdir = dir.path().join("run");
    let socket = sockdir.join("ebb.sock");
    let journal = dir.path().join("journal.db");
    let cfg = config(dir.path(), &socket, &journal, "");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = KillOnDrop(
        Command::new("sh").arg("-c").arg(format!("umask 000; exec {EBB} run --config {}", cfg.display())).stderr(log).spawn().unwrap(),
    );
    wait_for("the agent's API", Duration::from_secs(20), || answers(&socket).then_some(()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&socket), 0o660, "the socket's mode");
    assert_eq!(mode(&sockdir), 0o755, "the folder ebb made");
    assert_eq!(mode(&journal), 0o600, "the journal holds client addresses: owner only");
    // Another user is told what happened, not that no agent runs.
    let out = Command::new(EBB).arg("--socket").arg(&socket).arg("status").uid(65534).gid(65534).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    drop(agent);

    // With agent.socket_group, that group's members may use the CLI.
    let cfg = config(dir.path(), &socket, &journal, "socket_group = \"nogroup\"");
    let _agent = AgentProc::start_with(dir.path(), cfg, socket.clone(), journal);
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 65534, "the socket's group");
    let out = Command::new(EBB).arg("--socket").arg(&socket).args(["status", "--json"]).uid(65534).gid(65534).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn asking_twice_to_sleep_or_wake_leaves_the_vm_and_its_services_right() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let agent = AgentProc::start(
        dir.path(),
        "uri = \"test:///default\"\ntick = \"2s\"",
        &format!(
            "[vm.test.sleep]\nmode = \"save\"\n[[vm.test.service]]\nname = \"raw\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend_port}\"\n"
        ),
    );
    let surrogate_state = |agent: &AgentProc| agent.vm("test").and_then(|v| v.surrogate).map(|s| s.state);
    agent.wait("the test domain served", Duration::from_secs(10), |a| surrogate_state(a).filter(|s| s == "awake"));
    for round in 0..3 {
        // Within one tick: the second ask sees the first one's result.
        let first = agent.cli(&["sleep", "test"]);
        let second = agent.cli(&["sleep", "test"]);
        assert!(first.status.success(), "round {round}: {}", String::from_utf8_lossy(&first.stderr));
        assert!(!second.status.success());
        assert!(String::from_utf8_lossy(&second.stderr).contains("asleep already"), "{}", String::from_utf8_lossy(&second.stderr));
        let vm = agent.vm("test").unwrap();
        assert_eq!(vm.surrogate.unwrap().state, "asleep", "round {round}");
        assert!(vm.sleeping.is_some());

        let first = agent.cli(&["wake", "test"]);
        let second = agent.cli(&["wake", "test"]);
        assert!(first.status.success(), "round {round}: {}", String::from_utf8_lossy(&first.stderr));
        assert!(!second.status.success());
        assert!(String::from_utf8_lossy(&second.stderr).contains("awake already"), "{}", String::from_utf8_lossy(&second.stderr));
        let vm = agent.vm("test").unwrap();
        assert_eq!(vm.surrogate.unwrap().state, "awake", "round {round}");
        assert!(vm.sleeping.is_none());
    }
    // The awake VM's service is spliced through to its backend.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    c.write_all(b"ping").unwrap();
    // The surrogate's own probes connect too, and close without a byte.
    let got = loop {
        let (mut b, _) = backend.accept().unwrap();
        let mut got = Vec::new();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = b.read_to_end(&mut got);
        if !got.is_empty() {
            break got;
        }
    };
    assert_eq!(got, b"ping");
}

#[test]
fn a_second_agent_on_the_same_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"", "");
    let other = tempfile::tempdir().unwrap();
    let cfg = config(other.path(), &other.path().join("other.sock"), &agent.journal, "");
    let (ok, err) = run_briefly(&cfg);
    assert!(!ok, "two agents ran on one journal");
    assert!(err.contains("another ebb agent holds the journal") && err.contains(&agent.journal.display().to_string()), "{err}");
}

#[test]
fn sighup_stops_the_agent_cleanly_and_sigusr1_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProc::start(dir.path(), "uri = \"test:///default\"", "");
    // SIGUSR1 means nothing to ebb: it must not die of it.
    let _ = Command::new("kill").arg("-USR1").arg(agent.child.id().to_string()).status();
    agent.wait("the ignored SIGUSR1 logged", Duration::from_secs(10), |a| a.log_text().contains("SIGUSR1 ignored").then_some(()));
    assert!(agent.child.try_wait().unwrap().is_none(), "SIGUSR1 killed the agent");
    agent.status();
    let _ = Command::new("kill").arg("-HUP").arg(agent.child.id().to_string()).status();
    let status = wait_for("the agent to stop", Duration::from_secs(10), || agent.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}: {}", agent.log_text());
    assert!(!agent.socket.exists(), "the socket was left behind");
    let journal = ebb_daemon::journal::Journal::open(&agent.journal).unwrap();
    let kinds: Vec<String> = journal.events(None, 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.first().map(String::as_str), Some("stopped"), "{kinds:?}");
}

#[test]
fn the_api_drops_silent_clients_and_refuses_past_its_connection_cap() {
    use std::os::unix::net::UnixStream;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"", "");
    // Clients that open a connection and never finish their request head.
    let silent: Vec<UnixStream> = (0..ebb_daemon::api::MAX_API_CONNECTIONS)
        .map(|_| {
            let mut s = UnixStream::connect(&agent.socket).unwrap();
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // One more is told why, at once, not left waiting.
    let mut extra = UnixStream::connect(&agent.socket).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = extra.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503") && reply.contains("API connections already"), "{reply:?}");
    // The silent ones are dropped after the header timeout; the CLI works again.
    let started = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(started.elapsed() < Duration::from_secs(30), "a silent client was kept");
    }
    agent.status();
}

#[test]
fn network_bytes_never_reach_the_terminal_as_control_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agent = AgentProc::start(
        dir.path(),
        "uri = \"test:///default\"\ntick = \"200ms\"",
        &format!(
            "[surrogate]\nwake_deadline = \"1s\"\n[vm.test.sleep]\nmode = \"pause\"\n[[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{dead}\"\nhttp = true\n\
             [[vm.test.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 200\n"
        ),
    );
    agent.wait("the test domain served", Duration::from_secs(10), |a| a.vm("test").and_then(|v| v.surrogate));
    agent.text(&["sleep", "test"]);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    c.write_all(b"GET /\x1b]0;PWNED\x07\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    agent.wait("the wake journaled", Duration::from_secs(10), |a| {
        a.events(Some("test")).into_iter().find(|e| e.kind == "wake" && e.text.contains("PWNED"))
    });
    for args in [&["events", "--vm", "test"][..], &["explain", "test"][..]] {
        let out = agent.text(args);
        assert!(out.contains("PWNED"), "{out}");
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "ebb {args:?} printed a control sequence: {out:?}");
    }
}
