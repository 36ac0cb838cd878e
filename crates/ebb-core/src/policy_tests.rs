use super::*;
use crate::devices::{CpuFreq, DeviceConfig, DevicePolicy};
use crate::human::Span;
use crate::memory::{MemoryConfig, MemoryPolicy};
use crate::sleep::{SleepPolicy, SleepSettings};
use crate::{Activity, Balloon, BalloonFeatures, Bytes, GuestMemStats, HostMemory, Observation, Reason, Rule, SleepMode, Tune, VmId, VmObservation, VmState};
use std::collections::BTreeMap;

fn failed() -> Outcome {
    Err(ActionError::Failed("refused".into()))
}

fn reason() -> Reason {
    Reason::new(Rule::Hold, "test")
}

/// One action of every other kind, for `vm`.
fn others(vm: &VmId) -> Vec<Action> {
    let tune = Tune { shares: 100, quota_us: None, period_us: 100_000, io_weight: None, net: None, disk_limit: None };
    vec![
        Action::SetBalloonTarget { vm: vm.clone(), target: Bytes::from_mib(512), reason: reason() },
        Action::Sleep { vm: vm.clone(), mode: SleepMode::Save, reason: reason() },
        Action::SetTune { vm: vm.clone(), tune, reason: reason() },
        Action::SetPins { vm: vm.clone(), pins: vec![], reason: reason() },
        Action::SetGuestVcpus { vm: vm.clone(), count: 1, reason: reason() },
        Action::Shutdown { vm: vm.clone(), reason: reason() },
        Action::DiskStandby { disk: "sda".into(), reason: reason() },
    ]
}

fn cpu() -> Vec<CpuFreq> {
    vec![CpuFreq { cpu: 0, governor: "performance".into(), governors: vec!["performance".into(), "powersave".into()], max_khz: 3_000_000, hw_min_khz: 800_000, hw_max_khz: 3_000_000 }]
}

fn device_cfg() -> DeviceConfig {
    DeviceConfig { cpufreq: true, cpu_low_after: Span::from_secs(10), ..DeviceConfig::default() }
}

#[test]
fn a_failed_cpu_save_keeps_the_device_policy_not_saving_until_another_hold() {
    let (mut p, cfg, cpus) = (DevicePolicy::new(), device_cfg(), cpu());
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
    let [save @ Action::CpuSave { .. }] = &d.actions[..] else { panic!("{:?}", d.actions) };
    p.outcome(save, &failed(), Millis(10_000));
    assert!(p.cpu_changes().is_none(), "nothing was written: nothing is held");
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(15_000));
    assert!(d.actions.is_empty() && !d.host.saving, "{:?}", d.actions);
    // A whole hold after the failure, it is tried again; once written, it is held.
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(20_000));
    assert_eq!(d.actions.len(), 1);
    p.outcome(&d.actions[0], &Ok(()), Millis(20_000));
    assert!(p.cpu_changes().is_some());
}

#[test]
fn the_device_policy_ignores_outcomes_of_other_policies_actions() {
    let (mut p, cfg, cpus) = (DevicePolicy::new(), device_cfg(), cpu());
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    assert_eq!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000)).actions.len(), 1);
    // Its own save is left unreported; everyone else's fail.
    for a in others(&VmId::new("web")).iter().filter(|a| a.vm().is_some()) {
        p.outcome(a, &failed(), Millis(10_000));
        p.outcome(a, &Ok(()), Millis(10_000));
    }
    assert!(p.cpu_changes().is_none());
    assert_eq!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(15_000)).actions.len(), 1, "no hold started by another's failure");
}

fn quiet(at: u64) -> Observation {
    let vm = |name: &str| VmObservation {
        id: VmId::new(name),
        state: VmState::Running,
        balloon: None,
        activity: Some(Activity::default()),
        persistent: true,
        managed_save: false,
        tune: None,
    };
    Observation { at: Millis(at), vms: vec![vm("web")], ..Observation::default() }
}

/// Ticks every 10 s until the policy proposes sleep; when.
fn sleeps_at(p: &mut SleepPolicy, from: u64, settings: &BTreeMap<VmId, SleepSettings>) -> u64 {
    (1..100).map(|i| from + i * 10_000).find(|&t| !p.decide(&quiet(t), settings, &BTreeMap::new(), Millis(t)).actions.is_empty()).expect("sleeps")
}

#[test]
fn the_sleep_policy_restarts_the_window_on_its_vms_wake_only() {
    let web = VmId::new("web");
    let settings = BTreeMap::from([(web.clone(), SleepSettings { enabled: true, idle_after: Span::from_secs(60), ..SleepSettings::default() })]);
    let (mut woken, mut other) = (SleepPolicy::new(), SleepPolicy::new());
    for p in [&mut woken, &mut other] {
        p.decide(&quiet(0), &settings, &BTreeMap::new(), Millis(0));
        p.decide(&quiet(30_000), &settings, &BTreeMap::new(), Millis(30_000));
    }
    woken.outcome(&Action::Wake { vm: web.clone(), reason: reason() }, &Ok(()), Millis(30_000));
    // Another VM's wake, a failed wake and other policies' actions change nothing.
    other.outcome(&Action::Wake { vm: VmId::new("db"), reason: reason() }, &Ok(()), Millis(30_000));
    other.outcome(&Action::Wake { vm: web.clone(), reason: reason() }, &failed(), Millis(30_000));
    for a in others(&web) {
        other.outcome(&a, &failed(), Millis(30_000));
        other.outcome(&a, &Ok(()), Millis(30_000));
    }
    assert_eq!(sleeps_at(&mut other, 30_000, &settings), 60_000);
    assert!(sleeps_at(&mut woken, 30_000, &settings) >= 100_000, "a fresh window from its next observation");
}

