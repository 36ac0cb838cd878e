//! The reallocation policy against a small world whose CPU, disk and
//! network counters run at given rates, and whose tunes follow what the
//! policy sets, as libvirt's would.

use super::*;
use std::collections::BTreeMap;

const TUNE: Tune = Tune { shares: 1024, quota_us: None, period_us: 100_000, io_weight: None, net: None, disk_limit: None };

fn capped(frac: f64) -> Tune {
    Tune { quota_us: Some((frac * 100_000.0) as u64), ..TUNE }
}

fn vm(name: &str, vcpus: u32, cpu_time_ns: u64, tune: Tune) -> VmObservation {
    VmObservation {
        id: VmId::new(name),
        state: VmState::Running,
        balloon: None,
        activity: Some(Activity { cpu_time_ns, vcpus, ..Activity::default() }),
        persistent: true,
        managed_save: false,
        tune: Some(tune),
    }
}

/// The map's settings in the observation's order, as the agent builds them.
fn aligned(o: &Observation, settings: &BTreeMap<VmId, ReallocSettings>) -> Vec<ReallocSettings> {
    o.vms.iter().map(|v| settings.get(&v.id).cloned().unwrap_or_default()).collect()
}

fn obs(host_cpus: u32, vms: Vec<VmObservation>) -> Observation {
    Observation { at: Millis(0), host: HostMemory::default(), host_cpus, vms }
}

/// VMs whose CPU counters run at a given rate, and whose tunes follow
/// what the policy sets, as libvirt's would.
#[derive(Default)]
struct World {
    tunes: BTreeMap<String, Tune>,
    cpu_ns: BTreeMap<String, u64>,
    /// Disk bytes per second, by VM (none: 0).
    disk_rate: BTreeMap<String, u64>,
    disk_bytes: BTreeMap<String, u64>,
    wait_ns: BTreeMap<String, u64>,
    /// Bytes per second each VM would send, by VM (none: 0); its
    /// outbound limit lets that much through, as tc's would.
    net_offered: BTreeMap<String, u64>,
    net_bytes: BTreeMap<String, u64>,
    /// Every change the policy made, in order.
    changes: Vec<(String, Tune)>,
    settings: BTreeMap<VmId, ReallocSettings>,
    cfg: ReallocConfig,
}

impl World {
    fn with(vms: &[(&str, Tune)]) -> World {
        World { tunes: vms.iter().map(|(n, t)| (n.to_string(), *t)).collect(), ..World::default() }
    }

    fn tune(&self, name: &str) -> Tune {
        self.tunes[name]
    }

    /// Ticks every 2 s from `start` for `secs`; `vms` are (name, vCPUs, CPUs' worth used).
    fn run(&mut self, p: &mut ReallocPolicy, start: u64, secs: u64, host_cpus: u32, vms: &[(&str, u32, f64)]) -> ReallocDecision {
        let cfg = self.cfg.clone();
        let mut last = ReallocDecision::default();
        for t in (start..=start + secs).step_by(2) {
            let at = Millis(t * 1000);
            let o = obs(
                host_cpus,
                vms.iter()
                    .map(|(n, c, u)| {
                        // `u` is what it asks for; its cap lets it run
                        // that much, the rest waits (as Linux counts a
                        // throttled vCPU's delay).
                        let tune = self.tunes[*n];
                        let ran = tune.cap().map_or(*u, |cap| u.min(cap * f64::from(*c)));
                        let ns = self.cpu_ns.entry(n.to_string()).or_default();
                        *ns += (ran * 2e9) as u64;
                        let wait = self.wait_ns.entry(n.to_string()).or_default();
                        *wait += ((u - ran).max(0.0) * 2e9) as u64;
                        let disk = self.disk_bytes.entry(n.to_string()).or_default();
                        // Its disk's I/O limit lets that much through, as QEMU's throttle would.
                        let wants = self.disk_rate.get(*n).copied().unwrap_or(0);
                        *disk += 2 * tune.disk_limit.filter(|l| *l > 0).map_or(wants, |l| wants.min(l));
                        let wait = *wait;
                        let offered = self.net_offered.get(*n).copied().unwrap_or(0);
                        let let_through = tune.net.and_then(|l| l.outbound.limit()).map_or(offered, |l| offered.min(l.0));
                        let sent = self.net_bytes.entry(n.to_string()).or_default();
                        *sent += 2 * let_through;
                        let sent = *sent;
                        let mut o = vm(n, *c, *ns, self.tunes[*n]);
                        o.activity.as_mut().unwrap().net_tx_bytes = sent;
                        o.activity.as_mut().unwrap().disk_write_bytes = *disk;
                        o.activity.as_mut().unwrap().vcpu_wait_ns = wait;
                        o
                    })
                    .collect(),
            );
            last = p.decide(&o, &aligned(&o, &self.settings), &cfg, at);
            for a in &last.actions {
                if let Action::SetTune { vm, tune, .. } = a {
                    self.changes.push((vm.as_str().to_string(), *tune));
                    self.tunes.insert(vm.as_str().to_string(), *tune);
                    p.outcome(a, &Ok(()), at);
                }
            }
        }
        last
    }
}

