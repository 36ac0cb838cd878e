//! The farm's keys in etcd (farm research §6), all under `/ebb/v1/`:
//!
//! - `hosts/{h}/member`: the agent's presence, on a lease it keeps alive;
//! - `hosts/{h}/state`: awake | draining | sleeping | waking | wake-failed (no lease: a
//!   sleeping host has no agent to keep one);
//! - `hosts/{h}/wake`: how to wake the host;
//! - `hosts/{h}/slept`: its last sleep, when and why;
//! - `hosts/{h}/waking`: a wake under way (the coordinator's record of it);
//! - `hosts/{h}/woke`: its last wake by the coordinator, how and how long it took;
//! - `hosts/{h}/wake_failed`: set when the farm could not wake it: not put to sleep again;
//! - `hosts/{h}/vms`: the VMs the host runs (the VM→host routing; no lease:
//!   a sleeping host's VMs are still found on it);
//! - `hosts/{h}/clients/{client}`: one key per active client, on a lease whose TTL is the
//!   client's timeout (the seed's timer; the seed's count is the number of keys);
//! - `coordinator`: the election's name.
//!
//! One place builds and reads them, so no key is spelled twice.

/// Every key of the farm starts with this; the version lets a later layout
/// live beside this one during an upgrade.
pub const PREFIX: &str = "/ebb/v1/";

pub fn hosts() -> String {
    format!("{PREFIX}hosts/")
}

/// Every key of one host ends up under this.
pub fn host(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/")
}

pub fn member(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/member")
}

pub fn state(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/state")
}

pub fn wake(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/wake")
}

pub fn slept(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/slept")
}

pub fn waking(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/waking")
}

pub fn woke(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/woke")
}

pub fn wake_failed(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/wake_failed")
}

pub fn vms(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/vms")
}

pub fn clients(host: &str) -> String {
    format!("{PREFIX}hosts/{host}/clients/")
}

pub fn client(host: &str, client: &str) -> String {
    format!("{PREFIX}hosts/{host}/clients/{client}")
}

pub fn election() -> String {
    format!("{PREFIX}coordinator")
}

/// What one key under `hosts/` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKey<'a> {
    Member(&'a str),
    State(&'a str),
    Wake(&'a str),
    Slept(&'a str),
    Waking(&'a str),
    Woke(&'a str),
    WakeFailed(&'a str),
    Vms(&'a str),
    Client { host: &'a str, client: &'a str },
}

/// Reads a key under `hosts/`; None for a key of no known kind (a later
/// version's, or one written by hand), which readers skip.
pub fn parse(key: &str) -> Option<HostKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix("hosts/")?;
    let (host, part) = rest.split_once('/')?;
    if host.is_empty() {
        return None;
    }
    match part {
        "member" => Some(HostKey::Member(host)),
        "state" => Some(HostKey::State(host)),
        "wake" => Some(HostKey::Wake(host)),
        "slept" => Some(HostKey::Slept(host)),
        "waking" => Some(HostKey::Waking(host)),
        "woke" => Some(HostKey::Woke(host)),
        "wake_failed" => Some(HostKey::WakeFailed(host)),
        "vms" => Some(HostKey::Vms(host)),
        _ => {
            let client = part.strip_prefix("clients/")?;
            (!client.is_empty() && !client.contains('/')).then_some(HostKey::Client { host, client })
        }
    }
}

/// Refuses a client name that cannot be one segment of a key.
pub fn check_segment(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(|c: char| c == '/' || c.is_control()) {
        return Err(format!("{what} {name:?} is empty or holds a slash or a control character: it is one segment of an etcd key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_as_what_it_was_built_for() {
        assert_eq!(parse(&member("h1")), Some(HostKey::Member("h1")));
        assert_eq!(parse(&state("h1")), Some(HostKey::State("h1")));
        assert_eq!(parse(&wake("h-2.example")), Some(HostKey::Wake("h-2.example")));
        assert_eq!(parse(&slept("h1")), Some(HostKey::Slept("h1")));
        assert_eq!(parse(&waking("h1")), Some(HostKey::Waking("h1")));
        assert_eq!(parse(&woke("h1")), Some(HostKey::Woke("h1")));
        assert_eq!(parse(&wake_failed("h1")), Some(HostKey::WakeFailed("h1")));
        assert_eq!(parse(&vms("h1")), Some(HostKey::Vms("h1")));
        assert_eq!(parse(&client("h1", "alice@10.0.0.9")), Some(HostKey::Client { host: "h1", client: "alice@10.0.0.9" }));
        assert!(client("h1", "c").starts_with(&clients("h1")));
        assert!(member("h1").starts_with(&hosts()));
    }

    #[test]
    fn foreign_keys_are_skipped() {
        assert_eq!(parse("/ebb/v2/hosts/h1/member"), None);
        assert_eq!(parse("/ebb/v1/hosts/h1/other"), None);
        assert_eq!(parse("/ebb/v1/hosts//member"), None);
        assert_eq!(parse("/ebb/v1/hosts/h1/clients/"), None);
        assert_eq!(parse("/ebb/v1/hosts/h1/clients/a/b"), None);
        assert!(check_segment("client", "a/b").is_err());
        assert!(check_segment("client", "").is_err());
        assert!(check_segment("client", "alice").is_ok());
    }
}
