//! What is wrong with a service spec or a limit, in a sentence naming it.

use std::net::SocketAddr;

use super::Protocol;

/// A service spec or limit the surrogate cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("service name {name:?} is empty or has control characters: give each service a short printable name")]
    BadName { name: String },
    #[error("service {service} listens on {listen}, which takes its own backend address {backend}: the surrogate would forward to itself; point backend at the VM's forward")]
    ListenIsBackend {
        service: String,
        listen: SocketAddr,
        backend: SocketAddr,
    },
    #[error(
        "service {service} listens on port 0: the surrogate must own a fixed port clients know"
    )]
    NoListenPort { service: String },
    #[error("service {service} has backend {addr}, which cannot be connected to: give the VM's address and port")]
    BadBackend { service: String, addr: SocketAddr },
    #[error("service {service} is UDP with echo set: RFC 862 echo is answered for TCP only; drop echo or make the service TCP")]
    EchoOnUdp { service: String },
    #[error("service {service} is UDP with http set: HTTP/1.x runs over TCP; drop http or make the service TCP")]
    HttpOnUdp { service: String },
    #[error("service {service} sets both echo and http: an echo service answers bytes, not requests; pick one")]
    EchoAndHttp { service: String },
    #[error("service {service} has canned replies but is not http: canned replies answer HTTP requests; set http = true")]
    CannedWithoutHttp { service: String },
    #[error("service {service} has a canned reply with method {method:?}: a method is one HTTP token such as GET, without spaces")]
    BadMethod { service: String, method: String },
    #[error("service {service} has a canned reply for path {path:?}: a path starts with '/' and has no spaces, query ('?') or fragment ('#')")]
    BadPath { service: String, path: String },
    #[error("service {service} has a canned reply for {path} with status {status}: a final HTTP status is between 200 and 599")]
    BadStatus {
        service: String,
        path: String,
        status: u16,
    },
    #[error("service {service} has a canned reply for {path} with status {status} and a body: HTTP forbids a body with 204 and 304; empty it")]
    BodyNotAllowed {
        service: String,
        path: String,
        status: u16,
    },
    #[error("service {service} has a canned reply for {path} with an empty or multi-line content type: give one such as \"text/plain\"")]
    BadContentType { service: String, path: String },
    #[error("service {service} has two canned replies for {method} {path}: keep one")]
    DuplicateCanned {
        service: String,
        method: String,
        path: String,
    },
    #[error("vm.{vm}.service: {source}")]
    InVm {
        vm: String,
        #[source]
        source: Box<SpecError>,
    },
    #[error("vm.{vm} declares two services named {service}: give each a distinct name")]
    DuplicateName { vm: String, service: String },
    /// Boxed, as is `Loop`: the rest of the variants are far smaller.
    #[error(transparent)]
    ListenClash(Box<ListenClash>),
    #[error(transparent)]
    Loop(Box<Loop>),
    #[error("surrogate limit {field} {why}")]
    BadLimit {
        field: &'static str,
        why: &'static str,
    },
}

impl SpecError {
    /// The VM whose services the error is about, where the config declares
    /// one (`[[vm.NAME.service]]`): where a config's reader points.
    pub fn vm(&self) -> Option<&str> {
        match self {
            SpecError::InVm { vm, .. } | SpecError::DuplicateName { vm, .. } => Some(vm),
            SpecError::ListenClash(c) => Some(&c.vm),
            SpecError::Loop(l) => Some(&l.vm),
            _ => None,
        }
    }
}

/// Two services, of one VM or two, that cannot both listen where they ask.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{second} listens on {second_addr} ({protocol}), where {first} listens already ({first_addr}): two sockets cannot share a port on one address, or beside a wildcard address of its family; give each its own port")]
pub struct ListenClash {
    /// The VM of the second service, which the config declares later.
    pub vm: String,
    pub first: String,
    pub first_addr: SocketAddr,
    pub second: String,
    pub second_addr: SocketAddr,
    pub protocol: Protocol,
}

/// A service whose backend is another service's listen address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{service} forwards to {backend}, where {target} listens ({target_addr}): the surrogate would forward to itself; point backend at the VM's forward")]
pub struct Loop {
    /// The VM of the service that forwards.
    pub vm: String,
    pub service: String,
    pub backend: SocketAddr,
    pub target: String,
    pub target_addr: SocketAddr,
}
