//! The agent's link to the farm: a task of its own (the tick never waits on
//! etcd) that joins, keeps the membership lease alive, rejoins with backoff
//! when etcd goes away, and on a clean stop revokes the lease so the host
//! leaves at once rather than at the lease's expiry.

use crate::error::FarmError;
use crate::now;
use crate::mirror::{self, ActiveClients};
use crate::store::{Drain, Lease, Store};
use crate::view::{HostView, Member, Slept};
use ebb_core::farm::{host_name, FarmConfig, HostState, WakeSettings};
use ebb_core::human::FieldError;
use ebb_core::Millis;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Rejoin attempts wait 1 s, 2 s, 4 s, … up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the agent needs to join.
#[derive(Debug, Clone)]
pub struct MemberSettings {
    pub endpoints: Vec<String>,
    pub host: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
    /// The agent's version, kept in the member key.
    pub version: String,
    /// How the farm wakes this host, written at each join.
    pub wake: WakeSettings,
}

impl MemberSettings {
    /// From `[farm]`; the host's name defaults to the machine's hostname.
    pub fn from_config(cfg: &FarmConfig, version: &str) -> Result<MemberSettings, FieldError> {
        Ok(MemberSettings {
            endpoints: cfg.endpoints.clone(),
            host: host_or_hostname(cfg)?,
            lease_ttl: cfg.lease_ttl.as_duration(),
            timeout: cfg.timeout.as_duration(),
            version: version.into(),
            wake: cfg.wake.clone(),
        })
    }
}

/// `farm.host`, else the machine's hostname (when it can be a key's segment).
pub fn host_or_hostname(cfg: &FarmConfig) -> Result<String, FieldError> {
    if let Some(h) = &cfg.host {
        return Ok(h.clone());
    }
    let refused = |why: String| FieldError::new("farm.host", format!("farm.host is not set and {why}: set farm.host"));
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(|e| refused(format!("the hostname cannot be read ({e})")))?;
    let name = name.trim();
    host_name(name).map_err(|why| refused(format!("the hostname {name:?} {why}")))?;
    Ok(name.to_string())
}

/// The farm link as `ebb status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub host: String,
    pub endpoints: String,
    pub state: LinkState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    Joining { since: Millis },
    /// A member: the lease is kept alive every third of its TTL.
    Member { since: Millis, etcd_version: String, lease_ttl_s: u64 },
    /// Not a member, and why; the next attempt's time.
    Disconnected { since: Millis, error: String, attempts: u32, next_try_at: Millis },
    /// Left on a clean stop.
    Left,
}

/// The running link; `leave` ends it.
pub struct MemberLink {
    status: watch::Receiver<LinkStatus>,
    /// The host's own keys as etcd has them, while a member.
    host: watch::Receiver<Option<HostView>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    timeout: Duration,
    requests: LinkRequests,
}

/// What the agent asks of the farm's store, answered by the link's task
/// (which holds the connection) while the host is a member.
enum LinkRequest {
    BeginSleep(Slept, oneshot::Sender<Result<Drain, FarmError>>),
    SetState(HostState, oneshot::Sender<Result<(), FarmError>>),
}

/// Where the agent sends its requests to the farm; each answer comes
/// within the store's timeout or as an error, never later.
#[derive(Clone)]
pub struct LinkRequests {
    tx: mpsc::Sender<LinkRequest>,
    host: String,
    timeout: Duration,
}

impl LinkRequests {
    /// The shared check before the host sleeps (`Store::begin_sleep`).
    pub async fn begin_sleep(&self, slept: Slept) -> Result<Drain, FarmError> {
        self.ask(|reply| LinkRequest::BeginSleep(slept, reply)).await
    }

    /// The host's state in the farm.
    pub async fn set_state(&self, state: HostState) -> Result<(), FarmError> {
        self.ask(|reply| LinkRequest::SetState(state, reply)).await
    }

    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<Result<T, FarmError>>) -> LinkRequest) -> Result<T, FarmError> {
        let gone = |why: &str| FarmError::NotMember { host: self.host.clone(), why: why.into() };
        let (reply, answer) = oneshot::channel();
        self.tx.try_send(request(reply)).map_err(|_| gone("the farm link is busy or stopped"))?;
        // The link may be mid-call (a keep-alive): a call's time more.
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone("the farm link stopped")),
            Err(_) => Err(FarmError::Unreachable { endpoints: String::new(), what: "the farm link's answer".into(), after: self.timeout * 2 }),
        }
    }
}

