//! An awake VM's client: connect to the backend in turn, then splice.

use crate::pace::Outcome;
use crate::quota::{Share, CONNECTED, PIPES};
use crate::event::Refusal;
use crate::stats::{Metered, OpenGuard};
use std::io;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::refuse::refuse;
use super::{out_of_descriptors, timeout_at, TcpService};

/// Buffers of the copying fallback, used only when no pipe can be had.
const COPY_BUF: usize = 16 * 1024;

/// Connects to the backend of an awake VM and splices; a backend that
/// refuses gets the client a refusal (`503` saying so for HTTP, a reset
/// otherwise). The connects take turns of their own (`connects`): a burst
/// of clients must not flood a small listen backlog with SYNs the guest
/// drops (each costing the client a retransmit, 1 s, 3 s, 7 s…). A connect
/// that outlasts its turn is tried again (nothing was sent), until
/// `wake_deadline`. The turns cost the splice path concurrency behind a tiny
/// backlog (8 clients at once behind QEMU's user-mode forward: 9-19 % of
/// direct), but without them a crowd that follows a wake reached a just-woken
/// 256 MiB guest all at once and its httpd cut answers short (ab: 215 of
/// 2,000 empty 200s); the kernel path, the default, is not paced.
pub(super) async fn splice_awake(client: TcpStream, fds: Share, svc: &TcpService) {
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
pub(super) async fn splice(mut client: TcpStream, mut backend: TcpStream, svc: &TcpService, mut fds: Share) {
    let _ = backend.set_nodelay(true);
    let _client = svc.vm.client_opened(&svc.spec.name, client.peer_addr());
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
