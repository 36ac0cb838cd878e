//! The surrogate's kernel path through the real binary, libvirt's test
//! driver and this host's real nftables: while `test` is awake the kernel
//! forwards its service (the rule is in the agent's table, and the traffic
//! shows in `ebb vms`); `ebb sleep` removes the rule before it returns and
//! the next client is held by the surrogate, which wakes the VM; a clean
//! stop deletes the table; a killed agent's leftovers are removed by the
//! next start, even one without services; without nft, `auto` splices and
//! says why and `kernel` refuses to start; nft breaking later never costs a
//! client; clients from another host (a network namespace the test makes)
//! are forwarded too. Traffic goes to loopback and to the test's own
//! namespaces only.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The VM's service: answers every request with `backend PATH`, until dropped.
struct Backend {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start() -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => answer(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend { port, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut s: TcpStream) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let path = String::from_utf8_lossy(&head).split(' ').nth(1).unwrap_or("").to_string();
    let body = format!("backend {path}");
    let _ = s.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
}

/// One GET through `port`: the body, or what went wrong.
fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).ok_or(format!("not an HTTP answer: {text:?}"))
}

/// The table as `nft list` prints it, or None when it does not exist.
fn nft_table(table: &str) -> Option<String> {
    let out = Command::new("nft").args(["list", "table", "inet", table]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start(dir: &std::path::Path, listen: u16, backend: u16, surrogate: &str) -> AgentProc {
    let agent = AgentProc::start(
        dir,
        "uri = \"test:///default\"\ntick = \"200ms\"",
        &format!(
            "[[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n\
             [surrogate]\n{surrogate}\n"
        ),
    );
    // The API's socket is bound before the services are: wait for them.
    agent.wait("the service served", Duration::from_secs(10), |a| a.vm("test").and_then(|v| v.surrogate));
    agent
}

fn table_of(agent: &AgentProc) -> String {
    ebb_surrogate::kernel_table_name(&agent.socket.to_string_lossy())
}

#[test]
fn awake_the_kernel_forwards_asleep_the_surrogate_holds_and_a_clean_stop_removes_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let listen = free_port();
    let mut agent = start(dir.path(), listen, backend.port, "awake_path = \"kernel\"");
    let table = table_of(&agent);
    let rule = format!("dnat ip to 127.0.0.1:{}", backend.port);
    wait_for("the DNAT rule", Duration::from_secs(15), || nft_table(&table).filter(|t| t.contains(&rule)));

    assert_eq!(get(listen, "/awake").unwrap(), "backend /awake");
    // The kernel carried it (its counter), and it counts as the VM's traffic.
    let sur = agent.wait("the forwarded request counted", Duration::from_secs(10), |a| {
        a.vm("test").and_then(|v| v.surrogate).filter(|s| s.bytes > 0 && !s.awake_paths[0].contains("; 0 connections"))
    });
    assert!(sur.awake_paths[0].starts_with("web: kernel") && sur.awake_paths[0].contains(&table), "{:?}", sur.awake_paths);
    assert_eq!(sur.open_connections, 0, "the surrogate spliced nothing");
    let explain = agent.text(&["explain", "test"]);
    assert!(explain.contains("reach it through: web: kernel"), "{explain}");

    // `ebb sleep` returns after the save: the rule was gone before it.
    agent.text(&["sleep", "test"]);
    let text = nft_table(&table).expect("the table stays while the agent runs");
    assert!(!text.contains("dnat"), "{text}");
    // The next client reaches the surrogate, which holds it and wakes the VM.
    assert_eq!(get(listen, "/asleep").unwrap(), "backend /asleep");
    let events = agent.events(Some("test"));
    assert!(
        events.iter().any(|e| e.kind == "wake" && e.text.contains("a client of its web service needs it")),
        "{events:#?}"
    );
    wait_for("the rule back after the wake", Duration::from_secs(15), || nft_table(&table).filter(|t| t.contains(&rule)));

    agent.stop();
    assert!(agent.child.try_wait().unwrap().is_some_and(|s| s.success()), "{}", agent.log_text());
    assert_eq!(nft_table(&table), None, "a clean stop deletes the table");
}

#[test]
fn a_killed_agents_rules_are_removed_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let listen = free_port();
    let mut agent = start(dir.path(), listen, backend.port, "awake_path = \"kernel\"");
    let table = table_of(&agent);
    wait_for("the DNAT rule", Duration::from_secs(15), || nft_table(&table).filter(|t| t.contains("dnat")));
    agent.kill9();
    assert!(nft_table(&table).is_some_and(|t| t.contains("dnat")), "kill -9 leaves the rule behind");
    // Started again with its backend down: the leftover rule must go, and
    // none comes back while the service does not answer.
    drop(backend);
    let mut again = agent.start_again();
    wait_for("the leftover rule removed", Duration::from_secs(10), || nft_table(&table).filter(|t| !t.contains("dnat")));
    // Killed again, and started with its services gone from the config: it
    // forwards nothing, and its predecessor's table goes too.
    again.kill9();
    assert!(nft_table(&table).is_some(), "kill -9 leaves the table behind");
    let text = std::fs::read_to_string(&agent.config).unwrap();
    let without_services = text.split("[[vm.test.service]]").next().unwrap().to_string();
    std::fs::write(&agent.config, without_services).unwrap();
    let _bare = agent.start_again();
    wait_for("the table removed", Duration::from_secs(10), || nft_table(&table).is_none().then_some(()));
}