/// Answers one request with the store.
async fn serve(store: &Store, host: &str, request: LinkRequest) {
    match request {
        LinkRequest::BeginSleep(slept, reply) => {
            let _ = reply.send(store.begin_sleep(host, &slept).await);
        }
        LinkRequest::SetState(state, reply) => {
            let _ = reply.send(store.set_state(host, state).await);
        }
    }
}

/// Refuses a request while the host is not a member.
fn refuse(host: &str, why: &str, request: LinkRequest) {
    let e = || FarmError::NotMember { host: host.into(), why: why.into() };
    match request {
        LinkRequest::BeginSleep(_, reply) => drop(reply.send(Err(e()))),
        LinkRequest::SetState(_, reply) => drop(reply.send(Err(e()))),
    }
}

impl MemberLink {
    /// Starts joining in the background; returns at once. While a member,
    /// the host's active `clients` are kept in etcd, one leased key each,
    /// and its `vms` (once listed) in its `vms` key (the farm's routing to them).
    pub fn start(s: MemberSettings, clients: watch::Receiver<ActiveClients>, vms: watch::Receiver<Option<Vec<String>>>) -> MemberLink {
        let first = LinkStatus { host: s.host.clone(), endpoints: s.endpoints.join(","), state: LinkState::Joining { since: now() } };
        let (tx, status) = watch::channel(first);
        let (stop, stopped) = watch::channel(false);
        let timeout = s.timeout;
        let (requests_tx, requests_rx) = mpsc::channel(8);
        let requests = LinkRequests { tx: requests_tx, host: s.host.clone(), timeout };
        let (host_tx, host) = watch::channel(None);
        let task = tokio::spawn(keep_joined(s, tx, stopped, clients, vms, requests_rx, host_tx));
        MemberLink { status, host, stop, task, timeout, requests }
    }

    /// The host's own keys (its state, the farm's marks on it) as they
    /// change; None while not a member.
    pub fn host(&self) -> watch::Receiver<Option<HostView>> {
        self.host.clone()
    }

    /// Where the agent asks the farm's store (while a member).
    pub fn requests(&self) -> LinkRequests {
        self.requests.clone()
    }

    /// The link's state as it changes.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.status.clone()
    }

    /// Leaves the farm: the membership lease revoked (within the timeout).
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        // The revoke is bounded by the timeout; a second more for the task to end.
        if tokio::time::timeout(self.timeout + Duration::from_secs(1), self.task).await.is_err() {
            warn!("farm: leaving took too long; the membership ends when its lease expires");
        }
    }
}

/// 1 s after the first failure, doubling, at most `BACKOFF_MAX`.
pub(crate) fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(8)).min(BACKOFF_MAX)
}

