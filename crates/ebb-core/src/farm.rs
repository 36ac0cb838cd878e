//! The farm's shared words (seed 002, issue 11): `[farm]`, where the farm's
//! store (etcd) is and how long a host's membership outlives its agent, and
//! the states a host goes through. The store itself is `ebb-farm`'s; these
//! are plain data, so the coming sleep policy can decide on them here.

use crate::host_sleep::HostSleepConfig;
use crate::human::{FieldError, Span};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// etcd grants no lease under 2 s with its default election timeout (a
/// lease asked for 1 s is granted 2 s), so a shorter TTL would be a lie.
pub const MIN_LEASE_TTL: Span = Span::from_secs(2);

/// `[farm]`: the agent joins the farm (and `ebb coord`, `ebb farm` find it)
/// through these etcd endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmConfig {
    /// etcd's client URLs, `http://host:port`; any one that answers serves.
    pub endpoints: Vec<String>,
    /// This host's name in the farm; default: the machine's hostname.
    #[serde(default)]
    pub host: Option<String>,
    /// How long the host stays a member after its agent last spoke: the
    /// membership lease's TTL, kept alive every third of it. Whole seconds
    /// (etcd's leases are), at least 2 s.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Span,
    /// The longest any one call to etcd may take; an etcd that does not
    /// answer in time is reported unreachable, never waited on.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// How the farm wakes this host; a host with none is never put to sleep.
    #[serde(default)]
    pub wake: WakeSettings,
    /// `[farm.sleep]`: when the host sleeps; absent, it never does.
    #[serde(default)]
    pub sleep: Option<HostSleepConfig>,
    /// The coordinator sends a wake again when the host has not said it is
    /// awake this long after the last send…
    #[serde(default = "default_wake_resend")]
    pub wake_resend: Span,
    /// …and gives up this long after the first: the host is marked
    /// `wake-failed` and its waiting clients refused.
    #[serde(default = "default_wake_give_up")]
    pub wake_give_up: Span,
    /// The coordinator's BMC login for IPMI and Redfish (the same on every
    /// host), and the file that holds its password (kept out of the config
    /// and of etcd).
    #[serde(default)]
    pub bmc_user: Option<String>,
    #[serde(default)]
    pub bmc_password_file: Option<std::path::PathBuf>,
    /// Redfish over https: accept the BMC's certificate unchecked (most
    /// ship a self-signed one). Off: it must chain to a CA in /etc/ssl/certs.
    #[serde(default)]
    pub bmc_insecure_tls: bool,
}

fn default_wake_resend() -> Span {
    Span::from_secs(30)
}

fn default_wake_give_up() -> Span {
    Span::from_secs(300)
}

fn default_lease_ttl() -> Span {
    Span::from_secs(10)
}

fn default_timeout() -> Span {
    Span::from_secs(2)
}

impl FarmConfig {
    /// The section with only its endpoints given: every other field its default.
    pub fn with_endpoints(endpoints: Vec<String>) -> FarmConfig {
        FarmConfig {
            endpoints,
            host: None,
            lease_ttl: default_lease_ttl(),
            timeout: default_timeout(),
            wake: WakeSettings::default(),
            sleep: None,
            wake_resend: default_wake_resend(),
            wake_give_up: default_wake_give_up(),
            bmc_user: None,
            bmc_password_file: None,
            bmc_insecure_tls: false,
        }
    }

    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.endpoints.is_empty() {
            return Err(FieldError::new("farm.endpoints", "farm.endpoints is empty: give etcd's client URLs, e.g. [\"http://10.0.0.5:2379\"]"));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            endpoint(e).map_err(|why| FieldError::new(format!("farm.endpoints[{i}]"), format!("farm.endpoints[{i}] = {e:?} {why}")))?;
        }
        if let Some(h) = &self.host {
            host_name(h).map_err(|why| FieldError::new("farm.host", format!("farm.host = {h:?} {why}")))?;
        }
        let ttl = self.lease_ttl;
        if ttl < MIN_LEASE_TTL || !ttl.as_millis().is_multiple_of(1000) {
            return Err(FieldError::new(
                "farm.lease_ttl",
                format!("farm.lease_ttl = {ttl} is not a lease etcd grants: give whole seconds, at least {MIN_LEASE_TTL}"),
            ));
        }
        if self.timeout >= ttl {
            return Err(FieldError::new(
                "farm.timeout",
                format!("farm.timeout ({}) must be shorter than farm.lease_ttl ({ttl}): a keep-alive that waits longer than the lease lets it expire", self.timeout),
            ));
        }
        self.wake.validate()?;
        if self.wake_give_up <= self.wake_resend {
            return Err(FieldError::new(
                "farm.wake_give_up",
                format!("farm.wake_give_up ({}) must be longer than farm.wake_resend ({}): a wake is given up only after it was sent again", self.wake_give_up, self.wake_resend),
            ));
        }
        if self.bmc_user.is_some() != self.bmc_password_file.is_some() {
            return Err(FieldError::new("farm.bmc_user", "farm.bmc_user and farm.bmc_password_file go together: IPMI and Redfish need both"));
        }
        if let Some(sleep) = &self.sleep {
            sleep.validate()?;
        }
        Ok(())
    }

    /// The coordinator's wake timing.
    pub fn wake_timing(&self) -> crate::host_wake::WakeTiming {
        crate::host_wake::WakeTiming { resend: self.wake_resend, give_up: self.wake_give_up }
    }

    /// The lease TTL in etcd's unit.
    pub fn lease_secs(&self) -> i64 {
        (self.lease_ttl.as_millis() / 1000) as i64
    }
}

