//! ebb's surrogate (SPEC §2, seed 004): it owns every declared service
//! address of each managed VM at all times, so a VM can sleep (saved to
//! disk) without losing a single client.
//!
//! While the VM runs, connections are spliced to its backend address (a QEMU
//! host forward). While it sleeps, the surrogate answers what it can itself
//! (TCP echo, canned HTTP replies such as health checks), and holds
//! everything else: it accepts at once, buffers what the client sends, asks
//! the agent to wake the VM, waits until the service really answers, replays
//! the buffer and splices the rest. Everything is bounded (queue depth, byte
//! caps, wake deadline, after Knative's activator), and a client past the
//! bounds gets a clear refusal, never a hang. Only real client traffic
//! counts as activity, so the idle detector is not fooled by health checks,
//! and a long-lived stream keeps its VM awake.
//!
//! The surrogate runs inside the agent's tokio runtime; the agent drives it
//! with `add_vm` / `set_state` / `remove_vm` and reads `stats` each tick and
//! the `SurrogateEvent`s as they come.
#![forbid(unsafe_code)]

mod event;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod spec;
mod splice;
mod stats;
mod tcp;
mod udp;
mod vm;

pub use event::{Refusal, SurrogateEvent, VmPower, WakeReason};
pub use spec::{CannedReply, Limits, Protocol, ServiceSpec, SpecError};
pub use stats::TrafficStats;

use ebb_core::VmId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::info;
use vm::VmShared;

/// Events queued for the agent before the surrogate starts dropping
/// `Refused` events (never wake requests).
const EVENT_QUEUE: usize = 1024;
/// Listen backlog: a burst of clients for a sleeping VM is accepted from it.
const BACKLOG: u32 = 4096;

