//! The `Hypervisor` trait: what the agent needs from whatever runs the VMs.

use ebb_core::affinity::{CpuSet, HostCpuTime};
use ebb_core::clients::ConsoleSink;
use ebb_core::{Bytes, Observation, Tune, VmId};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Why the hypervisor failed, in the backend's own words (libvirt's
/// message, the sim's text): the cause an `HvError` keeps as its
/// `#[source]`. Only a backend in this crate makes one, so the message of
/// an `HvError` can never come back as the cause of another.
#[derive(Clone, Debug)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

impl BackendError {
    /// A failure the backend got as an error of its own.
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
        BackendError(Arc::new(e))
    }

    /// A failure the backend has only words for.
    pub(crate) fn said(text: impl Into<String>) -> BackendError {
        BackendError::new(Said(text.into()))
    }
}

/// Transparent: the backend's error itself, told and chained as it is.
impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The backend's words, for callers that keep a cause as text (the
/// realloc policy's note of a refused bandwidth limit).
impl From<BackendError> for String {
    fn from(e: BackendError) -> String {
        e.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Said(String);

// Each message says what failed and what to do; where a backend's error
// is the cause, its words are in the message too (the agent journals the
// message alone) and the error itself is the `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// The hypervisor cannot be reached at all (libvirtd down, bad URI, the
    /// connection dropped): the agent reconnects with backoff.
    #[error("libvirt at {uri} is not reachable ({detail}): is libvirtd running?")]
    Disconnected {
        uri: String,
        #[source]
        detail: BackendError,
    },
    #[error("domain {0} does not exist (any more)")]
    NoSuchVm(VmId),
    #[error("domain {0} has no balloon device: add <memballoon model='virtio'> to its XML to let ebb manage its memory")]
    NoBalloon(VmId),
    /// managedsave needs a persistent definition to attach the image to.
    #[error("domain {0} is transient: only a persistent domain can be saved; define it with virsh define (or let it sleep by pausing)")]
    Transient(VmId),
    /// libvirt refused a bandwidth limit (before any other part of a tune
    /// was touched). On a host whose kernel lacks the traffic control
    /// libvirt uses, every limit is refused.
    #[error("libvirt could not set the network bandwidth of {vm} ({detail}): its other tunes were left as they were; libvirt limits bandwidth with tc (htb, sfq, ingress policing), so the host's kernel needs sch_htb, sch_sfq, sch_ingress and act_police")]
    Bandwidth {
        vm: VmId,
        #[source]
        detail: BackendError,
    },
    /// A call about the host or every domain failed (not the connection).
    #[error("libvirt could not {op}: {detail}")]
    Host {
        op: &'static str,
        #[source]
        detail: BackendError,
    },
    /// Any other failure of one operation on one VM.
    #[error("{op} on {vm} failed: {detail}")]
    Operation {
        op: &'static str,
        vm: VmId,
        #[source]
        detail: BackendError,
    },
}

impl HvError {
    /// True when the connection itself is gone and must be re-established.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, HvError::Disconnected { .. })
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

    /// The host files and block devices behind the domain's disks (its
    /// images), so the host never puts their disk in standby under it.
    /// Network disks (RBD, iSCSI, …) have no host file and are left out.
    fn disk_sources(&mut self, vm: &VmId) -> Result<Vec<PathBuf>, HvError> {
        Err(unsupported("read disk sources", vm))
    }

    /// A running domain's live CPU weight and cap (virDomainGetSchedulerParameters),
    /// disk weight and bandwidth limit.
    /// One call per VM: read when a VM appears and after a change.
    fn tune(&mut self, vm: &VmId) -> Result<Tune, HvError> {
        Err(unsupported("read CPU tune", vm))
    }

    /// Sets a running domain's live CPU weight and cap, disk weight and
    /// bandwidth limit (the limit first: `HvError::Bandwidth` when refused,
    /// with nothing else changed); its persistent definition is left alone,
    /// so a restart brings back its own values.
    fn set_tune(&mut self, vm: &VmId, tune: Tune) -> Result<(), HvError> {
        let _ = tune;
        Err(unsupported("set CPU tune", vm))
    }

    /// Each host CPU's cumulative busy and total time (virNodeGetCPUStats),
    /// for the affinity policy; empty when the driver cannot tell.
    fn host_cpu_times(&mut self) -> Result<Vec<HostCpuTime>, HvError> {
        Ok(vec![])
    }

