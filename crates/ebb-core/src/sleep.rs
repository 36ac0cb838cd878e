//! The idle policy (seed 004, SPEC §2): which running VMs have been quiet long
//! enough to be put to sleep behind a surrogate.
//!
//! A VM is idle when its CPU, network and disk rates all stay at or below
//! their thresholds, and no real client traffic passes through ebb's
//! surrogate, continuously for `idle_after`. Rates come from the deltas of
//! cumulative counters between two observations, so they are averages over
//! the tick. Anything above a threshold restarts the idle clock. Traffic the
//! surrogate answers itself never reaches these counters (the agent reports
//! only spliced client bytes), and open connections count as activity when
//! the VM says so (`held_open_counts`): users of Knative, KEDA and sablier
//! complain most about streams cut because only requests counted.
//!
//! The policy errs toward keeping a VM awake: counters it cannot read, a
//! restart (counters going backwards) or a wake all start a fresh window.

use crate::human::{nonzero, number, FieldError, Range, Span};
use crate::model::*;
use crate::rates::{per_second, ActivityRates, IDLE_CPU, IDLE_DISK, IDLE_NET};
use crate::units::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-VM sleep settings, after config file, domain metadata and defaults
/// were merged by the agent.
///
/// The defaults are chosen to be safe to switch on: an idle Linux server
/// (timer ticks, ARP, NTP, a log line now and then) stays well below every
/// threshold, while one interactive request or a cron job crosses one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SleepSettings {
    /// Opt-in: a VM sleeps only when its owner said it may. Read from its
    /// own section (`[vm.NAME.sleep]`), which is the opt-in, it is on unless
    /// the section says `enabled = false`.
    #[serde(default = "opted_in")]
    pub enabled: bool,
    pub mode: SleepMode,
    /// How long every rate must stay at or below its threshold before the VM
    /// sleeps. 10 minutes: long enough that a person pausing between two
    /// requests does not pay a wake-up, short enough to matter over a night.
    pub idle_after: Span,
    /// CPU use, as a fraction of one vCPU, at or below which the VM counts as
    /// idle. 0.05: an idle guest here uses under 1% (a diskless 128 MiB TCG
    /// guest measured 0.5%), a guest doing any real work uses far more.
    pub cpu_threshold: f64,
    /// Network bytes per second (received + sent) at or below which the VM
    /// counts as idle. 2 KiB/s covers ARP, DHCP, NTP and keepalives.
    pub net_threshold: Bytes,
    /// Disk bytes per second (read + written) at or below which the VM counts
    /// as idle. 64 KiB/s covers journald and atime updates.
    pub disk_threshold: Bytes,
}

impl SleepSettings {
    /// The section's rules; `field` names it (`vm.NAME.sleep`, `<sleep>`).
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        number(&format!("{field}.cpu_threshold"), self.cpu_threshold, Range::Closed(0.0, 1.0), " (a fraction of one vCPU, like 0.05)")?;
        nonzero(&format!("{field}.net_threshold"), self.net_threshold)?;
        nonzero(&format!("{field}.disk_threshold"), self.disk_threshold)
    }
}

fn opted_in() -> bool {
    true
}

impl Default for SleepSettings {
    fn default() -> Self {
        SleepSettings {
            enabled: false,
            mode: SleepMode::Save,
            idle_after: Span::from_secs(10 * 60),
            cpu_threshold: IDLE_CPU,
            net_threshold: IDLE_NET,
            disk_threshold: IDLE_DISK,
        }
    }
}

/// A VM ebb put to sleep: how, since when, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SleepRecord {
    pub mode: SleepMode,
    pub since: Millis,
    pub reason: String,
}

/// What the surrogate saw of a VM's real clients, supplied by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurrogateTraffic {
    /// Cumulative bytes of real client traffic spliced through to the VM,
    /// both directions. Bytes the surrogate answered itself are not in it.
    pub bytes: u64,
    /// Client connections open through the surrogate right now.
    pub open_connections: u32,
    /// Clients the surrogate holds for the VM right now (waiting for it to
    /// wake, or for their replay): always activity, whatever
    /// `held_open_counts` says, or the VM could sleep under them.
    #[serde(default)]
    pub held: u32,
    /// Open connections keep the VM awake even when no bytes flow (streams,
    /// websockets, long polls).
    pub held_open_counts: bool,
}

