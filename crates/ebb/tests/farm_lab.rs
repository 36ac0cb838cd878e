//! Issue 11's farm on one machine (`ebb_lab::farm_lab`): two hosts, each a
//! network namespace with its own privileged libvirtd, VM and `ebb run`
//! agent (in the host's netns and its freezer group: the host's suspend is
//! the group frozen), real etcd and `ebb coord` with its gateway in the
//! coordinator's namespace, Wake-on-LAN over the LAN's veths, virtualbmc
//! (IPMI) and sushy-tools (Redfish) on the coordinator's management side,
//! over the placeholder domains that stand for the hosts' power. One test:
//! the hosts share the farm.

mod common;

use common::{AgentProc, EBB};
use ebb_core::farm::HostState;
use ebb_farm::FarmView;
use ebb_lab::bmc::{Sushy, VirtualBmc, BMC_PASSWORD};
use ebb_lab::etcd::LocalEtcd;
use ebb_lab::farm_lab::{self, gateway_section, rfb_session, FarmHost, FarmLab, BROADCAST, COORD_IP, COORD_NS, VNC_PORT};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// `ebb coord` in the coordinator's namespace, its log in `dir`.
struct Coord {
    child: Child,
    log: std::path::PathBuf,
}

impl Coord {
    fn start(dir: &Path, config: &Path) -> Coord {
        let log = dir.join("coord.log");
        let child = FarmLab::command(COORD_NS, EBB)
            .args(["coord", "--config"])
            .arg(config)
            .args(["--name", "coord-a"])
            .env("EBB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Coord { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Coord {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn farm_view(etcd: &LocalEtcd) -> FarmView {
    farm_lab::farm_view(Path::new(EBB), etcd.url()).unwrap_or_else(|e| panic!("{e}"))
}

fn state(etcd: &LocalEtcd, host: &str) -> Option<HostState> {
    farm_view(etcd).hosts.into_iter().find(|h| h.name == host).and_then(|h| h.state)
}

/// Polls `f` every 100 ms; how long it took, or a panic with `why()` after `limit`.
fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool, why: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}\n{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// An agent for `host` (`farm_lab::agent_config`): in its netns and freezer group.
fn agent(dir: &Path, host: &FarmHost, etcd: &LocalEtcd, wake: &str) -> AgentProc {
    let dir = dir.join(&host.name);
    std::fs::create_dir_all(&dir).unwrap();
    let (lines, rest) = farm_lab::agent_config(host, etcd.url(), wake);
    AgentProc::start_through(&dir, &lines, &rest, &host.wrapper())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_farm_sleeps_the_hosts_without_clients_and_gateway_clients_wake_theirs_by_wake_on_lan_ipmi_and_redfish() {
    let began = Instant::now();
    let farm = FarmLab::start(&["h1", "h2", "h3"]).unwrap();
    let (h1, h2, h3) = (farm.host("h1"), farm.host("h2"), farm.host("h3"));
    let etcd = LocalEtcd::start_in(COORD_NS, COORD_IP).await.unwrap();
    // The BMCs are on the coordinator's side of the farm: h2's by IPMI, h3's by Redfish.
    let ipmi = VirtualBmc::start_in(&h2.power, Some(COORD_NS)).await.unwrap();
    let redfish = Sushy::start_in(&h3.power, COORD_NS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("bmc-password");
    std::fs::write(&password, BMC_PASSWORD).unwrap();
    // vm1's host is in the config; h2's and h3's VMs are found by the
    // routing their agents keep in etcd (hosts/{h}/vms).
    let gateways = [gateway_section(h1, Some("vm1"), VNC_PORT), gateway_section(h2, None, VNC_PORT + 1), gateway_section(h3, None, VNC_PORT + 2)].concat();
    let coord_config = dir.path().join("coord.toml");
    std::fs::write(&coord_config, farm_lab::coord_config(etcd.url(), &password, &gateways)).unwrap();
    let coord = Coord::start(dir.path(), &coord_config);
    println!("farm up (3 libvirtds, 3 VMs, etcd, 2 BMCs, coordinator) in {:?}", began.elapsed());

    // A viewer on h1's VM (from the client's namespace) before the agents start.
    let (viewer, _) = rfb_session(h1.ip, VNC_PORT).unwrap();
    let a1 = agent(dir.path(), h1, &etcd, &format!("mac = \"{}\"\nbroadcast = \"{BROADCAST}\"", h1.mac));
    let a2 = agent(dir.path(), h2, &etcd, &format!("ipmi = \"{}\"", ipmi.address()));
    let a3 = agent(dir.path(), h3, &etcd, &format!("redfish = \"{}\"", redfish.system_url()));
    let _thaw = farm.thaw_guard();
    let agents_up = Instant::now();
    let why = || format!("--- h1\n{}\n--- h2\n{}\n--- h3\n{}\n--- coord\n{}", a1.log_text(), a2.log_text(), a3.log_text(), coord.log());

    // h2 and h3, with no client, sleep: VM saved, host frozen and powered
    // off for its BMC, `sleeping` in etcd.
    for h in [h2, h3] {
        let took = until(&format!("{} asleep", h.name), Duration::from_secs(30), || state(&etcd, &h.name) == Some(HostState::Sleeping) && h.freezer_state() == "FROZEN", why);
        println!("{} (no client) asleep {took:?} after the agents started", h.name);
        assert!(h.vm_saved(), "{}'s VM has a managed save", h.name);
        let listed = farm_view(&etcd).hosts.into_iter().find(|v| v.name == h.name).map(|v| v.vms);
        assert_eq!(listed, Some(vec![h.vm.clone()]), "{}'s VM is routed to it in etcd while it sleeps", h.name);
        assert_eq!(h.power.state().unwrap(), "shut off", "{}'s BMC sees it off", h.name);
    }
    // h1, its viewer connected, stays awake past h2's sleep.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&etcd, "h1"), Some(HostState::Awake), "{}", why());
    assert_eq!((h1.freezer_state().as_str(), h1.vm_state().as_str()), ("THAWED", "running"));
    let h = a1.status().host_sleep.unwrap();
    assert!(h.state == "awake" && h.sleeps_total == 0, "{h:?}");

    // The viewer leaves: h1 sleeps after console_idle (2 s) and after (2 s).
    drop(viewer);
    let left = Instant::now();
    until("h1 asleep", Duration::from_secs(30), || state(&etcd, "h1") == Some(HostState::Sleeping) && h1.freezer_state() == "FROZEN", why);
    let took = left.elapsed();
    println!("h1 asleep {took:?} after its viewer left");
    assert!(took >= Duration::from_secs(4), "h1 slept {took:?} after its viewer left, before console_idle + after");
    assert!(h1.vm_saved(), "h1's VM has a managed save");

    // A client of h1's VM at the gateway: held, h1 woken by WoL, restored, spliced.
    let connect = Instant::now();
    let (session, banner) = rfb_session(COORD_IP, VNC_PORT).unwrap_or_else(|e| panic!("the client through the gateway: {e}\n{}", why()));
    let init = connect.elapsed();
    println!("through the gateway: connect -> RFB banner {banner:?}, -> ServerInit {init:?} (WoL, thaw, restore, splice)");
    assert_eq!((h1.wakes(), h1.freezer_state().as_str()), (1, "THAWED"), "one magic packet for h1's MAC thawed it");
    // QEMU's VNC answers while the restore is loading the VM's state: it runs soon after.
    let running = until("h1's VM running", Duration::from_secs(10), || h1.vm_state() == "running", why);
    println!("h1's VM running {:?} after ServerInit", running);
    assert_eq!(state(&etcd, "h1"), Some(HostState::Awake));
    let h = a1.status().host_sleep.unwrap();
    assert_eq!((h.sleeps_total, h.wakes_total), (1, 1), "{h:?}");
    let wakes: Vec<_> = a1.events(None).into_iter().filter(|e| e.kind == "host_wake").collect();
    assert_eq!(wakes.len(), 1, "{wakes:?}");
    assert!(wakes[0].text.contains("the host resumed"), "the sleep command returned: {wakes:?}");
    // h2 and h3 still asleep, never woken.
    for h in [h2, h3] {
        assert_eq!((state(&etcd, &h.name), h.freezer_state().as_str(), h.wakes(), h.power_ons()), (Some(HostState::Sleeping), "FROZEN", 0, 0));
    }
    let woke = |host: &str| farm_view(&etcd).hosts.into_iter().find(|h| h.name == host).and_then(|h| h.woke);
    until("the wake recorded", Duration::from_secs(5), || woke("h1").is_some(), why);
    let w = woke("h1").unwrap();
    assert!(w.by.starts_with(&format!("by wol: Wake-on-LAN magic packet for {} sent to {BROADCAST}:9", h1.mac)), "{w:?}");
    let latency = format!("ebb_host_last_wake_seconds {}", w.took_ms as f64 / 1000.0);
    until("h1's metrics show the farm's wake latency", Duration::from_secs(5), || a1.text(&["metrics"]).contains(&latency), why);
    assert_eq!(coord.log().matches("waking host h1").count(), 1, "{}", coord.log());
    println!("h1 woke: {w:?}");
    drop(session);

    // A client of h2's VM wakes it through its BMC by IPMI, one of h3's by Redfish.
    for (h, port, method) in [(h2, VNC_PORT + 1, "ipmi"), (h3, VNC_PORT + 2, "redfish")] {
        let connect = Instant::now();
        let (session, banner) = rfb_session(COORD_IP, port).unwrap_or_else(|e| panic!("a client of {} through the gateway: {e}\n{}", h.name, why()));
        println!("{} through the gateway by {method}: connect -> RFB banner {banner:?}, -> ServerInit {:?}", h.name, connect.elapsed());
        assert_eq!((h.power_ons(), h.wakes(), h.freezer_state().as_str()), (1, 0, "THAWED"), "{}'s BMC powered it on once", h.name);
        until(&format!("{}'s VM running", h.name), Duration::from_secs(10), || h.vm_state() == "running", why);
        until(&format!("{}'s wake recorded", h.name), Duration::from_secs(5), || woke(&h.name).is_some(), why);
        let w = woke(&h.name).unwrap();
        assert!(w.by.starts_with(&format!("by {method}")), "{w:?}");
        assert_eq!(coord.log().matches(&format!("waking host {}", h.name)).count(), 1, "{}", coord.log());
        assert!(coord.log().contains(&format!("gateway: {} is on host {}", h.vm, h.name)), "routed by etcd:\n{}", coord.log());
        println!("{} woke: {w:?}", h.name);
        drop(session);
    }
    assert!(!coord.log().contains("is not followed"), "the gateway's watch on etcd held:\n{}", coord.log());
    println!("test took {:?} ({:?} since the agents started)", began.elapsed(), agents_up.elapsed());
}