#[test]
fn the_memory_policy_learns_from_its_own_failed_targets_only() {
    let web = VmId::new("web");
    let size = Bytes::from_mib(4096);
    let stats = GuestMemStats { total: size, unused: Bytes::from_mib(3072), usable: Bytes::from_mib(3072), ..GuestMemStats::default() };
    let vm = VmObservation {
        id: web.clone(),
        state: VmState::Running,
        balloon: Some(Balloon { current: size, maximum: size, stats: Some(stats), features: BalloonFeatures::default(), host_rss: None }),
        activity: None,
        persistent: true,
        managed_save: false,
        tune: None,
    };
    let obs = |at: u64| Observation { at: Millis(at), host: HostMemory::default(), host_cpus: 1, vms: vec![vm.clone()] };
    let cfg = MemoryConfig { pool: Some(Bytes::from_mib(2048)), ..MemoryConfig::default() };
    let settings = BTreeMap::new();
    let (mut told, mut untold) = (MemoryPolicy::new(), MemoryPolicy::new());
    let first = told.decide(&obs(0), &settings, &cfg, Millis(0));
    assert_eq!(untold.decide(&obs(0), &settings, &cfg, Millis(0)), first);
    let [own @ Action::SetBalloonTarget { .. }] = &first.actions[..] else { panic!("{:?}", first.actions) };
    for a in others(&web).iter().filter(|a| !matches!(a, Action::SetBalloonTarget { .. })) {
        told.outcome(a, &failed(), Millis(0));
    }
    assert_eq!(told.decide(&obs(2000), &settings, &cfg, Millis(2000)), untold.decide(&obs(2000), &settings, &cfg, Millis(2000)));
    // Its own failed target never reached libvirt.
    told.outcome(own, &failed(), Millis(2000));
    let (after, before) = (told.decide(&obs(4000), &settings, &cfg, Millis(4000)), untold.decide(&obs(4000), &settings, &cfg, Millis(4000)));
    assert_ne!(before.views[0].target, before.views[0].actual, "still steering to the target it believes sent");
    assert_eq!(after.views[0].target, after.views[0].actual, "the failed target is forgotten");
}

#[test]
fn per_vm_actions_keep_their_json_and_host_actions_have_none() {
    let a = Action::SetBalloonTarget { vm: VmId::new("web"), target: Bytes(1024), reason: Reason::new(Rule::Reclaim, "idle") };
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"kind":"set_balloon_target","vm":"web","target":1024,"reason":{"rule":"reclaim","text":"idle"}}"#
    );
    let back: Action = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back, a);
    let host = Action::DiskStandby { disk: "sda".into(), reason: reason() };
    assert_eq!((host.vm(), host.kind()), (None, "disk_standby"));
    assert!(serde_json::to_string(&host).unwrap().starts_with(r#"{"kind":"disk_standby","disk":"sda""#));
}

#[test]
fn reallocation_affinity_and_vcpus_take_in_their_own_outcomes_only() {
    use crate::affinity::{AffinityPolicy, Pins};
    use crate::cpuset::CpuSet;
    use crate::realloc::{ReallocPolicy, Tunes};
    use crate::vcpus::{OnlineVcpus, VcpuPolicy};
    let web = VmId::new("web");
    let base = Tune { shares: 1024, quota_us: None, period_us: 100_000, io_weight: None, net: None, disk_limit: None };
    let (mut realloc, mut affinity, mut vcpus) = (ReallocPolicy::new(), AffinityPolicy::new(), VcpuPolicy::new());
    realloc.resume(web.clone(), Tunes { base, applied: None });
    let all = CpuSet::parse("0-1").unwrap();
    affinity.resume(web.clone(), Pins { base: vec![all.clone()], applied: None });
    vcpus.resume(web.clone(), OnlineVcpus { base: 2, applied: None });
    let is_own = |a: &Action, kind: &str| a.kind() == kind;
    for a in others(&web) {
        for result in [Ok(()), failed()] {
            if !is_own(&a, "set_tune") {
                realloc.outcome(&a, &result, Millis(0));
            }
            if !is_own(&a, "set_pins") {
                affinity.outcome(&a, &result, Millis(0));
            }
            if !is_own(&a, "set_guest_vcpus") {
                vcpus.outcome(&a, &result, Millis(0));
            }
        }
    }
    assert_eq!(realloc.tunes(&web).and_then(|t| t.applied), None);
    assert_eq!(affinity.pins(&web).and_then(|p| p.applied.clone()), None);
    assert_eq!(vcpus.state(&web).and_then(|s| s.applied), None);
    // Their own, carried out, is what the VM has now.
    let capped = Tune { quota_us: Some(50_000), ..base };
    realloc.outcome(&Action::SetTune { vm: web.clone(), tune: capped, reason: reason() }, &Ok(()), Millis(0));
    let one = CpuSet::parse("1").unwrap();
    affinity.outcome(&Action::SetPins { vm: web.clone(), pins: vec![one.clone()], reason: reason() }, &Ok(()), Millis(0));
    vcpus.outcome(&Action::SetGuestVcpus { vm: web.clone(), count: 1, reason: reason() }, &Ok(()), Millis(0));
    assert_eq!(realloc.tunes(&web).and_then(|t| t.applied), Some(capped));
    assert_eq!(affinity.pins(&web).and_then(|p| p.applied.clone()), Some(vec![one]));
    assert_eq!(vcpus.state(&web).and_then(|s| s.applied), Some(1));
}