fn view<'a>(d: &'a ReallocDecision, name: &str) -> &'a VmReallocView {
    d.views.iter().find(|v| v.vm.as_str() == name).unwrap()
}

#[test]
fn busy_at_its_cap_is_raised_idle_yields_and_both_return() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("busy", capped(0.3)), ("idle", TUNE)]);
    w.settings.insert(VmId::new("busy"), ReallocSettings { cap_max: Some(1.0), ..Default::default() });
    let d = w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3), ("idle", 1, 0.01)]);
    assert_eq!(view(&d, "busy").class, Some(Class::CpuBound));
    assert_eq!(view(&d, "idle").class, Some(Class::Idle));
    let raised = Tune { shares: 4096, quota_us: Some(100_000), ..TUNE };
    assert_eq!(w.tune("busy"), raised);
    assert_eq!(w.tune("idle").shares, 256);
    // Load gone: not before class_after, then both back where they were.
    let d = w.run(&mut p, 22, 6, 2, &[("busy", 1, 0.01), ("idle", 1, 0.2)]);
    assert_eq!(w.tune("busy"), raised, "not before class_after");
    assert_eq!(view(&d, "busy").pending.map(|p| p.0), Some(Class::Idle));
    w.run(&mut p, 30, 10, 2, &[("busy", 1, 0.01), ("idle", 1, 0.2)]);
    assert_eq!(w.tune("busy"), capped(0.3), "its own weight and cap back");
    assert_eq!(w.tune("idle"), TUNE, "nobody gains: its own weight back");
}

#[test]
fn without_cap_max_only_the_weight_rises() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("busy", capped(0.3))]);
    let d = w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3)]);
    assert_eq!(w.tune("busy"), Tune { shares: 4096, ..capped(0.3) });
    assert!(view(&d, "busy").why.as_ref().unwrap().to_string().contains("cap_max"));
}

#[test]
fn two_cpu_bound_on_a_saturated_host_is_a_conflict_and_nothing_changes() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", TUNE), ("b", TUNE)]);
    let d = w.run(&mut p, 0, 30, 2, &[("a", 1, 1.0), ("b", 1, 0.95)]);
    assert!(d.host.saturated);
    assert_eq!((w.tune("a"), w.tune("b")), (TUNE, TUNE));
    let why = view(&d, "a").why.as_ref().unwrap().to_string();
    assert!(why.contains("as is b") && why.contains("rob"), "{why}");
    assert!(d.actions.is_empty());
}

#[test]
fn raising_a_cap_into_a_busy_neighbour_is_a_steady_conflict() {
    // Capped at 30% but asking for a whole CPU, beside a busy neighbour
    // on two CPUs: together they ask for both CPUs, so raising the cap
    // would rob the neighbour. Nothing changes, tick after tick.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("capped", capped(0.3)), ("busy", TUNE)]);
    w.settings.insert(VmId::new("capped"), ReallocSettings { cap_max: Some(1.0), ..Default::default() });
    for start in [0, 32, 64] {
        let d = w.run(&mut p, start, 30, 2, &[("capped", 1, 1.0), ("busy", 1, 1.0)]);
        assert!(d.host.saturated);
        assert_eq!((w.tune("capped"), w.tune("busy")), (capped(0.3), TUNE), "at {start} s");
        assert!(view(&d, "capped").why.as_ref().unwrap().to_string().contains("rob"));
    }
    assert_eq!(w.changes, vec![], "not even for a moment");
    // The neighbour goes quiet: now the cap rises.
    w.run(&mut p, 96, 30, 2, &[("capped", 1, 1.0), ("busy", 1, 0.0)]);
    assert_eq!(w.tune("capped").quota_us, Some(100_000));
}

