//! The in-memory hypervisor: balloons move at their rate, stall on demand,
//! guests swap or oom-kill when squeezed, and the connection fails on demand.

use ebb_backends::sim::{SetMemoryCall, SimHypervisor, SimVm};
use ebb_backends::{HvError, Hypervisor};
use ebb_core::{Bytes, VmId, VmObservation, VmState};

fn mib(n: u64) -> Bytes {
    Bytes::from_mib(n)
}

fn vm_obs(hv: &mut SimHypervisor, id: &VmId) -> VmObservation {
    hv.observe().unwrap().vms.into_iter().find(|v| &v.id == id).unwrap()
}

fn current(hv: &mut SimHypervisor, id: &VmId) -> Bytes {
    vm_obs(hv, id).balloon.unwrap().current
}

#[test]
fn observe_reflects_the_guests_and_host() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    hv.add_vm(SimVm { used: mib(200), ..SimVm::new("web", mib(1024)) });
    hv.add_vm(SimVm { has_balloon: false, ..SimVm::new("plain", mib(512)) });
    hv.add_vm(SimVm { state: VmState::ShutOff, ..SimVm::new("off", mib(2048)) });
    hv.set_host_used(mib(1000));

    let obs = hv.observe().unwrap();
    assert_eq!(obs.host.total, Bytes::from_gib(8));
    // Running guests (1024 + 512) and the host's own 1000 MiB are taken.
    assert_eq!(obs.host.available, mib(8192 - 1000 - 1024 - 512));
    assert_eq!(obs.vms.len(), 3);

    let web = vm_obs(&mut hv, &VmId::new("web"));
    let b = web.balloon.unwrap();
    assert_eq!((b.current, b.maximum), (mib(1024), mib(1024)));
    let s = b.stats.expect("web sends stats");
    assert_eq!(s.total, mib(1024));
    assert_eq!(s.used(), mib(200));
    assert_eq!(s.oom_kills, None, "not a Linux ≥ 6.12 guest");

    assert_eq!(vm_obs(&mut hv, &VmId::new("plain")).balloon, None);
    let off = vm_obs(&mut hv, &VmId::new("off"));
    assert_eq!(off.state, VmState::ShutOff);
    assert_eq!(off.balloon.unwrap().stats, None, "a shut off guest sends nothing");
}

#[test]
fn balloon_moves_toward_target_at_its_rate() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    let web = VmId::new("web");
    hv.add_vm(SimVm { used: mib(100), ..SimVm::new("web", mib(2048)) });

    hv.set_memory(&web, mib(1024)).unwrap();
    assert_eq!(current(&mut hv, &web), mib(2048), "nothing moves before time passes");
    hv.advance(500); // 1 GiB/s: 512 MiB
    assert_eq!(current(&mut hv, &web), mib(1536));
    hv.advance(2000);
    assert_eq!(current(&mut hv, &web), mib(1024), "stops at the target");

    hv.set_balloon_rate(mib(100));
    hv.set_memory(&web, mib(1324)).unwrap();
    hv.advance(1000);
    assert_eq!(current(&mut hv, &web), mib(1124), "grows at the set rate");

    assert_eq!(
        hv.calls(),
        vec![
            SetMemoryCall { vm: web.clone(), target: mib(1024), at_ms: 0 },
            SetMemoryCall { vm: web.clone(), target: mib(1324), at_ms: 2500 },
        ]
    );
    assert_eq!(hv.status(&web).unwrap().swap_out, Bytes::ZERO);
}

#[test]
fn stalled_balloon_stays_put() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    let web = VmId::new("web");
    hv.add_vm(SimVm::new("web", mib(1024)));
    hv.set_stalled(&web, true);
    hv.set_memory(&web, mib(512)).unwrap();
    hv.advance(5000);
    assert_eq!(current(&mut hv, &web), mib(1024));
    hv.set_stalled(&web, false);
    hv.advance(5000);
    assert_eq!(current(&mut hv, &web), mib(512));

    // A paused guest's balloon does not move either.
    hv.set_state(&web, VmState::Paused);
    hv.set_memory(&web, mib(768)).unwrap();
    hv.advance(5000);
    assert_eq!(current(&mut hv, &web), mib(512));
}