/// Refuses an endpoint that is not `http://host:port`.
pub fn endpoint(url: &str) -> Result<(), &'static str> {
    if url.starts_with("https://") {
        return Err("is https: ebb speaks to etcd over plain http for now (keep etcd on a trusted network)");
    }
    let rest = url.strip_prefix("http://").ok_or("does not start with http://")?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or("has no port: write http://host:port")?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("has no host, or a host with spaces or slashes");
    }
    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or("has a port that is not a number from 1 to 65535")?;
    Ok(())
}

/// Refuses a host name that cannot be one segment of an etcd key.
pub fn host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("must have 1 to 253 characters");
    }
    if name.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err("holds a slash, a space or a control character (it is one segment of the farm's etcd keys)");
    }
    Ok(())
}

/// `[farm.wake]`, and `hosts/{h}/wake`'s value: the ways this host can be woken (DPM's
/// order: IPMI, then Redfish, then Wake-on-LAN). No secret is kept here:
/// credentials stay in the coordinator's own config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeSettings {
    /// The BMC's address for IPMI over LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<String>,
    /// The Redfish system's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish: Option<String>,
    /// The NIC's MAC for a Wake-on-LAN magic packet, and where to send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<String>,
}

impl WakeSettings {
    /// The methods set, in the order they are tried.
    pub fn methods(&self) -> Vec<&'static str> {
        [(self.ipmi.is_some(), "ipmi"), (self.redfish.is_some(), "redfish"), (self.mac.is_some(), "wol")]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect()
    }

    /// The section's rules; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let field = |name: &str, why: &str| FieldError::new(format!("farm.wake.{name}"), format!("farm.wake.{name} {why}"));
        if let Some(a) = &self.ipmi {
            if a.is_empty() || a.contains(char::is_whitespace) {
                return Err(field("ipmi", "is not a BMC address: give its host or host:port, e.g. \"10.0.0.21\""));
            }
        }
        if let Some(u) = &self.redfish {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
                return Err(field("redfish", "is not a Redfish system's URL, e.g. \"http://10.0.0.21:8000/redfish/v1/Systems/UUID\""));
            }
        }
        if let Some(m) = &self.mac {
            mac(m).map_err(|why| field("mac", &format!("= {m:?} {why}")))?;
        }
        if let Some(b) = &self.broadcast {
            let ok = b.parse::<std::net::Ipv4Addr>().is_ok() || b.parse::<std::net::SocketAddrV4>().is_ok();
            if !ok {
                return Err(field("broadcast", &format!("= {b:?} is not an IPv4 broadcast address (ADDR or ADDR:PORT), e.g. \"10.0.0.255\"")));
            }
        }
        if self.broadcast.is_some() && self.mac.is_none() {
            return Err(field("broadcast", "is set without farm.wake.mac: a Wake-on-LAN packet needs the NIC's MAC"));
        }
        Ok(())
    }
}

/// Reads a MAC address written `52:54:00:12:34:56` (or with dashes).
pub fn mac(s: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let bytes: Vec<u8> = parts.iter().filter_map(|p| (p.len() == 2).then(|| u8::from_str_radix(p, 16).ok()).flatten()).collect();
    <[u8; 6]>::try_from(bytes).ok().filter(|_| parts.len() == 6).ok_or("is not a MAC address: six hex pairs, e.g. 52:54:00:12:34:56")
}

