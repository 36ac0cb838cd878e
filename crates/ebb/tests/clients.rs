//! Clients and their activity timers through the real binary, on libvirt's
//! test driver and loopback sockets (seed 002): a client of a VM's service
//! through the surrogate is active while its connection is open and for
//! `surrogate_idle` after; a heartbeat sent with curl over the API's socket
//! (as the README shows it) is active for its TTL; `ebb clients`, `ebb
//! status` and the metrics count both.

mod common;
use common::*;
use ebb_core::clients::{ClientKind, ClientView};
use std::net::TcpStream;
use std::time::Duration;

/// A backend that takes connections and reads until the client leaves.
fn clients(agent: &AgentProc) -> Vec<ClientView> {
    agent.json(&["clients"])
}

#[test]
fn a_surrogate_client_and_a_heartbeat_count_while_active_and_expire_after() {
    let listen = free_port();
    let rest = format!(
        "[surrogate]\nawake_path = \"splice\"\n[clients]\nsurrogate_idle = \"1s\"\n\
         [[vm.test.service]]\nname = \"tcp\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{}\"\n",
        idle_backend()
    );
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), "uri = \"test:///default\"\ntick = \"200ms\"", &rest);
    wait_for("the test domain", Duration::from_secs(10), || agent.vm("test").filter(|v| v.surrogate.is_some()));
    assert!(clients(&agent).is_empty());

    // A connection through the surrogate: active while open.
    let conn = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    let c = agent.wait("the surrogate client", Duration::from_secs(5), |a| clients(a).into_iter().find(|c| c.kind == ClientKind::Surrogate));
    assert_eq!((c.id.as_str(), c.vm.as_str(), c.open, c.expires_at, c.ttl_ms), ("127.0.0.1", "test", 1, None, 1000));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(agent.status().active_clients, 1, "an open connection does not expire");
    let table = agent.text(&["clients"]);
    assert!(table.contains("127.0.0.1") && table.contains("surrogate") && table.contains("connected (1 open)"), "{table}");

    // A heartbeat, as the README sends it.
    let out = agent.heartbeat("kiosk-1", r#"{"vm": "test", "ttl": "30s"}"#);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && body.contains(r#""id":"kiosk-1""#) && body.contains(r#""ttl_ms":30000"#), "{body} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent.status().active_clients, 2);
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains("ebb_active_clients 2\n"), "{metrics}");
    assert!(metrics.contains("ebb_vm_active_clients{vm=\"test\",kind=\"heartbeat\"} 1"), "{metrics}");

    // Closed: its timer runs for surrogate_idle, then it is gone; the heartbeat stays.
    drop(conn);
    let c = agent.wait("the close", Duration::from_secs(5), |a| clients(a).into_iter().find(|c| c.kind == ClientKind::Surrogate && c.open == 0));
    assert!(c.expires_at.is_some(), "{c:?}");
    agent.wait("the surrogate client's expiry", Duration::from_secs(5), |a| (a.status().active_clients == 1).then_some(()));
    let left = clients(&agent);
    assert_eq!(left.iter().map(|c| (c.kind, c.id.as_str())).collect::<Vec<_>>(), [(ClientKind::Heartbeat, "kiosk-1")]);
    assert!(agent.text(&["status"]).contains("active clients: 1"));
}
