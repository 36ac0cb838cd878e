//! The farm in the CLI's words: the agent's link in `ebb status`, `[farm]`
//! in `ebb check`.

use ebb_core::farm::FarmConfig;
use ebb_daemon::words::clock;
use ebb_farm::{LinkState, LinkStatus};

/// The farm link in `ebb status`: one line.
pub fn link_line(l: &LinkStatus) -> String {
    let state = match &l.state {
        LinkState::Joining { since } => format!("joining since {} UTC", clock(*since)),
        LinkState::Member { since, etcd_version, lease_ttl_s } => {
            format!("member since {} UTC (etcd {etcd_version}, lease {lease_ttl_s} s)", clock(*since))
        }
        LinkState::Disconnected { error, attempts, next_try_at, .. } => {
            format!("NOT A MEMBER ({error}); {attempts} attempts, next at {} UTC", clock(*next_try_at))
        }
        LinkState::Left => "left".into(),
    };
    format!("farm: host {} at {}: {state}\n", l.host, l.endpoints)
}

/// `[farm]` in `ebb check`: one line.
pub fn config_line(f: &FarmConfig) -> String {
    let host = match ebb_farm::member::host_or_hostname(f) {
        Ok(h) if f.host.is_some() => h,
        Ok(h) => format!("{h} (the hostname)"),
        Err(e) => format!("unknown ({})", e.message),
    };
    format!("farm: host {host} joins through etcd at {}  lease {}  timeout {}\n", f.endpoints.join(", "), f.lease_ttl, f.timeout)
}