/// Where a host is in its sleep cycle, as the farm's store holds it
/// (`hosts/{h}/state`): written by the host's agent before it sleeps, by
/// the coordinator when it wakes the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    Awake,
    Draining,
    Sleeping,
    Waking,
    WakeFailed,
}

impl HostState {
    pub const ALL: [HostState; 5] = [HostState::Awake, HostState::Draining, HostState::Sleeping, HostState::Waking, HostState::WakeFailed];

    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Awake => "awake",
            HostState::Draining => "draining",
            HostState::Sleeping => "sleeping",
            HostState::Waking => "waking",
            HostState::WakeFailed => "wake-failed",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HostState {
    type Err = String;
    fn from_str(s: &str) -> Result<HostState, String> {
        HostState::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a host state (awake, draining, sleeping, waking, wake-failed)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str]) -> FarmConfig {
        FarmConfig::with_endpoints(endpoints.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn endpoints_must_be_http_urls_with_a_port() {
        assert!(cfg(&["http://127.0.0.1:2379", "http://etcd-2.example:2379/"]).validate().is_ok());
        let e = cfg(&[]).validate().unwrap_err();
        assert_eq!(e.field, "farm.endpoints");
        let e = cfg(&["http://a:2379", "10.0.0.1:2379"]).validate().unwrap_err();
        assert_eq!(e.field, "farm.endpoints[1]");
        assert!(e.message.contains("http://"), "{e}");
        assert!(cfg(&["http://a"]).validate().unwrap_err().message.contains("no port"));
        assert!(cfg(&["http://a:0"]).validate().unwrap_err().message.contains("1 to 65535"));
        assert!(cfg(&["https://a:2379"]).validate().unwrap_err().message.contains("plain http"));
    }

    #[test]
    fn the_lease_is_whole_seconds_from_two_and_outlasts_a_call() {
        let mut c = cfg(&["http://a:1"]);
        c.lease_ttl = Span::from_millis(1500);
        assert_eq!(c.validate().unwrap_err().field, "farm.lease_ttl");
        c.lease_ttl = Span::from_millis(2500);
        assert!(c.validate().unwrap_err().message.contains("whole seconds"));
        c.lease_ttl = Span::from_secs(2);
        assert_eq!(c.validate().unwrap_err().field, "farm.timeout", "the default 2s timeout is not shorter than a 2s lease");
        c.timeout = Span::from_millis(500);
        assert!(c.validate().is_ok());
        assert_eq!(c.lease_secs(), 2);
    }

    #[test]
    fn a_host_name_is_one_key_segment() {
        let mut c = cfg(&["http://a:1"]);
        c.host = Some("rack1/h2".into());
        assert_eq!(c.validate().unwrap_err().field, "farm.host");
        c.host = Some(String::new());
        assert!(c.validate().is_err());
        c.host = Some("h2.example".into());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn wake_methods_are_checked_by_field() {
        let mut c = cfg(&["http://a:1"]);
        c.wake.mac = Some("52:54:00:12:34:5".into());
        assert_eq!(c.validate().unwrap_err().field, "farm.wake.mac");
        c.wake.mac = Some("52-54-00-12-34-56".into());
        assert!(c.validate().is_ok());
        assert_eq!(mac("52:54:00:12:34:56"), Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        c.wake.redfish = Some("10.0.0.2/redfish".into());
        assert_eq!(c.validate().unwrap_err().field, "farm.wake.redfish");
        c.wake.redfish = None;
        c.wake.mac = None;
        c.wake.broadcast = Some("10.0.0.255".into());
        assert_eq!(c.validate().unwrap_err().field, "farm.wake.broadcast");
        c.wake.mac = Some("52:54:00:12:34:56".into());
        c.wake.broadcast = Some("10.0.0.255/24".into());
        assert!(c.validate().unwrap_err().message.contains("not an IPv4 broadcast"));
        c.wake.broadcast = Some("10.0.0.255:7".into());
        assert!(c.validate().is_ok());
        c.wake.mac = None;
        c.wake.broadcast = None;
        c.wake.ipmi = Some("10.0.0.21:623".into());
        assert_eq!(c.wake.methods(), ["ipmi"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn host_states_read_back_as_written() {
        for s in HostState::ALL {
            assert_eq!(s.as_str().parse::<HostState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("asleep".parse::<HostState>().unwrap_err().contains("wake-failed"));
    }
}
