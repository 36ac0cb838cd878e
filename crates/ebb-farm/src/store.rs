//! The farm's store: the calls ebb makes to etcd, each bounded by a
//! timeout (a balanced gRPC channel with no endpoint up waits forever on
//! its own), each failure a `FarmError` naming the call.

use crate::error::FarmError;
use crate::keys;
use crate::view::{hosts_from, ClientEntry, FarmView, HostView, Member, Slept, Woke};
use ebb_core::host_wake::WakeRecord;
use ebb_core::farm::WakeSettings;
use ebb_core::farm::HostState;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey, PutOptions, ResignOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream};
use std::future::Future;
use std::time::Duration;

/// A lease etcd granted: its id and the TTL it granted (at least 2 s,
/// whatever was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    pub ttl: Duration,
}

/// A connection to the farm's etcd; cheap to clone (the clones share it).
#[derive(Clone)]
pub struct Store {
    client: Client,
    endpoints: String,
    timeout: Duration,
}

/// What etcd said to a host's sleep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// No client key and the state still `awake`: now `draining`.
    Begun,
    /// A client arrived (a key under its `clients/`) or the state moved
    /// on meanwhile: the host stays awake.
    Refused { clients: u64, state: Option<HostState> },
}

/// A change under `hosts/` seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub deleted: bool,
}

