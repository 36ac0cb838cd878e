//! `ebb coord` and `ebb farm`: a coordinator replica, and the farm as etcd
//! has it. Both read etcd directly (no agent needed), from the config's
//! `[farm]` or `--etcd`.

use crate::cli::table;
use ebb_core::farm::FarmConfig;
use ebb_daemon::api_types::HostSleepView;
use ebb_daemon::config::Config;
use ebb_daemon::words::clock;
use ebb_farm::coord::CoordSettings;
use ebb_farm::{FarmView, LinkState, LinkStatus, Store};
use std::fmt::Write;
use std::path::Path;

/// `[farm]` from the config, or `--etcd` URLs (then the config is not
/// read, and the other settings are their defaults).
pub fn settings(config: &Path, etcd: Vec<String>) -> Result<FarmConfig, String> {
    if !etcd.is_empty() {
        let cfg = FarmConfig::with_endpoints(etcd);
        cfg.validate().map_err(|e| e.message.replace("farm.endpoints", "--etcd"))?;
        return Ok(cfg);
    }
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    cfg.farm.ok_or_else(|| format!("{} has no [farm] section: add one, or give --etcd URL", config.display()))
}

pub async fn coord(cfg: FarmConfig, name: Option<String>) -> Result<(), String> {
    let name = match name {
        Some(n) => n,
        None => ebb_farm::member::host_or_hostname(&cfg).map_err(|e| e.message.replace("farm.host", "--name"))?,
    };
    ebb_farm::keys::check_segment("--name", &name)?;
    let s = CoordSettings { endpoints: cfg.endpoints, name, lease_ttl: cfg.lease_ttl.as_duration(), timeout: cfg.timeout.as_duration() };
    ebb_farm::coord::run(s, ebb_daemon::run::shutdown_signal()).await;
    Ok(())
}

pub async fn view(cfg: &FarmConfig) -> Result<FarmView, String> {
    let store = Store::connect(&cfg.endpoints, cfg.timeout.as_duration()).await.map_err(|e| e.to_string())?;
    store.farm().await.map_err(|e| e.to_string())
}

pub fn farm_text(v: &FarmView) -> String {
    let mut out = String::new();
    let leader = v.leader.as_deref().unwrap_or("none (no `ebb coord` replica runs)");
    let _ = writeln!(out, "coordinator leader: {leader}");
    if v.hosts.is_empty() {
        out.push_str("no hosts: no agent with [farm] has joined\n");
        return out;
    }
    let rows: Vec<Vec<String>> = v
        .hosts
        .iter()
        .map(|h| {
            let agent = h.member.as_ref().map_or("gone".into(), |m| format!("up since {} UTC", clock(m.since)));
            let wake = h.wake.as_ref().map(|w| w.methods().join(",")).filter(|m| !m.is_empty()).unwrap_or("none (never sleeps)".into());
            let state = h.state.map_or("-".into(), |s| s.to_string());
            let slept = h.slept.as_ref().map_or("-".into(), |s| format!("{} UTC: {}", clock(s.at), s.why));
            vec![h.name.clone(), agent, state, h.clients.len().to_string(), wake, slept]
        })
        .collect();
    out.push_str(&table(&["HOST", "AGENT", "STATE", "ACTIVE CLIENTS", "WAKE", "LAST SLEEP"], &rows));
    for h in &v.hosts {
        for bad in &h.unreadable {
            let _ = writeln!(out, "{}: unreadable key {bad}", h.name);
        }
    }
    out
}

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

/// The host's sleep in `ebb status`.
pub fn host_sleep_lines(h: &HostSleepView) -> String {
    let mut out = format!("host sleep: {}: {} ({} sleeps, {} wakes)\n", h.state, h.why, h.sleeps_total, h.wakes_total);
    if let Some((at, why)) = &h.last_sleep {
        let _ = writeln!(out, "  last sleep {} UTC: {why}", clock(*at));
    }
    if let Some((at, why)) = &h.last_wake {
        let _ = writeln!(out, "  last wake {} UTC: {why}", clock(*at));
    }
    out
}

/// `[farm]` in `ebb check`: what the host joins, and whether and how it sleeps.
pub fn config_line(f: &FarmConfig) -> String {
    let host = match ebb_farm::member::host_or_hostname(f) {
        Ok(h) if f.host.is_some() => h,
        Ok(h) => format!("{h} (the hostname)"),
        Err(e) => format!("unknown ({})", e.message),
    };
    let mut out = format!("farm: host {host} joins through etcd at {}  lease {}  timeout {}\n", f.endpoints.join(", "), f.lease_ttl, f.timeout);
    let methods = f.wake.methods();
    let wake = if methods.is_empty() { "none".to_string() } else { methods.join(", then ") };
    let _ = match &f.sleep {
        None => writeln!(out, "  host sleep: off (no [farm.sleep]); wake methods: {wake}"),
        Some(_) if methods.is_empty() => writeln!(out, "  host sleep: NEVER: no wake method is configured ([farm.wake] ipmi, redfish or mac), and a host nothing can wake is never put to sleep"),
        Some(s) => writeln!(
            out,
            "  host sleep: {} after {} without an active client (awake at least {}, at most {} sleeps an hour), {}; woken by {wake}",
            s.state.as_str(),
            s.after,
            s.min_awake,
            s.max_per_hour,
            s.command.as_ref().map_or("recorded, not run (no farm.sleep.command)".into(), |c| format!("by {}", c.join(" ")))
        ),
    };
    out
}
