use super::*;
use crate::policy::ActionError;
use crate::model::{HostMemory, VmObservation};

fn cpu(n: u32, governor: &str, governors: &[&str]) -> CpuFreq {
    CpuFreq {
        cpu: n,
        governor: governor.into(),
        governors: governors.iter().map(|g| g.to_string()).collect(),
        max_khz: 3_000_000,
        hw_min_khz: 800_000,
        hw_max_khz: 3_000_000,
    }
}

fn cfg() -> DeviceConfig {
    DeviceConfig { cpufreq: true, cpu_low_after: Span::from_secs(10), disk_idle_after: Some(Span::from_secs(60)), ..DeviceConfig::default() }
}

/// Applies what the policy asks, as the agent does when every write succeeds.
fn apply(p: &mut DevicePolicy, cpus: &mut [CpuFreq], d: &CpuDecision) {
    for a in &d.actions {
        match a {
            Action::CpuSave { changes, .. } => changes.iter().for_each(|c| write(cpus, &c.applied)),
            Action::CpuRestore { settings, .. } => settings.iter().for_each(|s| write(cpus, s)),
            _ => panic!("{a:?}"),
        }
        p.outcome(a, &Ok(()), Millis(0));
    }
}

fn write(cpus: &mut [CpuFreq], s: &CpuSetting) {
    let c = cpus.iter_mut().find(|c| c.cpu == s.cpu).unwrap();
    if let Some(g) = &s.governor {
        c.governor = g.clone();
    }
    if let Some(k) = s.max_khz {
        c.max_khz = k;
    }
}

#[test]
fn low_use_held_saves_high_use_restores_and_the_band_holds() {
    let (mut p, cfg) = (DevicePolicy::new(), cfg());
    let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"]), cpu(1, "schedutil", &["performance", "powersave", "schedutil"])];
    // Low, but not for long enough yet.
    for t in [0, 2, 4, 8] {
        let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(t * 1000));
        assert!(d.actions.is_empty(), "{t}: {:?}", d.actions);
    }
    let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(10_000));
    let [Action::CpuSave { changes, reason }] = &d.actions[..] else { panic!("{:?}", d.actions) };
    assert!(reason.text.contains("under 25%") && reason.text.contains("10 s"), "{reason}");
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[1].found.governor.as_deref(), Some("schedutil"));
    apply(&mut p, &mut cpus, &d);
    assert!(cpus.iter().all(|c| c.governor == "powersave"));
    // In the band (between low and high): it stays saving, no flapping.
    for t in 11..40 {
        let u = if t % 2 == 0 { 0.45 } else { 0.1 };
        let d = p.decide_cpu(Some(u), &cpus, &cfg, Millis(t * 1000));
        assert!(d.actions.is_empty() && d.host.saving, "{t}");
    }
    // At cpu_high: back at once, each CPU to what was found.
    let d = p.decide_cpu(Some(0.5), &cpus, &cfg, Millis(40_000));
    assert!(matches!(&d.actions[..], [Action::CpuRestore { reason, .. }] if reason.text.contains("50%")));
    apply(&mut p, &mut cpus, &d);
    assert_eq!((cpus[0].governor.as_str(), cpus[1].governor.as_str()), ("performance", "schedutil"));
    // A dip under low right after starts a new hold: no save before it ends.
    let d = p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(41_000));
    assert!(d.actions.is_empty() && !d.host.saving);
    // Between low and high the hold is broken.
    p.decide_cpu(Some(0.3), &cpus, &cfg, Millis(45_000));
    assert!(p.decide_cpu(Some(0.1), &cpus, &cfg, Millis(52_000)).actions.is_empty());
}

#[test]
fn without_the_governor_the_max_frequency_is_capped_and_given_back() {
    let (mut p, cfg) = (DevicePolicy::new(), cfg());
    let mut cpus = vec![cpu(0, "performance", &["performance"])];
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
    apply(&mut p, &mut cpus, &d);
    assert_eq!((cpus[0].governor.as_str(), cpus[0].max_khz), ("performance", 1_500_000));
    // Never below the hardware's lowest.
    let low = CpuFreq { hw_min_khz: 2_000_000, ..cpu(0, "performance", &[]) };
    assert_eq!(low.saving(&cfg).unwrap().applied.max_khz, Some(2_000_000));
    let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(11_000));
    let [Action::CpuRestore { settings, .. }] = &d.actions[..] else { panic!() };
    assert_eq!(settings[0], CpuSetting { cpu: 0, governor: None, max_khz: Some(3_000_000) }, "only what ebb changed");
}