/// What the surrogate could not do.
#[derive(Debug, thiserror::Error)]
pub enum SurrogateError {
    #[error("VM {vm} has an invalid service: {source}")]
    InvalidService {
        vm: VmId,
        #[source]
        source: SpecError,
    },
    #[error("VM {vm} declares two services named {service}: give each a distinct name")]
    DuplicateService { vm: VmId, service: String },
    #[error("VM {vm} declares services {first} and {second} on the same {protocol:?} address {addr}: give each its own port")]
    DuplicateListen {
        vm: VmId,
        first: String,
        second: String,
        protocol: Protocol,
        addr: SocketAddr,
    },
    #[error("service {service} of VM {vm} cannot listen on {addr}: the address is taken or not local to this host; stop what holds it or pick another address (nothing was bound for this VM)")]
    Bind {
        vm: VmId,
        service: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {0} is already served by the surrogate: remove it first to change its services")]
    AlreadyServed(VmId),
    #[error("VM {0} is not served by the surrogate: add it first")]
    UnknownVm(VmId),
}

struct VmEntry {
    power: watch::Sender<VmPower>,
    shared: Arc<VmShared>,
    services: Vec<ServiceSpec>,
    tasks: Vec<AbortHandle>,
}

impl Drop for VmEntry {
    fn drop(&mut self) {
        // Aborting the accept loops drops the listeners: the addresses are
        // free again. Held clients see the state channel close and are
        // refused; spliced connections to a running VM carry on.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The surrogate for all VMs of one host. Must be used inside a tokio
/// runtime. Dropping it closes every listener.
pub struct Surrogate {
    limits: Arc<Limits>,
    events: mpsc::Sender<SurrogateEvent>,
    vms: HashMap<VmId, VmEntry>,
}

impl Surrogate {
    /// A surrogate with no VM, and the channel of its events. Call
    /// `Limits::validate` when loading configuration; here, values that
    /// would make probing spin are raised to 1 ms.
    pub fn new(limits: Limits) -> (Surrogate, mpsc::Receiver<SurrogateEvent>) {
        let mut limits = limits;
        limits.probe_interval = limits.probe_interval.max(Duration::from_millis(1));
        limits.udp_flows = limits.udp_flows.max(1);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let s = Surrogate {
            limits: Arc::new(limits),
            events: tx,
            vms: HashMap::new(),
        };
        (s, rx)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Starts serving a VM's services in the given state. Every address is
    /// bound before this returns; if one cannot be, none stays bound.
    pub fn add_vm(
        &mut self,
        vm: VmId,
        services: Vec<ServiceSpec>,
        state: VmPower,
    ) -> Result<(), SurrogateError> {
        if self.vms.contains_key(&vm) {
            return Err(SurrogateError::AlreadyServed(vm));
        }
        let mut names = HashSet::new();
        let mut addrs: HashMap<(Protocol, SocketAddr), &str> = HashMap::new();
        for s in &services {
            s.validate()
                .map_err(|source| SurrogateError::InvalidService {
                    vm: vm.clone(),
                    source,
                })?;
            if !names.insert(s.name.as_str()) {
                return Err(SurrogateError::DuplicateService {
                    vm: vm.clone(),
                    service: s.name.clone(),
                });
            }
            if let Some(first) = addrs.insert((s.protocol, s.listen), &s.name) {
                return Err(SurrogateError::DuplicateListen {
                    vm: vm.clone(),
                    first: first.to_string(),
                    second: s.name.clone(),
                    protocol: s.protocol,
                    addr: s.listen,
                });
            }
        }

        // Bind everything first: an error drops what was bound so far.
        let mut bound = Vec::with_capacity(services.len());
        for s in &services {
            let socket = bind(s).map_err(|source| SurrogateError::Bind {
                vm: vm.clone(),
                service: s.name.clone(),
                addr: s.listen,
                source,
            })?;
            bound.push(socket);
        }

        let shared = Arc::new(VmShared::new(
            vm.clone(),
            self.limits.clone(),
            self.events.clone(),
        ));
        let (power, _) = watch::channel(state.clone());
        let mut tasks = Vec::with_capacity(services.len());
        for (s, socket) in services.iter().zip(bound) {
            let rx = power.subscribe();
            let task = match socket {
                Bound::Tcp(l) => {
                    let svc = Arc::new(tcp::TcpService::new(s.clone(), shared.clone()));
                    tokio::spawn(tcp::serve(l, svc, rx))
                }
                Bound::Udp(u) => tokio::spawn(udp::serve(u, s.clone(), shared.clone(), rx)),
            };
            tasks.push(task.abort_handle());
        }
        info!(%vm, services = services.len(), %state, "surrogate serves the VM's services");
        self.vms.insert(
            vm,
            VmEntry {
                power,
                shared,
                services,
                tasks,
            },
        );
        Ok(())
    }

    /// Stops serving a VM: its listeners close, its held clients are refused.
    pub fn remove_vm(&mut self, vm: &VmId) -> Result<(), SurrogateError> {
        match self.vms.remove(vm) {
            Some(_) => {
                info!(%vm, "surrogate no longer serves the VM");
                Ok(())
            }
            None => Err(SurrogateError::UnknownVm(vm.clone())),
        }
    }

    /// Tells the surrogate the VM's state. `Asleep` (and `Awake`) re-arm the
    /// once-per-sleep wake request.
    pub fn set_state(&mut self, vm: &VmId, state: VmPower) -> Result<(), SurrogateError> {
        let entry = self
            .vms
            .get(vm)
            .ok_or_else(|| SurrogateError::UnknownVm(vm.clone()))?;
        entry.shared.state_changed(&state);
        tracing::debug!(%vm, %state, "VM state");
        entry.power.send_replace(state);
        Ok(())
    }

    pub fn state(&self, vm: &VmId) -> Option<VmPower> {
        self.vms.get(vm).map(|e| e.power.borrow().clone())
    }

    pub fn services(&self, vm: &VmId) -> Option<&[ServiceSpec]> {
        self.vms.get(vm).map(|e| e.services.as_slice())
    }

    pub fn vms(&self) -> impl Iterator<Item = &VmId> {
        self.vms.keys()
    }

    pub fn stats(&self, vm: &VmId) -> Result<TrafficStats, SurrogateError> {
        self.vms
            .get(vm)
            .map(|e| e.shared.counters.snapshot())
            .ok_or_else(|| SurrogateError::UnknownVm(vm.clone()))
    }
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn bind(s: &ServiceSpec) -> std::io::Result<Bound> {
    match s.protocol {
        Protocol::Tcp => {
            let socket = if s.listen.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Lets a restarted agent rebind while old connections sit in
            // TIME_WAIT; a second live listener is still refused.
            socket.set_reuseaddr(true)?;
            socket.bind(s.listen)?;
            Ok(Bound::Tcp(socket.listen(BACKLOG)?))
        }
        Protocol::Udp => {
            let std = std::net::UdpSocket::bind(s.listen)?;
            std.set_nonblocking(true)?;
            Ok(Bound::Udp(UdpSocket::from_std(std)?))
        }
    }
}
