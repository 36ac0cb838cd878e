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
//! While the VM runs, a qualifying TCP service may instead be forwarded by
//! the kernel (`kernel_forward`: an nftables DNAT the surrogate installs
//! once the woken VM answers and removes before it sleeps), so an awake VM's
//! clients pay nothing for the surrogate; the listener stays bound
//! throughout.
//!
//! The surrogate runs inside the agent's tokio runtime; the agent drives it
//! with `add_vm` / `set_state` / `remove_vm` and reads `stats` each tick and
//! the `SurrogateEvent`s as they come.
#![forbid(unsafe_code)]

mod event;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod kernel_forward;
mod pace;
mod quota;
mod spec;
mod splice;
mod stats;
mod tcp;
mod udp;
mod vm;

pub use event::{Refusal, SurrogateEvent, VmPower, WakeReason};
pub use kernel_forward::{table_name as kernel_table_name, AwakePath, AwakeRoute};
pub use quota::FdPlan;
pub use spec::{validate_services, CannedReply, Limits, ListenClash, Loop, Protocol, ServiceSpec, SpecError, SurrogateConfig};
pub use stats::TrafficStats;

use ebb_core::VmId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use kernel_forward::{Forward, KernelService, KernelTable, Nft};
use tracing::{info, warn};
use vm::{Host, VmShared};

/// Events queued for the agent before the surrogate starts dropping
/// `Refused` events (never wake requests).
const EVENT_QUEUE: usize = 1024;
/// Listen backlog: a burst of clients for a sleeping VM is accepted from it.
const BACKLOG: u32 = 4096;

/// What the surrogate could not do.
#[derive(Debug, thiserror::Error)]
pub enum SurrogateError {
    /// The error names the VM and service.
    #[error(transparent)]
    InvalidService(#[from] SpecError),
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
    #[error("the kernel path (awake_path = \"kernel\") cannot start: {0}; install nftables or set awake_path = \"auto\" or \"splice\"")]
    KernelPathUnavailable(String),
    #[error("VM {vm}'s ports cannot be taken back from the kernel forward ({error}): it must not sleep while nft fails")]
    KernelPathStuck { vm: VmId, error: String },
}

struct VmEntry {
    power: watch::Sender<VmPower>,
    shared: Arc<VmShared>,
    services: Vec<ServiceSpec>,
    tasks: Vec<AbortHandle>,
    tcp: Vec<Arc<tcp::TcpService>>,
    /// Its TCP services on the kernel path, and why the others are not.
    kernel: Vec<Arc<KernelService>>,
    spliced: Vec<AwakeRoute>,
    /// The tasks handing services to the kernel in this wake.
    takeovers: Vec<AbortHandle>,
}

impl Drop for VmEntry {
    fn drop(&mut self) {
        // Aborting the accept loops drops the listeners: the addresses are
        // free again. Held clients see the state channel close and are
        // refused; spliced connections to a running VM carry on.
        for t in self.tasks.iter().chain(&self.takeovers) {
            t.abort();
        }
    }
}

/// The surrogate for all VMs of one host. Must be used inside a tokio
/// runtime. Dropping it closes every listener.
pub struct Surrogate {
    limits: Arc<Limits>,
    host: Arc<Host>,
    events: mpsc::Sender<SurrogateEvent>,
    vms: HashMap<VmId, VmEntry>,
    /// The nft table of the kernel path, or why there is none.
    kernel: Result<Arc<KernelTable>, String>,
    next_forward: u32,
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
            host: Arc::new(Host::new(&limits)),
            limits: Arc::new(limits),
            events: tx,
            vms: HashMap::new(),
            kernel: Err("awake_path = \"splice\"".into()),
            next_forward: 0,
        };
        (s, rx)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Chooses how awake VMs' connections reach their backends, for the VMs
    /// served already and those added later; call it once, best after
    /// `add_vm` so the ports are served before nft runs. For `Auto` and
    /// `Kernel` this takes over the nft table of
    /// `owner` (the agent's socket path), deleting what a crashed
    /// predecessor left in it, with the `nft` program given. `Auto` falls
    /// back to the splice when nft does not work; `Kernel` is an error then.
    /// `Splice` only deletes the leftovers, if nft is there.
    /// Returns the table's name, or why every service splices.
    pub fn set_awake_path(&mut self, path: AwakePath, nft: &str, owner: &str) -> Result<Result<String, String>, SurrogateError> {
        self.kernel = match path {
            AwakePath::Splice => {
                // Rules a crashed predecessor left would still divert clients.
                if let Err(e) = KernelTable::remove_leftovers(&Nft::new(nft), owner) {
                    tracing::debug!("no leftover kernel path rules removed: {e}");
                }
                Err("awake_path = \"splice\"".into())
            }
            AwakePath::Auto | AwakePath::Kernel => KernelTable::start(Nft::new(nft), owner),
        };
        let mut vms = std::mem::take(&mut self.vms);
        for entry in vms.values_mut() {
            self.classify(entry);
            if *entry.power.borrow() == VmPower::Awake {
                self.hand_to_kernel(entry);
            }
        }
        self.vms = vms;
        match (&self.kernel, path) {
            (Err(e), AwakePath::Kernel) => Err(SurrogateError::KernelPathUnavailable(e.clone())),
            (Ok(t), _) => Ok(Ok(t.name.clone())),
            (Err(e), _) => Ok(Err(e.clone())),
        }
    }

    /// Deletes the kernel path's nft table (a clean stop); every service
    /// splices from then on.
    pub fn stop_kernel_path(&mut self) {
        if let Ok(t) = &self.kernel {
            t.stop();
        }
        self.kernel = Err("the kernel path was stopped".into());
    }

