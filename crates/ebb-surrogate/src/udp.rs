//! One UDP service of one VM. Awake, datagrams are relayed through a small
//! NAT: one connected socket per client address, so the VM's replies find
//! their way back, in a bounded table that forgets idle or least recently
//! used clients. Asleep, datagrams are queued (bounded in count, in bytes by
//! the VM's held-byte budget, and in age by the wake deadline) and replayed
//! in arrival order once the VM is awake.
//!
//! Source addresses are cheap to spoof, and each flow costs a descriptor:
//! flows are bounded per service (`udp_flows`) and for all services together
//! (`udp_flows_total`, a share of its own), so a flood of source ports takes
//! descriptors only from UDP, never from TCP clients or the agent's API.

use crate::event::{VmPower, WakeReason};
use crate::quota::Share;
use crate::spec::ServiceSpec;
use crate::vm::VmShared;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::{interval, sleep_until, Instant};
use tracing::debug;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

struct Flow {
    socket: Arc<UdpSocket>,
    reply_task: AbortHandle,
    last_used: Instant,
    _fd: Share,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reply_task.abort();
    }
}

struct Queued {
    at: Instant,
    peer: SocketAddr,
    data: Vec<u8>,
}

struct UdpService {
    spec: ServiceSpec,
    vm: Arc<VmShared>,
    socket: Arc<UdpSocket>,
    flows: HashMap<SocketAddr, Flow>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
}

pub(crate) async fn serve(
    socket: UdpSocket,
    spec: ServiceSpec,
    vm: Arc<VmShared>,
    mut power: watch::Receiver<VmPower>,
) {
    let limits = vm.limits.clone();
    let mut svc = UdpService {
        spec,
        vm,
        socket: Arc::new(socket),
        flows: HashMap::new(),
        queue: VecDeque::new(),
        queued_bytes: 0,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = interval(limits.udp_flow_idle.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    ));
    loop {
        let oldest = svc.queue.front().map(|q| q.at + limits.wake_deadline);
        tokio::select! {
            r = svc.socket.recv_from(&mut buf) => match r {
                Ok((n, peer)) => {
                    let state = power.borrow().clone();
                    svc.on_datagram(&state, peer, &buf[..n]).await;
                }
                Err(e) => debug!(error = %e, "receive failed"),
            },
            r = power.changed() => {
                if r.is_err() {
                    break;
                }
                let state = power.borrow_and_update().clone();
                svc.on_state(&state).await;
            }
            _ = sleep_until(oldest.unwrap_or_else(Instant::now)), if oldest.is_some() => svc.expire(),
            _ = sweep.tick() => {
                let idle = limits.udp_flow_idle;
                svc.flows.retain(|_, f| f.last_used.elapsed() < idle);
                svc.count_flows();
            }
        }
    }
    let dropped = svc.queue.len();
    svc.drop_queue(dropped);
}

impl UdpService {
    async fn on_datagram(&mut self, state: &VmPower, peer: SocketAddr, data: &[u8]) {
        match state {
            VmPower::Awake => self.relay(peer, data).await,
            VmPower::WakeFailed(_) => self.vm.counters.dropped_datagrams(1),
            VmPower::Asleep | VmPower::Waking => {
                let limits = &self.vm.limits;
                let counters = &self.vm.counters;
                let budget_ok = counters
                    .held_bytes
                    .fetch_update(Relaxed, Relaxed, |b| {
                        b.checked_add(data.len())
                            .filter(|t| *t <= limits.max_held_bytes_per_vm)
                    })
                    .is_ok();
                if self.queue.len() >= limits.udp_queue || !budget_ok {
                    if budget_ok {
                        counters.held_bytes.fetch_sub(data.len(), Relaxed);
                    }
                    counters.dropped_datagrams(1);
                    return;
                }
                self.queued_bytes += data.len();
                self.queue.push_back(Queued {
                    at: Instant::now(),
                    peer,
                    data: data.to_vec(),
                });
                self.vm
                    .request_wake(state, &self.spec.name, &WakeReason::Datagram { peer });
            }
        }
    }

