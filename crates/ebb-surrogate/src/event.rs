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

/// The longest method or path a wake reason keeps, in characters.
const REASON_TEXT_MAX: usize = 200;

impl WakeReason {
    /// An HTTP request as a reason: the method and path come from the
    /// network and end up in the journal, logs and terminals, so control
    /// characters are escaped and the text is cut short.
    pub fn request(peer: SocketAddr, method: &str, path: &str) -> WakeReason {
        WakeReason::Request {
            peer,
            method: printable(method, REASON_TEXT_MAX),
            path: printable(path, REASON_TEXT_MAX),
        }
    }
}

/// `text` safe to print: control characters (ESC, BEL, CR, C1, DEL) and the
/// bidirectional overrides escaped as `\u{1b}`, a backslash doubled, at
/// most `max` characters of the original kept (then `…`).
pub(crate) fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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
    /// The surrogate's descriptors for all VMs' clients are in use.
    HostConnections { limit: usize },
    /// This VM's clients hold their share of the surrogate's descriptors.
    VmConnections { limit: usize },
    /// The process itself ran out of descriptors (EMFILE, ENFILE): ebb's
    /// limit, not the VM's fault.
    OutOfDescriptors,
    /// The VM is awake, but its service did not take this client's request
    /// (accept its connection, or answer the ones before it) within the
    /// client's bound: it was never sent, a retry is safe.
    Busy {
        #[serde(with = "secs")]
        after: Duration,
    },
    /// The service took the request and sent nothing back within the
    /// client's bound; it was not sent again (it may be in the works).
    Silent {
        #[serde(with = "secs")]
        after: Duration,
    },
    /// An HTTP client that sent no complete request line within the wake
    /// deadline: its VM was not woken for it.
    NoRequest {
        #[serde(with = "secs")]
        after: Duration,
    },
    /// An HTTP request line past `limit` bytes: its VM was not woken for it.
    LineTooLong { limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { depth } => write!(
                f,
                "queue full: {depth} connections already wait for this VM to wake"
            ),
            Refusal::NoRequest { after } => write!(
                f,
                "no request: nothing that ends a request line in {} s",
                after.as_secs_f64()
            ),
            Refusal::LineTooLong { limit } => write!(
                f,
                "request line too long: more than {limit} bytes"
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
            Refusal::HostConnections { limit } => write!(
                f,
                "ebb is at its limit of {limit} file descriptors for client connections; retry shortly"
            ),
            Refusal::VmConnections { limit } => write!(
                f,
                "this VM's clients hold all {limit} file descriptors ebb gives one VM; retry shortly"
            ),
            Refusal::OutOfDescriptors => f.write_str(
                "ebb ran out of file descriptors (its own limit, not the VM's fault); retry shortly",
            ),
            Refusal::Busy { after } => write!(
                f,
                "the VM is awake, but its service did not take this request within {} s of its arrival; it was not sent, retry",
                after.as_secs_f64()
            ),
            Refusal::Silent { after } => write!(
                f,
                "the VM's service took this request but sent no answer within {} s of its arrival; it was not sent again",
                after.as_secs_f64()
            ),
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
    /// A client's connection is spliced to the VM or held for it: client
    /// activity (seed 002). Never sent for the surrogate's own probes, its
    /// echo or canned answers, nor for connections on the kernel path
    /// (the kernel forwards those without ebb).
    ClientOpened {
        vm: VmId,
        service: String,
        peer: SocketAddr,
    },
    /// That connection closed (one `ClientClosed` per `ClientOpened`).
    ClientClosed {
        vm: VmId,
        service: String,
        peer: SocketAddr,
    },
    /// nft failed for a service on the kernel path: the surrogate splices
    /// it from now on (its port stays served).
    AwakePathFailed {
        vm: VmId,
        service: String,
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_text_in_a_reason_has_no_control_characters() {
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let r = WakeReason::request(peer, "GET", "/\u{1b}]0;PWNED\u{7}\u{1b}[2J\\x\u{202e}");
        let text = r.to_string();
        assert_eq!(text, "request GET /\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J\\\\x\\u{202e} from 127.0.0.1:9");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        let long = WakeReason::request(peer, "GET", &"/a".repeat(1000)).to_string();
        assert!(long.chars().count() < 250 && long.contains('…'), "{long}");
    }
}
