//! An awake VM's client: connect to the backend, then splice.

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
/// otherwise). The connect is the client's own, as if it came straight:
/// the kernel resends a SYN a full backlog dropped, until `wake_deadline`.
/// (Taking turns here, as replays do, serialized a burst of clients behind
/// the guest's backlog: 19 % of direct with 8 clients at once.)
pub(super) async fn splice_awake(client: TcpStream, fds: Share, svc: &TcpService) {
    let backend = svc.spec.backend;
    let deadline = Instant::now() + svc.vm.limits.wake_deadline;
    match timeout_at(deadline, TcpStream::connect(backend)).await {
        Some(Ok(b)) => splice(client, b, svc, fds).await,
        Some(Err(e)) if out_of_descriptors(&e) => refuse(client, svc, Refusal::OutOfDescriptors).await,
        Some(Err(e)) => {
            debug!(error = %e, "backend refused while the VM is awake");
            refuse(client, svc, Refusal::BackendDown { backend }).await
        }
        // Not taken in time (a backlog that stays full): nothing was sent.
        None => refuse(client, svc, Refusal::Busy { after: svc.vm.limits.wake_deadline }).await,
    }
}

/// Copies both ways until both sides close. `fds` holds the client's and
/// the backend's descriptors, and grows by the pipes' when it can.
pub(super) async fn splice(mut client: TcpStream, mut backend: TcpStream, svc: &TcpService, mut fds: Share) {
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