#[test]
fn unknown_use_nothing_to_change_and_off_do_nothing() {
    let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
    let cpus = vec![cpu(0, "powersave", &["performance", "powersave"])];
    for t in 0..20 {
        assert!(p.decide_cpu(None, &cpus, &cfg, Millis(t * 1000)).actions.is_empty());
    }
    // Saving already: nothing to write, nothing held.
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(20_000));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(40_000));
    assert!(d.actions.is_empty() && !d.host.saving);
    cfg.cpufreq = false;
    let cpus = vec![cpu(0, "performance", &["performance", "powersave"])];
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(50_000));
    assert!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(90_000)).actions.is_empty());
}

#[test]
fn a_failed_save_waits_a_whole_hold_and_a_restart_resumes_or_gives_back() {
    let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
    let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"])];
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
    assert_eq!(d.actions.len(), 1);
    p.outcome(&d.actions[0], &Err(ActionError::Failed("write error".into())), Millis(10_000));
    assert!(p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(15_000)).actions.is_empty());
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(20_000));
    apply(&mut p, &mut cpus, &d);
    // A restarted agent resumes the journaled changes and gives them back;
    // with cpufreq turned off it gives them back at once.
    let mut again = DevicePolicy::new();
    again.resume_cpu(p.cpu_changes().unwrap().to_vec());
    assert!(again.decide_cpu(None, &cpus, &cfg, Millis(0)).host.saving);
    cfg.cpufreq = false;
    let d = again.decide_cpu(None, &cpus, &cfg, Millis(0));
    assert!(matches!(&d.actions[..], [Action::CpuRestore { reason, .. }] if reason.text.contains("off in the config")));
}

#[test]
fn a_partly_failed_restore_keeps_the_rest_to_try_again() {
    let (mut p, cfg) = (DevicePolicy::new(), cfg());
    let mut cpus = vec![cpu(0, "performance", &["performance", "powersave"]), cpu(1, "performance", &["performance", "powersave"])];
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
    apply(&mut p, &mut cpus, &d);
    // cpu0 was written back, cpu1's write failed: the agent reports each part.
    cpus[0].governor = "performance".into();
    let part = |cpu: u32| Action::CpuRestore { settings: vec![CpuSetting { cpu, governor: Some("performance".into()), max_khz: None }], reason: power("test".into()) };
    p.outcome(&part(0), &Ok(()), Millis(11_000));
    p.outcome(&part(1), &Err(ActionError::Failed("write error".into())), Millis(11_000));
    let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(11_000));
    assert!(d.host.taken_over.is_empty());
    let [Action::CpuRestore { settings, .. }] = &d.actions[..] else { panic!("{:?}", d.actions) };
    assert_eq!(settings.iter().map(|s| s.cpu).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn a_value_someone_else_writes_is_left_alone() {
    let (mut p, cfg) = (DevicePolicy::new(), cfg());
    let mut cpus = vec![cpu(0, "performance", &["performance", "powersave", "ondemand"]), cpu(1, "performance", &["performance", "powersave"])];
    p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(0));
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(10_000));
    apply(&mut p, &mut cpus, &d);
    cpus[0].governor = "ondemand".into();
    let d = p.decide_cpu(Some(0.0), &cpus, &cfg, Millis(11_000));
    assert_eq!(d.host.taken_over, vec![0]);
    let d = p.decide_cpu(Some(0.9), &cpus, &cfg, Millis(12_000));
    let [Action::CpuRestore { settings, .. }] = &d.actions[..] else { panic!() };
    assert_eq!(settings.iter().map(|s| s.cpu).collect::<Vec<_>>(), vec![1]);
}

