//! `ebb explain VM`: what ebb is doing with one VM and why, in sentences.

use crate::api_types::{Event, VmInfo};
use ebb_core::affinity::describe;

/// The host's sleep in the farm, in sentences.
pub fn host(status: &crate::api_types::Status) -> Vec<String> {
    let Some(h) = &status.host_sleep else {
        let why = if status.farm.is_some() { "no [farm.sleep] is configured" } else { "it is in no farm ([farm] is not configured)" };
        return vec![format!("This host never sleeps for want of clients: {why}.")];
    };
    let mut out = vec![format!("The host is {}: {}.", h.state, h.why.trim_end_matches('.'))];
    let n = status.active_clients;
    out.push(format!("{n} client{} of its VMs {} active here (`ebb clients`).", if n == 1 { "" } else { "s" }, if n == 1 { "is" } else { "are" }));
    if let Some((at, why)) = &h.last_sleep {
        out.push(format!("It last slept at {} UTC: {why}.", crate::words::clock(*at)));
    }
    if let Some((at, why)) = &h.last_wake {
        out.push(format!("It last woke at {} UTC: {why}.", crate::words::clock(*at)));
    }
    out
}

pub fn summarize(name: &str, now: Option<&VmInfo>, events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(vm) = now else {
        out.push(format!("{name} is not on this host now; below is what ebb last did with it."));
        return out;
    };
    let m = &vm.memory;
    match &vm.sleeping {
        Some(rec) => out.push(format!(
            "{name} is asleep ({}) since {} UTC: {}. `ebb wake {name}` or its traffic wakes it.",
            if rec.mode == ebb_core::SleepMode::Save { "saved to disk, its memory freed" } else { "paused, its memory kept" },
            crate::words::clock(rec.since),
            rec.reason.trim_end_matches('.')
        )),
        None => out.push(format!("{name} is {}.", vm.state)),
    }
    if let Some(sur) = &vm.surrogate {
        out.push(format!(
            "ebb serves its services ({}) itself: {}; {} held, {} answered locally, {} refused.",
            sur.services.join(", "),
            sur.state,
            sur.held_connections,
            sur.answered_locally,
            sur.refused
        ));
        if !sur.awake_paths.is_empty() {
            out.push(format!("While it is awake its clients reach it through: {}.", sur.awake_paths.join("; ")));
        }
    }
    if let Some(idle) = &vm.idle {
        let from = match vm.sources.sleep {
            crate::api_types::Source::Metadata => "the domain's ebb metadata",
            _ => "ebb's config",
        };
        out.push(format!("It may sleep when idle ({from} says so)."));
        match (&idle.skipped, &idle.active_reason, idle.sleeps_at) {
            (Some(why), _, _) => out.push(format!("It will not be put to sleep: {why}.")),
            (None, Some(why), _) => out.push(format!("It is not idle: {why}.")),
            (None, None, Some(at)) => out.push(format!("It is idle; if it stays so it sleeps at {} UTC.", crate::words::clock(at))),
            _ => {}
        }
    }
    if let Some(r) = &vm.realloc {
        match (&r.skipped, r.class, r.current, r.base) {
            (Some(why), ..) => out.push(format!("ebb does not reallocate its CPU: {why}.")),
            (None, class, Some(current), Some(base)) => {
                let class = class.map_or("not classified yet", |c| c.as_str());
                let use_ = r.cpu_use.map(|u| format!(", asking for {:.0}% of its vCPUs", u * 100.0)).unwrap_or_default();
                out.push(format!("Its activity: {class}{use_}."));
                if let Some(h) = r.expected {
                    out.push(format!("Its history (ebb needs) says {} at this hour: it started from there.", h.as_str()));
                }
                // The network has its own line below.
                let (cpu, own) = (ebb_core::Tune { net: None, disk_limit: None, ..current }, ebb_core::Tune { net: None, disk_limit: None, ..base });
                if cpu == own {
                    out.push(format!("Its CPU: {cpu}, its own."));
                } else {
                    out.push(format!("Its CPU: {cpu}, set by ebb (its own: {own})."));
                }
                if let Some(why) = &r.why {
                    out.push(format!("Why: {why}."));
                }
                if let (Some(w), Some(why)) = (current.io_weight, &r.io_why) {
                    out.push(format!("Its disk weight: {w} ({why})."));
                }
                match (current.net, base.net, &r.net_why) {
                    (Some(n), Some(b), Some(why)) if n != b => out.push(format!("Its {n}, set by ebb (its own: {b}): {why}.")),
                    (Some(n), _, Some(why)) => out.push(format!("Its {n}, its own: {why}.")),
                    (None, _, Some(why)) => out.push(format!("Its network: {why}.")),
                    _ => {}
                }
                match (current.disk_limit, base.disk_limit, &r.disk_why) {
                    (Some(l), Some(b), Some(why)) if l != b => {
                        out.push(format!("Its disk I/O limit: {}/s, set by ebb (its own: {}/s): {why}.", ebb_core::Bytes(l), ebb_core::Bytes(b)))
                    }
                    (Some(l), _, Some(why)) => out.push(format!("Its disk I/O limit: {}/s, its own: {why}.", ebb_core::Bytes(l))),
                    _ => {}
                }
                match &vm.vcpus {
                    Some(Ok(v)) if v.online != v.base => {
                        out.push(format!("Its guest has {} of its {} vCPUs online (set by ebb, at least {}): {}.", v.online, v.base, v.min, v.why))
                    }
                    Some(Ok(v)) => out.push(format!("Its guest has all {} of its vCPUs online ({}).", v.online, v.why)),
                    Some(Err(e)) => out.push(format!("ebb cannot read its guest's online vCPUs (vcpus_min needs the QEMU guest agent): {e}.")),
                    None => {}
                }
                if let Some(a) = &vm.affinity {
                    let (now, own) = (describe(&a.current), describe(&a.base));
                    let whose = if a.current == a.base { "its own".to_string() } else { format!("set by ebb (its own: CPU {own})") };
                    out.push(format!("Its vCPUs run on CPU {now}, {whose}; ebb may pin them within CPU {}. Why: {}.", a.bound, a.why));
                }
            }
            _ => {}
        }
    }
    if let Some(why) = &m.skipped {
        out.push(format!("ebb does not manage its memory now: {why}."));
    } else {
        if let (Some(actual), Some(used)) = (m.actual, m.used) {
            out.push(format!("Its guest has {actual} and uses {used} of it."));
        }
        match (m.target, m.actual, m.entitlement) {
            (Some(t), Some(a), _) if t != a => out.push(format!("ebb is moving it to {t}, at most {} per step.", m.step)),
            (_, _, Some(e)) => out.push(format!("It is where ebb wants it; its share of the pool is {e}.")),
            _ => {}
        }
        if m.under_pressure {
            out.push("It is short of memory: ebb gives to it before anyone else.".into());
        }
        if let Some((at, by)) = m.deflated {
            out.push(format!(
                "At {} UTC it took {by} back from its balloon itself (deflate-on-OOM): ebb then kept it at least at the size it took until its stats settled (at most {} s).",
                crate::words::clock(at),
                ebb_core::memory::DEFLATED_HOLD_MS / 1000
            ));
        }
        let (lo, hi) = (m.floor.map(|f| f.to_string()), m.ceiling.map(|c| c.to_string()));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            out.push(format!("ebb keeps it between {lo} (its minimum or what it uses plus headroom) and {hi}."));
        }
        match (m.headroom, m.headroom_learned) {
            (Some(h), Some((rate, react_ms))) => out.push(format!(
                "Its headroom is {h}, learned: its needs history shows its use growing by up to {rate}/s, times the {:.1} s ebb takes to react ({}). Past the flat rule it is kept as far as the pool has room.",
                react_ms as f64 / 1000.0,
                match m.balloon_grow_ms {
                    Some(ms) => format!("a tick to look, the second its stats lag, and the {:.1} s its balloon last took to grow", ms as f64 / 1000.0),
                    None => "a tick to look and the second its stats lag; its balloon has not grown under ebb yet".into(),
                }
            )),
            (Some(h), None) => out.push(format!(
                "Its headroom is {h}, the flat rule max(headroom_min, headroom_fraction × use): its needs history shows no allocation faster than that covers."
            )),
            _ => {}
        }
        if let Some(r) = &m.last_reason {
            out.push(format!("Last decision: {}.", r.text.trim_end_matches('.')));
        }
        match m.features {
            Some(f) if f.risk().is_some() => out.push(format!("Warning: {}.", f.risk().unwrap_or_default())),
            Some(f) => out.push(format!("Its balloon's own safety nets: {}.", f.as_str())),
            None => {}
        }
    }
    let s = &vm.sources;
    out.push(format!(
        "Settings: shares {} ({}), min {} ({}), max {} ({}), managed {} ({}).",
        vm.settings.shares,
        s.shares.as_str(),
        vm.settings.min.map_or("none".into(), |b| b.to_string()),
        s.min.as_str(),
        vm.settings.max.map_or("none".into(), |b| b.to_string()),
        s.max.as_str(),
        if vm.settings.managed { "yes" } else { "no" },
        s.managed.as_str(),
    ));
    for p in &vm.settings_problems {
        out.push(format!("Note: {p}."));
    }
    let failures = events.iter().filter(|e| e.failed).count();
    if failures > 0 {
        out.push(format!("{failures} of its last {} journal entries are failed actions.", events.len()));
    }
    out
}
