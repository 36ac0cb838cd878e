//! `[surrogate]`: the bounds of the listeners that stand in for sleeping VMs.

use super::*;
use ebb_core::Bytes;
use ebb_surrogate::{AwakePath, FdPlan, Limits};
use serde::Deserialize;
use std::time::Duration;

/// `[surrogate]`: bounds on what ebb holds for sleeping VMs.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SurrogateSection {
    /// Connections held per VM while it wakes (Knative's activator: 10,000).
    pub queue_depth: usize,
    /// Bytes buffered per held connection.
    pub max_held_bytes: Size,
    /// Bytes buffered across one VM's held connections.
    pub max_held_bytes_per_vm: Size,
    /// A held client gets a refusal if the VM has not answered by then.
    #[serde(deserialize_with = "de_duration")]
    pub wake_deadline: Duration,
    /// Beyond wake_deadline, how long a held client waits for its replay's
    /// first answer: its answer or refusal comes within the sum.
    #[serde(deserialize_with = "de_duration")]
    pub replay_deadline: Duration,
    /// Between connection attempts to a waking VM's service.
    #[serde(deserialize_with = "de_duration")]
    pub probe_interval: Duration,
    /// Held clients per service replayed to a woken VM at once, to begin with.
    pub replay_in_flight: usize,
    /// How an awake VM's connections reach it: "auto" (the kernel forwards
    /// the services that qualify, where nft works), "kernel" (the same,
    /// and an nft that does not work stops startup) or "splice" (ebb
    /// splices every connection itself).
    pub awake_path: AwakePath,
    /// The nft program the kernel path runs.
    pub nft: String,
    /// The agent's split of its descriptor limit, set at start (not config).
    #[serde(skip)]
    pub fd_plan: Option<FdPlan>,
}

impl Default for SurrogateSection {
    fn default() -> Self {
        let d = Limits::default();
        SurrogateSection {
            queue_depth: d.queue_depth,
            max_held_bytes: Size(Bytes(d.max_held_bytes as u64)),
            max_held_bytes_per_vm: Size(Bytes(d.max_held_bytes_per_vm as u64)),
            wake_deadline: d.wake_deadline,
            replay_deadline: d.replay_deadline,
            probe_interval: d.probe_interval,
            replay_in_flight: d.replay_in_flight,
            awake_path: AwakePath::default(),
            nft: "nft".into(),
            fd_plan: None,
        }
    }
}

impl SurrogateSection {
    pub fn limits(&self) -> Limits {
        let limits = Limits {
            queue_depth: self.queue_depth,
            max_held_bytes: self.max_held_bytes.0 .0 as usize,
            max_held_bytes_per_vm: self.max_held_bytes_per_vm.0 .0 as usize,
            wake_deadline: self.wake_deadline,
            replay_deadline: self.replay_deadline,
            probe_interval: self.probe_interval,
            replay_in_flight: self.replay_in_flight,
            ..Limits::default()
        };
        match &self.fd_plan {
            Some(plan) => plan.apply(limits),
            None => limits,
        }
    }
}
