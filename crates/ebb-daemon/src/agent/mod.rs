//! The agent: one task owns all state and runs observe → decide → act →
//! journal on every tick (tokio-console's aggregator shape: no shared
//! mutable state). Readers get an immutable `Snapshot` through a watch
//! channel. Runtime faults (libvirtd gone, a VM vanishing, a failed call)
//! are journaled and shown; they never stop the agent.

mod boot;
mod surrogate;
mod connection;
mod observe;
mod power;
mod devices;
mod persist;
mod commands;
mod act;
mod publish;
mod decide;
mod clients;
mod host_sleep;

use observe::CpuReadings;
use decide::Decisions;
use publish::placeholder_status;

pub use commands::{Command, CommandError, ErrorKind, Reply};

use crate::api_types::{Connection, DevicesView, SleepRecord, Snapshot};
use crate::clock::Clock;
use crate::config::Config;
use crate::journal::{JournalHandle, Kind};
use crate::settings::{MetadataSettings, Resolved};
use ebb_backends::platform::Platform;
use ebb_backends::{HvError, Hypervisor};
use ebb_core::affinity::{AffinityPolicy, AffinityView, Pins};
use ebb_core::devices::{DeviceConfig, DevicePolicy, DiskSample};
use ebb_core::power::{model_draw, plan_view, LowBattery, Measured, PlanView, PowerReading, PowerState, Watts};
use ebb_core::memory::MemoryPolicy;
use ebb_core::needs::VmNeeds;
use ebb_core::realloc::{ReallocConfig, ReallocPolicy, Tunes};
use ebb_core::vcpus::{OnlineVcpus, VcpuPolicy, VcpuView};
use ebb_core::sleep::SleepPolicy;
use ebb_core::requests::KnownState;
use ebb_surrogate::{Surrogate, SurrogateEvent};
use ebb_core::{Millis, Tune, VmId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::info;

/// A running domain and its disk sources, when they were due to be read.
type DiskSources = (VmId, Option<Result<Vec<PathBuf>, HvError>>);
/// The disks, the running VMs whose images each holds, and the images
/// whose disk is unknown (in words).
type DiskRead = (Vec<DiskSample>, BTreeMap<String, Vec<VmId>>, Vec<String>);

/// Opens a hypervisor connection; called again after the connection is lost.
pub type Connector = Box<dyn Fn(&str) -> Result<Box<dyn Hypervisor>, HvError> + Send + Sync>;


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

struct CachedMetadata {
    fetched_at: Millis,
    settings: Result<Option<MetadataSettings>, String>,
}

/// The agent's state, grouped by what it serves; one task owns all of it.
pub struct Agent {
    cfg: Config,
    /// Where the time of day is read (the wall clock, or tokio's in tests).
    clock: Clock,
    link: Link,
    /// The journal's writer: the agent never waits on the disk.
    journal: JournalHandle,
    /// What was last journaled about each VM, to journal only changes.
    said: persist::SaidAbout,
    memory: MemoryPolicy,
    sleep_policy: SleepPolicy,
    vms: KnownVms,
    realloc: Realloc,
    /// The host's side of power and devices (UPS, sysfs, power-off).
    platform: Option<Box<dyn Platform>>,
    power: Power,
    devices: Devices,
    /// Stands in for the VMs' declared services (`[[vm.NAME.service]]`).
    surrogate: Surrogate,
    surrogate_events: mpsc::Receiver<SurrogateEvent>,
    /// When a VM's last refusal was journaled: a flood is one entry a second.
    refusal_journaled: HashMap<VmId, Millis>,
    commands: mpsc::Receiver<Command>,
    /// The clients attached to the VMs and their activity timers (seed 002).
    clients: ebb_core::clients::Clients,
    /// Console events from libvirt's event thread, and the sender it gets.
    consoles: (mpsc::UnboundedSender<ebb_core::clients::ConsoleEvent>, mpsc::UnboundedReceiver<ebb_core::clients::ConsoleEvent>),
    snapshot: watch::Sender<Arc<Snapshot>>,
    counters: Counters,
    /// The farm link's state (`[farm]`), shown in the status; the link runs on its own task.
    farm: Option<watch::Receiver<ebb_farm::LinkStatus>>,
    /// The active clients as the farm link keeps them in etcd.
    farm_clients: watch::Sender<ebb_farm::ActiveClients>,
    /// The VMs this host runs, for the farm's routing (None until listed).
    farm_vms: watch::Sender<Option<Vec<String>>>,
    /// The host's own sleep in the farm (`[farm.sleep]`).
    host: host_sleep::HostSleep,
}

/// The hypervisor connection, and how to make it again.
struct Link {
    connect: Arc<Connector>,
    hv: Option<Box<dyn Hypervisor>>,
    state: Connection,
}

/// What the agent knows about the VMs, from observation and its own acts.
struct KnownVms {
    /// The VMs seen at the last tick (to journal those that come and go).
    seen: BTreeSet<VmId>,
    /// Each of ebb's VMs as the agent knows it now.
    states: HashMap<VmId, KnownState>,
    metadata: HashMap<VmId, CachedMetadata>,
    /// Each observed VM's settings as resolved at the last tick (config
    /// over metadata over defaults): the one place the agent reads them.
    settings: BTreeMap<VmId, Resolved>,
    /// The VMs ebb holds asleep (also in the journal, for restarts).
    sleeping: BTreeMap<VmId, SleepRecord>,
    /// `ebb critical` flags (journaled); they override the config's.
    critical: BTreeMap<VmId, bool>,
    /// `ebb value` settings (journaled); they override the config's.
    values: BTreeMap<VmId, u32>,
    /// Each running VM's live CPU tune and when it was read.
    live_tunes: HashMap<VmId, (Tune, Millis)>,
    /// Every running domain's disk sources (all domains, not only ebb's:
    /// no disk goes to standby under any VM), and when they were read.
    disks: HashMap<VmId, (Result<Vec<PathBuf>, String>, Millis)>,
    /// VMs whose balloon was still moving at the last tick.
    in_flight: Vec<VmId>,
}

/// Activity-based reallocation: CPU tunes, affinity, online vCPUs, and the
/// needs history they learn from.
struct Realloc {
    policy: ReallocPolicy,
    cfg: ReallocConfig,
    affinity: AffinityPolicy,
    /// Each VM with a `cpus` bound: what the affinity policy made of it this tick.
    affinity_views: HashMap<VmId, AffinityView>,
    vcpus: VcpuPolicy,
    /// Each VM with `vcpus_min`: what the policy made of it this tick, or
    /// why its guest's vCPUs could not be read.
    vcpu_views: HashMap<VmId, Result<VcpuView, String>>,
    /// Each VM's needs history, and which changed since the last flush.
    needs: HashMap<VmId, VmNeeds>,
    needs_dirty: BTreeSet<VmId>,
    needs_flushed_at: Millis,
}

/// Host power: the source, low battery and the power-drop plan.
struct Power {
    low_battery: LowBattery,
    reading: Option<PowerReading>,
    state: Option<PowerState>,
    /// Why the power source could not be read, while it cannot.
    error: Option<String>,
    /// VMs ebb saved on low battery (journaled), restored when mains is back.
    saved: BTreeSet<VmId>,
    /// Set once the host was powered down (or the power-off recorded) in this low-battery event.
    last_off: Option<String>,
    /// Where the low-battery sequence is (saves, shutdowns, the power-off).
    sequence: ebb_core::battery::LowBatterySequence,
    /// The power-drop plan as it stands this tick (with a budget).
    plan: Option<PlanView>,
    /// The host's draw by the power model at the VMs' CPU use this tick…
    model_draw: Option<Watts>,
    /// …and as RAPL measures it, or why it could not.
    measured: Result<Option<Measured>, String>,
}

/// Device power: CPU frequency and disk standby (the seed's Figure 2).
struct Devices {
    policy: DevicePolicy,
    cfg: DeviceConfig,
    view: Option<DevicesView>,
    /// The last failed restore of the CPUs, journaled once.
    last_restore_error: Option<String>,
}

/// What `ebb status` and /metrics count.
#[derive(Default)]
struct Counters {
    started_at: Millis,
    ticks: u64,
    actions: u64,
    action_failures: u64,
    sleeps: u64,
    wakes: u64,
    /// Wall time of the last wake (restore or resume call).
    last_wake_ms: Option<f64>,
}

/// A new agent, the snapshots it publishes and where its commands go.
pub type NewAgent = (Agent, watch::Receiver<Arc<Snapshot>>, mpsc::Sender<Command>);

impl Agent {
    /// The farm link from now on: its state in the status, and its
    /// requests for the host's sleep.
    pub fn use_farm_link(&mut self, link: &ebb_farm::MemberLink) {
        self.farm = Some(link.status());
        self.host.use_link(link);
    }

    /// The host's active clients as they change, for the farm link to keep in etcd.
    pub fn farm_clients(&self) -> watch::Receiver<ebb_farm::ActiveClients> {
        self.farm_clients.subscribe()
    }

    /// The VMs this host runs as the farm link keeps them in etcd.
    pub fn farm_vms(&self) -> watch::Receiver<Option<Vec<String>>> {
        self.farm_vms.subscribe()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        self.journal_event(None, Kind::Started, &format!("ebb {} started, watching {}", env!("CARGO_PKG_VERSION"), self.cfg.agent.uri));
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
                    Some(ev) = self.consoles.1.recv() => self.console_event(ev),
                    ev = self.host.next_event() => self.host_event(ev).await,
                    _ = &mut shutdown => break 'ticks,
                }
            }
        }
        self.flush_needs(self.clock.now());
        self.give_back_cpus(self.clock.now()).await;
        self.surrogate.stop_kernel_path();
        self.journal_event(None, Kind::Stopped, "ebb stopped");
        info!("ebb stopped");
    }

    /// One observe → decide → act round. Returns true while some balloon
    /// is moving, so the caller follows it with a fast tick.
    pub async fn tick(&mut self) -> bool {
        let started = Instant::now();
        let at = self.clock.now();
        self.counters.ticks += 1;
        if self.link.hv.is_none() && !self.try_connect(at).await {
            self.publish(None, None, started, at);
            return false;
        }
        let Some(observed) = self.observe(started, at).await else {
            return false;
        };
        let (obs, cpus) = self.take_in(observed, at);
        self.retry_failed_wakes();
        let d = self.decide(&obs, &cpus, at);
        let actions = self.compose(&d);
        self.act(actions, at).await;
        self.remember_changes(&obs, &d, at);
        let views = d.realloc.as_ref().map_or(&[][..], |r| &r.views);
        let model = self.cfg.power.model();
        self.power.plan = self.cfg.power.budget.map(|b| plan_view(&obs, views, |vm| self.vms.sleeping.contains_key(vm), |vm| self.value_of(vm), &model, Watts(b)));
        self.power.model_draw = d.realloc.is_some().then(|| model_draw(&obs, views, &model));
        self.power_tick(&obs, at).await;
        self.devices_tick(&obs, at).await;
        self.expire_clients(at);
        self.host_sleep_tick(&obs, at).await;
        self.publish(Some(&obs), Some((&d.memory, &d.idle, d.realloc.as_ref())), started, at);
        self.vms.in_flight = d.memory.views.iter().filter(|v| v.skipped.is_none() && v.target.is_some() && v.target != v.actual).map(|v| v.vm.clone()).collect();
        self.cfg.memory.enabled && !self.vms.in_flight.is_empty()
    }

}