    /// Which path each TCP service of the VM takes while it is awake, and why.
    pub fn awake_routes(&self, vm: &VmId) -> Vec<AwakeRoute> {
        let Some(e) = self.vms.get(vm) else { return vec![] };
        let kernel = match &self.kernel {
            Ok(t) => e.kernel.iter().map(|k| k.route(t)).collect(),
            Err(why) => {
                let why = format!("the kernel path is off: {why}");
                e.kernel.iter().map(|k| AwakeRoute { service: k.svc.spec.name.clone(), path: "splice", why: why.clone(), active: false, kernel_connections: 0 }).collect()
            }
        };
        [kernel, e.spliced.clone()].concat()
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
        // The config check's rules, against the VMs already served too.
        let mut all: Vec<(&str, &[ServiceSpec])> = self
            .vms
            .iter()
            .map(|(id, e)| (id.as_str(), e.services.as_slice()))
            .collect();
        all.push((vm.as_str(), &services));
        validate_services(&all)?;

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
            self.host.clone(),
            self.events.clone(),
        ));
        let (power, _) = watch::channel(state.clone());
        let mut tasks = Vec::with_capacity(services.len());
        let mut tcp = Vec::new();
        for (s, socket) in services.iter().zip(bound) {
            let rx = power.subscribe();
            let task = match socket {
                Bound::Tcp(l) => {
                    let svc = Arc::new(tcp::TcpService::new(s.clone(), shared.clone()));
                    tcp.push(svc.clone());
                    tokio::spawn(tcp::serve(l, svc, rx))
                }
                Bound::Udp(u) => tokio::spawn(udp::serve(u, s.clone(), shared.clone(), rx)),
            };
            tasks.push(task.abort_handle());
        }
        info!(%vm, services = services.len(), %state, "surrogate serves the VM's services");
        let mut entry = VmEntry {
            power,
            shared,
            services,
            tasks,
            tcp,
            kernel: Vec::new(),
            spliced: Vec::new(),
            takeovers: Vec::new(),
        };
        self.classify(&mut entry);
        if state == VmPower::Awake {
            self.hand_to_kernel(&mut entry);
        }
        self.vms.insert(vm, entry);
        Ok(())
    }

    /// Sorts the VM's TCP services into those the kernel may forward and
    /// those the surrogate splices, with why.
    fn classify(&mut self, entry: &mut VmEntry) {
        entry.kernel.clear();
        entry.spliced.clear();
        for svc in &entry.tcp {
            let s = &svc.spec;
            let qualified = self
                .kernel
                .clone()
                .and_then(|_| kernel_forward::qualify(s, kernel_forward::is_local(s.backend.ip())));
            match qualified {
                Ok(hooks) => {
                    self.next_forward += 1;
                    let forward = Forward { id: self.next_forward, listen: s.listen, backend: s.backend, hooks };
                    entry.kernel.push(Arc::new(KernelService::new(forward, svc.clone())));
                }
                Err(why) => entry.spliced.push(AwakeRoute { service: s.name.clone(), path: "splice", why, active: false, kernel_connections: 0 }),
            }
        }
    }

    /// Starts the tasks that give the VM's kernel-path services to the
    /// kernel once it answers in this wake.
    fn hand_to_kernel(&self, entry: &mut VmEntry) {
        let Ok(table) = &self.kernel else { return };
        let epoch = entry.shared.epoch();
        for ks in &entry.kernel {
            let mut rx = entry.power.subscribe();
            rx.borrow_and_update();
            let task = tokio::spawn(kernel_forward::take_over(ks.clone(), table.clone(), rx, epoch));
            entry.takeovers.push(task.abort_handle());
        }
    }

    /// Stops serving a VM: its listeners close, its held clients are refused.
    pub fn remove_vm(&mut self, vm: &VmId) -> Result<(), SurrogateError> {
        match self.vms.remove(vm) {
            Some(entry) => {
                if let Ok(t) = &self.kernel {
                    if let Err(e) = t.withdraw(&entry.kernel) {
                        warn!(%vm, "{e}");
                    }
                }
                info!(%vm, "surrogate no longer serves the VM");
                Ok(())
            }
            None => Err(SurrogateError::UnknownVm(vm.clone())),
        }
    }

    /// Tells the surrogate the VM's state. `Asleep` (and `Awake`) re-arm the
    /// once-per-sleep wake request.
    ///
    /// Any other state than `Awake` takes the VM's ports back from the
    /// kernel before this returns (nft runs here, a few milliseconds), so a
    /// save that follows never meets a client the kernel still sends to
    /// the VM. An error means the rules could not be removed: the VM must
    /// not be put to sleep.
    pub fn set_state(&mut self, vm: &VmId, state: VmPower) -> Result<(), SurrogateError> {
        let mut entry = self
            .vms
            .remove(vm)
            .ok_or_else(|| SurrogateError::UnknownVm(vm.clone()))?;
        entry.shared.state_changed(&state);
        tracing::debug!(%vm, %state, "VM state");
        let awake = state == VmPower::Awake;
        entry.power.send_replace(state);
        for t in entry.takeovers.drain(..) {
            t.abort();
        }
        let result = match &self.kernel {
            Ok(_) if awake => {
                self.hand_to_kernel(&mut entry);
                Ok(())
            }
            Ok(t) => t.withdraw(&entry.kernel).map_err(|error| SurrogateError::KernelPathStuck { vm: vm.clone(), error }),
            Err(_) => Ok(()),
        };
        self.vms.insert(vm.clone(), entry);
        result
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

impl Drop for Surrogate {
    /// The kernel's rules go with the listeners: a port ebb no longer
    /// serves is not forwarded either.
    fn drop(&mut self) {
        if let Ok(t) = &self.kernel {
            t.stop();
        }
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
