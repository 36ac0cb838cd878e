//! ebb's pure core: the model of what the agent observes and does, and the
//! policies that turn one into the other. No I/O, no clock reads, no async:
//! every function takes `now` and the observation as arguments.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod memory;
pub mod devices;
pub mod model;
pub mod needs;
pub mod power;
pub mod rates;
pub mod realloc;
pub mod sleep;
pub mod units;
pub mod vcpus;

pub use model::*;
pub use units::*;
