//! The agent: one task owns all state and runs observe → decide → act →
//! journal on every tick (tokio-console's aggregator shape: no shared
//! mutable state). Readers get an immutable `Snapshot` through a watch
//! channel. Runtime faults (libvirtd gone, a VM vanishing, a failed call)
//! are journaled and shown; they never stop the agent.

use crate::api_types::{Connection, Snapshot, Status, VmInfo};
use crate::config::Config;
use crate::journal::{Entry, Journal};
use crate::settings::{self, MetadataSettings, Resolved};
use ebb_backends::{HvError, Hypervisor};
use ebb_core::memory::{MemoryConfig, MemoryDecision, MemoryPolicy, VmMemoryView};
use ebb_core::{Action, Bytes, Millis, Observation, VmId, VmState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Opens a hypervisor connection; called again after the connection is lost.
pub type Connector = Box<dyn Fn(&str) -> Result<Box<dyn Hypervisor>, HvError> + Send + Sync>;

/// How often a domain's `<metadata>` is re-read (it rarely changes, and
/// reading it is one call per VM, unlike the bulk stats).
const METADATA_REFRESH: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub fn now() -> Millis {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Millis(d.as_millis() as u64)
}

struct CachedMetadata {
    fetched_at: Millis,
    settings: Result<Option<MetadataSettings>, String>,
}

pub struct Agent {
    cfg: Config,
    mem_cfg: MemoryConfig,
    connect: Arc<Connector>,
    hv: Option<Box<dyn Hypervisor>>,
    connection: Connection,
    policy: MemoryPolicy,
    journal: Journal,
    metadata: HashMap<VmId, CachedMetadata>,
    /// What was last said about each VM, so the journal records changes, not repeats.
    known_vms: BTreeSet<VmId>,
    last_skip: HashMap<VmId, Option<String>>,
    last_problems: HashMap<VmId, Vec<String>>,
    saved_memory: HashMap<VmId, (Bytes, Option<Bytes>)>,
    /// VMs whose balloon was still moving at the last tick.
    in_flight: Vec<VmId>,
    started_at: Millis,
    ticks: u64,
    actions_total: u64,
    action_failures_total: u64,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Agent {
    /// Builds the agent and resumes what the journal remembers. Does not
    /// connect yet: the first tick does, so a libvirtd that is down at start
    /// is handled like one that goes away later.
    pub fn new(cfg: Config, journal: Journal, connect: Connector) -> (Agent, watch::Receiver<Arc<Snapshot>>) {
        let started_at = now();
        let mem_cfg = cfg.memory.policy_config();
        let mut policy = MemoryPolicy::new();
        let mut saved_memory = HashMap::new();
        match journal.memory_states() {
            Ok(states) => {
                for (vm, resumed) in states {
                    saved_memory.insert(vm.clone(), (resumed.step, resumed.last_target));
                    policy.resume(vm, resumed);
                }
            }
            Err(e) => warn!("could not resume memory state from the journal: {e}"),
        }
        let connection = Connection::Disconnected {
            since: started_at,
            error: "not connected yet".into(),
            attempts: 0,
            next_try_at: started_at,
        };
        let agent = Agent {
            mem_cfg,
            connect: Arc::new(connect),
            hv: None,
            connection,
            policy,
            metadata: HashMap::new(),
            known_vms: BTreeSet::new(),
            last_skip: HashMap::new(),
            last_problems: HashMap::new(),
            saved_memory,
            in_flight: Vec::new(),
            started_at,
            ticks: 0,
            actions_total: 0,
            action_failures_total: 0,
            snapshot: watch::channel(Arc::new(Snapshot { status: placeholder_status(), vms: vec![] })).0,
            journal,
            cfg,
        };
        let status = agent.status(None, None, 0.0);
        agent.snapshot.send_replace(Arc::new(Snapshot { status, vms: vec![] }));
        let rx = agent.snapshot.subscribe();
        (agent, rx)
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.journal_event(None, "started", &format!("ebb {} started, watching {}", env!("CARGO_PKG_VERSION"), self.cfg.agent.uri));
        tokio::pin!(shutdown);
        loop {
            let moving = self.tick().await;
            let wait = if moving { self.cfg.agent.fast_tick.min(self.cfg.agent.tick) } else { self.cfg.agent.tick };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => break,
            }
        }
        self.journal_event(None, "stopped", "ebb stopped");
        info!("ebb stopped");
    }

    /// One observe → decide → act round. Returns true while some balloon
    /// is moving, so the caller follows it with a fast tick.
    pub async fn tick(&mut self) -> bool {
        let started = Instant::now();
        let at = now();
        self.ticks += 1;
        if self.hv.is_none() && !self.try_connect(at).await {
            self.publish(None, None, started, at);
            return false;
        }
        let needs_metadata = self.metadata_due(at);
        let filter = self.cfg.agent.clone();
        let in_flight = self.in_flight.clone();
        let Some(result) = self
            .with_hv(move |hv| {
                let mut obs = hv.observe()?;
                obs.vms.retain(|vm| filter.is_ebbs(vm.id.as_str()));
                // The bulk size of a moving balloon lags up to a second: read
                // those few live, so each step is seen landing at once.
                for vm in obs.vms.iter_mut().filter(|v| in_flight.contains(&v.id)) {
                    match (hv.balloon_now(&vm.id), vm.balloon.as_mut()) {
                        (Ok(now), Some(b)) => b.current = now,
                        (Err(e), _) => debug!(vm = %vm.id, "live balloon size unavailable: {e}"),
                        _ => {}
                    }
                }
                let due: Vec<VmId> = obs.vms.iter().map(|v| v.id.clone()).filter(|id| needs_metadata(id)).collect();
                let metadata = due.into_iter().map(|id| {
                    let m = hv.ebb_metadata(&id);
                    (id, m)
                });
                Ok::<_, HvError>((obs, metadata.collect::<Vec<_>>()))
            })
            .await
        else {
            return false;
        };
        let (mut obs, metadata) = match result {
            Ok(r) => r,
            Err(e) => {
                self.lost_connection(at, &e);
                self.publish(None, None, started, at);
                return false;
            }
        };
        obs.at = at;
        for (vm, m) in metadata {
            let settings = match m {
                Ok(Some(xml)) => settings::parse_metadata(&xml).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            self.metadata.insert(vm, CachedMetadata { fetched_at: at, settings });
        }
        self.note_vm_changes(&obs, at);
        let resolved = self.resolve_settings(&obs);
        let settings = resolved.iter().map(|(id, r)| (id.clone(), r.settings.clone())).collect();
        let decision = self.policy.decide(&obs, &settings, &self.mem_cfg, at);
        self.act(&decision, at).await;
        self.remember_memory_state(&decision, at);
        self.publish(Some((&obs, &resolved)), Some(&decision), started, at);
        self.in_flight = decision
            .vms
            .iter()
            .filter(|v| v.skipped.is_none() && v.target.is_some() && v.target != v.actual)
            .map(|v| v.vm.clone())
            .collect();
        self.cfg.memory.enabled && !self.in_flight.is_empty()
    }

    /// Runs a blocking hypervisor call off the async runtime. None when
    /// there is no connection or the call panicked.
    async fn with_hv<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn Hypervisor) -> R + Send + 'static,
    ) -> Option<R> {
        let mut hv = self.hv.take()?;
        match tokio::task::spawn_blocking(move || {
            let r = f(hv.as_mut());
            (hv, r)
        })
        .await
        {
            Ok((hv, r)) => {
                self.hv = Some(hv);
                Some(r)
            }
            Err(e) => {
                warn!("a hypervisor call panicked; reconnecting: {e}");
                None
            }
        }
    }

    async fn try_connect(&mut self, at: Millis) -> bool {
        let (attempts, next_try_at) = match &self.connection {
            Connection::Disconnected { attempts, next_try_at, .. } => (*attempts, *next_try_at),
            Connection::Connected { .. } => (0, at),
        };
        if at < next_try_at {
            return false;
        }
        let connect = self.connect.clone();
        let uri = self.cfg.agent.uri.clone();
        let result = tokio::task::spawn_blocking(move || connect(&uri)).await;
        match result {
            Ok(Ok(hv)) => {
                self.hv = Some(hv);
                self.connection = Connection::Connected { since: at };
                let text = format!("connected to libvirt at {}", self.cfg.agent.uri);
                info!("{text}");
                self.journal_event(None, "connected", &text);
                true
            }
            Ok(Err(e)) => {
                let backoff = backoff_after(attempts + 1);
                let error = e.to_string();
                if attempts == 0 {
                    warn!("{error}; retrying every {}s at most", BACKOFF_MAX.as_secs());
                    self.journal_event(None, "connect_failed", &error);
                } else {
                    debug!("reconnect attempt {} failed: {error}", attempts + 1);
                }
                let since = match &self.connection {
                    Connection::Disconnected { since, .. } => *since,
                    Connection::Connected { .. } => at,
                };
                self.connection = Connection::Disconnected {
                    since,
                    error,
                    attempts: attempts + 1,
                    next_try_at: at.plus(backoff.as_millis() as u64),
                };
                false
            }
            Err(e) => {
                warn!("connecting to libvirt panicked: {e}");
                false
            }
        }
    }

    fn lost_connection(&mut self, at: Millis, e: &HvError) {
        self.hv = None;
        let error = e.to_string();
        warn!("lost libvirt: {error}; reconnecting with backoff");
        self.journal_event(None, "disconnected", &format!("lost libvirt: {error}"));
        self.connection = Connection::Disconnected { since: at, error, attempts: 0, next_try_at: at };
    }

    /// A predicate over VM ids telling which need their metadata (re)read.
    fn metadata_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let fresh: BTreeSet<VmId> = self
            .metadata
            .iter()
            .filter(|(_, m)| at.since(m.fetched_at) < METADATA_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| !fresh.contains(id)
    }

    fn note_vm_changes(&mut self, obs: &Observation, at: Millis) {
        let seen: BTreeSet<VmId> = obs.vms.iter().map(|v| v.id.clone()).collect();
        for vm in seen.difference(&self.known_vms).cloned().collect::<Vec<_>>() {
            self.journal_vm(&vm, at, "vm_appeared", None, &format!("{vm} appeared"), None, None);
        }
        for vm in self.known_vms.difference(&seen).cloned().collect::<Vec<_>>() {
            self.journal_vm(&vm, at, "vm_gone", None, &format!("{vm} is no longer defined"), None, None);
            self.metadata.remove(&vm);
            self.last_skip.remove(&vm);
            self.last_problems.remove(&vm);
        }
        self.known_vms = seen;
    }

    fn resolve_settings(&mut self, obs: &Observation) -> BTreeMap<VmId, Resolved> {
        let mut out = BTreeMap::new();
        for vm in &obs.vms {
            let (meta, mut problems) = match self.metadata.get(&vm.id).map(|m| &m.settings) {
                Some(Ok(m)) => (m.clone(), vec![]),
                Some(Err(e)) => (None, vec![format!("ignoring its ebb metadata: {e}")]),
                None => (None, vec![]),
            };
            let mut r = settings::resolve(self.cfg.vm_section(&vm.id), meta.as_ref());
            problems.append(&mut r.problems);
            r.problems = problems;
            if self.last_problems.get(&vm.id) != Some(&r.problems) {
                for p in &r.problems {
                    warn!(vm = %vm.id, "{p}");
                    self.journal_vm(&vm.id, now(), "settings_problem", None, p, None, None);
                }
                self.last_problems.insert(vm.id.clone(), r.problems.clone());
            }
            out.insert(vm.id.clone(), r);
        }
        out
    }

    /// Carries out the decision's actions and journals each outcome.
    async fn act(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.vms {
            if self.last_skip.get(&view.vm) != Some(&view.skipped) {
                if let Some(why) = &view.skipped {
                    info!(vm = %view.vm, "not managing its memory: {why}");
                    self.journal_vm(&view.vm, at, "skipped", Some("skip"), why, None, None);
                }
                self.last_skip.insert(view.vm.clone(), view.skipped.clone());
            }
        }
        if !self.cfg.memory.enabled || decision.actions.is_empty() {
            return;
        }
        let actions = decision.actions.clone();
        let Some(results) = self
            .with_hv(move |hv| {
                actions
                    .into_iter()
                    .map(|a| {
                        let r = match &a {
                            Action::SetBalloonTarget { vm, target, .. } => hv.set_memory(vm, *target),
                        };
                        (a, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return;
        };
        for (action, result) in results {
            self.actions_total += 1;
            let Action::SetBalloonTarget { vm, target, reason } = &action;
            let outcome = match &result {
                Ok(()) => {
                    info!(vm = %vm, target = %target, "{reason}");
                    "ok".to_string()
                }
                Err(e) => {
                    self.action_failures_total += 1;
                    self.policy.record_failure(vm, at);
                    warn!(vm = %vm, "setting memory to {target} failed: {e}");
                    format!("failed: {e}")
                }
            };
            self.journal_vm(vm, at, action.kind(), Some(reason.rule.as_str()), &reason.text, Some(*target), Some(&outcome));
            if let Err(e) = result {
                if e.is_connection_lost() {
                    self.lost_connection(at, &e);
                    break;
                }
            }
        }
    }

    /// Persists each VM's adaptive step and target when they change, so a
    /// restarted agent resumes instead of starting over.
    fn remember_memory_state(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.vms {
            if view.skipped.is_some() {
                continue;
            }
            let state = (view.step, view.target);
            if self.saved_memory.get(&view.vm) != Some(&state) {
                match self.journal.save_memory_state(&view.vm, view.step, view.target, at) {
                    Ok(()) => {
                        self.saved_memory.insert(view.vm.clone(), state);
                    }
                    Err(e) => warn!("{e}"),
                }
            }
        }
    }

    fn publish(
        &self,
        seen: Option<(&Observation, &BTreeMap<VmId, Resolved>)>,
        decision: Option<&MemoryDecision>,
        started: Instant,
        at: Millis,
    ) {
        let tick_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (obs, vms) = match (seen, decision) {
            (Some((obs, resolved)), Some(decision)) => {
                let views: HashMap<&VmId, &VmMemoryView> = decision.vms.iter().map(|v| (&v.vm, v)).collect();
                let vms = obs
                    .vms
                    .iter()
                    .filter_map(|vm| {
                        let r = resolved.get(&vm.id)?;
                        Some(VmInfo {
                            name: vm.id.0.clone(),
                            state: vm.state,
                            memory: (*views.get(&vm.id)?).clone(),
                            settings: r.settings.clone(),
                            sources: r.sources,
                            settings_problems: r.problems.clone(),
                        })
                    })
                    .collect();
                (Some(obs), vms)
            }
            // Disconnected: keep showing the VMs as last seen.
            _ => (None, self.snapshot.borrow().vms.clone()),
        };
        let mut status = self.status(obs, decision, tick_ms);
        status.last_tick_at = Some(at);
        self.snapshot.send_replace(Arc::new(Snapshot { status, vms }));
    }

    fn status(&self, obs: Option<&Observation>, decision: Option<&MemoryDecision>, tick_ms: f64) -> Status {
        let prev = self.snapshot.borrow().status.clone();
        let vms: Vec<&VmMemoryView> = decision.map(|d| d.vms.iter().collect()).unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uri: self.cfg.agent.uri.clone(),
            connection: self.connection.clone(),
            started_at: self.started_at,
            tick_ms: self.cfg.agent.tick.as_millis() as u64,
            ticks: self.ticks,
            last_tick_at: prev.last_tick_at,
            last_tick_ms: tick_ms,
            memory_enabled: self.cfg.memory.enabled,
            pool: decision.map(|d| d.pool).or(prev.pool),
            pool_used: decision.map(|d| d.pool_used).unwrap_or(prev.pool_used),
            host_total: obs.map(|o| o.host.total).unwrap_or(prev.host_total),
            host_available: obs.map(|o| o.host.available).unwrap_or(prev.host_available),
            vms: if decision.is_some() { vms.len() } else { prev.vms },
            vms_managed: if decision.is_some() { vms.iter().filter(|v| v.skipped.is_none()).count() } else { prev.vms_managed },
            actions_total: self.actions_total,
            action_failures_total: self.action_failures_total,
            journal: self.journal.path().display().to_string(),
        }
    }

    fn journal_event(&self, vm: Option<&str>, kind: &str, text: &str) {
        let entry = Entry { at: now(), vm, kind, text, ..Default::default() };
        if let Err(e) = self.journal.record(&entry) {
            warn!("{e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn journal_vm(&self, vm: &VmId, at: Millis, kind: &str, rule: Option<&str>, text: &str, target: Option<Bytes>, outcome: Option<&str>) {
        let entry = Entry { at, vm: Some(vm.as_str()), kind, rule, text, target, outcome };
        if let Err(e) = self.journal.record(&entry) {
            warn!("{e}");
        }
    }
}

fn backoff_after(attempts: u32) -> Duration {
    let secs = BACKOFF_MIN.as_secs().saturating_mul(1u64 << attempts.min(6).saturating_sub(1));
    Duration::from_secs(secs).min(BACKOFF_MAX)
}

fn placeholder_status() -> Status {
    Status {
        version: String::new(),
        uri: String::new(),
        connection: Connection::Disconnected { since: Millis(0), error: String::new(), attempts: 0, next_try_at: Millis(0) },
        started_at: Millis(0),
        tick_ms: 0,
        ticks: 0,
        last_tick_at: None,
        last_tick_ms: 0.0,
        memory_enabled: true,
        pool: None,
        pool_used: Bytes::ZERO,
        host_total: Bytes::ZERO,
        host_available: Bytes::ZERO,
        vms: 0,
        vms_managed: 0,
        actions_total: 0,
        action_failures_total: 0,
        journal: String::new(),
    }
}

/// Plain-words state of a VM for `ebb vms`.
pub fn vm_state_word(s: VmState) -> &'static str {
    match s {
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShutOff => "shut off",
        VmState::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_after(1), Duration::from_secs(1));
        assert_eq!(backoff_after(2), Duration::from_secs(2));
        assert_eq!(backoff_after(3), Duration::from_secs(4));
        assert_eq!(backoff_after(10), BACKOFF_MAX);
    }
}
