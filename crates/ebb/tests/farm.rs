//! The farm's foundation with the real binary and a real etcd on loopback
//! (each test starts its own): agents join and leave (cleanly, or by dying
//! and their lease expiring), keep ticking while etcd is away, and two
//! `ebb coord` replicas keep exactly one leader. The agents run on
//! libvirt's built-in test driver: membership needs no guest.

mod common;

use common::{wait_for, AgentProc, EBB};
use ebb_daemon::api_types::Status;
use ebb_lab::etcd::LocalEtcd;
use ebb_core::farm::HostState;
use ebb_farm::{ClientEntry, ClientKind, FarmView, LinkState, Member, Store};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TICK: &str = "uri = \"test:///default\"\ntick = \"200ms\"";

fn farm_section(url: &str, host: &str) -> String {
    format!("[farm]\nendpoints = [\"{url}\"]\nhost = \"{host}\"\nlease_ttl = \"2s\"\ntimeout = \"500ms\"\n")
}

async fn store(etcd: &LocalEtcd) -> Store {
    Store::connect(&[etcd.url().to_string()], Duration::from_secs(2)).await.unwrap()
}

async fn is_member(store: &Store, host: &str) -> bool {
    store.farm().await.unwrap().hosts.iter().any(|h| h.name == host && h.member.is_some())
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

fn farm_state(status: &Status) -> Option<LinkState> {
    status.farm.as_ref().map(|f| f.state.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_joins_leaves_on_a_clean_stop_and_drops_out_when_killed() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &farm_section(etcd.url(), "h1"));
    until("h1 joins", Duration::from_secs(10), async || is_member(&store, "h1").await).await;
    // The status follows at the next tick.
    wait_for("h1 a member in the status", Duration::from_secs(2), || matches!(farm_state(&a.status()), Some(LinkState::Member { lease_ttl_s: 2, .. })).then_some(()));
    let text = a.text(&["status"]);
    assert!(text.contains(&format!("farm: host h1 at {}: member since", etcd.url())), "{text}");
    let check = common::ebb(&["check", "--config", a.config.to_str().unwrap()]);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains(&format!("farm: host h1 joins through etcd at {}  lease 2s  timeout 500ms", etcd.url())), "{check}");
    // `ebb farm` reads etcd itself.
    let out = Command::new(EBB).args(["farm", "--etcd", etcd.url()]).output().unwrap();
    let farm = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && farm.contains("coordinator leader: none"), "{farm}{}", String::from_utf8_lossy(&out.stderr));
    let row = farm.lines().find(|l| l.starts_with("h1 ")).unwrap_or_else(|| panic!("no h1 row: {farm}"));
    assert!(row.contains("up since") && row.contains("awake"), "{row}");

    a.stop();
    assert!(!is_member(&store, "h1").await, "a clean stop revokes the membership at once");
    assert_eq!(store.state("h1").await.unwrap().map(|s| s.to_string()).as_deref(), Some("awake"), "the state key has no lease");
    assert!(a.log_text().contains("host h1 left the farm"), "{}", a.log_text());

    let mut b = AgentProc::start(&subdir(dir.path(), "b"), TICK, &farm_section(etcd.url(), "h2"));
    until("h2 joins", Duration::from_secs(10), async || is_member(&store, "h2").await).await;
    b.kill9();
    assert!(is_member(&store, "h2").await, "killed: the lease outlives the agent for a while");
    let gone = until("h2's lease expires", Duration::from_secs(4), async || !is_member(&store, "h2").await).await;
    assert!(gone >= Duration::from_millis(500), "h2 left after {gone:?}, sooner than its lease allows");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_etcd_away_the_agent_keeps_ticking_says_why_and_rejoins() {
    let mut etcd = LocalEtcd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(dir.path(), TICK, &farm_section(etcd.url(), "h1"));
    wait_for("h1 a member", Duration::from_secs(10), || matches!(farm_state(&a.status()), Some(LinkState::Member { .. })).then_some(()));
    etcd.stop();
    let error = wait_for("the link down", Duration::from_secs(10), || match farm_state(&a.status()) {
        Some(LinkState::Disconnected { error, .. }) => Some(error),
        _ => None,
    });
    assert!(error.contains(etcd.url()), "the status names etcd: {error}");
    let text = a.text(&["status"]);
    assert!(text.contains("NOT A MEMBER ("), "{text}");
    // The tick goes on, and none waits on etcd.
    let before = a.status().ticks;
    std::thread::sleep(Duration::from_secs(1));
    let after = a.status();
    assert!(after.ticks >= before + 3, "ticks {before} → {}", after.ticks);
    assert!(after.last_tick_ms < 400.0, "a tick took {} ms", after.last_tick_ms);
    etcd.restart().await.unwrap();
    let store = store(&etcd).await;
    until("h1 rejoins", Duration::from_secs(15), async || is_member(&store, "h1").await).await;
    wait_for("h1 a member again", Duration::from_secs(5), || matches!(farm_state(&a.status()), Some(LinkState::Member { .. })).then_some(()));
}

