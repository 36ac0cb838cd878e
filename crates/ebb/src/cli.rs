//! How the CLI shows the API's answers to a person: aligned tables and
//! sentences. Scripts use `--json` instead.

use ebb_daemon::words::clock;
use ebb_daemon::api_types::{ClientView, Connection, DevicesView, Event, Explain, Needs, PlanView, PowerStatus, Source, Status, VmInfo};
use ebb_core::devices::DiskState;
use ebb_daemon::config::Config;
use ebb_core::Bytes;
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
    if let Some(note) = &s.pool_note {
        let _ = writeln!(out, "  {note}");
    }
    let _ = writeln!(out, "host: {} available of {} ({} of it the guests' own, never touched or handed back: they may take it again)", s.host_available, s.host_total, s.returned);
    let _ = writeln!(out, "vms: {} ({} managed); active clients: {}", s.vms, s.vms_managed, s.active_clients);
    let _ = writeln!(out, "actions: {} ({} failed); sleeps {}, wakes {}", s.actions_total, s.action_failures_total, s.sleeps_total, s.wakes_total);
    let _ = writeln!(out, "journal: {}", s.journal);
    if let Some(trouble) = &s.journal_trouble {
        let _ = writeln!(out, "JOURNAL: {trouble}");
    }
    if let Some(link) = &s.farm {
        out.push_str(&crate::farm::link_line(link));
    }
    if let Some(h) = &s.host_sleep {
        out.push_str(&crate::farm::host_sleep_lines(h));
    }
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
                None => v.state.to_string(),
            };
            vec![
                v.name.clone(),
                state,
                size(m.actual),
                size(m.target),
                size(m.used),
                size(m.host_rss),
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
    let mut out = table(&["NAME", "STATE", "ACTUAL", "TARGET", "USED", "HOST", "SHARE", "STEP", "SHARES", "MIN", "MAX", "CLASS", "CPU", "NET", "LAST"], &rows);
    for v in vms.iter().filter(|v| v.memory.skipped.is_none()) {
        if let Some(risk) = v.memory.features.and_then(|f| f.risk()) {
            let _ = writeln!(out, "warning: {}: {risk}", v.name);
        }
    }
    out
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
    // Pinned by ebb's affinity rule: where it runs now.
    let pinned = match &v.affinity {
        Some(a) if a.current != a.base => format!(" cpu{}*", ebb_core::affinity::describe(&a.current)),
        _ => String::new(),
    };
    format!("w{} {cap}{mine}{pinned}", t.shares)
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
    if p.reading.is_none() && p.error.is_none() {
        let _ = writeln!(out, "no power source: set power.ups (a NUT UPS), or the host shows no mains or battery in sysfs");
    }
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
        if let Some(w) = r.draw {
            let _ = writeln!(out, "draw (the source's reading): {w}");
        }
    }
    if let Some(w) = p.model_draw {
        let _ = writeln!(out, "draw (the power model, at the VMs' CPU use now): {w}");
    }
    match (&p.measured, &p.measured_error) {
        (_, Some(e)) => {
            let _ = writeln!(out, "draw (measured): failed: {e}");
        }
        (Some(m), None) => {
            let _ = writeln!(out, "draw (measured, {}): {}", m.source, m.watts);
        }
        (None, None) => {}
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
    if let Some(d) = &p.devices {
        out.push_str(&devices_text(d));
    }
    out
}