#[test]
fn squeezed_guests_swap_or_lose_a_process() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    let (swappy, tight) = (VmId::new("swappy"), VmId::new("tight"));
    hv.add_vm(SimVm { used: mib(300), ..SimVm::new("swappy", mib(512)) });
    hv.add_vm(SimVm { used: mib(300), has_swap: false, reports_oom: true, ..SimVm::new("tight", mib(512)) });

    for vm in [&swappy, &tight] {
        hv.set_memory(vm, mib(256)).unwrap();
    }
    hv.advance(1000);

    let s = hv.status(&swappy).unwrap();
    assert_eq!((s.vm.current, s.swap_out, s.swapped, s.oom_kills), (mib(256), mib(44), mib(44), 0));
    let stats = vm_obs(&mut hv, &swappy).balloon.unwrap().stats.unwrap();
    assert_eq!(stats.swap_out, mib(44));
    assert_eq!(stats.usable, Bytes::ZERO);

    let t = hv.status(&tight).unwrap();
    assert_eq!((t.oom_kills, t.swap_out), (1, Bytes::ZERO));
    assert!(t.vm.used < mib(256), "the killed process's memory came back: {}", t.vm.used);
    let stats = vm_obs(&mut hv, &tight).balloon.unwrap().stats.unwrap();
    assert_eq!(stats.oom_kills, Some(1));

    // Room again: the swapped pages fault back in.
    hv.set_memory(&swappy, mib(512)).unwrap();
    hv.advance(1000);
    let s = hv.status(&swappy).unwrap();
    assert_eq!((s.swapped, s.swap_in), (Bytes::ZERO, mib(44)));
    assert_eq!(s.major_faults, 44 * 256);

    // More demand than the guest has shows at once, without a balloon move.
    hv.set_used(&swappy, mib(600));
    assert_eq!(hv.status(&swappy).unwrap().swap_out, mib(44 + 88));
}

#[test]
fn unreachable_toggle_and_reconnect() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    let web = VmId::new("web");
    hv.add_vm(SimVm { metadata: Some("<vm shares='500'/>".into()), ..SimVm::new("web", mib(1024)) });

    // One call fails, the next works.
    hv.fail_next_call();
    let err = hv.observe().unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert!(hv.observe().is_ok());

    // Down until told otherwise; a handle the test keeps drives the agent's.
    let driver = hv.clone();
    driver.set_reachable(false);
    assert!(matches!(hv.set_memory(&web, mib(512)), Err(HvError::Disconnected { .. })));
    assert!(matches!(hv.ebb_metadata(&web), Err(HvError::Disconnected { .. })));
    assert!(driver.connect().unwrap_err().is_connection_lost());
    assert!(hv.calls().is_empty(), "failed calls are not recorded");
    driver.set_reachable(true);
    // As the agent reconnects: a new handle from its connector, same world.
    let mut hv = driver.connect().unwrap();
    assert_eq!(driver.connects(), 1);
    hv.set_memory(&web, mib(512)).unwrap();
    assert_eq!(driver.calls().len(), 1);
    assert_eq!(hv.ebb_metadata(&web).unwrap().as_deref(), Some("<vm shares='500'/>"));
    driver.set_metadata(&web, None);
    assert_eq!(hv.ebb_metadata(&web).unwrap(), None);
}

#[test]
fn set_memory_errors() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(8));
    hv.add_vm(SimVm { has_balloon: false, ..SimVm::new("plain", mib(512)) });
    hv.add_vm(SimVm { state: VmState::ShutOff, ..SimVm::new("off", mib(512)) });
    hv.add_vm(SimVm::new("web", mib(512)));

    assert!(matches!(hv.set_memory(&VmId::new("nope"), mib(256)), Err(HvError::NoSuchVm(_))));
    assert!(matches!(hv.set_memory(&VmId::new("plain"), mib(256)), Err(HvError::NoBalloon(_))));
    assert!(matches!(hv.set_memory(&VmId::new("off"), mib(256)), Err(HvError::Operation { .. })));
    assert!(matches!(hv.set_memory(&VmId::new("web"), mib(1024)), Err(HvError::Operation { .. })));
    assert!(hv.calls().is_empty());
    assert!(matches!(hv.ebb_metadata(&VmId::new("nope")), Err(HvError::NoSuchVm(_))));
}

