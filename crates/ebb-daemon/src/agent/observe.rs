//! Reading each tick's world: per-VM settings, metadata, tunes and disk sources when due, and changes made outside ebb.

use super::*;
use crate::journal::Kind;
use crate::settings::{self};
use ebb_backends::HvError;
use ebb_core::affinity::CpuSet;
use ebb_core::realloc::ReallocSettings;
use ebb_surrogate::VmPower;
use ebb_core::sleep::woke_outside;
use ebb_core::{Millis, Observation, Rule, Tune, VmId, VmState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;
use tracing::{debug, info, warn};

/// What one tick reads from libvirt.
pub(super) struct Observed {
    pub obs: Observation,
    /// Each due VM's `<metadata>` element, if it has one.
    pub metadata: Vec<(VmId, Result<Option<String>, HvError>)>,
    pub tunes: Vec<(VmId, Result<Tune, HvError>)>,
    pub sources: Vec<DiskSources>,
    pub cpus: CpuReadings,
}

/// What the affinity and vCPU policies need beyond the bulk stats.
pub(super) struct CpuReadings {
    /// The vCPU pins of the VMs ebb may pin, and the host's CPU times (read only then).
    pub pins: HashMap<VmId, Vec<CpuSet>>,
    pub host_cpus: Vec<ebb_core::affinity::HostCpuTime>,
    /// Online vCPUs of the VMs with `vcpus_min`, or why they could not be read.
    pub online: HashMap<VmId, Result<u32, String>>,
}

impl Agent {
    /// Reads this tick's world from libvirt in one blocking call off the
    /// actor: the bulk stats, and what is due of metadata, tunes, disk
    /// sources, pins and guest vCPUs. `None` when libvirt did not answer
    /// (a lost connection is noted and published).
    pub(super) async fn observe(&mut self, started: Instant, at: Millis) -> Option<Observed> {
        let needs_metadata = self.metadata_due(at);
        let needs_tune = self.tune_due(at);
        // As resolved at the last tick (a VM's first tick reads none).
        let bounded: BTreeSet<VmId> = self.vms.settings.keys().filter(|id| self.cpus_bound(id).is_some()).cloned().collect();
        let with_vcpus_min: BTreeSet<VmId> = self.vms.settings.keys().filter(|id| self.vcpus_min(id).is_some()).cloned().collect();
        let needs_sources = self.disk_sources_due(at);
        let filter = self.cfg.agent.clone();
        let in_flight = self.vms.in_flight.clone();
        let result = self
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
                Ok::<_, HvError>(Observed { obs, metadata, tunes, sources, cpus: CpuReadings { pins, host_cpus, online } })
            })
            .await?;
        match result {
            Ok(observed) => Some(observed),
            Err(e) => {
                self.lost_connection(at, &e);
                self.publish(None, None, started, at);
                None
            }
        }
    }

    /// Folds what was read into the agent's state (known states, metadata,
    /// tunes, disk sources) and notes what changed outside ebb; returns the
    /// observation with each VM's live tune.
    pub(super) fn take_in(&mut self, observed: Observed, at: Millis) -> (Observation, CpuReadings) {
        let Observed { mut obs, metadata, tunes, sources, cpus } = observed;
        obs.at = at;
        self.vms.states = obs.vms.iter().map(|v| (v.id.clone(), KnownState { state: v.state, managed_save: v.managed_save })).collect();
        for (vm, m) in metadata {
            let settings = match m {
                Ok(Some(xml)) => settings::parse_metadata(&xml).map(Some).map_err(|e| e.to_string()),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            self.vms.metadata.insert(vm, CachedMetadata { fetched_at: at, settings });
        }
        for (vm, t) in tunes {
            match t {
                Ok(t) => {
                    self.vms.live_tunes.insert(vm, (t, at));
                }
                Err(e) => {
                    debug!(vm = %vm, "no CPU tune: {e}");
                    self.vms.live_tunes.remove(&vm);
                }
            }
        }
        self.vms.live_tunes.retain(|id, _| obs.vms.iter().any(|v| &v.id == id && v.state == VmState::Running));
        for vm in &mut obs.vms {
            vm.tune = self.vms.live_tunes.get(&vm.id).map(|(t, _)| *t);
        }
        self.note_disk_sources(sources, at);
        self.note_vm_changes(&obs, at);
        self.note_power_changes(&obs, at);
        (obs, cpus)
    }

    /// A predicate over VM ids telling which need their metadata (re)read.
    pub(super) fn metadata_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let fresh: BTreeSet<VmId> = self
            .vms.metadata
            .iter()
            .filter(|(_, m)| at.since(m.fetched_at) < METADATA_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| !fresh.contains(id)
    }

    pub(super) fn note_vm_changes(&mut self, obs: &Observation, at: Millis) {
        let seen: BTreeSet<VmId> = obs.vms.iter().map(|v| v.id.clone()).collect();
        for vm in seen.difference(&self.vms.seen).cloned().collect::<Vec<_>>() {
            self.journal_vm(&vm, at, Kind::VmAppeared, None, &format!("{vm} appeared"), None, None);
        }
        for vm in self.vms.seen.difference(&seen).cloned().collect::<Vec<_>>() {
            self.journal_vm(&vm, at, Kind::VmGone, None, &format!("{vm} is no longer defined"), None, None);
            self.vms.metadata.remove(&vm);
            self.said.skip.forget(&vm);
            self.said.problems.forget(&vm);
        }
        self.vms.seen = seen;
    }

    /// Resolves each observed VM's settings (config over metadata over
    /// defaults) into `self.vms.settings`, journaling new problems once.
    pub(super) fn resolve_settings(&mut self, obs: &Observation) {
        let mut out = BTreeMap::new();
        for vm in &obs.vms {
            let (meta, mut problems) = match self.vms.metadata.get(&vm.id).map(|m| &m.settings) {
                Some(Ok(m)) => (m.clone(), vec![]),
                Some(Err(e)) => (None, vec![format!("ignoring its ebb metadata: {e}")]),
                None => (None, vec![]),
            };
            let mut r = settings::resolve(self.cfg.vm_section(&vm.id), meta.as_ref());
            problems.append(&mut r.problems);
            r.problems = problems;
            if self.said.problems.changed(&vm.id, &r.problems) {
                for p in &r.problems {
                    warn!(vm = %vm.id, "{p}");
                    self.journal_vm(&vm.id, self.clock.now(), Kind::SettingsProblem, None, p, None, None);
                }
            }
            out.insert(vm.id.clone(), r);
        }
        self.vms.settings = out;
    }

    /// Each observed VM's reallocation bounds (`[vm.NAME.realloc]` or
    /// `<realloc>`), with the `ebb critical` flag over them, in observation order.
    pub(super) fn realloc_settings(&self, obs: &Observation) -> Vec<ReallocSettings> {
        obs.vms
            .iter()
            .map(|vm| {
                let mut s = self.vms.settings.get(&vm.id).and_then(|r| r.realloc.as_ref()).map(|r| r.settings()).unwrap_or_default();
                s.expected = self.realloc.needs.get(&vm.id).and_then(|n| n.expected(obs.at, &self.realloc.cfg));
                if let Some(on) = self.vms.critical.get(&vm.id) {
                    s.critical = *on;
                }
                s
            })
            .collect()
    }

    /// A predicate over VM ids telling whose CPU tune needs (re)reading.
    pub(super) fn tune_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let fresh: BTreeSet<VmId> = self
            .vms.live_tunes
            .iter()
            .filter(|(_, (_, read))| at.since(*read) < TUNE_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| !fresh.contains(id)
    }

    /// Which running domains' disk sources to read this tick: only with
    /// disk standby on, for a domain not read yet or read a while ago.
    pub(super) fn disk_sources_due(&self, at: Millis) -> impl Fn(&VmId) -> bool + Send + 'static {
        let on = self.devices.cfg.disk_idle_after.is_some();
        let fresh: BTreeSet<VmId> = self
            .vms.disks
            .iter()
            .filter(|(_, (_, read))| at.since(*read) < DISK_SOURCES_REFRESH.as_millis() as u64)
            .map(|(id, _)| id.clone())
            .collect();
        move |id| on && !fresh.contains(id)
    }

    /// Keeps the disk sources read this tick; a domain that no longer runs
    /// holds no disk.
    pub(super) fn note_disk_sources(&mut self, sources: Vec<DiskSources>, at: Millis) {
        self.vms.disks.retain(|id, _| sources.iter().any(|(s, _)| s == id));
        for (vm, read) in sources {
            match read {
                Some(Err(HvError::NoSuchVm(_))) => {
                    self.vms.disks.remove(&vm);
                }
                Some(r) => {
                    self.vms.disks.insert(vm, (r.map_err(|e| e.to_string()), at));
                }
                None => {}
            }
        }
    }

    /// A VM ebb holds asleep that runs again (`ebb_core::sleep::woke_outside`)
    /// is awake, and ebb says so.
    pub(super) fn note_power_changes(&mut self, obs: &Observation, at: Millis) {
        for (vm, seen) in woke_outside(&self.vms.sleeping, obs) {
            let text = match seen {
                Some(state) => format!("{vm} is {state} again without ebb waking it: no longer held asleep"),
                None => format!("{vm} is gone: forgetting that it slept"),
            };
            info!(vm = %vm, "{text}");
            self.journal_vm(&vm, at, Kind::WokeOutside, Some(Rule::Wake), &text, None, None);
            self.forget_sleep(&vm);
            // Woken, as if by ebb: a fresh idle window.
            self.sleep_policy.woke(&vm);
            self.set_power(&vm, VmPower::Awake);
        }
    }

    /// No longer held asleep (the sleep policy hears of a wake through its outcome).
    pub(super) fn forget_sleep(&mut self, vm: &VmId) {
        self.vms.sleeping.remove(vm);
        let id = vm.clone();
        self.journal.write(move |j| j.clear_sleeping(&id));
    }

    /// The fewest vCPUs ebb may leave online in a VM's guest (`vcpus_min`).
    pub(super) fn vcpus_min(&self, vm: &VmId) -> Option<u32> {
        self.vms.settings.get(vm)?.realloc.as_ref()?.vcpus_min
    }

    /// The CPUs ebb may pin a VM to (`cpus`).
    pub(super) fn cpus_bound(&self, vm: &VmId) -> Option<CpuSet> {
        self.vms.settings.get(vm)?.realloc.as_ref()?.cpus.clone()
    }

    /// A VM's value when power drops: `ebb value`'s, else its settings'.
    pub(super) fn value_of(&self, vm: &VmId) -> Option<u32> {
        self.vms.values.get(vm).copied().or_else(|| self.vms.settings.get(vm)?.value)
    }

    /// Whether a VM's guest handles power events itself (else it is saved first on low battery).
    pub(super) fn handles_power_events(&self, vm: &VmId) -> bool {
        self.vms.settings.get(vm).is_none_or(|r| r.handles_power_events)
    }
}
