//! The coordinator's gateway (seed 002): it serves the services of the
//! farm's VMs (`[gateway.VM]`) with the surrogate's code, so a client of a
//! VM whose host sleeps is taken at once and held. Each client it holds or
//! splices is an active client of that host, one leased key under the
//! host's `clients/` (as the agent keeps its own): the leader sees a
//! sleeping host with a client and wakes it, and the host cannot go to
//! sleep under a client held here. When the host says `awake` the held
//! clients are replayed to the VM and spliced once it answers, losing
//! nothing; when the farm gives the wake up, they are refused with why.

use crate::error::FarmError;
use crate::now;
use crate::member::backoff;
use crate::mirror::{self, ActiveClients};
use crate::store::Store;
use crate::view::{host_of, HostView};
use ebb_core::clients::{ClientKey, ClientKind, Clients};
use ebb_core::farm::HostState;
use ebb_core::human::Span;
use ebb_core::{Millis, VmId};
use ebb_surrogate::{Limits, ServiceSpec, Surrogate, SurrogateError, SurrogateEvent, VmPower};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// One VM the gateway serves: its host, and its services (the listen
/// address is the gateway's, the backend the VM's as reached from here).
#[derive(Debug, Clone)]
pub struct GatewayVm {
    pub vm: VmId,
    /// Its host as configured; None: the host whose agent lists it in etcd.
    pub host: Option<String>,
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub endpoints: Vec<String>,
    pub timeout: Duration,
    pub vms: Vec<GatewayVm>,
    pub limits: Limits,
    /// How long a client counts after its connection closes.
    pub client_idle: Span,
}

/// What a host's state means for the clients of its VMs here.
pub fn power_of(host: Option<&HostView>) -> VmPower {
    match host.and_then(|h| h.state) {
        Some(HostState::Awake) => VmPower::Awake,
        Some(HostState::Waking) => VmPower::Waking,
        Some(HostState::WakeFailed) => {
            let why = host.and_then(|h| h.wake_failed.as_ref()).map_or("the farm could not wake it".to_string(), |m| m.why.clone());
            VmPower::WakeFailed(format!("the VM's host {} could not be woken: {why}", host.map_or("", |h| h.name.as_str())))
        }
        // Asleep, going to sleep, or not known yet: hold the client.
        _ => VmPower::Asleep,
    }
}

/// The host a VM here runs on: as configured, else as etcd routes it.
pub fn route(configured: Option<&str>, vm: &VmId, hosts: &[HostView]) -> Option<String> {
    configured.map(String::from).or_else(|| host_of(vm.as_str(), hosts).map(|h| h.name.clone()))
}

/// Each host's clients here, kept in etcd by a mirror of their own.
struct Mirrors {
    endpoints: Vec<String>,
    timeout: Duration,
    by_host: BTreeMap<String, watch::Sender<ActiveClients>>,
}

impl Mirrors {
    /// Starts `host`'s mirror unless it runs.
    fn ensure(&mut self, host: &str) {
        if !self.by_host.contains_key(host) {
            let (tx, rx) = watch::channel(ActiveClients::new());
            tokio::spawn(mirror_host(self.endpoints.clone(), self.timeout, host.to_string(), rx));
            self.by_host.insert(host.to_string(), tx);
        }
    }

    /// Each host's active clients here, by where its VMs are routed now
    /// (a change wakes its mirror).
    fn offer(&self, tables: &BTreeMap<VmId, Clients>, routes: &BTreeMap<VmId, Option<String>>, at: Millis) {
        let mut per_host: BTreeMap<&str, ActiveClients> = BTreeMap::new();
        for (vm, table) in tables {
            let Some(Some(host)) = routes.get(vm) else { continue };
            let active = per_host.entry(host.as_str()).or_default();
            for v in table.views(at) {
                active.insert(v.id.clone(), mirror::entry_of(&v));
            }
        }
        for (host, tx) in &self.by_host {
            crate::replace_if_changed(tx, per_host.remove(host.as_str()).unwrap_or_default());
        }
    }
}

