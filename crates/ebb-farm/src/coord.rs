//! `ebb coord`: one coordinator replica. Replicas campaign through etcd's
//! election on a lease each keeps alive; the one elected leads until its
//! lease is lost (its process killed: the next one leads within the TTL;
//! stopped cleanly: at once, the lease revoked). The leader watches the
//! hosts and logs each change in their membership, state and active
//! clients. Waking hosts and the gateway come next (issue 11).

use crate::error::FarmError;
use crate::member::backoff;
use crate::store::{Lease, Store};
use crate::view::HostView;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct CoordSettings {
    pub endpoints: Vec<String>,
    /// This replica's name, the election's value (`ebb farm` shows it).
    pub name: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
}

/// Runs the replica until `shutdown` resolves; etcd going away is waited
/// out (with backoff), never an exit.
pub async fn run(s: CoordSettings, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut attempts = 0;
    loop {
        let session = tokio::select! {
            r = Store::connect(&s.endpoints, s.timeout) => r,
            _ = &mut shutdown => return,
        };
        let error = match session {
            Ok(store) => match store.grant(s.lease_ttl).await {
                Ok(lease) => {
                    attempts = 0;
                    let error = tokio::select! {
                        e = keep_alive(&store, lease) => e,
                        e = lead(&store, &s.name, lease) => e,
                        _ = &mut shutdown => {
                            // The lease's end ends the leadership: the next replica leads now.
                            if let Err(e) = store.revoke(lease.id).await {
                                warn!("coord {}: {e}; the next replica leads when the lease expires", s.name);
                            }
                            info!("coord {}: stopped", s.name);
                            return;
                        }
                    };
                    // Whatever holds on to the old lease (a leadership, a
                    // candidacy) must not outlive this session.
                    let _ = store.revoke(lease.id).await;
                    error
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        attempts += 1;
        let wait = backoff(attempts);
        warn!("coord {}: {error}; campaigning again in {} s", s.name, wait.as_secs());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// Renews the lease every third of its TTL; returns why it could not.
async fn keep_alive(store: &Store, lease: Lease) -> FarmError {
    loop {
        tokio::time::sleep(lease.ttl / 3).await;
        match store.keep_alive(lease.id).await {
            Ok(true) => {}
            Ok(false) => {
                return FarmError::Etcd { endpoints: store.endpoints().into(), what: "lease keep-alive".into(), detail: "the replica's lease expired".into() }
            }
            Err(e) => return e,
        }
    }
}

/// Campaigns, then, once elected, watches the hosts; returns only on an error.
async fn lead(store: &Store, name: &str, lease: Lease) -> FarmError {
    info!("coord {name}: campaigning");
    if let Err(e) = store.campaign(name, lease.id).await {
        return e;
    }
    info!("coord {name}: elected leader of the farm's coordinators");
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    let view = match store.farm().await {
        Ok(v) => v,
        Err(e) => return e,
    };
    log_changes(name, &view.hosts, &mut said);
    let mut watch = match store.watch_hosts(view.revision + 1).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        if let Err(e) = watch.changes().await {
            return e;
        }
        // A change is re-read whole: the count of a host's clients is the
        // number of its keys, and one read keeps the view at one revision.
        match store.farm().await {
            Ok(v) => log_changes(name, &v.hosts, &mut said),
            Err(e) => return e,
        }
    }
}

/// One line per host, logged when it differs from the last one said.
fn log_changes(name: &str, hosts: &[HostView], said: &mut BTreeMap<String, String>) {
    let now: BTreeMap<String, String> = hosts.iter().map(|h| (h.name.clone(), summary(h))).collect();
    for (host, line) in &now {
        if said.get(host) != Some(line) {
            info!("coord {name}: host {host}: {line}");
        }
    }
    for host in said.keys().filter(|h| !now.contains_key(*h)) {
        info!("coord {name}: host {host}: no keys left");
    }
    *said = now;
}

/// A host in words: `member, awake, 2 active clients`.
pub fn summary(h: &HostView) -> String {
    let member = if h.member.is_some() { "member" } else { "not a member (no agent)" };
    let state = h.state.map_or("no state", |s| s.as_str());
    let n = h.clients.len();
    format!("{member}, {state}, {n} active client{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{ClientEntry, Member};
    use ebb_core::clients::ClientKind;
    use ebb_core::farm::HostState;

    #[test]
    fn a_host_is_said_again_only_when_it_changed() {
        let mut h = HostView { name: "h1".into(), member: Some(Member { version: "0".into(), since: ebb_core::Millis(0) }), state: Some(HostState::Awake), ..Default::default() };
        assert_eq!(summary(&h), "member, awake, 0 active clients");
        let mut said = BTreeMap::new();
        log_changes("c", std::slice::from_ref(&h), &mut said);
        assert_eq!(said["h1"], "member, awake, 0 active clients");
        h.clients.insert("alice".into(), ClientEntry { vm: "web".into(), kind: ClientKind::Console, remote: None });
        log_changes("c", std::slice::from_ref(&h), &mut said);
        assert_eq!(said["h1"], "member, awake, 1 active client");
        log_changes("c", &[], &mut said);
        assert!(said.is_empty());
    }
}
