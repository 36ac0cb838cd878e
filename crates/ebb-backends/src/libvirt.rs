//! libvirt backend over the `virt` crate. BEING WRITTEN.
