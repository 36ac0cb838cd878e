//! The libvirt backend against the real QEMU driver (`qemu:///system`):
//! what the test driver cannot show, namely balloon-less domains as QEMU
//! reports them, a connection that drops under the agent, activity counters,
//! and a real managed save and restore.
//!
//! Needs libvirtd running: `scripts/test.sh` starts it (by hand:
//! `virtlogd -d; libvirtd -d`).
#![cfg(feature = "libvirt")]

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ebb_backends::libvirt::LibvirtHypervisor;
use ebb_backends::{HvError, Hypervisor};
use ebb_core::{Bandwidth, Bytes, NetLimit, Tune, VmId, VmState};

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
                // A saved domain keeps its image unless told to drop it.
                let _ = dom.undefine_flags(virt_sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE);
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

/// The QEMU process libvirt runs for a domain, from its pid file.
fn qemu_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/var/run/libvirt/qemu/{name}.pid")).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn observe_vm(hv: &mut LibvirtHypervisor, name: &str) -> ebb_core::VmObservation {
    hv.observe().expect("observe").vms.into_iter().find(|v| v.id.as_str() == name).unwrap_or_else(|| panic!("{name} listed"))
}

/// A 1 MiB blank disk the firmware reads a boot sector from; removed on drop.
struct Image(PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A persistent tiny guest with a disk and a user-mode NIC: counters as QEMU
/// reports them, then managedsave (the QEMU process goes away) and start
/// (restored from the image).
#[test]
fn save_and_restore_on_qemu() {
    require_libvirtd();
    let mut hv = LibvirtHypervisor::connect(SYSTEM).expect("connect to qemu:///system");
    let pid = std::process::id();
    let name = format!("ebb-bk-{pid}-save");
    let vm = VmId::new(&name);
    let image = Image(PathBuf::from(format!("/var/lib/libvirt/images/ebb-bk-{pid}.img")));
    std::fs::File::create(&image.0).and_then(|f| f.set_len(1 << 20)).expect("create the disk image");
    let conn = virt::connect::Connect::open(Some(SYSTEM)).unwrap();
    let guard = Cleanup(conn, vec![name.clone()]);
    // No PXE ROM on the NIC: the firmware sends nothing, and libvirt has no
    // counters for a user-mode NIC anyway (net.count=1, no net.0.*).
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><model type='virtio'/><rom enabled='no'/></interface>\
         <memballoon model='none'/></devices></domain>",
        image.0.display()
    );
    guard.0.define_domain_xml(&xml).expect("define");
    let v = observe_vm(&mut hv, &name);
    assert_eq!((v.state, v.persistent, v.managed_save, v.activity), (VmState::ShutOff, true, false, None));

    hv.start(&vm).expect("cold start");
    let first = observe_vm(&mut hv, &name);
    assert_eq!((first.state, first.managed_save), (VmState::Running, false));
    let mut last = first.activity.expect("QEMU reports activity counters");
    assert!(last.cpu_time_ns > 0);
    // The firmware reads the blank disk's boot sector within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let a = observe_vm(&mut hv, &name).activity.expect("counters while running");
        assert!(a.cpu_time_ns >= last.cpu_time_ns, "{a:?} after {last:?}");
        assert!(a.disk_read_bytes >= last.disk_read_bytes && a.disk_write_bytes >= last.disk_write_bytes);
        assert!(a.net_rx_bytes >= last.net_rx_bytes && a.net_tx_bytes >= last.net_tx_bytes);
        last = a;
        if a.disk_read_bytes > 0 && a.cpu_time_ns > first.activity.unwrap().cpu_time_ns {
            break;
        }
        assert!(Instant::now() < deadline, "no disk reads or CPU time after 15 s: {a:?}");
    }
    eprintln!("running: {last:?}");

    let qemu = qemu_pid(&name).expect("QEMU pid file");
    assert!(alive(qemu));
    let t = Instant::now();
    hv.save(&vm).expect("managed save");
    let save_took = t.elapsed();
    let v = observe_vm(&mut hv, &name);
    assert_eq!((v.state, v.managed_save, v.activity), (VmState::ShutOff, true, None));
    // libvirt reaps QEMU before it returns; allow a moment for /proc.
    let gone = Instant::now() + Duration::from_secs(5);
    while alive(qemu) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(qemu), "QEMU process {qemu} still there after the save");

    let t = Instant::now();
    hv.start(&vm).expect("restore from the managed save");
    let start_took = t.elapsed();
    let v = observe_vm(&mut hv, &name);
    assert_eq!((v.state, v.managed_save), (VmState::Running, false));
    assert!(v.activity.is_some());
    assert_ne!(qemu_pid(&name), Some(qemu), "a new QEMU process");
    eprintln!("128 MiB TCG guest: managedsave {save_took:?}, start from the image {start_took:?}");
    drop(guard);
}

