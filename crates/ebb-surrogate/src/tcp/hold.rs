//! A sleeping VM's client: answered locally (echo, a canned reply) or held,
//! its bytes buffered, while the VM wakes and its service comes up.

use crate::event::{Refusal, VmPower, WakeReason};
use crate::http;
use crate::quota::Share;
use crate::spec::CannedReply;
use crate::stats::HeldSlot;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

use super::probe::probe_until_answers;
use super::refuse::{lingering_close, refuse};
use super::replay::{replay, Held};
use super::{read_some, timeout_at, TcpService};

pub(super) async fn sleeping(
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
    c: &CannedReply,
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

pub(super) async fn hold(
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
    let _client = svc.vm.client_opened(&svc.spec.name, client.peer_addr());
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
