//! `ebb coord` and `ebb farm`: a coordinator replica, and the farm as etcd
//! has it. Both read etcd directly (no agent needed), from the config's
//! `[farm]` or `--etcd`.

use crate::cli::table;
use ebb_core::farm::FarmConfig;
use ebb_daemon::api_types::HostSleepView;
use ebb_daemon::config::Config;
use ebb_daemon::words::clock;
use ebb_core::farm::WakeSettings;
use ebb_farm::coord::{CoordSettings, SendWake};
use ebb_farm::wake::{self, BmcCredentials};
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

/// `ebb coord`: a replica, and the gateway when the config has `[gateway.*]`.
pub async fn coord(config: &Path, etcd: Vec<String>, name: Option<String>) -> Result<(), String> {
    let cfg = settings(config, etcd.clone())?;
    let name = match name {
        Some(n) => n,
        None => ebb_farm::member::host_or_hostname(&cfg).map_err(|e| e.message.replace("farm.host", "--name"))?,
    };
    ebb_farm::keys::check_segment("--name", &name)?;
    let creds = match (&cfg.bmc_user, &cfg.bmc_password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file).map_err(|e| format!("farm.bmc_password_file {}: {e}", file.display()))?;
            Some(BmcCredentials { user: user.clone(), password: password.trim_end_matches(['\n', '\r']).to_string(), insecure_tls: cfg.bmc_insecure_tls })
        }
        _ => None,
    };
    // The gateway's services, from the whole config (not with --etcd).
    let gateway = if etcd.is_empty() { gateway_settings(&Config::load(config).map_err(|e| e.to_string())?, &cfg) } else { None };
    let s = CoordSettings {
        wake_timing: cfg.wake_timing(),
        send_wake: send_by_methods(creds, cfg.timeout.as_duration().max(WAKE_CALL)),
        endpoints: cfg.endpoints,
        name,
        lease_ttl: cfg.lease_ttl.as_duration(),
        timeout: cfg.timeout.as_duration(),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let gateway = match gateway {
        Some(g) => {
            let mut stopped = stopped.clone();
            Some(tokio::spawn(ebb_farm::gateway::run(g, async move {
                let _ = stopped.changed().await;
            })))
        }
        None => None,
    };
    let replica = ebb_farm::coord::run(s, ebb_daemon::run::shutdown_signal());
    tokio::pin!(replica);
    // A gateway that cannot bind its services stops the coordinator with why.
    if let Some(mut g) = gateway {
        tokio::select! {
            _ = &mut replica => {}
            r = &mut g => return match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("gateway: {e}")),
                Err(e) => Err(format!("gateway: {e}")),
            },
        }
        let _ = stop.send(true);
        let _ = g.await;
        return Ok(());
    }
    replica.await;
    Ok(())
}

/// `[gateway.*]` as the gateway runs it; None when there is none.
fn gateway_settings(c: &Config, farm: &FarmConfig) -> Option<ebb_farm::gateway::GatewaySettings> {
    if c.gateway.is_empty() {
        return None;
    }
    let vms = c
        .gateway
        .iter()
        .map(|(vm, g)| ebb_farm::gateway::GatewayVm { vm: ebb_core::VmId::new(vm.clone()), host: g.host.clone(), services: g.service.clone() })
        .collect();
    Some(ebb_farm::gateway::GatewaySettings {
        endpoints: farm.endpoints.clone(),
        timeout: farm.timeout.as_duration(),
        vms,
        limits: c.surrogate_limits(),
        client_idle: c.clients.ttl(ebb_core::clients::ClientKind::Surrogate),
    })
}

/// The longest one wake call may take (ipmitool retries, a slow BMC).
const WAKE_CALL: std::time::Duration = std::time::Duration::from_secs(10);

/// A send tries the host's methods in DPM's order (IPMI, Redfish, WoL)
/// until one is taken; each failure is said in the error if none is.
fn send_by_methods(creds: Option<BmcCredentials>, timeout: std::time::Duration) -> SendWake {
    std::sync::Arc::new(move |_host, settings: WakeSettings| {
        let creds = creds.clone();
        Box::pin(async move {
            let mut failed = Vec::new();
            for method in wake::methods(&settings) {
                match wake::send(method, &settings, creds.as_ref(), timeout).await {
                    Ok(done) => return Ok(format!("by {}: {done}", method.as_str())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            Err(if failed.is_empty() { "the host has no wake method".to_string() } else { failed.join("; ") })
        })
    })
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
            let vms = if h.vms.is_empty() { "-".into() } else { h.vms.join(",") };
            vec![h.name.clone(), agent, state, vms, h.clients.len().to_string(), wake, slept]
        })
        .collect();
    out.push_str(&table(&["HOST", "AGENT", "STATE", "VMS", "ACTIVE CLIENTS", "WAKE", "LAST SLEEP"], &rows));
    for h in &v.hosts {
        if let Some(w) = &h.waking {
            let _ = writeln!(out, "{}: waking since {} UTC ({} send(s)): {}", h.name, clock(w.started), w.sends, w.why);
        }
        if let Some(w) = &h.woke {
            let _ = writeln!(out, "{}: last woken at {} UTC, awake {:.1} s after the first send ({}): {}", h.name, clock(w.at), w.took_ms as f64 / 1000.0, w.by, w.why);
        }
        if let Some(m) = &h.wake_failed {
            let _ = writeln!(
                out,
                "{}: could not be woken at {} UTC: {}; not put to sleep again until the mark is removed (etcdctl del {})",
                h.name,
                clock(m.at),
                m.why,
                ebb_farm::keys::wake_failed(&h.name)
            );
        }
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
