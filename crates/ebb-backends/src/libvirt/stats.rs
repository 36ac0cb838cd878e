//! The bulk stats call (`virConnectGetAllDomainStats`): which groups it
//! asks for, and each domain's record read into the fields ebb uses
//! (`Fields`): state, balloon and guest memory, activity counters.

use std::time::{Duration, Instant};

use ebb_core::{Activity, Bytes, GuestMemStats, VmState};

use super::ffi::Value;

/// Stats groups asked for in the bulk call. Drivers that lack a group (the
/// test driver lacks all but `state`) leave it out instead of failing, as
/// long as ENFORCE_STATS is not set.
pub(super) const STATS: u32 = virt_sys::VIR_DOMAIN_STATS_STATE
    | virt_sys::VIR_DOMAIN_STATS_BALLOON
    | virt_sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | virt_sys::VIR_DOMAIN_STATS_VCPU
    | virt_sys::VIR_DOMAIN_STATS_INTERFACE
    | virt_sys::VIR_DOMAIN_STATS_BLOCK;

/// All domains, active and inactive. NOWAIT: a domain busy with a job (a
/// managedsave, a migration) reports what it can at once instead of holding
/// up the whole tick; it then lacks guest stats for that tick.
pub(super) const STATS_FLAGS: u32 = virt_sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;

/// Names a libvirt newer than 9.0 may give the guest's oom-kill counter.
const OOM_FIELDS: [&str; 3] = ["balloon.oom_kill", "balloon.oom_kills", "balloon.oom-kills"];

/// The bulk call runs with NOWAIT, so a domain busy with another job (a
/// monitoring tool's query, say) comes back without guest stats; for this
/// long its last ones stand in rather than dropping it from management.
const STATS_GRACE: Duration = Duration::from_secs(5);

pub(super) fn stats_or_recent(fresh: Option<GuestMemStats>, last: Option<&(GuestMemStats, Instant)>, now: Instant) -> Option<GuestMemStats> {
    fresh.or_else(|| last.filter(|(_, at)| now.duration_since(*at) < STATS_GRACE).map(|(s, _)| s.clone()))
}

/// `net.0.rx.bytes` → ("net", "rx.bytes"): a per-device counter's group and
/// name, or None for anything else (`net.count`, `block.0.name`, …).
fn device_counter(name: &str) -> Option<(&str, &str)> {
    let (group, rest) = name.split_once('.')?;
    let (index, counter) = rest.split_once('.')?;
    index.bytes().all(|b| b.is_ascii_digit()).then_some((group, counter))
}

pub(super) fn vm_state(state: Option<i64>) -> VmState {
    match state.and_then(|s| u32::try_from(s).ok()) {
        // BLOCKED is a running guest waiting on a resource (virsh's "idle").
        Some(virt_sys::VIR_DOMAIN_RUNNING | virt_sys::VIR_DOMAIN_BLOCKED) => VmState::Running,
        Some(virt_sys::VIR_DOMAIN_PAUSED) => VmState::Paused,
        Some(virt_sys::VIR_DOMAIN_SHUTOFF) => VmState::ShutOff,
        _ => VmState::Other,
    }
}

/// The fields of one bulk record ebb uses so far.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) state: Option<i64>,
    pub(super) current: Option<u64>,
    pub(super) maximum: Option<u64>,
    /// QEMU's resident memory for the guest (KiB).
    pub(super) rss: Option<u64>,
    available: Option<u64>,
    unused: Option<u64>,
    usable: Option<u64>,
    swap_in: Option<u64>,
    swap_out: Option<u64>,
    major_fault: Option<u64>,
    last_update: Option<u64>,
    oom_kills: Option<u64>,
    cpu_time: Option<u64>,
    vcpu_current: Option<u64>,
    /// Summed `vcpu.N.delay`: runnable but not running (steal time).
    vcpu_delay: Option<u64>,
    net_count: u64,
    block_count: u64,
    /// Sums over devices; None when no device reported the counter.
    net_rx: Option<u64>,
    net_tx: Option<u64>,
    block_rd: Option<u64>,
    block_wr: Option<u64>,
}

