//! The kernel path on this host's real nftables: while the VM is awake the
//! kernel forwards its clients (the rule is in the agent's table and the
//! surrogate splices nothing), the rule is gone the moment the VM is set
//! asleep (the next client is held by the surrogate), it comes back after
//! the wake, and the table goes with the surrogate. Loopback only.

mod common;

use common::*;
use ebb_core::VmId;
use ebb_surrogate::{AwakePath, Limits, ServiceSpec, Surrogate, SurrogateError, VmPower};
use std::process::Command;
use std::time::{Duration, Instant};

/// The table as `nft list` prints it, or None when it does not exist.
fn nft_table(table: &str) -> Option<String> {
    let out = Command::new("nft").args(["list", "table", "inet", table]).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An owner no other test or agent on this host uses.
fn owner(test: &str) -> String {
    format!("ebb-surrogate-test/{}/{test}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awake_the_kernel_forwards_and_counts_asleep_the_surrogate_holds() {
    bounded(30, async {
        let vm = VmId::new("vm1");
        let (listen, backend) = (free_addr(), free_addr());
        let _b = Backend::start(backend, "vm1");
        let (mut s, _events) = Surrogate::new(Limits::default());
        let table = s.set_awake_path(AwakePath::Kernel, "nft", &owner("forward")).unwrap().unwrap();
        s.add_vm(vm.clone(), vec![ServiceSpec::http("web", listen, backend)], VmPower::Awake).unwrap();
        let rule = format!("dnat ip to {backend}");
        until("the rule, once the backend answered", || nft_table(&table).filter(|t| t.contains(&rule))).await;

        // A connect-only health check through the kernel: counted as a
        // connection, not as the VM's activity.
        drop(tokio::net::TcpStream::connect(listen).await.unwrap());
        until("the health check counted", || s.awake_routes(&vm).into_iter().find(|r| r.kernel_connections == 1)).await;
        let st = s.stats(&vm).unwrap();
        assert_eq!((st.bytes_in, st.bytes_out, st.last_activity), (0, 0, None), "{st:?}");

        let (status, body) = http_get(listen, "/through-the-kernel").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /through-the-kernel"));
        // The counters are read back within a second: the kernel carried it,
        // and it counts as the VM's traffic.
        let route = until("the forwarded request counted", || {
            s.awake_routes(&vm).into_iter().find(|r| r.kernel_connections == 2)
        })
        .await;
        assert_eq!((route.service.as_str(), route.path, route.active), ("web", "kernel", true));
        let st = until("the forwarded bytes counted", || Some(s.stats(&vm).unwrap()).filter(|st| st.bytes_out > 0)).await;
        assert!(st.bytes_in > 0 && st.last_activity.is_some(), "{st:?}");

        // Asleep: the rule is gone when set_state returns, before any save.
        s.set_state(&vm, VmPower::Asleep).unwrap();
        let text = nft_table(&table).expect("the table stays while the surrogate runs");
        assert!(!text.contains("dnat"), "{text}");
        assert!(!s.awake_routes(&vm)[0].active);
        let held = tokio::spawn(http_get(listen, "/held"));
        until("the client held by the surrogate", || Some(s.stats(&vm).unwrap()).filter(|st| st.held_connections == 1)).await;
        s.set_state(&vm, VmPower::Awake).unwrap();
        let (status, body) = held.await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "vm1 GET /held"));
        until("the rule back after the wake", || nft_table(&table).filter(|t| t.contains(&rule))).await;

        drop(s);
        assert_eq!(nft_table(&table), None, "the table goes with the surrogate");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nft_auto_splices_and_kernel_is_refused() {
    bounded(10, async {
        let vm = VmId::new("vm1");
        let (listen, backend) = (free_addr(), free_addr());
        let _b = Backend::start(backend, "vm1");
        let (mut s, _events) = Surrogate::new(Limits::default());
        let why = s.set_awake_path(AwakePath::Auto, "/nonexistent/nft", &owner("auto")).unwrap().unwrap_err();
        assert!(why.contains("cannot run /nonexistent/nft"), "{why}");
        s.add_vm(vm.clone(), vec![ServiceSpec::http("web", listen, backend)], VmPower::Awake).unwrap();
        let routes = s.awake_routes(&vm);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].path, "splice");
        assert!(routes[0].why.contains("/nonexistent/nft"), "{routes:?}");
        let (status, _) = http_get(listen, "/spliced").await.unwrap();
        assert_eq!(status, 200);
        assert!(s.stats(&vm).unwrap().bytes_out > 0);

        let (mut s, _events) = Surrogate::new(Limits::default());
        let err = s.set_awake_path(AwakePath::Kernel, "/nonexistent/nft", &owner("kernel")).unwrap_err();
        assert!(matches!(err, SurrogateError::KernelPathUnavailable(_)), "{err}");
    })
    .await
}
