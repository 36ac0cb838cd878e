//! The libvirt backend against libvirt's built-in test driver (no daemon):
//! `test:///default` and generated node files.
//!
//! Connections to `test:///default` within one process share one in-memory
//! host while any of them is open, and tests run in parallel: each test
//! changes only what it alone looks at (its own domains, or `test`'s memory
//! in one test only).
#![cfg(feature = "libvirt")]

use ebb_backends::libvirt::{test_node_xml, LibvirtHypervisor};
use ebb_backends::{HvError, Hypervisor, EBB_METADATA_NS};
use ebb_core::{Bytes, VmId, VmState};

const DEFAULT: &str = "test:///default";

fn connect() -> LibvirtHypervisor {
    LibvirtHypervisor::connect(DEFAULT).expect("test:///default opens without a daemon")
}

/// Defines an inactive domain on the shared default test host.
fn define(hv: &LibvirtHypervisor, name: &str, balloon: &str) {
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory>\
         <currentMemory unit='MiB'>192</currentMemory><os><type>hvm</type></os>\
         <devices><memballoon model='{balloon}'/></devices></domain>"
    );
    hv.connection().define_domain_xml(&xml).expect("define test domain");
}

#[test]
fn observes_the_default_domain() {
    let mut hv = connect();
    assert_eq!(hv.uri(), DEFAULT);
    let obs = hv.observe().expect("observe");
    let test = obs.vms.iter().find(|v| v.id.as_str() == "test").expect("domain `test` listed");
    assert_eq!(test.state, VmState::Running);
    let b = test.balloon.as_ref().expect("`test` has a virtio memballoon");
    // The default domain: <memory> 8 GiB, <currentMemory> 2 GiB (another
    // test may have changed current, never the maximum).
    assert_eq!(b.maximum, Bytes::from_gib(8));
    assert!(b.current > Bytes::ZERO && b.current <= b.maximum, "current {}", b.current);
    assert_eq!(b.stats, None, "the test driver sends no guest stats");
    // The default node: 3 GiB (nodeinfo), no node memory stats.
    assert_eq!(obs.host.total, Bytes::from_gib(3));
    assert!(obs.host.available <= obs.host.total);
}

#[test]
fn the_crates_constructor_picks_libvirt_for_a_libvirt_uri() {
    let mut hv = ebb_backends::connect(DEFAULT).expect("test:///default opens without a daemon");
    assert_eq!(hv.uri(), DEFAULT);
    assert!(hv.observe().expect("observe").vms.iter().any(|v| v.id.as_str() == "test"));
    let e = ebb_backends::connect("nosuchdriver:///x").err().expect("no driver takes it");
    assert!(e.is_connection_lost(), "{e:?}");
}

#[test]
fn set_memory_shows_in_the_next_observation() {
    let mut hv = connect();
    let vm = VmId::new("test");
    for target in [Bytes::from_mib(1536), Bytes::from_mib(3000)] {
        hv.set_memory(&vm, target).expect("set memory");
        let obs = hv.observe().expect("observe");
        let b = obs.vms.iter().find(|v| v.id == vm).unwrap().balloon.clone().unwrap();
        assert_eq!(b.current, target);
        assert_eq!(b.maximum, Bytes::from_gib(8));
    }
    // Live only: the persistent definition keeps its 2 GiB.
    let dom = hv.connection().lookup_domain_by_name("test").unwrap();
    let config = dom.xml_desc(virt_sys::VIR_DOMAIN_XML_INACTIVE).unwrap();
    assert!(config.contains("<currentMemory unit='KiB'>2097152</currentMemory>"), "{config}");
    // Above the maximum: libvirt refuses, and it is not a balloon problem.
    match hv.set_memory(&vm, Bytes::from_gib(9)) {
        Err(HvError::Operation { op: "set memory", vm: v, detail }) => {
            assert_eq!(v, vm);
            assert!(!detail.to_string().is_empty());
        }
        other => panic!("expected an operation error, got {other:?}"),
    }
}

#[test]
fn set_memory_on_a_missing_domain_is_no_such_vm() {
    let mut hv = connect();
    let vm = VmId::new("ebb-no-such-domain");
    match hv.set_memory(&vm, Bytes::from_mib(512)) {
        Err(HvError::NoSuchVm(v)) => assert_eq!(v, vm),
        other => panic!("expected NoSuchVm, got {other:?}"),
    }
    assert!(matches!(hv.ebb_metadata(&vm), Err(HvError::NoSuchVm(_))));
}

