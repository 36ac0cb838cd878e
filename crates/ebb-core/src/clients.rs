//! The clients attached to this host's VMs and their activity timers (seed
//! 002: "track each client device attached to a VM with an activity timer,
//! independently of its connection and of the platform's OS").
//!
//! A client is a console session (libvirt graphics events), a client of a
//! service behind ebb's surrogate, or an agent that sends heartbeats
//! through the API. Each has a TTL: it counts as active while a connection
//! of it is open (`hold`), and for its TTL after its last sign of life
//! (`refresh`, `release`). A host's active-client count is the number of
//! its unexpired timers; the farm's sleep decision reads it.
//!
//! In a farm each active client is a key in the shared store whose lease is
//! its timer (farm research §6); `leases_due` says which leases to refresh
//! now, at most once per TTL/3 per client, so activity does not turn into a
//! write per byte.

use crate::human::{FieldError, Span};
use crate::units::Millis;
use crate::VmId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where a client's activity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A VNC/SPICE session on the VM's console.
    Console,
    /// A client of one of the VM's services through ebb's surrogate.
    Surrogate,
    /// A client agent that says it is there through the API.
    Heartbeat,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Console => "console",
            ClientKind::Surrogate => "surrogate",
            ClientKind::Heartbeat => "heartbeat",
        }
    }
}

impl fmt::Display for ClientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client, as its source names it: the heartbeat's name, a surrogate
/// client's address, a console session's remote address and port. Two
/// sources never share a key, whatever their ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientKey {
    pub kind: ClientKind,
    pub id: String,
}

impl ClientKey {
    pub fn new(kind: ClientKind, id: impl Into<String>) -> ClientKey {
        ClientKey { kind, id: id.into() }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// `[clients]`: each kind's timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsConfig {
    /// A heartbeat's TTL when it gives none…
    pub heartbeat_ttl: Span,
    /// …and the longest it may give: a client agent cannot keep the host
    /// awake for a day with one call.
    pub heartbeat_max_ttl: Span,
    /// How long a console session counts after its viewer disconnects (a
    /// viewer that reconnects at once does not let the host sleep).
    pub console_idle: Span,
    /// How long a surrogate client counts after its last connection closes.
    pub surrogate_idle: Span,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            heartbeat_ttl: Span::from_secs(60),
            heartbeat_max_ttl: Span::from_secs(3600),
            console_idle: Span::from_secs(300),
            surrogate_idle: Span::from_secs(300),
        }
    }
}

impl ClientsConfig {
    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.heartbeat_ttl > self.heartbeat_max_ttl {
            return Err(FieldError::new(
                "clients.heartbeat_ttl",
                format!(
                    "clients.heartbeat_ttl ({}) is longer than clients.heartbeat_max_ttl ({}): the default must be a TTL a client may ask for",
                    self.heartbeat_ttl, self.heartbeat_max_ttl
                ),
            ));
        }
        Ok(())
    }

    /// The TTL of a heartbeat that asks for `asked` (None: the default),
    /// or why it is refused.
    pub fn heartbeat(&self, asked: Option<Span>) -> Result<Span, String> {
        match asked {
            None => Ok(self.heartbeat_ttl),
            Some(t) if t > self.heartbeat_max_ttl => Err(format!(
                "ttl {t} is longer than this host allows (clients.heartbeat_max_ttl = {}): send a shorter one, and send heartbeats more often",
                self.heartbeat_max_ttl
            )),
            Some(t) => Ok(t),
        }
    }

    /// The TTL of a console or surrogate client.
    pub fn ttl(&self, kind: ClientKind) -> Span {
        match kind {
            ClientKind::Console => self.console_idle,
            ClientKind::Surrogate => self.surrogate_idle,
            ClientKind::Heartbeat => self.heartbeat_ttl,
        }
    }
}

/// One client and its timer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    vm: VmId,
    /// Where it comes from, in words ("127.0.0.1:38010"), when known.
    remote: Option<String>,
    ttl: Span,
    last_activity: Millis,
    /// Its connections open now: while any is, the timer does not run.
    open: u32,
}

impl Entry {
    fn expires_at(&self) -> Option<Millis> {
        (self.open == 0).then(|| self.last_activity.plus(self.ttl.as_millis()))
    }

    fn active(&self, now: Millis) -> bool {
        self.expires_at().is_none_or(|at| now < at)
    }
}

/// A console session's news, from libvirt's graphics and lifecycle events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// A viewer finished its handshake (`initialize`: a bare TCP probe
    /// that never shakes hands is no session). `remote` is "address:port".
    Opened { vm: VmId, remote: String },
    /// That viewer disconnected.
    Closed { vm: VmId, remote: String },
    /// The VM stopped (shut down, saved, crashed): its sessions are over,
    /// though libvirt says nothing of them on a save.
    Stopped { vm: VmId },
}

impl ConsoleEvent {
    /// The client a session event is about.
    pub fn key(remote: &str) -> ClientKey {
        ClientKey::new(ClientKind::Console, remote)
    }
}

/// Where a backend hands console events: called on its own thread, so it
/// returns at once (a channel send).
pub type ConsoleSink = std::sync::Arc<dyn Fn(ConsoleEvent) + Send + Sync>;