#[test]
fn two_at_their_caps_with_cpu_to_spare_both_gain() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", capped(0.3)), ("b", capped(0.3))]);
    for n in ["a", "b"] {
        w.settings.insert(VmId::new(n), ReallocSettings { cap_max: Some(0.6), ..Default::default() });
    }
    let d = w.run(&mut p, 0, 20, 4, &[("a", 1, 0.3), ("b", 1, 0.3)]);
    assert!(!d.host.saturated);
    assert_eq!((w.tune("a").shares, w.tune("b").shares), (4096, 4096), "{:?}", d.views);
    assert_eq!(w.tune("a").quota_us, Some(60_000));
}

#[test]
fn one_cpu_bound_with_cpu_to_spare_would_not_gain() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", TUNE)]);
    let d = w.run(&mut p, 0, 20, 4, &[("a", 1, 0.97)]);
    assert_eq!(w.tune("a"), TUNE);
    assert!(view(&d, "a").why.as_ref().unwrap().to_string().contains("would not help"));
    // At 30% of a whole-vCPU cap it is not at its cap either.
    let mut w = World::with(&[("a", capped(1.0))]);
    let d = w.run(&mut ReallocPolicy::new(), 0, 20, 4, &[("a", 1, 0.3)]);
    assert_eq!(w.tune("a"), capped(1.0));
    assert_eq!(view(&d, "a").class, Some(Class::Steady));
}

#[test]
fn waiting_vcpus_show_contention() {
    let mut p = ReallocPolicy::new();
    let cfg = ReallocConfig::default();
    let mut d = ReallocDecision::default();
    for t in 0..=10u64 {
        let mut o = obs(4, vec![vm("a", 1, t * 2_000_000_000 * 95 / 100, TUNE)]);
        o.vms[0].activity.as_mut().unwrap().vcpu_wait_ns = t * 2_000_000_000 / 5;
        d = p.decide(&o, &[], &cfg, Millis(t * 2000));
    }
    assert_eq!(d.actions.len(), 1, "{:?}", d.views);
    assert!(d.actions[0].reason().text.contains("wait for host CPUs"), "{:?}", d.actions[0]);
}

#[test]
fn a_disk_bound_vm_gets_the_disk_weight_and_two_conflict() {
    let disk = Tune { io_weight: Some(500), ..TUNE };
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("db", disk), ("idle", disk)]);
    w.disk_rate.insert("db".into(), 8 << 20);
    let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!(view(&d, "db").class, Some(Class::DiskBound));
    assert_eq!((w.tune("db").io_weight, w.tune("idle").io_weight), (Some(1000), Some(125)));
    assert_eq!((w.tune("db").shares, w.tune("idle").shares), (1024, 1024), "the CPU is not what it needs");
    // The writes stop: both back.
    w.disk_rate.clear();
    w.run(&mut p, 22, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!((w.tune("db"), w.tune("idle")), (disk, disk));
    // Two disk-bound: neither changes, and the view says why.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", disk), ("b", disk)]);
    w.disk_rate.insert("a".into(), 8 << 20);
    w.disk_rate.insert("b".into(), 8 << 20);
    let d = w.run(&mut p, 0, 20, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
    assert_eq!((w.tune("a"), w.tune("b")), (disk, disk));
    assert!(view(&d, "a").io_why.as_ref().unwrap().to_string().contains("as is b"));
}

#[test]
fn weights_from_libvirt_under_its_minimum_cannot_panic() {
    // cgroup v2 lets cpu_shares be 1; a driver may say 0.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("busy", Tune { shares: 1, ..capped(0.3) }), ("idle", Tune { shares: 1, ..TUNE }), ("zero", Tune { shares: 0, ..TUNE })]);
    w.run(&mut p, 0, 20, 2, &[("busy", 1, 0.3), ("idle", 1, 0.0), ("zero", 1, 0.0)]);
    assert_eq!((w.tune("busy").shares, w.tune("idle").shares, w.tune("zero").shares), (4, 1, 0), "raised by boost; never cut below their own");
}

#[test]
fn a_boost_or_divisor_past_u32_neither_divides_by_zero_nor_cuts_the_disk_bound() {
    let disk = Tune { io_weight: Some(500), ..TUNE };
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("db", disk), ("idle", disk)]);
    w.cfg = ReallocConfig { boost: 1 << 32, yield_divisor: 1 << 32, ..ReallocConfig::default() };
    w.disk_rate.insert("db".into(), 8 << 20);
    w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!((w.tune("db").io_weight, w.tune("idle").io_weight), (Some(1000), Some(100)));
}

