//! Prometheus text exposition of the agent's snapshot.

use crate::api_types::{Connection, Snapshot};
use std::fmt::Write;

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let st = &s.status;
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    gauge("ebb_connected", "1 when ebb is connected to libvirt.", "gauge", matches!(st.connection, Connection::Connected { .. }) as u8 as f64);
    gauge("ebb_ticks_total", "Ticks run since start.", "counter", st.ticks as f64);
    gauge("ebb_tick_duration_seconds", "Wall time of the last tick.", "gauge", st.last_tick_ms / 1000.0);
    gauge("ebb_actions_total", "Actions carried out since start.", "counter", st.actions_total as f64);
    gauge("ebb_action_failures_total", "Actions that failed since start.", "counter", st.action_failures_total as f64);
    gauge("ebb_sleeps_total", "VMs ebb put to sleep since start.", "counter", st.sleeps_total as f64);
    gauge("ebb_wakes_total", "VMs ebb woke since start.", "counter", st.wakes_total as f64);
    gauge("ebb_last_wake_seconds", "How long the last wake (restore or resume) took.", "gauge", st.last_wake_ms.unwrap_or(0.0) / 1000.0);
    gauge("ebb_memory_pool_bytes", "Memory ebb may hand to guests.", "gauge", st.pool.map_or(0.0, |p| p.0 as f64));
    gauge("ebb_memory_pool_used_bytes", "Sum of the guests' current sizes.", "gauge", st.pool_used.0 as f64);
    gauge("ebb_memory_returned_bytes", "Of the guests' sizes, what the host does not hold (never touched, or handed back by free page reporting).", "gauge", st.returned.0 as f64);
    gauge("ebb_host_memory_total_bytes", "Host memory.", "gauge", st.host_total.0 as f64);
    gauge("ebb_host_memory_available_bytes", "Host memory available.", "gauge", st.host_available.0 as f64);
    gauge("ebb_vms", "Domains on the host.", "gauge", st.vms as f64);
    gauge("ebb_vms_managed", "Domains whose memory ebb manages now.", "gauge", st.vms_managed as f64);
    gauge("ebb_active_clients", "Clients of the host's VMs whose activity timer has not run out.", "gauge", st.active_clients as f64);
    if let Some(h) = &st.host_sleep {
        gauge("ebb_host_asleep", "1 while the host sleeps (or its sleep is recorded) for want of clients.", "gauge", (h.state != "awake" && h.state != "draining") as u8 as f64);
        gauge("ebb_host_sleeps_total", "Times the host went to sleep for want of clients.", "counter", h.sleeps_total as f64);
        gauge("ebb_host_wakes_total", "Times the host woke from such a sleep.", "counter", h.wakes_total as f64);
        if let Some(ms) = h.last_wake_took_ms {
            gauge("ebb_host_last_wake_seconds", "The farm's last wake of the host: the coordinator's first send to the agent's awake.", "gauge", ms as f64 / 1000.0);
        }
    }
    if let Some(p) = &st.power {
        let low = matches!(p.state, Some(ebb_core::power::PowerState::Low(_)));
        let on_battery = low || matches!(p.state, Some(ebb_core::power::PowerState::OnBattery));
        gauge("ebb_power_on_battery", "1 while the host runs on battery.", "gauge", on_battery as u8 as f64);
        gauge("ebb_power_low_battery", "1 while the battery is low (ebb saves every VM).", "gauge", low as u8 as f64);
        gauge("ebb_power_source_up", "1 when the last power reading succeeded.", "gauge", p.error.is_none() as u8 as f64);
        gauge("ebb_power_vms_saved", "VMs saved on low battery, waiting for mains power.", "gauge", p.saved_for_power.len() as f64);
        if let Some(r) = &p.reading {
            if let Some(c) = r.charge {
                gauge("ebb_power_battery_charge_percent", "Battery charge.", "gauge", c);
            }
            if let Some(t) = r.runtime_s {
                gauge("ebb_power_battery_runtime_seconds", "Battery runtime left.", "gauge", t);
            }
            if let Some(w) = r.draw {
                gauge("ebb_power_draw_watts", "The host's draw as the source measures it.", "gauge", w.0);
            }
        }
        if let Some(w) = p.model_draw {
            gauge("ebb_power_model_watts", "The host's draw by the power model at the VMs' CPU use.", "gauge", w.0);
        }
        if let Some(m) = &p.measured {
            gauge("ebb_power_measured_watts", "The host's draw as RAPL measures it.", "gauge", m.watts.0);
        }
    }

    if let Some(d) = st.power.as_ref().and_then(|p| p.devices.as_ref()) {
        if let Some(c) = &d.cpu {
            gauge("ebb_cpufreq_saving", "1 while ebb holds the CPUs in their power-saving setting.", "gauge", c.policy.saving as u8 as f64);
            gauge("ebb_cpufreq_read_ok", "1 when the last read of cpufreq succeeded.", "gauge", c.error.is_none() as u8 as f64);
            if let Some(u) = c.policy.vms_use {
                gauge("ebb_vms_cpu_use_ratio", "The VMs' CPU use as a fraction of the host's CPUs.", "gauge", u);
            }
        }
        gauge("ebb_cpufreq_changes_total", "Times ebb set the CPUs to save power or gave them back.", "counter", d.cpufreq_changes_total as f64);
        gauge("ebb_disk_standbys_total", "Disks ebb put in standby.", "counter", d.disk_standbys_total as f64);
        if let Some(disks) = &d.disks {
            type State = fn(&ebb_core::devices::DiskState) -> bool;
            let per_disk: [(&str, &str, State); 2] = [
                ("ebb_disk_standby", "1 while a disk ebb put in standby has had no I/O since.", |s| matches!(s, ebb_core::devices::DiskState::Standby { .. })),
                ("ebb_disk_guarded", "1 while a disk holds a running VM's image (never put in standby).", |s| {
                    matches!(s, ebb_core::devices::DiskState::Guarded { .. })
                }),
            ];
            for (name, help, pick) in per_disk {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for disk in &disks.disks {
                    let _ = writeln!(out, "{name}{{disk=\"{}\"}} {}", escape(&disk.name), pick(&disk.state) as u8);
                }
            }
        }
    }

    type Pick = fn(&crate::api_types::VmInfo) -> Option<f64>;
    let per_vm: [(&str, &str, Pick); 23] = [
        ("ebb_vm_surrogate_held_connections", "Client connections held while the VM wakes.", |v| v.surrogate.as_ref().map(|s| s.held_connections as f64)),
        ("ebb_vm_surrogate_refused_total", "Clients the surrogate refused (reset or 503).", |v| v.surrogate.as_ref().map(|s| s.refused as f64)),
        ("ebb_vm_surrogate_answered_locally_total", "Requests the surrogate answered itself (echo, canned).", |v| v.surrogate.as_ref().map(|s| s.answered_locally as f64)),
        ("ebb_vm_surrogate_bytes_total", "Client bytes to and from the VM through ebb: spliced, or forwarded by the kernel path (IP bytes).", |v| v.surrogate.as_ref().map(|s| s.bytes as f64)),
        ("ebb_vm_asleep", "1 while ebb holds the VM asleep.", |v| Some(v.sleeping.is_some() as u8 as f64)),
        ("ebb_vm_memory_actual_bytes", "Guest memory size now (balloon current).", |v| v.memory.actual.map(|b| b.0 as f64)),
        ("ebb_vm_memory_target_bytes", "Guest memory size ebb steers to.", |v| v.memory.target.map(|b| b.0 as f64)),
        ("ebb_vm_memory_used_bytes", "Memory the guest uses (MemTotal - MemAvailable).", |v| v.memory.used.map(|b| b.0 as f64)),
        ("ebb_vm_memory_host_rss_bytes", "What the host really holds for the guest (QEMU's resident memory): below its size by what it never touched or handed back (free page reporting).", |v| v.memory.host_rss.map(|b| b.0 as f64)),
        ("ebb_vm_memory_entitlement_bytes", "The guest's share of the pool.", |v| v.memory.entitlement.map(|b| b.0 as f64)),
        ("ebb_vm_memory_step_bytes", "The guest's adaptive reclaim step.", |v| Some(v.memory.step.0 as f64)),
        ("ebb_vm_memory_under_pressure", "1 when the guest is short of memory.", |v| Some(v.memory.under_pressure as u8 as f64)),
        ("ebb_vm_managed", "1 when ebb manages the guest's memory now.", |v| Some(v.memory.skipped.is_none() as u8 as f64)),
        ("ebb_vm_cpu_shares", "The VM's live CPU weight (cpu_shares).", |v| v.realloc.as_ref()?.current.map(|t| t.shares as f64)),
        ("ebb_vm_cpu_cap_ratio", "The VM's live CPU cap per vCPU (1 = a whole CPU); absent when uncapped.", |v| v.realloc.as_ref()?.current?.cap()),
        ("ebb_vm_cpu_demand_ratio", "CPU the VM ran plus waited for, as a fraction of its vCPUs.", |v| v.realloc.as_ref()?.cpu_use),
        ("ebb_vm_net_in_limit_bytes", "The VM's live inbound bandwidth limit, bytes per second; absent when unlimited or it has no interface that takes one.", |v| {
            v.realloc.as_ref()?.current?.net?.inbound.limit().map(|b| b.0 as f64)
        }),
        ("ebb_vm_net_out_limit_bytes", "The VM's live outbound bandwidth limit, bytes per second; absent when unlimited or it has no interface that takes one.", |v| {
            v.realloc.as_ref()?.current?.net?.outbound.limit().map(|b| b.0 as f64)
        }),
        ("ebb_vm_cpu_changed_by_ebb", "1 while ebb holds the VM's CPU weight or cap, disk weight or bandwidth limit away from its own.", |v| {
            let r = v.realloc.as_ref()?;
            Some((r.current.is_some() && r.current != r.base) as u8 as f64)
        }),
        ("ebb_vm_critical", "1 while the VM is marked time-critical.", |v| v.realloc.as_ref().map(|r| r.critical as u8 as f64)),
        ("ebb_vm_disk_limit_bytes", "The live I/O limit of the VM's first disk, bytes per second (0: none).", |v| {
            v.realloc.as_ref()?.current?.disk_limit.map(|l| l as f64)
        }),
        ("ebb_vm_guest_vcpus_online", "vCPUs online in the guest, with vcpus_min set.", |v| match &v.vcpus {
            Some(Ok(c)) => Some(f64::from(c.online)),
            _ => None,
        }),
        ("ebb_vm_pinned_by_ebb", "1 while ebb holds the VM's vCPUs on other CPUs than its own.", |v| {
            v.affinity.as_ref().map(|a| (a.current != a.base) as u8 as f64)
        }),
    ];
    for (name, help, pick) in per_vm {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for vm in &s.vms {
            if let Some(v) = pick(vm) {
                let _ = writeln!(out, "{name}{{vm=\"{}\"}} {v}", escape(&vm.name));
            }
        }
    }
    per_kind_clients(&mut out, s);
    out
}

/// Each VM's active clients, by kind (console, surrogate, heartbeat).
fn per_kind_clients(out: &mut String, s: &Snapshot) {
    let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for c in &s.clients {
        *counts.entry((c.vm.as_str(), c.kind.as_str())).or_default() += 1;
    }
    let name = "ebb_vm_active_clients";
    let _ = writeln!(out, "# HELP {name} A VM's clients whose activity timer has not run out, by kind.\n# TYPE {name} gauge");
    for ((vm, kind), n) in counts {
        let _ = writeln!(out, "{name}{{vm=\"{}\",kind=\"{kind}\"}} {n}", escape(vm));
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