impl Fields {
    pub(super) fn parse(params: &[(String, Value)]) -> Fields {
        let mut f = Fields::default();
        for (name, value) in params {
            let slot = match name.as_str() {
                "state.state" => {
                    f.state = value.as_i64();
                    continue;
                }
                "balloon.current" => &mut f.current,
                "balloon.maximum" => &mut f.maximum,
                "balloon.rss" => &mut f.rss,
                "balloon.available" => &mut f.available,
                "balloon.unused" => &mut f.unused,
                "balloon.usable" => &mut f.usable,
                "balloon.swap_in" => &mut f.swap_in,
                "balloon.swap_out" => &mut f.swap_out,
                "balloon.major_fault" => &mut f.major_fault,
                "balloon.last-update" => &mut f.last_update,
                n if OOM_FIELDS.contains(&n) => &mut f.oom_kills,
                "cpu.time" => &mut f.cpu_time,
                "vcpu.current" => &mut f.vcpu_current,
                "net.count" => {
                    f.net_count = value.as_u64().unwrap_or(0);
                    continue;
                }
                "block.count" => {
                    f.block_count = value.as_u64().unwrap_or(0);
                    continue;
                }
                n => {
                    let sum = match device_counter(n) {
                        Some(("net", "rx.bytes")) => &mut f.net_rx,
                        Some(("net", "tx.bytes")) => &mut f.net_tx,
                        Some(("block", "rd.bytes")) => &mut f.block_rd,
                        Some(("block", "wr.bytes")) => &mut f.block_wr,
                        Some(("vcpu", "delay")) => &mut f.vcpu_delay,
                        _ => continue,
                    };
                    if let Some(v) = value.as_u64() {
                        *sum = Some(sum.unwrap_or(0).saturating_add(v));
                    }
                    continue;
                }
            };
            *slot = value.as_u64();
        }
        f
    }

    /// The domain's activity counters: None without `cpu.time` (inactive
    /// domain, or a driver without the group). A device group that has
    /// devices but no counters this tick (a busy domain under NOWAIT) takes
    /// its sums from `last`, so the sum never dips and jumps back.
    pub(super) fn activity(&self, last: Option<&Activity>) -> Option<Activity> {
        let cpu_time_ns = self.cpu_time?;
        let pick = |count: u64, now: Option<u64>, before: Option<u64>| match now {
            Some(v) => v,
            None if count > 0 => before.unwrap_or(0),
            None => 0,
        };
        let (net, block) = (self.net_count, self.block_count);
        Some(Activity {
            cpu_time_ns,
            // A record without the vCPU group (NOWAIT) keeps the last values.
            vcpu_wait_ns: self.vcpu_delay.or(last.map(|a| a.vcpu_wait_ns)).unwrap_or(0),
            vcpus: self.vcpu_current.map(|v| v as u32).or(last.map(|a| a.vcpus)).unwrap_or(0),
            net_rx_bytes: pick(net, self.net_rx, last.map(|a| a.net_rx_bytes)),
            net_tx_bytes: pick(net, self.net_tx, last.map(|a| a.net_tx_bytes)),
            disk_read_bytes: pick(block, self.block_rd, last.map(|a| a.disk_read_bytes)),
            disk_write_bytes: pick(block, self.block_wr, last.map(|a| a.disk_write_bytes)),
        })
    }

