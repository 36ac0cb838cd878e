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

use crate::event::{Refusal, VmPower, WakeReason};
use crate::http;
use crate::pace::{Outcome, Pacer, Turn};
use crate::quota::{Share, CONNECTED, HELD_HEADROOM, PIPES};
use crate::spec::ServiceSpec;
use crate::stats::{HeldSlot, Metered, OpenGuard};
use crate::vm::VmShared;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, warn, Instrument};

/// Buffers of the copying fallback, used only when no pipe can be had.
const COPY_BUF: usize = 16 * 1024;
/// How long a refused HTTP client gets to read its `503` while the surrogate
/// drains what it still sends (closing with unread data would reset the
/// connection and could destroy the response before it is read).
const LINGER: Duration = Duration::from_millis(500);
/// The longest pause between replays to a backend that keeps closing.
const MAX_REPLAY_PAUSE: Duration = Duration::from_millis(500);
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

/// Out of descriptors with clients pending: gives up the spare descriptor
/// for a moment to accept one and refuse it at once (the trick of nginx and
/// libev), so a client in the backlog learns that ebb is full instead of
/// waiting in silence. False when there is no spare to give up.
async fn refuse_with_spare(listener: &TcpListener, svc: &TcpService) -> bool {
    let mut spare = svc.vm.host.spare.lock().await;
    if spare.take().is_none() {
        *spare = std::fs::File::open("/dev/null").ok();
        return false;
    }
    // The listener is readable (that accept failed): this does not wait.
    if let Ok(Ok((client, _))) = timeout(Duration::from_millis(50), listener.accept()).await {
        refuse_at_once(client, svc, Refusal::OutOfDescriptors);
    }
    *spare = std::fs::File::open("/dev/null").ok();
    true
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

/// Connects to the backend of an awake VM and splices; a backend that
/// refuses gets the client a refusal (`503` saying so for HTTP, a reset
/// otherwise). The connects take turns of their own (`connects`): a burst
/// of clients must not flood a small listen backlog with SYNs the guest
/// drops (each costing the client a retransmit, 1 s, 3 s, 7 s…). A connect
/// that outlasts its turn is tried again (nothing was sent), until
/// `wake_deadline`.
async fn splice_awake(client: TcpStream, fds: Share, svc: &TcpService) {
    let backend = svc.spec.backend;
    let deadline = Instant::now() + svc.vm.limits.wake_deadline;
    loop {
        // Not taken in time (a backlog that stays full): nothing was sent.
        let busy = Refusal::Busy { after: svc.vm.limits.wake_deadline };
        let Some(mut turn) = timeout_at(deadline, svc.connects.turn(svc.vm.epoch())).await else {
            return refuse(client, svc, busy).await;
        };
        match timeout_at(turn.ends().min(deadline), TcpStream::connect(backend)).await {
            Some(Ok(b)) => {
                let took = turn.started().elapsed();
                turn.finish(Outcome::Answered(took));
                return splice(client, b, svc, fds).await;
            }
            Some(Err(e)) if out_of_descriptors(&e) => return refuse(client, svc, Refusal::OutOfDescriptors).await,
            Some(Err(e)) => {
                debug!(error = %e, "backend refused while the VM is awake");
                return refuse(client, svc, Refusal::BackendDown { backend }).await;
            }
            None => turn.tell(Outcome::Congested),
        }
        if Instant::now() >= deadline {
            return refuse(client, svc, busy).await;
        }
    }
}

/// Copies both ways until both sides close. `fds` holds the client's and
/// the backend's descriptors, and grows by the pipes' when it can.
async fn splice(mut client: TcpStream, mut backend: TcpStream, svc: &TcpService, mut fds: Share) {
    let _ = backend.set_nodelay(true);
    let counters = &svc.vm.counters;
    let _open = OpenGuard::new(counters, svc.spec.hold_open_counts_as_activity);
    let pipes = if fds.grow_to(CONNECTED + PIPES) {
        crate::splice::Pipes::new()
    } else {
        Err(io::Error::other("the descriptor share has no room for pipes"))
    };
    let result = match pipes {
        Ok(pipes) => crate::splice::bidirectional(&client, &backend, pipes, counters).await,
        Err(e) => {
            // No descriptors for pipes: still serve the client, by copying.
            debug!(error = %e, "no pipes for splice, copying instead");
            let mut metered = Metered {
                inner: &mut client,
                counters,
            };
            tokio::io::copy_bidirectional_with_sizes(&mut metered, &mut backend, COPY_BUF, COPY_BUF)
                .await
        }
    };
    match result {
        Ok((up, down)) => debug!(up, down, "spliced connection closed"),
        Err(e) => debug!(error = %e, "spliced connection ended"),
    }
}

async fn sleeping(
    mut client: TcpStream,
    peer: SocketAddr,
    svc: &TcpService,
    power: watch::Receiver<VmPower>,
    accepted: Instant,
    fds: Share,
) {
    if svc.spec.echo {
        return echo(client, svc).await;
    }
    let mut buf = Vec::new();
    let mut reason = WakeReason::Connection { peer };
    if svc.spec.http {
        // An HTTP client speaks first: its VM wakes for a complete request
        // line, never for a connection that says nothing (a port scan, a
        // connect-only check) nor for a line past the cap. A normal client
        // sends its line in its first packet, so this costs it nothing.
        let limits = &svc.vm.limits;
        let cap = limits.max_held_bytes.min(http::MAX_REQUEST_LINE);
        let line = loop {
            if let Some(line) = http::request_line(&buf) {
                break line.ok();
            }
            if buf.len() >= cap {
                return refuse(client, svc, Refusal::LineTooLong { limit: cap }).await;
            }
            match timeout_at(accepted + limits.wake_deadline, read_some(&mut client, &mut buf, cap)).await {
                Some(Ok(0)) | Some(Err(_)) if buf.is_empty() => return,
                // It stopped sending mid-line: the service answers that.
                Some(Ok(0)) | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
                None => return refuse(client, svc, Refusal::NoRequest { after: limits.wake_deadline }).await,
            }
        };
        if let Some((method, path)) = line {
            if let Some(c) = http::find_canned(&svc.spec.canned, &method, &path) {
                let c = c.clone();
                let head_deadline = Instant::now() + limits.http_head_timeout;
                return answer_canned(client, buf, svc, &c, method == "HEAD", head_deadline).await;
            }
            reason = WakeReason::request(peer, &method, &path);
        }
    }
    hold(client, svc, power, buf, reason, accepted, fds).await
}

/// RFC 862: everything received is sent back, by the surrogate itself.
async fn echo(mut client: TcpStream, svc: &TcpService) {
    svc.vm.counters.answered_locally();
    let (mut r, mut w) = client.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

async fn answer_canned(
    mut client: TcpStream,
    mut buf: Vec<u8>,
    svc: &TcpService,
    c: &crate::spec::CannedReply,
    head_only: bool,
    deadline: Instant,
) {
    // Read the rest of the head first so the reply does not cross a request
    // the client is still writing; a client too slow for that gets the reply
    // anyway.
    let cap = svc.vm.limits.max_held_bytes;
    while !http::head_complete(&buf) && buf.len() < cap {
        match timeout_at(deadline, read_some(&mut client, &mut buf, cap)).await {
            Some(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    svc.vm.counters.answered_locally();
    debug!(status = c.status, path = %c.path, "answered with a canned reply");
    let _ = client.write_all(&http::canned_response(c, head_only)).await;
    lingering_close(client).await;
}

enum HoldEnd {
    /// The VM is awake and its service answers; the connection that proved
    /// it, if this client's task was the one probing.
    Awake(Option<TcpStream>),
    Refuse(Refusal),
    /// The client left before the VM woke; nothing to answer.
    Gone,
}

async fn hold(
    mut client: TcpStream,
    svc: &TcpService,
    mut power: watch::Receiver<VmPower>,
    mut buf: Vec<u8>,
    reason: WakeReason,
    accepted: Instant,
    fds: Share,
) {
    let limits = &svc.vm.limits;
    let Some(mut slot) = HeldSlot::acquire(
        &svc.vm.counters,
        limits.queue_depth,
        limits.max_held_bytes_per_vm,
    ) else {
        return refuse(
            client,
            svc,
            Refusal::QueueFull {
                depth: limits.queue_depth,
            },
        )
        .await;
    };
    if !slot.add_bytes(buf.len()) {
        drop(slot);
        return refuse(
            client,
            svc,
            Refusal::VmBytesFull {
                limit: limits.max_held_bytes_per_vm,
            },
        )
        .await;
    }
    debug!(%reason, "holding the connection while the VM wakes");
    let deadline = accepted + limits.wake_deadline;
    let mut client_done = false;
    let end = {
        let wait = wait_for_backend(svc, &mut power, &reason);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                end = &mut wait => break end,
                _ = sleep_until(deadline) => break HoldEnd::Refuse(Refusal::Deadline { after: limits.wake_deadline }),
                r = read_some(&mut client, &mut buf, limits.max_held_bytes + 1), if !client_done => match r {
                    // A half-close after the request is normal (the client
                    // waits for the answer); a close with nothing sent is not.
                    Ok(0) if buf.is_empty() => break HoldEnd::Gone,
                    Ok(0) => client_done = true,
                    Ok(n) if buf.len() > limits.max_held_bytes => {
                        let _ = n;
                        break HoldEnd::Refuse(Refusal::TooLarge { limit: limits.max_held_bytes });
                    }
                    Ok(n) => if !slot.add_bytes(n) {
                        break HoldEnd::Refuse(Refusal::VmBytesFull { limit: limits.max_held_bytes_per_vm });
                    },
                    Err(_) => break HoldEnd::Gone,
                },
            }
        }
    };
    match end {
        HoldEnd::Awake(backend) => {
            debug!(
                held = buf.len(),
                waited_ms = accepted.elapsed().as_millis() as u64,
                "VM answers: replaying"
            );
            let answer_by = deadline + limits.replay_deadline;
            let held = Held {
                buf,
                client_done,
                cap: limits.max_held_bytes,
            };
            // Still held until the service answers it: a client waiting for
            // its replay keeps its place, and its VM awake (the idle
            // detector counts held clients as open connections).
            replay(client, backend, svc, held, answer_by, fds, slot).await
        }
        HoldEnd::Refuse(why) => {
            drop(slot);
            refuse(client, svc, why).await
        }
        HoldEnd::Gone => debug!("client left while the VM woke"),
    }
}

/// Waits for the VM to be awake and its service to answer; asks for the
/// wake when the VM is asleep. The wake deadline is the caller's.
async fn wait_for_backend(
    svc: &TcpService,
    power: &mut watch::Receiver<VmPower>,
    reason: &WakeReason,
) -> HoldEnd {
    loop {
        let state = power.borrow_and_update().clone();
        match state {
            VmPower::Asleep => svc.vm.request_wake(&state, &svc.spec.name, reason),
            VmPower::Waking => {}
            VmPower::WakeFailed(reason) => return HoldEnd::Refuse(Refusal::WakeFailed { reason }),
            VmPower::Awake => {
                if let Some(answering) = probe_until_answers(svc, power).await {
                    return HoldEnd::Awake(answering);
                }
                // The state moved on while probing: look at it again.
                continue;
            }
        }
        if power.changed().await.is_err() {
            return HoldEnd::Refuse(Refusal::Removed);
        }
    }
}

/// While the VM stays awake, waits until its service answers: `Some` with
/// the probe's own connection for the task that probed, `Some(None)` for
/// the others; `None` as soon as the state changes.
async fn probe_until_answers(
    svc: &TcpService,
    power: &mut watch::Receiver<VmPower>,
) -> Option<Option<TcpStream>> {
    let epoch = svc.vm.epoch();
    let mut verified = svc.verified.subscribe();
    loop {
        if *verified.borrow_and_update() == epoch + 1 {
            // Another connection saw the service answer in this wake.
            return Some(None);
        } else if let Ok(_prober) = svc.probe.try_lock() {
            if let Some(b) = probe_once(svc).await {
                svc.verified.send_replace(epoch + 1);
                return Some(Some(b));
            }
        }
        tokio::select! {
            r = power.changed() => {
                // A closed channel is seen again by the caller.
                let _ = r;
                return None;
            }
            _ = verified.changed() => {}
            _ = sleep(svc.vm.limits.probe_interval) => {}
        }
    }
}

/// Sends the held bytes to the woken VM and splices once it answers.
///
/// Each try takes a turn from the service's pacer (connect, send, wait for
/// the first answer; see `pace`), so a crowd of held clients reaches a slow
/// guest at the pace it answers instead of overflowing its listen backlog.
/// A try the backend refuses, or closes without sending a byte, is made
/// again on a fresh connection; a backend that took the bytes and stays
/// silent is never sent them again: the client is refused at `answer_by`.
async fn replay(
    mut client: TcpStream,
    mut backend: Option<TcpStream>,
    svc: &TcpService,
    mut held: Held,
    answer_by: Instant,
    mut fds: Share,
    slot: HeldSlot<'_>,
) {
    let busy = Refusal::Busy { after: svc.bound() };
    let mut pause = svc.vm.limits.probe_interval;
    loop {
        let turn = match backend {
            Some(_) => svc.pacer.extra_turn(),
            None => match timeout_at(answer_by, svc.pacer.turn(svc.vm.epoch())).await {
                Some(turn) => turn,
                None => return refuse(client, svc, busy).await,
            },
        };
        if !fds.grow_to(CONNECTED) {
            // Held clients keep headroom free for this; other VMs' spliced
            // clients may still have taken it. Not the service's fault.
            debug!("no descriptor for the backend connection yet");
        } else {
            let connect_by = turn.ends().min(answer_by);
            let connected = match backend.take() {
                Some(b) => Ok(b),
                None => match timeout_at(connect_by, TcpStream::connect(svc.spec.backend)).await {
                    Some(r) => r,
                    None => Err(io::ErrorKind::TimedOut.into()),
                },
            };
            match connected {
                Ok(b) if held.buf.is_empty() && !held.client_done => {
                    // Nothing to replay (the client has not spoken): the
                    // connection is the service's now, as if it had been awake.
                    drop(turn);
                    drop(slot);
                    return splice(client, b, svc, fds).await;
                }
                Ok(mut b) => match first_answer(&mut client, &mut b, &mut held, turn, answer_by).await {
                    FirstAnswer::Answered => {
                        svc.vm.counters.add_in(held.buf.len());
                        drop(held);
                        drop(slot);
                        return splice(client, b, svc, fds).await;
                    }
                    FirstAnswer::ClientGone => return debug!("client left before the VM answered"),
                    FirstAnswer::Silent => {
                        let why = Refusal::Silent { after: svc.bound() };
                        return refuse(client, svc, why).await;
                    }
                    FirstAnswer::BackendClosed => {
                        debug!(held = held.buf.len(), "backend closed before answering: replaying again");
                    }
                },
                Err(e) if out_of_descriptors(&e) => {
                    debug!(error = %e, "out of descriptors connecting to the backend");
                }
                Err(e) => {
                    debug!(error = %e, "backend refused the replay");
                    turn.finish(Outcome::Congested);
                }
            }
        }
        // Waiting again: the client holds only its own descriptor.
        fds.shrink_to(1);
        if Instant::now() + pause >= answer_by {
            return refuse(client, svc, busy).await;
        }
        sleep(pause).await;
        pause = (pause * 2).min(MAX_REPLAY_PAUSE);
    }
}

enum FirstAnswer {
    Answered,
    BackendClosed,
    ClientGone,
    /// The backend took the bytes and sent nothing by the client's bound.
    Silent,
}

/// What a held client sent so far, kept until the backend answers.
struct Held {
    buf: Vec<u8>,
    client_done: bool,
    cap: usize,
}

/// Writes the held bytes to the backend, then passes on what the client
/// still sends (kept too, up to `cap`, for a replay) until the backend's
/// first byte, its close, or `answer_by`. The turn tells the pacer how it
/// went; one that outlasts its length counts as congestion and makes way for
/// the next client, while this one still waits for its answer.
async fn first_answer(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    held: &mut Held,
    mut turn: Turn<'_>,
    answer_by: Instant,
) -> FirstAnswer {
    let (mut backend_r, mut backend_w) = backend.split();
    if backend_w.write_all(&held.buf).await.is_err() {
        turn.tell(Outcome::Congested);
        return FirstAnswer::BackendClosed;
    }
    if held.client_done {
        let _ = backend_w.shutdown().await;
    }
    let mut one = [0u8; 1];
    let mut slow = false;
    loop {
        // A client that sends more than `cap` waits for the answer: its
        // bytes stay in the kernel's buffers.
        let more = !held.client_done && held.buf.len() < held.cap;
        tokio::select! {
            r = backend_r.peek(&mut one) => return match r {
                Ok(1..) => {
                    let took = turn.started().elapsed();
                    turn.tell(Outcome::Answered(took));
                    FirstAnswer::Answered
                }
                Ok(0) | Err(_) => {
                    turn.tell(Outcome::Congested);
                    FirstAnswer::BackendClosed
                }
            },
            _ = sleep_until(turn.ends()), if !slow => {
                slow = true;
                turn.outlasted();
            }
            _ = sleep_until(answer_by) => {
                turn.tell(Outcome::Congested);
                return FirstAnswer::Silent;
            }
            r = read_some(client, &mut held.buf, held.cap), if more => match r {
                Ok(0) if held.buf.is_empty() => return FirstAnswer::ClientGone,
                Ok(0) => {
                    held.client_done = true;
                    let _ = backend_w.shutdown().await;
                }
                Ok(n) => {
                    let new = held.buf.len() - n;
                    if backend_w.write_all(&held.buf[new..]).await.is_err() {
                        turn.tell(Outcome::Congested);
                        return FirstAnswer::BackendClosed;
                    }
                }
                Err(_) => return FirstAnswer::ClientGone,
            },
        }
    }
}

/// Whether the service answers in this wake (the VM's state `epoch`): seen
/// by a held client's probe already, or by one probe now.
pub(crate) async fn answers(svc: &TcpService, epoch: u64) -> bool {
    if *svc.verified.borrow() == epoch + 1 {
        return true;
    }
    let answered = probe_once(svc).await.is_some();
    if answered {
        svc.verified.send_replace(epoch + 1);
    }
    answered
}

/// One connect to the backend, kept only if it stays open: a QEMU
/// user-network forward accepts on the host side and closes a moment later
/// when nothing in the guest listens yet. Probes carry no client bytes and
/// are never counted as activity.
async fn probe_once(svc: &TcpService) -> Option<TcpStream> {
    let limits = &svc.vm.limits;
    let connect_timeout = limits.wake_deadline.min(Duration::from_secs(1));
    let b = timeout(connect_timeout, TcpStream::connect(svc.spec.backend))
        .await
        .ok()?
        .ok()?;
    let mut one = [0u8; 1];
    match timeout(limits.probe_settle, b.peek(&mut one)).await {
        // Still open and silent, or a server that speaks first (SSH, SMTP):
        // the service is there. `peek` leaves its greeting for the client.
        Err(_) | Ok(Ok(1..)) => Some(b),
        Ok(Ok(0)) | Ok(Err(_)) => {
            debug!("backend accepted and closed: the service is not up yet");
            None
        }
    }
}

/// Refuses a client: a `503` saying why for HTTP, a reset otherwise.
async fn refuse(client: TcpStream, svc: &TcpService, why: Refusal) {
    if !svc.spec.http {
        return reset(client, svc, why);
    }
    let body = why.to_string();
    svc.vm.report_refusal(&svc.spec.name, why);
    let mut client = client;
    let _ = client.write_all(&http::unavailable_response(&body)).await;
    lingering_close(client).await;
}

/// Closes with a reset (SO_LINGER 0): a raw TCP client learns at once that
/// nobody will answer, instead of reading an orderly but empty end.
fn reset(client: TcpStream, svc: &TcpService, why: Refusal) {
    svc.vm.report_refusal(&svc.spec.name, why);
    let _ = client.set_zero_linger();
    drop(client);
}

/// `refuse` without waiting, for when the descriptor must be given back
/// now: the `503` goes out only if the socket takes it at once, after what
/// the client sent is read, so the close is less likely to be a reset.
fn refuse_at_once(client: TcpStream, svc: &TcpService, why: Refusal) {
    if !svc.spec.http {
        return reset(client, svc, why);
    }
    let mut sink = [0u8; 4096];
    while matches!(client.try_read(&mut sink), Ok(1..)) {}
    let _ = client.try_write(&http::unavailable_response(&why.to_string()));
    svc.vm.report_refusal(&svc.spec.name, why);
}

/// Sends FIN, then reads and discards for a moment so unread client bytes
/// do not turn the close into a reset that could destroy the response.
async fn lingering_close(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = timeout(LINGER, async {
        let mut total = 0usize;
        while let Ok(n @ 1..) = client.read(&mut sink).await {
            total += n;
            if total > 1024 * 1024 {
                break;
            }
        }
    })
    .await;
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