#[test]
fn metadata_round_trip() {
    let mut hv = connect();
    define(&hv, "ebb-meta-none", "virtio");
    assert_eq!(hv.ebb_metadata(&VmId::new("ebb-meta-none")).unwrap(), None);

    define(&hv, "ebb-meta-some", "virtio");
    let dom = hv.connection().lookup_domain_by_name("ebb-meta-some").unwrap();
    dom.set_metadata(
        virt_sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some("<vm shares=\"2000\"><min>256MiB</min></vm>"),
        Some("ebb"),
        Some(EBB_METADATA_NS),
        0,
    )
    .expect("set metadata");
    let xml = hv.ebb_metadata(&VmId::new("ebb-meta-some")).unwrap().expect("metadata present");
    assert!(xml.contains("shares=\"2000\""), "{xml}");
    assert!(xml.contains("<min>256MiB</min>"), "{xml}");

    // Another namespace's element is not ebb's.
    define(&hv, "ebb-meta-other", "virtio");
    let dom = hv.connection().lookup_domain_by_name("ebb-meta-other").unwrap();
    dom.set_metadata(
        virt_sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some("<x/>"),
        Some("other"),
        Some("https://example.org/other"),
        0,
    )
    .unwrap();
    assert_eq!(hv.ebb_metadata(&VmId::new("ebb-meta-other")).unwrap(), None);
}

#[test]
fn inactive_and_balloonless_domains() {
    let mut hv = connect();
    define(&hv, "ebb-off-virtio", "virtio");
    define(&hv, "ebb-off-none", "none");
    let obs = hv.observe().unwrap();
    let find = |n: &str| obs.vms.iter().find(|v| v.id.as_str() == n).unwrap_or_else(|| panic!("{n} listed"));

    let on = find("ebb-off-virtio");
    assert_eq!(on.state, VmState::ShutOff);
    let b = on.balloon.as_ref().expect("virtio balloon");
    assert_eq!((b.current, b.maximum), (Bytes::from_mib(192), Bytes::from_mib(256)));

    let none = find("ebb-off-none");
    assert_eq!(none.state, VmState::ShutOff);
    assert_eq!(none.balloon, None, "<memballoon model='none'/> means no balloon");

    // Live-only on a shut off domain: libvirt refuses; not a balloon problem.
    match hv.set_memory(&VmId::new("ebb-off-virtio"), Bytes::from_mib(128)) {
        Err(HvError::Operation { detail, .. }) => assert!(!detail.to_string().is_empty()),
        other => panic!("expected an operation error, got {other:?}"),
    }
}

#[test]
fn unknown_uri_is_unreachable_with_a_clear_message() {
    let uri = "qemu+tcp://127.0.0.1:1/system";
    match LibvirtHypervisor::connect(uri) {
        Err(e @ HvError::Disconnected { .. }) => {
            assert!(e.is_connection_lost());
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("libvirt at {uri} is not reachable (")), "{msg}");
            assert!(msg.contains("127.0.0.1"), "libvirt's own reason is kept: {msg}");
            assert!(msg.ends_with("is libvirtd running?"), "{msg}");
            // The cause is kept as the source, told once in the message.
            let cause = std::error::Error::source(&e).expect("libvirt's error is the source");
            assert!(msg.contains(&format!("({cause})")) && msg.matches("is not reachable").count() == 1, "{msg}");
            assert!(std::error::Error::source(cause).is_some_and(|s| s.to_string().contains("code=")), "libvirt's own error, with its code, under it");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // A URI no driver takes.
    assert!(matches!(LibvirtHypervisor::connect("nosuchdriver:///x"), Err(HvError::Disconnected { .. })));
}

