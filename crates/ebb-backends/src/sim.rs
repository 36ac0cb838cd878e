//! In-memory hypervisor for unit tests and the simulator. BEING WRITTEN.
