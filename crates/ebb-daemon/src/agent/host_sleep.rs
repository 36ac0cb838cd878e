//! The host's own sleep in a farm (seed 002), as `ebb_core::host_sleep`
//! decides it: the shared check in etcd through the farm link, the VMs
//! saved (never destroyed), the platform's low-power state (run only when
//! configured, else recorded), and the wake that restores what was saved.

use super::*;
use crate::api_types::HostSleepView;
use crate::journal::{Entry, Outcome};
use ebb_backends::platform::HostSlept;
use ebb_core::farm::HostState;
use ebb_core::host_sleep::{self, HostFacts, HostSleepConfig, Verdict};
use ebb_core::{Action, Observation, Reason, Rule, SleepMode, VmState};
use ebb_farm::{Drain, FarmError, HostView, LinkRequests, LinkState, Slept};
use tracing::{info, warn};

/// etcd's answer to the shared check, and the reason the host asked with.
type Answer = (Result<Drain, FarmError>, String);

/// The host's sleep cycle as the agent runs it.
pub(super) struct HostSleep {
    cfg: Option<HostSleepConfig>,
    wake_methods: usize,
    /// The farm link's requests (with `[farm]`).
    requests: Option<LinkRequests>,
    /// The host's own keys in etcd (its state, the farm's marks), while a member.
    in_farm: Option<watch::Receiver<Option<HostView>>>,
    /// etcd's answers to the shared check come back here.
    answers: (mpsc::Sender<Answer>, mpsc::Receiver<Answer>),
    phase: Phase,
    /// Since when no client has been active.
    idle_since: Option<Millis>,
    /// The agent's start, or the host's last wake.
    awake_since: Millis,
    /// Recent sleeps, for the cycle cap.
    sleeps: Vec<Millis>,
    /// The VMs saved for the host's sleep (journaled), restored when it wakes.
    saved: BTreeSet<VmId>,
    /// VMs were left saved for a sleep when the agent started: the host
    /// slept (powered off) and is back.
    resumed_at_start: bool,
    /// Why the host is awake now, or what it is doing, in words.
    now: String,
    last_sleep: Option<(Millis, String)>,
    last_wake: Option<(Millis, String)>,
    counted: (u64, u64),
}

/// What comes to the agent from the farm about its host.
pub(super) enum HostEvent {
    Answer(Answer),
    FarmChanged,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Awake,
    /// The shared check is on its way to etcd.
    Asking,
    /// Asleep, as far as ebb goes: the platform only recorded it, so the
    /// host is up and wakes when a client comes.
    Recorded,
}

impl HostSleep {
    pub(super) fn new(cfg: &Config, started_at: Millis, saved: Vec<VmId>) -> HostSleep {
        let farm = cfg.farm.as_ref();
        HostSleep {
            cfg: farm.and_then(|f| f.sleep.clone()),
            wake_methods: farm.map_or(0, |f| f.wake.methods().len()),
            requests: None,
            in_farm: None,
            answers: mpsc::channel(4),
            phase: Phase::Awake,
            idle_since: None,
            awake_since: started_at,
            sleeps: Vec::new(),
            resumed_at_start: !saved.is_empty(),
            saved: saved.into_iter().collect(),
            now: String::new(),
            last_sleep: None,
            last_wake: None,
            counted: (0, 0),
        }
    }

    pub(super) fn use_link(&mut self, link: &ebb_farm::MemberLink) {
        self.requests = Some(link.requests());
        self.in_farm = Some(link.host());
    }

    /// The host's own keys as etcd last said them.
    fn in_farm(&self) -> Option<HostView> {
        self.in_farm.as_ref().and_then(|r| r.borrow().clone())
    }

    /// The next answer from etcd, or a change of the host's keys there
    /// (pending forever without `[farm]`).
    pub(super) async fn next_event(&mut self) -> HostEvent {
        let answers = &mut self.answers.1;
        let in_farm = &mut self.in_farm;
        let changed = async {
            let Some(r) = in_farm.as_mut() else { return std::future::pending().await };
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            Some(a) = answers.recv() => HostEvent::Answer(a),
            () = changed => HostEvent::FarmChanged,
        }
    }

