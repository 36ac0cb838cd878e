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
use crate::policy::{Decision, Outcome, Policy};
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

/// The VMs ebb holds asleep that no longer sleep: started or resumed behind
/// ebb's back (`virsh start`, `virsh resume`), or gone; each with the state
/// it is seen in (None: gone).
pub fn woke_outside<'a>(sleeping: impl IntoIterator<Item = (&'a VmId, &'a SleepRecord)>, obs: &Observation) -> Vec<(VmId, Option<VmState>)> {
    sleeping
        .into_iter()
        .filter_map(|(id, rec)| {
            let seen = obs.vms.iter().find(|v| &v.id == id).map(|v| v.state);
            // Running again, gone, or a paused one shut off (its pause is lost).
            let woke = matches!((seen, rec.mode), (None, _) | (Some(VmState::Running), _) | (Some(VmState::ShutOff), SleepMode::Pause));
            woke.then(|| (id.clone(), seen))
        })
        .collect()
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

/// `Sleep` actions in id order, and one view per observed VM in
/// observation order.
pub type SleepDecision = Decision<VmIdleView>;

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
                    d.actions.push(Action::Sleep { vm: v.id.clone(), mode: s.mode, reason: Reason::new(Rule::Sleep, text) });
                    track.window_start = track.last;
                }
            }
            d.views.push(view);
        }
        watched.sort();
        self.vms.retain(|id, _| watched.binary_search(id).is_ok());
        d.actions.sort_by(|a, b| a.vm().cmp(&b.vm()));
        d
    }
}

impl Policy for SleepPolicy {
    /// A VM ebb woke starts a fresh idle window. (A sleep that fails needs
    /// nothing: proposing it restarted the window already.)
    fn outcome(&mut self, action: &Action, result: &Outcome, _: Millis) {
        if let (Action::Wake { vm, .. }, Ok(())) = (action, result) {
            self.woke(vm);
        }
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
#[path = "sleep_tests.rs"]
mod tests;