/// An `ebb coord` replica, its log in `dir`.
struct Coord {
    child: Child,
    name: String,
    log: std::path::PathBuf,
}

impl Coord {
    fn start(dir: &Path, config: &Path, name: &str) -> Coord {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(EBB)
            .args(["coord", "--config"])
            .arg(config)
            .args(["--name", name])
            .env("EBB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Coord { child, name: name.into(), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn elected(&self) -> bool {
        self.log().contains("elected leader")
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_keep_one_leader_that_watches_the_hosts() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ebb.toml");
    std::fs::write(&config, farm_section(etcd.url(), "unused")).unwrap();
    // A host with two active clients, as an agent and heartbeats would leave it.
    let lease = store.grant(Duration::from_secs(10)).await.unwrap();
    store.join("h1", &Member { version: "test".into(), since: ebb_core::Millis(0) }, &Default::default(), lease.id).await.unwrap();
    let entry = ClientEntry { vm: "web".into(), kind: ClientKind::Heartbeat, remote: None };
    store.put_client("h1", "alice", &entry, Duration::from_secs(2)).await.unwrap();
    store.put_client("h1", "bob", &entry, Duration::from_secs(30)).await.unwrap();

    let mut coords = [Coord::start(dir.path(), &config, "coord-a"), Coord::start(dir.path(), &config, "coord-b")];
    until("a leader", Duration::from_secs(10), async || store.leader().await.unwrap().is_some()).await;
    let leader = store.leader().await.unwrap().unwrap();
    let (l, other) = if leader == "coord-a" { (0, 1) } else { (1, 0) };
    // The leader reads the farm, then follows alice's timer to its end.
    wait_for("the leader logs h1", Duration::from_secs(5), || coords[l].log().contains("host h1: member, awake, 2 active clients").then_some(()));
    wait_for("the leader logs alice's expiry", Duration::from_secs(5), || coords[l].log().contains("host h1: member, awake, 1 active client").then_some(()));
    assert!(!coords[other].elected(), "both replicas lead:\n{}", coords[other].log());
    let out = Command::new(EBB).args(["farm", "--config"]).arg(&config).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("coordinator leader: {leader}")), "{text}");
    let json: FarmView = serde_json::from_slice(&Command::new(EBB).args(["farm", "--json", "--etcd", etcd.url()]).output().unwrap().stdout).unwrap();
    assert_eq!((json.hosts.len(), json.hosts[0].clients.len()), (1, 1));