#[test]
fn without_nft_auto_splices_and_says_why_and_kernel_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let listen = free_port();
    let agent = start(dir.path(), listen, backend.port, "nft = \"/nonexistent/nft\"");
    assert_eq!(get(listen, "/spliced").unwrap(), "backend /spliced");
    let sur = agent.wait("the spliced request counted", Duration::from_secs(10), |a| {
        a.vm("test").and_then(|v| v.surrogate).filter(|s| s.bytes > 0)
    });
    assert!(sur.awake_paths[0].starts_with("web: splice") && sur.awake_paths[0].contains("/nonexistent/nft"), "{:?}", sur.awake_paths);
    assert!(agent.events(None).iter().any(|e| e.kind == "awake_path" && e.text.contains("/nonexistent/nft")));
    drop(agent);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ebb.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nuri = \"test:///default\"\nsocket = \"{}\"\njournal = \"{}\"\n\
             [[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{}\"\nbackend = \"127.0.0.1:{}\"\n\
             [surrogate]\nawake_path = \"kernel\"\nnft = \"/nonexistent/nft\"\n",
            dir.path().join("s.sock").display(),
            dir.path().join("j.db").display(),
            free_port(),
            backend.port
        ),
    )
    .unwrap();
    let out = ebb(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("awake_path") && err.contains("/nonexistent/nft"), "{err}");

    let text = std::fs::read_to_string(&path).unwrap().replace("awake_path = \"kernel\"", "awake_path = \"fast\"");
    std::fs::write(&path, text).unwrap();
    let out = ebb(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 10") && err.contains("`auto`, `kernel`, `splice`"), "{err}");
}

/// The real nft behind a wrapper that fails every ruleset write while a
/// `broken` file sits beside it: nft breaking while the agent runs.
fn breakable_nft(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (nft, broken) = (dir.join("nft"), dir.join("broken"));
    std::fs::write(
        &nft,
        format!("#!/bin/sh\nif [ -e {} ] && [ \"$1\" = -f ]; then echo 'nft: out of order' >&2; exit 1; fi\nexec nft \"$@\"\n", broken.display()),
    )
    .unwrap();
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
    (nft, broken)
}