/// What the policy shows about one VM (API, `ebb vms`, `ebb explain`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmIdleView {
    pub vm: VmId,
    /// Start of the current quiet stretch; None when the VM is not watched
    /// this tick (not running, no counters).
    pub idle_since: Option<Millis>,
    /// When the VM sleeps if it stays quiet; None when it will not.
    #[serde(default)]
    pub sleeps_at: Option<Millis>,
    /// CPU use over the last tick as a fraction of one vCPU.
    pub cpu_rate: Option<f64>,
    /// Network bytes per second over the last tick (received + sent).
    pub net_rate: Option<Bytes>,
    /// Disk bytes per second over the last tick (read + written).
    pub disk_rate: Option<Bytes>,
    /// Client bytes per second through the surrogate over the last tick.
    pub surrogate_rate: Option<Bytes>,
    /// What kept the VM awake on the last tick, in plain words.
    pub active_reason: Option<String>,
    /// Why the VM is not a candidate for sleep, when it is not.
    pub skipped: Option<String>,
}

impl VmIdleView {
    fn new(vm: VmId) -> VmIdleView {
        VmIdleView {
            vm,
            idle_since: None,
            sleeps_at: None,
            cpu_rate: None,
            net_rate: None,
            disk_rate: None,
            surrogate_rate: None,
            active_reason: None,
            skipped: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SleepDecision {
    /// VMs to put to sleep now, in id order, each with its mode and reason.
    pub to_sleep: Vec<(VmId, SleepMode, Reason)>,
    /// One view per observed VM, in observation order.
    pub views: Vec<VmIdleView>,
}

/// The counters at one observation.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: Millis,
    activity: Activity,
    client_bytes: u64,
}

impl Sample {
    /// True when any counter is below `earlier`'s: the VM's QEMU process
    /// restarted (reboot, restore from a save) or the surrogate did.
    fn went_back(&self, earlier: &Sample) -> bool {
        self.activity.went_back(&earlier.activity) || self.client_bytes < earlier.client_bytes
    }
}

/// Average rates between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rates {
    cpu: f64,
    net: Bytes,
    disk: Bytes,
    client: Bytes,
    /// Client bytes in the interval: any at all is a client being served.
    client_bytes: u64,
}

impl Rates {
    /// None when no time passed between them.
    fn between(from: &Sample, to: &Sample) -> Option<Rates> {
        let vm = ActivityRates::between(from.at, &from.activity, to.at, &to.activity)?;
        let client_bytes = to.client_bytes.checked_sub(from.client_bytes)?;
        Some(Rates {
            cpu: vm.cpu,
            net: vm.net,
            disk: vm.disk,
            client: per_second(client_bytes, to.at.since(from.at)),
            client_bytes,
        })
    }