#[test]
fn a_vm_at_its_disk_limit_is_raised_to_disk_max_and_restored() {
    // 1 MiB/s is far under disk_busy: held at its limit, it is disk-bound all the same.
    let own = Tune { disk_limit: Some(1 << 20), ..TUNE };
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("db", own), ("other", TUNE)]);
    w.settings.insert(VmId::new("db"), ReallocSettings { disk_max: Some(Bytes::from_mib(8)), ..Default::default() });
    w.disk_rate.insert("db".into(), 32 << 20);
    let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1), ("other", 1, 0.0)]);
    assert!(view(&d, "db").at_disk_limit, "{:?}", view(&d, "db"));
    assert_eq!(w.tune("db").disk_limit, Some(8 << 20));
    assert!(view(&d, "db").disk_why.as_ref().unwrap().to_string().contains("up to disk_max"));
    assert_eq!(w.tune("other"), TUNE, "a VM without a disk limit is left alone");
    // Its writes stop: its own limit comes back.
    w.disk_rate.clear();
    w.run(&mut p, 22, 20, 2, &[("db", 1, 0.1), ("other", 1, 0.0)]);
    assert_eq!(w.tune("db"), own);
    // Without disk_max it keeps its own, and says so.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("db", own)]);
    w.disk_rate.insert("db".into(), 32 << 20);
    let d = w.run(&mut p, 0, 20, 2, &[("db", 1, 0.1)]);
    assert_eq!(w.tune("db"), own);
    assert!(view(&d, "db").disk_why.as_ref().unwrap().to_string().contains("no higher limit (disk_max)"));
}

fn limited(out_kib: u64) -> Tune {
    let outbound = Bandwidth { average: out_kib, peak: 0, burst: 0 };
    Tune { net: Some(NetLimit { inbound: Bandwidth::default(), outbound }), ..TUNE }
}

fn net_why(d: &ReallocDecision, name: &str) -> String {
    view(d, name).net_why.as_ref().map(ToString::to_string).unwrap_or_default()
}