    /// A running domain's live vCPU pinning, one CPU set per vCPU.
    fn vcpu_pins(&mut self, vm: &VmId) -> Result<Vec<CpuSet>, HvError> {
        Err(unsupported("read vCPU pinning", vm))
    }

    /// Pins a running domain's vCPUs live (its definition keeps its own).
    fn set_vcpu_pins(&mut self, vm: &VmId, pins: &[CpuSet]) -> Result<(), HvError> {
        let _ = pins;
        Err(unsupported("pin vCPUs", vm))
    }

    /// The vCPUs online in a running guest, as its agent says.
    fn guest_vcpus(&mut self, vm: &VmId) -> Result<u32, HvError> {
        Err(unsupported("read the guest's online vCPUs", vm))
    }

    /// Has the guest online or offline its own vCPUs, through its agent.
    fn set_guest_vcpus(&mut self, vm: &VmId, count: u32) -> Result<(), HvError> {
        let _ = count;
        Err(unsupported("set the guest's online vCPUs", vm))
    }

    // Sleep and wake (SPEC §2). None of these ever destroys a domain: a
    // failed save leaves the VM running, a failed start leaves the image.

    /// Saves a running domain's state to disk and stops it, freeing its
    /// memory (virDomainManagedSave). `HvError::Transient` for a domain
    /// without a persistent definition.
    fn save(&mut self, vm: &VmId) -> Result<(), HvError> {
        Err(unsupported("save", vm))
    }

    /// Pauses a running domain's vCPUs; it keeps its memory.
    fn pause(&mut self, vm: &VmId) -> Result<(), HvError> {
        Err(unsupported("pause", vm))
    }

    /// Resumes a paused domain.
    fn resume(&mut self, vm: &VmId) -> Result<(), HvError> {
        Err(unsupported("resume", vm))
    }

    /// Starts a shut-off domain (virDomainCreate): restores it from its
    /// managed save image when it has one, boots it otherwise. Returns once
    /// the domain runs.
    fn start(&mut self, vm: &VmId) -> Result<(), HvError> {
        Err(unsupported("start", vm))
    }

    /// From now on, for as long as this connection lives, hands `sink` each
    /// console session's start and end and each domain's stop (libvirt's
    /// graphics and lifecycle events), on the backend's own thread. False
    /// when the backend has no consoles (the sim).
    fn watch_consoles(&mut self, sink: ConsoleSink) -> Result<bool, HvError> {
        let _ = sink;
        Ok(false)
    }

    /// The console sessions open now, each VM's remote ends
    /// ("address:port"): events are not replayed after a reconnect, so the
    /// agent sets its sessions from this.
    fn console_sessions(&mut self) -> Result<Vec<(VmId, String)>, HvError> {
        Ok(vec![])
    }

    /// Asks the guest to shut itself down (the ACPI power button,
    /// virDomainShutdown) and returns at once: the guest powers off in its
    /// own time, or not at all when it ignores the button. Never a destroy.
    fn shutdown(&mut self, vm: &VmId) -> Result<(), HvError> {
        Err(unsupported("shut down", vm))
    }
}

fn unsupported(op: &'static str, vm: &VmId) -> HvError {
    HvError::Operation { op, vm: vm.clone(), detail: BackendError::said("not supported by this backend") }
}

/// The XML namespace of ebb's per-VM settings in a domain's `<metadata>`.
pub const EBB_METADATA_NS: &str = "https://ebb.dev/xmlns/vm/1";

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_lost_connection_keeps_libvirts_words_as_its_source() {
        let uri = "qemu:///system";
        let lost = HvError::Disconnected { uri: uri.into(), detail: BackendError::said("Cannot recv data: Connection reset by peer") };
        let told = lost.to_string();
        assert_eq!(told, "libvirt at qemu:///system is not reachable (Cannot recv data: Connection reset by peer): is libvirtd running?");
        assert_eq!(lost.source().map(ToString::to_string).as_deref(), Some("Cannot recv data: Connection reset by peer"));
        assert!(lost.is_connection_lost());
    }

    #[test]
    fn a_refused_limit_keeps_the_backends_words_as_its_source() {
        let e = HvError::Bandwidth { vm: VmId::new("web"), detail: BackendError::said("Specified qdisc kind is unknown") };
        assert!(e.to_string().starts_with("libvirt could not set the network bandwidth of web (Specified qdisc kind is unknown): "), "{e}");
        let HvError::Bandwidth { detail, .. } = e else { unreachable!() };
        assert_eq!(String::from(detail.clone()), "Specified qdisc kind is unknown");
        assert!(detail.source().is_none(), "the backend's words are the end of the chain");
    }
}
