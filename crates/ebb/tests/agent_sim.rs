//! The agent in-process over the sim backend (fast; the real-guest tests
//! prove the same against libvirt and QEMU): it converges into the pool,
//! survives the hypervisor going away mid-run, and notices domains coming
//! and going.

mod common;

use ebb_daemon::api_types::{Connection, Event, Status, VmInfo};
use ebb_daemon::client::{Client, ClientError};
use ebb_daemon::config::Config;
use ebb_daemon::clock::Clock;
use ebb_daemon::run::run_with_clock;
use ebb_backends::sim::{SimHypervisor, SimVm};
use ebb_core::{Bytes, VmId};
use std::time::{Duration, Instant};

struct World {
    sim: SimHypervisor,
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    agent: Option<tokio::task::JoinHandle<Result<(), ebb_daemon::run::StartError>>>,
    _dir: tempfile::TempDir,
}

async fn start(sim: SimHypervisor, memory: &str) -> World {
    start_with(sim, memory, "").await
}

async fn start_with(sim: SimHypervisor, memory: &str, vms: &str) -> World {
    start_on(sim, memory, vms, Pace { tick: "100ms", sim_step: Duration::from_millis(20) }, Clock::System).await
}

/// How fast the agent ticks, and the step of the task that moves the sim's
/// clock along with tokio's.
struct Pace {
    tick: &'static str,
    sim_step: Duration,
}

async fn start_on(sim: SimHypervisor, memory: &str, vms: &str, pace: Pace, clock: Clock) -> World {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ebb.sock");
    let text = format!(
        "[agent]\nuri = \"sim\"\ntick = \"{}\"\nfast_tick = \"50ms\"\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\n{memory}\n{vms}\n",
        pace.tick,
        socket.display(),
        dir.path().join("journal.db").display()
    );
    let cfg = Config::parse(&text).unwrap();
    let handle = sim.clone();
    let connect: ebb_daemon::agent::Connector = Box::new(move |_| handle.connect().map(|h| Box::new(h) as _));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with_clock(cfg, connect, clock, async {
        let _ = stopped.await;
    }));
    // The sim's balloons move only when its clock advances: follow tokio's.
    let sim_clock = sim.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(pace.sim_step).await;
            sim_clock.advance(pace.sim_step.as_millis() as u64);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    World { sim, client: Client::new(&socket), stop: Some(stop), agent: Some(agent), _dir: dir }
}

