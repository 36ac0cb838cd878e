//! The bounds every held client lives within: the operator's, which are the
//! agent's `[surrogate]` config section (`SurrogateConfig`), and the
//! surrogate's working set (`Limits`), derived from them and the internal
//! bounds no operator tunes. Each default is stated once, here.

use ebb_core::human::Span;
use ebb_core::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::SpecError;
use crate::{AwakePath, FdPlan};

/// `[surrogate]`: bounds on what ebb holds for sleeping VMs, as people write
/// them ("1MiB", "30s"), and how awake VMs are reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SurrogateConfig {
    /// Connections held per VM while it wakes; more are refused at once
    /// (Knative's activator: 10,000).
    pub queue_depth: usize,
    /// Bytes buffered per held connection; past it the connection is refused.
    pub max_held_bytes: Bytes,
    /// Bytes buffered across all held connections of one VM.
    pub max_held_bytes_per_vm: Bytes,
    /// From a client's accept to the woken VM's service answering; past it
    /// the client is refused (`503`, or a reset).
    pub wake_deadline: Span,
    /// Beyond `wake_deadline`, how long a held client may wait for its
    /// replay's first answer. Every client accepted while its VM sleeps or
    /// wakes gets the service's first byte or a refusal within
    /// `wake_deadline + replay_deadline` of its accept.
    pub replay_deadline: Span,
    /// Between backend connect attempts while the VM wakes.
    pub probe_interval: Span,
    /// Replays per service sent to the woken backend at once to begin with
    /// (each until its first answer, at most a second); from there the pace
    /// follows what the service answers. The other held clients wait their
    /// turn, within their bound.
    pub replay_in_flight: usize,
    /// How an awake VM's connections reach it: "auto" (the kernel forwards
    /// the services that qualify, where nft works), "kernel" (the same,
    /// and an nft that does not work stops startup) or "splice" (ebb
    /// splices every connection itself).
    pub awake_path: AwakePath,
    /// The nft program the kernel path runs.
    pub nft: String,
}

impl Default for SurrogateConfig {
    fn default() -> SurrogateConfig {
        SurrogateConfig {
            queue_depth: 10_000,
            max_held_bytes: Bytes::from_mib(1),
            max_held_bytes_per_vm: Bytes::from_mib(64),
            wake_deadline: Span::from_secs(30),
            replay_deadline: Span::from_secs(30),
            probe_interval: Span::from_millis(25),
            replay_in_flight: 4,
            awake_path: AwakePath::default(),
            nft: "nft".into(),
        }
    }
}

impl SurrogateConfig {
    /// The section's rules: those of the bounds it gives the surrogate.
    pub fn validate(&self) -> Result<(), SpecError> {
        Limits::new(self, &FdPlan::default()).validate()
    }
}

/// Bounds on what the surrogate holds for sleeping VMs. One set for the whole
/// surrogate; the per-VM bounds apply to each VM separately. The first seven
/// are `SurrogateConfig`'s (see there), the rest the surrogate's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub queue_depth: usize,
    pub max_held_bytes: usize,
    pub max_held_bytes_per_vm: usize,
    pub wake_deadline: Duration,
    pub replay_deadline: Duration,
    pub probe_interval: Duration,
    pub replay_in_flight: usize,
    /// How long a freshly accepted backend connection must stay open to count
    /// as the service answering: a QEMU user-network host forward accepts and
    /// then closes when nothing in the guest listens yet.
    pub probe_settle: Duration,
    /// How long the surrogate waits for an HTTP request line before deciding
    /// it cannot answer it locally (and holds the connection for the VM).
    pub http_head_timeout: Duration,
    /// Datagrams queued per UDP service while its VM sleeps; more are dropped.
    pub udp_queue: usize,
    /// Client addresses a UDP service relays for at once (its NAT table).
    pub udp_flows: usize,
    /// An idle UDP flow is forgotten after this long.
    pub udp_flow_idle: Duration,
    /// UDP flows of all services together (one descriptor each; `FdPlan::udp`).
    pub udp_flows_total: usize,
    /// Descriptors the TCP clients of all VMs may hold (`FdPlan::tcp`).
    pub max_fds: usize,
    /// Descriptors one VM's TCP clients may hold (`FdPlan::tcp_per_vm`).
    pub max_fds_per_vm: usize,
}

impl Limits {
    /// The operator's bounds with the internal ones, and the descriptor
    /// shares of `plan`.
    pub fn new(config: &SurrogateConfig, plan: &FdPlan) -> Limits {
        let bytes = |b: Bytes| usize::try_from(b.0).unwrap_or(usize::MAX);
        Limits {
            queue_depth: config.queue_depth,
            max_held_bytes: bytes(config.max_held_bytes),
            max_held_bytes_per_vm: bytes(config.max_held_bytes_per_vm),
            wake_deadline: config.wake_deadline.as_duration(),
            replay_deadline: config.replay_deadline.as_duration(),
            probe_interval: config.probe_interval.as_duration(),
            replay_in_flight: config.replay_in_flight,
            probe_settle: Duration::from_millis(10),
            http_head_timeout: Duration::from_secs(1),
            udp_queue: 1024,
            udp_flows: 1024,
            udp_flow_idle: Duration::from_secs(120),
            udp_flows_total: plan.udp,
            max_fds: plan.tcp,
            max_fds_per_vm: plan.tcp_per_vm,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new(&SurrogateConfig::default(), &FdPlan::default())
    }
}

/// The most a VM's held clients may buffer together (see `validate`).
const MAX_HELD_BYTES_PER_VM: usize = 4 << 30;
/// The most replays at once: Linux's default somaxconn, the largest listen
/// backlog a service has without tuning.
const MAX_REPLAY_IN_FLIGHT: usize = 4096;

impl Limits {
    /// Rejects bounds that would make the surrogate spin or never answer.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &'static str, why: &'static str| Err(SpecError::BadLimit { field, why });
        if self.queue_depth == 0 {
            return bad("queue_depth", "must be at least 1, or no client could be held and traffic could never wake a VM");
        }
        if self.max_held_bytes == 0 {
            return bad("max_held_bytes", "must be at least 1 byte");
        }
        if self.max_held_bytes_per_vm < self.max_held_bytes {
            return bad(
                "max_held_bytes_per_vm",
                "must be at least max_held_bytes, or no connection could fill its own buffer",
            );
        }
        if self.max_held_bytes_per_vm > MAX_HELD_BYTES_PER_VM {
            return bad(
                "max_held_bytes_per_vm",
                "must be at most 4 GiB: held bytes sit in the agent's memory, and the clients of a sleeping VM must not be able to push the host into swap",
            );
        }
        if self.wake_deadline.is_zero() {
            return bad("wake_deadline", "must be longer than zero");
        }
        if self.probe_interval < Duration::from_millis(1) {
            return bad(
                "probe_interval",
                "must be at least 1 ms, or probing would spin",
            );
        }
        if self.probe_settle >= self.wake_deadline {
            return bad("probe_settle", "must be shorter than wake_deadline");
        }
        if self.replay_in_flight == 0 {
            return bad("replay_in_flight", "must be at least 1, or no held client would be replayed");
        }
        if self.replay_deadline.is_zero() {
            return bad("replay_deadline", "must be longer than zero");
        }
        if self.replay_in_flight > MAX_REPLAY_IN_FLIGHT {
            return bad("replay_in_flight", "must be at most 4096: replays past a service's listen backlog are refused by it anyway");
        }
        if self.udp_flows == 0 {
            return bad("udp_flows", "must be at least 1");
        }
        Ok(())
    }
}