#[test]
fn vms_use_is_their_cpu_over_the_hosts_cpus() {
    let mut p = DevicePolicy::new();
    let obs = |at: u64, ns: u64| Observation {
        at: Millis(at),
        host: HostMemory::default(),
        host_cpus: 4,
        vms: vec![VmObservation {
            id: VmId::new("a"),
            state: VmState::Running,
            balloon: None,
            activity: Some(Activity { cpu_time_ns: ns, ..Activity::default() }),
            persistent: true,
            managed_save: false,
            tune: None,
        }],
    };
    assert_eq!(p.observe(&obs(0, 0)), None, "one reading is not a rate");
    assert_eq!(p.observe(&obs(1000, 2_000_000_000)), Some(0.5));
    let none = Observation { vms: vec![], ..obs(2000, 0) };
    assert_eq!(p.observe(&none), Some(0.0));
}

fn disks(io: &[(&str, u64)]) -> Vec<DiskSample> {
    io.iter().map(|(n, io)| DiskSample { name: n.to_string(), io: *io }).collect()
}

#[test]
fn an_idle_disk_goes_to_standby_once_until_used_again_and_a_guarded_one_never() {
    let (mut p, cfg) = (DevicePolicy::new(), cfg());
    let guards: BTreeMap<String, Vec<VmId>> = [("sda".to_string(), vec![VmId::new("web")])].into();
    let standby = |p: &mut DevicePolicy, io: &[(&str, u64)], t: u64| {
        let d = p.decide_disks(&disks(io), &guards, &[], &cfg, Millis(t * 1000));
        let names: Vec<String> = d
            .actions
            .iter()
            .map(|a| match a {
                Action::DiskStandby { disk, .. } => disk.clone(),
                _ => panic!("{a:?}"),
            })
            .collect();
        for a in &d.actions {
            p.outcome(a, &Ok(()), Millis(t * 1000));
        }
        (names, d.views)
    };
    assert!(standby(&mut p, &[("sda", 5), ("sdb", 7)], 0).0.is_empty());
    assert!(standby(&mut p, &[("sda", 5), ("sdb", 7)], 59).0.is_empty());
    let (names, views) = standby(&mut p, &[("sda", 5), ("sdb", 7)], 60);
    assert_eq!(names, vec!["sdb"]);
    assert_eq!(views[0].state, DiskState::Guarded { vms: vec![VmId::new("web")] });
    // Once: not again while it stays unused.
    let (names, views) = standby(&mut p, &[("sda", 5), ("sdb", 7)], 200);
    assert!(names.is_empty());
    assert_eq!(views[1].state, DiskState::Standby { at: Millis(60_000) });
    // Used: active, then idle again for the whole spell before another standby.
    let (_, views) = standby(&mut p, &[("sda", 5), ("sdb", 9)], 201);
    assert_eq!(views[1].state, DiskState::Active);
    assert!(standby(&mut p, &[("sda", 5), ("sdb", 9)], 260).0.is_empty());
    assert_eq!(standby(&mut p, &[("sda", 5), ("sdb", 9)], 261).0, vec!["sdb"]);
}

#[test]
fn no_standby_while_a_vm_image_has_no_known_disk_or_when_off_and_a_failure_waits() {
    let (mut p, mut cfg) = (DevicePolicy::new(), cfg());
    let none = BTreeMap::new();
    p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(0));
    let d = p.decide_disks(&disks(&[("sdb", 1)]), &none, &["db (/srv/db.img)".into()], &cfg, Millis(100_000));
    assert!(d.actions.is_empty());
    assert!(matches!(&d.views[0].state, DiskState::Held { why } if why.contains("db (/srv/db.img)")));
    let d = p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(100_000));
    assert_eq!(d.actions.len(), 1);
    p.outcome(&d.actions[0], &Err(ActionError::Failed("hdparm: no such device".into())), Millis(100_000));
    assert!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(150_000)).actions.is_empty());
    assert_eq!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(160_000)).actions.len(), 1);
    cfg.disk_idle_after = None;
    assert!(p.decide_disks(&disks(&[("sdb", 1)]), &none, &[], &cfg, Millis(900_000)).actions.is_empty());
}
