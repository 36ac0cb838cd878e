//! What the agent declares to the surrogate: each VM service it must stand in
//! for (`ServiceSpec`, with its canned replies) and the bounds every held
//! client lives within (`Limits`). Validation lives here so a bad config is
//! rejected with a sentence naming the service, before anything is bound.
//!
//! The bounds follow SPEC §2 (seed 004): a queue depth per VM (Knative's
//! activator holds 10,000 requests per revision), a byte cap per connection
//! and per VM, and a wake deadline, past which the client gets a clear
//! refusal instead of a hang.
//!
//! Here the specs themselves; their rules in `validate`, the bounds in
//! `limits`, what is wrong with either in `error`.

mod error;
mod limits;
#[cfg(test)]
mod tests;
mod validate;

pub use error::{ListenClash, Loop, SpecError};
pub use limits::{Limits, SurrogateConfig};
pub use validate::validate_services;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Transport of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One service of a VM: the host address the surrogate owns and the VM's
/// backend address (typically a QEMU host forward, which only answers while
/// the VM runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Name used in events, logs and errors ("http", "ssh", …).
    pub name: String,
    /// Host address the surrogate listens on, at all times.
    pub listen: SocketAddr,
    /// Where the VM answers while it runs.
    pub backend: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
    /// The service speaks HTTP/1.x: refusals are `503` responses and the
    /// first request may be answered by a canned reply while the VM sleeps.
    #[serde(default)]
    pub http: bool,
    /// RFC 862 TCP echo: answered by the surrogate itself while the VM is
    /// not awake, so an echo liveness probe never wakes a VM. While the VM
    /// is awake the connection goes to the VM like any other.
    #[serde(default)]
    pub echo: bool,
    /// Replies the surrogate gives itself while the VM is not awake (health
    /// checks and the like). HTTP services only.
    #[serde(default)]
    pub canned: Vec<CannedReply>,
    /// A spliced connection held open without data still counts as activity
    /// (streams, websockets, long polls: users' top complaint about request-
    /// only activity in Knative, KEDA and sablier).
    #[serde(default)]
    pub hold_open_counts_as_activity: bool,
}

/// A reply the surrogate serves itself, matched on method and exact path
/// (the query string is ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedReply {
    pub method: String,
    pub path: String,
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_string()
}

impl ServiceSpec {
    /// A plain TCP service with nothing answered locally.
    pub fn tcp(name: impl Into<String>, listen: SocketAddr, backend: SocketAddr) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            listen,
            backend,
            protocol: Protocol::Tcp,
            http: false,
            echo: false,
            canned: Vec::new(),
            hold_open_counts_as_activity: false,
        }
    }

    /// An HTTP/1.x service.
    pub fn http(name: impl Into<String>, listen: SocketAddr, backend: SocketAddr) -> ServiceSpec {
        ServiceSpec {
            http: true,
            ..ServiceSpec::tcp(name, listen, backend)
        }
    }

    /// A UDP service.
    pub fn udp(name: impl Into<String>, listen: SocketAddr, backend: SocketAddr) -> ServiceSpec {
        ServiceSpec {
            protocol: Protocol::Udp,
            ..ServiceSpec::tcp(name, listen, backend)
        }
    }
}
