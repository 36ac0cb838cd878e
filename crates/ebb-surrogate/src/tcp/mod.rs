//! One TCP service of one VM: the listener the surrogate owns at all times
//! and the life of each connection accepted on it.
//!
//! Awake, a connection is spliced to the backend at once. Asleep, it is
//! accepted at once too (holding the SYN would cost the client a 1 s SYN
//! retransmit, SPEC §2), then answered locally (echo, canned reply) or held:
//! what the client sends is buffered, the agent is asked to wake the VM, the
//! backend is probed until it really answers, the buffer is replayed (at a
//! pace the backend can take, see `pace`, again on a fresh connection if the
//! backend closes before answering) and the rest spliced. A client arriving
//! while earlier ones still wait for their replay queues behind them, even
//! once the VM is awake.
//!
//! Every path ends in bounded time. A client accepted while its VM sleeps
//! or wakes gets the service's first byte, or a refusal (`503` saying why
//! for HTTP, a reset otherwise), within `wake_deadline + replay_deadline` of
//! its accept; past the queue depth, the byte caps or its share of the
//! descriptors it is refused at once. Never an empty close, never a hang.
//!
//! Exactly once: the client's bytes are sent again on a fresh connection
//! only when the service closed the last one without sending a byte back;
//! a service that took them and stays silent is never sent them twice (the
//! client is refused at its bound, the reason journaled). So each answer a
//! client gets is the service's answer to one delivery of its request, and
//! any earlier delivery went to a connection the service closed unanswered.
//!
//! Here the service and the accept loop; `awake` splices an awake VM's
//! clients, `hold` answers or holds a sleeping VM's, `probe` finds when the
//! woken service answers, `replay` sends the held bytes to it, and
//! `refuse` ends a client that cannot be served.

mod awake;
mod hold;
mod probe;
mod refuse;
mod replay;

pub(crate) use probe::answers;

use crate::event::{Refusal, VmPower, WakeReason};
use crate::pace::Pacer;
use crate::quota::{CONNECTED, HELD_HEADROOM};
use crate::spec::ServiceSpec;
use crate::vm::VmShared;
use awake::splice_awake;
use hold::{hold, sleeping};
use refuse::{refuse, refuse_with_spare};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::time::{sleep, Instant};
use tracing::{warn, Instrument};

/// How often a failing accept is logged at most.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct TcpService {
    pub(crate) spec: ServiceSpec,
    pub(crate) vm: Arc<VmShared>,
    /// `epoch + 1` of the wake in which the backend was last seen answering;
    /// held connections wait on it instead of each probing the backend.
    verified: watch::Sender<u64>,
    /// One prober per service at a time: 10,000 held clients must not turn
    /// into 10,000 connects per probe interval.
    probe: Mutex<()>,
    /// Turns of the replays waiting for the backend's first byte.
    pacer: Pacer,
    /// Turns of an awake VM's clients connecting to the backend.
    connects: Pacer,
}

impl TcpService {
    pub(crate) fn new(spec: ServiceSpec, vm: Arc<VmShared>) -> TcpService {
        TcpService {
            spec,
            verified: watch::Sender::new(0),
            probe: Mutex::new(()),
            pacer: Pacer::new(vm.limits.replay_in_flight),
            connects: Pacer::new(vm.limits.replay_in_flight),
            vm,
        }
    }

    /// The bound every held client's answer or refusal comes within.
    fn bound(&self) -> Duration {
        self.vm.limits.wake_deadline + self.vm.limits.replay_deadline
    }
}

impl TcpService {
    /// Clients of the VM are held, or of this service wait for their replay
    /// or are in it: a newcomer queues behind them, and the kernel does not
    /// take the service over before they are through.
    pub(crate) fn draining(&self) -> bool {
        self.pacer.busy() || self.vm.counters.held.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    svc: Arc<TcpService>,
    power: watch::Receiver<VmPower>,
) {
    let mut failures = 0u64;
    let mut warned: Option<Instant> = None;
    let mut pause = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                pause = Duration::from_millis(10);
                // Small requests and replies must not wait for Nagle.
                let _ = client.set_nodelay(true);
                let span =
                    tracing::debug_span!("conn", vm = %svc.vm.vm, service = %svc.spec.name, %peer);
                tokio::spawn(handle(client, peer, svc.clone(), power.clone()).instrument(span));
            }
            Err(e) => {
                failures += 1;
                if warned.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                    warn!(vm = %svc.vm.vm, service = %svc.spec.name, error = %e, failures, "accept failed");
                    warned = Some(Instant::now());
                }
                if out_of_descriptors(&e) && refuse_with_spare(&listener, &svc).await {
                    continue;
                }
                // No spare descriptor, or another failure: back off instead
                // of spinning; the kernel keeps the pending clients.
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() || code == rustix::io::Errno::NFILE.raw_os_error())
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    svc: Arc<TcpService>,
    mut power: watch::Receiver<VmPower>,
) {
    let accepted = Instant::now();
    let state = power.borrow_and_update().clone();
    // Awake with nobody held or waiting for a replay: straight through.
    // Otherwise the client queues behind them; it takes one descriptor now
    // (its own) and the backend's later, and held clients leave headroom so
    // replays always find descriptors.
    let direct = state == VmPower::Awake && !svc.draining();
    let fds = if direct {
        svc.vm.take_fds(CONNECTED, 0)
    } else {
        svc.vm.take_fds(1, HELD_HEADROOM)
    };
    let fds = match fds {
        Ok(fds) => fds,
        Err(why) => return refuse(client, &svc, why).await,
    };
    match state {
        VmPower::Awake if direct => splice_awake(client, fds, &svc).await,
        VmPower::Awake => {
            let reason = WakeReason::Connection { peer };
            hold(client, &svc, power, Vec::new(), reason, accepted, fds).await
        }
        VmPower::WakeFailed(reason) => refuse(client, &svc, Refusal::WakeFailed { reason }).await,
        VmPower::Asleep | VmPower::Waking => {
            sleeping(client, peer, &svc, power, accepted, fds).await
        }
    }
}

/// Reads what is available into `buf`, growing it within `cap`.
async fn read_some(client: &mut TcpStream, buf: &mut Vec<u8>, cap: usize) -> io::Result<usize> {
    let room = cap.saturating_sub(buf.len()).max(1);
    if buf.capacity() == buf.len() {
        // Grow geometrically but never past the cap: a held connection's
        // memory follows what its client actually sent.
        buf.reserve_exact(buf.len().clamp(512, 64 * 1024).min(room));
    }
    client.read_buf(buf).await
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, f: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, f).await.ok()
}
