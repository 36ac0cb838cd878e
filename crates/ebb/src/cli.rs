//! How the CLI shows the API's answers to a person: aligned tables and
//! sentences. Scripts use `--json` instead.

use crate::agent::vm_state_word;
use crate::api_types::{Connection, Event, Explain, Needs, PlanView, PowerStatus, Source, Status, VmInfo};
use crate::config::Config;
use ebb_core::{Bytes, Millis};
use std::fmt::Write;

/// A plain text table: columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

pub fn clock(at: Millis) -> String {
    let s = at.0 / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn size(b: Option<Bytes>) -> String {
    b.map_or("-".into(), |b| b.to_string())
}

pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let conn = match &s.connection {
        Connection::Connected { since } => format!("connected since {} UTC", clock(*since)),
        Connection::Disconnected { error, attempts, next_try_at, .. } => {
            format!("DISCONNECTED ({error}); {attempts} attempts, next at {} UTC", clock(*next_try_at))
        }
    };
    let _ = writeln!(out, "ebb {}  libvirt {}: {conn}", s.version, s.uri);
    let _ = writeln!(out, "ticks: {} every {} ms (last took {:.1} ms)", s.ticks, s.tick_ms, s.last_tick_ms);
    let mem = if s.memory_enabled { "" } else { " (memory management disabled: observing only)" };
    let _ = writeln!(out, "pool: {} of {} used{mem}", s.pool_used, size(s.pool));
    let _ = writeln!(out, "host: {} available of {}", s.host_available, s.host_total);
    let _ = writeln!(out, "vms: {} ({} managed)", s.vms, s.vms_managed);
    let _ = writeln!(out, "actions: {} ({} failed); sleeps {}, wakes {}", s.actions_total, s.action_failures_total, s.sleeps_total, s.wakes_total);
    let _ = writeln!(out, "journal: {}", s.journal);
    out
}

fn with_source(value: String, source: Source) -> String {
    match source {
        Source::Default => value,
        s => format!("{value} ({})", s.as_str()),
    }
}

pub fn vms_table(vms: &[VmInfo]) -> String {
    if vms.is_empty() {
        return "no domains on this host\n".into();
    }
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            let m = &v.memory;
            let note = match (&m.skipped, &m.last_reason) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, _) if m.under_pressure => "under pressure".into(),
                (None, Some(r)) => r.text.clone(),
                (None, None) => String::new(),
            };
            let state = match &v.sleeping {
                Some(rec) => format!("asleep ({}) since {}", rec.mode.as_str(), clock(rec.since)),
                None => vm_state_word(v.state).into(),
            };
            vec![
                v.name.clone(),
                state,
                size(m.actual),
                size(m.target),
                size(m.used),
                size(m.entitlement),
                m.step.to_string(),
                with_source(v.settings.shares.to_string(), v.sources.shares),
                with_source(size(v.settings.min), v.sources.min),
                with_source(size(v.settings.max), v.sources.max),
                class_word(v),
                tune_word(v),
                net_word(v),
                note,
            ]
        })
        .collect();
    table(&["NAME", "STATE", "ACTUAL", "TARGET", "USED", "SHARE", "STEP", "SHARES", "MIN", "MAX", "CLASS", "CPU", "NET", "LAST"], &rows)
}

/// "cpu-bound", "critical", "-" when reallocation does not see it.
fn class_word(v: &VmInfo) -> String {
    match &v.realloc {
        Some(r) if r.skipped.is_some() => "-".into(),
        Some(r) if r.critical => "critical".into(),
        Some(r) => r.class.map_or("learning", |c| c.as_str()).into(),
        None => "-".into(),
    }
}

/// "w4096 cap100%" (the live weight and cap), "*" when ebb changed them.
fn tune_word(v: &VmInfo) -> String {
    let Some(r) = &v.realloc else { return "-".into() };
    let Some(t) = r.current else { return "-".into() };
    let cap = t.cap().map_or("nocap".to_string(), |c| format!("cap{:.0}%", c * 100.0));
    let mine = if r.base.is_some_and(|b| b != t) { "*" } else { "" };
    format!("w{} {cap}{mine}", t.shares)
}