    /// What in these rates counts as activity, in plain words; None when quiet.
    fn activity(&self, s: &SleepSettings, traffic: &SurrogateTraffic) -> Option<String> {
        let mut why = Vec::new();
        if self.cpu > s.cpu_threshold {
            why.push(format!("CPU {} of a vCPU (threshold {})", percent(self.cpu), percent(s.cpu_threshold)));
        }
        if self.net > s.net_threshold {
            why.push(format!("network {}/s (threshold {}/s)", self.net, s.net_threshold));
        }
        if self.disk > s.disk_threshold {
            why.push(format!("disk {}/s (threshold {}/s)", self.disk, s.disk_threshold));
        }
        if self.client_bytes > 0 {
            why.push(format!("client traffic through ebb {}/s", self.client));
        }
        if traffic.held > 0 {
            why.push(format!("{} client{} waiting for it through ebb", traffic.held, plural(traffic.held)));
        }
        if traffic.held_open_counts && traffic.open_connections > 0 {
            why.push(format!("{} open client connection{} through ebb", traffic.open_connections, plural(traffic.open_connections)));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// What the policy remembers about one running VM between ticks.
#[derive(Clone, Debug)]
struct Track {
    last: Sample,
    /// The sample that started the current quiet stretch (idle since its time).
    window_start: Sample,
    rates: Option<Rates>,
    active_reason: Option<String>,
}

impl Track {
    fn fresh(sample: Sample, why: Option<&str>) -> Track {
        Track { last: sample, window_start: sample, rates: None, active_reason: why.map(str::to_owned) }
    }
}

/// The idle policy's state: per running VM, its last counters and the start
/// of its quiet stretch.
#[derive(Debug, Default)]
pub struct SleepPolicy {
    vms: BTreeMap<VmId, Track>,
}

impl SleepPolicy {
    pub fn new() -> SleepPolicy {
        SleepPolicy::default()
    }

    /// A VM was just woken (or started by a person): it gets a fresh idle
    /// window from its next observation, whatever its counters say.
    pub fn woke(&mut self, vm: &VmId) {
        self.vms.remove(vm);
    }

    /// One tick. VMs missing from `settings` have sleep disabled; VMs missing
    /// from `traffic` have no surrogate in front of them (no client bytes).
    ///
    /// A VM proposed for sleep starts a fresh window at once, so a sleep that
    /// fails (or is still in flight on the next tick) is not proposed again
    /// before another full `idle_after`.
    pub fn decide(
        &mut self,
        obs: &Observation,
        settings: &BTreeMap<VmId, SleepSettings>,
        traffic: &BTreeMap<VmId, SurrogateTraffic>,
        now: Millis,
    ) -> SleepDecision {
        let default_settings = SleepSettings::default();
        let mut d = SleepDecision::default();
        let mut watched = Vec::with_capacity(obs.vms.len());
        for v in &obs.vms {
            let s = settings.get(&v.id).unwrap_or(&default_settings);
            let t = traffic.get(&v.id).copied().unwrap_or_default();
            let mut view = VmIdleView::new(v.id.clone());

            if v.state != VmState::Running {
                // Asleep, paused or off: whatever it does next starts afresh.
                view.skipped = Some(format!("not running ({})", v.state));
                d.views.push(view);
                continue;
            }
            let Some(activity) = v.activity else {
                view.skipped = Some("the hypervisor reports no activity counters for it".into());
                d.views.push(view);
                continue;
            };
            watched.push(v.id.clone());
            let sample = Sample { at: now, activity, client_bytes: t.bytes };
            let track = self.vms.entry(v.id.clone()).or_insert_with(|| Track::fresh(sample, Some("just started watching it")));
            let mut measured = false;
            if sample.went_back(&track.last) {
                *track = Track::fresh(sample, Some("its counters went back: it restarted or was restored"));
            } else if let Some(rates) = Rates::between(&track.last, &sample) {
                measured = true;
                track.active_reason = rates.activity(s, &t);
                if track.active_reason.is_some() {
                    track.window_start = sample;
                }
                track.rates = Some(rates);
                track.last = sample;
            }

            view.idle_since = Some(track.window_start.at);
            view.active_reason = track.active_reason.clone();
            if let Some(r) = &track.rates {
                view.cpu_rate = Some(r.cpu);
                view.net_rate = Some(r.net);
                view.disk_rate = Some(r.disk);
                view.surrogate_rate = Some(r.client);
            }
            view.skipped = if !s.enabled {
                Some("sleep is not enabled for this VM".into())
            } else if s.mode == SleepMode::Save && !v.persistent {
                Some("transient: cannot be saved (define it with virsh define, or set its sleep mode to pause)".into())
            } else {
                None
            };
            if view.skipped.is_none() {
                view.sleeps_at = Some(track.window_start.at.plus(s.idle_after.as_millis()));
                let idle_for = now.since(track.window_start.at);
                // This tick itself must have been measured and quiet: with
                // idle_after 0 the window alone proves nothing.
                if measured && track.active_reason.is_none() && idle_for >= s.idle_after.as_millis() {
                    let text = idle_text(track, &t);
                    d.to_sleep.push((v.id.clone(), s.mode, Reason::new(Rule::Sleep, text)));
                    track.window_start = track.last;
                }
            }
            d.views.push(view);
        }
        watched.sort();
        self.vms.retain(|id, _| watched.binary_search(id).is_ok());
        d.to_sleep.sort_by(|a, b| a.0.cmp(&b.0));
        d
    }
}

/// "idle for 10 min: CPU 0.4% of a vCPU, network 0 B/s, disk 0 B/s, no client
/// traffic through ebb", averaged over the whole quiet stretch.
fn idle_text(track: &Track, t: &SurrogateTraffic) -> String {
    let r = Rates::between(&track.window_start, &track.last).or(track.rates).expect("a quiet VM has rates");
    let clients = match t.open_connections {
        0 => "no client traffic through ebb".to_owned(),
        n => format!("no client traffic through ebb ({n} idle connection{} open, not counted)", plural(n)),
    };
    format!(
        "idle for {}: CPU {} of a vCPU, network {}/s, disk {}/s, {clients}",
        duration_words(track.last.at.since(track.window_start.at)),
        percent(r.cpu),
        r.net,
        r.disk,
    )
}

fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p != 0.0 && p < 0.1 { "<0.1%".into() } else { format!("{p:.1}%") }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// "45 s", "10 min", "2 h 5 min".
fn duration_words(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", s / 60)
    } else if s % 3600 < 60 {
        format!("{} h", s / 3600)
    } else {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
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
                if let Some((_, _, r)) = d.to_sleep.into_iter().next() {
                    return Some((self.now.since(start), r));
                }
            }
            None
        }
    }

