//! What the keys under `hosts/` say, read into one view per host; and the
//! values ebb writes there. Pure: the store reads the keys, this reads them.

use crate::keys::{self, HostKey};
use ebb_core::clients::ClientKind;
use ebb_core::farm::{HostState, WakeSettings};
use ebb_core::host_wake::WakeRecord;
use ebb_core::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `hosts/{h}/member`'s value: who keeps the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The agent's version.
    pub version: String,
    /// When this membership began (the agent joined or rejoined).
    pub since: Millis,
}

/// `hosts/{h}/clients/{client}`'s value: the VM the client uses, and how it was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    pub vm: String,
    pub kind: ClientKind,
    /// Where the client is, when known (address:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

/// `hosts/{h}/slept`'s value: the host's last sleep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slept {
    pub at: Millis,
    /// Why it slept, in words.
    pub why: String,
}

/// `hosts/{h}/woke`'s value: the host's last wake by the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Woke {
    pub at: Millis,
    /// From the first send to the agent's `awake`.
    pub took_ms: u64,
    /// The method that was taken, and what it did, in words.
    pub by: String,
    pub why: String,
}

/// One host as the store has it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    /// Its agent's membership, while its lease lives.
    pub member: Option<Member>,
    pub state: Option<HostState>,
    pub wake: Option<WakeSettings>,
    /// Its last sleep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slept: Option<Slept>,
    /// A wake under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waking: Option<WakeRecord>,
    /// Its last wake by the coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woke: Option<Woke>,
    /// Why the farm could not wake it: it is not put to sleep again while this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_failed: Option<Slept>,
    /// The VMs it runs, as its agent last wrote them (kept while it sleeps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
    /// Its active clients (one unexpired lease each) and the VM each uses.
    pub clients: BTreeMap<String, ClientEntry>,
    /// Values under its keys that could not be read, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// The farm as etcd has it at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FarmView {
    pub hosts: Vec<HostView>,
    /// The coordinator replica that leads, by its name.
    pub leader: Option<String>,
    /// etcd's revision the view was read at.
    pub revision: i64,
}

/// The host `vm` runs on, by the hosts' `vms` keys: a member's listing
/// before a gone host's (a VM that moved may be listed by both for a while).
pub fn host_of<'a>(vm: &str, hosts: &'a [HostView]) -> Option<&'a HostView> {
    hosts.iter().filter(|h| h.vms.iter().any(|v| v == vm)).max_by_key(|h| h.member.is_some())
}

/// The hosts that keys under `hosts/` (with their values) describe, by
/// name. A value that cannot be read is said on its host, not fatal: one
/// bad key must not hide the farm.
pub fn hosts_from<'a>(kvs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<HostView> {
    let mut hosts: BTreeMap<String, HostView> = BTreeMap::new();
    for (key, value) in kvs {
        let Some(kind) = keys::parse(key) else { continue };
        let name = match &kind {
            HostKey::Member(h)
            | HostKey::State(h)
            | HostKey::Wake(h)
            | HostKey::Slept(h)
            | HostKey::Waking(h)
            | HostKey::Woke(h)
            | HostKey::WakeFailed(h)
            | HostKey::Vms(h)
            | HostKey::Client { host: h, .. } => *h,
        };
        let host = hosts.entry(name.to_string()).or_insert_with(|| HostView { name: name.to_string(), ..HostView::default() });
        let bad = |why: String| format!("{key}: {why}");
        match kind {
            HostKey::Member(_) => match serde_json::from_slice(value) {
                Ok(m) => host.member = Some(m),
                Err(e) => host.unreadable.push(bad(e.to_string())),
            },
            HostKey::State(_) => match std::str::from_utf8(value).map_err(|e| e.to_string()).and_then(str::parse) {
                Ok(s) => host.state = Some(s),
                Err(e) => host.unreadable.push(bad(e)),
            },
            HostKey::Wake(_) => match serde_json::from_slice(value) {
                Ok(w) => host.wake = Some(w),
                Err(e) => host.unreadable.push(bad(e.to_string())),
            },
            HostKey::Slept(_) => read(value, &mut host.slept, &mut host.unreadable, bad),
            HostKey::Waking(_) => read(value, &mut host.waking, &mut host.unreadable, bad),
            HostKey::Woke(_) => read(value, &mut host.woke, &mut host.unreadable, bad),
            HostKey::WakeFailed(_) => read(value, &mut host.wake_failed, &mut host.unreadable, bad),
            HostKey::Vms(_) => match serde_json::from_slice(value) {
                Ok(v) => host.vms = v,
                Err(e) => host.unreadable.push(bad(e.to_string())),
            },
            HostKey::Client { client, .. } => match serde_json::from_slice(value) {
                Ok(c) => {
                    host.clients.insert(client.to_string(), c);
                }
                Err(e) => host.unreadable.push(bad(e.to_string())),
            },
        }
    }
    hosts.into_values().collect()
}

/// A JSON value into `into`, or its error said in `unreadable`.
fn read<T: serde::de::DeserializeOwned>(value: &[u8], into: &mut Option<T>, unreadable: &mut Vec<String>, bad: impl Fn(String) -> String) {
    match serde_json::from_slice(value) {
        Ok(v) => *into = Some(v),
        Err(e) => unreadable.push(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_gather_into_their_hosts_and_bad_values_are_said_not_fatal() {
        let member = serde_json::to_vec(&Member { version: "0.1.0".into(), since: Millis(5) }).unwrap();
        let entry = serde_json::to_vec(&ClientEntry { vm: "web".into(), kind: ClientKind::Heartbeat, remote: None }).unwrap();
        let wake = serde_json::to_vec(&WakeSettings { mac: Some("52:54:00:00:00:01".into()), ..Default::default() }).unwrap();
        let kvs: Vec<(String, Vec<u8>)> = vec![
            (keys::member("h1"), member),
            (keys::state("h1"), b"awake".to_vec()),
            (keys::client("h1", "alice"), entry.clone()),
            (keys::client("h1", "bob"), entry),
            (keys::state("h2"), b"sleeping".to_vec()),
            (keys::wake("h2"), wake),
            (keys::state("h3"), b"dozing".to_vec()),
            ("/ebb/v1/hosts/h1/future-key".into(), b"x".to_vec()),
        ];
        let hosts = hosts_from(kvs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["h1", "h2", "h3"]);
        assert_eq!(hosts[0].member.as_ref().map(|m| m.since), Some(Millis(5)));
        assert_eq!((hosts[0].state, hosts[0].clients.len()), (Some(HostState::Awake), 2));
        assert_eq!((hosts[1].state, hosts[1].member.is_none()), (Some(HostState::Sleeping), true));
        assert_eq!(hosts[1].wake.as_ref().map(|w| w.methods()), Some(vec!["wol"]));
        assert_eq!(hosts[2].state, None);
        assert!(hosts[2].unreadable[0].contains("dozing"), "{:?}", hosts[2].unreadable);
    }
}