/// Binds every service, then serves until `shutdown`. A service that
/// cannot be bound is an error at once; etcd going away is waited out.
pub async fn run(s: GatewaySettings, shutdown: impl Future<Output = ()>) -> Result<(), SurrogateError> {
    let (mut surrogate, mut events) = Surrogate::new(s.limits.clone());
    for v in &s.vms {
        surrogate.add_vm(v.vm.clone(), v.services.clone(), VmPower::Asleep)?;
        let host = v.host.as_deref().map_or("where etcd routes it".to_string(), |h| format!("of host {h}"));
        info!("gateway: serving {} {host} ({})", v.vm, v.services.iter().map(|sv| format!("{} on {}", sv.name, sv.listen)).collect::<Vec<_>>().join(", "));
    }
    let configured: BTreeMap<VmId, Option<String>> = s.vms.iter().map(|v| (v.vm.clone(), v.host.clone())).collect();
    let mut routes = configured.clone();
    // One table per VM: a client is counted on whatever host its VM is
    // routed to, also when the route is learnt after the client came.
    let mut tables: BTreeMap<VmId, Clients> = s.vms.iter().map(|v| (v.vm.clone(), Clients::new())).collect();
    let mut mirrors = Mirrors { endpoints: s.endpoints.clone(), timeout: s.timeout, by_host: BTreeMap::new() };
    for host in routes.values().flatten() {
        mirrors.ensure(host);
    }
    let (farm_tx, mut farm) = watch::channel(Vec::<HostView>::new());
    tokio::spawn(follow_farm(s.endpoints.clone(), s.timeout, farm_tx));
    let mut expire = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(ev) = events.recv() => {
                let at = now();
                let open = matches!(ev, SurrogateEvent::ClientOpened { .. });
                match ev {
                    SurrogateEvent::ClientOpened { vm, peer, .. } | SurrogateEvent::ClientClosed { vm, peer, .. } => {
                        let Some(table) = tables.get_mut(&vm) else { continue };
                        let key = ClientKey::new(ClientKind::Surrogate, format!("gateway:{}", peer.ip()));
                        if open {
                            table.hold(key, &vm, Some(peer.to_string()), s.client_idle, at);
                        } else {
                            table.release(&key, at);
                        }
                    }
                    SurrogateEvent::WakeNeeded { vm, service, .. } => match routes.get(&vm).cloned().flatten() {
                        Some(host) => info!("gateway: a client of {vm} ({service}) waits for host {host}"),
                        None => warn!("gateway: a client of {vm} ({service}) waits, but no host lists {vm} in etcd yet (hosts/*/vms): it is held until one does"),
                    },
                    SurrogateEvent::Refused { vm, service, why } => warn!("gateway: a client of {vm} ({service}) refused: {why}"),
                    _ => {}
                }
                mirrors.offer(&tables, &routes, at);
            }
            _ = expire.tick() => {
                let at = now();
                for table in tables.values_mut() {
                    table.expire(at);
                }
                mirrors.offer(&tables, &routes, at);
            }
            Ok(()) = farm.changed() => {
                let hosts = farm.borrow_and_update().clone();
                for (vm, conf) in &configured {
                    let host = route(conf.as_deref(), vm, &hosts);
                    if routes.get(vm) != Some(&host) {
                        match &host {
                            Some(h) => {
                                info!("gateway: {vm} is on host {h}");
                                mirrors.ensure(h);
                            }
                            None => warn!("gateway: no host lists {vm} in etcd any more (hosts/*/vms)"),
                        }
                        routes.insert(vm.clone(), host.clone());
                    }
                    let power = power_of(host.as_ref().and_then(|h| hosts.iter().find(|v| &v.name == h)));
                    if surrogate.state(vm).as_ref() != Some(&power) {
                        info!("gateway: {vm} on host {}: {power}", host.as_deref().unwrap_or("?"));
                        if let Err(e) = surrogate.set_state(vm, power) {
                            warn!("gateway: {vm}: {e}");
                        }
                    }
                }
                mirrors.offer(&tables, &routes, now());
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// Keeps one host's clients here in etcd, reconnecting with backoff.
async fn mirror_host(endpoints: Vec<String>, timeout: Duration, host: String, mut wanted: watch::Receiver<ActiveClients>) {
    let mut attempts = 0;
    loop {
        let error = match Store::connect(&endpoints, timeout).await {
            Ok(store) => {
                attempts = 0;
                mirror::follow(&store, &host, &mut wanted).await
            }
            Err(e) => e,
        };
        attempts += 1;
        warn!("gateway: the clients of host {host} are not in etcd: {error}; next try in {} s", backoff(attempts).as_secs());
        tokio::time::sleep(backoff(attempts)).await;
    }
}

/// Keeps `tx` at the farm's hosts, reconnecting with backoff.
async fn follow_farm(endpoints: Vec<String>, timeout: Duration, tx: watch::Sender<Vec<HostView>>) {
    let mut attempts = 0;
    loop {
        let error = match watch_farm(&endpoints, timeout, &tx).await {
            Ok(never) => match never {},
            Err(e) => e,
        };
        attempts += 1;
        warn!("gateway: the farm's state is not followed: {error}; next try in {} s", backoff(attempts).as_secs());
        tokio::time::sleep(backoff(attempts)).await;
    }
}

async fn watch_farm(endpoints: &[String], timeout: Duration, tx: &watch::Sender<Vec<HostView>>) -> Result<std::convert::Infallible, FarmError> {
    let store = Store::connect(endpoints, timeout).await?;
    let view = store.farm().await?;
    let mut watch = store.watch_hosts(view.revision + 1).await?;
    tx.send_replace(view.hosts);
    loop {
        watch.changes().await?;
        tx.send_replace(store.farm().await?.hosts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Slept;

    #[test]
    fn a_hosts_state_says_whether_its_vms_clients_are_spliced_held_or_refused() {
        let mut h = HostView { name: "h1".into(), state: Some(HostState::Awake), ..Default::default() };
        assert_eq!(power_of(Some(&h)), VmPower::Awake);
        for (s, p) in [(HostState::Sleeping, VmPower::Asleep), (HostState::Draining, VmPower::Asleep), (HostState::Waking, VmPower::Waking)] {
            h.state = Some(s);
            assert_eq!(power_of(Some(&h)), p);
        }
        assert_eq!(power_of(None), VmPower::Asleep, "a host not known yet: held, not refused");
        h.state = Some(HostState::WakeFailed);
        h.wake_failed = Some(Slept { at: Millis(0), why: "no answer within 5m".into() });
        assert_eq!(power_of(Some(&h)), VmPower::WakeFailed("the VM's host h1 could not be woken: no answer within 5m".into()));
    }

    #[test]
    fn a_vm_is_routed_as_configured_else_to_the_host_that_lists_it_a_member_first() {
        let host = |name: &str, vms: &[&str], member: bool| HostView {
            name: name.into(),
            vms: vms.iter().map(|v| v.to_string()).collect(),
            member: member.then(|| crate::view::Member { version: "t".into(), since: Millis(0) }),
            ..Default::default()
        };
        let web = VmId::new("web");
        assert_eq!(route(None, &web, &[]), None, "listed nowhere: no host yet");
        let hosts = [host("h1", &["db"], true), host("h2", &["web"], false)];
        assert_eq!(route(None, &web, &hosts).as_deref(), Some("h2"), "a sleeping host's VMs are still found on it");
        assert_eq!(route(Some("h9"), &web, &hosts).as_deref(), Some("h9"), "the config wins");
        // Moved: listed by its old host (gone) and its new one (a member).
        let moved = [host("h1", &["web"], true), host("h2", &["web"], false)];
        assert_eq!(route(None, &web, &moved).as_deref(), Some("h1"));
        let moved = [host("h1", &["web"], false), host("h2", &["web"], true)];
        assert_eq!(route(None, &web, &moved).as_deref(), Some("h2"));
    }
}
