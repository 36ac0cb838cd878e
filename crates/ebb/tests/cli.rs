//! The binary end to end without real guests: config errors stop startup
//! with a clear message; a libvirt URI that does not answer leaves the agent
//! running and says why in `ebb status`; libvirt's test driver is observed
//! through the API, the CLI and /metrics.

mod common;
use common::*;
use ebb_daemon::api_types::Connection;
use std::time::Duration;

fn run_with_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ebb.toml");
    std::fs::write(&path, text).unwrap();
    let out = ebb(&["run", "--config", path.to_str().unwrap()]);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn config_errors_stop_startup_with_the_field_and_line() {
    let (ok, err) = run_with_config("[memory]\npool = \"1GiB\"\nballoon_speed = 3\n");
    assert!(!ok);
    assert!(err.contains("balloon_speed") && err.contains("line 3"), "{err}");

    let (ok, err) = run_with_config("[memory]\npool = \"0\"\n");
    assert!(!ok);
    assert!(err.contains("zero"), "{err}");

    let (ok, err) = run_with_config("[vm.db]\nmin = \"2GiB\"\nmax = \"1GiB\"\n");
    assert!(!ok);
    assert!(err.contains("vm.db.min (2 GiB) is above vm.db.max (1 GiB)"), "{err}");

    let (ok, err) = run_with_config("[memory]\npool = \"1GiB\"\n[vm.a]\nmin = \"1GiB\"\n[vm.b]\nmin = \"100MiB\"\n");
    assert!(!ok);
    assert!(err.contains("by 100 MiB"), "{err}");

    let (ok, err) = run_with_config("[vm.web.realloc]\ncpus = \"3-1\"\n");
    assert!(!ok);
    assert!(err.contains("line 2") && err.contains("the range 3-1 runs backwards"), "{err}");

    let (ok, err) = run_with_config("[realloc]\naffinity_free = 0.8\n");
    assert!(!ok);
    assert!(err.contains("realloc.affinity_free (0.8) must be below realloc.affinity_busy"), "{err}");

    let out = ebb(&["run", "--config", "/nonexistent/ebb.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent/ebb.toml"));
}

#[test]
fn cli_without_an_agent_says_so() {
    let out = ebb(&["--socket", "/nonexistent/ebb.sock", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ebb agent answers at /nonexistent/ebb.sock"), "{err}");
}

#[test]
fn unreachable_libvirt_keeps_the_agent_running_and_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"qemu+tcp://127.0.0.1:1/system\"\ntick = \"200ms\"", "");
    let status = wait_for("a failed connection attempt", Duration::from_secs(10), || {
        let s = agent.status();
        match &s.connection {
            Connection::Disconnected { attempts, .. } if *attempts >= 1 => Some(s),
            _ => None,
        }
    });
    let Connection::Disconnected { error, .. } = &status.connection else { unreachable!() };
    assert!(error.contains("qemu+tcp://127.0.0.1:1/system is not reachable"), "{error}");
    let text = agent.text(&["status"]);
    assert!(text.contains("DISCONNECTED"), "{text}");
    // Still alive, still retrying.
    std::thread::sleep(Duration::from_millis(1500));
    let later = agent.status();
    assert!(later.ticks > status.ticks);
    let events = agent.events(None);
    assert_eq!(events.iter().filter(|e| e.kind == "connect_failed").count(), 1, "one entry, not one per retry");
}

