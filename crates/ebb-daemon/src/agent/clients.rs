//! Glue to the client timers (`ebb_core::clients`): heartbeats from the API,
//! service clients from the surrogate's events, console sessions from
//! libvirt's graphics events; expiry at each tick.

use super::*;
use crate::api_types::{Heartbeat, VmInfo};
use ebb_core::clients::{ClientKey, ClientKind, ClientView, ConsoleEvent, ConsoleSink};
use tracing::{debug, info, warn};

/// The longest client name a heartbeat may give, in characters.
const NAME_MAX: usize = 128;

impl Agent {
    /// A heartbeat through the API: the client `name` is attached to `vm`
    /// and active for its TTL (the config's when it gives none).
    pub(super) fn heartbeat(&mut self, name: String, hb: Heartbeat) -> Result<ClientView, CommandError> {
        let at = self.clock.now();
        check_name(&name).map_err(CommandError::BadRequest)?;
        let ttl = self.cfg.clients.heartbeat(hb.ttl).map_err(CommandError::BadRequest)?;
        let vm = VmId::new(hb.vm);
        if !self.vms.states.contains_key(&vm) {
            return Err(CommandError::UnknownVm(vm));
        }
        let key = ClientKey::new(ClientKind::Heartbeat, name);
        debug!(vm = %vm, client = %key, %ttl, "heartbeat");
        self.clients.refresh(key.clone(), &vm, None, ttl, at);
        self.republish();
        let view = self.clients.views(at).into_iter().find(|v| v.kind == key.kind && v.id == key.id);
        view.ok_or_else(|| CommandError::Failed("the heartbeat was taken but its client is not listed".into()))
    }

    /// A client connection through the surrogate opened (`open`) or closed.
    /// Its client is its address: one device, however many connections.
    pub(super) fn surrogate_client(&mut self, vm: &VmId, peer: std::net::SocketAddr, open: bool) {
        let at = self.clock.now();
        let key = ClientKey::new(ClientKind::Surrogate, peer.ip().to_string());
        if open {
            let ttl = self.cfg.clients.ttl(ClientKind::Surrogate);
            self.clients.hold(key, vm, Some(peer.ip().to_string()), ttl, at);
        } else {
            self.clients.release(&key, at);
        }
    }

    /// After each (re)connect: console events from now on, and the
    /// sessions open now in place of what was missed meanwhile (libvirt
    /// does not replay events).
    pub(super) async fn watch_consoles(&mut self) {
        let tx = self.consoles.0.clone();
        let sink: ConsoleSink = std::sync::Arc::new(move |ev| {
            // Unbounded: libvirt's event thread never waits on the agent.
            let _ = tx.send(ev);
        });
        let found = self.with_hv(move |hv| Ok::<_, ebb_backends::HvError>(if hv.watch_consoles(sink)? { Some(hv.console_sessions()?) } else { None })).await;
        let open = match found {
            Some(Ok(Some(open))) => open,
            Some(Ok(None)) | None => return,
            Some(Err(e)) => return warn!("console sessions are not seen on this connection: {e}"),
        };
        let open: Vec<_> = open
            .into_iter()
            .filter(|(vm, _)| self.cfg.agent.is_ebbs(vm.as_str()))
            .map(|(vm, remote)| (ConsoleEvent::key(&remote), vm, Some(remote)))
            .collect();
        info!(sessions = open.len(), "watching console sessions");
        let ttl = self.cfg.clients.ttl(ClientKind::Console);
        self.clients.reconcile(ClientKind::Console, &open, ttl, self.clock.now());
    }

    /// A console session began or ended, or a VM stopped (a save closes
    /// its viewers without a disconnect event).
    pub(super) fn console_event(&mut self, ev: ConsoleEvent) {
        let at = self.clock.now();
        match ev {
            // The consoles of domains that are not ebb's (`agent.domains`) are not its business.
            ConsoleEvent::Opened { vm, .. } if !self.cfg.agent.is_ebbs(vm.as_str()) => return,
            ConsoleEvent::Opened { vm, remote } => {
                let key = ConsoleEvent::key(&remote);
                info!(vm = %vm, remote, "console session");
                // Once: the session may be known already from a reconcile.
                if !self.clients.is_open(&key) {
                    self.clients.hold(key, &vm, Some(remote), self.cfg.clients.ttl(ClientKind::Console), at);
                }
            }
            ConsoleEvent::Closed { vm, remote } => {
                info!(vm = %vm, remote, "console session closed");
                self.clients.release(&ConsoleEvent::key(&remote), at);
            }
            ConsoleEvent::Stopped { vm } => {
                let n = self.clients.end_vm(&vm, ClientKind::Console);
                if n > 0 {
                    info!(vm = %vm, sessions = n, "the VM stopped: its console sessions are over");
                }
            }
        }
        self.republish();
    }

    /// Drops the timers that ran out (at each tick).
    pub(super) fn expire_clients(&mut self, at: Millis) {
        for gone in self.clients.expire(at) {
            info!(client = %gone, "client inactive: its timer ran out");
        }
    }

    /// What `ebb clients` and the status show.
    pub(super) fn client_views(&self, at: Millis) -> Vec<ClientView> {
        self.clients.views(at)
    }
}

/// A client name is one path segment people read in `ebb clients`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the client name is empty: name the client in the path, /v1/clients/NAME/heartbeat".into());
    }
    if name.chars().count() > NAME_MAX {
        return Err(format!("the client name is longer than {NAME_MAX} characters"));
    }
    // The farm keeps each client as one segment of an etcd key: a name the
    // farm cannot hold would be active here and never counted there.
    if let Err(why) = ebb_farm::keys::check_segment("the client name", name) {
        return Err(format!("{why}: use letters, digits and -_.:"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("the client name {:?} holds spaces or control characters: use letters, digits and -_.:", name));
    }
    Ok(())
}

impl Agent {
    /// The VMs this host runs, for the farm link to keep in the host's
    /// `vms` key (the gateway's routing); a change wakes the link.
    pub(super) fn offer_vms_to_farm(&self, vms: &[VmInfo]) {
        ebb_farm::replace_if_changed(&self.farm_vms, Some(vms.iter().map(|v| v.name.clone()).collect()));
    }

    /// The active clients, for the farm link to keep one leased key each in
    /// etcd (the seed's timer); a change wakes the link, a repeat does not.
    pub(super) fn offer_clients_to_farm(&self, views: &[ClientView]) {
        let active = views.iter().map(|v| (ClientKey::new(v.kind, v.id.clone()).to_string(), ebb_farm::mirror::entry_of(v))).collect();
        ebb_farm::replace_if_changed(&self.farm_clients, active);
    }
}
