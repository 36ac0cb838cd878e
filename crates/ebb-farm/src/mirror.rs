//! The host's active clients in etcd: one key per client under
//! `hosts/{h}/clients/`, whose lease is the client's timer (the seed's).
//! The agent says which clients are active; this keeps each one's lease
//! alive every third of its TTL while it is, and revokes it the moment it
//! is not. So the keys etcd counts are the host's active clients, and if
//! the agent dies they go on their own within their TTL.

use crate::error::FarmError;
use crate::store::Store;
use crate::view::ClientEntry;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

/// The clients active on the host now, by their key's segment: each with
/// its entry and its TTL.
pub type ActiveClients = BTreeMap<String, (ClientEntry, Duration)>;

/// What a client's key holds, and its TTL, from the client table's view of it.
pub fn entry_of(v: &ebb_core::clients::ClientView) -> (ClientEntry, Duration) {
    (ClientEntry { vm: v.vm.to_string(), kind: v.kind, remote: v.remote.clone() }, Duration::from_millis(v.ttl_ms))
}

/// A client's key as etcd holds it.
#[derive(Debug, Clone)]
struct Held {
    lease: i64,
    entry: ClientEntry,
    ttl: Duration,
    renewed: Instant,
}

/// What to write to make etcd follow what is wanted.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// New clients, and those whose VM or TTL changed (a new lease).
    put: Vec<String>,
    /// Held clients a third of their TTL after their last renewal.
    renew: Vec<String>,
    /// Clients no longer active: their lease goes now.
    revoke: Vec<String>,
}

fn plan(wanted: &ActiveClients, held: &BTreeMap<String, Held>, now: Instant) -> Plan {
    let mut p = Plan::default();
    for (id, (entry, ttl)) in wanted {
        match held.get(id) {
            Some(h) if h.ttl != *ttl || h.entry != *entry => p.put.push(id.clone()),
            Some(h) if now.duration_since(h.renewed) >= h.ttl / 3 => p.renew.push(id.clone()),
            Some(_) => {}
            None => p.put.push(id.clone()),
        }
    }
    p.revoke = held.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
    p
}

/// When the next renewal is due (at the latest a second from now, so a
/// change is never waited on for long even if its notice was missed).
fn next_due(held: &BTreeMap<String, Held>, now: Instant) -> Instant {
    held.values().map(|h| h.renewed + h.ttl / 3).fold(now + Duration::from_secs(1), Instant::min)
}

/// Makes etcd follow `wanted` until a call fails; returns why.
pub(crate) async fn follow(store: &Store, host: &str, wanted: &mut watch::Receiver<ActiveClients>) -> FarmError {
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let want = wanted.borrow_and_update().clone();
        let p = plan(&want, &held, now);
        for id in &p.revoke {
            let Some(h) = held.remove(id) else { continue };
            if let Err(e) = store.revoke(h.lease).await {
                return e;
            }
        }
        for id in &p.put {
            let (entry, ttl) = &want[id];
            if let Some(old) = held.remove(id) {
                let _ = store.revoke(old.lease).await;
            }
            match store.put_client(host, id, entry, *ttl).await {
                Ok(lease) => {
                    held.insert(id.clone(), Held { lease: lease.id, entry: entry.clone(), ttl: *ttl, renewed: now });
                }
                // A name etcd cannot hold as one key segment: said once, left out.
                Err(FarmError::BadName(why)) => warn!("farm: client left out of etcd: {why}"),
                Err(e) => return e,
            }
        }
        for id in &p.renew {
            let Some(h) = held.get_mut(id) else { continue };
            match store.refresh_client(h.lease).await {
                Ok(true) => h.renewed = now,
                // Expired meanwhile (etcd was slow to hear): put it again next round.
                Ok(false) => {
                    held.remove(id);
                }
                Err(e) => return e,
            }
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() {
                // The agent is gone: its leases end on their own.
                std::future::pending::<()>().await;
            },
            _ = tokio::time::sleep_until(next_due(&held, Instant::now())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientKind;

    fn entry() -> ClientEntry {
        ClientEntry { vm: "web".into(), kind: ClientKind::Heartbeat, remote: None }
    }

    fn kept(lease: i64, ttl: Duration, renewed: Instant) -> Held {
        Held { lease, entry: entry(), ttl, renewed }
    }

    #[test]
    fn new_clients_are_put_held_ones_renewed_at_a_third_of_their_ttl_and_gone_ones_revoked() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let moved = ClientEntry { vm: "db".into(), ..entry() };
        let wanted: ActiveClients = [
            ("a".to_string(), (entry(), ttl)),
            ("b".to_string(), (entry(), ttl)),
            ("c".to_string(), (entry(), Duration::from_secs(60))),
            ("d".to_string(), (moved, ttl)),
        ]
        .into();
        let held: BTreeMap<String, Held> =
            [("b".to_string(), kept(2, ttl, t0)), ("c".to_string(), kept(3, ttl, t0)), ("d".to_string(), kept(5, ttl, t0)), ("gone".to_string(), kept(4, ttl, t0))].into();
        let p = plan(&wanted, &held, t0 + Duration::from_secs(5));
        assert_eq!(p, Plan { put: vec!["a".into(), "c".into(), "d".into()], renew: vec![], revoke: vec!["gone".into()] }, "c's TTL changed, d moved VM: new leases");
        let p = plan(&wanted, &held, t0 + Duration::from_secs(10));
        assert_eq!(p.renew, ["b"], "a third of 30 s after its renewal");
        assert_eq!(next_due(&held, t0), t0 + Duration::from_secs(1), "never more than a second between looks");
        let late: BTreeMap<String, Held> = [("b".to_string(), kept(2, Duration::from_secs(3), t0))].into();
        assert_eq!(next_due(&late, t0), t0 + Duration::from_secs(1));
        assert_eq!(next_due(&late, t0 + Duration::from_millis(500)), t0 + Duration::from_secs(1));
    }
}