/// The CPUs' frequency scaling and the disks, and what ebb did with them.
fn devices_text(d: &DevicesView) -> String {
    let mut out = String::new();
    if let Some(c) = &d.cpu {
        let pct = |f: f64| format!("{:.0}%", f * 100.0);
        let state = match (&c.error, c.policy.saving, c.enabled) {
            (Some(e), ..) => format!("not read: {e}"),
            (None, true, _) => "saving power (set by ebb)".to_string(),
            (None, false, true) => "as found".to_string(),
            (None, false, false) => "as found (cpufreq is off in the config)".to_string(),
        };
        let vms = c.policy.vms_use.map_or("not known yet".to_string(), pct);
        let _ = writeln!(out, "cpus: {state}; the VMs use {vms} of the host's CPUs (save under {}, back at {})", pct(c.cpu_low), pct(c.cpu_high));
        let rows: Vec<Vec<String>> = c
            .cpus
            .iter()
            .map(|f| {
                let change = c.policy.changes.iter().find(|ch| ch.applied.cpu == f.cpu);
                let found = change.map_or("-".to_string(), |ch| {
                    let gov = ch.found.governor.as_deref().unwrap_or("-");
                    format!("ebb changed it; found {gov}, max {} MHz", ch.found.max_khz.unwrap_or(0) / 1000)
                });
                vec![format!("cpu{}", f.cpu), f.governor.clone(), format!("{} MHz", f.max_khz / 1000), format!("{}-{} MHz", f.hw_min_khz / 1000, f.hw_max_khz / 1000), found]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&indent(&table(&["CPU", "GOVERNOR", "MAX", "HARDWARE", "EBB"], &rows)));
        }
        if let Some(l) = &c.last_change {
            let _ = writeln!(out, "  last change: {l}");
        }
    }
    if let Some(disks) = &d.disks {
        let _ = writeln!(out, "disks: standby after {} s without I/O", disks.idle_after_ms / 1000);
        if let Some(e) = &disks.error {
            let _ = writeln!(out, "  not read: {e}");
        }
        let rows: Vec<Vec<String>> = disks
            .disks
            .iter()
            .map(|v| {
                let state = match &v.state {
                    DiskState::Active => "active".to_string(),
                    DiskState::Idle { since } => format!("idle since {} UTC", clock(*since)),
                    DiskState::Standby { at } => format!("standby since {} UTC (ebb)", clock(*at)),
                    DiskState::Guarded { vms } => {
                        let names: Vec<&str> = vms.iter().map(|v| v.as_str()).collect();
                        format!("guarded: holds the image of running {}", names.join(", "))
                    }
                    DiskState::Held { why } => format!("held: {why}"),
                };
                vec![v.name.clone(), state]
            })
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "  no spinning disk (rotational, not removable) in sysfs");
        } else {
            out.push_str(&indent(&table(&["DISK", "STATE"], &rows)));
        }
        if let Some(l) = &disks.last_standby {
            let _ = writeln!(out, "  last standby: {l}");
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
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
            let value = if p.no_value.contains(&c.vm.to_string()) { format!("{} (not set)", c.value) } else { c.value.to_string() };
            vec![c.vm.to_string(), c.draw.to_string(), value, fate]
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

/// `ebb clients`: each active client, its VM and what keeps it active.
pub fn clients_table(clients: &[ClientView]) -> String {
    if clients.is_empty() {
        return "no active clients\n".into();
    }
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            let until = match c.expires_at {
                None => format!("connected ({} open)", c.open),
                Some(at) => format!("until {} UTC", clock(at)),
            };
            vec![c.id.clone(), c.kind.to_string(), c.vm.to_string(), c.remote.clone().unwrap_or_else(|| "-".into()), clock(c.last_activity), ebb_core::human::Span::from_millis(c.ttl_ms).to_string(), until]
        })
        .collect();
    let mut out = table(&["CLIENT", "KIND", "VM", "REMOTE", "LAST(UTC)", "TTL", "ACTIVE"], &rows);
    let _ = writeln!(out, "{} active", clients.len());
    out
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