async fn keep_joined(
    s: MemberSettings,
    tx: watch::Sender<LinkStatus>,
    mut stop: watch::Receiver<bool>,
    mut clients: watch::Receiver<ActiveClients>,
    mut vms: watch::Receiver<Option<Vec<String>>>,
    mut requests: mpsc::Receiver<LinkRequest>,
    host: watch::Sender<Option<HostView>>,
) {
    let set = |state: LinkState| tx.send_modify(|st| st.state = state);
    let mut attempts = 0;
    let mut down_since = now();
    let mut why_not = "joining".to_string();
    loop {
        let joining = join(&s);
        tokio::pin!(joining);
        let joined = loop {
            tokio::select! {
                r = &mut joining => break r,
                Some(req) = requests.recv() => refuse(&s.host, &why_not, req),
                _ = stop.changed() => return set(LinkState::Left),
            }
        };
        let error = match joined {
            Ok((store, lease, version)) => {
                info!("farm: host {} joined the farm at {} (etcd {version}, lease {} s)", s.host, store.endpoints(), lease.ttl.as_secs());
                attempts = 0;
                set(LinkState::Member { since: now(), etcd_version: version, lease_ttl_s: lease.ttl.as_secs() });
                let kept = keep_alive(&store, lease);
                let mirrored = mirror::follow(&store, &s.host, &mut clients);
                let own = follow_own(&store, &s.host, &host);
                let routed = follow_vms(&store, &s.host, &mut vms);
                tokio::pin!(kept, mirrored, own, routed);
                let lost = loop {
                    tokio::select! {
                        e = &mut kept => break e,
                        e = &mut mirrored => break e,
                        e = &mut own => break e,
                        e = &mut routed => break e,
                        Some(req) = requests.recv() => serve(&store, &s.host, req).await,
                        _ = stop.changed() => {
                            match store.revoke(lease.id).await {
                                Ok(()) => info!("farm: host {} left the farm", s.host),
                                Err(e) => warn!("farm: {e}; the membership ends when its lease expires"),
                            }
                            return set(LinkState::Left);
                        }
                    }
                };
                down_since = now();
                host.send_replace(None);
                lost
            }
            Err(e) => e,
        };
        attempts += 1;
        let wait = backoff(attempts);
        warn!("farm: host {} is not a member: {error}; next try in {} s", s.host, wait.as_secs());
        why_not = error.to_string();
        set(LinkState::Disconnected { since: down_since, error: why_not.clone(), attempts, next_try_at: Millis(now().0 + wait.as_millis() as u64) });
        let waited = tokio::time::sleep(wait);
        tokio::pin!(waited);
        loop {
            tokio::select! {
                _ = &mut waited => break,
                Some(req) = requests.recv() => refuse(&s.host, &why_not, req),
                _ = stop.changed() => return set(LinkState::Left),
            }
        }
    }
}

/// Keeps `host` at what etcd holds under the host's keys; returns why it could not.
async fn follow_own(store: &Store, name: &str, host: &watch::Sender<Option<HostView>>) -> FarmError {
    let (view, revision) = match store.host(name).await {
        Ok(v) => v,
        Err(e) => return e,
    };
    host.send_replace(Some(view));
    let mut watch = match store.watch_host(name, revision + 1).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        if let Err(e) = watch.changes().await {
            return e;
        }
        match store.host(name).await {
            Ok((view, _)) => crate::replace_if_changed(host, Some(view)),
            Err(e) => return e,
        }
    }
}

/// Keeps the host's `vms` key at the agent's list (at each join, and when
/// it changes; not before the agent has listed its VMs once, so a restart
/// does not blank the routing); returns why it could not.
async fn follow_vms(store: &Store, name: &str, vms: &mut watch::Receiver<Option<Vec<String>>>) -> FarmError {
    loop {
        let list = vms.borrow_and_update().clone();
        if let Some(list) = list {
            if let Err(e) = store.set_vms(name, &list).await {
                return e;
            }
        }
        if vms.changed().await.is_err() {
            // The agent is gone; the key stays as it was.
            std::future::pending::<()>().await;
        }
    }
}

/// Connects, takes a lease and writes the member and state keys.
async fn join(s: &MemberSettings) -> Result<(Store, Lease, String), FarmError> {
    let store = Store::connect(&s.endpoints, s.timeout).await?;
    let version = store.server_version().await?;
    let lease = store.grant(s.lease_ttl).await?;
    store.join(&s.host, &Member { version: s.version.clone(), since: now() }, &s.wake, lease.id).await?;
    Ok((store, lease, version))
}

/// Renews the lease every third of its TTL; returns why it could not.
async fn keep_alive(store: &Store, lease: Lease) -> FarmError {
    let every = lease.ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        match store.keep_alive(lease.id).await {
            Ok(true) => {}
            Ok(false) => {
                return FarmError::Etcd {
                    endpoints: store.endpoints().into(),
                    what: "lease keep-alive".into(),
                    detail: format!("the membership lease expired (etcd heard nothing for {} s)", lease.ttl.as_secs()),
                }
            }
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_and_caps() {
        let waits: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