    pub(super) fn view(&self) -> Option<HostSleepView> {
        self.cfg.as_ref()?;
        let state = match self.phase {
            Phase::Awake => "awake",
            Phase::Asking => "draining",
            Phase::Recorded => "asleep (recorded)",
        };
        Some(HostSleepView {
            state: state.into(),
            why: self.now.clone(),
            last_sleep: self.last_sleep.clone(),
            last_wake: self.last_wake.clone(),
            sleeps_total: self.counted.0,
            wakes_total: self.counted.1,
            last_wake_took_ms: self.in_farm.as_ref().and_then(|h| h.borrow().as_ref().and_then(|v| v.woke.as_ref().map(|w| w.took_ms))),
        })
    }
}

impl Agent {
    /// At each tick: follows the client count, and asks to sleep when the
    /// core says so, or wakes a host whose sleep was only recorded.
    pub(super) async fn host_sleep_tick(&mut self, obs: &Observation, at: Millis) {
        if std::mem::take(&mut self.host.resumed_at_start) {
            // Whatever the config says now: what was saved for a sleep comes back.
            return self.host_wakes("the agent started again after the host's sleep", at).await;
        }
        if self.host.cfg.is_none() {
            return;
        }
        let active = self.clients.active(at);
        if active > 0 {
            self.host.idle_since = None;
        } else if self.host.idle_since.is_none() {
            self.host.idle_since = Some(at);
        }
        match self.host.phase {
            Phase::Recorded if active > 0 => self.host_wakes(&format!("{active} client(s) became active"), at).await,
            Phase::Awake => {
                let facts = self.host_facts(obs, active, at);
                match host_sleep::decide(self.host.cfg.as_ref(), &facts) {
                    Verdict::Awake(why) => self.host.now = why.to_string(),
                    Verdict::Sleep { why } => self.ask_to_sleep(why, at),
                }
            }
            _ => {}
        }
    }

    /// The host's keys changed in etcd: a host whose sleep was only
    /// recorded wakes at once when the coordinator marks it `waking`
    /// (not at the next tick: the gateway's clients wait on it).
    async fn host_farm_changed(&mut self) {
        let waking = self.host.in_farm().filter(|h| h.state == Some(HostState::Waking));
        if let (Phase::Recorded, Some(h)) = (self.host.phase, waking) {
            let why = format!("the farm's coordinator woke it{}", h.waking.as_ref().map_or(String::new(), |w| format!(": {}", w.why)));
            let at = self.clock.now();
            self.host_wakes(&why, at).await;
            self.republish();
        }
    }

    fn host_facts(&self, obs: &Observation, active: usize, at: Millis) -> HostFacts {
        let not_member = match self.farm.as_ref().map(|l| l.borrow().state.clone()) {
            Some(LinkState::Member { .. }) => None,
            Some(LinkState::Disconnected { error, .. }) => Some(error),
            Some(LinkState::Joining { .. }) => Some("the host is joining the farm".into()),
            Some(LinkState::Left) | None => Some("the host is not in the farm".into()),
        };
        let host = self.farm.as_ref().map(|l| l.borrow().host.clone()).unwrap_or_default();
        let marked = self.host.in_farm().and_then(|h| h.wake_failed).map(|m| {
            format!(
                "the farm could not wake this host at {} UTC ({}): it is not put to sleep again until the mark is removed (etcdctl del {})",
                crate::words::clock(m.at),
                m.why,
                ebb_farm::keys::wake_failed(&host)
            )
        });
        let busy = if self.power_is_low() || !self.power.saved.is_empty() {
            Some("a power event holds the host (VMs saved for power wait for mains)".into())
        } else {
            marked
        };
        let unsaveable = obs
            .vms
            .iter()
            .filter(|v| matches!(v.state, VmState::Running | VmState::Paused) && !v.persistent)
            .map(|v| (v.id.clone(), "it is transient: only a defined domain can be saved".to_string()))
            .collect();
        HostFacts {
            now: at,
            active_clients: active,
            idle_since: self.host.idle_since,
            awake_since: self.host.awake_since,
            recent_sleeps: host_sleep::recent(&self.host.sleeps, at),
            wake_methods: self.host.wake_methods,
            not_member,
            busy,
            unsaveable,
        }
    }

