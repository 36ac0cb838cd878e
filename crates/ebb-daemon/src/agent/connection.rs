//! The hypervisor connection and its backoff; blocking calls run off the actor.

use super::*;
use crate::journal::Kind;
use crate::api_types::Connection;
use ebb_backends::platform::Platform;
use ebb_backends::{HvError, Hypervisor};
use ebb_core::Millis;
use std::time::Duration;
use tracing::{debug, info, warn};

impl Agent {
    /// Runs a blocking hypervisor call off the async runtime. None when
    /// there is no connection or the call panicked.
    pub(super) async fn with_hv<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut dyn Hypervisor) -> R + Send + 'static,
    ) -> Option<R> {
        off_thread(&mut self.link.hv, move |hv| f(hv)).await.map_err(|e| warn!("a hypervisor call panicked; reconnecting: {e}")).ok()?
    }

    pub(super) async fn try_connect(&mut self, at: Millis) -> bool {
        let (attempts, next_try_at) = match &self.link.state {
            Connection::Disconnected { attempts, next_try_at, .. } => (*attempts, *next_try_at),
            Connection::Connected { .. } => (0, at),
        };
        if at < next_try_at {
            return false;
        }
        let connect = self.link.connect.clone();
        let uri = self.cfg.agent.uri.clone();
        let result = tokio::task::spawn_blocking(move || connect(&uri)).await;
        match result {
            Ok(Ok(hv)) => {
                self.link.hv = Some(hv);
                self.link.state = Connection::Connected { since: at };
                let text = format!("connected to libvirt at {}", self.cfg.agent.uri);
                info!("{text}");
                self.journal_event(None, Kind::Connected, &text);
                self.watch_consoles().await;
                true
            }
            Ok(Err(e)) => {
                let backoff = backoff_after(attempts + 1);
                let error = e.to_string();
                if attempts == 0 {
                    warn!("{error}; retrying every {}s at most", BACKOFF_MAX.as_secs());
                    self.journal_event(None, Kind::ConnectFailed, &error);
                } else {
                    debug!("reconnect attempt {} failed: {error}", attempts + 1);
                }
                let since = match &self.link.state {
                    Connection::Disconnected { since, .. } => *since,
                    Connection::Connected { .. } => at,
                };
                self.link.state = Connection::Disconnected {
                    since,
                    error,
                    attempts: attempts + 1,
                    next_try_at: at.plus(backoff.as_millis() as u64),
                };
                false
            }
            Err(e) => {
                warn!("connecting to libvirt panicked: {e}");
                false
            }
        }
    }

    pub(super) fn lost_connection(&mut self, at: Millis, e: &HvError) {
        self.link.hv = None;
        let error = e.to_string();
        warn!("lost libvirt: {error}; reconnecting with backoff");
        self.journal_event(None, Kind::Disconnected, &format!("lost libvirt: {error}"));
        self.link.state = Connection::Disconnected { since: at, error, attempts: 0, next_try_at: at };
    }

    /// Runs a blocking platform call (a UPS read, a power-off) off the async
    /// runtime. None when the call panicked.
    pub(super) async fn with_platform<R: Send + 'static>(&mut self, f: impl FnOnce(&mut dyn Platform) -> R + Send + 'static) -> Option<R> {
        off_thread(&mut self.platform, move |p| f(p)).await.map_err(|e| warn!("a platform call panicked: {e}")).ok()?
    }
}

/// Runs a blocking call on the boxed backend in `slot` off the async
/// runtime, putting the backend back afterwards. None when the slot is empty;
/// an error (and the slot left empty) when the call panicked.
pub(super) async fn off_thread<T: ?Sized + Send + 'static, R: Send + 'static>(
    slot: &mut Option<Box<T>>,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<Option<R>, tokio::task::JoinError> {
    let Some(mut backend) = slot.take() else { return Ok(None) };
    let (backend, r) = tokio::task::spawn_blocking(move || {
        let r = f(backend.as_mut());
        (backend, r)
    })
    .await?;
    *slot = Some(backend);
    Ok(Some(r))
}

pub(super) fn backoff_after(attempts: u32) -> Duration {
    let secs = BACKOFF_MIN.as_secs().saturating_mul(1u64 << attempts.min(6).saturating_sub(1));
    Duration::from_secs(secs).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_after(1), Duration::from_secs(1));
        assert_eq!(backoff_after(2), Duration::from_secs(2));
        assert_eq!(backoff_after(3), Duration::from_secs(4));
        assert_eq!(backoff_after(10), BACKOFF_MAX);
    }
}