impl World {
    async fn until<T>(&self, what: &str, mut f: impl FnMut(&[VmInfo], &Status) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let vms: Vec<VmInfo> = self.client.get("/v1/vms").await.unwrap();
            let status: Status = self.client.get("/v1/status").await.unwrap();
            if let Some(v) = f(&vms, &status) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; vms: {vms:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self) -> Vec<Event> {
        self.client.get("/v1/events?limit=1000").await.unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.agent.take().unwrap().await.unwrap().unwrap();
    }
}

fn converged(vms: &[VmInfo]) -> bool {
    vms.iter().all(|v| v.memory.skipped.is_some() || v.memory.target == v.memory.actual)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_into_the_pool_and_survives_libvirt_going_away() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    for (name, used) in [("a", 100), ("b", 100), ("c", 300)] {
        sim.add_vm(SimVm { used: Bytes::from_mib(used), ..SimVm::new(name, Bytes::from_mib(1024)) });
    }
    sim.add_vm(SimVm { has_balloon: false, ..SimVm::new("no-balloon", Bytes::from_mib(512)) });
    let w = start(sim, "pool = \"2GiB\"").await;
    let pool = Bytes::from_gib(2);
    w.until("convergence into the pool", |vms, st| {
        (st.pool == Some(pool) && st.pool_used <= pool && converged(vms) && st.actions_total > 0).then_some(())
    })
    .await;
    let vms: Vec<VmInfo> = w.client.get("/v1/vms").await.unwrap();
    let size = |n: &str| vms.iter().find(|v| v.name == n).unwrap().memory.actual.unwrap();
    assert!(size("c") > size("a"), "the busier guest keeps more: {} vs {}", size("c"), size("a"));
    let nb = vms.iter().find(|v| v.name == "no-balloon").unwrap();
    assert!(nb.memory.skipped.as_deref().unwrap_or("").contains("no balloon device"));

    // libvirt goes away: the agent shows it, keeps ticking, and reconnects.
    w.sim.set_reachable(false);
    w.until("disconnected", |_, st| matches!(st.connection, Connection::Disconnected { .. }).then_some(())).await;
    w.sim.set_reachable(true);
    w.until("reconnected", |_, st| matches!(st.connection, Connection::Connected { .. }).then_some(())).await;
    let kinds: Vec<String> = w.events().await.into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"disconnected".to_string()) && kinds.iter().filter(|k| *k == "connected").count() >= 2, "{kinds:?}");

    // A guest comes under pressure: it gets memory back from the idle ones.
    let before = size("a");
    w.sim.set_used(&VmId::new("a"), before - Bytes::from_mib(10));
    w.until("give-back to a", |vms, _| {
        let a = vms.iter().find(|v| v.name == "a")?;
        (a.memory.actual? > before + Bytes::from_mib(32)).then_some(())
    })
    .await;

    // Domains come and go.
    w.sim.remove_vm(&VmId::new("b"));
    w.sim.add_vm(SimVm::new("d", Bytes::from_mib(512)));
    w.until("d appears and b goes", |vms, _| {
        (vms.iter().any(|v| v.name == "d") && !vms.iter().any(|v| v.name == "b")).then_some(())
    })
    .await;
    let events = w.events().await;
    assert!(events.iter().any(|e| e.kind == "vm_gone" && e.vm.as_deref() == Some("b")));
    assert!(events.iter().any(|e| e.kind == "vm_appeared" && e.vm.as_deref() == Some("d")));
    let actions: Vec<&Event> = events.iter().filter(|e| e.kind == "set_balloon_target").collect();
    assert!(actions.iter().all(|e| e.outcome.as_deref() == Some("ok") && e.rule.is_some() && !e.text.is_empty()));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_journaled_and_the_agent_goes_on() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.add_vm(SimVm { used: Bytes::from_mib(64), ..SimVm::new("a", Bytes::from_mib(1024)) });
    sim.add_vm(SimVm { used: Bytes::from_mib(64), ..SimVm::new("b", Bytes::from_mib(1024)) });
    sim.set_refuses_memory(&VmId::new("a"), true);
    let w = start(sim, "pool = \"1GiB\"").await;
    let failures = w.until("failed actions", |_, st| (st.action_failures_total >= 2).then_some(st.action_failures_total)).await;
    let events = w.events().await;
    let failed: Vec<&Event> = events.iter().filter(|e| e.failed).collect();
    assert!(!failed.is_empty() && failed.iter().all(|e| e.vm.as_deref() == Some("a")), "{failed:?}");
    assert!(failed[0].outcome.as_deref().unwrap().contains("refuse"), "{:?}", failed[0]);
    // The other guest is still managed, and the agent still ticks.
    let ticks = w.until("more ticks", |_, st| Some(st.ticks)).await;
    w.until("ticking on", |vms, st| {
        let b = vms.iter().find(|v| v.name == "b")?;
        (st.ticks > ticks + 3 && b.memory.skipped.is_none()).then_some(())
    })
    .await;
    // Failures back off (the step is divided) rather than hammering libvirt every tick.
    let st: Status = w.client.get("/v1/status").await.unwrap();
    assert!(st.action_failures_total < st.ticks, "{} failures in {} ticks ({failures} at first)", st.action_failures_total, st.ticks);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_vms_sleep_wake_on_request_and_failures_keep_them_running() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.set_restore_delay(0);
    for name in ["idle", "busy", "transient", "full-disk"] {
        sim.add_vm(SimVm::new(name, Bytes::from_mib(512)));
    }
    sim.set_cpu_load(&VmId::new("busy"), 0.8);
    sim.set_persistent(&VmId::new("transient"), false);
    sim.set_fail_save(&VmId::new("full-disk"), Some("No space left on device"));
    let sleep = "[vm.idle.sleep]\nidle_after = \"1s\"\n[vm.busy.sleep]\nidle_after = \"1s\"\n\
                 [vm.transient.sleep]\nidle_after = \"1s\"\n[vm.full-disk.sleep]\nidle_after = \"1s\"\n";
    let w = start_with(sim, "enabled = false", sleep).await;
    let vms = w
        .until("the idle VM asleep", |vms, _| {
            let v = vms.iter().find(|v| v.name == "idle")?;
            v.sleeping.as_ref().map(|_| vms.to_vec())
        })
        .await;
    let find = |n: &str| vms.iter().find(|v| v.name == n).unwrap().clone();
    assert!(w.sim.status(&VmId::new("idle")).unwrap().managed_save, "saved to disk");
    assert!(find("busy").sleeping.is_none());
    assert!(find("busy").idle.as_ref().unwrap().active_reason.is_some());
    let t = find("transient");
    assert!(t.sleeping.is_none());
    assert!(t.idle.as_ref().unwrap().skipped.as_deref().unwrap_or("").contains("transient"), "{:?}", t.idle);

    // The failed save is journaled and the VM keeps running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = w.events().await;
        if let Some(e) = events.iter().find(|e| e.vm.as_deref() == Some("full-disk") && e.kind == "sleep") {
            assert!(e.outcome.as_deref().unwrap().contains("No space left"), "{e:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed save journaled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.sim.status(&VmId::new("full-disk")).unwrap().vm.state, ebb_core::VmState::Running);

    // Wake through the API: it runs again and is no longer held asleep.
    let done: ebb_daemon::api_types::Done = w.client.post("/v1/vms/idle/wake").await.unwrap();
    assert_eq!(done.done, "done");
    w.until("idle awake", |vms, _| vms.iter().find(|v| v.name == "idle" && v.sleeping.is_none() && v.state == ebb_core::VmState::Running).map(|_| ())).await;
    // Waking a VM that is not asleep is refused with a reason and the
    // status that says so; so is a VM that does not exist.
    let err = w.client.wake("busy").await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 409, message } if message.contains("not asleep")), "{err:?}");
    let err = w.client.wake("nobody").await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 404, message } if message == "no VM named nobody on this host"), "{err:?}");
    let err = w.client.post::<ebb_daemon::api_types::Done>("/v1/vms/busy/critical/maybe").await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 400, .. }), "{err:?}");
    // Sleep on request, even when not idle; the status counts both.
    w.client.post::<ebb_daemon::api_types::Done>("/v1/vms/busy/sleep").await.unwrap();
    let st: Status = w.client.get("/v1/status").await.unwrap();
    assert!(st.sleeps_total >= 2 && st.wakes_total >= 1, "{st:?}");
    let vms: Vec<VmInfo> = w.client.get("/v1/vms").await.unwrap();
    assert!(vms.iter().find(|v| v.name == "busy").unwrap().sleeping.is_some(), "shown asleep at once");
    w.stop().await;
}

