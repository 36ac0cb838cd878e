//! Why a VM has the tune it has, kept as data and put in words only when
//! shown.

use super::class::Class;
use super::NET_RETRY_AFTER_MS;
use crate::model::VmId;
use std::sync::Arc;

/// Why a VM has the tune it has. Kept as data and put in words only when
/// shown: formatting 10,000 sentences a tick would cost more than deciding.
/// Crosses the API as its text.
#[derive(Clone, Debug, PartialEq)]
pub enum Why {
    Critical,
    Learning,
    /// Bound on the CPU with others on a saturated host.
    Conflict { others: Others, host_cpus: u32, busy: f64 },
    AtCapNoCapMax,
    AtCap,
    Saturated,
    Waiting,
    Idle,
    /// Cpu-bound but nothing holds it back.
    NoGain { cpu_use: f64 },
    Own(Class),
    DiskBound,
    DiskConflict { others: Others },
    DiskIdle,
    /// Disk-bound at its I/O limit: raised to `disk_max`…
    DiskAtLimit,
    /// …which its settings do not give.
    DiskAtLimitNoMax,
    /// Net-bound at its bandwidth limit: raised to `net_max`.
    NetAtLimit,
    NetAtLimitNoMax,
    /// Net-bound with no limit on its interface.
    NetUnlimited,
    /// Net-bound but below its limit.
    NetBelowLimit,
    /// Net-bound, and none of its interfaces can take a limit.
    NetNoInterface,
    NetConflict { others: Others },
    /// libvirt refused the last bandwidth change (its words).
    NetRefused(String),
    /// Anything else: its own limit.
    NetOwn(Class),
    /// As read back from the API.
    Text(String),
}

/// The others a VM conflicts with: a few named (shared by every VM of the
/// conflict), the VM itself left out when shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Others {
    pub(super) named: Arc<[VmId]>,
    pub(super) me: VmId,
    pub(super) total: usize,
}

impl Others {
    /// "a, b, c" or "a, b, c, others".
    fn names(&self) -> String {
        let mut names: Vec<&str> = self.named.iter().filter(|v| **v != self.me).take(3).map(VmId::as_str).collect();
        if self.total > names.len() + 1 {
            names.push("others");
        }
        names.join(", ")
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Critical => f.write_str("time-critical: put first"),
            Why::Learning => f.write_str("learning its activity, no class yet: no change"),
            Why::Conflict { others, host_cpus, busy } => {
                let names = others.names();
                write!(
                    f,
                    "cpu-bound, as is {}, on a host whose {host_cpus} CPUs are all asked for ({busy:.1} CPUs' worth): raising one would only rob the other, so neither changes",
                    names
                )
            }
            Why::AtCapNoCapMax => {
                f.write_str("cpu-bound at its cap; its settings allow no higher cap (cap_max), so only its weight rises")
            }
            Why::AtCap => f.write_str("cpu-bound at its cap: it would gain from a higher cap"),
            Why::Saturated => f.write_str("cpu-bound on a host whose CPUs are all in use: it gains from a higher weight"),
            Why::Waiting => f.write_str("cpu-bound and its vCPUs wait for host CPUs: it gains from a higher weight"),
            Why::Idle => f.write_str("idle: its weight is cut until it is busy again"),
            Why::NoGain { cpu_use } => write!(
                f,
                "cpu-bound ({:.0}% of its vCPUs) but it gets all the CPU it asks for: more would not help",
                cpu_use * 100.0
            ),
            Why::Own(class) => write!(f, "{}: its own weight", class.as_str()),
            Why::DiskBound => f.write_str("disk-bound: it gets a higher disk weight"),
            Why::DiskConflict { others } => {
                let names = others.names();
                write!(f, "disk-bound, as is {}: raising one's disk weight would only rob the other, so neither changes", names)
            }
            Why::DiskIdle => f.write_str("idle while another VM is disk-bound: its disk weight is cut"),
            Why::DiskAtLimit => f.write_str("disk-bound at its I/O limit: it gets a higher limit, up to disk_max"),
            Why::DiskAtLimitNoMax => {
                f.write_str("disk-bound at its I/O limit; its settings allow no higher limit (disk_max), so it keeps its own")
            }
            Why::NetAtLimit => f.write_str("net-bound at its bandwidth limit: it gets a higher limit, up to net_max"),
            Why::NetAtLimitNoMax => {
                f.write_str("net-bound at its bandwidth limit; its settings allow no higher limit (net_max), so it keeps its own")
            }
            Why::NetUnlimited => f.write_str("net-bound with no bandwidth limit on its interface: ebb has no limit to raise"),
            Why::NetBelowLimit => f.write_str("net-bound but below its bandwidth limit: a higher limit would not help"),
            Why::NetNoInterface => f.write_str(
                "net-bound, but none of its interfaces can take a bandwidth limit (QEMU user-mode networking cannot; bridge, network, direct and ethernet ones can): nothing to raise",
            ),
            Why::NetConflict { others } => {
                let names = others.names();
                write!(f, "net-bound, as is {}: raising one's bandwidth would only rob the other, so neither changes", names)
            }
            Why::NetRefused(detail) => write!(
                f,
                "libvirt refused its last bandwidth change ({detail}): its limit is left as it is for {} minutes",
                NET_RETRY_AFTER_MS / 60_000
            ),
            Why::NetOwn(class) => write!(f, "{}: its own bandwidth limit", class.as_str()),
            Why::Text(t) => f.write_str(t),
        }
    }
}

reason_as_text!(Why);
