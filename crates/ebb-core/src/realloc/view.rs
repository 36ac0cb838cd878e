//! What the reallocation policy shows (`ebb vms`, `ebb explain`) and
//! returns each tick, and the tunes it remembers per VM.

use super::class::{Bound, Class};
use super::why::Why;
use crate::model::*;
use crate::policy::Decision;
use crate::rates::ActivityRates;
use crate::units::*;
use serde::{Deserialize, Serialize};

/// One VM as the reallocation policy sees it, for `ebb vms` and `explain`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmReallocView {
    pub vm: VmId,
    /// None until a class has held for `class_after`.
    pub class: Option<Class>,
    pub bound: Bound,
    /// A different class it is showing, and since when.
    pub pending: Option<(Class, Millis)>,
    /// The class its history gives for this hour, which it started from.
    #[serde(default)]
    pub expected: Option<Class>,
    pub rates: Option<ActivityRates>,
    /// CPU use as a fraction of its vCPUs.
    pub cpu_use: Option<f64>,
    pub at_cap: bool,
    /// Bound on the CPU, and more CPU would help it (held like its class).
    pub gains: bool,
    /// …and it competes with other VMs for host CPUs.
    pub contended: bool,
    pub critical: bool,
    /// Its own CPU tune, as found before ebb changed it.
    pub base: Option<Tune>,
    /// What libvirt has now.
    pub current: Option<Tune>,
    /// What ebb wants it to have.
    pub wanted: Option<Tune>,
    /// Why it has the CPU tune it has; in words through `Display`.
    pub why: Option<Why>,
    /// Why it has the disk weight it has; None without a disk weight.
    #[serde(default)]
    pub io_why: Option<Why>,
    /// Its traffic sits at its own bandwidth limit (held like its class).
    #[serde(default)]
    pub at_net_limit: bool,
    /// Why it has the bandwidth limit it has; None when it has no
    /// interface that can take one and is not net-bound.
    #[serde(default)]
    pub net_why: Option<Why>,
    /// At its own disk I/O limit, held like its class.
    #[serde(default)]
    pub at_disk_limit: bool,
    /// Why its disk I/O limit is what it is; None when its disk has none.
    #[serde(default)]
    pub disk_why: Option<Why>,
    /// Why ebb leaves it alone this tick.
    pub skipped: Option<String>,
}

impl VmReallocView {
    pub(crate) fn new(vm: VmId) -> VmReallocView {
        VmReallocView {
            vm,
            class: None,
            bound: Bound::default(),
            pending: None,
            expected: None,
            rates: None,
            cpu_use: None,
            at_cap: false,
            gains: false,
            contended: false,
            critical: false,
            base: None,
            current: None,
            wanted: None,
            why: None,
            io_why: None,
            at_net_limit: false,
            net_why: None,
            at_disk_limit: false,
            disk_why: None,
            skipped: None,
        }
    }
}

/// What the VMs ask of the host's CPUs this tick: the host-wide part of
/// the reallocation decision.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    /// What they ran plus what their vCPUs waited to run (a capped VM's
    /// wait included), in CPUs' worth.
    pub host_demand: f64,
    /// Whether that demand saturates the host's CPUs (held like a class).
    pub saturated: bool,
}

/// Tunes, and one view per observed VM in observation order.
pub type ReallocDecision = Decision<VmReallocView, Demand>;

/// A VM's CPU tune as ebb found it and as ebb last set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunes {
    pub base: Tune,
    /// None: ebb has nothing of its own in place.
    pub applied: Option<Tune>,
}

/// " (CPU 97% of its 1 vCPU, waiting 0%)": the numbers behind a change.
pub(super) fn rates_words(v: &VmReallocView) -> String {
    match (v.rates, v.cpu_use) {
        (Some(r), Some(u)) => format!(
            " (CPU {:.0}% of its vCPUs, vCPU wait {:.0}%, disk {}/s, network {}/s)",
            u * 100.0,
            r.vcpu_wait * 100.0,
            r.disk,
            r.net
        ),
        _ => String::new(),
    }
}
