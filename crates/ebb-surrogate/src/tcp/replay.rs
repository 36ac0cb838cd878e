//! A held client's bytes sent to the woken VM, at the pace it answers, again
//! on a fresh connection only if the service closed the last one unanswered.

use crate::event::Refusal;
use crate::pace::{Outcome, Turn};
use crate::quota::{Share, CONNECTED};
use crate::stats::HeldSlot;
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::debug;

use super::awake::splice;
use super::refuse::refuse;
use super::{out_of_descriptors, read_some, timeout_at, TcpService};

/// The longest pause between replays to a backend that keeps closing.
const MAX_REPLAY_PAUSE: Duration = Duration::from_millis(500);

/// Sends the held bytes to the woken VM and splices once it answers.
///
/// Each try takes a turn from the service's pacer (connect, send, wait for
/// the first answer; see `pace`), so a crowd of held clients reaches a slow
/// guest at the pace it answers instead of overflowing its listen backlog.
/// A try the backend refuses, or closes without sending a byte, is made
/// again on a fresh connection; a backend that took the bytes and stays
/// silent is never sent them again: the client is refused at `answer_by`.
pub(super) async fn replay(
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
pub(super) struct Held {
    pub(super) buf: Vec<u8>,
    pub(super) client_done: bool,
    pub(super) cap: usize,
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