    /// ebb's VMs that run (or are paused) and are not asleep already.
    fn running_vms(&self) -> Vec<VmId> {
        let mut vms: Vec<VmId> = self
            .vms
            .states
            .iter()
            .filter(|(vm, k)| matches!(k.state, VmState::Running | VmState::Paused) && !self.vms.sleeping.contains_key(*vm))
            .map(|(vm, _)| vm.clone())
            .collect();
        vms.sort();
        vms
    }

    /// Sends the shared check to etcd; the answer comes back as an event.
    fn ask_to_sleep(&mut self, why: String, at: Millis) {
        let Some(requests) = self.host.requests.clone() else { return };
        self.host.phase = Phase::Asking;
        self.host.now = format!("asking the farm to sleep: {why}");
        info!("host sleep: {why}; checking the farm's count in etcd");
        let answers = self.host.answers.0.clone();
        tokio::spawn(async move {
            let r = requests.begin_sleep(Slept { at, why: why.clone() }).await;
            let _ = answers.send((r, why)).await;
        });
    }

    pub(super) async fn host_event(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Answer((answer, why)) => self.host_sleep_answer(answer, why).await,
            HostEvent::FarmChanged => self.host_farm_changed().await,
        }
    }

    /// etcd's answer to the shared check.
    async fn host_sleep_answer(&mut self, answer: Result<Drain, FarmError>, why: String) {
        let at = self.clock.now();
        if self.host.phase != Phase::Asking {
            return;
        }
        match answer {
            Ok(Drain::Begun) => self.host_drains(why, at).await,
            Ok(Drain::Refused { clients, state }) => {
                let state = state.map_or("none".to_string(), |s| s.to_string());
                self.host_stays_awake(format!("etcd holds {clients} client(s) of this host (state {state}): a client arrived during the decision"), at);
            }
            Err(e) => self.host_stays_awake(format!("the farm's count could not be checked: {e}"), at),
        }
    }

    /// The sleep is called off; the grace period starts again.
    fn host_stays_awake(&mut self, why: String, at: Millis) {
        info!("host sleep called off: {why}");
        self.journal_entry(Entry { rule: Some(Rule::HostSleep), ..Entry::event(at, Kind::HostSleepCalledOff, format!("host sleep called off: {why}")) });
        self.host.phase = Phase::Awake;
        self.host.now = format!("the last sleep was called off: {why}");
        self.host.idle_since = Some(at);
    }

    /// Draining: saves every VM, then the platform's low-power state. A VM
    /// that cannot be saved, or a client that comes meanwhile, calls it off
    /// and what was saved is restored.
    async fn host_drains(&mut self, why: String, at: Millis) {
        let reason = Reason::new(Rule::HostSleep, format!("the host sleeps: {why}"));
        let mut saved = Vec::new();
        let mut failure = None;
        for vm in self.running_vms() {
            let active = self.clients.active(self.clock.now());
            if active > 0 {
                failure = Some(format!("{active} client(s) became active while the host drained"));
                break;
            }
            let action = Action::Sleep { vm: vm.clone(), mode: SleepMode::Save, reason: reason.clone() };
            match self.act(vec![action], at).await.pop() {
                Some((_, Ok(()))) => {
                    let id = vm.clone();
                    self.journal.write(move |j| j.set_host_saved(&id, true, at));
                    saved.push(vm);
                }
                Some((_, Err(e))) => {
                    failure = Some(format!("{vm} could not be saved ({e})"));
                    break;
                }
                None => {
                    failure = Some(format!("{vm} could not be saved (libvirt is not connected)"));
                    break;
                }
            }
        }
        self.host.saved.extend(saved);
        if let Some(why) = failure {
            self.host.sleeps.push(at);
            self.host_stays_awake(why, at);
            return self.restore_host_saved(at).await;
        }
        // Written before the platform call: a suspended host writes nothing.
        if let Some(requests) = self.host.requests.clone() {
            if let Err(e) = requests.set_state(HostState::Sleeping).await {
                warn!("farm: the host's state sleeping was not written: {e}");
            }
        }
        let state = self.host.cfg.as_ref().map_or("suspend", |c| c.state.as_str());
        let done = self.with_platform(move |p| p.sleep_host(state)).await;
        self.host.sleeps.push(at);
        self.host.counted.0 += 1;
        self.host.last_sleep = Some((at, why.clone()));
        let saved = self.host.saved.len();
        let (text, outcome) = match &done {
            Some(Ok(HostSlept::Resumed(t) | HostSlept::Recorded(t))) => (format!("the host sleeps ({why}); {saved} VM(s) saved; {t}"), Outcome::Ok),
            Some(Err(e)) => (format!("the host could not sleep ({e}); {saved} VM(s) saved are restored"), Outcome::Failed(e.to_string())),
            None => ("the host could not sleep (no platform)".into(), Outcome::Failed("no platform".into())),
        };
        warn!("{text}");
        self.journal_entry(Entry { rule: Some(Rule::HostSleep), outcome: Some(outcome), ..Entry::event(at, Kind::HostSleep, text) });
        match done {
            Some(Ok(HostSlept::Recorded(_))) => {
                self.host.phase = Phase::Recorded;
                self.host.now = format!("asleep (recorded, the host stays up): {why}; a client's activity wakes it");
            }
            // The command returned: a suspend is over, the host is back.
            Some(Ok(HostSlept::Resumed(_))) => self.host_wakes("the host resumed", self.clock.now()).await,
            Some(Err(e)) => self.host_wakes(&format!("its sleep failed: {e}"), self.clock.now()).await,
            None => self.host_wakes("its sleep failed", self.clock.now()).await,
        }
    }

    /// The host is awake again: what was saved for its sleep is restored
    /// and the farm hears it.
    async fn host_wakes(&mut self, why: &str, at: Millis) {
        info!("host awake: {why}");
        self.host.phase = Phase::Awake;
        self.host.awake_since = at;
        self.host.counted.1 += 1;
        self.host.last_wake = Some((at, why.to_string()));
        self.host.now = format!("awake since {}: {why}", crate::words::clock(at));
        self.journal_entry(Entry { rule: Some(Rule::HostSleep), outcome: Some(Outcome::Ok), ..Entry::event(at, Kind::HostWake, format!("the host is awake: {why}")) });
        self.set_farm_state(HostState::Awake);
        self.restore_host_saved(at).await;
    }

    /// Restores the VMs saved for the host's sleep that still sleep.
    async fn restore_host_saved(&mut self, at: Millis) {
        let reason = Reason::new(Rule::HostSleep, "the host is awake: restoring what ebb saved for its sleep");
        let saved = std::mem::take(&mut self.host.saved);
        let wakes: Vec<Action> = saved.iter().filter(|vm| self.vms.sleeping.contains_key(*vm)).map(|vm| Action::Wake { vm: vm.clone(), reason: reason.clone() }).collect();
        for (action, result) in self.act(wakes, at).await {
            if let (Some(vm), Err(e)) = (action.vm(), result) {
                // Still asleep under ebb: its traffic or `ebb wake` brings it back.
                warn!(vm = %vm, "not restored after the host's sleep: {e}");
            }
        }
        for vm in saved {
            self.journal.write(move |j| j.set_host_saved(&vm, false, at));
        }
    }

    /// The host's state in etcd, written beside the agent's task (which
    /// never waits on etcd); a failure is said, not fatal: the link's next
    /// join writes `awake` anyway.
    fn set_farm_state(&self, state: HostState) {
        let Some(requests) = self.host.requests.clone() else { return };
        tokio::spawn(async move {
            if let Err(e) = requests.set_state(state).await {
                warn!("farm: the host's state {state} was not written: {e}");
            }
        });
    }
}
