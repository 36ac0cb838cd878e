//! `ebb coord`: one coordinator replica. Replicas campaign through etcd's
//! election on a lease each keeps alive; the one elected leads until its
//! lease is lost (its process killed: the next one leads within the TTL;
//! stopped cleanly: at once, the lease revoked). The leader watches the
//! hosts, logs each change in their membership, state and active clients,
//! and wakes a sleeping host whose clients wait for it
//! (`ebb_core::host_wake`). The gateway comes next (issue 11).

use crate::error::FarmError;
use crate::now;
use crate::member::backoff;
use crate::store::{Lease, Store};
use crate::view::{HostView, Slept, Woke};
use ebb_core::farm::WakeSettings;
use ebb_core::host_wake::{self, WakeFacts, WakeRecord, WakeStep, WakeTiming};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Sends one wake to a host by its methods, in order, until one is taken:
/// Ok(which, and what it did, in words), or why none was.
pub type SendWake = Arc<dyn Fn(String, WakeSettings) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

#[derive(Clone)]
pub struct CoordSettings {
    pub endpoints: Vec<String>,
    /// This replica's name, the election's value (`ebb farm` shows it).
    pub name: String,
    pub lease_ttl: Duration,
    pub timeout: Duration,
    pub wake_timing: WakeTiming,
    pub send_wake: SendWake,
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
                        e = lead(&store, &s, lease) => e,
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

/// How often the leader looks at wakes under way (resends, deadlines)
/// when no host changes.
const WAKE_LOOK: Duration = Duration::from_secs(1);
/// Changes closer than this to each other are read as one…
const COALESCE: Duration = Duration::from_millis(20);
/// …for at most this long.
const COALESCE_MAX: Duration = Duration::from_millis(200);

/// Campaigns, then, once elected, watches the hosts and wakes them;
/// returns only on an error.
async fn lead(store: &Store, s: &CoordSettings, lease: Lease) -> FarmError {
    let name = s.name.as_str();
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
    // The method each host's last send was taken by, for its `woke` record.
    let taken: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    if let Err(e) = wake_hosts(store, s, &view.hosts, &taken).await {
        return e;
    }
    let mut watch = match store.watch_hosts(view.revision + 1).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    let mut waking = view.hosts.iter().any(|h| h.waking.is_some());
    loop {
        // Only a wake under way needs looking at without a change (its
        // resends and deadline); a big farm is not read every second.
        let look = async {
            if waking {
                tokio::time::sleep(WAKE_LOOK).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            changed = watch.changes() => {
                if let Err(e) = changed {
                    return e;
                }
                // Changes come in bursts (clients come and go together):
                // one read for all that come within COALESCE of each other.
                let until = tokio::time::Instant::now() + COALESCE_MAX;
                while let Ok(more) = tokio::time::timeout_at(until.min(tokio::time::Instant::now() + COALESCE), watch.changes()).await {
                    if let Err(e) = more {
                        return e;
                    }
                }
            }
            () = look => {}
        }
        // A change is re-read whole: the count of a host's clients is the
        // number of its keys, and one read keeps the view at one revision.
        let hosts = match store.farm().await {
            Ok(v) => v.hosts,
            Err(e) => return e,
        };
        log_changes(name, &hosts, &mut said);
        if let Err(e) = wake_hosts(store, s, &hosts, &taken).await {
            return e;
        }
        waking = hosts.iter().any(|h| h.waking.is_some() || h.state == Some(ebb_core::farm::HostState::Waking));
    }
}

/// Takes each host's next wake step (`ebb_core::host_wake`). The sends run
/// beside the leader (a BMC may take seconds); each is recorded in etcd
/// before it is made, so a leader that dies mid-wake leaves a record the
/// next one carries on from, and the host is woken once.
async fn wake_hosts(store: &Store, s: &CoordSettings, hosts: &[HostView], taken: &Arc<Mutex<BTreeMap<String, String>>>) -> Result<(), FarmError> {
    let name = s.name.as_str();
    for h in hosts {
        let at = now();
        let settings = h.wake.clone().unwrap_or_default();
        let clients: Vec<&str> = h.clients.keys().map(String::as_str).collect();
        let confirmed = h.waking.as_ref().and_then(|r| host_wake::confirmed(r, h.state, h.member.as_ref().map(|m| m.since), at));
        let step = confirmed.unwrap_or_else(|| {
            host_wake::step(s.wake_timing, &WakeFacts { now: at, state: h.state, clients, has_method: !settings.methods().is_empty(), record: h.waking.as_ref() })
        });
        match step {
            WakeStep::Nothing => {}
            WakeStep::Begin { why } => {
                let record = WakeRecord { started: at, why: why.clone(), sends: 0, last_send: None };
                if store.begin_wake(&h.name, &record).await? {
                    info!("coord {name}: waking host {}: {why}", h.name);
                    send(store, s, &h.name, settings, record, taken).await?;
                }
            }
            WakeStep::Send => {
                let record = h.waking.clone().unwrap_or(WakeRecord { started: at, why: "a wake was under way".into(), sends: 0, last_send: None });
                send(store, s, &h.name, settings, record, taken).await?;
            }
            WakeStep::Confirmed { took } => {
                let record = h.waking.as_ref().expect("confirmed from a record");
                let by = taken.lock().expect("taken").remove(&h.name).unwrap_or_else(|| "a send of an earlier leader".into());
                info!("coord {name}: host {} is awake, {took} after the first send ({by})", h.name);
                store.wake_done(&h.name, &Woke { at, took_ms: took.as_millis(), by, why: record.why.clone() }).await?;
            }
            WakeStep::Fail { why } => {
                if store.wake_failed(&h.name, &Slept { at, why: why.clone() }).await? {
                    warn!("coord {name}: host {} could not be woken: {why}; it is marked wake-failed and not put to sleep again", h.name);
                }
            }
        }
    }
    Ok(())
}

/// Records the next send in etcd, then makes it beside the leader.
async fn send(store: &Store, s: &CoordSettings, host: &str, settings: WakeSettings, mut record: WakeRecord, taken: &Arc<Mutex<BTreeMap<String, String>>>) -> Result<(), FarmError> {
    record.sends += 1;
    record.last_send = Some(now());
    if !store.record_send(host, &record).await? {
        return Ok(());
    }
    let (name, host, send, taken) = (s.name.clone(), host.to_string(), s.send_wake.clone(), taken.clone());
    tokio::spawn(async move {
        match send(host.clone(), settings).await {
            Ok(by) => {
                info!("coord {name}: wake {} sent to host {host}: {by}", record.sends);
                taken.lock().expect("taken").insert(host, by);
            }
            Err(why) => warn!("coord {name}: wake {} to host {host} not taken: {why}", record.sends),
        }
    });
    Ok(())
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
    let marked = h.wake_failed.as_ref().map_or(String::new(), |m| format!(" (could not be woken: {})", m.why));
    format!("{member}, {state}, {n} active client{}{marked}", if n == 1 { "" } else { "s" })
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
