use super::*;
use proptest::prelude::*;

const MIN: u64 = 60_000;

fn enabled() -> SleepSettings {
    SleepSettings { enabled: true, ..SleepSettings::default() }
}

fn vm(name: &str, state: VmState, activity: Option<Activity>, persistent: bool) -> VmObservation {
    VmObservation { id: VmId::new(name), state, balloon: None, activity, persistent, managed_save: false, tune: None }
}

fn obs(vms: Vec<VmObservation>) -> Observation {
    Observation { vms, ..Observation::default() }
}

/// One VM's world: counters that grow at set rates as time passes.
struct One {
    policy: SleepPolicy,
    id: VmId,
    act: Activity,
    state: VmState,
    persistent: bool,
    settings: SleepSettings,
    traffic: SurrogateTraffic,
    now: Millis,
}

impl One {
    fn new(settings: SleepSettings) -> One {
        One {
            policy: SleepPolicy::new(),
            id: VmId::new("web"),
            act: Activity { cpu_time_ns: 5_000_000_000, ..Activity::default() },
            state: VmState::Running,
            persistent: true,
            settings,
            traffic: SurrogateTraffic::default(),
            now: Millis(1_000_000),
        }
    }

    /// Lets `ms` pass with the VM using `cpu` of a vCPU and moving `net`
    /// and `disk` bytes per second, then ticks.
    fn run(&mut self, ms: u64, cpu: f64, net: u64, disk: u64) -> SleepDecision {
        self.now = self.now.plus(ms);
        self.act.cpu_time_ns += (cpu * ms as f64 * 1e6) as u64;
        self.act.net_rx_bytes += net * ms / 1000;
        self.act.disk_write_bytes += disk * ms / 1000;
        self.tick()
    }

    fn tick(&mut self) -> SleepDecision {
        let o = obs(vec![vm("web", self.state, Some(self.act), self.persistent)]);
        let settings = BTreeMap::from([(self.id.clone(), self.settings.clone())]);
        let traffic = BTreeMap::from([(self.id.clone(), self.traffic)]);
        self.policy.decide(&o, &settings, &traffic, self.now)
    }

    /// Quiet ticks of 10 s until the policy proposes sleep; how long it took.
    fn quiet_until_sleep(&mut self, limit_ms: u64) -> Option<(u64, Reason)> {
        let start = self.now;
        while self.now.since(start) < limit_ms {
            let d = self.run(10_000, 0.004, 0, 0);
            if let Some(a) = d.actions.into_iter().next() {
                return Some((self.now.since(start), a.reason().clone()));
            }
        }
        None
    }
}

#[test]
fn a_quiet_vm_sleeps_after_the_window_with_the_numbers_in_words() {
    let mut w = One::new(enabled());
    let d = w.tick();
    assert!(d.actions.is_empty());
    assert_eq!(d.views[0].active_reason.as_deref(), Some("just started watching it"));
    let (took, reason) = w.quiet_until_sleep(30 * MIN).expect("sleeps");
    assert_eq!(took, 10 * MIN);
    assert_eq!(reason.rule, Rule::Sleep);
    assert_eq!(
        reason.text,
        "idle for 10 min: CPU 0.4% of a vCPU, network 0 B/s, disk 0 B/s, no client traffic through ebb"
    );
    // Proposed once, then a fresh window: not again on the next tick.
    assert!(w.run(10_000, 0.0, 0, 0).actions.is_empty());
}

#[test]
fn any_activity_restarts_the_clock() {
    for (cpu, net, disk, what) in [
        (0.2, 0, 0, "CPU 20.0% of a vCPU (threshold 5.0%)"),
        (0.0, 10_240, 0, "network 10 KiB/s (threshold 2 KiB/s)"),
        (0.0, 0, 1 << 20, "disk 1 MiB/s (threshold 64 KiB/s)"),
    ] {
        let mut w = One::new(enabled());
        w.tick();
        for _ in 0..50 {
            assert!(w.run(10_000, 0.0, 0, 0).actions.is_empty());
        }
        let d = w.run(10_000, cpu, net, disk);
        assert!(d.actions.is_empty());
        assert_eq!(d.views[0].active_reason.as_deref(), Some(what));
        assert_eq!(d.views[0].idle_since, Some(w.now));
        assert_eq!(d.views[0].sleeps_at, Some(w.now.plus(10 * MIN)));
        let (took, _) = w.quiet_until_sleep(30 * MIN).expect("sleeps after a new window");
        assert_eq!(took, 10 * MIN, "{what}");
    }
}

