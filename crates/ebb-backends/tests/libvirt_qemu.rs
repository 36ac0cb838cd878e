//! The libvirt backend against the real QEMU driver (`qemu:///system`):
//! what the test driver cannot show, namely balloon-less domains as QEMU
//! reports them and a connection that drops under the agent.
//!
//! Needs libvirtd running: `scripts/test.sh` starts it (by hand:
//! `virtlogd -d; libvirtd -d`).
#![cfg(feature = "libvirt")]

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ebb_backends::libvirt::LibvirtHypervisor;
use ebb_backends::{HvError, Hypervisor};
use ebb_core::{Bytes, VmId, VmState};

const SYSTEM: &str = "qemu:///system";
const SOCKET: &str = "/var/run/libvirt/libvirt-sock";

fn require_libvirtd() {
    if let Err(e) = UnixStream::connect(SOCKET) {
        panic!("libvirtd is not running ({SOCKET}: {e}): start it with `virtlogd -d; libvirtd -d` or scripts/setup-host.sh");
    }
}

/// Guest XML: TCG, no disk (the firmware idles looking for a boot device),
/// 128 MiB with 96 MiB current.
fn domain_xml(name: &str, balloon: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name>\
         <memory unit='MiB'>128</memory><currentMemory unit='MiB'>96</currentMemory>\
         <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>\
         <devices><memballoon model='{balloon}'/></devices></domain>"
    )
}

/// Domains this test defined or started; destroyed and undefined on drop,
/// also when an assertion failed.
struct Cleanup(virt::connect::Connect, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.1 {
            if let Ok(dom) = self.0.lookup_domain_by_name(name) {
                let _ = dom.destroy();
                let _ = dom.undefine();
            }
        }
    }
}

#[test]
fn balloonless_domains_on_qemu() {
    require_libvirtd();
    let mut hv = LibvirtHypervisor::connect(SYSTEM).expect("connect to qemu:///system");
    let pid = std::process::id();
    let (none, virtio) = (format!("ebb-bk-{pid}-none"), format!("ebb-bk-{pid}-virtio"));
    let conn = virt::connect::Connect::open(Some(SYSTEM)).unwrap();
    let guard = Cleanup(conn, vec![none.clone(), virtio.clone()]);
    for (name, model) in [(&none, "none"), (&virtio, "virtio")] {
        guard.0.define_domain_xml(&domain_xml(name, model)).expect("define");
    }

    // Inactive: libvirt reports balloon.current == maximum for model='none'.
    let obs = hv.observe().expect("observe");
    let find = |obs: &ebb_core::Observation, n: &str| obs.vms.iter().find(|v| v.id.as_str() == n).cloned().unwrap();
    let v = find(&obs, &none);
    assert_eq!((v.state, v.balloon), (VmState::ShutOff, None));
    let v = find(&obs, &virtio);
    assert_eq!(v.state, VmState::ShutOff);
    let b = v.balloon.expect("virtio balloon");
    assert_eq!((b.current, b.maximum, b.stats), (Bytes::from_mib(96), Bytes::from_mib(128), None));

    // Live-only memory change of a shut off domain: refused, not NoBalloon.
    match hv.set_memory(&VmId::new(&virtio), Bytes::from_mib(64)) {
        Err(HvError::Operation { op: "set memory", .. }) => {}
        other => panic!("expected an operation error, got {other:?}"),
    }

    // Running without a balloon device.
    guard.0.lookup_domain_by_name(&none).unwrap().create().expect("start the balloon-less guest");
    let obs = hv.observe().expect("observe");
    let v = find(&obs, &none);
    assert_eq!((v.state, v.balloon), (VmState::Running, None));
    match hv.set_memory(&VmId::new(&none), Bytes::from_mib(64)) {
        Err(HvError::NoBalloon(vm)) => assert_eq!(vm.as_str(), none),
        other => panic!("expected NoBalloon, got {other:?}"),
    }
    assert_eq!(hv.ebb_metadata(&VmId::new(&none)).unwrap(), None);
    assert!(obs.host.total > Bytes::from_gib(1), "node memory stats: {:?}", obs.host);
    assert!(obs.host.available > Bytes::ZERO && obs.host.available <= obs.host.total);
    drop(guard);
}

/// A unix-socket proxy in front of libvirtd's socket that can cut every
/// connection through it, as a libvirtd restart would.
struct Proxy {
    path: PathBuf,
    streams: Arc<Mutex<Vec<UnixStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let path = std::env::temp_dir().join(format!("ebb-bk-proxy-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind proxy socket");
        let streams: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let kept = streams.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = UnixStream::connect(SOCKET) else { continue };
                let pump = |mut from: UnixStream, mut to: UnixStream| {
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server.try_clone().unwrap(), client.try_clone().unwrap());
                kept.lock().unwrap().extend([client, server]);
            }
        });
        Proxy { path, streams }
    }

    fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.path.display())
    }

    fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn dropped_connection_is_unreachable() {
    require_libvirtd();
    let proxy = Proxy::start();
    let mut hv = LibvirtHypervisor::connect(&proxy.uri()).expect("connect through the proxy");
    hv.observe().expect("observe through the proxy");

    proxy.cut();
    let err = hv.observe().expect_err("observe on a cut connection");
    eprintln!("after the cut: {err}");
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(err.to_string().contains(&proxy.uri()), "{err}");
    // Per-VM operations on the dead connection say the same.
    let err = hv.set_memory(&VmId::new("ebb-any"), Bytes::from_mib(256)).expect_err("set memory on a cut connection");
    assert!(err.is_connection_lost(), "{err:?}");

    // The agent reconnects by connecting anew.
    let mut hv = LibvirtHypervisor::connect(&proxy.uri()).expect("reconnect");
    hv.observe().expect("observe after reconnect");
    let _ = std::fs::remove_file(&proxy.path);
}