#[test]
fn when_nft_breaks_a_vm_the_kernel_still_forwards_is_not_saved_and_a_failed_install_splices() {
    let dir = tempfile::tempdir().unwrap();
    let (nft, broken) = breakable_nft(dir.path());
    let backend = Backend::start();
    let listen = free_port();
    let agent = start(dir.path(), listen, backend.port, &format!("awake_path = \"kernel\"\nnft = \"{}\"", nft.display()));
    let table = table_of(&agent);
    wait_for("the DNAT rule", Duration::from_secs(15), || nft_table(&table).filter(|t| t.contains("dnat")));

    // The rule cannot be removed: the save is not carried out, the VM keeps
    // running and its clients keep their answers.
    std::fs::write(&broken, "").unwrap();
    let out = agent.cli(&["sleep", "test"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be taken back from the kernel forward") && err.contains("out of order"), "{err}");
    let vm = agent.vm("test").unwrap();
    assert!(vm.sleeping.is_none() && vm.state == ebb_core::VmState::Running, "{vm:?}");
    assert!(agent.events(Some("test")).iter().any(|e| e.kind == "sleep" && e.outcome.as_deref().is_some_and(|o| o.contains("out of order"))));
    assert_eq!(get(listen, "/still-awake").unwrap(), "backend /still-awake");

    // nft works for the sleep, breaks before the wake: the service falls
    // back to the splice, says so, and is still served.
    std::fs::remove_file(&broken).unwrap();
    agent.text(&["sleep", "test"]);
    assert!(!nft_table(&table).unwrap().contains("dnat"));
    std::fs::write(&broken, "").unwrap();
    agent.text(&["wake", "test"]);
    let sur = agent.wait("the fallback to the splice", Duration::from_secs(15), |a| {
        a.vm("test").and_then(|v| v.surrogate).filter(|s| s.awake_paths[0].starts_with("web: splice"))
    });
    assert!(sur.awake_paths[0].contains("out of order"), "{:?}", sur.awake_paths);
    assert!(agent.events(Some("test")).iter().any(|e| e.kind == "awake_path" && e.text.contains("out of order")));
    assert_eq!(get(listen, "/spliced").unwrap(), "backend /spliced");
    assert!(!nft_table(&table).unwrap().contains("dnat"));
    drop(agent);
    let _ = Command::new("nft").args(["delete", "table", "inet", &table]).status();
}

/// Two network namespaces joined by a veth pair, deleted on drop: `server`
/// (10.231.0.1) runs the agent and the VM's service, `client` (10.231.0.2)
/// is another host.
struct Netns {
    server: String,
    client: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let id = format!("{}{tag}", std::process::id());
        let n = Netns { server: format!("ebbks{id}"), client: format!("ebbkc{id}") };
        let (vs, vc) = (format!("vs{id}"), format!("vc{id}"));
        for args in [
            vec!["netns", "add", &n.server],
            vec!["netns", "add", &n.client],
            vec!["link", "add", &vs, "type", "veth", "peer", "name", &vc],
            vec!["link", "set", &vs, "netns", &n.server],
            vec!["link", "set", &vc, "netns", &n.client],
            vec!["-n", &n.server, "addr", "add", "10.231.0.1/24", "dev", &vs],
            vec!["-n", &n.client, "addr", "add", "10.231.0.2/24", "dev", &vc],
            vec!["-n", &n.server, "link", "set", &vs, "up"],
            vec!["-n", &n.client, "link", "set", &vc, "up"],
            vec!["-n", &n.server, "link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        n
    }

    fn exec(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

#[test]
fn clients_from_another_host_are_forwarded_by_the_kernel_too() {
    let dir = tempfile::tempdir().unwrap();
    let net = Netns::new("r");
    // The VM's service on an address of the agent's host that is not loopback.
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "backend in its namespace\n").unwrap();
    let mut httpd = net
        .exec(&net.server)
        .args(["busybox", "httpd", "-f", "-p", "10.231.0.1:18080", "-h"])
        .arg(&www)
        .spawn()
        .unwrap();
    let (socket, journal, config) = (dir.path().join("ebb.sock"), dir.path().join("journal.db"), dir.path().join("ebb.toml"));
    std::fs::write(
        &config,
        format!(
            "[agent]\nuri = \"test:///default\"\ntick = \"200ms\"\nsocket = \"{}\"\njournal = \"{}\"\n\
             [[vm.test.service]]\nname = \"web\"\nlisten = \"10.231.0.1:8080\"\nbackend = \"10.231.0.1:18080\"\nhttp = true\n\
             [surrogate]\nawake_path = \"kernel\"\n",
            socket.display(),
            journal.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let child = net
        .exec(&net.server)
        .args([EBB, "run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = AgentProc { child, socket, journal, config, log, wrapper: Vec::new() };
    wait_for("the agent's API", Duration::from_secs(20), || answers(&agent.socket).then_some(()));
    let table = table_of(&agent);
    let listed = || {
        let out = net.exec(&net.server).args(["nft", "list", "table", "inet", &table]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rule = wait_for("the DNAT rules", Duration::from_secs(15), || Some(listed()).filter(|t| t.contains("dnat ip to 10.231.0.1:18080")));
    assert!(rule.contains("chain nat_pre") && rule.matches("dnat ip to").count() == 2, "both hooks: {rule}");

    // Another host asks through the listen address: the kernel forwards it.
    let out = net.exec(&net.client).args(["curl", "-sS", "--max-time", "10", "http://10.231.0.1:8080/"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend in its namespace\n", "{}", String::from_utf8_lossy(&out.stderr));
    let sur = agent.wait("the forwarded request counted", Duration::from_secs(10), |a| {
        a.vm("test").and_then(|v| v.surrogate).filter(|s| s.bytes > 0 && s.awake_paths[0].contains("; 1 connections"))
    });
    assert_eq!(sur.open_connections, 0, "the surrogate spliced nothing");
    drop(agent);
    let _ = httpd.kill();
    let _ = httpd.wait();
}