#[test]
fn client_traffic_and_held_connections_keep_it_awake() {
    let mut w = One::new(SleepSettings { idle_after: Span::from_millis(MIN), ..enabled() });
    w.tick();
    w.traffic.bytes += 100;
    let d = w.run(10_000, 0.0, 0, 0);
    assert_eq!(d.views[0].active_reason.as_deref(), Some("client traffic through ebb 10 B/s"));
    assert_eq!(d.views[0].surrogate_rate, Some(Bytes(10)));

    // A stream held open with nothing flowing keeps the VM awake...
    w.traffic.open_connections = 1;
    w.traffic.held_open_counts = true;
    for _ in 0..20 {
        let d = w.run(10_000, 0.0, 0, 0);
        assert!(d.actions.is_empty());
        assert_eq!(d.views[0].active_reason.as_deref(), Some("1 open client connection through ebb"));
    }
    // ...unless the VM's settings say open connections do not count.
    w.traffic.held_open_counts = false;
    let (took, reason) = w.quiet_until_sleep(10 * MIN).expect("sleeps");
    assert_eq!(took, MIN);
    assert!(reason.text.ends_with("no client traffic through ebb (1 idle connection open, not counted)"), "{}", reason.text);
}

#[test]
fn clients_held_for_a_vm_keep_it_awake_whatever_the_settings() {
    let mut w = One::new(enabled());
    w.tick();
    // Clients wait for their replay to a slow service: nothing flows.
    w.traffic.held = 3;
    w.traffic.held_open_counts = false;
    for _ in 0..200 {
        let d = w.run(10_000, 0.0, 0, 0);
        assert!(d.actions.is_empty(), "slept under its held clients");
        assert_eq!(d.views[0].active_reason.as_deref(), Some("3 clients waiting for it through ebb"));
    }
    w.traffic.held = 0;
    let (took, _) = w.quiet_until_sleep(30 * MIN).expect("sleeps once they are through");
    assert_eq!(took, 10 * MIN);
}

#[test]
fn disabled_transient_and_stopped_vms_never_sleep() {
    let mut w = One::new(SleepSettings::default());
    w.tick();
    assert!(w.quiet_until_sleep(60 * MIN).is_none());
    assert_eq!(w.tick().views[0].skipped.as_deref(), Some("sleep is not enabled for this VM"));

    let mut w = One::new(enabled());
    w.persistent = false;
    w.tick();
    assert!(w.quiet_until_sleep(60 * MIN).is_none());
    let v = &w.tick().views[0];
    assert!(v.skipped.as_deref().unwrap().starts_with("transient: cannot be saved"), "{v:?}");
    assert_eq!(v.sleeps_at, None);
    // Pausing works for a transient VM: it keeps its memory.
    w.settings.mode = SleepMode::Pause;
    let (_, _) = w.quiet_until_sleep(60 * MIN).expect("a transient VM can be paused");

    let mut w = One::new(enabled());
    w.state = VmState::Paused;
    w.tick();
    assert!(w.quiet_until_sleep(60 * MIN).is_none());
    assert_eq!(w.tick().views[0].skipped.as_deref(), Some("not running (paused)"));
}

