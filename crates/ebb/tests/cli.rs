//! The binary end to end without real guests: config errors stop startup
//! with a clear message; a libvirt URI that does not answer leaves the agent
//! running and says why in `ebb status`; libvirt's test driver is observed
//! through the API, the CLI and /metrics.

mod common;
use common::*;
use ebb::api_types::Connection;
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
    assert_eq!(vm.sources.shares, ebb::api_types::Source::Config);
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
    // The package burns 1 J every 10 ms: about 100 W.
    let started = std::time::Instant::now();
    let power = wait_for("a measured draw", Duration::from_secs(20), || {
        let uj = started.elapsed().as_micros() as u64 * 100;
        std::fs::write(rapl.join("energy_uj"), format!("{uj}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        agent.status().power.filter(|p| p.measured.as_ref().is_some_and(|m| m.watts.0 > 50.0))
    });
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