    let killed = Instant::now();
    let _ = coords[l].child.kill();
    let _ = coords[l].child.wait();
    let next = coords[other].name.clone();
    until("the other replica leads", Duration::from_secs(5), async || store.leader().await.unwrap().as_deref() == Some(next.as_str())).await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(3000), "took {took:?} past a 2 s lease");
    wait_for("the new leader logs the farm", Duration::from_secs(5), || coords[other].log().contains("host h1: member, awake, 1 active client").then_some(()));

    // A leader stopped cleanly revokes its lease: a third replica leads at once.
    let third = Coord::start(dir.path(), &config, "coord-c");
    until("coord-c campaigns", Duration::from_secs(5), async || third.log().contains("campaigning")).await;
    let stopped = Instant::now();
    let _ = Command::new("kill").arg("-TERM").arg(coords[other].child.id().to_string()).status();
    until("coord-c leads", Duration::from_secs(5), async || store.leader().await.unwrap().as_deref() == Some("coord-c")).await;
    assert!(stopped.elapsed() < Duration::from_millis(1200), "took {:?}: the lease was not revoked", stopped.elapsed());
    assert!(coords[other].child.wait().unwrap().success());
    assert!(coords[other].log().contains("stopped"), "{}", coords[other].log());

    let out = Command::new(EBB).args(["farm", "--etcd", "127.0.0.1:2379"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--etcd[0] = \"127.0.0.1:2379\" does not start with http://"), "{e}");
}