#[test]
fn a_wake_or_a_restart_gives_a_fresh_window() {
    let mut w = One::new(enabled());
    w.tick();
    for _ in 0..55 {
        w.run(10_000, 0.0, 0, 0);
    }
    // Restored from a save between two ticks: counters start again.
    w.act = Activity::default();
    let d = w.run(10_000, 0.0, 0, 0);
    assert_eq!(d.views[0].idle_since, Some(w.now));
    assert!(d.views[0].active_reason.as_deref().unwrap().contains("went back"));
    assert_eq!(w.quiet_until_sleep(30 * MIN).unwrap().0, 10 * MIN);

    // Resumed from a pause between two ticks: counters go on, the agent says so.
    for _ in 0..30 {
        w.run(10_000, 0.0, 0, 0);
    }
    w.policy.woke(&w.id);
    let d = w.run(10_000, 0.0, 0, 0);
    assert_eq!(d.views[0].idle_since, Some(w.now));
    assert_eq!(w.quiet_until_sleep(30 * MIN).unwrap().0, 10 * MIN);

    // Shut off (asleep) for a while, then running again.
    w.state = VmState::ShutOff;
    w.run(60 * MIN, 0.0, 0, 0);
    w.state = VmState::Running;
    let d = w.run(10_000, 0.0, 0, 0);
    assert_eq!(d.views[0].idle_since, Some(w.now));
}

#[test]
fn no_counters_no_sleep() {
    let mut p = SleepPolicy::new();
    let settings = BTreeMap::from([(VmId::new("t"), enabled())]);
    for i in 0..100 {
        let d = p.decide(&obs(vec![vm("t", VmState::Running, None, true)]), &settings, &BTreeMap::new(), Millis(i * MIN));
        assert!(d.actions.is_empty());
        assert_eq!(d.views[0].skipped.as_deref(), Some("the hypervisor reports no activity counters for it"));
    }
}

#[test]
fn two_observations_at_the_same_instant_change_nothing() {
    let mut w = One::new(SleepSettings { idle_after: Span::from_millis(0), ..enabled() });
    w.tick();
    let d = w.tick();
    assert!(d.actions.is_empty(), "no time passed: nothing measured");
    assert_eq!(w.run(1000, 0.0, 0, 0).actions.len(), 1, "idle_after 0 sleeps on the first quiet tick");
    assert!(w.run(1000, 0.9, 0, 0).actions.is_empty(), "but never on a busy one");
}

#[test]
fn words() {
    assert_eq!(duration_words(45_000), "45 s");
    assert_eq!(duration_words(10 * MIN + 30_000), "10 min");
    assert_eq!(duration_words(120 * MIN), "2 h");
    assert_eq!(duration_words(125 * MIN), "2 h 5 min");
    assert_eq!(percent(0.004), "0.4%");
    assert_eq!(percent(0.0), "0.0%");
    assert_eq!(percent(0.0001), "<0.1%");
}

