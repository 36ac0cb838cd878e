//! Why a call to the farm's store failed, each naming etcd's endpoints and the call.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FarmError {
    /// The call's time ran out: etcd is down, unreachable, or has no quorum.
    #[error("etcd at {endpoints} did not answer ({what}) within {}ms: is etcd running and reachable from here?", after.as_millis())]
    Unreachable { endpoints: String, what: String, after: Duration },
    /// etcd answered with an error, or the connection broke.
    #[error("etcd at {endpoints} failed {what}: {detail}")]
    Etcd { endpoints: String, what: String, detail: String },
    /// A key holds a value ebb cannot read (written by hand, or by another version).
    #[error("etcd key {key} holds a value ebb cannot read ({why}): fix or delete the key")]
    BadValue { key: String, why: String },
    /// The agent asked the farm something while its host is not a member.
    #[error("host {host} is not a member of the farm now ({why})")]
    NotMember { host: String, why: String },
    /// A name ebb was asked to use cannot be one segment of a key.
    #[error("{0}")]
    BadName(String),
}