/// A transient domain: the save is refused with a clear error and the guest
/// keeps running.
#[test]
fn transient_domain_is_not_saved_on_qemu() {
    require_libvirtd();
    let mut hv = LibvirtHypervisor::connect(SYSTEM).expect("connect to qemu:///system");
    let name = format!("ebb-bk-{}-transient", std::process::id());
    let conn = virt::connect::Connect::open(Some(SYSTEM)).unwrap();
    let guard = Cleanup(conn, vec![name.clone()]);
    guard.0.create_domain_xml(&domain_xml(&name, "none"), 0).expect("create a transient domain");
    let v = observe_vm(&mut hv, &name);
    assert_eq!((v.state, v.persistent, v.managed_save), (VmState::Running, false, false));
    let qemu = qemu_pid(&name).expect("QEMU pid file");

    let err = hv.save(&VmId::new(&name)).expect_err("managedsave of a transient domain");
    assert!(matches!(&err, HvError::Transient(v) if v.as_str() == name), "{err:?}");
    assert!(err.to_string().contains("is transient: only a persistent domain can be saved; define it with virsh define"), "{err}");
    let v = observe_vm(&mut hv, &name);
    assert_eq!((v.state, v.managed_save), (VmState::Running, false), "still running");
    assert!(alive(qemu));

    // Pausing is the sleep a transient domain can have.
    hv.pause(&VmId::new(&name)).expect("pause");
    assert_eq!(observe_vm(&mut hv, &name).state, VmState::Paused);
    hv.resume(&VmId::new(&name)).expect("resume");
    assert_eq!(observe_vm(&mut hv, &name).state, VmState::Running);
    drop(guard);
}

/// Bandwidth on real QEMU: a firmware-only guest (no PXE ROM: it sends
/// nothing) with a user-mode NIC and an ethernet one on a tap this test
/// names. The user-mode NIC is passed over; the ethernet one reads as
/// unlimited; a limit is either set and read back (a host whose kernel
/// has libvirt's tc modules) or refused as `Bandwidth` with nothing else
/// changed (this host: no sfq, no police action).
#[test]
fn bandwidth_on_qemu() {
    require_libvirtd();
    let mut hv = LibvirtHypervisor::connect(SYSTEM).expect("connect to qemu:///system");
    let pid = std::process::id();
    let (both, user) = (format!("ebb-bk-{pid}-bw"), format!("ebb-bk-{pid}-user"));
    let tap = format!("ebbbk{}", pid % 100_000);
    let conn = virt::connect::Connect::open(Some(SYSTEM)).unwrap();
    let guard = Cleanup(conn, vec![both.clone(), user.clone()]);
    let user_nic = "<interface type='user'><model type='virtio'/><rom enabled='no'/></interface>";
    let eth_nic = format!("<interface type='ethernet'><target dev='{tap}' managed='yes'/><model type='virtio'/><rom enabled='no'/></interface>");
    for (name, nics) in [(&both, format!("{user_nic}{eth_nic}")), (&user, user_nic.to_owned())] {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os><devices>{nics}<memballoon model='none'/></devices></domain>"
        );
        guard.0.create_domain_xml(&xml, 0).expect("start the guest");
    }
    let vm = VmId::new(&both);
    let before = hv.tune(&vm).expect("read the tune");
    assert_eq!(before.net, Some(NetLimit::default()), "the ethernet NIC, unlimited");
    assert_eq!(hv.tune(&VmId::new(&user)).unwrap().net, None, "a user-mode NIC takes no limit");

    let outbound = Bandwidth { average: 512, peak: 0, burst: 0 };
    let wanted = Tune { shares: before.shares * 2, net: Some(NetLimit { outbound, ..NetLimit::default() }), ..before };
    match hv.set_tune(&vm, wanted) {
        Ok(()) => assert_eq!(hv.tune(&vm).unwrap(), wanted, "set and read back"),
        Err(HvError::Bandwidth { vm: v, detail }) => {
            assert_eq!(v, vm);
            let message = HvError::Bandwidth { vm: v, detail: detail.clone() }.to_string();
            assert!(message.contains("sch_sfq") && message.contains("act_police"), "{message}");
            assert!(!detail.to_string().is_empty());
            assert_eq!(hv.tune(&vm).unwrap(), before, "refused before anything else changed");
            // Without a change of limit the rest goes through.
            let cpu_only = Tune { net: before.net, ..wanted };
            hv.set_tune(&vm, cpu_only).expect("CPU weight alone");
            assert_eq!(hv.tune(&vm).unwrap(), cpu_only);
        }
        Err(e) => panic!("expected the limit set or refused as Bandwidth, got {e}"),
    }
    drop(guard);
}