fn limited(vm: SimVm, out_kib: u64) -> SimVm {
    let outbound = ebb_core::Bandwidth { average: out_kib, peak: 0, burst: 0 };
    let tune = ebb_core::Tune { net: Some(ebb_core::NetLimit { outbound, ..Default::default() }), ..vm.tune };
    SimVm { tune, net_load: Bytes::from_mib(4), ..vm }
}

fn out_limit(sim: &SimHypervisor, vm: &str) -> u64 {
    sim.status(&VmId::new(vm)).unwrap().vm.tune.net.unwrap().outbound.average
}

/// The raise, end to end through the agent (this host's kernel cannot
/// enforce a limit, so the real-guest test cannot show it): a VM sending at
/// its 64 KiB/s limit gets net_max, and its own limit back when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_at_its_bandwidth_limit_is_raised_to_net_max_and_restored() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.add_vm(limited(SimVm::new("web", Bytes::from_mib(1024)), 64));
    let w = start_with(sim, "enabled = false", "[realloc]\nclass_after = \"300ms\"\n[vm.web.realloc]\nnet_max = \"1MiB\"\n").await;
    w.until("the limit raised", |_, _| (out_limit(&w.sim, "web") == 1024).then_some(())).await;
    let vms: Vec<VmInfo> = w.client.get("/v1/vms").await.unwrap();
    let r = vms[0].realloc.as_ref().unwrap();
    assert!(r.net_why.as_ref().unwrap().to_string().contains("higher limit"), "{r:?}");
    w.sim.set_net_load(&VmId::new("web"), Bytes::ZERO);
    w.until("its own limit back", |_, _| (out_limit(&w.sim, "web") == 64).then_some(())).await;
    let sets = w.events().await.into_iter().filter(|e| e.kind == "set_tune" && e.outcome.as_deref() == Some("ok")).count();
    assert_eq!(sets, 2, "raised once, restored once");
    w.stop().await;
}

