//! Whether the woken VM's service answers: one prober per service, the
//! others wait on its verdict.

use crate::event::VmPower;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};
use tracing::debug;

use super::TcpService;

/// While the VM stays awake, waits until its service answers: `Some` with
/// the probe's own connection for the task that probed, `Some(None)` for
/// the others; `None` as soon as the state changes.
pub(super) async fn probe_until_answers(
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
