//! What one VM's service tasks share: its counters, its limits, the channel
//! to the agent, and the once-per-sleep wake request.

use crate::event::{Refusal, SurrogateEvent, VmPower, WakeReason};
use crate::spec::Limits;
use crate::stats::Counters;
use ebb_core::VmId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, info};

#[derive(Debug)]
pub(crate) struct VmShared {
    pub(crate) vm: VmId,
    pub(crate) limits: Arc<Limits>,
    pub(crate) counters: Counters,
    events: mpsc::Sender<SurrogateEvent>,
    /// Set once a wake was requested in this sleep; cleared by the agent's
    /// next `Asleep` or `Awake`, so one sleep sends one request however many
    /// clients pile up.
    wake_requested: AtomicBool,
    /// Bumped on every state change: a backend verified alive belongs to
    /// the wake in which it was verified, not to the next one.
    epoch: AtomicU64,
}

impl VmShared {
    pub(crate) fn new(
        vm: VmId,
        limits: Arc<Limits>,
        events: mpsc::Sender<SurrogateEvent>,
    ) -> VmShared {
        VmShared {
            vm,
            limits,
            counters: Counters::new(),
            events,
            wake_requested: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn state_changed(&self, state: &VmPower) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if matches!(state, VmPower::Asleep | VmPower::Awake) {
            self.wake_requested.store(false, Ordering::Release);
        }
    }

    /// Asks the agent to wake the VM, unless it was asked in this sleep or
    /// the VM is not asleep.
    pub(crate) fn request_wake(&self, state: &VmPower, service: &str, reason: &WakeReason) {
        if *state != VmPower::Asleep || self.wake_requested.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(vm = %self.vm, service, %reason, "client needs the VM: asking the agent to wake it");
        let event = SurrogateEvent::WakeNeeded {
            vm: self.vm.clone(),
            service: service.to_string(),
            reason: reason.clone(),
        };
        self.send_event(event);
    }

    /// Tells the agent something it must not miss: never dropped, and the
    /// data path never waits on the agent for it.
    pub(crate) fn send_event(&self, event: SurrogateEvent) {
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            let events = self.events.clone();
            tokio::spawn(async move {
                let _ = events.send(event).await;
            });
        }
    }

    /// Counts a refusal and tells the agent, dropping the event (not the
    /// count) when the agent lags: refusals come in floods.
    pub(crate) fn report_refusal(&self, service: &str, why: Refusal) {
        self.counters.refused();
        debug!(vm = %self.vm, service, %why, "client refused");
        let _ = self.events.try_send(SurrogateEvent::Refused {
            vm: self.vm.clone(),
            service: service.to_string(),
            why,
        });
    }
}