/// A host that refuses limits: one refusal, journaled with libvirt's words,
/// then the limit is left alone (no retry loop) and the view says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bandwidth_change_is_journaled_once_and_explained() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.add_vm(limited(SimVm::new("web", Bytes::from_mib(1024)), 64));
    sim.set_refuse_bandwidth(&VmId::new("web"), Some("Failed to load TC action module"));
    let w = start_with(sim, "enabled = false", "[realloc]\nclass_after = \"300ms\"\n[vm.web.realloc]\nnet_max = \"1MiB\"\n").await;
    let why = w
        .until("the refusal explained", |vms, _| {
            let why = vms.first()?.realloc.as_ref()?.net_why.as_ref()?.to_string();
            why.contains("refused").then_some(why)
        })
        .await;
    assert!(why.contains("TC action module") && why.contains("10 minutes"), "{why}");
    let ticks = w.until("ticks", |_, st| Some(st.ticks)).await;
    w.until("ticking on", |_, st| (st.ticks > ticks + 10).then_some(())).await;
    let failed: Vec<Event> =
        w.events().await.into_iter().filter(|e| e.failed).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].outcome.as_deref().unwrap().contains("could not set the network bandwidth of web"), "{failed:?}");
    assert_eq!(out_limit(&w.sim, "web"), 64);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_restores_what_sleeps_and_never_boots_a_vm_shut_off_by_hand() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.add_vm(SimVm::new("off", Bytes::from_mib(512)));
    sim.set_state(&VmId::new("off"), ebb_core::VmState::ShutOff);
    let w = start(sim, "enabled = false").await;
    w.until("the VM seen shut off", |vms, _| vms.iter().find(|v| v.name == "off" && v.state == ebb_core::VmState::ShutOff).map(|_| ())).await;
    let e = w.client.wake("off").await.unwrap_err();
    assert!(matches!(&e, ClientError::Api { status: 409, message } if message.contains("shut off with no saved state")), "{e:?}");
    assert_eq!(w.sim.status(&VmId::new("off")).unwrap().vm.state, ebb_core::VmState::ShutOff, "booted");
    w.stop().await;
}

/// The agent on tokio's paused clock (its clock injected): an hour of
/// idleness passes in a moment of real time, and the idle VM sleeps at the
/// hour, not before; the busy one never does.
#[tokio::test(start_paused = true)]
async fn on_paused_time_an_idle_vm_sleeps_at_its_hour_and_not_before() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.set_restore_delay(0);
    for name in ["idle", "busy"] {
        sim.add_vm(SimVm::new(name, Bytes::from_mib(512)));
    }
    sim.set_cpu_load(&VmId::new("busy"), 0.8);
    let sleep = "[vm.idle.sleep]\nidle_after = \"1h\"\n[vm.busy.sleep]\nidle_after = \"1h\"\n";
    let start = Clock::System.now();
    let pace = Pace { tick: "10s", sim_step: Duration::from_secs(1) };
    let w = start_on(sim, "enabled = false", sleep, pace, Clock::tokio_from(start)).await;
    let t0 = tokio::time::Instant::now();
    let asleep = |vms: &[VmInfo], name: &str| vms.iter().any(|v| v.name == name && v.sleeping.is_some());
    tokio::time::sleep(Duration::from_secs(59 * 60)).await;
    let vms = w.client.vms().await.unwrap();
    assert!(!asleep(&vms, "idle") && !asleep(&vms, "busy"), "asleep before its hour: {vms:#?}");
    let real = Instant::now();
    loop {
        let vms = w.client.vms().await.unwrap();
        if asleep(&vms, "idle") {
            assert!(!asleep(&vms, "busy"), "the busy VM slept");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(62 * 60), "not asleep 2 min past its hour: {vms:#?}");
        assert!(real.elapsed() < Duration::from_secs(30), "paused time did not advance");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let slept = w.events().await.into_iter().find(|e| e.kind == "sleep" && e.vm.as_deref() == Some("idle")).expect("the sleep journaled");
    assert!(slept.at.since(start) >= 3_600_000, "journaled at {} ms after the start, on the agent's clock", slept.at.since(start));
    w.stop().await;
}

