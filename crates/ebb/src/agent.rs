//! The agent: one task owns all state and runs observe → decide → act →
//! journal on every tick (tokio-console's aggregator shape: no shared
//! mutable state). Readers get an immutable `Snapshot` through a watch
//! channel. Runtime faults (libvirtd gone, a VM vanishing, a failed call)
//! are journaled and shown; they never stop the agent.

use crate::api_types::{Connection, CpufreqView, DevicesView, DisksView, PlanView, PowerStatus, SleepRecord, Snapshot, Status, SurrogateView, VmInfo};
use crate::config::Config;
use crate::journal::{Entry, Journal};
use crate::settings::{self, MetadataSettings, Resolved};
use ebb_backends::platform::{HostPlatform, Platform, UpsPoller};
use ebb_backends::{HvError, Hypervisor};
use ebb_core::affinity::{AffinityConfig, AffinityPolicy, AffinityView, AffinityVm, CpuSet, Pins};
use ebb_core::devices::{CpuChange, CpuFreq, CpuSetting, DeviceAction, DeviceConfig, DevicePolicy, DiskSample};
use ebb_core::power::{plan_power_drop, Candidate, LowBattery, Measured, PowerPlan, PowerReading, PowerState, Watts};
use ebb_core::memory::{MemoryConfig, MemoryDecision, MemoryPolicy, VmMemoryView};
use ebb_core::needs::{HourNeeds, VmNeeds};
use ebb_core::realloc::{ReallocConfig, ReallocDecision, ReallocPolicy, ReallocSettings, Tunes, VmReallocView};
use ebb_core::vcpus::{OnlineVcpus, VcpuPolicy, VcpuView, VcpuVm};
use ebb_core::sleep::{SleepDecision, SleepPolicy, SleepSettings, SurrogateTraffic, VmIdleView};
use ebb_surrogate::{AwakePath, Surrogate, SurrogateEvent, VmPower};
use ebb_core::{Action, Bytes, Millis, Observation, Reason, Rule, SleepMode, Tune, VmId, VmObservation, VmState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

/// A running domain and its disk sources, when they were due to be read.
type DiskSources = (VmId, Option<Result<Vec<PathBuf>, HvError>>);
/// The disks, the running VMs whose images each holds, and the images
/// whose disk is unknown (in words).
type DiskRead = (Vec<DiskSample>, BTreeMap<String, Vec<VmId>>, Vec<String>);

/// Opens a hypervisor connection; called again after the connection is lost.
pub type Connector = Box<dyn Fn(&str) -> Result<Box<dyn Hypervisor>, HvError> + Send + Sync>;

/// What the API asks of the agent; the reply says what happened, in words.
pub enum Command {
    Sleep { vm: VmId, reply: oneshot::Sender<Result<String, String>> },
    Wake { vm: VmId, reply: oneshot::Sender<Result<String, String>> },
    /// A VM's needs history, hour by hour.
    Needs { vm: VmId, reply: oneshot::Sender<Result<Vec<HourNeeds>, String>> },
    /// Sets or clears a VM's time-critical flag.
    Critical { vm: VmId, on: bool, reply: oneshot::Sender<Result<String, String>> },
    /// Sets a VM's value for power drops (over the config's), or clears it.
    Value { vm: VmId, value: Option<u32>, reply: oneshot::Sender<Result<String, String>> },
}

/// How often a domain's `<metadata>` is re-read (it rarely changes, and
/// reading it is one call per VM, unlike the bulk stats).
const METADATA_REFRESH: Duration = Duration::from_secs(30);
/// How often the needs history is written to the journal (and at stop).
const NEEDS_FLUSH: Duration = Duration::from_secs(60);
/// How often a running domain's CPU tune is re-read, to notice a change
/// made with `virsh schedinfo` (ebb's own changes update it at once).
const TUNE_REFRESH: Duration = Duration::from_secs(30);
/// How often a running domain's disk sources are re-read (for the disk
/// standby guard; a new domain's are read when it appears).
const DISK_SOURCES_REFRESH: Duration = Duration::from_secs(60);
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

/// A VM's state as the agent knows it: from the last observation, then
/// from each of its own actions that succeeded. API commands are judged
/// against it, never against the published snapshot, which lags.
#[derive(Clone, Copy, Debug, PartialEq)]
struct KnownState {
    state: VmState,
    managed_save: bool,
}

/// A guest asked to shut down, and whether it has been reported overdue.
struct ShuttingDown {
    since: Millis,
    overdue: bool,
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
    /// Each of ebb's VMs as the agent knows it now.
    known_states: HashMap<VmId, KnownState>,
    sleep_policy: SleepPolicy,
    /// The VMs ebb holds asleep (also in the journal, for restarts).
    sleeping: BTreeMap<VmId, SleepRecord>,
    /// Each VM's sleep settings from the last tick (config or metadata);
    /// VMs that never sleep are absent.
    sleep_settings: BTreeMap<VmId, SleepSettings>,
    realloc: ReallocPolicy,
    realloc_cfg: ReallocConfig,
    /// Each running VM's live CPU tune and when it was read.
    live_tunes: HashMap<VmId, (Tune, Millis)>,
    /// The tunes as last written to the journal, to write only changes.
    saved_tunes: HashMap<VmId, Tunes>,
    affinity: AffinityPolicy,
    affinity_cfg: AffinityConfig,
    /// The pinnings as last written to the journal.
    saved_pins: HashMap<VmId, Pins>,
    /// Each VM with a `cpus` bound: what the affinity policy made of it this tick.
    affinity_views: HashMap<VmId, AffinityView>,
    vcpus: VcpuPolicy,
    /// The online vCPU counts as last written to the journal.
    saved_vcpus: HashMap<VmId, OnlineVcpus>,
    /// Each VM with `vcpus_min`: what the policy made of it this tick, or
    /// why its guest's vCPUs could not be read.
    vcpu_views: HashMap<VmId, Result<VcpuView, String>>,
    /// `ebb critical` flags (journaled); they override the config's.
    critical: BTreeMap<VmId, bool>,
    /// `ebb value` settings (journaled); they override the config's.
    values: BTreeMap<VmId, u32>,
    /// Each VM's needs history, and which changed since the last flush.
    needs: HashMap<VmId, VmNeeds>,
    needs_dirty: BTreeSet<VmId>,
    needs_flushed_at: Millis,
    /// The host's side of power (UPS, sysfs, power-off).
    platform: Option<Box<dyn Platform>>,
    low_battery: LowBattery,
    power: Option<PowerReading>,
    power_state: Option<PowerState>,
    power_error: Option<String>,
    /// VMs ebb saved on low battery (journaled), restored when mains is back.
    power_saved: BTreeSet<VmId>,
    /// Set once the host was powered down (or the power-off recorded) in this low-battery event.
    last_power_off: Option<String>,
    power_off_done: bool,
    /// VMs whose guests were asked to shut down on low battery, their saves having failed.
    shutting_down: HashMap<VmId, ShuttingDown>,
    /// The power-drop plan as it stands this tick (with a budget).
    plan: Option<PlanView>,
    /// The host's draw by the power model at the VMs' CPU use this tick…
    model_draw: Option<Watts>,
    /// …and as RAPL measures it, or why it could not.
    measured: Result<Option<Measured>, String>,
    /// Device power: CPU frequency and disk standby (the seed's Figure 2).
    devices: DevicePolicy,
    device_cfg: DeviceConfig,
    devices_view: Option<DevicesView>,
    /// The last failed restore of the CPUs, journaled once.
    last_restore_error: Option<String>,
    /// Every running domain's disk sources (all domains, not only ebb's:
    /// no disk goes to standby under any VM), and when they were read.
    vm_disks: HashMap<VmId, (Result<Vec<PathBuf>, String>, Millis)>,
    commands: mpsc::Receiver<Command>,
    /// Stands in for the VMs' declared services (`[[vm.NAME.service]]`).
    surrogate: Surrogate,
    surrogate_events: mpsc::Receiver<SurrogateEvent>,
    /// When a VM's last refusal was journaled: a flood is one entry a second.
    refusal_journaled: HashMap<VmId, Millis>,
    started_at: Millis,
    ticks: u64,
    actions_total: u64,
    action_failures_total: u64,
    sleeps_total: u64,
    wakes_total: u64,
    last_wake_ms: Option<f64>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

/// A new agent, the snapshots it publishes and where its commands go.
pub type NewAgent = (Agent, watch::Receiver<Arc<Snapshot>>, mpsc::Sender<Command>);

impl Agent {
    /// Builds the agent and resumes what the journal remembers. Does not
    /// connect yet: the first tick does, so a libvirtd that is down at start
    /// is handled like one that goes away later. Fails on a UPS setting
    /// that cannot be used (a CA file gone since the config was checked):
    /// never a fallback to an unauthenticated reading.
    pub fn new(cfg: Config, journal: Journal, connect: Connector) -> Result<NewAgent, String> {
        let ups = cfg.power.ups_reader().transpose()?;
        let started_at = now();
        let sleeping = match journal.sleeping() {
            Ok(list) => list.into_iter().collect(),
            Err(e) => {
                warn!("could not read the sleeping VMs from the journal: {e}");
                BTreeMap::new()
            }
        };
        let (command_tx, commands) = mpsc::channel(64);
        let (surrogate, surrogate_events) = Surrogate::new(cfg.surrogate.limits());
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
        let mut realloc = ReallocPolicy::new();
        let mut saved_tunes = HashMap::new();
        match journal.tunes() {
            Ok(list) => {
                for (vm, tunes) in list {
                    saved_tunes.insert(vm.clone(), tunes);
                    realloc.resume(vm, tunes);
                }
            }
            Err(e) => warn!("could not resume CPU tunes from the journal: {e}"),
        }
        let mut affinity = AffinityPolicy::new();
        let saved_pins: HashMap<VmId, Pins> = journal.pins().unwrap_or_else(|e| {
            warn!("could not resume vCPU pinnings from the journal: {e}");
            vec![]
        }).into_iter().collect();
        for (vm, pins) in &saved_pins {
            affinity.resume(vm.clone(), pins.clone());
        }
        let mut vcpus = VcpuPolicy::new();
        let saved_vcpus: HashMap<VmId, OnlineVcpus> = journal
            .online_vcpus()
            .unwrap_or_else(|e| {
                warn!("could not resume the guests' online vCPUs from the journal: {e}");
                vec![]
            })
            .into_iter()
            .collect();
        for (vm, v) in &saved_vcpus {
            vcpus.resume(vm.clone(), *v);
        }
        let needs = journal.needs().unwrap_or_else(|e| {
            warn!("could not read the needs history from the journal: {e}");
            vec![]
        });
        let power_saved = journal.power_saved().unwrap_or_else(|e| {
            warn!("could not read the VMs saved for power from the journal: {e}");
            vec![]
        });
        let platform: Box<dyn Platform> = Box::new(HostPlatform {
            ups: ups.map(UpsPoller::new),
            sysfs: cfg.power.sysfs.clone(),
            power_off_command: cfg.power.power_off_command.clone(),
            disk_standby_command: cfg.power.devices.disk_standby_command.clone(),
            recorded: Default::default(),
            rapl_last: None,
        });
        let mut devices = DevicePolicy::new();
        match journal.cpu_changes() {
            Ok(changes) => devices.resume_cpu(changes),
            Err(e) => warn!("could not read the CPU frequency changes from the journal: {e}"),
        }
        let critical = journal.critical().unwrap_or_else(|e| {
            warn!("could not read the critical flags from the journal: {e}");
            vec![]
        });
        let values = journal.values().unwrap_or_else(|e| {
            warn!("could not read the VMs' values from the journal: {e}");
            vec![]
        });
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
            known_states: HashMap::new(),
            sleep_policy: SleepPolicy::new(),
            sleep_settings: BTreeMap::new(),
            realloc,
            realloc_cfg: cfg.realloc.policy_config(),
            live_tunes: HashMap::new(),
            saved_tunes,
            affinity,
            affinity_cfg: cfg.realloc.affinity_config(),
            saved_pins,
            affinity_views: HashMap::new(),
            vcpus,
            saved_vcpus,
            vcpu_views: HashMap::new(),
            critical: critical.into_iter().collect(),
            values: values.into_iter().collect(),
            needs: needs.into_iter().collect(),
            needs_dirty: BTreeSet::new(),
            needs_flushed_at: started_at,
            platform: Some(platform),
            low_battery: cfg.power.low_battery(),
            power: None,
            power_state: None,
            power_error: None,
            power_saved: power_saved.into_iter().collect(),
            last_power_off: None,
            power_off_done: false,
            shutting_down: HashMap::new(),
            plan: None,
            model_draw: None,
            measured: Ok(None),
            devices,
            device_cfg: cfg.power.devices.policy_config(),
            devices_view: None,
            last_restore_error: None,
            vm_disks: HashMap::new(),
            sleeping,
            commands,
            surrogate,
            surrogate_events,
            refusal_journaled: HashMap::new(),
            started_at,
            ticks: 0,
            actions_total: 0,
            action_failures_total: 0,
            sleeps_total: 0,
            wakes_total: 0,
            last_wake_ms: None,
            snapshot: watch::channel(Arc::new(Snapshot { status: placeholder_status(), vms: vec![] })).0,
            journal,
            cfg,
        };
        let status = agent.status(None, None, 0.0);
        agent.snapshot.send_replace(Arc::new(Snapshot { status, vms: vec![] }));
        let rx = agent.snapshot.subscribe();
        Ok((agent, rx, command_tx))
    }

    /// Binds every declared service before anything else happens, each in
    /// the state the journal remembers (a VM ebb holds asleep stays covered
    /// across a restart). A taken address stops startup with its name.
    pub fn serve_services(&mut self) -> Result<(), String> {
        for (name, section) in &self.cfg.vm {
            if section.service.is_empty() {
                continue;
            }
            let vm = VmId::new(name.clone());
            let state = if self.sleeping.contains_key(&vm) { VmPower::Asleep } else { VmPower::Awake };
            self.surrogate.add_vm(vm, section.service.clone(), state).map_err(|e| e.to_string())?;
        }
        // The ports are served (spliced) already; nft runs after.
        if self.cfg.vm.values().any(|s| !s.service.is_empty()) {
            self.choose_awake_path()?;
        } else {
            // Nothing to forward, but rules a killed predecessor left would
            // still divert its old services' clients: the splice setting
            // removes them (when nft is there) and installs nothing.
            let owner = self.cfg.agent.socket.to_string_lossy().into_owned();
            let _ = self.surrogate.set_awake_path(AwakePath::Splice, &self.cfg.surrogate.nft, &owner);
        }
        Ok(())
    }

    /// Sets up the kernel path for awake VMs (`[surrogate] awake_path`);
    /// its nft table is named from the API socket, which no two agents on a
    /// host share, so parallel agents never touch each other's rules.
    fn choose_awake_path(&mut self) -> Result<(), String> {
        let s = &self.cfg.surrogate;
        let owner = self.cfg.agent.socket.to_string_lossy().into_owned();
        match self.surrogate.set_awake_path(s.awake_path, &s.nft, &owner).map_err(|e| e.to_string())? {
            Ok(table) => info!("awake VMs' qualifying services are forwarded by the kernel (nft table inet {table})"),
            Err(why) if s.awake_path == AwakePath::Splice => info!("awake VMs' connections are spliced by ebb ({why})"),
            Err(why) => {
                let text = format!("the kernel path is not available, ebb splices awake VMs' connections itself: {why}");
                warn!("{text}");
                self.journal_event(None, "awake_path", &text);
            }
        }
        for vm in self.surrogate.vms() {
            for r in self.surrogate.awake_routes(vm) {
                info!(vm = %vm, service = %r.service, "awake, {}: {}", r.path, r.why);
            }
        }
        Ok(())
    }

    fn set_power(&mut self, vm: &VmId, state: VmPower) {
        let _ = self.try_set_power(vm, state);
    }

    /// As `set_power`, with its error (only when the VM's ports could not
    /// be taken back from the kernel path), which it logs.
    fn try_set_power(&mut self, vm: &VmId, state: VmPower) -> Result<(), String> {
        if self.surrogate.state(vm).is_some() {
            if let Err(e) = self.surrogate.set_state(vm, state) {
                warn!(vm = %vm, "{e}");
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    /// The surrogate asks for a VM (a client needs it) or reports a refusal.
    async fn surrogate_event(&mut self, ev: SurrogateEvent) {
        let at = now();
        match ev {
            SurrogateEvent::WakeNeeded { vm, service, reason } => {
                if self.power_is_low() {
                    // The battery is for saving VMs, not for starting them.
                    self.set_power(&vm, VmPower::WakeFailed("the host is on low battery".into()));
                    return;
                }
                if !self.sleeping.contains_key(&vm) {
                    // Not ebb's to wake (started by hand meanwhile): splice.
                    self.set_power(&vm, VmPower::Awake);
                    return;
                }
                let reason = Reason::new(Rule::Wake, format!("a client of its {service} service needs it ({reason})"));
                self.act(vec![Action::Wake { vm, reason }], at).await;
                self.republish();
            }
            SurrogateEvent::AwakePathFailed { vm, service, error } => {
                let text = format!("the kernel path failed for {service}, ebb splices it from now on: {error}");
                self.journal_vm(&vm, at, "awake_path", None, &text, None, None);
            }
            SurrogateEvent::Refused { vm, service, why } => {
                let last = self.refusal_journaled.get(&vm).copied().unwrap_or_default();
                if at.since(last) >= 1000 {
                    self.refusal_journaled.insert(vm.clone(), at);
                    let text = format!("refused a client of {service}: {why}");
                    warn!(vm = %vm, "{text}");
                    self.journal_vm(&vm, at, "refused", None, &text, None, None);
                }
            }
        }
    }

    fn surrogate_view(&self, vm: &VmId) -> Option<SurrogateView> {
        let state = self.surrogate.state(vm)?;
        let st = self.surrogate.stats(vm).ok()?;
        Some(SurrogateView {
            state: state.to_string(),
            services: self.surrogate.services(vm).map(|s| s.iter().map(|s| format!("{} {}→{}", s.name, s.listen, s.backend)).collect()).unwrap_or_default(),
            open_connections: st.open_connections as u64,
            held_connections: st.held_connections as u64,
            answered_locally: st.answered_locally,
            refused: st.refused,
            bytes: st.bytes_in + st.bytes_out,
            awake_paths: self
                .surrogate
                .awake_routes(vm)
                .into_iter()
                .map(|r| match (r.path, r.active) {
                    ("kernel", true) => format!("{}: kernel, forwarding now ({}; {} connections so far)", r.service, r.why, r.kernel_connections),
                    ("kernel", false) => format!("{}: kernel once the VM is awake and answers, ebb splices until then ({})", r.service, r.why),
                    _ => format!("{}: {} ({})", r.service, r.path, r.why),
                })
                .collect(),
        })
    }

    /// Client traffic through the surrogate, for the idle detector.
    fn traffic(&self) -> BTreeMap<VmId, SurrogateTraffic> {
        self.surrogate
            .vms()
            .filter_map(|vm| {
                let st = self.surrogate.stats(vm).ok()?;
                let held_open_counts = self.surrogate.services(vm)?.iter().any(|s| s.hold_open_counts_as_activity);
                let traffic = SurrogateTraffic {
                    bytes: st.bytes_in + st.bytes_out,
                    open_connections: st.open_connections as u32,
                    held: st.held_connections as u32,
                    held_open_counts,
                };
                Some((vm.clone(), traffic))
            })
            .collect()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.journal_event(None, "started", &format!("ebb {} started, watching {}", env!("CARGO_PKG_VERSION"), self.cfg.agent.uri));
        tokio::pin!(shutdown);
        'ticks: loop {
            let moving = self.tick().await;
            let wait = if moving { self.cfg.agent.fast_tick.min(self.cfg.agent.tick) } else { self.cfg.agent.tick };
            let next = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    Some(cmd) = self.commands.recv() => self.command(cmd).await,
                    Some(ev) = self.surrogate_events.recv() => self.surrogate_event(ev).await,
                    _ = &mut shutdown => break 'ticks,
                }
            }
        }
        self.flush_needs(now());
        self.give_back_cpus(now()).await;
        self.surrogate.stop_kernel_path();
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
        let needs_tune = self.tune_due(at);
        let bounded: BTreeSet<VmId> = self.cfg.vm.keys().map(VmId::new).filter(|id| self.cpus_bound(id).is_some()).collect();
        let with_vcpus_min: BTreeSet<VmId> = self.cfg.vm.keys().map(VmId::new).filter(|id| self.vcpus_min(id).is_some()).collect();
        let needs_sources = self.disk_sources_due(at);
        let filter = self.cfg.agent.clone();
        let in_flight = self.in_flight.clone();
        let Some(result) = self
            .with_hv(move |hv| {
                let mut obs = hv.observe()?;
                let running: Vec<VmId> = obs.vms.iter().filter(|v| v.state == VmState::Running).map(|v| v.id.clone()).collect();
                let sources: Vec<DiskSources> =
                    running.into_iter().map(|id| {
                        let s = needs_sources(&id).then(|| hv.disk_sources(&id));
                        (id, s)
                    }).collect();
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
                let metadata = metadata.collect::<Vec<_>>();
                let tunes: Vec<(VmId, Result<Tune, HvError>)> = obs
                    .vms
                    .iter()
                    .filter(|v| v.state == VmState::Running && needs_tune(&v.id))
                    .map(|v| (v.id.clone(), hv.tune(&v.id)))
                    .collect();
                // Only for VMs ebb may pin: one call each, and the host's CPUs.
                let pins: HashMap<VmId, Vec<CpuSet>> = obs
                    .vms
                    .iter()
                    .filter(|v| v.state == VmState::Running && bounded.contains(&v.id))
                    .filter_map(|v| match hv.vcpu_pins(&v.id) {
                        Ok(p) => Some((v.id.clone(), p)),
                        Err(e) => {
                            debug!(vm = %v.id, "no vCPU pinning: {e}");
                            None
                        }
                    })
                    .collect();
                let host_cpus = if pins.is_empty() { vec![] } else { hv.host_cpu_times().unwrap_or_default() };
                // Only for VMs with vcpus_min: one call to each one's guest agent.
                let online: HashMap<VmId, Result<u32, String>> = obs
                    .vms
                    .iter()
                    .filter(|v| v.state == VmState::Running && with_vcpus_min.contains(&v.id))
                    .map(|v| (v.id.clone(), hv.guest_vcpus(&v.id).map_err(|e| e.to_string())))
                    .collect();
                Ok::<_, HvError>((obs, metadata, tunes, sources, (pins, host_cpus), online))
            })
            .await
        else {
            return false;
        };
        let (mut obs, metadata, tunes, sources, (pins, host_cpus), online) = match result {
            Ok(r) => r,
            Err(e) => {
                self.lost_connection(at, &e);
                self.publish(None, None, started, at);
                return false;
            }
        };
        obs.at = at;
        self.known_states = obs.vms.iter().map(|v| (v.id.clone(), KnownState { state: v.state, managed_save: v.managed_save })).collect();
        for (vm, m) in metadata {
            let settings = match m {
                Ok(Some(xml)) => settings::parse_metadata(&xml).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            self.metadata.insert(vm, CachedMetadata { fetched_at: at, settings });
        }
        for (vm, t) in tunes {
            match t {
                Ok(t) => {
                    self.live_tunes.insert(vm, (t, at));
                }
                Err(e) => {
                    debug!(vm = %vm, "no CPU tune: {e}");
                    self.live_tunes.remove(&vm);
                }
            }
        }
        self.live_tunes.retain(|id, _| obs.vms.iter().any(|v| &v.id == id && v.state == VmState::Running));
        for vm in &mut obs.vms {
            vm.tune = self.live_tunes.get(&vm.id).map(|(t, _)| *t);
        }
        self.note_disk_sources(sources, at);
        self.note_vm_changes(&obs, at);
        self.note_power_changes(&obs, at);
        // A failed wake refused its held clients; a tick later the next
        // client may try again.
        let failed: Vec<VmId> =
            self.sleeping.keys().filter(|vm| matches!(self.surrogate.state(vm), Some(VmPower::WakeFailed(_)))).cloned().collect();
        for vm in failed {
            self.set_power(&vm, VmPower::Asleep);
        }
        let resolved = self.resolve_settings(&obs);
        let settings = resolved.iter().map(|(id, r)| (id.clone(), r.settings.clone())).collect();
        let decision = self.policy.decide(&obs, &settings, &self.mem_cfg, at);
        self.note_skips(&decision, at);
        self.sleep_settings = resolved.iter().filter_map(|(id, r)| Some((id.clone(), r.sleep.clone()?))).collect();
        let idle = self.sleep_policy.decide(&obs, &self.sleep_settings, &self.traffic(), at);
        let realloc = self.realloc_cfg.enabled.then(|| {
            let settings = self.realloc_settings(&obs);
            self.realloc.decide(&obs, &settings, &self.realloc_cfg, at)
        });
        let affinity = realloc.as_ref().filter(|_| !pins.is_empty()).map(|d| {
            let vms: Vec<AffinityVm> = obs
                .vms
                .iter()
                .map(|v| AffinityVm {
                    pins: pins.get(&v.id).cloned(),
                    bound: self.cpus_bound(&v.id),
                    expected_cpu: self
                        .needs
                        .get(&v.id)
                        .and_then(|n| n.usual_cpu(at, &self.realloc_cfg))
                        .map(|u| u * f64::from(v.activity.map_or(1, |a| a.vcpus.max(1)))),
                })
                .collect();
            self.affinity.decide(&obs, d, &host_cpus, &vms, &self.affinity_cfg, at)
        });
        self.affinity_views = affinity.iter().flat_map(|d| d.views.iter()).map(|v| (v.vm.clone(), v.clone())).collect();
        let vcpus = realloc.as_ref().filter(|_| !online.is_empty()).map(|d| {
            let vms: Vec<VcpuVm> = obs
                .vms
                .iter()
                .map(|v| VcpuVm { online: online.get(&v.id).and_then(|r| r.as_ref().ok().copied()), min: self.vcpus_min(&v.id) })
                .collect();
            self.vcpus.decide(&obs, d, &vms, &self.realloc_cfg, at)
        });
        self.vcpu_views = online
            .iter()
            .filter_map(|(vm, r)| Some((vm.clone(), r.clone().err()?)))
            .map(|(vm, e)| (vm, Err(e)))
            .chain(vcpus.iter().flat_map(|d| d.views.iter()).map(|v| (v.vm.clone(), Ok(v.clone()))))
            .collect();
        let mut actions = if self.cfg.memory.enabled { decision.actions.clone() } else { vec![] };
        // A VM about to sleep keeps its CPU tune: nothing to gain from a change.
        let to_sleep: Vec<&VmId> = idle.to_sleep.iter().map(|(vm, ..)| vm).collect();
        actions.extend(
            realloc
                .iter()
                .flat_map(|d| d.actions.iter())
                .chain(affinity.iter().flat_map(|d| d.actions.iter()))
                .chain(vcpus.iter().flat_map(|d| d.actions.iter()))
                .filter(|a| !to_sleep.contains(&a.vm()))
                .cloned(),
        );
        actions.extend(
            idle.to_sleep
                .iter()
                .filter(|(vm, ..)| !self.sleeping.contains_key(vm))
                .map(|(vm, mode, reason)| Action::Sleep { vm: vm.clone(), mode: *mode, reason: reason.clone() }),
        );
        self.act(actions, at).await;
        self.remember_memory_state(&decision, at);
        self.remember_tunes(&obs, at);
        self.remember_pins(at);
        self.remember_vcpus(at);
        self.plan = self.cfg.power.budget.map(|b| self.power_plan(&obs, realloc.as_ref(), Watts(b)));
        self.model_draw = realloc.as_ref().map(|d| self.model_draw(&obs, d));
        self.power_tick(&obs, at).await;
        self.devices_tick(&obs, at).await;
        if let Some(d) = &realloc {
            self.record_needs(&obs, d, at);
        }
        self.publish(Some((&obs, &resolved)), Some((&decision, &idle, realloc.as_ref())), started, at);
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
        off_thread(&mut self.hv, move |hv| f(hv)).await.map_err(|e| warn!("a hypervisor call panicked; reconnecting: {e}")).ok()?
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

    /// Journals a VM's skip reason when it changes.
    fn note_skips(&mut self, decision: &MemoryDecision, at: Millis) {
        for view in &decision.vms {
            if self.last_skip.get(&view.vm) != Some(&view.skipped) {
                if let Some(why) = &view.skipped {
                    info!(vm = %view.vm, "not managing its memory: {why}");
                    self.journal_vm(&view.vm, at, "skipped", Some("skip"), why, None, None);
                }
                self.last_skip.insert(view.vm.clone(), view.skipped.clone());
            }
        }
    }

    /// Each observed VM's reallocation bounds from its `[vm.NAME.realloc]`,
    /// with the `ebb critical` flag over the config's, in observation order.
    fn realloc_settings(&self, obs: &Observation) -> Vec<ReallocSettings> {
        obs.vms
            .iter()
            .map(|vm| {
                let mut s = self.cfg.vm_section(&vm.id).and_then(|s| s.realloc.as_ref()).map(|r| r.settings()).unwrap_or_default();
                s.expected = self.needs.get(&vm.id).and_then(|n| n.expected(obs.at, &self.realloc_cfg));
                if let Some(on) = self.critical.get(&vm.id) {
                    s.critical = *on;
                }
                s
            })
            .collect()
    }

    /// A predicate over VM ids telling whose CPU tune needs (re)reading.
    fn tune_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let fresh: BTreeSet<VmId> = self
            .live_tunes
            .iter()
            .filter(|(_, (_, read))| at.since(*read) < TUNE_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| !fresh.contains(id)
    }

    /// Reads the power source and acts on it (the seed's Figure 4): on low
    /// battery every VM is saved, then the host powered down through the
    /// platform; when mains power is back the VMs saved for it are restored.
    async fn power_tick(&mut self, obs: &Observation, at: Millis) {
        let Some((reading, measured)) = self.with_platform(|p| (p.power(), p.measured())).await else { return };
        let measured = measured.map_err(|e| e.to_string());
        if let (Err(e), false) = (&measured, self.measured.is_err()) {
            warn!("measuring the host's draw: {e}");
            self.journal_event(None, "power_measure_failed", e);
        }
        self.measured = measured;
        match reading {
            Ok(r) => {
                if self.power_error.take().is_some() {
                    self.journal_event(None, "power_source", "the power source answers again");
                }
                self.power = r;
            }
            Err(e) => {
                let text = e.to_string();
                if self.power_error.as_deref() != Some(&text) {
                    warn!("power source: {text}");
                    self.journal_event(None, "power_source_failed", &text);
                }
                // The last reading stands: an unreachable upsd is not a power cut.
                self.power_error = Some(text);
            }
        }
        let state = self.power.as_ref().map(|r| r.state(&self.low_battery));
        if state != self.power_state {
            let text = match &state {
                Some(PowerState::OnMains) => "on mains power".to_string(),
                Some(PowerState::OnBattery) => "on battery".to_string(),
                Some(PowerState::Low(why)) => format!("low battery: {why}"),
                None => "no power source".to_string(),
            };
            info!("power: {text}");
            self.journal_event(None, "power", &text);
            self.power_state = state.clone();
        }
        match state {
            Some(PowerState::Low(why)) => self.power_low(obs, &why, at).await,
            Some(PowerState::OnMains) => {
                self.power_off_done = false;
                self.shutting_down.clear();
                self.power_back(at).await;
            }
            Some(PowerState::OnBattery) => self.power_drop(at).await,
            None => {}
        }
    }

    /// The host's draw by the power model at what the VMs run now.
    fn model_draw(&self, obs: &Observation, d: &ReallocDecision) -> Watts {
        let cpu: f64 = obs
            .vms
            .iter()
            .zip(&d.views)
            .filter_map(|(v, view)| Some(view.rates?.cpu.min(f64::from(v.activity?.vcpus.max(1)))))
            .sum();
        self.cfg.power.model().host(cpu / f64::from(obs.host_cpus.max(1)))
    }

    /// Which running domains' disk sources to read this tick: only with
    /// disk standby on, for a domain not read yet or read a while ago.
    fn disk_sources_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let on = self.device_cfg.disk_idle_after_ms.is_some();
        let fresh: BTreeSet<VmId> = self
            .vm_disks
            .iter()
            .filter(|(_, (_, read))| at.since(*read) < DISK_SOURCES_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| on && !fresh.contains(id)
    }

    /// Keeps the disk sources read this tick; a domain that no longer runs
    /// holds no disk.
    fn note_disk_sources(&mut self, sources: Vec<DiskSources>, at: Millis) {
        self.vm_disks.retain(|id, _| sources.iter().any(|(s, _)| s == id));
        for (vm, read) in sources {
            match read {
                Some(Err(HvError::NoSuchVm(_))) => {
                    self.vm_disks.remove(&vm);
                }
                Some(r) => {
                    self.vm_disks.insert(vm, (r.map_err(|e| e.to_string()), at));
                }
                None => {}
            }
        }
    }

    /// Device power (the seed's Figure 2): reads cpufreq and the disks off
    /// the runtime, decides, and writes or runs what the decision asks.
    async fn devices_tick(&mut self, obs: &Observation, at: Millis) {
        let cfg = self.device_cfg.clone();
        let vms_use = self.devices.observe(obs);
        let want_cpu = cfg.cpufreq || self.devices.cpu_changes().is_some();
        let want_disks = cfg.disk_idle_after_ms.is_some();
        if !want_cpu && !want_disks {
            self.devices_view = None;
            return;
        }
        let images: Vec<(VmId, Result<Vec<PathBuf>, String>)> = self.vm_disks.iter().map(|(vm, (r, _))| (vm.clone(), r.clone())).collect();
        let Some((cpus, disks)) = self
            .with_platform(move |p| {
                let cpus = want_cpu.then(|| p.cpufreq().map_err(|e| e.to_string()));
                let disks = want_disks.then(|| read_disks(p, images));
                (cpus, disks)
            })
            .await
        else {
            return;
        };
        let mut view = self.devices_view.take().unwrap_or_default();
        match cpus {
            None => view.cpu = None,
            Some(read) => self.cpu_tick(read, vms_use, &cfg, &mut view, at).await,
        }
        match disks {
            None => view.disks = None,
            Some(read) => self.disks_tick(read, &cfg, &mut view, at).await,
        }
        self.devices_view = Some(view);
    }

    async fn cpu_tick(&mut self, read: Result<Vec<CpuFreq>, String>, vms_use: Option<f64>, cfg: &DeviceConfig, view: &mut DevicesView, at: Millis) {
        let cpu = view.cpu.get_or_insert_with(CpufreqView::default);
        (cpu.enabled, cpu.cpu_low, cpu.cpu_high) = (cfg.cpufreq, cfg.cpu_low, cfg.cpu_high);
        let mut cpus = match read {
            Ok(cpus) => cpus,
            Err(e) => {
                if cpu.error.as_deref() != Some(&e) {
                    warn!("cpufreq: {e}");
                    self.journal_event(None, "cpufreq_failed", &e);
                }
                cpu.error = Some(e);
                cpu.cpus.clear();
                return;
            }
        };
        cpu.error = None;
        let d = self.devices.decide_cpu(vms_use, &cpus, cfg, at);
        if !d.taken_over.is_empty() {
            let list: Vec<String> = d.taken_over.iter().map(|c| format!("cpu{c}")).collect();
            let text = format!("{} changed by someone else since ebb set it: left as it is, not given back", list.join(", "));
            info!("cpufreq: {text}");
            self.journal_event(None, "cpufreq", &text);
            self.remember_cpu_changes(at);
        }
        let done = match d.action {
            Some(DeviceAction::CpuSave { changes, reason }) => Some(self.cpu_save(changes, &reason, at).await),
            Some(DeviceAction::CpuRestore { settings, reason }) => Some(self.cpu_restore(settings, &reason, at).await),
            _ => None,
        };
        if let Some((written, text)) = done {
            for s in &written {
                if let Some(c) = cpus.iter_mut().find(|c| c.cpu == s.cpu) {
                    c.governor = s.governor.clone().unwrap_or(std::mem::take(&mut c.governor));
                    c.max_khz = s.max_khz.unwrap_or(c.max_khz);
                }
            }
            view.cpufreq_changes_total += u64::from(!written.is_empty());
            cpu.last_change = Some(format!("{} UTC {text}", crate::cli::clock(at)));
        }
        let changes = self.devices.cpu_changes().map(<[CpuChange]>::to_vec).unwrap_or_default();
        cpu.policy = ebb_core::devices::CpuView { saving: !changes.is_empty(), changes, ..d.view };
        cpu.cpus = cpus;
    }

    /// Writes each setting; the per-CPU outcome.
    async fn write_cpus(&mut self, settings: Vec<CpuSetting>) -> Vec<(CpuSetting, Result<(), String>)> {
        self.with_platform(move |p| settings.into_iter().map(|s| {
            let r = p.set_cpufreq(&s).map_err(|e| e.to_string());
            (s, r)
        }).collect())
        .await
        .unwrap_or_default()
    }

    /// Saves power on the CPUs: all of them or, when one write fails, none
    /// (those written are given back). Returns what stays written and what
    /// happened, in words.
    async fn cpu_save(&mut self, changes: Vec<CpuChange>, reason: &str, at: Millis) -> (Vec<CpuSetting>, String) {
        let results = self.write_cpus(changes.iter().map(|c| c.applied.clone()).collect()).await;
        let failed = results.iter().find_map(|(_, r)| r.as_ref().err().cloned());
        let what = describe_cpu_changes(&changes);
        let (written, text, outcome) = match failed {
            None => {
                self.devices.cpu_saved(changes.clone());
                self.remember_cpu_changes(at);
                (changes.iter().map(|c| c.applied.clone()).collect(), format!("{reason}: {what}"), "ok".to_string())
            }
            Some(e) => {
                let undo: Vec<CpuSetting> = changes.iter().zip(&results).filter(|(_, (_, r))| r.is_ok()).map(|(c, _)| c.undo()).collect();
                let back = self.write_cpus(undo).await;
                let stuck: Vec<String> = back.iter().filter(|(_, r)| r.is_err()).map(|(s, _)| format!("cpu{}", s.cpu)).collect();
                self.devices.cpu_save_failed(at);
                let left = if stuck.is_empty() { "the CPUs are as ebb found them".to_string() } else { format!("{} could not be given back", stuck.join(", ")) };
                warn!("cpufreq: saving power failed: {e}");
                (vec![], format!("{reason}, but a write failed: {e} ({left}; tried again after another hold)"), format!("failed: {e}"))
            }
        };
        info!("cpufreq: {text}");
        let entry = Entry { at, vm: None, kind: "cpufreq", rule: Some(Rule::Power.as_str()), text: &text, target: None, outcome: Some(&outcome) };
        if let Err(e) = self.journal.record(&entry) {
            warn!("{e}");
        }
        (written, text)
    }

    /// Writes back what ebb found; a CPU whose write fails keeps its change
    /// (journaled) and is tried again next tick.
    async fn cpu_restore(&mut self, settings: Vec<CpuSetting>, reason: &str, at: Millis) -> (Vec<CpuSetting>, String) {
        let results = self.write_cpus(settings).await;
        let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, r)| r.is_ok());
        let written: Vec<CpuSetting> = ok.into_iter().map(|(s, _)| s).collect();
        self.devices.cpu_restored(&written.iter().map(|s| s.cpu).collect::<Vec<_>>());
        self.remember_cpu_changes(at);
        let cpus: Vec<String> = written.iter().map(|s| format!("cpu{}", s.cpu)).collect();
        let mut text = format!("{reason}: {} as found", if cpus.is_empty() { "no CPU".to_string() } else { cpus.join(", ") });
        let outcome = match failed.first() {
            None => "ok".to_string(),
            Some((_, Err(e))) => {
                let _ = write!(text, "; {} failed, tried again next tick", failed.len());
                format!("failed: {e}")
            }
            Some(_) => unreachable!("partitioned by result"),
        };
        // A restore that keeps failing is journaled once per error, not every tick.
        if outcome == "ok" || self.last_restore_error.as_deref() != Some(&outcome) {
            info!("cpufreq: {text}");
            let entry = Entry { at, vm: None, kind: "cpufreq", rule: Some(Rule::Power.as_str()), text: &text, target: None, outcome: Some(&outcome) };
            if let Err(e) = self.journal.record(&entry) {
                warn!("{e}");
            }
        }
        self.last_restore_error = (outcome != "ok").then_some(outcome);
        (written, text)
    }

    /// At stop: the CPUs get back what ebb found.
    async fn give_back_cpus(&mut self, at: Millis) {
        let Some(changes) = self.devices.cpu_changes().map(<[CpuChange]>::to_vec) else { return };
        self.cpu_restore(changes.iter().map(CpuChange::undo).collect(), "ebb stops: giving back what it found", at).await;
    }

    fn remember_cpu_changes(&self, at: Millis) {
        if let Err(e) = self.journal.save_cpu_changes(self.devices.cpu_changes().unwrap_or_default(), at) {
            warn!("could not journal the CPU frequency changes: {e}");
        }
    }

    async fn disks_tick(
        &mut self,
        read: Result<DiskRead, String>,
        cfg: &DeviceConfig,
        view: &mut DevicesView,
        at: Millis,
    ) {
        let dv = view.disks.get_or_insert_with(DisksView::default);
        dv.idle_after_ms = cfg.disk_idle_after_ms.unwrap_or_default();
        let (disks, guards, unknown) = match read {
            Ok(r) => r,
            Err(e) => {
                if dv.error.as_deref() != Some(&e) {
                    warn!("disks: {e}");
                    self.journal_event(None, "disk_failed", &e);
                }
                dv.error = Some(e);
                return;
            }
        };
        dv.error = None;
        let (actions, mut views) = self.devices.decide_disks(&disks, &guards, &unknown, cfg, at);
        for action in actions {
            let DeviceAction::DiskStandby { disk, reason } = action else { continue };
            let name = disk.clone();
            let Some(r) = self.with_platform(move |p| p.disk_standby(&name)).await else { continue };
            let (text, outcome) = match r {
                Ok(done) => {
                    self.devices.disk_standby_done(&disk, at);
                    view.disk_standbys_total += 1;
                    if let Some(v) = views.iter_mut().find(|v| v.name == disk) {
                        v.state = ebb_core::devices::DiskState::Standby { at };
                    }
                    dv.last_standby = Some(format!("{} UTC {disk}: {done}", crate::cli::clock(at)));
                    (format!("{disk}: {reason}: {done}"), "ok".to_string())
                }
                Err(e) => {
                    self.devices.disk_failed(&disk, at);
                    (format!("{disk}: {reason}, but the standby failed (tried again after another idle spell)"), format!("failed: {e}"))
                }
            };
            info!("disk standby: {text} [{outcome}]");
            let entry = Entry { at, vm: None, kind: "disk_standby", rule: Some(Rule::Power.as_str()), text: &text, target: None, outcome: Some(&outcome) };
            if let Err(e) = self.journal.record(&entry) {
                warn!("{e}");
            }
        }
        dv.disks = views;
    }

    /// The seed's Figure 3 for this tick: each running VM's draw from the
    /// power model and its CPU use, its value, and whether it is quiescent.
    fn power_plan(&self, obs: &Observation, realloc: Option<&ReallocDecision>, budget: Watts) -> PlanView {
        let model = self.cfg.power.model();
        let views: HashMap<&VmId, &VmReallocView> = realloc.map(|d| d.views.iter().map(|v| (&v.vm, v)).collect()).unwrap_or_default();
        let running: Vec<&VmObservation> =
            obs.vms.iter().filter(|v| v.state == VmState::Running && !self.sleeping.contains_key(&v.id)).collect();
        // What each asks for (run + wait), not what it gets now: saving one
        // lets the others run more, and a plan on use alone would cascade.
        let cpu: Vec<f64> = running
            .iter()
            .map(|v| {
                let vcpus = f64::from(v.activity.map_or(1, |a| a.vcpus.max(1)));
                views.get(&v.id).and_then(|view| view.rates).map_or(0.0, |r| (r.cpu + r.vcpu_wait).min(vcpus))
            })
            .collect();
        let running: Vec<&VmId> = running.iter().map(|v| &v.id).collect();
        let draws = model.vm_draws(obs.host_cpus, &cpu);
        let mut no_value = vec![];
        let candidates: Vec<Candidate> = running
            .iter()
            .zip(draws)
            .map(|(id, draw)| {
                let value = self.value_of(id);
                if value.is_none() {
                    no_value.push(id.to_string());
                }
                let quiescent = views.get(id).is_some_and(|v| v.class == Some(ebb_core::realloc::Class::Idle));
                Candidate { vm: (*id).clone(), draw, value: value.unwrap_or(1), quiescent }
            })
            .collect();
        let host_idle = model.idle();
        let plan = plan_power_drop(Watts((budget.0 - host_idle.0).max(0.0)), &candidates);
        PlanView {
            plan: PowerPlan { budget, ..plan },
            host_idle,
            vms: candidates,
            no_value,
        }
    }

    /// On battery with a budget: saves the VMs the plan drops, quiescent
    /// ones first, then the least valuable. Nothing is restored before
    /// mains power is back.
    async fn power_drop(&mut self, at: Millis) {
        let Some(plan) = &self.plan else { return };
        if plan.plan.save.is_empty() {
            return;
        }
        let budget = plan.plan.budget;
        let keep = plan.plan.keep.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ");
        let reason = Reason::new(
            Rule::Power,
            format!("on battery with a budget of {budget}: keeping the most valuable VMs that fit ({})", if keep.is_empty() { "none" } else { &keep }),
        );
        let actions = plan.plan.save.iter().map(|vm| Action::Sleep { vm: vm.clone(), mode: SleepMode::Save, reason: reason.clone() }).collect();
        self.save_for_power(actions, at).await;
    }

    /// Saves VMs for a power event and remembers them (journaled) for the
    /// restore; returns those that could not be saved.
    async fn save_for_power(&mut self, actions: Vec<Action>, at: Millis) -> Vec<VmId> {
        let mut failed = vec![];
        for (action, result) in self.act(actions, at).await {
            if result.is_err() {
                failed.push(action.vm().clone());
                continue;
            }
            let vm = action.vm().clone();
            if let Err(e) = self.journal.set_power_saved(&vm, true, at) {
                warn!("{e}");
            }
            self.power_saved.insert(vm);
        }
        failed
    }

    /// Runs a blocking platform call (a UPS read, a power-off) off the async
    /// runtime. None when the call panicked.
    async fn with_platform<R: Send + 'static>(&mut self, f: impl FnOnce(&mut dyn Platform) -> R + Send + 'static) -> Option<R> {
        off_thread(&mut self.platform, move |p| f(p)).await.map_err(|e| warn!("a platform call panicked: {e}")).ok()?
    }

    /// Low battery (the seed's Figure 4): saves every VM, those that cannot
    /// handle power events first; asks the guest of a VM whose save failed
    /// to shut itself down; powers the host down once nothing runs. A VM that
    /// neither saves nor shuts down keeps the host up: ebb never destroys it.
    async fn power_low(&mut self, obs: &Observation, why: &str, at: Millis) {
        let mut running: Vec<&VmId> = obs
            .vms
            .iter()
            .filter(|v| matches!(v.state, VmState::Running | VmState::Paused) && !self.sleeping.contains_key(&v.id))
            .map(|v| &v.id)
            .collect();
        running.sort_by_key(|vm| self.cfg.vm_section(vm).and_then(|s| s.handles_power_events).unwrap_or(true));
        let (stopping, to_save): (Vec<&VmId>, Vec<&VmId>) = running.into_iter().partition(|vm| self.shutting_down.contains_key(*vm));
        let stopping: Vec<VmId> = stopping.into_iter().cloned().collect();
        let reason = Reason::new(Rule::Power, format!("low battery ({why}): saving every VM before the host powers down"));
        let actions = to_save.iter().map(|vm| Action::Sleep { vm: (*vm).clone(), mode: SleepMode::Save, reason: reason.clone() }).collect();
        let failed = self.save_for_power(actions, at).await;
        if !failed.is_empty() {
            let reason = Reason::new(
                Rule::Power,
                format!("low battery ({why}) and its save failed: its guest is asked to shut down before the host powers down"),
            );
            let actions = failed.iter().map(|vm| Action::Shutdown { vm: vm.clone(), reason: reason.clone() }).collect();
            // Asked once; a refused request is not repeated every tick either.
            for (action, _) in self.act(actions, at).await {
                self.shutting_down.insert(action.vm().clone(), ShuttingDown { since: at, overdue: false });
            }
        }
        if !failed.is_empty() || !stopping.is_empty() {
            let limit = self.cfg.power.shutdown_timeout;
            for vm in &stopping {
                let Some(s) = self.shutting_down.get_mut(vm) else { continue };
                if !s.overdue && at.since(s.since) >= limit.as_millis() as u64 {
                    s.overdue = true;
                    let text = format!(
                        "its guest did not shut down within {} s: the host is not powered down under it",
                        limit.as_secs()
                    );
                    warn!(vm = %vm, "{text}");
                    self.journal_event(Some(vm.as_str()), "shutdown_overdue", &text);
                }
            }
            return;
        }
        if self.power_off_done {
            return;
        }
        let Some(done) = self.with_platform(|p| p.power_off()).await else { return };
        self.power_off_done = true;
        let (text, outcome) = match done {
            Ok(t) => (t, "ok".to_string()),
            Err(e) => (e.to_string(), format!("failed: {e}")),
        };
        warn!("power off: {text}");
        let entry = Entry { at, vm: None, kind: "power_off", rule: Some(Rule::Power.as_str()), text: &text, target: None, outcome: Some(&outcome) };
        if let Err(e) = self.journal.record(&entry) {
            warn!("{e}");
        }
        self.last_power_off = Some(text);
    }

    /// Mains power is back: restores the VMs saved for power.
    async fn power_back(&mut self, at: Millis) {
        if self.power_saved.is_empty() {
            return;
        }
        let reason = Reason::new(Rule::Power, "mains power is back: restoring what ebb saved for power");
        // Most valuable first.
        let mut saved: Vec<&VmId> = self.power_saved.iter().filter(|vm| self.sleeping.contains_key(*vm)).collect();
        saved.sort_by_key(|vm| std::cmp::Reverse(self.value_of(vm).unwrap_or(1)));
        let actions: Vec<Action> = saved.into_iter().map(|vm| Action::Wake { vm: vm.clone(), reason: reason.clone() }).collect();
        // Woken by hand or gone meanwhile: nothing left to restore.
        let stale: Vec<VmId> = self.power_saved.iter().filter(|vm| !self.sleeping.contains_key(*vm)).cloned().collect();
        for vm in stale {
            self.forget_power_saved(&vm, at);
        }
        for (action, result) in self.act(actions, at).await {
            if result.is_ok() {
                self.forget_power_saved(action.vm(), at);
            }
        }
    }

    /// A VM's value when power drops: `ebb value`'s, else the config's.
    fn value_of(&self, vm: &VmId) -> Option<u32> {
        self.values.get(vm).copied().or_else(|| self.cfg.vm_section(vm).and_then(|s| s.value))
    }

    fn forget_power_saved(&mut self, vm: &VmId, at: Millis) {
        self.power_saved.remove(vm);
        if let Err(e) = self.journal.set_power_saved(vm, false, at) {
            warn!("{e}");
        }
    }

    fn power_is_low(&self) -> bool {
        matches!(self.power_state, Some(PowerState::Low(_)))
    }

    /// Counts this tick's rates into each running VM's needs history; writes
    /// the changed histories to the journal every `NEEDS_FLUSH`.
    fn record_needs(&mut self, obs: &Observation, d: &ReallocDecision, at: Millis) {
        for (v, view) in obs.vms.iter().zip(&d.views) {
            let (Some(r), Some(a)) = (view.rates, v.activity) else { continue };
            self.needs.entry(v.id.clone()).or_default().record(at, &r, a.vcpus);
            self.needs_dirty.insert(v.id.clone());
        }
        if at.since(self.needs_flushed_at) >= NEEDS_FLUSH.as_millis() as u64 {
            self.flush_needs(at);
        }
    }

    fn flush_needs(&mut self, at: Millis) {
        for vm in std::mem::take(&mut self.needs_dirty) {
            if let Some(n) = self.needs.get(&vm) {
                if let Err(e) = self.journal.save_needs(&vm, n, at) {
                    warn!("{e}");
                }
            }
        }
        self.needs_flushed_at = at;
    }

    /// Journals each VM's tunes (as found, as ebb set them) when they change,
    /// so a restarted agent knows its own changes.
    fn remember_tunes(&mut self, obs: &Observation, at: Millis) {
        let now = obs.vms.iter().filter_map(|v| Some((v.id.clone(), self.realloc.tunes(&v.id)?))).collect();
        remember_changed(&mut self.saved_tunes, now, |vm, t| self.journal.save_tunes(vm, t, at));
    }

    /// Writes the pinnings the affinity policy holds when they change.
    fn remember_pins(&mut self, at: Millis) {
        let now = self.affinity_views.keys().filter_map(|vm| Some((vm.clone(), self.affinity.pins(vm)?.clone()))).collect();
        remember_changed(&mut self.saved_pins, now, |vm, p| self.journal.save_pins(vm, p, at));
    }

    /// Writes the online vCPU counts the policy holds when they change.
    fn remember_vcpus(&mut self, at: Millis) {
        let now = self.vcpu_views.keys().filter_map(|vm| Some((vm.clone(), self.vcpus.state(vm)?))).collect();
        remember_changed(&mut self.saved_vcpus, now, |vm, v| self.journal.save_online_vcpus(vm, v, at));
    }

    /// The fewest vCPUs ebb may leave online in a VM's guest (`[vm.NAME.realloc] vcpus_min`).
    fn vcpus_min(&self, vm: &VmId) -> Option<u32> {
        self.cfg.vm_section(vm)?.realloc.as_ref()?.vcpus_min
    }

    /// The CPUs ebb may pin a VM to (`[vm.NAME.realloc] cpus`).
    fn cpus_bound(&self, vm: &VmId) -> Option<CpuSet> {
        self.cfg.vm_section(vm)?.realloc.as_ref()?.cpus.clone()
    }

    /// A VM ebb holds asleep that runs again was started behind ebb's back
    /// (`virsh start`, `virsh resume`): it is awake, and ebb says so.
    fn note_power_changes(&mut self, obs: &Observation, at: Millis) {
        let woke: Vec<VmId> = self
            .sleeping
            .iter()
            .filter(|(id, rec)| {
                let seen = obs.vms.iter().find(|v| &v.id == *id);
                matches!(
                    (seen.map(|v| v.state), rec.mode),
                    (None, _) | (Some(VmState::Running), _) | (Some(VmState::ShutOff), SleepMode::Pause)
                )
            })
            .map(|(id, _)| id.clone())
            .collect();
        for vm in woke {
            let text = match obs.vms.iter().find(|v| v.id == vm) {
                Some(v) => format!("{vm} is {} again without ebb waking it: no longer held asleep", vm_state_word(v.state)),
                None => format!("{vm} is gone: forgetting that it slept"),
            };
            info!(vm = %vm, "{text}");
            self.journal_vm(&vm, at, "woke_outside", Some(Rule::Wake.as_str()), &text, None, None);
            self.forget_sleep(&vm);
            self.set_power(&vm, VmPower::Awake);
        }
    }

    fn forget_sleep(&mut self, vm: &VmId) {
        self.sleeping.remove(vm);
        self.sleep_policy.woke(vm);
        if let Err(e) = self.journal.clear_sleeping(vm) {
            warn!("{e}");
        }
    }

    /// Answers an API request: carries the action out at once.
    async fn command(&mut self, cmd: Command) {
        let at = now();
        let (action, reply) = match cmd {
            Command::Sleep { vm, reply } => {
                let mode = self.sleep_settings.get(&vm).map_or(SleepMode::Save, |s| s.mode);
                let state = self.known_states.get(&vm).map(|k| k.state);
                let refusal = match (state, self.sleeping.get(&vm)) {
                    (None, _) => Some(format!("no VM named {vm} on this host")),
                    (Some(_), Some(rec)) => Some(format!("{vm} is asleep already ({})", rec.mode.as_str())),
                    (Some(VmState::Running), None) => None,
                    (Some(s), None) => Some(format!("{vm} is {}: only a running VM can be put to sleep", vm_state_word(s))),
                };
                if let Some(why) = refusal {
                    let _ = reply.send(Err(why));
                    return;
                }
                let reason = Reason::new(Rule::Sleep, format!("asked to sleep ({}) through the API", mode.as_str()));
                (Action::Sleep { vm, mode, reason }, reply)
            }
            Command::Needs { vm, reply } => {
                let answer = match self.needs.get(&vm) {
                    Some(n) => Ok(n.summary(&self.realloc_cfg)),
                    None if self.known_states.contains_key(&vm) => Ok(vec![]),
                    None => Err(format!("no VM named {vm} on this host, and no history of one")),
                };
                let _ = reply.send(answer);
                return;
            }
            Command::Critical { vm, on, reply } => {
                if !self.known_states.contains_key(&vm) {
                    let _ = reply.send(Err(format!("no VM named {vm} on this host")));
                    return;
                }
                if let Err(e) = self.journal.set_critical(&vm, on, at) {
                    let _ = reply.send(Err(format!("could not record the flag: {e}")));
                    return;
                }
                self.critical.insert(vm.clone(), on);
                let text = if on { "marked time-critical: put first" } else { "no longer time-critical" };
                info!(vm = %vm, "{text}");
                self.journal_vm(&vm, at, "critical", Some(Rule::Critical.as_str()), text, None, None);
                let _ = reply.send(Ok(format!("{vm} {text}; ebb applies it at its next tick")));
                return;
            }
            Command::Value { vm, value, reply } => {
                if !self.known_states.contains_key(&vm) {
                    let _ = reply.send(Err(format!("no VM named {vm} on this host")));
                    return;
                }
                if let Err(e) = self.journal.set_value(&vm, value, at) {
                    let _ = reply.send(Err(format!("could not record the value: {e}")));
                    return;
                }
                let text = match value {
                    Some(v) => {
                        self.values.insert(vm.clone(), v);
                        format!("value {v} when power drops")
                    }
                    None => {
                        self.values.remove(&vm);
                        match self.cfg.vm_section(&vm).and_then(|s| s.value) {
                            Some(v) => format!("value cleared: back to the config's {v}"),
                            None => "value cleared: not set (counted as 1)".to_string(),
                        }
                    }
                };
                info!(vm = %vm, "{text}");
                self.journal_vm(&vm, at, "value", Some(Rule::Power.as_str()), &text, None, None);
                let _ = reply.send(Ok(format!("{vm}: {text}; the plan follows at the next tick")));
                return;
            }
            Command::Wake { vm, reply } => {
                if self.power_is_low() {
                    let _ = reply.send(Err("the host is on low battery: ebb starts no VM until mains power is back".into()));
                    return;
                }
                // Only what sleeps wakes: ebb's own sleepers, a paused VM, a
                // managed save; never a cold boot of a VM someone shut off.
                let known = self.known_states.get(&vm);
                let refusal = match known {
                    _ if self.sleeping.contains_key(&vm) => None,
                    None => Some(format!("no VM named {vm} on this host")),
                    Some(KnownState { state: VmState::Paused, .. } | KnownState { state: VmState::ShutOff, managed_save: true }) => None,
                    Some(KnownState { state: VmState::Running, .. }) => Some(format!("{vm} is not asleep: it is awake already")),
                    Some(KnownState { state: VmState::ShutOff, .. }) => Some(format!(
                        "{vm} is shut off with no saved state: ebb wakes a VM that sleeps (saved or paused); start it with virsh start"
                    )),
                    Some(k) => Some(format!("{vm} is {}: only a saved or paused VM can be woken", vm_state_word(k.state))),
                };
                if let Some(why) = refusal {
                    let _ = reply.send(Err(why));
                    return;
                }
                (Action::Wake { vm, reason: Reason::new(Rule::Wake, "asked to wake through the API") }, reply)
            }
        };
        let outcome = self.act(vec![action], at).await.pop();
        self.republish();
        let _ = reply.send(match outcome {
            Some((_, Ok(()))) => Ok("done".into()),
            Some((_, Err(e))) => Err(e),
            None => Err("libvirt is not reachable now: try again when `ebb status` says connected".into()),
        });
    }

    /// Carries out actions and journals each outcome; returns them.
    async fn act(&mut self, actions: Vec<Action>, at: Millis) -> Vec<(Action, Result<(), String>)> {
        if actions.is_empty() {
            return vec![];
        }
        // The surrogate holds new clients from the moment a save begins (if
        // the save fails they are spliced to the still-running VM), and while
        // a wake runs. A VM whose ports the kernel still forwards (nft
        // failed to remove its rules) is not saved: its clients would meet
        // a stopped VM.
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(actions.len());
        for a in actions {
            match &a {
                Action::Sleep { vm, .. } => {
                    if let Err(e) = self.try_set_power(vm, VmPower::Asleep) {
                        let vm = vm.clone();
                        self.set_power(&vm, VmPower::Awake);
                        self.actions_total += 1;
                        self.action_failures_total += 1;
                        self.journal_vm(&vm, at, a.kind(), Some(a.reason().rule.as_str()), &a.reason().text, None, Some(&format!("failed: {e}")));
                        out.push((a, Err(e)));
                        continue;
                    }
                }
                Action::Wake { vm, .. } => self.set_power(vm, VmPower::Waking),
                Action::SetBalloonTarget { .. }
                | Action::SetTune { .. }
                | Action::SetPins { .. }
                | Action::SetGuestVcpus { .. }
                | Action::Shutdown { .. } => {}
            }
            kept.push(a);
        }
        let actions = kept;
        // Waking a paused VM resumes it; waking a saved one starts it from its image.
        let sleeping = self.sleeping.clone();
        let Some(results) = self
            .with_hv(move |hv| {
                actions
                    .into_iter()
                    .map(|a| {
                        let t0 = Instant::now();
                        let r = match &a {
                            Action::SetBalloonTarget { vm, target, .. } => hv.set_memory(vm, *target),
                            Action::SetTune { vm, tune, .. } => hv.set_tune(vm, *tune),
                            Action::Shutdown { vm, .. } => hv.shutdown(vm),
                            Action::SetPins { vm, pins, .. } => hv.set_vcpu_pins(vm, pins),
                            Action::SetGuestVcpus { vm, count, .. } => hv.set_guest_vcpus(vm, *count),
                            Action::Sleep { vm, mode: SleepMode::Save, .. } => hv.save(vm),
                            Action::Sleep { vm, mode: SleepMode::Pause, .. } => hv.pause(vm),
                            Action::Wake { vm, .. } => match sleeping.get(vm).map(|r| r.mode) {
                                Some(SleepMode::Pause) => hv.resume(vm),
                                _ => hv.start(vm).or_else(|e| hv.resume(vm).map_err(|_| e)),
                            },
                        };
                        (a, r, t0.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
            .await
        else {
            return out;
        };
        for (action, result, took) in results {
            self.actions_total += 1;
            let vm = action.vm().clone();
            let reason = action.reason().clone();
            if let Err(e) = &result {
                self.action_failures_total += 1;
                warn!(vm = %vm, "{} failed: {e}", action.kind());
            } else {
                info!(vm = %vm, "{}: {reason}", action.kind());
            }
            let target = match &action {
                Action::SetBalloonTarget { target, .. } => Some(*target),
                _ => None,
            };
            match (&action, &result) {
                (Action::SetBalloonTarget { .. }, Err(_)) => self.policy.record_failure(&vm, at),
                (Action::SetTune { tune, .. }, Ok(())) => {
                    self.realloc.applied(&vm, *tune);
                    self.live_tunes.insert(vm.clone(), (*tune, at));
                }
                (Action::SetTune { .. }, Err(HvError::Bandwidth { detail, .. })) => self.realloc.net_failed(&vm, at, detail.clone()),
                (Action::SetTune { .. }, Err(_)) => self.realloc.failed(&vm, at),
                (Action::SetPins { pins, .. }, Ok(())) => self.affinity.applied(&vm, pins, at),
                (Action::SetPins { .. }, Err(_)) => self.affinity.failed(&vm, at),
                (Action::SetGuestVcpus { count, .. }, Ok(())) => self.vcpus.applied(&vm, *count, at),
                (Action::Sleep { mode, .. }, Ok(())) => {
                    let now_state = match mode {
                        SleepMode::Save => KnownState { state: VmState::ShutOff, managed_save: true },
                        SleepMode::Pause => KnownState { state: VmState::Paused, managed_save: false },
                    };
                    self.known_states.insert(vm.clone(), now_state);
                    self.sleeps_total += 1;
                    let rec = SleepRecord { mode: *mode, since: at, reason: reason.text.clone() };
                    if let Err(e) = self.journal.set_sleeping(&vm, &rec) {
                        warn!("{e}");
                    }
                    self.sleeping.insert(vm.clone(), rec);
                }
                (Action::Sleep { .. }, Err(_)) => self.set_power(&vm, VmPower::Awake),
                (Action::Wake { .. }, Ok(())) => {
                    self.known_states.insert(vm.clone(), KnownState { state: VmState::Running, managed_save: false });
                    self.wakes_total += 1;
                    self.last_wake_ms = Some(took.as_secs_f64() * 1000.0);
                    self.forget_sleep(&vm);
                    self.set_power(&vm, VmPower::Awake);
                }
                (Action::Wake { .. }, Err(e)) => self.set_power(&vm, VmPower::WakeFailed(e.to_string())),
                _ => {}
            }
            let outcome = match &result {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            self.journal_vm(&vm, at, action.kind(), Some(reason.rule.as_str()), &reason.text, target, Some(&outcome));
            let lost = result.as_ref().err().is_some_and(|e| e.is_connection_lost());
            out.push((action, result.map_err(|e| e.to_string())));
            if lost {
                if let Some((_, Err(e))) = out.last() {
                    let e = HvError::Unreachable { uri: self.cfg.agent.uri.clone(), detail: e.clone() };
                    self.lost_connection(at, &e);
                }
                break;
            }
        }
        out
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
        decisions: Option<(&MemoryDecision, &SleepDecision, Option<&ReallocDecision>)>,
        started: Instant,
        at: Millis,
    ) {
        let tick_ms = started.elapsed().as_secs_f64() * 1000.0;
        let decision = decisions.map(|d| d.0);
        let (obs, vms) = match (seen, decisions) {
            (Some((obs, resolved)), Some((decision, idle, realloc))) => {
                let views: HashMap<&VmId, &VmMemoryView> = decision.vms.iter().map(|v| (&v.vm, v)).collect();
                let realloc_views: HashMap<&VmId, &VmReallocView> =
                    realloc.map(|d| d.views.iter().map(|v| (&v.vm, v)).collect()).unwrap_or_default();
                let idle_views: HashMap<&VmId, &VmIdleView> = idle.views.iter().map(|v| (&v.vm, v)).collect();
                let with_sleep = |id: &VmId| self.sleep_settings.contains_key(id);
                let vms = obs
                    .vms
                    .iter()
                    .filter_map(|vm| {
                        let r = resolved.get(&vm.id)?;
                        Some(VmInfo {
                            name: vm.id.to_string(),
                            state: vm.state,
                            memory: (*views.get(&vm.id)?).clone(),
                            settings: r.settings.clone(),
                            sources: r.sources,
                            settings_problems: r.problems.clone(),
                            sleeping: self.sleeping.get(&vm.id).cloned(),
                            surrogate: self.surrogate_view(&vm.id),
                            idle: idle_views.get(&vm.id).filter(|_| with_sleep(&vm.id)).map(|v| (*v).clone()),
                            // `current` as it is after this tick's changes.
                            realloc: realloc_views.get(&vm.id).map(|v| VmReallocView {
                                current: self.live_tunes.get(&vm.id).map(|(t, _)| *t),
                                ..(*v).clone()
                            }),
                            vcpus: self.vcpu_views.get(&vm.id).map(|r| match r {
                                // `online` as it is after this tick's change.
                                Ok(v) => Ok(VcpuView { online: self.vcpus.state(&vm.id).map_or(v.online, |s| s.applied.unwrap_or(s.base)), ..v.clone() }),
                                Err(e) => Err(e.clone()),
                            }),
                            // `current` as it is after this tick's moves.
                            affinity: self.affinity_views.get(&vm.id).map(|a| AffinityView {
                                current: self.affinity.pins(&vm.id).map_or_else(|| a.current.clone(), |p| p.applied.clone().unwrap_or_else(|| p.base.clone())),
                                ..a.clone()
                            }),
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

    /// Shows a command's effect at once rather than at the next tick.
    fn republish(&self) {
        let mut snap = (**self.snapshot.borrow()).clone();
        snap.status = Status { last_tick_ms: snap.status.last_tick_ms, ..self.status(None, None, 0.0) };
        for vm in &mut snap.vms {
            let id = VmId::new(&vm.name);
            if let Some(k) = self.known_states.get(&id) {
                vm.state = k.state;
            }
            vm.sleeping = self.sleeping.get(&id).cloned();
            vm.surrogate = self.surrogate_view(&id);
        }
        self.snapshot.send_replace(Arc::new(snap));
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
            sleeps_total: self.sleeps_total,
            wakes_total: self.wakes_total,
            last_wake_ms: self.last_wake_ms,
            journal: self.journal.path().display().to_string(),
            power: (self.power.is_some() || self.power_error.is_some() || self.plan.is_some() || !matches!(self.measured, Ok(None)) || self.devices_view.is_some()).then(|| PowerStatus {
                reading: self.power.clone(),
                state: self.power_state.clone(),
                error: self.power_error.clone(),
                saved_for_power: self.power_saved.iter().map(|v| v.to_string()).collect(),
                last_power_off: self.last_power_off.clone(),
                plan: self.plan.clone(),
                model_draw: self.model_draw,
                measured: self.measured.clone().ok().flatten(),
                measured_error: self.measured.clone().err(),
                devices: self.devices_view.clone(),
            }),
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

/// Runs a blocking call on the boxed backend in `slot` off the async
/// runtime, putting the backend back afterwards. None when the slot is empty;
/// an error (and the slot left empty) when the call panicked.
async fn off_thread<T: ?Sized + Send + 'static, R: Send + 'static>(
    slot: &mut Option<Box<T>>,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<Option<R>, tokio::task::JoinError> {
    let Some(mut backend) = slot.take() else { return Ok(None) };
    let (backend, r) = tokio::task::spawn_blocking(move || {
        let r = f(backend.as_mut());
        (backend, r)
    })
    .await?;
    *slot = Some(backend);
    Ok(Some(r))
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
        sleeps_total: 0,
        wakes_total: 0,
        last_wake_ms: None,
        journal: String::new(),
        power: None,
    }
}

/// The disks with their counters, and which running VMs' images each
/// holds; an image whose disk cannot be told holds every disk (in words).
fn read_disks(p: &mut dyn Platform, images: Vec<(VmId, Result<Vec<PathBuf>, String>)>) -> Result<DiskRead, String> {
    let disks = p.disks().map_err(|e| e.to_string())?;
    let (mut guards, mut unknown) = (BTreeMap::<String, Vec<VmId>>::new(), vec![]);
    for (vm, files) in images {
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                unknown.push(format!("{vm}'s images (its disks could not be read: {e})"));
                continue;
            }
        };
        for file in files {
            match p.disks_of(&file) {
                Ok(names) if names.is_empty() => unknown.push(format!("{vm}'s {}", file.display())),
                Ok(names) => names.into_iter().for_each(|n| guards.entry(n).or_default().push(vm.clone())),
                Err(e) => unknown.push(format!("{vm}'s {} ({e})", file.display())),
            }
        }
    }
    for vms in guards.values_mut() {
        vms.sort();
        vms.dedup();
    }
    Ok((disks, guards, unknown))
}

/// "cpu0 governor performance → powersave, cpu1 max 3000 → 1500 MHz".
fn describe_cpu_changes(changes: &[CpuChange]) -> String {
    let one = |c: &CpuChange| {
        let mut parts = vec![];
        if let (Some(from), Some(to)) = (&c.found.governor, &c.applied.governor) {
            parts.push(format!("governor {from} → {to}"));
        }
        if let (Some(from), Some(to)) = (c.found.max_khz, c.applied.max_khz) {
            parts.push(format!("max {} → {} MHz", from / 1000, to / 1000));
        }
        format!("cpu{} {}", c.applied.cpu, parts.join(", "))
    };
    changes.iter().map(one).collect::<Vec<_>>().join("; ")
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

/// Journals each VM's value that differs from what was last written, and
/// remembers it once written.
fn remember_changed<T: PartialEq>(
    saved: &mut HashMap<VmId, T>,
    now: Vec<(VmId, T)>,
    save: impl Fn(&VmId, &T) -> Result<(), crate::journal::JournalError>,
) {
    for (vm, value) in now {
        if saved.get(&vm) == Some(&value) {
            continue;
        }
        match save(&vm, &value) {
            Ok(()) => {
                saved.insert(vm, value);
            }
            Err(e) => warn!("{e}"),
        }
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