    #[test]
    fn a_quiet_vm_sleeps_after_the_window_with_the_numbers_in_words() {
        let mut w = One::new(enabled());
        let d = w.tick();
        assert!(d.to_sleep.is_empty());
        assert_eq!(d.views[0].active_reason.as_deref(), Some("just started watching it"));
        let (took, reason) = w.quiet_until_sleep(30 * MIN).expect("sleeps");
        assert_eq!(took, 10 * MIN);
        assert_eq!(reason.rule, Rule::Sleep);
        assert_eq!(
            reason.text,
            "idle for 10 min: CPU 0.4% of a vCPU, network 0 B/s, disk 0 B/s, no client traffic through ebb"
        );
        // Proposed once, then a fresh window: not again on the next tick.
        assert!(w.run(10_000, 0.0, 0, 0).to_sleep.is_empty());
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
                assert!(w.run(10_000, 0.0, 0, 0).to_sleep.is_empty());
            }
            let d = w.run(10_000, cpu, net, disk);
            assert!(d.to_sleep.is_empty());
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
            assert!(d.to_sleep.is_empty());
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
            assert!(d.to_sleep.is_empty(), "slept under its held clients");
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
            assert!(d.to_sleep.is_empty());
            assert_eq!(d.views[0].skipped.as_deref(), Some("the hypervisor reports no activity counters for it"));
        }
    }

    #[test]
    fn two_observations_at_the_same_instant_change_nothing() {
        let mut w = One::new(SleepSettings { idle_after: Span::from_millis(0), ..enabled() });
        w.tick();
        let d = w.tick();
        assert!(d.to_sleep.is_empty(), "no time passed: nothing measured");
        assert_eq!(w.run(1000, 0.0, 0, 0).to_sleep.len(), 1, "idle_after 0 sleeps on the first quiet tick");
        assert!(w.run(1000, 0.9, 0, 0).to_sleep.is_empty(), "but never on a busy one");
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
                    let proposed = d.to_sleep.iter().any(|(id, _, _)| id == &ids[i]);
                    let may = enabled[i] && (persistent[i] || pause[i]);
                    if proposed {
                        prop_assert!(may, "vm{} may not sleep", i);
                        prop_assert!(now.since(quiet_since[i]) >= idle_after, "vm{} busy within its window", i);
                        prop_assert!(quiet_since[i] < now, "vm{} busy on this very tick", i);
                        let (_, mode, _) = d.to_sleep.iter().find(|(id, _, _)| id == &ids[i]).unwrap();
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
}
