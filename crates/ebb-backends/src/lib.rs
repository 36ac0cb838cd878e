//! ebb's backends: the `Hypervisor` trait (a small trait in the shape of
//! cloud-hypervisor's `hypervisor` crate) and its implementations: libvirt
//! (real hosts, and libvirt's `test:///` driver) and sim (in memory).
#![forbid(unsafe_code)]

pub mod hypervisor;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod sim;

pub use hypervisor::*;