/// Every per-VM setting resolves the same way, the domain's metadata
/// included: a value and a reallocation bound from `<power>` and
/// `<realloc>` are used, shown with their source, and the config wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_and_realloc_settings_come_from_metadata_with_their_source() {
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    for name in ["meta", "both"] {
        sim.add_vm(SimVm::new(name, Bytes::from_mib(512)));
        let xml = r#"<ebb:vm xmlns:ebb="https://ebb.dev/xmlns/vm/1"><ebb:power value="7"/><ebb:realloc enabled="no"/></ebb:vm>"#;
        sim.set_metadata(&VmId::new(name), Some(xml.into()));
    }
    let w = start_with(sim, "enabled = false", "[vm.both]\nvalue = 3\n").await;
    let vms = w
        .until("the metadata read", |vms, _| {
            (vms.len() == 2 && vms.iter().all(|v| v.sources.value != ebb_daemon::api_types::Source::Default)).then(|| vms.to_vec())
        })
        .await;
    let find = |n: &str| vms.iter().find(|v| v.name == n).unwrap().clone();
    use ebb_daemon::api_types::Source;
    assert_eq!((find("meta").sources.value, find("meta").sources.realloc), (Source::Metadata, Source::Metadata));
    assert_eq!((find("both").sources.value, find("both").sources.realloc), (Source::Config, Source::Metadata));
    // The value is the plan's, and clearing `ebb value` goes back to where it came from.
    w.client.value("meta", Some(9)).await.unwrap();
    let done = w.client.value("meta", None).await.unwrap().done;
    assert!(done.contains("back to the metadata's 7"), "{done}");
    let done = w.client.value("both", None).await.unwrap().done;
    assert!(done.contains("back to the config's 3"), "{done}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_the_pool_shrinks_reaches_the_status() {
    let sim = SimHypervisor::new(Bytes::from_gib(8));
    sim.add_vm(SimVm { used: Bytes::from_mib(200), ..SimVm::new("a", Bytes::from_gib(1)) });
    let w = start(sim, "").await;
    w.until("the pool set", |_, st| (st.pool.is_some() && st.pool_note.is_none()).then_some(())).await;
    // Something else on the host takes memory: it is short of its reserve.
    w.sim.set_host_used(Bytes::from_mib(7800));
    let note = w.until("the note", |_, st| st.pool_note.clone()).await;
    assert!(note.contains("reserve"), "{note}");
    w.stop().await;
}

