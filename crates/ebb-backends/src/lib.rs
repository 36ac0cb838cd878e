//! ebb's backends: the `Hypervisor` trait (a small trait in the shape of
//! cloud-hypervisor's `hypervisor` crate) and its implementations: libvirt
//! (real hosts, and libvirt's `test:///` driver) and sim (in memory); and the
//! host-power side: a client for NUT's upsd.
// `deny`, not `forbid`: libvirt/ffi.rs holds the one FFI edge (virt 0.5
// leaves virConnectGetAllDomainStats' records raw) and allows unsafe there alone.
#![deny(unsafe_code)]

pub mod hypervisor;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod nut;
pub mod platform;
pub mod sim;

pub use hypervisor::*;
/// The sysfs readers under their old name.
pub use platform::sysfs as devices;

/// Opens the hypervisor at `uri` with the backend that serves it: libvirt,
/// for any URI one of its drivers takes (`qemu:///system`,
/// `test:///default`, …). Called again after a lost connection.
#[cfg(feature = "libvirt")]
pub fn connect(uri: &str) -> Result<Box<dyn Hypervisor>, HvError> {
    Ok(Box::new(libvirt::LibvirtHypervisor::connect(uri)?))
}
