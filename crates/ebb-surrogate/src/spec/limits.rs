//! The bounds every held client lives within, and their own rules.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::SpecError;

/// Bounds on what the surrogate holds for sleeping VMs. One set for the whole
/// surrogate; the per-VM bounds apply to each VM separately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections held per VM while it wakes; more are refused at once.
    pub queue_depth: usize,
    /// Bytes buffered per held connection; past it the connection is refused.
    pub max_held_bytes: usize,
    /// Bytes buffered across all held connections of one VM.
    pub max_held_bytes_per_vm: usize,
    /// From a client's accept to the woken VM's service answering; past it
    /// the client is refused (`503`, or a reset).
    #[serde(with = "millis")]
    pub wake_deadline: Duration,
    /// Beyond `wake_deadline`, how long a held client may wait for its
    /// replay's first answer. Every client accepted while its VM sleeps or
    /// wakes gets the service's first byte or a refusal within
    /// `wake_deadline + replay_deadline` of its accept.
    #[serde(with = "millis")]
    pub replay_deadline: Duration,
    /// Between backend connect attempts while the VM wakes.
    #[serde(with = "millis")]
    pub probe_interval: Duration,
    /// How long a freshly accepted backend connection must stay open to count
    /// as the service answering: a QEMU user-network host forward accepts and
    /// then closes when nothing in the guest listens yet.
    #[serde(with = "millis")]
    pub probe_settle: Duration,
    /// Replays per service sent to the woken backend at once to begin with
    /// (each until its first answer, at most a second); from there the pace
    /// follows what the service answers. The other held clients wait their
    /// turn, within their bound.
    pub replay_in_flight: usize,
    /// How long the surrogate waits for an HTTP request line before deciding
    /// it cannot answer it locally (and holds the connection for the VM).
    #[serde(with = "millis")]
    pub http_head_timeout: Duration,
    /// Datagrams queued per UDP service while its VM sleeps; more are dropped.
    pub udp_queue: usize,
    /// Client addresses a UDP service relays for at once (its NAT table).
    pub udp_flows: usize,
    /// An idle UDP flow is forgotten after this long.
    #[serde(with = "millis")]
    pub udp_flow_idle: Duration,
    /// UDP flows of all services together (one descriptor each).
    pub udp_flows_total: usize,
    /// Descriptors the TCP clients of all VMs may hold (see `FdPlan`).
    pub max_fds: usize,
    /// Descriptors one VM's TCP clients may hold.
    pub max_fds_per_vm: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        // The agent plans the descriptor shares from its own RLIMIT_NOFILE.
        crate::FdPlan::for_limit(4096).apply(Limits {
            queue_depth: 10_000,
            max_held_bytes: 1024 * 1024,
            max_held_bytes_per_vm: 64 * 1024 * 1024,
            wake_deadline: Duration::from_secs(30),
            replay_deadline: Duration::from_secs(30),
            probe_interval: Duration::from_millis(25),
            probe_settle: Duration::from_millis(10),
            replay_in_flight: 4,
            http_head_timeout: Duration::from_secs(1),
            udp_queue: 1024,
            udp_flows: 1024,
            udp_flow_idle: Duration::from_secs(120),
            udp_flows_total: 0,
            max_fds: 0,
            max_fds_per_vm: 0,
        })
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

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
