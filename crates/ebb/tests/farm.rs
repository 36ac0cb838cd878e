//! The farm's foundation with the real binary and a real etcd on loopback
//! (each test starts its own): agents join and leave (cleanly, or by dying
//! and their lease expiring), and keep ticking while etcd is away. The agents run on
//! libvirt's built-in test driver: membership needs no guest.

mod common;

use common::{wait_for, AgentProc};
use ebb_daemon::api_types::Status;
use ebb_farm::local::LocalEtcd;
use ebb_farm::{LinkState, Store};
use std::path::Path;
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

/// `dir/name`, made: each agent gets a directory of its own.
fn subdir(dir: &Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}
