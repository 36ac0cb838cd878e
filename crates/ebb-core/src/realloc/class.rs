//! What a VM's activity is bound on: the class it is given, and the
//! resources of one reading. A leaf: the classifier, the views and the
//! reasons all name it.

use serde::{Deserialize, Serialize};

/// What a VM's activity is bound on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Idle,
    /// Busy, bound on nothing.
    Steady,
    CpuBound,
    DiskBound,
    NetBound,
    /// Bound on more than one resource.
    Mixed,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Idle => "idle",
            Class::Steady => "steady",
            Class::CpuBound => "cpu-bound",
            Class::DiskBound => "disk-bound",
            Class::NetBound => "net-bound",
            Class::Mixed => "mixed",
        }
    }
}

/// The resources a VM is bound on at one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub cpu: bool,
    pub disk: bool,
    pub net: bool,
}

impl Bound {
    /// The class of one reading: bound on nothing is idle or steady.
    pub(super) fn class(self, idle: bool) -> Class {
        match (self.cpu, self.disk, self.net) {
            (false, false, false) if idle => Class::Idle,
            (false, false, false) => Class::Steady,
            (true, false, false) => Class::CpuBound,
            (false, true, false) => Class::DiskBound,
            (false, false, true) => Class::NetBound,
            _ => Class::Mixed,
        }
    }
}