/// A client agent's heartbeats through the API (seed 002): its client
/// counts on the host while its TTL runs, bad input is refused with a 400
/// that says why, an unknown VM with a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_its_client_active_for_its_ttl_and_bad_ones_are_refused() {
    use ebb_daemon::api_types::Heartbeat;
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    sim.add_vm(SimVm::new("web", Bytes::from_mib(512)));
    let w = start_with(sim, "enabled = false", "[clients]\nheartbeat_max_ttl = \"10m\"\n").await;
    w.until("web seen", |vms, _| vms.iter().any(|v| v.name == "web").then_some(())).await;

    let beat = |ttl: Option<&str>| Heartbeat { vm: "web".into(), ttl: ttl.map(|t| ebb_core::human::Span::parse(t).unwrap()) };
    let c = w.client.heartbeat("kiosk-1", &beat(Some("4s"))).await.unwrap();
    assert_eq!((c.id.as_str(), c.kind, c.vm.as_str(), c.ttl_ms, c.open), ("kiosk-1", ebb_core::clients::ClientKind::Heartbeat, "web", 4000, 0));
    let listed = w.client.clients().await.unwrap();
    assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["kiosk-1"]);
    assert_eq!(w.client.status().await.unwrap().active_clients, 1);
    assert!(w.client.metrics().await.unwrap().contains("ebb_active_clients 1\n"));
    // Without a TTL, the config's default (60 s).
    assert_eq!(w.client.heartbeat("kiosk-2", &beat(None)).await.unwrap().ttl_ms, 60_000);
    w.until("two clients", |_, st| (st.active_clients == 2).then_some(())).await;

    let refused = |e: ClientError| match e {
        ClientError::Api { status, message } => (status, message),
        e => panic!("{e:?}"),
    };
    let (code, msg) = refused(w.client.heartbeat("kiosk-1", &beat(Some("1h"))).await.unwrap_err());
    assert!(code == 400 && msg.contains("clients.heartbeat_max_ttl = 10m"), "{code} {msg}");
    let (code, msg) = refused(w.client.post_json::<serde_json::Value>("/v1/clients/k/heartbeat", &serde_json::json!({"vm": "web", "tll": 5})).await.unwrap_err());
    assert!(code == 400 && msg.contains("a heartbeat's body is JSON like") && msg.contains("unknown field `tll`"), "{code} {msg}");
    let (code, msg) = refused(w.client.post_json::<serde_json::Value>("/v1/clients/k/heartbeat", &serde_json::json!({"vm": "web", "ttl": "soon"})).await.unwrap_err());
    assert!(code == 400 && msg.contains("\"soon\" is not a duration"), "{code} {msg}");
    let (code, msg) = refused(w.client.heartbeat("a b", &beat(None)).await.unwrap_err());
    assert!(code == 400 && msg.contains("spaces"), "{code} {msg}");
    let (code, msg) = refused(w.client.heartbeat("a/b", &beat(None)).await.unwrap_err());
    assert!(code == 400 && msg.contains("slash"), "{code} {msg}");
    let (code, msg) = refused(w.client.heartbeat("k", &Heartbeat { vm: "nope".into(), ttl: None }).await.unwrap_err());
    assert!(code == 404 && msg.contains("no VM named nope"), "{code} {msg}");

    // kiosk-1's 4 s run out; kiosk-2's minute has not.
    w.until("kiosk-1 expired", |_, st| (st.active_clients == 1).then_some(())).await;
    let listed = w.client.clients().await.unwrap();
    assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["kiosk-2"]);
    w.stop().await;
}

