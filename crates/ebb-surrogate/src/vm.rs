//! What one VM's service tasks share: its counters, its limits, its share of
//! the descriptors, the channel to the agent, and the once-per-sleep wake
//! request; and what every VM shares (`Host`).

use crate::event::{Refusal, SurrogateEvent, VmPower, WakeReason};
use crate::quota::{Quota, Share};
use crate::spec::Limits;
use crate::stats::Counters;
use ebb_core::VmId;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, info};

/// What the services of every VM share.
#[derive(Debug)]
pub(crate) struct Host {
    /// Descriptors for TCP clients, all VMs together.
    pub(crate) fds: Arc<Quota>,
    /// UDP flows, all services together.
    pub(crate) udp_flows: Arc<Quota>,
    /// A descriptor kept open to be given up when the process runs out, so
    /// a pending client can still be accepted and refused (see `tcp::serve`).
    pub(crate) spare: tokio::sync::Mutex<Option<std::fs::File>>,
}

impl Host {
    pub(crate) fn new(limits: &Limits) -> Host {
        Host {
            fds: Quota::new(limits.max_fds),
            udp_flows: Quota::new(limits.udp_flows_total),
            spare: tokio::sync::Mutex::new(std::fs::File::open("/dev/null").ok()),
        }
    }
}

#[derive(Debug)]
pub(crate) struct VmShared {
    pub(crate) vm: VmId,
    pub(crate) limits: Arc<Limits>,
    pub(crate) counters: Counters,
    pub(crate) host: Arc<Host>,
    /// This VM's clients' descriptors.
    fds: Arc<Quota>,
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
        host: Arc<Host>,
        events: mpsc::Sender<SurrogateEvent>,
    ) -> VmShared {
        VmShared {
            vm,
            fds: Quota::new(limits.max_fds_per_vm),
            host,
            limits,
            counters: Counters::new(),
            events,
            wake_requested: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }

    /// `n` descriptors from this VM's share and the host's, keeping
    /// `1/headroom_frac` of each free (0: none); or the refusal that says
    /// which share is used up.
    pub(crate) fn take_fds(&self, n: usize, headroom_frac: usize) -> Result<Share, Refusal> {
        Share::take(&[&self.fds, &self.host.fds], n, headroom_frac).map_err(|i| match i {
            0 => Refusal::VmConnections {
                limit: self.fds.limit(),
            },
            _ => Refusal::HostConnections {
                limit: self.host.fds.limit(),
            },
        })
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

    /// Tells the agent a client's connection is spliced or held; the
    /// guard tells it the connection closed when it drops. None when the
    /// peer's address cannot be read (the client is gone already).
    pub(crate) fn client_opened<'a>(&'a self, service: &'a str, peer: std::io::Result<SocketAddr>) -> Option<ClientGuard<'a>> {
        let peer = peer.ok()?;
        self.send_event(SurrogateEvent::ClientOpened { vm: self.vm.clone(), service: service.to_string(), peer });
        Some(ClientGuard { vm: self, service, peer })
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

/// A client connection the agent was told of: its close is told when this
/// drops, whichever way the connection ends.
pub(crate) struct ClientGuard<'a> {
    vm: &'a VmShared,
    service: &'a str,
    peer: SocketAddr,
}

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        // At the runtime's shutdown no task can be spawned: the agent is gone too.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.vm.send_event(SurrogateEvent::ClientClosed { vm: self.vm.vm.clone(), service: self.service.to_string(), peer: self.peer });
        }
    }
}
