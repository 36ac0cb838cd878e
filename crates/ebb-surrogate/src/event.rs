//! What the surrogate and the agent tell each other: the VM's power state the
//! agent sets (`VmPower`), and the events the surrogate sends back
//! (`SurrogateEvent`): a wake request when a client needs the real VM, and
//! each refusal, for metrics and the journal.

use ebb_core::VmId;
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The VM's state as far as its clients are concerned; set by the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum VmPower {
    /// Running: connections are spliced to the backend at once.
    Awake,
    /// Saved or paused: the surrogate answers what it can and holds the rest,
    /// asking the agent to wake the VM.
    Asleep,
    /// The agent is restoring it: held clients wait, no new wake request.
    Waking,
    /// The restore failed: every held and new client is refused with the
    /// reason until the agent sets another state (`Asleep` re-arms wakes).
    WakeFailed(String),
}

impl fmt::Display for VmPower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmPower::Awake => f.write_str("awake"),
            VmPower::Asleep => f.write_str("asleep"),
            VmPower::Waking => f.write_str("waking"),
            VmPower::WakeFailed(r) => write!(f, "wake failed: {r}"),
        }
    }
}

/// Why a client needs the real VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum WakeReason {
    /// A TCP connection the surrogate cannot answer itself.
    Connection { peer: SocketAddr },
    /// An HTTP request with no canned reply.
    Request {
        peer: SocketAddr,
        method: String,
        path: String,
    },
    /// A datagram for a UDP service.
    Datagram { peer: SocketAddr },
}

impl fmt::Display for WakeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeReason::Connection { peer } => write!(f, "connection from {peer}"),
            WakeReason::Request { peer, method, path } => {
                write!(f, "request {method} {path} from {peer}")
            }
            WakeReason::Datagram { peer } => write!(f, "datagram from {peer}"),
        }
    }
}

/// Why a client was refused. Its `Display` is the text an HTTP client reads
/// in the `503` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Refusal {
    /// `queue_depth` connections already wait for this VM.
    QueueFull { depth: usize },
    /// The client sent more than `max_held_bytes` before the VM woke.
    TooLarge { limit: usize },
    /// The VM's held connections together hold `max_held_bytes_per_vm`.
    VmBytesFull { limit: usize },
    /// The VM did not answer within `wake_deadline`.
    Deadline {
        #[serde(with = "secs")]
        after: Duration,
    },
    /// The agent reported the restore failed.
    WakeFailed { reason: String },
    /// The VM is awake but its backend refused the connection (it died, or
    /// went to sleep before the agent told the surrogate).
    BackendDown { backend: SocketAddr },
    /// The VM was removed from the surrogate while the client waited.
    Removed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { depth } => write!(
                f,
                "queue full: {depth} connections already wait for this VM to wake"
            ),
            Refusal::TooLarge { limit } => write!(
                f,
                "request too large: more than {limit} bytes sent while the VM wakes"
            ),
            Refusal::VmBytesFull { limit } => write!(
                f,
                "too much data waiting: this VM's clients already sent {limit} bytes while it wakes"
            ),
            Refusal::Deadline { after } => {
                write!(f, "VM did not wake in {} s", after.as_secs_f64())
            }
            Refusal::WakeFailed { reason } => write!(f, "wake failed: {reason}"),
            Refusal::BackendDown { backend } => {
                write!(
                    f,
                    "VM is awake but its service at {backend} refused the connection"
                )
            }
            Refusal::Removed => f.write_str("the surrogate stopped serving this VM"),
        }
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// What the surrogate tells the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum SurrogateEvent {
    /// A client needs the real VM. Sent once per sleep: after it, more
    /// clients are held without another request until the agent sets
    /// `Asleep` again (or `Awake`).
    WakeNeeded {
        vm: VmId,
        service: String,
        reason: WakeReason,
    },
    /// A client was refused (connection reset or `503`).
    Refused {
        vm: VmId,
        service: String,
        why: Refusal,
    },
    /// nft failed for a service on the kernel path: the surrogate splices
    /// it from now on (its port stays served).
    AwakePathFailed {
        vm: VmId,
        service: String,
        error: String,
    },
}