#[test]
fn a_vm_at_its_bandwidth_limit_is_raised_to_net_max_and_restored() {
    // 64 KiB/s is far under net_busy: held at its limit, it is net-bound all the same.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("web", limited(64)), ("idle", limited(64))]);
    w.settings.insert(VmId::new("web"), ReallocSettings { net_max: Some(Bytes::from_mib(1)), ..Default::default() });
    w.net_offered.insert("web".into(), 4 << 20);
    let d = w.run(&mut p, 0, 20, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!(view(&d, "web").class, Some(Class::NetBound));
    assert!(view(&d, "web").at_net_limit);
    assert_eq!(w.tune("web"), limited(1024), "raised to net_max, nothing else changed");
    assert_eq!(w.tune("idle"), limited(64), "an idle VM's limit is not cut");
    assert!(net_why(&d, "web").contains("higher limit"), "{}", net_why(&d, "web"));
    let reason = &d.actions.iter().find(|a| a.vm().is_some_and(|vm| vm.as_str() == "web"));
    assert!(reason.is_none() || reason.unwrap().reason().text.contains("bandwidth"));
    // At the raised limit it stays raised: no flapping back.
    let d = w.run(&mut p, 22, 20, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!(w.tune("web"), limited(1024));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // The traffic stops: its own limit back once the class has passed.
    w.net_offered.clear();
    let d = w.run(&mut p, 44, 6, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!(w.tune("web"), limited(1024), "not before class_after");
    assert_eq!(view(&d, "web").pending.map(|p| p.0), Some(Class::Steady));
    w.run(&mut p, 52, 10, 2, &[("web", 1, 0.1), ("idle", 1, 0.0)]);
    assert_eq!(w.tune("web"), limited(64));
    let raise_then_restore: Vec<u64> = w.changes.iter().map(|(_, t)| t.net.unwrap().outbound.average).collect();
    assert_eq!(raise_then_restore, vec![1024, 64]);
}

#[test]
fn two_at_their_bandwidth_limits_conflict_and_nothing_changes() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", limited(256)), ("b", limited(512))]);
    for n in ["a", "b"] {
        w.settings.insert(VmId::new(n), ReallocSettings { net_max: Some(Bytes::from_mib(10)), ..Default::default() });
        w.net_offered.insert(n.into(), 4 << 20);
    }
    let d = w.run(&mut p, 0, 30, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
    assert_eq!((w.tune("a"), w.tune("b")), (limited(256), limited(512)));
    assert_eq!(w.changes, vec![], "not even for a moment");
    let why = net_why(&d, "a");
    assert!(why.contains("as is b") && why.contains("rob"), "{why}");
    // b goes quiet: a's limit rises.
    w.net_offered.remove("b");
    w.run(&mut p, 32, 30, 2, &[("a", 1, 0.1), ("b", 1, 0.1)]);
    assert_eq!((w.tune("a"), w.tune("b")), (limited(10 << 10), limited(512)));
}

#[test]
fn without_a_limit_or_net_max_or_an_interface_nothing_changes_and_the_view_says_why() {
    let unlimited = limited(0);
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("free", unlimited), ("nomax", limited(256)), ("slirp", TUNE)]);
    w.settings.insert(VmId::new("free"), ReallocSettings { net_max: Some(Bytes::from_mib(10)), ..Default::default() });
    w.net_offered.insert("free".into(), 4 << 20);
    w.net_offered.insert("nomax".into(), 4 << 20);
    w.net_offered.insert("slirp".into(), 4 << 20);
    // One at a time: together they would conflict.
    for (name, words) in [
        ("free", "no bandwidth limit"),
        ("nomax", "no higher limit (net_max)"),
        ("slirp", "none of its interfaces can take a bandwidth limit"),
    ] {
        let d = w.run(&mut p, 0, 20, 2, &[(name, 1, 0.1)]);
        assert_eq!(view(&d, name).class, Some(Class::NetBound));
        assert!(net_why(&d, name).contains(words), "{name}: {}", net_why(&d, name));
        p = ReallocPolicy::new();
    }
    assert_eq!(w.changes, vec![]);
    // Not net-bound and no interface: nothing to say about the network.
    w.net_offered.clear();
    let d = w.run(&mut p, 0, 20, 2, &[("slirp", 1, 0.0)]);
    assert_eq!(view(&d, "slirp").net_why, None);
}

#[test]
fn a_refused_bandwidth_change_is_left_alone_while_the_cpu_goes_on() {
    let cfg = ReallocConfig::default();
    let mut p = ReallocPolicy::new();
    // One VM: its settings are the first.
    let settings = [ReallocSettings { critical: true, net_max: Some(Bytes::from_mib(1)), ..Default::default() }];
    let o = |t: Tune| obs(2, vec![vm("c", 1, 0, t)]);
    let d = p.decide(&o(limited(64)), &settings, &cfg, Millis(0));
    let want = Tune { shares: 4096, ..limited(1024) };
    assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == want), "{:?}", d.actions);
    // libvirt refused the bandwidth before touching the rest: the CPU
    // change goes on at once without it, and the view says why.
    p.outcome(&d.actions[0], &Err(ActionError::Bandwidth("Failed to load TC action module".into())), Millis(0));
    let d = p.decide(&o(limited(64)), &settings, &cfg, Millis(2000));
    let cpu_only = Tune { shares: 4096, ..limited(64) };
    assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == cpu_only), "{:?}", d.actions);
    assert!(net_why(&d, "c").contains("TC action module") && net_why(&d, "c").contains("10 minutes"));
    p.outcome(&d.actions[0], &Ok(()), Millis(2000));
    assert!(p.decide(&o(cpu_only), &settings, &cfg, Millis(4000)).actions.is_empty(), "no retry loop");
    let d = p.decide(&o(cpu_only), &settings, &cfg, Millis(600_000));
    assert!(matches!(&d.actions[..], [Action::SetTune { tune, .. }] if *tune == want), "tried again after 10 minutes");
}

#[test]
fn critical_goes_first_and_back_when_cleared() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("c", capped(0.5))]);
    w.settings.insert(VmId::new("c"), ReallocSettings { critical: true, cap_max: Some(2.0), ..Default::default() });
    let d = w.run(&mut p, 0, 0, 2, &[("c", 2, 0.2)]);
    assert_eq!(w.tune("c"), Tune { shares: 4096, quota_us: Some(200_000), ..TUNE }, "at once, no class needed");
    assert_eq!(d.actions[0].reason().rule, Rule::Critical);
    w.settings.clear();
    w.run(&mut p, 2, 12, 2, &[("c", 2, 0.2)]);
    assert_eq!(w.tune("c"), capped(0.5));
}

