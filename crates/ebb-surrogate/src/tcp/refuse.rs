//! Ending a client that cannot be served: a `503` saying why for HTTP, a
//! reset otherwise, never an empty close.

use crate::event::Refusal;
use crate::http;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::TcpService;

/// How long a refused HTTP client gets to read its `503` while the surrogate
/// drains what it still sends (closing with unread data would reset the
/// connection and could destroy the response before it is read).
const LINGER: Duration = Duration::from_millis(500);

/// Out of descriptors with clients pending: gives up the spare descriptor
/// for a moment to accept one and refuse it at once (the trick of nginx and
/// libev), so a client in the backlog learns that ebb is full instead of
/// waiting in silence. False when there is no spare to give up.
pub(super) async fn refuse_with_spare(listener: &TcpListener, svc: &TcpService) -> bool {
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

/// Refuses a client: a `503` saying why for HTTP, a reset otherwise.
pub(super) async fn refuse(client: TcpStream, svc: &TcpService, why: Refusal) {
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
pub(super) async fn lingering_close(mut client: TcpStream) {
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