#[test]
fn save_frees_memory_and_start_restores_after_the_delay() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(4));
    hv.add_vm(SimVm { cpu_load: 0.5, ..SimVm::new("web", mib(1024)) });
    let web = VmId::new("web");
    hv.advance(1000);
    let v = vm_obs(&mut hv, &web);
    assert_eq!(v.activity.unwrap().cpu_time_ns, 500_000_000, "half a vCPU for a second");
    assert!(v.persistent && !v.managed_save);
    hv.add_io(&web, 10, 20, 30, 40);
    let a = vm_obs(&mut hv, &web).activity.unwrap();
    assert_eq!((a.net_rx_bytes, a.net_tx_bytes, a.disk_read_bytes, a.disk_write_bytes), (10, 20, 30, 40));

    hv.save(&web).expect("save");
    let obs = hv.observe().unwrap();
    assert_eq!(obs.host.available, Bytes::from_gib(4), "its memory went back to the host");
    let v = vm_obs(&mut hv, &web);
    assert_eq!((v.state, v.managed_save, v.activity), (VmState::ShutOff, true, None));
    assert!(hv.save(&web).is_err(), "a shut-off VM cannot be saved again");

    hv.set_restore_delay(400);
    hv.start(&web).expect("start");
    let v = vm_obs(&mut hv, &web);
    assert_eq!((v.state, v.managed_save), (VmState::Paused, false), "restoring");
    assert!(hv.resume(&web).is_err(), "a restore in flight is not a pause");
    hv.advance(399);
    assert_eq!(vm_obs(&mut hv, &web).state, VmState::Paused);
    hv.advance(1);
    let v = vm_obs(&mut hv, &web);
    assert_eq!(v.state, VmState::Running);
    assert_eq!(v.activity.unwrap().cpu_time_ns, 0, "a new QEMU process: counters start again");
    assert_eq!(hv.observe().unwrap().host.available, Bytes::from_gib(3));
    assert!(hv.start(&web).is_err(), "already running");
}

#[test]
fn pause_resume_and_save() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(4));
    hv.add_vm(SimVm::new("web", mib(1024)));
    let web = VmId::new("web");
    assert!(hv.resume(&web).is_err(), "not paused");
    hv.pause(&web).expect("pause");
    assert_eq!(vm_obs(&mut hv, &web).state, VmState::Paused);
    assert_eq!(hv.observe().unwrap().host.available, Bytes::from_gib(3), "a paused VM keeps its memory");
    assert!(hv.pause(&web).is_err(), "already paused");
    hv.resume(&web).expect("resume");
    assert_eq!(vm_obs(&mut hv, &web).state, VmState::Running);

    hv.save(&web).unwrap();
    let v = vm_obs(&mut hv, &web);
    assert_eq!((v.state, v.managed_save), (VmState::ShutOff, true));
}

#[test]
fn save_and_start_failures() {
    let mut hv = SimHypervisor::new(Bytes::from_gib(4));
    hv.add_vm(SimVm { persistent: false, ..SimVm::new("tr", mib(512)) });
    hv.add_vm(SimVm::new("web", mib(512)));
    let (tr, web) = (VmId::new("tr"), VmId::new("web"));
    assert!(!vm_obs(&mut hv, &tr).persistent);
    match hv.save(&tr) {
        Err(HvError::Transient(v)) => assert_eq!(v, tr),
        other => panic!("expected Transient, got {other:?}"),
    }
    assert_eq!(vm_obs(&mut hv, &tr).state, VmState::Running, "a refused save leaves the VM running");
    hv.pause(&tr).expect("a transient VM can be paused");

    hv.set_fail_save(&web, Some("No space left on device"));
    match hv.save(&web) {
        Err(HvError::Operation { op: "save", detail, .. }) => assert_eq!(detail.to_string(), "No space left on device"),
        other => panic!("expected a save error, got {other:?}"),
    }
    assert_eq!(vm_obs(&mut hv, &web).state, VmState::Running);
    hv.set_fail_save(&web, None);
    hv.save(&web).unwrap();
    hv.set_fail_start(&web, Some("cannot read the save image"));
    assert!(matches!(hv.start(&web), Err(HvError::Operation { op: "start", .. })));
    let v = vm_obs(&mut hv, &web);
    assert_eq!((v.state, v.managed_save), (VmState::ShutOff, true), "a failed start keeps the image");
    hv.set_fail_start(&web, None);
    hv.start(&web).unwrap();
    assert!(matches!(hv.save(&VmId::new("nope")), Err(HvError::NoSuchVm(_))));
}