#[test]
fn node_file_with_100_domains() {
    let xml = test_node_xml(100);
    assert_eq!(xml.matches("<domain type='test'>").count(), 100);
    let dir = std::env::temp_dir().join(format!("ebb-backends-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node-100.xml");
    std::fs::write(&path, xml).unwrap();
    let uri = format!("test://{}", path.display());

    let mut hv = LibvirtHypervisor::connect(&uri).expect("node file loads");
    let started = std::time::Instant::now();
    let obs = hv.observe().expect("observe");
    let first = started.elapsed();
    let started = std::time::Instant::now();
    let again = hv.observe().expect("observe again");
    eprintln!("observe of 100 test domains: first {first:?}, then {:?}", started.elapsed());
    assert_eq!(again, obs);

    assert_eq!(obs.vms.len(), 100);
    let mut names: Vec<_> = obs.vms.iter().map(|v| v.id.as_str().to_owned()).collect();
    names.sort();
    assert_eq!(names.first().map(String::as_str), Some("ebb-bench-000"));
    assert_eq!(names.last().map(String::as_str), Some("ebb-bench-099"));
    for v in &obs.vms {
        assert_eq!(v.state, VmState::Running, "{}", v.id);
        let b = v.balloon.as_ref().unwrap_or_else(|| panic!("{} has a balloon", v.id));
        assert!(b.maximum >= Bytes::from_mib(128) && b.maximum <= Bytes::from_mib(512), "{}", b.maximum);
        assert_eq!(b.current, b.maximum);
    }
    let guests: Bytes = obs.vms.iter().map(|v| v.balloon.as_ref().unwrap().current).sum();
    assert_eq!(guests, Bytes::from_mib(128 * (1 + 2 + 3 + 4) * 25));
    assert_eq!(obs.host.available, obs.host.total - guests, "no node stats: total minus running guests");

    hv.set_memory(&VmId::new("ebb-bench-007"), Bytes::from_mib(300)).unwrap();
    let obs = hv.observe().unwrap();
    let b = obs.vms.iter().find(|v| v.id.as_str() == "ebb-bench-007").unwrap().balloon.clone().unwrap();
    assert_eq!(b.current, Bytes::from_mib(300));
    let _ = std::fs::remove_dir_all(&dir);
}

fn vm_obs(hv: &mut LibvirtHypervisor, name: &str) -> ebb_core::VmObservation {
    hv.observe().unwrap().vms.into_iter().find(|v| v.id.as_str() == name).unwrap_or_else(|| panic!("{name} listed"))
}

/// The test driver saves, restores, pauses and resumes (in memory), and
/// reports no activity counters.
#[test]
fn save_start_pause_resume() {
    let mut hv = connect();
    let name = "ebb-sleep-persistent";
    let vm = VmId::new(name);
    define(&hv, name, "virtio");
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.persistent, v.managed_save, v.activity), (VmState::ShutOff, true, false, None));
    assert!(hv.save(&vm).is_err(), "a shut-off domain cannot be saved");

    hv.start(&vm).expect("cold start");
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.managed_save), (VmState::Running, false));
    assert_eq!(v.activity, None, "the test driver has no cpu/net/block stats");

    hv.save(&vm).expect("managed save");
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.managed_save), (VmState::ShutOff, true));
    hv.start(&vm).expect("restore");
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.managed_save), (VmState::Running, false));

    hv.pause(&vm).expect("pause");
    assert_eq!(vm_obs(&mut hv, name).state, VmState::Paused);
    hv.resume(&vm).expect("resume");
    assert_eq!(vm_obs(&mut hv, name).state, VmState::Running);
    match hv.resume(&vm) {
        Err(HvError::Operation { op: "resume", detail, .. }) => assert!(!detail.to_string().is_empty()),
        other => panic!("expected an operation error, got {other:?}"),
    }

    hv.save(&vm).unwrap();
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.managed_save), (VmState::ShutOff, true));
    assert!(matches!(hv.start(&VmId::new("ebb-no-such-domain")), Err(HvError::NoSuchVm(_))));
}

#[test]
fn a_transient_domain_cannot_be_saved() {
    let mut hv = connect();
    let name = "ebb-sleep-transient";
    let xml = format!(
        "<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory>\
         <os><type>hvm</type></os></domain>"
    );
    hv.connection().create_domain_xml(&xml, 0).expect("create a transient domain");
    let v = vm_obs(&mut hv, name);
    assert_eq!((v.state, v.persistent), (VmState::Running, false));
    let err = hv.save(&VmId::new(name)).expect_err("managedsave of a transient domain");
    assert!(matches!(err, HvError::Transient(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("domain {name} is transient: only a persistent domain can be saved; define it with virsh define (or let it sleep by pausing)")
    );
    assert_eq!(vm_obs(&mut hv, name).state, VmState::Running, "still running");
    hv.pause(&VmId::new(name)).expect("a transient domain can be paused");
    let _ = hv.connection().lookup_domain_by_name(name).and_then(|d| d.destroy());
}

#[test]
fn disk_sources_of_the_default_domain() {
    let mut hv = connect();
    assert_eq!(hv.disk_sources(&VmId::new("test")).unwrap(), vec![std::path::PathBuf::from("/guest/diskimage1")]);
    assert!(matches!(hv.disk_sources(&VmId::new("no-such-domain")), Err(HvError::NoSuchVm(_))));
}