/// `dir/name`, made: each agent gets a directory of its own.
fn subdir(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The seed's counter across the farm: a heartbeat to the agent puts one
/// leased key under the host's `clients/`, kept while the client is active
/// and gone when its timer runs out; `ebb farm` counts them.
#[tokio::test(flavor = "multi_thread")]
async fn a_hosts_active_clients_are_its_keys_in_etcd_while_their_timers_run() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let web_port = common::free_port();
    let a_dir = subdir(dir.path(), "a");
    let a = AgentProc::start(&a_dir, TICK, &format!("{}{}", farm_section(etcd.url(), "h1"), common::web_section(&a_dir, web_port)));
    until("h1 joins", Duration::from_secs(10), async || is_member(&store, "h1").await).await;
    let beat = a.heartbeat("kiosk-1", r#"{"vm": "test", "ttl": "3s"}"#);
    assert!(beat.status.success(), "{}", String::from_utf8_lossy(&beat.stderr));
    let counted = until("the client in etcd", Duration::from_secs(3), async || store.client_count("h1").await.unwrap() == 1).await;
    let farm = store.farm().await.unwrap();
    let entry = &farm.hosts.iter().find(|h| h.name == "h1").unwrap().clients["heartbeat:kiosk-1"];
    assert_eq!((entry.vm.as_str(), entry.kind), ("test", ClientKind::Heartbeat));
    let out = Command::new(EBB).args(["farm", "--etcd", etcd.url(), "--json"]).output().unwrap();
    let view: FarmView = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(view.hosts.iter().find(|h| h.name == "h1").map(|h| h.clients.len()), Some(1));
    // No more beats: gone from etcd when its 3 s run out, not before.
    let gone = until("the client's timer runs out", Duration::from_secs(6), async || store.client_count("h1").await.unwrap() == 0).await;
    assert!(counted + gone >= Duration::from_millis(2500), "gone after {:?}, before its 3 s", counted + gone);
    assert_eq!(a.status().active_clients, 0);

    // The agent's web view shows the farm: its hosts and their clients, from etcd.
    let beat = a.heartbeat("kiosk-2", r#"{"vm": "test", "ttl": "60s"}"#);
    assert!(beat.status.success(), "{}", String::from_utf8_lossy(&beat.stderr));
    let mut browser = ebb_lab::browser::Browser::launch().expect("chromium (scripts/setup-host.sh installs it)");
    let mut page = browser.open(&format!("http://127.0.0.1:{web_port}/?token={}", common::READ_TOKEN)).unwrap();
    let row = "document.querySelector('#farm-hosts tr[data-host=h1]')";
    // The view is read from etcd every 2 s: the first one may still hold kiosk-1.
    page.wait_for(&format!("{row} && {row}.textContent.includes('heartbeat:kiosk-2 (heartbeat, test)')"), Duration::from_secs(15)).unwrap();
    assert_eq!(page.eval(&format!("{row}.querySelector('[data-field=clients]').dataset.value")).unwrap(), "1");
    let own = page.eval("document.getElementById('farm-own').textContent").unwrap();
    assert!(own.as_str().unwrap_or("").contains("This host, h1") && own.as_str().unwrap_or("").contains("member"), "{own}");
    page.screenshot(&ebb_lab::browser::screenshot_dir().join("web-farm.png")).unwrap();
    assert_eq!(page.console_errors(), Vec::<String>::new());
}

/// `[farm.sleep]` quick enough for a test, with a wake method (WoL).
fn sleep_section(url: &str, host: &str, wake: bool) -> String {
    let wake = if wake { "[farm.wake]\nmac = \"52:54:00:12:34:56\"\n" } else { "" };
    format!("{}{wake}[farm.sleep]\nafter = \"2s\"\nmin_awake = \"1s\"\nmax_per_hour = 2\n", farm_section(url, host))
}

async fn state(store: &Store, host: &str) -> Option<HostState> {
    store.state(host).await.unwrap()
}

fn host_events(a: &AgentProc) -> Vec<ebb_daemon::api_types::Event> {
    a.events(None).into_iter().filter(|e| e.kind.starts_with("host_")).collect()
}

/// The seed's host sleep on one host: a client keeps it awake; once its
/// timer has run out and the grace period passed, the host's VM is saved
/// and the host's sleep recorded (no command configured), with the
/// reason in etcd and `ebb farm`; a client's heartbeat wakes it and the VM
/// is restored. A client that etcd holds for the host (as the gateway or
/// another agent would put it) calls a sleep off at the shared check, and
/// the cap on sleeps an hour keeps a host whose clients come and go from
/// flapping.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_sleeps_when_its_clients_are_gone_and_wakes_when_one_comes() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &sleep_section(etcd.url(), "h1", true));
    until("h1 joins", Duration::from_secs(10), async || is_member(&store, "h1").await).await;
    let beat = || assert!(a.heartbeat("kiosk-1", r#"{"vm": "test", "ttl": "3s"}"#).status.success());
    beat();
    let since_beat = Instant::now();
    wait_for("the client in the status", Duration::from_secs(3), || a.status().host_sleep.filter(|h| h.why == "1 client is active"));

    // Its timer (3 s) and the grace period (2 s) pass: the host sleeps.
    until("h1 asleep in etcd", Duration::from_secs(15), async || state(&store, "h1").await == Some(HostState::Sleeping)).await;
    assert!(since_beat.elapsed() >= Duration::from_secs(5), "slept {:?} after the client's last beat", since_beat.elapsed());
    let h = a.status().host_sleep.unwrap();
    assert_eq!((h.state.as_str(), h.sleeps_total), ("asleep (recorded)", 1), "{h:?}");
    let explained = a.text(&["explain", "--host"]);
    assert!(explained.contains("The host is asleep (recorded)") && explained.contains("It last slept at"), "{explained}");
    assert!(explained.contains("Recent decisions") && explained.contains("1 VM(s) saved"), "{explained}");
    assert!(a.vm("test").unwrap().sleeping.is_some(), "the VM is saved before the host sleeps");
    let slept = host_events(&a);
    assert!(slept.iter().any(|e| e.kind == "host_sleep" && e.text.contains("1 VM(s) saved") && e.text.contains("recorded a host suspend")), "{slept:?}");
    let farm = store.farm().await.unwrap();
    let why = &farm.hosts[0].slept.as_ref().unwrap().why;
    assert!(why.contains("no client has been active for"), "{why}");
    let out = Command::new(EBB).args(["farm", "--etcd", etcd.url()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sleeping") && text.contains("wol") && text.contains("no client has been active"), "{text}");

    // A client comes back: the host wakes and restores its VM.
    beat();
    until("h1 awake in etcd", Duration::from_secs(5), async || state(&store, "h1").await == Some(HostState::Awake)).await;
    wait_for("the VM restored", Duration::from_secs(5), || a.vm("test").filter(|v| v.sleeping.is_none()));
    let h = a.status().host_sleep.unwrap();
    assert_eq!((h.state.as_str(), h.wakes_total), ("awake", 1), "{h:?}");
    assert!(h.last_wake.unwrap().1.contains("client(s) became active"));

    // A client held for h1 elsewhere in the farm: the shared check calls the sleep off.
    let entry = ClientEntry { vm: "test".into(), kind: ClientKind::Surrogate, remote: Some("10.0.0.9".into()) };
    let held = store.put_client("h1", "gateway:10.0.0.9", &entry, Duration::from_secs(30)).await.unwrap();
    wait_for("the sleep called off", Duration::from_secs(15), || host_events(&a).into_iter().find(|e| e.kind == "host_sleep_called_off"));
    let off = host_events(&a).into_iter().find(|e| e.kind == "host_sleep_called_off").unwrap();
    assert!(off.text.contains("etcd holds 1 client(s) of this host"), "{off:?}");
    assert_eq!(state(&store, "h1").await, Some(HostState::Awake));
    assert!(a.vm("test").unwrap().sleeping.is_none(), "nothing was saved for a sleep called off");

    // Gone: the host sleeps a second time; a wake, and the cap (2 an hour) holds it awake.
    store.revoke(held.id).await.unwrap();
    until("h1 asleep again", Duration::from_secs(15), async || state(&store, "h1").await == Some(HostState::Sleeping)).await;
    beat();
    until("h1 awake again", Duration::from_secs(5), async || state(&store, "h1").await == Some(HostState::Awake)).await;
    let capped = wait_for("the cap said", Duration::from_secs(15), || a.status().host_sleep.filter(|h| h.why.contains("max_per_hour")));
    assert!(capped.why.contains("slept 2 times in the last hour"), "{capped:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((state(&store, "h1").await, a.status().host_sleep.unwrap().sleeps_total), (Some(HostState::Awake), 2));
}

/// Bad input and a missing store: a host nothing can wake is never put to
/// sleep (said by `ebb check`, the status and `ebb farm`), and with etcd
/// away the host stays awake and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_a_wake_method_or_without_etcd_stays_awake_and_says_why() {
    let mut etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &sleep_section(etcd.url(), "h1", false));
    let b = AgentProc::start(&subdir(dir.path(), "b"), TICK, &sleep_section(etcd.url(), "h2", true));
    let check = common::ebb(&["check", "--config", a.config.to_str().unwrap()]);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("host sleep: NEVER: no wake method is configured"), "{check}");
    let check = common::ebb(&["check", "--config", b.config.to_str().unwrap()]);
    let check = String::from_utf8_lossy(&check.stdout);
    assert!(check.contains("host sleep: suspend after 2s without an active client") && check.contains("woken by wol"), "{check}");
    // h3 can sleep too, but a client of it keeps beating.
    let c = AgentProc::start(&subdir(dir.path(), "c"), TICK, &sleep_section(etcd.url(), "h3", true));
    until("all join", Duration::from_secs(10), async || is_member(&store, "h1").await && is_member(&store, "h2").await && is_member(&store, "h3").await).await;
    assert!(c.heartbeat("kiosk", r#"{"vm": "test", "ttl": "1h"}"#).status.success());
    // Past the grace period, only h2 sleeps: h1 has no wake method, h3 a client.
    until("h2 asleep", Duration::from_secs(15), async || state(&store, "h2").await == Some(HostState::Sleeping)).await;
    assert_eq!(state(&store, "h3").await, Some(HostState::Awake));
    assert_eq!(c.status().host_sleep.unwrap().why, "1 client is active");
    let h = a.status().host_sleep.unwrap();
    assert!(h.state == "awake" && h.why.contains("no wake method") && h.why.contains("never"), "{h:?}");
    assert_eq!(state(&store, "h1").await, Some(HostState::Awake));
    let out = Command::new(EBB).args(["farm", "--etcd", etcd.url()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("h1") && l.contains("none (never sleeps)")), "{text}");

    // etcd away: h2 woken by a client stays awake past its grace period, and says why.
    etcd.stop();
    assert!(b.heartbeat("kiosk", r#"{"vm": "test", "ttl": "1s"}"#).status.success());
    let why = wait_for("h2 says why it stays awake", Duration::from_secs(15), || {
        b.status().host_sleep.filter(|h| h.state == "awake" && h.why.contains("cannot be checked"))
    });
    assert!(why.why.contains("etcd"), "{why:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.status().host_sleep.unwrap().sleeps_total, 1, "no sleep without the shared check");
}

/// A service that answers each line with `ECHO line`, counting connections.
fn echo_backend() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                    let _ = w.write_all(format!("ECHO {line}\n").as_bytes());
                }
            });
        }
    });
    (port, accepted)
}

/// The wake, from the coordinator's leader, for a client of the gateway:
/// a client connects to the coordinator's gateway for a VM whose host
/// sleeps; the gateway holds it and its key in etcd makes the leader wake
/// the host, by Wake-on-LAN here (a magic packet for its MAC to loopback's
/// broadcast, caught by this test). The host's agent restores its VM and
/// says `awake`, the gateway replays what the client sent and the client
/// gets the service's answer; the leader records how the wake went. A host
/// whose agent is gone for good (a host that never comes back) is given up
/// after `wake_give_up` and marked `wake-failed`, the gateway's held client
/// is refused with why, and `ebb farm` says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_wakes_a_sleeping_host_a_gateway_client_waits_for_and_marks_one_it_cannot() {
    use std::io::{BufRead, Read, Write};
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let nic = std::net::UdpSocket::bind("0.0.0.0:9").expect("port 9 (Wake-on-LAN) is free for the test's NIC");
    nic.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (backend, accepted) = echo_backend();
    let (web, db) = (common::free_port(), common::free_port());
    let coord_config = dir.path().join("coord.toml");
    std::fs::write(
        &coord_config,
        format!(
            "{}wake_resend = \"1s\"\nwake_give_up = \"4s\"\n[clients]\nsurrogate_idle = \"1s\"\n\
             [gateway.web]\nhost = \"h1\"\n[[gateway.web.service]]\nname = \"echo\"\nlisten = \"127.0.0.1:{web}\"\nbackend = \"127.0.0.1:{backend}\"\n\
             [gateway.db]\nhost = \"h2\"\n[[gateway.db.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{db}\"\nbackend = \"127.0.0.1:1\"\nhttp = true\n",
            farm_section(etcd.url(), "unused")
        ),
    )
    .unwrap();
    let coord = Coord::start(dir.path(), &coord_config, "coord-a");
    let wol = |host| format!("{}[farm.wake]\nmac = \"52:54:00:12:34:56\"\nbroadcast = \"127.255.255.255\"\n[farm.sleep]\nafter = \"1s\"\nmin_awake = \"1s\"\n", farm_section(etcd.url(), host));
    // h1's suspend lasts until its NIC (the test's socket) has the magic
    // packet: a host whose sleep were only recorded would see `waking` in
    // etcd and come back on its own, before the leader's send.
    let resume = dir.path().join("h1-resume");
    let suspend = format!("command = [\"sh\", \"-c\", \"until [ -e {} ]; do sleep 0.05; done\"]\n", resume.display());
    let a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &(wol("h1") + &suspend));
    let mut b = AgentProc::start(&subdir(dir.path(), "b"), TICK, &wol("h2"));
    until("both asleep", Duration::from_secs(15), async || state(&store, "h1").await == Some(HostState::Sleeping) && state(&store, "h2").await == Some(HostState::Sleeping)).await;
    assert!(coord.elected(), "{}", coord.log());
    // The gateway follows the farm through a watch of its own: let it see h1 asleep.
    wait_for("the gateway to see h1 asleep", Duration::from_secs(5), || coord.log().contains("gateway: web on host h1: asleep").then_some(()));

    // A client of h1's VM at the gateway: held, and its key wakes h1.
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", web)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"hello from a client of a sleeping host\n").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(c).read_line(&mut answer).unwrap();
        answer
    });
    let mut packet = [0u8; 256];
    let (n, _) = nic.recv_from(&mut packet).unwrap_or_else(|e| panic!("no magic packet ({e}); the coordinator's log:\n{}\nthe farm: {:?}", coord.log(), std::process::Command::new(EBB).args(["farm", "--etcd", etcd.url()]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())));
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "the gateway held the client while h1 slept");
    let mut magic = vec![0xffu8; 6];
    (0..16).for_each(|_| magic.extend([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]));
    assert_eq!(&packet[..n], &magic[..], "the magic packet for h1's MAC");
    std::fs::write(&resume, "").unwrap();
    assert_eq!(client.join().unwrap(), "ECHO hello from a client of a sleeping host\n", "the held bytes reached the service, and its answer the client");
    assert_eq!(state(&store, "h1").await, Some(HostState::Awake));
    wait_for("h1's VM restored", Duration::from_secs(5), || a.vm("test").filter(|v| v.sleeping.is_none()));
    let woke = host_events(&a).into_iter().find(|e| e.kind == "host_wake").unwrap();
    assert!(woke.text.contains("the host resumed"), "{woke:?}");
    until("the wake recorded", Duration::from_secs(5), async || store.farm().await.unwrap().hosts.iter().any(|h| h.name == "h1" && h.woke.is_some())).await;
    let farm = store.farm().await.unwrap();
    let h1 = farm.hosts.iter().find(|h| h.name == "h1").unwrap();
    let w = h1.woke.as_ref().unwrap();
    assert!(w.by.starts_with("by wol") && h1.waking.is_none(), "{w:?}");
    assert!(coord.log().contains("host h1 is awake"), "{}", coord.log());

    // h2's agent is gone for good: the wake is given up, the host marked,
    // and the gateway's held client refused with why.
    b.kill9();
    until("h2's membership lapses", Duration::from_secs(5), async || !is_member(&store, "h2").await).await;
    let started = Instant::now();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", db)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n").unwrap();
    let mut refusal = String::new();
    let _ = c.read_to_string(&mut refusal);
    assert!(started.elapsed() >= Duration::from_secs(4), "refused after {:?}, before wake_give_up", started.elapsed());
    assert!(refusal.starts_with("HTTP/1.1 503") && refusal.contains("host h2 could not be woken"), "{refusal}");
    assert_eq!(state(&store, "h2").await, Some(HostState::WakeFailed));
    let farm = store.farm().await.unwrap();
    let why = &farm.hosts.iter().find(|h| h.name == "h2").unwrap().wake_failed.as_ref().unwrap().why;
    assert!(why.contains("did not say it was awake within 4s") && why.contains("gateway:127.0.0.1"), "{why}");
    let out = Command::new(EBB).args(["farm", "--etcd", etcd.url()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wake-failed") && text.contains("could not be woken"), "{text}");
}

/// A host that slept powered off comes back with a fresh agent: the VMs
/// saved for its sleep are in the journal, and the agent restores them as
/// it starts (here the agent is killed, as a power-off would).
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_starts_after_its_hosts_sleep_restores_what_it_saved() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &sleep_section(etcd.url(), "h1", true));
    until("h1 asleep", Duration::from_secs(15), async || state(&store, "h1").await == Some(HostState::Sleeping)).await;
    a.kill9();
    let a = a.start_again();
    let woke = wait_for("the restore at start", Duration::from_secs(10), || host_events(&a).into_iter().find(|e| e.kind == "host_wake"));
    assert!(woke.text.contains("the agent started again after the host's sleep"), "{woke:?}");
    until("h1 awake in etcd", Duration::from_secs(10), async || state(&store, "h1").await == Some(HostState::Awake)).await;
    assert!(a.vm("test").unwrap().sleeping.is_none());
}