/// The Grafana dashboard shipped in contrib/grafana queries only metrics
/// the agent serves: each name in its expressions is in /metrics of an
/// agent with guests and a power source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_the_agent_serves() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../../contrib/grafana/ebb.json")).expect("the dashboard is JSON");
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| match v {
                serde_json::Value::String(s) if k == "expr" || k == "query" => out.push(s.clone()),
                _ => exprs(v, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let mut names: Vec<String> = queries
        .iter()
        .flat_map(|q| q.match_indices("ebb_").map(move |(i, _)| q[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>()))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");

    let sys = tempfile::tempdir().unwrap();
    let ac = sys.path().join("class/power_supply/AC");
    std::fs::create_dir_all(&ac).unwrap();
    std::fs::write(ac.join("type"), "Mains\n").unwrap();
    std::fs::write(ac.join("online"), "1\n").unwrap();
    let sim = SimHypervisor::new(Bytes::from_gib(16));
    for (name, used) in [("a", 100), ("b", 300)] {
        sim.add_vm(SimVm { used: Bytes::from_mib(used), ..SimVm::new(name, Bytes::from_mib(1024)) });
    }
    let power = format!("[power]\nsysfs = \"{}\"\nidle_watts = 80.0\nmax_watts = 200.0\n", sys.path().display());
    let w = start_with(sim, "pool = \"2GiB\"", &power).await;
    w.until("the guests' memory read", |vms, st| (st.power.is_some() && vms.iter().all(|v| v.memory.used.is_some())).then_some(())).await;
    let served = |m: &str, name: &str| m.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = w.client.metrics().await.unwrap();
        let missing: Vec<&String> = names.iter().filter(|n| !served(&metrics, n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard queries metrics the agent does not serve: {missing:?}\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.stop().await;
}

/// One HTTP/1.1 exchange on loopback: the status and the body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_with(port, method, path, token, "")
}

/// `http` with more header lines (each ending in \r\n).
fn http_with(port: u16, method: &str, path: &str, token: Option<&str>, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}{headers}content-length: 0\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_serves_the_api_behind_its_tokens_and_streams_the_agent() {
    use common::{READ_TOKEN as READ, WRITE_TOKEN as WRITE};
    let tokens = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let sim = SimHypervisor::new(Bytes::from_gib(8));
    sim.add_vm(SimVm { used: Bytes::from_mib(200), ..SimVm::new("web", Bytes::from_mib(1024)) });
    let web = common::web_section(tokens.path(), port);
    let w = start_with(sim, "pool = \"2GiB\"", &web).await;
    w.until("a target", |vms, _| vms.first()?.memory.target.map(|_| ())).await;
    let port_ = port;
    let (page, no_token, wrong, vms, act_read, act_write, cross_site, stream) = tokio::task::spawn_blocking(move || {
        let port = port_;
        (
            http(port, "GET", "/", None),
            http(port, "GET", "/v1/vms", None),
            http(port, "GET", "/v1/vms", Some(&format!("{READ}X"))),
            http(port, "GET", "/v1/vms", Some(READ)),
            http(port, "POST", "/v1/vms/web/critical/on", Some(READ)),
            http(port, "POST", "/v1/vms/web/critical/on", Some(WRITE)),
            http_with(port, "POST", "/v1/vms/web/critical/off", Some(WRITE), "origin: https://evil.example\r\n"),
            first_stream_events(port, READ),
        )
    })
    .await
    .unwrap();
    // The page loads without a token (it holds nothing of the host) and
    // asks for one; everything else needs it.
    assert_eq!(page.0, 200);
    assert!(page.1.contains("<script src=\"ebb.js\">"), "{}", page.1);
    assert_eq!(no_token.0, 401, "{no_token:?}");
    assert!(no_token.1.contains("not accepted"), "{no_token:?}");
    assert_eq!(wrong.0, 401, "{wrong:?}");
    assert_eq!(vms.0, 200, "{vms:?}");
    let served: Vec<VmInfo> = serde_json::from_str(&vms.1).unwrap();
    assert_eq!(served[0].name, "web");
    assert_eq!(act_read.0, 403, "a read token may not act: {act_read:?}");
    assert!(act_read.1.contains("write token"), "{act_read:?}");
    assert_eq!(act_write.0, 200, "{act_write:?}");
    assert_eq!(cross_site.0, 403, "another site's page may not act, even with the token: {cross_site:?}");
    assert!(w.events().await.iter().any(|e| e.kind == "critical" && e.vm.as_deref() == Some("web")), "the write token's action was carried out");
    // The stream says what the token may do, then the hour so far, the
    // agent's snapshot (the API's own type) and the journal.
    let names: Vec<&str> = stream.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..4], ["hello", "history", "snapshot", "events"], "{names:?}");
    assert_eq!(stream[0].1["write"], false);
    let snap: ebb_daemon::api_types::Snapshot = serde_json::from_value(stream[2].1.clone()).unwrap();
    assert_eq!(snap.vms[0].name, "web");
    assert!(stream[3].1.as_array().is_some_and(|e| !e.is_empty()), "the journal's entries: {:?}", stream[3].1);
    w.stop().await;
}

/// The stream's first four events, by name with their data.
fn first_stream_events(port: u16, token: &str) -> Vec<(String, serde_json::Value)> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v1/stream?token={token} HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
    let mut events = vec![];
    let mut name = String::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((name.clone(), serde_json::from_str(data).unwrap()));
            if events.len() == 4 {
                break;
            }
        }
    }
    events
}
