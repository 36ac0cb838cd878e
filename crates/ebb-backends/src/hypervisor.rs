//! The `Hypervisor` trait: what the agent needs from whatever runs the VMs.

use ebb_core::{Bytes, Observation, VmId};

#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// The hypervisor cannot be reached at all (libvirtd down, bad URI):
    /// the agent reconnects with backoff.
    #[error("libvirt at {uri} is not reachable ({detail}): is libvirtd running?")]
    Unreachable { uri: String, detail: String },
    #[error("domain {0} does not exist (any more)")]
    NoSuchVm(VmId),
    #[error("domain {0} has no balloon device: add <memballoon model='virtio'> to its XML to let ebb manage its memory")]
    NoBalloon(VmId),
    /// Any other failure of one operation on one VM.
    #[error("{op} on {vm} failed: {detail}")]
    Operation { op: &'static str, vm: VmId, detail: String },
}

impl HvError {
    /// True when the connection itself is gone and must be re-established.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, HvError::Unreachable { .. })
    }
}

/// The hypervisor as the agent uses it. Blocking: the agent calls it from a
/// blocking task. Optional capabilities get default methods.
pub trait Hypervisor: Send {
    /// The URI or name this backend talks to, for messages.
    fn uri(&self) -> &str;

    /// The host and every domain, in one bulk call (virConnectGetAllDomainStats).
    /// `Observation::at` is left for the caller to stamp.
    fn observe(&mut self) -> Result<Observation, HvError>;

    /// Set a running guest's memory size (the balloon target).
    fn set_memory(&mut self, vm: &VmId, target: Bytes) -> Result<(), HvError>;

    /// The guest's memory size right now. The bulk call's `balloon.current`
    /// follows QEMU's BALLOON_CHANGE event, which QEMU sends at most once a
    /// second; this reads the balloon itself, so the agent can follow a
    /// balloon in flight closely. One call per VM: only for moving ones.
    fn balloon_now(&mut self, vm: &VmId) -> Result<Bytes, HvError> {
        self.observe()?
            .vms
            .into_iter()
            .find(|v| &v.id == vm)
            .and_then(|v| v.balloon.map(|b| b.current))
            .ok_or_else(|| HvError::NoSuchVm(vm.clone()))
    }

    /// ebb's settings element from the domain's `<metadata>`, as XML text,
    /// or None when the domain carries none.
    fn ebb_metadata(&mut self, vm: &VmId) -> Result<Option<String>, HvError>;
}

/// The XML namespace of ebb's per-VM settings in a domain's `<metadata>`.
pub const EBB_METADATA_NS: &str = "https://ebb.dev/xmlns/vm/1";