/// A leader killed during a wake: the other replica leads within the lease
/// TTL and carries the same wake on (its record, not a new one), and the
/// host is woken once: one `waking`, one `woke`.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_during_a_wake_is_replaced_and_the_host_is_woken_once() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store = store(&etcd).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coord.toml");
    std::fs::write(&config, format!("{}wake_resend = \"1s\"\nwake_give_up = \"60s\"\n", farm_section(etcd.url(), "unused"))).unwrap();
    let wol = format!("{}[farm.wake]\nmac = \"52:54:00:12:34:57\"\nbroadcast = \"127.0.0.1:1\"\n[farm.sleep]\nafter = \"1s\"\nmin_awake = \"1s\"\n", farm_section(etcd.url(), "h1"));
    let mut a = AgentProc::start(&subdir(dir.path(), "a"), TICK, &wol);
    until("h1 asleep", Duration::from_secs(15), async || state(&store, "h1").await == Some(HostState::Sleeping)).await;
    // The host really asleep: no agent answers until it is back.
    a.kill9();
    until("h1's membership lapses", Duration::from_secs(5), async || !is_member(&store, "h1").await).await;
    let mut coords = [Coord::start(dir.path(), &config, "coord-a"), Coord::start(dir.path(), &config, "coord-b")];
    until("a leader", Duration::from_secs(10), async || store.leader().await.unwrap().is_some()).await;
    let leader = store.leader().await.unwrap().unwrap();
    let (l, other) = if leader == "coord-a" { (0, 1) } else { (1, 0) };
    let entry = ClientEntry { vm: "test".into(), kind: ClientKind::Surrogate, remote: None };
    store.put_client("h1", "gateway:10.0.0.7", &entry, Duration::from_secs(60)).await.unwrap();
    until("h1 waking", Duration::from_secs(5), async || state(&store, "h1").await == Some(HostState::Waking)).await;
    let record = |farm: &FarmView| farm.hosts.iter().find(|h| h.name == "h1").and_then(|h| h.waking.clone());
    let begun = record(&store.farm().await.unwrap()).expect("the wake's record");
    // The leader dies mid-wake (killed: its lease runs out, 2 s).
    let _ = coords[l].child.kill();
    let _ = coords[l].child.wait();
    until("the other replica leads", Duration::from_secs(5), async || store.leader().await.unwrap().as_deref() == Some(coords[other].name.as_str())).await;
    until("the new leader sends again", Duration::from_secs(5), async || record(&store.farm().await.unwrap()).is_some_and(|r| r.sends > begun.sends)).await;
    let carried = record(&store.farm().await.unwrap()).unwrap();
    assert_eq!((carried.started, carried.why.as_str()), (begun.started, begun.why.as_str()), "the same wake, carried on");
    // The host comes back: its agent starts, restores its VM, says awake.
    let a = a.start_again();
    until("h1 awake", Duration::from_secs(10), async || state(&store, "h1").await == Some(HostState::Awake)).await;
    until("the wake recorded", Duration::from_secs(5), async || store.farm().await.unwrap().hosts.iter().any(|h| h.name == "h1" && h.woke.is_some())).await;
    let log = coords[other].log();
    assert!(log.contains("host h1 is awake") && !log.contains("waking host h1"), "the new leader finished the wake without beginning another:\n{log}");
    assert_eq!(coords[l].log().matches("waking host h1").count(), 1, "{}", coords[l].log());
    assert_eq!(host_events(&a).iter().filter(|e| e.kind == "host_wake").count(), 1);
}