/// "in - out 256KiB/s" (the live bandwidth limit, "-" each way unlimited),
/// "*" when ebb changed it; "-" without an interface that takes a limit.
fn net_word(v: &VmInfo) -> String {
    let Some(n) = v.realloc.as_ref().and_then(|r| r.current).and_then(|t| t.net) else { return "-".into() };
    let dir = |b: &ebb_core::Bandwidth| b.limit().map_or("-".into(), |l| format!("{}/s", l.to_string().replace(' ', "")));
    let mine = v.realloc.as_ref().and_then(|r| r.base).is_some_and(|b| b.net != Some(n));
    format!("in {} out {}{}", dir(&n.inbound), dir(&n.outbound), if mine { "*" } else { "" })
}

pub fn power_text(p: &Option<PowerStatus>) -> String {
    let Some(p) = p else {
        return "no power source: set power.ups (a NUT UPS), or the host shows no mains or battery in sysfs\n".into();
    };
    let mut out = String::new();
    if let Some(r) = &p.reading {
        let _ = writeln!(out, "source: {} ({})", r.source, r.status);
        let state = match &p.state {
            Some(ebb_core::power::PowerState::OnMains) => "on mains".to_string(),
            Some(ebb_core::power::PowerState::OnBattery) => "on battery".to_string(),
            Some(ebb_core::power::PowerState::Low(why)) => format!("LOW BATTERY: {why}"),
            None => "-".to_string(),
        };
        let _ = writeln!(out, "state: {state}");
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"));
        let _ = writeln!(out, "battery: {} charge, {} runtime", opt(r.charge, "%"), opt(r.runtime_s, " s"));
        let _ = writeln!(out, "draw (measured): {}", r.draw.map_or("-".to_string(), |w| w.to_string()));
    }
    if let Some(e) = &p.error {
        let _ = writeln!(out, "last reading failed: {e}");
    }
    if !p.saved_for_power.is_empty() {
        let _ = writeln!(out, "saved on low battery, restored when mains is back: {}", p.saved_for_power.join(", "));
    }
    if let Some(o) = &p.last_power_off {
        let _ = writeln!(out, "power-off: {o}");
    }
    out
}

pub fn plan_text(p: &Option<PlanView>) -> String {
    let Some(p) = p else {
        return "no plan: set power.budget (the watts the host may draw on battery)\n".into();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "on a battery budget of {}: the host's idle {} first, then the VMs' draw (the power model and their CPU use)",
        p.plan.budget, p.host_idle
    );
    let rows: Vec<Vec<String>> = p
        .vms
        .iter()
        .map(|c| {
            let fate = if p.plan.keep.contains(&c.vm) {
                "keeps running".to_string()
            } else {
                let n = p.plan.save.iter().position(|v| v == &c.vm).map_or(0, |i| i + 1);
                format!("saved ({n}.{})", if c.quiescent { ", quiescent" } else { "" })
            };
            let value = if p.no_value.contains(&c.vm.0) { format!("{} (not set)", c.value) } else { c.value.to_string() };
            vec![c.vm.0.clone(), c.draw.to_string(), value, fate]
        })
        .collect();
    out.push_str(&table(&["NAME", "DRAW", "VALUE", "ON BATTERY"], &rows));
    let _ = writeln!(out, "kept: value {}, drawing {}", p.plan.kept_value, p.plan.kept_draw);
    out
}

