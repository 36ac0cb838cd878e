//! ebb's pure core: the model of what the agent observes and does, and the
//! policies that turn one into the other. No I/O, no clock reads, no async:
//! every function takes `now` and the observation as arguments.
#![forbid(unsafe_code)]

/// A reason kept as data and put in words only when shown: it crosses the
/// API as its text, and reads back as its `Text` variant.
macro_rules! reason_as_text {
    ($t:ident) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                <String as serde::Deserialize>::deserialize(d).map($t::Text)
            }
        }
    };
}

pub mod affinity;
pub mod battery;
pub mod clients;
pub mod compose;
pub mod consolidate;
pub mod cpuset;
pub mod memory;
pub mod devices;
pub mod farm;
pub mod host_sleep;
pub mod host_wake;
pub mod human;
pub mod model;
pub mod needs;
pub mod policy;
pub mod power;
pub mod rates;
pub mod realloc;
pub mod requests;
pub mod sleep;
pub mod units;
pub mod vcpus;

pub use model::*;
pub use units::*;
pub use policy::{ActionError, Decision, Policy};