/// One journal entry on a line, as `ebb events --follow` prints it.
pub fn event_line(e: &Event) -> String {
    let target = e.target.map(|_| format!(" {}", size(e.target))).unwrap_or_default();
    let outcome = e.outcome.as_deref().map(|o| format!(" {o}")).unwrap_or_default();
    format!("{} {} {}{target}{outcome}: {}", clock(e.at), e.vm.as_deref().unwrap_or("-"), e.kind, e.text)
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

/// `ebb check`'s lines about the guests' balloons.
pub fn balloon_check_text(guests: &Result<Vec<String>, String>) -> String {
    match guests {
        Ok(lines) if lines.is_empty() => "guests: every managed guest's balloon has deflate-on-OOM or free page reporting".into(),
        Ok(lines) => lines.iter().map(|l| format!("warning: {l}")).collect::<Vec<_>>().join("\n"),
        Err(e) => format!("guests: not checked ({e})"),
    }
}

pub fn describe_config(c: &Config) -> String {
    let m = &c.memory;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "libvirt: {}  tick: {:?}  socket: {} ({})  journal: {}",
        c.agent.uri,
        c.agent.tick,
        c.agent.socket.display(),
        c.agent.socket_group.as_ref().map_or("root only".into(), |g| format!("root and group {g}")),
        c.agent.journal.display()
    );
    let _ = writeln!(
        out,
        "memory: {}  pool: {}  host reserve: {}  idle tax: {}  step: {}..{}",
        if m.enabled { "managed" } else { "observed only" },
        m.pool.map_or("host total minus reserve".into(), |p| p.to_string()),
        m.host_reserve,
        m.idle_tax,
        m.step_min,
        m.step_max
    );
    let r = &c.realloc;
    let _ = writeln!(
        out,
        "reallocation: {}  class after: {}  cpu-bound at {:.0}% (until {:.0}%)  boost x{}  idle cut /{}",
        if r.enabled { "on" } else { "off" },
        r.class_after,
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
        c.power.low_runtime.as_duration(),
        c.power.power_off_command.as_ref().map_or("recorded, not run (no power_off_command)".into(), |cmd| cmd.join(" "))
    );
    if let Some(Ok((_, addr))) = c.power.ups_address() {
        let reading = match &c.power.ups_ca {
            Some(ca) => format!("over TLS, upsd's certificate verified against {} for the name {}", ca.display(), c.power.ups_tls_name(&addr)),
            None => format!(
                "unauthenticated (plain TCP): whatever answers on {addr} can report low battery, and ebb then saves every VM and \
                 powers the host off; set power.ups_ca to read it over TLS"
            ),
        };
        let _ = writeln!(out, "UPS reading: {reading}");
    }
    let d = &c.power.devices;
    let cpufreq = if d.cpufreq {
        format!(
            "{} (or max frequency at {:.0}%) while the VMs use under {:.0}% of the CPUs for {}, back at {:.0}%",
            d.governor,
            d.max_freq_fraction * 100.0,
            d.cpu_low * 100.0,
            d.cpu_low_after,
            d.cpu_high * 100.0
        )
    } else {
        "off".to_string()
    };
    let standby = match (d.disk_idle_after, &d.disk_standby_command) {
        (None, _) => "off".to_string(),
        (Some(after), None) => format!("after {after} without I/O, recorded, not run (no disk_standby_command)"),
        (Some(after), Some(cmd)) => format!("after {after} without I/O, by {} /dev/NAME", cmd.join(" ")),
    };
    let _ = writeln!(out, "devices (under {}): cpufreq: {cpufreq}  disk standby: {standby}", c.power.sysfs.display());
    let k = &c.clients;
    let _ = writeln!(
        out,
        "clients: heartbeats {} (at most {})  consoles {} after disconnect  surrogate clients {} after their last connection",
        k.heartbeat_ttl, k.heartbeat_max_ttl, k.console_idle, k.surrogate_idle
    );
    let _ = writeln!(out, "web view: {}", web_line(c));
    if let Some(f) = &c.farm {
        out.push_str(&crate::farm::config_line(f));
    }
    for (name, vm) in &c.vm {
        let _ = writeln!(
            out,
            "vm {name}: shares {} min {} max {} managed {}",
            vm.shares.map_or("-".into(), |s| s.to_string()),
            vm.min.map_or("-".into(), |s| s.0.to_string()),
            vm.max.map_or("-".into(), |s| s.0.to_string()),
            vm.managed.map_or("-".into(), |b| b.to_string()),
        );
        if let Some(r) = &vm.realloc {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "vm {name} reallocation: {}  critical {}  weight {}..{}  cap up to {}  bandwidth up to {}  disk I/O up to {}  pinned within CPU {}  vCPUs online at least {}",
                if r.enabled == Some(false) { "off" } else { "on" },
                r.critical,
                opt(r.cpu_shares_min.map(|v| v.to_string())),
                opt(r.cpu_shares_max.map(|v| v.to_string())),
                opt(r.cpu_cap_max.map(|c| format!("{:.0}% of a vCPU", c * 100.0))),
                opt(r.net_max.map(|n| format!("{}/s", n.0))),
                opt(r.disk_max.map(|n| format!("{}/s", n.0))),
                opt(r.cpus.as_ref().map(|c| c.to_string())),
                opt(r.vcpus_min.map(|n| n.to_string())),
            );
        }
        if vm.value.is_some() || vm.handles_power_events.is_some() {
            let _ = writeln!(
                out,
                "vm {name} power: value {}  handles power events {}",
                vm.value.map_or("1 (not set)".into(), |v| v.to_string()),
                vm.handles_power_events.unwrap_or(true)
            );
        }
    }
    out
}

/// Percent-encodes a VM name for a URL path or query.
/// What the CLI prints, with every control character but newline and tab
/// shown as an escape: VM names, request paths and libvirt's words reach the
/// operator's terminal, and none of them may set its title or clear it.
pub fn for_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t' || is_bidi_control(c);
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Bidirectional overrides and isolates: they reorder what a line shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
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
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::for_terminal;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let hostile = "GET /\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{9b}31m\u{202e}x HTTP/1.1\nnext\tline";
        let shown = for_terminal(hostile);
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;PWNED\\u{7}") && shown.contains("\\u{202e}"), "{shown}");
        assert!(shown.contains("\nnext\tline"));
        assert!(matches!(for_terminal("plain"), std::borrow::Cow::Borrowed("plain")));
    }
}

/// `[web]` in `ebb check`: where the view listens and who may use it.
fn web_line(c: &ebb_daemon::config::Config) -> String {
    use ebb_daemon::config::WebListen;
    let tokens = c.web.tokens().unwrap_or_default();
    let socket_users = match &c.agent.socket_group {
        Some(g) => format!("root and the group {g}"),
        None => "root only".into(),
    };
    let who = match (tokens.read.is_some(), tokens.write.is_some()) {
        (true, true) => "the read token looks, the write token also acts".to_string(),
        (false, true) => "the write token looks and acts; no read token".to_string(),
        (true, false) => "the read token looks; no write token: nobody acts through it".to_string(),
        (false, false) => format!("no tokens: the socket's mode decides ({socket_users}), and it answers only to localhost"),
    };
    match c.web.listen() {
        Ok(Some(WebListen::Tcp(a))) if a.ip().is_unspecified() => format!("http://HOST:{}/ on every address ({who}); plain HTTP: across an untrusted network put a TLS proxy or an SSH tunnel in front", a.port()),
        Ok(Some(WebListen::Tcp(a))) => format!("http://{a}/ ({who})"),
        Ok(Some(WebListen::Unix(p))) => format!("on the unix socket {} ({who})", p.display()),
        _ => "off (no web.listen)".into(),
    }
}