pub fn needs_table(n: &Needs) -> String {
    if n.hours.is_empty() {
        return format!("no history for {} yet: ebb records it every tick while the VM runs\n", n.vm);
    }
    let rows: Vec<Vec<String>> = n
        .hours
        .iter()
        .map(|h| {
            vec![
                format!("{:02}:00", h.hour),
                h.samples.to_string(),
                format!("{:.0}%", h.cpu_p50 * 100.0),
                format!("{:.0}%", h.cpu_p90 * 100.0),
                format!("{}/s", h.disk_p90),
                format!("{}/s", h.net_p90),
                h.class.map_or("(too few samples)", |c| c.as_str()).to_string(),
            ]
        })
        .collect();
    table(&["HOUR(UTC)", "SAMPLES", "CPU p50", "CPU p90", "DISK p90", "NET p90", "CLASS"], &rows)
}

pub fn events_table(events: &[Event]) -> String {
    if events.is_empty() {
        return "the journal is empty\n".into();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .rev()
        .map(|e| {
            vec![
                clock(e.at),
                e.vm.clone().unwrap_or_else(|| "-".into()),
                e.kind.clone(),
                size(e.target),
                e.outcome.clone().unwrap_or_default(),
                e.text.clone(),
            ]
        })
        .collect();
    table(&["TIME(UTC)", "VM", "EVENT", "TARGET", "OUTCOME", "WHY"], &rows)
}

pub fn explain_text(x: &Explain) -> String {
    let mut out = String::new();
    for s in &x.summary {
        let _ = writeln!(out, "{s}");
    }
    if !x.events.is_empty() {
        let _ = writeln!(out, "\nRecent decisions (oldest first):");
        for e in x.events.iter().rev() {
            let outcome = e.outcome.as_deref().map(|o| format!(" [{o}]")).unwrap_or_default();
            let _ = writeln!(out, "  {} {}{outcome}", clock(e.at), e.text);
        }
    }
    out
}

pub fn describe_config(c: &Config) -> String {
    let m = c.memory.policy_config();
    let mut out = String::new();
    let _ = writeln!(out, "libvirt: {}  tick: {:?}  socket: {}  journal: {}", c.agent.uri, c.agent.tick, c.agent.socket.display(), c.agent.journal.display());
    let _ = writeln!(
        out,
        "memory: {}  pool: {}  host reserve: {}  idle tax: {}  step: {}..{}",
        if c.memory.enabled { "managed" } else { "observed only" },
        m.pool.map_or("host total minus reserve".into(), |p| p.to_string()),
        m.host_reserve,
        m.idle_tax,
        m.step_min,
        m.step_max
    );
    let r = c.realloc.policy_config();
    let _ = writeln!(
        out,
        "reallocation: {}  class after: {:?}  cpu-bound at {:.0}% (until {:.0}%)  boost x{}  idle cut /{}",
        if r.enabled { "on" } else { "off" },
        c.realloc.class_after,
        r.cpu_busy * 100.0,
        r.cpu_busy_leave * 100.0,
        r.boost,
        r.yield_divisor
    );
    let _ = writeln!(
        out,
        "power: {}  low battery at {:.0}% or {:?}  power-off: {}",
        c.power.ups.as_ref().map_or(format!("sysfs under {}", c.power.sysfs.display()), |u| format!("UPS {u}")),
        c.power.low_charge,
        c.power.low_runtime,
        c.power.power_off_command.as_ref().map_or("recorded, not run (no power_off_command)".into(), |cmd| cmd.join(" "))
    );
    for (name, vm) in &c.vm {
        let _ = writeln!(
            out,
            "vm {name}: shares {} min {} max {} managed {}",
            vm.shares.as_ref().map_or("-".into(), |s| s.get_ref().to_string()),
            vm.min.as_ref().map_or("-".into(), |s| s.get_ref().0.to_string()),
            vm.max.as_ref().map_or("-".into(), |s| s.get_ref().0.to_string()),
            vm.managed.map_or("-".into(), |b| b.to_string()),
        );
    }
    out
}

/// Percent-encodes a VM name for a URL path or query.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "y".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     y\n");
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("web 1/a"), "web%201%2Fa");
    }
}
