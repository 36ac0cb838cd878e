//! Building the agent: its policies and surrogate from the config, and what the journal remembers.

use super::*;
use crate::api_types::{Connection, Snapshot};
use crate::config::Config;
use crate::journal::{Journal, JournalHandle, Kind};
use super::persist::{Said, SaidAbout};
use ebb_backends::platform::{HostPlatform, Platform};
use ebb_core::affinity::{AffinityPolicy, Pins};
use ebb_core::devices::DevicePolicy;
use ebb_core::memory::MemoryPolicy;
use ebb_core::realloc::ReallocPolicy;
use ebb_core::vcpus::{OnlineVcpus, VcpuPolicy};
use ebb_core::sleep::SleepPolicy;
use ebb_surrogate::{AwakePath, Surrogate, SurrogateError, VmPower};
use ebb_core::human::FieldError;
use ebb_core::VmId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

impl Agent {
    /// Builds the agent and resumes what the journal remembers. Does not
    /// connect yet: the first tick does, so a libvirtd that is down at start
    /// is handled like one that goes away later. Fails on a UPS setting
    /// that cannot be used (a CA file gone since the config was checked):
    /// never a fallback to an unauthenticated reading. What the journal
    /// remembers is read from `journal`; the agent writes through `writer`.
    pub fn new(cfg: Config, journal: &Journal, writer: JournalHandle, connect: Connector, clock: Clock) -> Result<NewAgent, FieldError> {
        let ups = cfg.power.ups_reader().transpose()?;
        let started_at = clock.now();
        let sleeping = match journal.sleeping() {
            Ok(list) => list.into_iter().collect(),
            Err(e) => {
                warn!("could not read the sleeping VMs from the journal: {e}");
                BTreeMap::new()
            }
        };
        let (command_tx, commands) = mpsc::channel(64);
        let (surrogate, surrogate_events) = Surrogate::new(cfg.surrogate_limits());
        let mut policy = MemoryPolicy::new();
        policy.set_tick(cfg.agent.tick.as_millis() as u64);
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
        let host_saved = journal.host_saved().unwrap_or_else(|e| {
            warn!("could not read the VMs saved for the host's sleep from the journal: {e}");
            vec![]
        });
        let power_saved = journal.power_saved().unwrap_or_else(|e| {
            warn!("could not read the VMs saved for power from the journal: {e}");
            vec![]
        });
        let platform: Box<dyn Platform> = Box::new(HostPlatform::new(
            cfg.power.sysfs.clone(),
            ups,
            cfg.power.power_off_command.clone(),
            cfg.power.devices.disk_standby_command.clone(),
            cfg.farm.as_ref().and_then(|f| f.sleep.as_ref()?.command.clone()),
        ));
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
            link: Link { connect: Arc::new(connect), hv: None, state: connection },
            memory: policy,
            said: SaidAbout { memory: Said::resumed(saved_memory), tunes: Said::resumed(saved_tunes), pins: Said::resumed(saved_pins), vcpus: Said::resumed(saved_vcpus), ..SaidAbout::default() },
            sleep_policy: SleepPolicy::new(),
            vms: KnownVms {
                seen: BTreeSet::new(),
                states: HashMap::new(),
                metadata: HashMap::new(),
                settings: BTreeMap::new(),
                sleeping,
                critical: critical.into_iter().collect(),
                values: values.into_iter().collect(),
                live_tunes: HashMap::new(),
                disks: HashMap::new(),
                in_flight: Vec::new(),
            },
            realloc: Realloc {
                policy: realloc,
                cfg: cfg.realloc.clone(),
                affinity,
                affinity_views: HashMap::new(),
                vcpus,
                vcpu_views: HashMap::new(),
                needs: needs.into_iter().collect(),
                needs_dirty: BTreeSet::new(),
                needs_flushed_at: started_at,
            },
            platform: Some(platform),
            power: Power {
                low_battery: cfg.power.low_battery(),
                reading: None,
                state: None,
                error: None,
                saved: power_saved.into_iter().collect(),
                last_off: None,
                sequence: Default::default(),
                plan: None,
                model_draw: None,
                measured: Ok(None),
            },
            devices: Devices { policy: devices, cfg: cfg.power.devices.clone(), view: None, last_restore_error: None },
            commands,
            clients: Default::default(),
            consoles: mpsc::unbounded_channel(),
            surrogate,
            surrogate_events,
            refusal_journaled: HashMap::new(),
            counters: Counters { started_at, ..Counters::default() },
            snapshot: watch::channel(Arc::new(Snapshot { status: placeholder_status(), vms: vec![], clients: vec![] })).0,
            clock,
            journal: writer,
            farm: None,
            farm_clients: watch::channel(ebb_farm::ActiveClients::new()).0,
            farm_vms: watch::channel(None).0,
            host: host_sleep::HostSleep::new(&cfg, started_at, host_saved),
            cfg,
        };
        let status = agent.status(None, None, 0.0);
        agent.snapshot.send_replace(Arc::new(Snapshot { status, vms: vec![], clients: vec![] }));
        let rx = agent.snapshot.subscribe();
        Ok((agent, rx, command_tx))
    }

    /// Binds every declared service before anything else happens, each in
    /// the state the journal remembers (a VM ebb holds asleep stays covered
    /// across a restart). A taken address stops startup with its name.
    pub fn serve_services(&mut self) -> Result<(), SurrogateError> {
        for (name, section) in &self.cfg.vm {
            if section.service.is_empty() {
                continue;
            }
            let vm = VmId::new(name.clone());
            let state = if self.vms.sleeping.contains_key(&vm) { VmPower::Asleep } else { VmPower::Awake };
            self.surrogate.add_vm(vm, section.service.clone(), state)?;
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
    pub(super) fn choose_awake_path(&mut self) -> Result<(), SurrogateError> {
        let s = &self.cfg.surrogate;
        let owner = self.cfg.agent.socket.to_string_lossy().into_owned();
        match self.surrogate.set_awake_path(s.awake_path, &s.nft, &owner)? {
            Ok(table) => info!("awake VMs' qualifying services are forwarded by the kernel (nft table inet {table})"),
            Err(why) if s.awake_path == AwakePath::Splice => info!("awake VMs' connections are spliced by ebb ({why})"),
            Err(why) => {
                let text = format!("the kernel path is not available, ebb splices awake VMs' connections itself: {why}");
                warn!("{text}");
                self.journal_event(None, Kind::AwakePath, &text);
            }
        }
        for vm in self.surrogate.vms() {
            for r in self.surrogate.awake_routes(vm) {
                info!(vm = %vm, service = %r.service, "awake, {}: {}", r.path, r.why);
            }
        }
        Ok(())
    }
}