    async fn on_state(&mut self, state: &VmPower) {
        match state {
            VmPower::Awake => {
                let queued = std::mem::take(&mut self.queue);
                if !queued.is_empty() {
                    debug!(vm = %self.vm.vm, service = %self.spec.name, datagrams = queued.len(), "VM awake: replaying queued datagrams");
                }
                self.vm
                    .counters
                    .held_bytes
                    .fetch_sub(self.queued_bytes, Relaxed);
                self.queued_bytes = 0;
                for q in queued {
                    self.relay(q.peer, &q.data).await;
                }
            }
            VmPower::WakeFailed(_) => {
                let n = self.queue.len();
                self.drop_queue(n);
            }
            VmPower::Asleep => {
                // A new sleep with datagrams still queued (the agent gave up
                // on a wake and re-armed): ask again.
                if let Some(q) = self.queue.front() {
                    let reason = WakeReason::Datagram { peer: q.peer };
                    self.vm.request_wake(state, &self.spec.name, &reason);
                }
            }
            VmPower::Waking => {}
        }
    }

    /// Drops queued datagrams older than the wake deadline.
    fn expire(&mut self) {
        let deadline = self.vm.limits.wake_deadline;
        let n = self
            .queue
            .iter()
            .take_while(|q| q.at.elapsed() >= deadline)
            .count();
        self.drop_queue(n);
    }

    fn drop_queue(&mut self, n: usize) {
        for q in self.queue.drain(..n) {
            self.queued_bytes -= q.data.len();
            self.vm.counters.held_bytes.fetch_sub(q.data.len(), Relaxed);
        }
        self.vm.counters.dropped_datagrams(n);
    }

    fn count_flows(&self) {
        self.vm.counters.udp_flows.store(self.flows.len(), Relaxed);
    }

    /// Forgets the least recently used client, as a NAT does; false when
    /// there is none.
    fn evict_lru(&mut self) -> bool {
        let lru = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.last_used)
            .map(|(a, _)| *a);
        lru.is_some_and(|a| self.flows.remove(&a).is_some())
    }

    async fn relay(&mut self, peer: SocketAddr, data: &[u8]) {
        if !self.flows.contains_key(&peer) {
            let opened = self.open_flow(peer).await;
            self.count_flows();
            match opened {
                Ok(flow) => {
                    self.flows.insert(peer, flow);
                    self.count_flows();
                }
                Err(e) => {
                    debug!(error = %e, %peer, "cannot open a flow to the backend");
                    self.vm.counters.dropped_datagrams(1);
                    return;
                }
            }
        }
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        flow.last_used = Instant::now();
        match flow.socket.send(data).await {
            Ok(n) => self.vm.counters.add_in(n),
            Err(e) => {
                // Typically the port-unreachable of an earlier datagram.
                debug!(error = %e, "datagram to the backend failed");
                self.vm.counters.dropped_datagrams(1);
            }
        }
    }

    async fn open_flow(&mut self, peer: SocketAddr) -> std::io::Result<Flow> {
        if self.flows.len() >= self.vm.limits.udp_flows {
            self.evict_lru();
        }
        let total = self.vm.host.udp_flows.clone();
        // All services' flows in use: this service gives up its own oldest
        // (another's flood must not evict this one's clients, nor the reverse).
        let fd = match Share::take(&[&total], 1, 0) {
            Ok(fd) => fd,
            Err(_) if self.evict_lru() => Share::take(&[&total], 1, 0).map_err(|_| no_flow(total.limit()))?,
            Err(_) => return Err(no_flow(total.limit())),
        };
        let backend = self.spec.backend;
        let local: SocketAddr = if backend.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = Arc::new(UdpSocket::bind(local).await?);
        socket.connect(backend).await?;
        let (up, down, vm) = (socket.clone(), self.socket.clone(), self.vm.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match up.recv(&mut buf).await {
                    Ok(n) => {
                        if down.send_to(&buf[..n], peer).await.is_ok() {
                            vm.counters.add_out(n);
                        }
                    }
                    // ICMP errors from a backend not yet listening surface
                    // here, one per datagram: nothing to do but go on.
                    Err(e) => debug!(error = %e, "receive from the backend failed"),
                }
            }
        });
        Ok(Flow {
            socket,
            reply_task: task.abort_handle(),
            last_used: Instant::now(),
            _fd: fd,
        })
    }
}

fn no_flow(limit: usize) -> std::io::Error {
    std::io::Error::other(format!("all {limit} UDP flows of the surrogate are in use"))
}