#[test]
fn test_driver_is_observed_through_api_cli_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", "[vm.test]\nshares = 3000\n");
    let vm = wait_for("the test domain", Duration::from_secs(10), || agent.vm("test"));
    assert_eq!(vm.settings.shares, 3000);
    assert_eq!(vm.sources.shares, ebb_daemon::api_types::Source::Config);
    // The test driver's domain sends no guest statistics: skipped, with the reason.
    let why = vm.memory.skipped.clone().unwrap_or_default();
    assert!(why.contains("statistics") || why.contains("balloon"), "{why}");
    let table = agent.text(&["vms"]);
    assert!(table.contains("test") && table.contains("3000 (config)"), "{table}");
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains("ebb_connected 1"), "{metrics}");
    assert!(metrics.contains("ebb_vm_managed{vm=\"test\"} 0"), "{metrics}");
    let explain = agent.text(&["explain", "test"]);
    assert!(explain.contains("does not manage its memory"), "{explain}");
    let out = agent.cli(&["explain", "no-such-vm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("knows nothing about a VM named no-such-vm"));
    // A second agent on the same socket is refused.
    let out = ebb(&["run", "--config", agent.config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ebb is already serving"));
}

#[test]
fn a_service_whose_address_is_taken_stops_startup_with_its_name() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[agent]\nuri = \"test:///default\"\nsocket = \"{}\"\njournal = \"{}\"\n\
         [[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{port}\"\nbackend = \"127.0.0.1:9\"\n",
        dir.path().join("s.sock").display(),
        dir.path().join("j.db").display()
    );
    let (ok, err) = run_with_config(&cfg);
    assert!(!ok);
    assert!(err.contains("web") && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let (ok, err) = run_with_config(
        "[[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\nbackend = \"127.0.0.1:9\"\nhttp = true\n\
         [[vm.test.service.canned]]\nmethod = \"GET\"\npath = \"/healthz\"\nstatus = 99\n",
    );
    assert!(!ok);
    assert!(err.contains("vm.test.service") && err.contains("99"), "{err}");
}

#[test]
fn a_backend_that_never_answers_refuses_the_client_at_once_and_counts_it() {
    use std::io::{Read, Write};
    // A port nothing listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        "uri = \"test:///default\"\ntick = \"200ms\"",
        &format!("[[vm.test.service]]\nname = \"web\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{dead}\"\nhttp = true\n"),
    );
    wait_for("the test domain", Duration::from_secs(10), || agent.vm("test").filter(|v| v.surrogate.is_some()));
    // The VM runs, so the client is spliced to its backend, which refuses:
    // the client is told at once (a 503 saying so), not left waiting.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let started = std::time::Instant::now();
    let mut text = String::new();
    let r = s.read_to_string(&mut text);
    assert!(r.is_ok() && started.elapsed() < Duration::from_secs(4), "{r:?}");
    assert!(text.starts_with("HTTP/1.1 503") && text.contains("refused the connection"), "{text}");
    let sur = wait_for("the refusal counted", Duration::from_secs(10), || {
        agent.vm("test").and_then(|v| v.surrogate).filter(|s| s.refused >= 1)
    });
    assert_eq!(sur.refused, 1);
    assert!(agent.events(Some("test")).iter().any(|e| e.kind == "refused" && e.text.contains(&dead.to_string())));
}

#[test]
fn the_power_model_and_rapl_are_shown_side_by_side_and_a_vm_without_a_value_counts_as_one() {
    let dir = tempfile::tempdir().unwrap();
    // A host tree the test builds: mains online, one RAPL package.
    let sys = dir.path().join("sys");
    let ac = sys.join("class/power_supply/AC");
    let rapl = sys.join("class/powercap/intel-rapl:0");
    std::fs::create_dir_all(&ac).unwrap();
    std::fs::create_dir_all(&rapl).unwrap();
    std::fs::write(ac.join("type"), "Mains\n").unwrap();
    std::fs::write(ac.join("online"), "1\n").unwrap();
    std::fs::write(rapl.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::write(rapl.join("energy_uj"), "0\n").unwrap();
    let rest = format!("[power]\nsysfs = \"{}\"\nidle_watts = 80.0\nmax_watts = 200.0\nbudget = 150.0\n", sys.display());
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    // The package burns 1 J every 10 ms: about 100 W. A thread of its own
    // keeps the counter current (a stale one would skew the agent's rate on
    // a loaded machine, where each `ebb status` takes a while).
    let burning = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let counter = {
        let (burning, energy) = (burning.clone(), rapl.join("energy_uj"));
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while burning.load(std::sync::atomic::Ordering::Relaxed) {
                let uj = started.elapsed().as_micros() as u64 * 100;
                // Whole values only: a reader never sees a half-written one.
                let next = energy.with_extension("next");
                std::fs::write(&next, format!("{uj}\n")).unwrap();
                std::fs::rename(&next, &energy).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let power = wait_for("a measured draw", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(20));
        agent.status().power.filter(|p| p.measured.as_ref().is_some_and(|m| m.watts.0 > 50.0))
    });
    burning.store(false, std::sync::atomic::Ordering::Relaxed);
    counter.join().unwrap();
    let m = power.measured.unwrap();
    assert!(m.watts.0 < 200.0 && m.source.contains("RAPL"), "{m:?}");
    // The test driver's domain runs no CPU to speak of: the model says idle.
    assert!(power.model_draw.is_some_and(|w| (80.0..90.0).contains(&w.0)), "{:?}", power.model_draw);
    let text = agent.text(&["power"]);
    assert!(text.contains("on mains") && text.contains("draw (the power model") && text.contains("draw (measured, RAPL"), "{text}");
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains("ebb_power_measured_watts") && metrics.contains("ebb_power_model_watts"), "{metrics}");
    // The test domain has no value set: the plan counts it as 1 and says so.
    let plan = agent.text(&["plan"]);
    assert!(plan.contains("test") && plan.contains("1 (not set)") && plan.contains("keeps running"), "{plan}");
    // A counter that cannot be read is named, and the agent goes on.
    std::fs::write(rapl.join("energy_uj"), "garbage\n").unwrap();
    let power = wait_for("the failed measurement", Duration::from_secs(10), || agent.status().power.filter(|p| p.measured_error.is_some()));
    assert!(power.measured_error.unwrap().contains("energy_uj"));
    assert!(agent.text(&["power"]).contains("draw (measured): failed"));
}

/// A config for libvirt's test driver whose socket and journal live in
/// the scratch folder `DIR` (see `check_and_run`).
fn test_driver(agent: &str, rest: &str) -> String {
    format!("[agent]\nuri = \"test:///default\"\nsocket = \"DIR/ebb.sock\"\njournal = \"DIR/journal.db\"\n{agent}\n{rest}")
}

/// `ebb check` and `ebb run` on one config, with `DIR` in it standing for a
/// scratch folder: each one's exit code (None: still running after 10 s,
/// so it took the config) and stderr.
fn check_and_run(text: &str) -> [(Option<i32>, String); 2] {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ebb.toml");
    std::fs::write(&path, text.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let config = path.to_str().unwrap();
    let check = ebb(&["check", "--config", config]);
    let mut run = std::process::Command::new(EBB)
        .args(["run", "--config", config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while run.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = run.kill();
    let code = run.try_wait().unwrap().and_then(|s| s.code());
    let run = run.wait_with_output().unwrap();
    [
        (check.status.code(), String::from_utf8_lossy(&check.stderr).into_owned()),
        (code, String::from_utf8_lossy(&run.stderr).into_owned()),
    ]
}

/// Both refuse with exit code 2 (not a panic's 101) and say each needle.
fn both_refuse(text: &str, needles: &[&str]) {
    for (what, (code, err)) in ["check", "run"].into_iter().zip(check_and_run(text)) {
        assert_eq!(code, Some(2), "{what} on {text}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what} on {text}: {needle:?} missing from {err}");
        }
    }
}

#[test]
fn values_that_would_panic_spin_or_grow_without_bound_are_refused_by_check_and_run_alike() {
    let year = "is longer than a year";
    both_refuse(&test_driver("tick = inf", ""), &["line 5: agent.tick: inf", year]);
    both_refuse(&test_driver("tick = 1e300", ""), &["agent.tick", year]);
    both_refuse(&test_driver("", "[memory]\nstuck_after = \"99999999999999999999999h\"\n"), &["memory.stuck_after", year]);
    both_refuse(&test_driver("tick = \"0.000001ms\"", ""), &["line 5: agent.tick", "is shorter than a millisecond"]);
    both_refuse(&test_driver("fast_tick = \"1ms\"", ""), &["agent.fast_tick = 1ms"]);
    for cpus in ["0-4294967295", "0-99999999"] {
        both_refuse(&test_driver("", &format!("[vm.w.realloc]\ncpus = \"{cpus}\"\n")), &["vm.w.realloc.cpus", "CPU numbers stop at 8191"]);
    }
    both_refuse(&test_driver("", "[power]\nbudget = inf\n"), &["power.budget = inf is out of range"]);
    both_refuse(&test_driver("", "[power]\nidle_watts = inf\nmax_watts = inf\n"), &["power.idle_watts = inf"]);
    both_refuse(&test_driver("", "[power]\nmax_watts = inf\n"), &["power.max_watts = inf"]);
    both_refuse(&test_driver("", "[power]\nmodel_table = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, inf]\n"), &["power.model_table[10] = inf"]);
    both_refuse(&test_driver("", "[memory]\nmajor_fault_rate = inf\n"), &["memory.major_fault_rate = inf"]);
    both_refuse(&test_driver("", "[realloc]\nidle_cpu = -1.0\n"), &["realloc.idle_cpu = -1"]);
    both_refuse(&test_driver("", "[realloc]\nwait_contended = -5.0\n"), &["realloc.wait_contended = -5"]);
    both_refuse(&test_driver("", "[vm.w]\nmin = \"99999999999999999999TiB\"\n"), &["vm.w.min", "too large"]);
    both_refuse(&test_driver("", "[surrogate]\nmax_held_bytes = \"1000TiB\"\nmax_held_bytes_per_vm = \"1000TiB\"\n"), &["max_held_bytes_per_vm must be at most 4 GiB"]);
    both_refuse(&test_driver("", "[surrogate]\nreplay_in_flight = 9223372036854775807\n"), &["replay_in_flight must be at most 4096"]);
    both_refuse(&test_driver("", "[surrogate]\nqueue_depth = 0\n"), &["queue_depth must be at least 1"]);
    for field in ["boost", "yield_divisor"] {
        both_refuse(&test_driver("", &format!("[realloc]\n{field} = 4294967296\n")), &[&format!("realloc.{field} = 4294967296 is out of range")]);
    }
}

#[test]
fn check_and_run_agree_on_services_and_the_ups_address() {
    let svc = |name: &str, listen: &str, backend: &str| {
        format!("[[vm.test.service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nbackend = \"{backend}\"\n")
    };
    let p = ebb_lab::lab::free_port();
    let (a, b) = (ebb_lab::lab::free_port(), ebb_lab::lab::free_port());
    both_refuse(&test_driver("", &(svc("http", &format!("127.0.0.1:{a}"), "127.0.0.1:9") + &svc("http", &format!("127.0.0.1:{b}"), "127.0.0.1:9"))), &["two services named http"]);
    for (x, y) in [("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]"), ("[::]", "127.0.0.1")] {
        let rest = svc("any", &format!("{x}:{p}"), "127.0.0.1:9") + &svc("one", &format!("{y}:{p}"), "127.0.0.1:9");
        both_refuse(&test_driver("", &rest), &["vm.test.service one listens on", "where vm.test.service any listens already"]);
    }
    for (listen, backend) in [("0.0.0.0", "127.0.0.1"), ("[::]", "[::1]")] {
        both_refuse(&test_driver("", &svc("http", &format!("{listen}:{p}"), &format!("{backend}:{p}"))), &["vm.test.service: service http listens on", "would forward to itself"]);
    }
    let looped = format!(
        "{}[[vm.other.service]]\nname = \"b\"\nlisten = \"127.0.0.1:{b}\"\nbackend = \"127.0.0.1:{a}\"\n",
        svc("a", &format!("127.0.0.1:{a}"), &format!("127.0.0.1:{b}"))
    );
    both_refuse(&test_driver("", &looped), &["forwards to", "would forward to itself"]);
    both_refuse(&test_driver("", "[power]\nups = \"u@127.0.0.1:99999\"\n"), &["power.ups", "port must be a number from 1 to 65535"]);
    both_refuse(&test_driver("", "[power]\nups = \"u@[::1\"\n"), &["power.ups", "no closing ']'"]);
    // The other way round: DNS on one address over TCP and UDP is fine for both.
    let dns = svc("dns-tcp", &format!("127.0.0.1:{p}"), "127.0.0.1:9") + &svc("dns-udp", &format!("127.0.0.1:{p}"), "127.0.0.1:9") + "protocol = \"udp\"\n";
    let [(check, err), (run, log)] = check_and_run(&test_driver("", &(dns + "[power]\nups = \"u@[::1]:3493\"\n")));
    assert_eq!((check, run), (Some(0), None), "check: {err}\nrun: {log}");
}

/// What `ebb check` prints for `text` (a config whose `DIR` stands for a
/// scratch folder), asserting it took it.
fn check_output(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ebb.toml");
    std::fs::write(&path, text.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let out = ebb(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_says_whether_the_ups_reading_is_authenticated_and_refuses_a_ca_it_cannot_use() {
    let ups = "[power]\nups = \"u@127.0.0.1:3493\"\n";
    let out = check_output(&test_driver("", ups));
    assert!(out.contains("UPS reading: unauthenticated (plain TCP): whatever answers on 127.0.0.1:3493 can report low battery"), "{out}");
    assert!(out.contains("set power.ups_ca to read it over TLS"), "{out}");
    assert!(!check_output(&test_driver("", "")).contains("UPS reading"));
    let ca = ebb_lab::lab::TestCa::new().unwrap();
    let pem = ca.pem().display().to_string();
    let out = check_output(&test_driver("", &format!("{ups}ups_ca = \"{pem}\"\n")));
    assert!(out.contains(&format!("UPS reading: over TLS, upsd's certificate verified against {pem} for the name 127.0.0.1\n")), "{out}");
    let out = check_output(&test_driver("", &format!("{ups}ups_ca = \"{pem}\"\nups_tls_name = \"ups.example\"\n")));
    assert!(out.contains("for the name ups.example\n") && !out.contains("unauthenticated"), "{out}");
    both_refuse(&test_driver("", &format!("{ups}ups_ca = \"DIR/none.pem\"\n")), &["power.ups_ca = \"", "none.pem\" cannot be read"]);
    let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    both_refuse(&test_driver("", &format!("{ups}ups_ca = \"{not_pem}\"\n")), &[&format!("power.ups_ca = \"{not_pem}\" holds no certificate")]);
}

#[test]
fn the_api_socket_path_is_checked_and_its_group_resolved() {
    let with_socket = |socket: &str| format!("[agent]\nuri = \"test:///default\"\nsocket = \"{socket}\"\njournal = \"DIR/j.db\"\n");
    both_refuse(&with_socket(""), &["agent.socket is empty", "abstract socket"]);
    both_refuse(&with_socket(&format!("/tmp/{}.sock", "s".repeat(100))), &["agent.socket is 110 bytes long", "at most 107 bytes"]);
    for socket in ["DIR/j.db", "DIR/./x/../j.db", "DIR/j.db-wal", "DIR/j.db-shm"] {
        both_refuse(&with_socket(socket), &["is the journal's own file"]);
    }
    both_refuse(&test_driver("socket_group = \"no-such-group-ebb\"", ""), &["agent.socket_group = \"no-such-group-ebb\"", "no such group"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[agent]\nsocket_group = \"root\"\n").unwrap();
    let out = ebb(&["check", "--config", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(root and group root)"), "{out:?}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_field_and_what_it_takes() {
    let (ok, err) = run_with_config("[agent]\ntick = true\n");
    assert!(!ok);
    assert!(err.contains("line 2: agent.tick: invalid type: boolean `true`, expected a duration like \"2s\""), "{err}");
    let (ok, err) = run_with_config("[vm.w]\nmin = 1.5\n");
    assert!(!ok);
    assert!(err.contains("line 2: vm.w.min: invalid type: floating point `1.5`, expected a size like \"512MiB\""), "{err}");
}

#[test]
fn check_warns_about_managed_guests_whose_balloon_has_no_safety_net() {
    let dir = tempfile::tempdir().unwrap();
    let domain = |name: &str, balloon: &str| {
        // Its own metadata may say ebb leaves it alone, as `ebb run` reads it.
        let metadata = if name == "meta-alone" { "<metadata><ebb:vm xmlns:ebb='https://ebb.dev/xmlns/vm/1' managed='no'/></metadata>" } else { "" };
        format!(
            "<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>{metadata}\
             <os><type arch='x86_64'>hvm</type></os><devices>{balloon}</devices></domain>"
        )
    };
    let node = format!(
        "<node><cpu><mhz>2000</mhz><model>t</model><active>2</active><nodes>1</nodes><sockets>1</sockets><cores>2</cores>\
         <threads>1</threads></cpu><memory>4194304</memory>{}{}{}{}{}</node>",
        domain("stock", "<memballoon model='virtio'/>"),
        domain("meta-alone", "<memballoon model='virtio'/>"),
        domain("safe", "<memballoon model='virtio' autodeflate='on' freePageReporting='on'/>"),
        domain("left-alone", "<memballoon model='virtio'/>"),
        domain("none", "<memballoon model='none'/>"),
    );
    let node_path = dir.path().join("node.xml");
    std::fs::write(&node_path, node).unwrap();
    let config = |uri: &str| {
        format!("[agent]\nuri = \"{uri}\"\nsocket = \"DIR/ebb.sock\"\njournal = \"DIR/journal.db\"\n[vm.left-alone]\nmanaged = false\n")
    };
    let out = check_output(&config(&format!("test://{}", node_path.display())));
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{out}");
    assert!(warnings[0].starts_with("warning: stock: its balloon has neither deflate-on-OOM nor free page reporting"), "{out}");
    assert!(warnings[0].contains("autodeflate='on' freePageReporting='on'"), "{out}");
    // No libvirt to ask: the config is still fine, and the guests unchecked.
    let out = check_output(&config("qemu+unix:///system?socket=/nonexistent/ebb-test.sock"));
    assert!(out.contains("guests: not checked (") && !out.contains("warning:"), "{out}");
}

/// The subcommands `ebb --help` lists.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(ebb(&["--help"]).stdout).unwrap();
    let list = help.split("Commands:").nth(1).unwrap().split("Options:").next().unwrap();
    list.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| *w != "help").map(String::from).collect()
}

#[test]
fn completions_and_the_manual_page_cover_every_command() {
    let commands = subcommands();
    assert!(commands.len() >= 20 && commands.contains(&"completions".to_string()) && commands.contains(&"farm".to_string()), "{commands:?}");
    for shell in ["bash", "zsh", "fish"] {
        let out = ebb(&["completions", shell]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let missing: Vec<&String> = commands.iter().filter(|c| !text.contains(c.as_str())).collect();
        assert!(missing.is_empty(), "{shell} completions lack {missing:?}");
    }
    let bad = ebb(&["completions", "tcsh"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("possible values"));
    let man = String::from_utf8(ebb(&["man"]).stdout).unwrap();
    assert!(man.starts_with(".ie") && man.contains(".TH ebb 1"), "{}", &man[..man.len().min(200)]);
    // Each subcommand is named in the page (roff escapes its dashes).
    let missing: Vec<&String> = commands.iter().filter(|c| !man.contains(&format!("ebb\\-{c}"))).collect();
    assert!(missing.is_empty(), "the manual page lacks {missing:?}");
}

#[test]
fn events_follow_prints_each_new_entry_as_it_is_journaled() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", "");
    wait_for("the test domain", Duration::from_secs(10), || agent.vm("test"));
    let mut follow = std::process::Command::new(common::EBB)
        .arg("--socket")
        .arg(&agent.socket)
        .args(["events", "--follow", "--json", "--limit", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Its first answer (the last entry) printed, it follows what comes after:
    // an entry journaled before that answer would be in it, not followed.
    rx.recv_timeout(Duration::from_secs(10)).expect("the first answer within 10 s");
    let out = agent.cli(&["critical", "test", "on"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).expect("no new entry followed within 10 s");
        // The first answer is the last entry as an array; each new one is an object on a line.
        if let Ok(ev) = serde_json::from_str::<ebb_daemon::api_types::Event>(&line) {
            if ev.kind == "critical" {
                break ev;
            }
        }
    };
    assert_eq!(event.vm.as_deref(), Some("test"));
    let _ = follow.kill();
    let _ = follow.wait();
}

/// `ebb doctor` on a config (`DIR` in it a scratch folder): exit code, stdout, stderr.
fn doctor(text: &str) -> (Option<i32>, String, String) {
    doctor_with(text, |_| {})
}

/// As `doctor`, after `prepare` has made things in the scratch folder.
fn doctor_with(text: &str, prepare: impl FnOnce(&std::path::Path)) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    prepare(dir.path());
    let path = dir.path().join("ebb.toml");
    std::fs::write(&path, text.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let out = ebb(&["doctor", "--config", path.to_str().unwrap()]);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn doctor_says_what_blocks_a_configured_feature_and_fails_only_then() {
    // The test driver's domain sends no memory statistics: with memory
    // management on, that blocks it, and the line says what to set.
    let (code, out, err) = doctor(&test_driver("", ""));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("ok     libvirt at test:///default answers: 1 domains"), "{out}");
    assert!(out.contains("BLOCKS test: its guest reports no memory statistics: set <stats period='1'/>"), "{out}");
    assert!(out.contains("ok     agent.journal:") && out.contains("descriptors: the hard limit"), "{out}");
    assert!(err.contains("1 finding(s) above block"), "{err}");
    // Memory management off: nothing blocks, the command succeeds.
    let (code, out, _) = doctor(&test_driver("", "[memory]\nenabled = false\n"));
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("BLOCKS"), "{out}");
    // libvirt away, a UPS nobody serves, a journal folder that cannot be written: each named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "[agent]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\nsocket = \"DIR/ebb.sock\"\njournal = \"DIR/in-the-way/journal.db\"\n[power]\nups = \"ups@{closed}\"\ntimeout = \"1s\"\n"
    );
    let (code, out, _) = doctor_with(&text, |dir| std::fs::write(dir.join("in-the-way"), "").unwrap());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("BLOCKS libvirt at qemu+unix:///system?socket=/nonexistent/libvirt-sock is not reachable"), "{out}");
    assert!(out.contains(&format!("BLOCKS UPS ups@{closed} (power.ups): upsd at {closed} is not reachable")), "{out}");
    assert!(out.contains("BLOCKS agent.journal:") && out.contains("in-the-way is a file, not a folder"), "{out}");
}

#[test]
fn a_web_view_without_a_token_is_refused_and_one_on_a_path_that_is_no_socket_stops_the_agent() {
    both_refuse(&test_driver("", "[web]\nlisten = \"127.0.0.1:8740\"\n"), &["web.listen = \"127.0.0.1:8740\" is a TCP address, and a TCP listener needs a token"]);
    // `check` cannot know what will be at the path when `run` starts: `run` says it, and removes nothing.
    let [(check, _), (run, err)] = check_and_run(&test_driver("", "[web]\nlisten = \"DIR/ebb.toml\"\n"));
    assert_eq!(check, Some(0));
    assert_eq!(run, Some(2), "{err}");
    assert!(err.contains("web.listen") && err.contains("ebb.toml exists and is a regular file, not a socket"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ebb.toml");
    std::fs::write(&path, test_driver("", "[web]\nlisten = \"/run/ebb/web.sock\"\n").replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let out = ebb(&["check", "--config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web view: on the unix socket /run/ebb/web.sock (no tokens: the socket's mode decides (root only), and it answers only to localhost)"), "{text}");
}
