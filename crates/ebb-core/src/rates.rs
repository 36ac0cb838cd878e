//! Counters become rates here, and only here: every policy that reads a VM's
//! activity (sleep, reallocation, the needs history) sees the same numbers.

use crate::model::Activity;
use crate::units::{Bytes, Millis};
use serde::{Deserialize, Serialize};

/// At or below all of these a VM counts as idle, to the sleep policy and
/// the reallocation policy alike (each config may set its own): an idle
/// Linux server (timer ticks, ARP, DHCP, NTP, keepalives, journald, atime
/// updates) stays under them, one interactive request or a cron job crosses
/// one. CPU as a fraction of one vCPU (an idle 128 MiB TCG guest measured 0.5%).
pub const IDLE_CPU: f64 = 0.05;
/// Network bytes per second, received and sent.
pub const IDLE_NET: Bytes = Bytes::from_kib(2);
/// Disk bytes per second, read and written.
pub const IDLE_DISK: Bytes = Bytes::from_kib(64);

/// A VM's average activity between two readings of its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityRates {
    /// Host CPU used, in vCPUs' worth (1.0 = one CPU busy all the time).
    pub cpu: f64,
    /// Time its vCPUs waited for a host CPU, in vCPUs' worth.
    pub vcpu_wait: f64,
    /// Network bytes per second, received and sent…
    pub net: Bytes,
    /// …of which received (the guest's inbound) and sent (its outbound),
    /// held against its bandwidth limit in each direction.
    #[serde(default)]
    pub net_in: Bytes,
    #[serde(default)]
    pub net_out: Bytes,
    /// Disk bytes per second, read and written.
    pub disk: Bytes,
}

impl Activity {
    /// True when any counter is below `earlier`'s: the VM's QEMU process
    /// restarted (reboot, restore from a save) and counts from zero again.
    pub fn went_back(&self, earlier: &Activity) -> bool {
        self.cpu_time_ns < earlier.cpu_time_ns
            || self.vcpu_wait_ns < earlier.vcpu_wait_ns
            || self.net_rx_bytes < earlier.net_rx_bytes
            || self.net_tx_bytes < earlier.net_tx_bytes
            || self.disk_read_bytes < earlier.disk_read_bytes
            || self.disk_write_bytes < earlier.disk_write_bytes
    }
}

impl ActivityRates {
    /// None when no time passed or a counter went back.
    pub fn between(from_at: Millis, from: &Activity, to_at: Millis, to: &Activity) -> Option<ActivityRates> {
        let ms = to_at.since(from_at);
        if ms == 0 || to.went_back(from) {
            return None;
        }
        let (rx, tx) = (to.net_rx_bytes - from.net_rx_bytes, to.net_tx_bytes - from.net_tx_bytes);
        Some(ActivityRates {
            cpu: per_ns(to.cpu_time_ns - from.cpu_time_ns, ms),
            vcpu_wait: per_ns(to.vcpu_wait_ns - from.vcpu_wait_ns, ms),
            net: per_second(rx.saturating_add(tx), ms),
            net_in: per_second(rx, ms),
            net_out: per_second(tx, ms),
            disk: per_second(
                (to.disk_read_bytes - from.disk_read_bytes).saturating_add(to.disk_write_bytes - from.disk_write_bytes),
                ms,
            ),
        })
    }
}

/// Nanoseconds of CPU over `ms` of wall time, as CPUs' worth.
fn per_ns(delta_ns: u64, ms: u64) -> f64 {
    delta_ns as f64 / (ms as f64 * 1e6)
}

/// A byte count over `ms`, per second.
pub fn per_second(delta: u64, ms: u64) -> Bytes {
    Bytes((u128::from(delta) * 1000 / u128::from(ms.max(1))).min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_counters() {
        let a = Activity { cpu_time_ns: 1_000_000_000, vcpu_wait_ns: 0, net_rx_bytes: 100, ..Activity::default() };
        let b = Activity {
            cpu_time_ns: 3_000_000_000,
            vcpu_wait_ns: 500_000_000,
            net_rx_bytes: 2148,
            disk_write_bytes: 4096,
            ..Activity::default()
        };
        let r = ActivityRates::between(Millis(0), &a, Millis(2000), &b).unwrap();
        assert_eq!((r.cpu, r.vcpu_wait, r.net, r.disk), (1.0, 0.25, Bytes(1024), Bytes(2048)));
        assert_eq!((r.net_in, r.net_out), (Bytes(1024), Bytes(0)));
        assert_eq!(ActivityRates::between(Millis(2000), &b, Millis(2000), &b), None);
        assert_eq!(ActivityRates::between(Millis(0), &b, Millis(2000), &a), None, "a restart is not a negative rate");
    }
}