    /// Guest stats exist only when the guest driver sent them: MemTotal and
    /// MemAvailable both present (a guest without MemAvailable would make
    /// every page look used).
    pub(super) fn guest_stats(&self) -> Option<GuestMemStats> {
        let (total, usable) = (self.available?, self.usable?);
        let kib = |v: Option<u64>| Bytes::from_kib(v.unwrap_or(0));
        Some(GuestMemStats {
            total: Bytes::from_kib(total),
            unused: kib(self.unused),
            usable: Bytes::from_kib(usable),
            swap_in: kib(self.swap_in),
            swap_out: kib(self.swap_out),
            major_faults: self.major_fault.unwrap_or(0),
            oom_kills: self.oom_kills,
            last_update: self.last_update,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_stats_are_stood_in_for_a_few_seconds() {
        let t0 = Instant::now();
        let last = (GuestMemStats { total: Bytes::from_mib(400), ..Default::default() }, t0);
        let fresh = GuestMemStats { total: Bytes::from_mib(300), ..Default::default() };
        assert_eq!(stats_or_recent(Some(fresh.clone()), Some(&last), t0), Some(fresh));
        assert_eq!(stats_or_recent(None, Some(&last), t0 + Duration::from_secs(2)), Some(last.0.clone()));
        assert_eq!(stats_or_recent(None, Some(&last), t0 + STATS_GRACE), None);
        assert_eq!(stats_or_recent(None, None, t0), None);
    }

    #[test]
    fn guest_stats_need_total_and_usable() {
        let p = |n: &str, v: u64| (n.to_owned(), Value::UInt(v));
        let mut params = vec![
            ("state.state".to_owned(), Value::Int(1)),
            p("balloon.current", 524288),
            p("balloon.maximum", 524288),
            p("balloon.available", 500000),
            p("balloon.unused", 100000),
            p("balloon.swap_out", 4),
            p("balloon.major_fault", 7),
            p("balloon.last-update", 1700000000),
            p("balloon.oom_kills", 2),
            p("balloon.rss", 200000),
        ];
        assert_eq!(Fields::parse(&params).guest_stats(), None, "no usable, no stats");
        params.push(p("balloon.usable", 300000));
        let f = Fields::parse(&params);
        assert_eq!(vm_state(f.state), VmState::Running);
        let s = f.guest_stats().expect("stats");
        assert_eq!(s.total, Bytes::from_kib(500000));
        assert_eq!(s.used(), Bytes::from_kib(200000));
        assert_eq!(s.swap_out, Bytes::from_kib(4));
        assert_eq!(s.major_faults, 7);
        assert_eq!(s.oom_kills, Some(2));
        assert_eq!(s.last_update, Some(1700000000));
        assert_eq!(f.rss, Some(200000));
    }

    #[test]
    fn activity_sums_devices_and_bridges_missing_counters() {
        let p = |n: &str, v: u64| (n.to_owned(), Value::UInt(v));
        let mut params = vec![
            p("cpu.time", 7_000_000),
            p("net.count", 2),
            p("net.0.rx.bytes", 100),
            p("net.0.tx.bytes", 10),
            p("net.1.rx.bytes", 200),
            p("net.1.tx.bytes", 20),
            p("net.0.rx.pkts", 99),
            p("block.count", 1),
            ("block.0.name".to_owned(), Value::Str("vda".into())),
            p("block.0.rd.bytes", 4096),
            p("block.0.wr.bytes", 512),
            p("block.0.rd.reqs", 8),
            p("vcpu.current", 2),
            p("vcpu.0.delay", 1000),
            p("vcpu.1.delay", 500),
            p("vcpu.0.wait", 77),
        ];
        let a = Fields::parse(&params).activity(None).expect("activity");
        assert_eq!(
            a,
            Activity {
                cpu_time_ns: 7_000_000,
                vcpu_wait_ns: 1500,
                vcpus: 2,
                net_rx_bytes: 300,
                net_tx_bytes: 30,
                disk_read_bytes: 4096,
                disk_write_bytes: 512
            }
        );
        // A busy domain under NOWAIT: the disk has no counters this tick, and
        // the last sums stand in rather than dropping to zero.
        params.retain(|(n, _)| !n.starts_with("block.0.rd") && !n.starts_with("block.0.wr"));
        assert_eq!(Fields::parse(&params).activity(Some(&a)).unwrap().disk_read_bytes, 4096);
        // No devices at all: zero, not the last.
        let bare = [p("cpu.time", 1), p("net.count", 0), p("block.count", 0)];
        assert_eq!(
            Fields::parse(&bare).activity(Some(&a)).unwrap(),
            Activity { cpu_time_ns: 1, vcpu_wait_ns: 1500, vcpus: 2, ..Activity::default() },
            "a record without the vCPU group keeps the last vCPU figures"
        );
        // No cpu.time: no counters from this driver.
        assert_eq!(Fields::parse(&[p("state.state", 1)]).activity(None), None);
        assert_eq!(device_counter("net.12.tx.bytes"), Some(("net", "tx.bytes")));
        assert_eq!(device_counter("net.count"), None);
        assert_eq!(device_counter("cpu.cache.monitor.count"), None);
    }

    #[test]
    fn states() {
        assert_eq!(vm_state(Some(2)), VmState::Running);
        assert_eq!(vm_state(Some(3)), VmState::Paused);
        assert_eq!(vm_state(Some(5)), VmState::ShutOff);
        assert_eq!(vm_state(Some(6)), VmState::Other);
        assert_eq!(vm_state(None), VmState::Other);
    }
}