#[test]
fn settings_parse_with_defaults() {
    let s: SleepSettings = serde_json::from_str(r#"{"enabled": true, "mode": "pause"}"#).unwrap();
    assert_eq!(s, SleepSettings { enabled: true, mode: SleepMode::Pause, ..SleepSettings::default() });
}

/// One tick of a random world: per VM, how long passed and whether it
/// was busy (rates well above a threshold) or quiet (well below).
#[derive(Clone, Debug)]
struct Step {
    ms: u64,
    busy: Vec<Option<u8>>,
    held: Vec<bool>,
}

fn arb_steps(n: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![Just(1000u64), Just(10_000), 1u64..120_000],
        proptest::collection::vec(proptest::option::weighted(0.1, 0u8..5), n),
        proptest::collection::vec(proptest::bool::weighted(0.05), n),
    )
        .prop_map(|(ms, busy, held)| Step { ms, busy, held });
    proptest::collection::vec(step, 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Never proposes sleep for a VM that was busy within its window, is
    /// disabled, or is transient in save mode; and a VM that stayed quiet
    /// for its window plus a tick is proposed.
    #[test]
    fn sleeps_only_quiet_enabled_saveable_vms(
        steps in arb_steps(4),
        idle_after in prop_oneof![Just(0u64), 1000u64..20 * MIN],
        enabled in proptest::collection::vec(any::<bool>(), 4),
        persistent in proptest::collection::vec(any::<bool>(), 4),
        pause in proptest::collection::vec(any::<bool>(), 4),
    ) {
        let ids: Vec<VmId> = (0..4).map(|i| VmId::new(format!("vm{i}"))).collect();
        let settings: BTreeMap<_, _> = ids.iter().enumerate().map(|(i, id)| {
            let mode = if pause[i] { SleepMode::Pause } else { SleepMode::Save };
            (id.clone(), SleepSettings { enabled: enabled[i], mode, idle_after: Span::from_millis(idle_after), ..SleepSettings::default() })
        }).collect();
        let mut acts = vec![Activity::default(); 4];
        let mut traffic: BTreeMap<VmId, SurrogateTraffic> = BTreeMap::new();
        let mut policy = SleepPolicy::new();
        let mut now = Millis(0);
        let observe = |acts: &[Activity]| obs(ids.iter().zip(acts).enumerate()
            .map(|(i, (id, a))| vm(id.as_str(), VmState::Running, Some(*a), persistent[i])).collect());
        policy.decide(&observe(&acts), &settings, &traffic, now);
        // Per VM: when it was last busy (the start of its quiet stretch).
        let mut quiet_since = [now; 4];
        for step in steps {
            now = now.plus(step.ms);
            for i in 0..4 {
                let a = &mut acts[i];
                let t = traffic.entry(ids[i].clone()).or_default();
                t.held_open_counts = true;
                t.open_connections = u32::from(step.held[i]);
                // Quiet: a tenth of each threshold.
                a.cpu_time_ns += step.ms * 1_000_000 / 200;
                a.net_tx_bytes += 204 * step.ms / 1000;
                a.disk_read_bytes += 6553 * step.ms / 1000;
                match step.busy[i] {
                    Some(0) => a.cpu_time_ns += step.ms * 1_000_000 / 5,
                    Some(1) => a.net_rx_bytes += 8192 * step.ms / 1000 + 1,
                    Some(2) => a.disk_write_bytes += (1 << 20) * step.ms / 1000 + 1,
                    Some(_) => t.bytes += 1,
                    None => {}
                }
                if step.busy[i].is_some() || step.held[i] {
                    quiet_since[i] = now;
                }
            }
            let d = policy.decide(&observe(&acts), &settings, &traffic, now);
            for i in 0..4 {
                let proposed = d.actions.iter().any(|a| a.vm() == Some(&ids[i]));
                let may = enabled[i] && (persistent[i] || pause[i]);
                if proposed {
                    prop_assert!(may, "vm{} may not sleep", i);
                    prop_assert!(now.since(quiet_since[i]) >= idle_after, "vm{} busy within its window", i);
                    prop_assert!(quiet_since[i] < now, "vm{} busy on this very tick", i);
                    let Some(Action::Sleep { mode, .. }) = d.actions.iter().find(|a| a.vm() == Some(&ids[i])) else { panic!("vm{i} proposed without a sleep") };
                    prop_assert_eq!(*mode, settings[&ids[i]].mode);
                    // The policy restarts its window after a proposal.
                    quiet_since[i] = now;
                } else if may && quiet_since[i] < now && now.since(quiet_since[i]) >= idle_after {
                    prop_assert!(false, "vm{} quiet since {:?} (now {:?}) was not proposed", i, quiet_since[i], now);
                }
            }
        }
    }
}

#[test]
fn a_sleeper_started_resumed_or_gone_behind_ebbs_back_woke_outside() {
    let rec = |mode| SleepRecord { mode, since: Millis(0), reason: "idle".into() };
    let sleeping = BTreeMap::from([
        (VmId::new("saved"), rec(SleepMode::Save)),
        (VmId::new("started"), rec(SleepMode::Save)),
        (VmId::new("paused"), rec(SleepMode::Pause)),
        (VmId::new("resumed"), rec(SleepMode::Pause)),
        (VmId::new("pause-lost"), rec(SleepMode::Pause)),
        (VmId::new("gone"), rec(SleepMode::Save)),
    ]);
    let o = obs(vec![
        vm("saved", VmState::ShutOff, None, true),
        vm("started", VmState::Running, None, true),
        vm("paused", VmState::Paused, None, true),
        vm("resumed", VmState::Running, None, true),
        vm("pause-lost", VmState::ShutOff, None, true),
    ]);
    let woke = woke_outside(&sleeping, &o);
    let names: Vec<(&str, Option<VmState>)> = woke.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    assert_eq!(names, [("gone", None), ("pause-lost", Some(VmState::ShutOff)), ("resumed", Some(VmState::Running)), ("started", Some(VmState::Running))]);
}
