//! The snapshot readers see: built from this tick, never read back as state.

use super::*;
use crate::api_types::{Connection, PowerStatus, Snapshot, Status, VmInfo};
use ebb_core::affinity::AffinityView;
use ebb_core::memory::{MemoryDecision, VmMemoryView};
use ebb_core::realloc::{ReallocDecision, VmReallocView};
use ebb_core::vcpus::VcpuView;
use ebb_core::sleep::{SleepDecision, VmIdleView};
use ebb_core::{Bytes, Millis, Observation, VmId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

impl Agent {
    pub(super) fn publish(
        &self,
        seen: Option<&Observation>,
        decisions: Option<(&MemoryDecision, &SleepDecision, Option<&ReallocDecision>)>,
        started: Instant,
        at: Millis,
    ) {
        let tick_ms = started.elapsed().as_secs_f64() * 1000.0;
        let decision = decisions.map(|d| d.0);
        let (obs, vms) = match (seen, decisions) {
            (Some(obs), Some((decision, idle, realloc))) => {
                let views: HashMap<&VmId, &VmMemoryView> = decision.views.iter().map(|v| (&v.vm, v)).collect();
                let realloc_views: HashMap<&VmId, &VmReallocView> =
                    realloc.map(|d| d.views.iter().map(|v| (&v.vm, v)).collect()).unwrap_or_default();
                let idle_views: HashMap<&VmId, &VmIdleView> = idle.views.iter().map(|v| (&v.vm, v)).collect();
                let with_sleep = |id: &VmId| self.vms.settings.get(id).is_some_and(|r| r.sleep.is_some());
                let vms = obs
                    .vms
                    .iter()
                    .filter_map(|vm| {
                        let r = self.vms.settings.get(&vm.id)?;
                        Some(VmInfo {
                            name: vm.id.to_string(),
                            state: vm.state,
                            memory: (*views.get(&vm.id)?).clone(),
                            settings: r.settings.clone(),
                            sources: r.sources,
                            settings_problems: r.problems.clone(),
                            sleeping: self.vms.sleeping.get(&vm.id).cloned(),
                            surrogate: self.surrogate_view(&vm.id),
                            idle: idle_views.get(&vm.id).filter(|_| with_sleep(&vm.id)).map(|v| (*v).clone()),
                            // `current` as it is after this tick's changes.
                            realloc: realloc_views.get(&vm.id).map(|v| VmReallocView {
                                current: self.vms.live_tunes.get(&vm.id).map(|(t, _)| *t),
                                ..(*v).clone()
                            }),
                            vcpus: self.realloc.vcpu_views.get(&vm.id).map(|r| match r {
                                // `online` as it is after this tick's change.
                                Ok(v) => Ok(VcpuView { online: self.realloc.vcpus.state(&vm.id).map_or(v.online, |s| s.applied.unwrap_or(s.base)), ..v.clone() }),
                                Err(e) => Err(e.clone()),
                            }),
                            // `current` as it is after this tick's moves.
                            affinity: self.realloc.affinity_views.get(&vm.id).map(|a| AffinityView {
                                current: self.realloc.affinity.pins(&vm.id).map_or_else(|| a.current.clone(), |p| p.applied.clone().unwrap_or_else(|| p.base.clone())),
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
        if obs.is_some() {
            self.offer_vms_to_farm(&vms);
        }
        let mut status = self.status(obs, decision, tick_ms);
        status.last_tick_at = Some(at);
        let clients = self.client_views(at);
        self.offer_clients_to_farm(&clients);
        self.snapshot.send_replace(Arc::new(Snapshot { status, vms, clients }));
    }

    /// Shows a command's effect at once rather than at the next tick.
    pub(super) fn republish(&self) {
        let mut snap = (**self.snapshot.borrow()).clone();
        snap.status = Status { last_tick_ms: snap.status.last_tick_ms, ..self.status(None, None, 0.0) };
        for vm in &mut snap.vms {
            let id = VmId::new(&vm.name);
            if let Some(k) = self.vms.states.get(&id) {
                vm.state = k.state;
            }
            vm.sleeping = self.vms.sleeping.get(&id).cloned();
            vm.surrogate = self.surrogate_view(&id);
        }
        snap.clients = self.client_views(self.clock.now());
        self.offer_clients_to_farm(&snap.clients);
        self.snapshot.send_replace(Arc::new(snap));
    }

    pub(super) fn status(&self, obs: Option<&Observation>, decision: Option<&MemoryDecision>, tick_ms: f64) -> Status {
        let prev = self.snapshot.borrow().status.clone();
        let vms: Vec<&VmMemoryView> = decision.map(|d| d.views.iter().collect()).unwrap_or_default();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uri: self.cfg.agent.uri.clone(),
            connection: self.link.state.clone(),
            started_at: self.counters.started_at,
            tick_ms: self.cfg.agent.tick.as_millis() as u64,
            ticks: self.counters.ticks,
            last_tick_at: prev.last_tick_at,
            last_tick_ms: tick_ms,
            memory_enabled: self.cfg.memory.enabled,
            pool: decision.map(|d| d.host.pool).or(prev.pool),
            pool_used: decision.map(|d| d.host.pool_used).unwrap_or(prev.pool_used),
            pool_note: decision.map_or(prev.pool_note, |d| d.host.pool_note.clone()),
            returned: decision.map(|d| d.host.returned).unwrap_or(prev.returned),
            host_total: obs.map(|o| o.host.total).unwrap_or(prev.host_total),
            host_available: obs.map(|o| o.host.available).unwrap_or(prev.host_available),
            vms: if decision.is_some() { vms.len() } else { prev.vms },
            vms_managed: if decision.is_some() { vms.iter().filter(|v| v.skipped.is_none()).count() } else { prev.vms_managed },
            actions_total: self.counters.actions,
            action_failures_total: self.counters.action_failures,
            sleeps_total: self.counters.sleeps,
            wakes_total: self.counters.wakes,
            last_wake_ms: self.counters.last_wake_ms,
            active_clients: self.clients.active(self.clock.now()),
            journal: self.journal.path().display().to_string(),
            journal_trouble: self.journal.trouble(),
            power: (self.power.reading.is_some() || self.power.error.is_some() || self.power.plan.is_some() || !matches!(self.power.measured, Ok(None)) || self.devices.view.is_some()).then(|| PowerStatus {
                reading: self.power.reading.clone(),
                state: self.power.state.clone(),
                error: self.power.error.clone(),
                saved_for_power: self.power.saved.iter().map(|v| v.to_string()).collect(),
                last_power_off: self.power.last_off.clone(),
                plan: self.power.plan.clone(),
                model_draw: self.power.model_draw,
                measured: self.power.measured.clone().ok().flatten(),
                measured_error: self.power.measured.clone().err(),
                devices: self.devices.view.clone(),
            }),
            farm: self.farm.as_ref().map(|link| link.borrow().clone()),
            host_sleep: self.host.view(),
        }
    }
}

pub(super) fn placeholder_status() -> Status {
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
        pool_note: None,
        returned: Bytes::ZERO,
        host_total: Bytes::ZERO,
        host_available: Bytes::ZERO,
        vms: 0,
        vms_managed: 0,
        actions_total: 0,
        action_failures_total: 0,
        sleeps_total: 0,
        wakes_total: 0,
        last_wake_ms: None,
        active_clients: 0,
        journal: String::new(),
        journal_trouble: None,
        power: None,
        farm: None,
        host_sleep: None,
    }
}