/// A client as `ebb clients` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    pub kind: ClientKind,
    pub id: String,
    pub vm: VmId,
    pub remote: Option<String>,
    pub ttl_ms: u64,
    pub last_activity: Millis,
    /// Connections (or sessions) open now.
    pub open: u32,
    /// When its timer runs out; None while a connection is open.
    pub expires_at: Option<Millis>,
}

/// Every client of the host's VMs, by key.
#[derive(Clone, Debug, Default)]
pub struct Clients {
    table: BTreeMap<ClientKey, Entry>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    /// A sign of life: the client's timer starts again from `now` with
    /// `ttl` (a new client is added). A client seen for another VM moves
    /// to it: a client is attached to one VM at a time.
    pub fn refresh(&mut self, key: ClientKey, vm: &VmId, remote: Option<String>, ttl: Span, now: Millis) {
        let e = self.entry(key, vm, remote, ttl);
        e.last_activity = e.last_activity.max(now);
    }

    /// A connection of the client opened: it is active until the last one
    /// closes (`release`), then for its TTL.
    pub fn hold(&mut self, key: ClientKey, vm: &VmId, remote: Option<String>, ttl: Span, now: Millis) {
        let e = self.entry(key, vm, remote, ttl);
        e.open += 1;
        e.last_activity = e.last_activity.max(now);
    }

    /// Whether a connection of the client is open now.
    pub fn is_open(&self, key: &ClientKey) -> bool {
        self.table.get(key).is_some_and(|e| e.open > 0)
    }

    /// A connection of the client closed; its timer runs from `now` once
    /// none is left. Unknown clients are ignored (ended meanwhile).
    pub fn release(&mut self, key: &ClientKey, now: Millis) {
        if let Some(e) = self.table.get_mut(key) {
            e.open = e.open.saturating_sub(1);
            e.last_activity = e.last_activity.max(now);
        }
    }

    fn entry(&mut self, key: ClientKey, vm: &VmId, remote: Option<String>, ttl: Span) -> &mut Entry {
        let e = self.table.entry(key).or_insert_with(|| Entry {
            vm: vm.clone(),
            remote: None,
            ttl,
            last_activity: Millis(0),
            open: 0,
        });
        e.vm = vm.clone();
        e.ttl = ttl;
        if remote.is_some() {
            e.remote = remote;
        }
        e
    }

    /// The client is gone now, whatever its timer says (a console
    /// session whose VM was saved). Returns whether it was there.
    pub fn end(&mut self, key: &ClientKey) -> bool {
        self.table.remove(key).is_some()
    }

    /// Ends every client of `vm` of one kind (its consoles when it stops:
    /// a save closes them without a word from libvirt). Returns how many.
    pub fn end_vm(&mut self, vm: &VmId, kind: ClientKind) -> usize {
        let before = self.table.len();
        self.table.retain(|k, e| !(k.kind == kind && e.vm == *vm));
        before - self.table.len()
    }

    /// Drops the clients whose timer ran out by `now`, and returns them
    /// (in a farm, their keys go from the shared store).
    pub fn expire(&mut self, now: Millis) -> Vec<ClientKey> {
        let gone: Vec<ClientKey> = self.table.iter().filter(|(_, e)| !e.active(now)).map(|(k, _)| k.clone()).collect();
        for k in &gone {
            self.table.remove(k);
        }
        gone
    }

    /// The connections of one kind open now are exactly `open` (after a
    /// source's events were missed, as across a reconnect to libvirt): a
    /// client held open but not listed is released (its timer runs from
    /// `now`), a listed one not held is held.
    pub fn reconcile(&mut self, kind: ClientKind, open: &[(ClientKey, VmId, Option<String>)], ttl: Span, now: Millis) {
        let listed: std::collections::BTreeSet<&ClientKey> = open.iter().map(|(k, _, _)| k).collect();
        for (_, e) in self.table.iter_mut().filter(|(k, e)| k.kind == kind && e.open > 0 && !listed.contains(k)) {
            e.open = 0;
            e.last_activity = e.last_activity.max(now);
        }
        for (key, vm, remote) in open {
            if key.kind == kind && self.table.get(key).is_none_or(|e| e.open == 0) {
                self.hold(key.clone(), vm, remote.clone(), ttl, now);
            }
        }
    }

    /// The host's active clients at `now`: the number of unexpired timers.
    pub fn active(&self, now: Millis) -> usize {
        self.table.values().filter(|e| e.active(now)).count()
    }

    /// Each VM's active clients at `now` (VMs without any left out).
    pub fn active_per_vm(&self, now: Millis) -> BTreeMap<VmId, usize> {
        let mut out = BTreeMap::new();
        for e in self.table.values().filter(|e| e.active(now)) {
            *out.entry(e.vm.clone()).or_default() += 1;
        }
        out
    }

    /// The active clients at `now`, by key.
    pub fn views(&self, now: Millis) -> Vec<ClientView> {
        self.table
            .iter()
            .filter(|(_, e)| e.active(now))
            .map(|(k, e)| ClientView {
                kind: k.kind,
                id: k.id.clone(),
                vm: e.vm.clone(),
                remote: e.remote.clone(),
                ttl_ms: e.ttl.as_millis(),
                last_activity: e.last_activity,
                open: e.open,
                expires_at: e.expires_at(),
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "clients_tests.rs"]
mod tests;