impl Store {
    /// Connects and checks that etcd answers (its status), within `timeout`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Store, FarmError> {
        // HTTP/2 pings no more often than etcd allows (its
        // --grpc-keepalive-min-time, 5 s by default): it answers a client
        // that pings sooner with GOAWAY (too_many_pings) and closes the
        // connection, which breaks every watch on it.
        let ping = timeout.max(KEEPALIVE_MIN);
        let options = ConnectOptions::new().with_connect_timeout(timeout).with_keep_alive(ping, timeout);
        let shown = endpoints.join(",");
        let client = bounded(&shown, "connect", timeout, Client::connect(endpoints, Some(options))).await?;
        let store = Store { client, endpoints: shown, timeout };
        store.server_version().await?;
        Ok(store)
    }

    /// The endpoints, as errors and `ebb status` show them.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// etcd's version, from its status.
    pub async fn server_version(&self) -> Result<String, FarmError> {
        let mut c = self.client.clone();
        self.call("status", async move { c.status().await }).await.map(|s| s.version().to_string())
    }

    async fn call<T>(&self, what: &str, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, FarmError> {
        bounded(&self.endpoints, what, self.timeout, f).await
    }

    pub async fn grant(&self, ttl: Duration) -> Result<Lease, FarmError> {
        let mut c = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        let r = self.call("lease grant", async move { c.lease_grant(secs, None).await }).await?;
        Ok(Lease { id: r.id(), ttl: Duration::from_secs(r.ttl().max(0) as u64) })
    }

    /// Renews a lease once; false when etcd no longer has it (it expired,
    /// or was revoked), and its keys are gone with it.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, FarmError> {
        let mut c = self.client.clone();
        // Opening the stream sends a keep-alive and reads its answer; one
        // of a lease etcd no longer has is this error.
        match self.call("lease keep-alive", async move { c.lease_keep_alive(lease).await.map(drop) }).await {
            Ok(()) => Ok(true),
            Err(FarmError::Etcd { detail, .. }) if detail.contains("lease not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ends a lease now: its keys go at once, not at its expiry.
    pub async fn revoke(&self, lease: i64) -> Result<(), FarmError> {
        let mut c = self.client.clone();
        match self.call("lease revoke", async move { c.lease_revoke(lease).await }).await {
            Err(FarmError::Etcd { detail, .. }) if detail.contains("lease not found") => Ok(()),
            r => r.map(drop),
        }
    }

    async fn put(&self, what: &str, key: String, value: Vec<u8>, lease: Option<i64>) -> Result<(), FarmError> {
        let mut c = self.client.clone();
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        self.call(what, async move { c.put(key, value, options).await }).await.map(drop)
    }

    async fn get_one(&self, what: &str, key: String) -> Result<Option<Vec<u8>>, FarmError> {
        let mut c = self.client.clone();
        let mut r = self.call(what, async move { c.get(key, None).await }).await?;
        Ok(r.take_kvs().into_iter().next().map(|kv| kv.into_key_value().1))
    }

    /// The host's membership, on `lease`, its state `awake` (an agent
    /// that joins is up) and how to wake it, in one transaction: no reader
    /// sees one without the others.
    pub async fn join(&self, host: &str, member: &Member, wake: &WakeSettings, lease: i64) -> Result<(), FarmError> {
        keys::check_segment("host", host).map_err(FarmError::BadName)?;
        let value = serde_json::to_vec(member).expect("a member serializes");
        let wake = serde_json::to_vec(wake).expect("wake settings serialize");
        let txn = Txn::new().and_then([
            TxnOp::put(keys::member(host), value, Some(PutOptions::new().with_lease(lease))),
            TxnOp::put(keys::state(host), HostState::Awake.as_str(), None),
            TxnOp::put(keys::wake(host), wake, None),
        ]);
        let mut c = self.client.clone();
        self.call("join", async move { c.txn(txn).await }).await.map(drop)
    }

    /// The check before a host sleeps, as one transaction: if etcd holds
    /// no client key of the host and its state is still `awake`, the state
    /// becomes `draining` and `slept` says when and why. A client that
    /// arrived anywhere in the farm meanwhile (a key put by another agent
    /// or the gateway) keeps the host awake.
    pub async fn begin_sleep(&self, host: &str, slept: &Slept) -> Result<Drain, FarmError> {
        let clients = keys::clients(host);
        let value = serde_json::to_vec(slept).expect("a sleep serializes");
        // Over an empty range etcd compares a key that does not exist
        // (create revision 0): true only when no client key is there.
        let txn = Txn::new()
            .when([
                Compare::create_revision(clients.clone(), CompareOp::Equal, 0).with_prefix(),
                Compare::value(keys::state(host), CompareOp::Equal, HostState::Awake.as_str()),
            ])
            .and_then([TxnOp::put(keys::state(host), HostState::Draining.as_str(), None), TxnOp::put(keys::slept(host), value, None)])
            .or_else([TxnOp::get(clients, Some(GetOptions::new().with_prefix().with_count_only())), TxnOp::get(keys::state(host), None)]);
        let mut c = self.client.clone();
        let r = self.call("begin sleep", async move { c.txn(txn).await }).await?;
        if r.succeeded() {
            return Ok(Drain::Begun);
        }
        let (mut clients, mut state) = (0, None);
        for (i, op) in r.op_responses().into_iter().enumerate() {
            if let TxnOpResponse::Get(g) = op {
                match i {
                    0 => clients = g.count().max(0) as u64,
                    _ => state = g.kvs().first().and_then(|kv| kv.value_str().ok()?.parse().ok()),
                }
            }
        }
        Ok(Drain::Refused { clients, state })
    }

    /// Marks a sleeping host `waking` with the wake's record, if it still
    /// sleeps: of two leaders (one on its way out), one begins the wake.
    pub async fn begin_wake(&self, host: &str, record: &WakeRecord) -> Result<bool, FarmError> {
        let value = serde_json::to_vec(record).expect("a wake record serializes");
        let txn = Txn::new()
            .when([Compare::value(keys::state(host), CompareOp::Equal, HostState::Sleeping.as_str())])
            .and_then([TxnOp::put(keys::state(host), HostState::Waking.as_str(), None), TxnOp::put(keys::waking(host), value, None)]);
        self.txn("begin wake", txn).await
    }

    /// Records a send before it is made, while the host is `waking`: a new
    /// leader then waits for its answer rather than sending at once.
    pub async fn record_send(&self, host: &str, record: &WakeRecord) -> Result<bool, FarmError> {
        let value = serde_json::to_vec(record).expect("a wake record serializes");
        let txn = Txn::new()
            .when([Compare::value(keys::state(host), CompareOp::Equal, HostState::Waking.as_str())])
            .and_then([TxnOp::put(keys::waking(host), value, None)]);
        self.txn("record wake", txn).await
    }

    /// The wake is done: its record goes, `woke` says how it went.
    pub async fn wake_done(&self, host: &str, woke: &Woke) -> Result<(), FarmError> {
        let value = serde_json::to_vec(woke).expect("a wake serializes");
        let txn = Txn::new().and_then([TxnOp::delete(keys::waking(host), None), TxnOp::put(keys::woke(host), value, None)]);
        self.txn("end wake", txn).await.map(drop)
    }

    /// The host could not be woken (if it is still waking or sleeping):
    /// `wake-failed`, and the mark that keeps it from sleeping again.
    pub async fn wake_failed(&self, host: &str, why: &Slept) -> Result<bool, FarmError> {
        let value = serde_json::to_vec(why).expect("a note serializes");
        let txn = Txn::new()
            .when([Compare::value(keys::state(host), CompareOp::NotEqual, HostState::Awake.as_str())])
            .and_then([
                TxnOp::put(keys::state(host), HostState::WakeFailed.as_str(), None),
                TxnOp::put(keys::wake_failed(host), value, None),
                TxnOp::delete(keys::waking(host), None),
            ]);
        self.txn("mark wake failed", txn).await
    }

    /// The farm's mark on a host it could not wake, if any.
    pub async fn wake_failed_mark(&self, host: &str) -> Result<Option<Slept>, FarmError> {
        let key = keys::wake_failed(host);
        let Some(v) = self.get_one("get wake_failed", key.clone()).await? else { return Ok(None) };
        serde_json::from_slice(&v).map(Some).map_err(|e| FarmError::BadValue { key, why: e.to_string() })
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<bool, FarmError> {
        let mut c = self.client.clone();
        self.call(what, async move { c.txn(txn).await }).await.map(|r| r.succeeded())
    }

    /// The VMs `host` runs (the farm's VM→host routing), with no lease: a
    /// sleeping host's VMs are still found on it.
    pub async fn set_vms(&self, host: &str, vms: &[String]) -> Result<(), FarmError> {
        let value = serde_json::to_vec(vms).expect("names serialize");
        self.put("put the host's VMs", keys::vms(host), value, None).await
    }

    pub async fn set_state(&self, host: &str, state: HostState) -> Result<(), FarmError> {
        self.put("put host state", keys::state(host), state.as_str().into(), None).await
    }

    pub async fn state(&self, host: &str) -> Result<Option<HostState>, FarmError> {
        let key = keys::state(host);
        let Some(v) = self.get_one("get host state", key.clone()).await? else { return Ok(None) };
        let text = String::from_utf8_lossy(&v);
        text.parse().map(Some).map_err(|why| FarmError::BadValue { key, why })
    }

    pub async fn wake(&self, host: &str) -> Result<Option<WakeSettings>, FarmError> {
        let key = keys::wake(host);
        let Some(v) = self.get_one("get wake settings", key.clone()).await? else { return Ok(None) };
        serde_json::from_slice(&v).map(Some).map_err(|e| FarmError::BadValue { key, why: e.to_string() })
    }

    /// A client active on `host`, for `ttl` from now unless refreshed: the
    /// key and its own lease, whose id refreshes it.
    pub async fn put_client(&self, host: &str, client: &str, entry: &ClientEntry, ttl: Duration) -> Result<Lease, FarmError> {
        keys::check_segment("host", host).map_err(FarmError::BadName)?;
        keys::check_segment("client", client).map_err(FarmError::BadName)?;
        let lease = self.grant(ttl).await?;
        let value = serde_json::to_vec(entry).expect("a client entry serializes");
        if let Err(e) = self.put("put client", keys::client(host, client), value, Some(lease.id)).await {
            // The lease would hold nothing: let it go now rather than at its TTL.
            let _ = self.revoke(lease.id).await;
            return Err(e);
        }
        Ok(lease)
    }

    /// Restarts a client's timer; false when it had expired (its key is
    /// gone: put it again).
    pub async fn refresh_client(&self, lease: i64) -> Result<bool, FarmError> {
        self.keep_alive(lease).await
    }

    /// A client gone for good (a disconnect seen): its key and lease now.
    pub async fn delete_client(&self, host: &str, client: &str) -> Result<(), FarmError> {
        let key = keys::client(host, client);
        let Some(lease) = self.lease_of(key.clone()).await? else { return Ok(()) };
        self.revoke(lease).await
    }

    async fn lease_of(&self, key: String) -> Result<Option<i64>, FarmError> {
        let mut c = self.client.clone();
        let r = self.call("get client", async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }).await?;
        Ok(r.kvs().first().map(|kv| kv.lease()))
    }

    /// The host's active clients: the keys under its `clients/`, counted by etcd.
    pub async fn client_count(&self, host: &str) -> Result<u64, FarmError> {
        let mut c = self.client.clone();
        let prefix = keys::clients(host);
        let r = self.call("count clients", async move { c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await }).await?;
        Ok(r.count().max(0) as u64)
    }

    /// Every host and the leader, from one read of `hosts/` (one revision).
    pub async fn farm(&self) -> Result<FarmView, FarmError> {
        let mut c = self.client.clone();
        let r = self.call("read hosts", async move { c.get(keys::hosts(), Some(GetOptions::new().with_prefix())).await }).await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let hosts = hosts_from(r.kvs().iter().filter_map(|kv| Some((kv.key_str().ok()?, kv.value()))));
        Ok(FarmView { hosts, leader: self.leader().await?, revision })
    }

    /// Campaigns for the coordinator's leadership as `name`, on `lease`;
    /// returns once this replica leads. Not bounded: it waits for the
    /// leader before it to go (its caller bounds it with its lease).
    pub async fn campaign(&self, name: &str, lease: i64) -> Result<LeaderKey, FarmError> {
        let mut c = self.client.clone();
        let what = "campaign";
        let detail = |e: etcd_client::Error| FarmError::Etcd { endpoints: self.endpoints.clone(), what: what.into(), detail: in_words(&e) };
        let mut r = c.campaign(keys::election(), name, lease).await.map_err(detail)?;
        r.take_leader().ok_or_else(|| FarmError::Etcd { endpoints: self.endpoints.clone(), what: what.into(), detail: "etcd answered without a leader key".into() })
    }

    pub async fn resign(&self, leader: LeaderKey) -> Result<(), FarmError> {
        let mut c = self.client.clone();
        self.call("resign", async move { c.resign(Some(ResignOptions::new().with_leader(leader))).await }).await.map(drop)
    }

    /// The coordinator that leads, by name; None while none does.
    pub async fn leader(&self) -> Result<Option<String>, FarmError> {
        let mut c = self.client.clone();
        match self.call("get leader", async move { c.leader(keys::election()).await }).await {
            Ok(r) => Ok(r.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd says "election: no leader" as an error.
            Err(FarmError::Etcd { detail, .. }) if detail.contains("no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Watches `hosts/` from `revision` on (the one after a `farm()` read,
    /// so no change falls between the read and the watch).
    pub async fn watch_hosts(&self, revision: i64) -> Result<HostWatch, FarmError> {
        self.watch_under(keys::hosts(), revision).await
    }

    /// One host as the store has it, and the revision it was read at.
    pub async fn host(&self, host: &str) -> Result<(HostView, i64), FarmError> {
        let mut c = self.client.clone();
        let prefix = keys::host(host);
        let r = self.call("read host", async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }).await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let view = hosts_from(r.kvs().iter().filter_map(|kv| Some((kv.key_str().ok()?, kv.value())))).into_iter().next();
        Ok((view.unwrap_or(HostView { name: host.to_string(), ..HostView::default() }), revision))
    }

    /// Watches one host's keys from `revision` on.
    pub async fn watch_host(&self, host: &str, revision: i64) -> Result<HostWatch, FarmError> {
        self.watch_under(keys::host(host), revision).await
    }

    async fn watch_under(&self, prefix: String, revision: i64) -> Result<HostWatch, FarmError> {
        let mut c = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = self.call("watch hosts", async move { c.watch(prefix, Some(options)).await }).await?;
        Ok(HostWatch { stream, endpoints: self.endpoints.clone() })
    }
}

/// A watch on `hosts/`; its changes come as they happen (not bounded: it
/// waits for the next change).
pub struct HostWatch {
    stream: WatchStream,
    endpoints: String,
}

impl HostWatch {
    /// The next batch of changes; an error when the watch broke.
    pub async fn changes(&mut self) -> Result<Vec<Change>, FarmError> {
        let broke = |detail: String| FarmError::Etcd { endpoints: self.endpoints.clone(), what: "watch hosts".into(), detail };
        let r = self.stream.message().await.map_err(|e| broke(in_words(&e)))?.ok_or_else(|| broke("the watch ended".into()))?;
        if r.canceled() {
            return Err(broke(format!("the watch was cancelled: {}", r.cancel_reason())));
        }
        Ok(r.events()
            .iter()
            .filter_map(|ev| Some(Change { key: ev.kv()?.key_str().ok()?.to_string(), deleted: ev.event_type() == EventType::Delete }))
            .collect())
    }
}

/// `f` within `timeout`, its failure or its lateness in words.
async fn bounded<T>(endpoints: &str, what: &str, timeout: Duration, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, FarmError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(FarmError::Etcd { endpoints: endpoints.into(), what: what.into(), detail: in_words(&e) }),
        Err(_) => Err(FarmError::Unreachable { endpoints: endpoints.into(), what: what.into(), after: timeout }),
    }
}

/// The shortest interval etcd accepts between a client's pings by default.
const KEEPALIVE_MIN: Duration = Duration::from_secs(5);

/// etcd's error in a few words: gRPC's message ("etcdserver: requested
/// lease not found"), and for a broken connection its first cause ("tcp
/// connect error: Connection refused (os error 111)"), not tonic's debug dump.
fn in_words(e: &etcd_client::Error) -> String {
    use std::error::Error;
    let root = |mut err: &dyn Error| {
        while let Some(next) = err.source() {
            err = next;
        }
        err.to_string()
    };
    match e {
        etcd_client::Error::GRpcStatus(s) if s.source().is_some() => format!("{}: {}", s.message(), root(s)),
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        etcd_client::Error::TransportError(t) => root(t),
        e => e.to_string(),
    }
}
