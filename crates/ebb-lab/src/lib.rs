//! ebb's tooling for people and tests, kept out of the daemon: real guests
//! on libvirt and a network namespace to reach them (`lab`), crowds of
//! clients (`crowd`), the live demo and the benchmarks that print figures.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bmc;
pub mod browser;
pub mod crowd;
pub mod demo;
pub mod etcd;
pub mod farm_lab;
pub mod lab;