#[test]
fn a_returning_vm_starts_from_its_history() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("idle", TUNE), ("busy", capped(0.3))]);
    w.settings.insert(VmId::new("busy"), ReallocSettings { expected: Some(Class::CpuBound), ..Default::default() });
    w.settings.insert(VmId::new("idle"), ReallocSettings { expected: Some(Class::Idle), ..Default::default() });
    // From its first ticks, before class_after: history says cpu-bound.
    let d = w.run(&mut p, 0, 2, 2, &[("idle", 1, 0.0), ("busy", 1, 0.3)]);
    assert_eq!(view(&d, "busy").class, Some(Class::CpuBound));
    assert_eq!(view(&d, "busy").expected, Some(Class::CpuBound));
    // Gains are still held for class_after: weights move once the load is confirmed.
    w.run(&mut p, 4, 10, 2, &[("idle", 1, 0.0), ("busy", 1, 0.3)]);
    assert_eq!((w.tune("busy").shares, w.tune("idle").shares), (4096, 256));
}

#[test]
fn class_needs_to_hold_and_the_band_stops_flapping() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("a", TUNE)]);
    let d = w.run(&mut p, 0, 6, 1, &[("a", 1, 0.95)]);
    assert_eq!(view(&d, "a").class, None, "6 s is under class_after");
    let d = w.run(&mut p, 8, 10, 1, &[("a", 1, 0.95)]);
    assert_eq!(view(&d, "a").class, Some(Class::CpuBound));
    // Between the leave and enter thresholds it stays cpu-bound.
    let d = w.run(&mut p, 20, 30, 1, &[("a", 1, 0.7)]);
    assert_eq!(view(&d, "a").class, Some(Class::CpuBound));
    let d = w.run(&mut p, 52, 30, 1, &[("a", 1, 0.5)]);
    assert_eq!(view(&d, "a").class, Some(Class::Steady));
}

#[test]
fn a_change_made_by_someone_else_becomes_the_base() {
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("idle", TUNE), ("busy", capped(0.5))]);
    let both = [("idle", 1, 0.0), ("busy", 1, 0.5)];
    w.run(&mut p, 0, 20, 2, &both);
    assert_eq!(w.tune("idle").shares, 256);
    // An operator sets 2000 by hand: taken as its own, then cut from there.
    w.tunes.insert("idle".into(), Tune { shares: 2000, ..TUNE });
    w.run(&mut p, 22, 0, 2, &both);
    assert_eq!(p.tunes(&VmId::new("idle")).unwrap().base.shares, 2000);
    assert_eq!(w.tune("idle").shares, 500);
}

#[test]
fn resumed_tunes_are_not_reapplied_and_a_refusal_waits() {
    let cfg = ReallocConfig::default();
    let mine = Tune { shares: 256, ..TUNE };
    let mut p = ReallocPolicy::new();
    p.resume(VmId::new("idle"), Tunes { base: TUNE, applied: Some(mine) });
    let d = p.decide(&obs(2, vec![vm("idle", 1, 0, mine)]), &[], &cfg, Millis(0));
    assert_eq!(d.views[0].base, Some(TUNE), "the journal's base, not what it has now");
    assert!(d.actions.is_empty());
    // Refused: not retried within the minute.
    let mut p = ReallocPolicy::new();
    let mut w = World::with(&[("idle", TUNE)]);
    w.settings.insert(VmId::new("idle"), ReallocSettings { critical: true, ..Default::default() });
    let o = || obs(2, vec![vm("idle", 1, 0, TUNE)]);
    let settings = aligned(&o(), &w.settings);
    let d = p.decide(&o(), &settings, &cfg, Millis(12_000));
    assert_eq!(d.actions.len(), 1);
    p.outcome(&d.actions[0], &Err(ActionError::Failed("refused".into())), Millis(12_000));
    assert!(p.decide(&o(), &settings, &cfg, Millis(14_000)).actions.is_empty());
    assert_eq!(p.decide(&o(), &settings, &cfg, Millis(72_000)).actions.len(), 1);
}
