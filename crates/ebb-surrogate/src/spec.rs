//! What the agent declares to the surrogate: each VM service it must stand in
//! for (`ServiceSpec`, with its canned replies) and the bounds every held
//! client lives within (`Limits`). Validation lives here so a bad config is
//! rejected with a sentence naming the service, before anything is bound.
//!
//! The bounds follow SPEC §2 (seed 004): a queue depth per VM (Knative's
//! activator holds 10,000 requests per revision), a byte cap per connection
//! and per VM, and a wake deadline, past which the client gets a clear
//! refusal instead of a hang.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

    /// Checks the spec on its own; `validate_services` checks it and the
    /// services of every VM against each other.
    pub fn validate(&self) -> Result<(), SpecError> {
        let service = || self.name.clone();
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(SpecError::BadName {
                name: self.name.clone(),
            });
        }
        if takes(self.listen, self.backend) {
            return Err(SpecError::ListenIsBackend {
                service: service(),
                listen: self.listen,
                backend: self.backend,
            });
        }
        if self.listen.port() == 0 {
            return Err(SpecError::NoListenPort { service: service() });
        }
        if self.backend.port() == 0 || self.backend.ip().is_unspecified() {
            return Err(SpecError::BadBackend {
                service: service(),
                addr: self.backend,
            });
        }
        if self.protocol == Protocol::Udp {
            if self.echo {
                return Err(SpecError::EchoOnUdp { service: service() });
            }
            if self.http {
                return Err(SpecError::HttpOnUdp { service: service() });
            }
        }
        if self.echo && self.http {
            return Err(SpecError::EchoAndHttp { service: service() });
        }
        if !self.canned.is_empty() && !self.http {
            return Err(SpecError::CannedWithoutHttp { service: service() });
        }
        for (i, c) in self.canned.iter().enumerate() {
            c.validate(&self.name)?;
            if self.canned[..i]
                .iter()
                .any(|o| o.method == c.method && o.path == c.path)
            {
                return Err(SpecError::DuplicateCanned {
                    service: service(),
                    method: c.method.clone(),
                    path: c.path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Every rule on a set of services, for the config check and for the
/// surrogate alike (`ebb check` and `ebb run` must agree): each service on
/// its own, names distinct within a VM, no two listen addresses that clash
/// at bind time, and no backend the surrogate itself listens on.
///
/// A backend on another service's listen address is refused even without a
/// cycle: the surrogate is never the VM, so such a chain only doubles the
/// sockets per client and wakes the wrong VM; and refusing every such
/// backend refuses every loop, of any length, with one rule.
pub fn validate_services(vms: &[(&str, &[ServiceSpec])]) -> Result<(), SpecError> {
    // As errors name a service: the config's own words.
    let name = |vm: &str, s: &ServiceSpec| format!("vm.{vm}.service {}", s.name);
    // Only services on the same protocol and port can clash or loop: one
    // bucket each keeps thousands of services from costing n².
    let mut listens: HashMap<(Protocol, u16), Vec<(&str, &ServiceSpec)>> = HashMap::new();
    for &(vm, services) in vms {
        let mut names = HashSet::new();
        for s in services {
            s.validate().map_err(|e| SpecError::InVm {
                vm: vm.to_string(),
                source: Box::new(e),
            })?;
            if !names.insert(s.name.as_str()) {
                return Err(SpecError::DuplicateName {
                    vm: vm.to_string(),
                    service: s.name.clone(),
                });
            }
            let bucket = listens.entry((s.protocol, s.listen.port())).or_default();
            if let Some((first_vm, first)) = bucket.iter().find(|(_, o)| clash(o.listen, s.listen)) {
                return Err(SpecError::ListenClash {
                    first: name(first_vm, first),
                    first_addr: first.listen,
                    second: name(vm, s),
                    second_addr: s.listen,
                    protocol: s.protocol,
                });
            }
            bucket.push((vm, s));
        }
    }
    for &(vm, services) in vms {
        for s in services {
            let bucket = listens.get(&(s.protocol, s.backend.port()));
            if let Some((target_vm, target)) = bucket.into_iter().flatten().find(|(_, t)| takes(t.listen, s.backend)) {
                return Err(SpecError::Loop {
                    service: name(vm, s),
                    backend: s.backend,
                    target: name(target_vm, target),
                    target_addr: target.listen,
                });
            }
        }
    }
    Ok(())
}

/// An address as the kernel sees it: `::ffff:a.b.c.d` is the IPv4 a.b.c.d.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether a socket listening on `listen` takes connections to `to`: the
/// same address, or a wildcard over it. `[::]` takes IPv4 as well (Linux's
/// default, bindv6only = 0; tokio does not set IPV6_V6ONLY). Of the
/// addresses a wildcard takes, only loopback is known without asking the
/// host.
fn takes(listen: SocketAddr, to: SocketAddr) -> bool {
    let (listen, to) = (canonical(listen), canonical(to));
    listen == to || (listen.port() == to.port() && covers(listen.ip(), to.ip()) && to.ip().is_loopback())
}

/// Whether two listen addresses (same protocol and port) cannot both be
/// bound: equal, or one a wildcard over the other's family.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    let (a, b) = (canonical(a).ip(), canonical(b).ip());
    a == b || covers(a, b) || covers(b, a)
}

/// Whether the wildcard `wild` spans `ip`'s family.
fn covers(wild: IpAddr, ip: IpAddr) -> bool {
    match wild {
        IpAddr::V4(w) => w.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    }
}

impl CannedReply {
    fn validate(&self, service: &str) -> Result<(), SpecError> {
        let service = service.to_string();
        if self.method.is_empty() || !self.method.bytes().all(is_tchar) {
            return Err(SpecError::BadMethod {
                service,
                method: self.method.clone(),
            });
        }
        let path_ok = self.path.starts_with('/')
            && !self
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
        if !path_ok {
            return Err(SpecError::BadPath {
                service,
                path: self.path.clone(),
            });
        }
        // 1xx are interim responses: a client reading one as the final answer
        // would wait for another; 600+ do not exist.
        if !(200..=599).contains(&self.status) {
            return Err(SpecError::BadStatus {
                service,
                path: self.path.clone(),
                status: self.status,
            });
        }
        // 204 and 304 cannot carry a body; a Content-Length on them confuses
        // clients, so require the body empty rather than silently dropping it.
        if matches!(self.status, 204 | 304) && !self.body.is_empty() {
            return Err(SpecError::BodyNotAllowed {
                service,
                path: self.path.clone(),
                status: self.status,
            });
        }
        if self.content_type.trim().is_empty() || self.content_type.chars().any(char::is_control) {
            return Err(SpecError::BadContentType {
                service,
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// RFC 9110 token characters, the only ones a method may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

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
    #[error("{second} listens on {second_addr} ({protocol}), where {first} listens already ({first_addr}): two sockets cannot share a port on one address, or beside a wildcard address of its family; give each its own port")]
    ListenClash {
        first: String,
        first_addr: SocketAddr,
        second: String,
        second_addr: SocketAddr,
        protocol: Protocol,
    },
    #[error("{service} forwards to {backend}, where {target} listens ({target_addr}): the surrogate would forward to itself; point backend at the VM's forward")]
    Loop {
        service: String,
        backend: SocketAddr,
        target: String,
        target_addr: SocketAddr,
    },
    #[error("surrogate limit {field} {why}")]
    BadLimit {
        field: &'static str,
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn canned(method: &str, path: &str, status: u16) -> CannedReply {
        CannedReply {
            method: method.into(),
            path: path.into(),
            status,
            content_type: "text/plain".into(),
            body: "ok".into(),
        }
    }

    fn with(c: CannedReply) -> ServiceSpec {
        ServiceSpec {
            canned: vec![c],
            ..ServiceSpec::http("web", addr(8080), addr(18080))
        }
    }

    #[test]
    fn good_specs_pass() {
        with(canned("GET", "/healthz", 200)).validate().unwrap();
        ServiceSpec::udp("dns", addr(53), addr(1053))
            .validate()
            .unwrap();
        Limits::default().validate().unwrap();
    }

    #[test]
    fn malformed_canned_replies_are_rejected() {
        let cases = [
            (canned("GET", "/h", 99), "status 99"),
            (canned("GET", "/h", 600), "status 600"),
            (canned("GET", "/h", 101), "status 101"),
            (canned("GET", "", 200), "path \"\""),
            (canned("GET", "healthz", 200), "path \"healthz\""),
            (canned("GET", "/a b", 200), "path \"/a b\""),
            (canned("GET", "/h?x=1", 200), "query"),
            (canned("G ET", "/h", 200), "method \"G ET\""),
            (canned("", "/h", 200), "method \"\""),
            (canned("GET", "/h", 204), "forbids a body"),
        ];
        for (c, needle) in cases {
            let err = with(c.clone()).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{c:?}: {err}");
            assert!(err.contains("service web"), "{err}");
        }
        let mut ct = canned("GET", "/h", 200);
        ct.content_type = "text/plain\r\nX-Evil: 1".into();
        assert!(matches!(
            with(ct).validate(),
            Err(SpecError::BadContentType { .. })
        ));
    }

    #[test]
    fn contradictory_services_are_rejected() {
        let mut udp_echo = ServiceSpec::udp("e", addr(7), addr(1007));
        udp_echo.echo = true;
        assert!(matches!(
            udp_echo.validate(),
            Err(SpecError::EchoOnUdp { .. })
        ));
        let mut raw_canned = ServiceSpec::tcp("r", addr(81), addr(1081));
        raw_canned.canned.push(canned("GET", "/", 200));
        assert!(matches!(
            raw_canned.validate(),
            Err(SpecError::CannedWithoutHttp { .. })
        ));
        let mut dup = with(canned("GET", "/h", 200));
        dup.canned.push(canned("GET", "/h", 503));
        assert!(matches!(
            dup.validate(),
            Err(SpecError::DuplicateCanned { .. })
        ));
        let looped = ServiceSpec::tcp("l", addr(81), addr(81));
        assert!(matches!(
            looped.validate(),
            Err(SpecError::ListenIsBackend { .. })
        ));
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn one_vm(services: &[ServiceSpec]) -> Result<(), SpecError> {
        validate_services(&[("web", services)])
    }

    #[test]
    fn a_wildcard_listen_clashes_with_every_address_of_its_family_on_the_port() {
        let clashes = [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("[::]:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "[::]:8080"),
            ("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "[::ffff:10.0.0.1]:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
        ];
        for (a, b) in clashes {
            let services = [
                ServiceSpec::tcp("a", at(a), addr(1)),
                ServiceSpec::tcp("b", at(b), addr(2)),
            ];
            let e = one_vm(&services).unwrap_err();
            assert!(matches!(e, SpecError::ListenClash { .. }), "{a} {b}: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains("vm.web.service b listens on") && text.contains("vm.web.service a listens already"),
                "{text}"
            );
        }
        // What the kernel lets both bind: other families, other addresses,
        // the other protocol (DNS: 53/tcp and 53/udp).
        for (a, b) in [
            ("0.0.0.0:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8081"),
        ] {
            let services = [
                ServiceSpec::tcp("a", at(a), addr(1)),
                ServiceSpec::tcp("b", at(b), addr(2)),
            ];
            one_vm(&services).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        }
        one_vm(&[
            ServiceSpec::tcp("dns-tcp", addr(53), addr(1053)),
            ServiceSpec::udp("dns-udp", addr(53), addr(1053)),
        ])
        .unwrap();
    }

    #[test]
    fn service_sets_are_checked_across_vms() {
        let a = [ServiceSpec::tcp("x", addr(8080), addr(1))];
        let b = [ServiceSpec::tcp("y", at("0.0.0.0:8080"), addr(2))];
        let e = validate_services(&[("a", &a), ("b", &b)]).unwrap_err();
        assert!(e.to_string().contains("vm.b.service y listens on 0.0.0.0:8080 (tcp), where vm.a.service x listens already (127.0.0.1:8080)"), "{e}");
        let twice = [
            ServiceSpec::tcp("http", addr(80), addr(1)),
            ServiceSpec::tcp("http", addr(81), addr(2)),
        ];
        assert_eq!(
            one_vm(&twice),
            Err(SpecError::DuplicateName { vm: "web".into(), service: "http".into() })
        );
        // The same name in two VMs is fine.
        validate_services(&[("a", &twice[..1]), ("b", &twice[1..])]).unwrap();
        let bad = [with(canned("GET", "/h", 99))];
        let e = validate_services(&[("a", &a), ("b", &bad)]).unwrap_err();
        assert!(e.to_string().starts_with("vm.b.service: service web has a canned reply"), "{e}");
    }

    #[test]
    fn a_service_that_would_forward_to_the_surrogate_is_a_loop() {
        for (listen, backend) in [
            ("0.0.0.0:18181", "127.0.0.1:18181"),
            ("0.0.0.0:18181", "127.0.0.9:18181"),
            ("[::]:18181", "[::1]:18181"),
            ("[::]:18181", "127.0.0.1:18181"),
            ("[::]:18181", "[::ffff:127.0.0.1]:18181"),
            ("127.0.0.1:18181", "[::ffff:127.0.0.1]:18181"),
        ] {
            let e = one_vm(&[ServiceSpec::tcp("http", at(listen), at(backend))]).unwrap_err();
            assert!(
                matches!(&e, SpecError::InVm { source, .. } if matches!(**source, SpecError::ListenIsBackend { .. })),
                "{listen} → {backend}: {e:?}"
            );
            assert!(e.to_string().contains("would forward to itself"), "{e}");
        }
        // Two services pointing at each other, across VMs; and a chain.
        let a = [ServiceSpec::tcp("a", addr(8001), addr(8002))];
        let b = [ServiceSpec::tcp("b", at("0.0.0.0:8002"), addr(8001))];
        let e = validate_services(&[("one", &a), ("two", &b)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vm.one.service a forwards to 127.0.0.1:8002, where vm.two.service b listens (0.0.0.0:8002): the surrogate would forward to itself; point backend at the VM's forward"
        );
        let chain = [
            ServiceSpec::tcp("front", addr(8001), addr(8002)),
            ServiceSpec::tcp("back", addr(8002), addr(18002)),
        ];
        assert!(matches!(one_vm(&chain), Err(SpecError::Loop { .. })));
        // Not the surrogate: another host's address, or the other protocol.
        one_vm(&[ServiceSpec::tcp("lan", at("0.0.0.0:8080"), at("10.0.0.5:8080"))]).unwrap();
        one_vm(&[
            ServiceSpec::udp("dns", addr(53), addr(1053)),
            ServiceSpec::tcp("fwd", addr(54), addr(53)),
        ])
        .unwrap();
    }

    #[test]
    fn limits_that_hold_nothing_or_without_bound_are_rejected() {
        for (limits, field) in [
            (Limits { queue_depth: 0, ..Limits::default() }, "queue_depth"),
            (Limits { max_held_bytes_per_vm: 1000 << 40, ..Limits::default() }, "max_held_bytes_per_vm"),
            (Limits { replay_in_flight: usize::MAX, ..Limits::default() }, "replay_in_flight"),
        ] {
            let e = limits.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn limits_that_would_spin_are_rejected() {
        let l = Limits {
            probe_interval: Duration::ZERO,
            ..Limits::default()
        };
        assert!(l
            .validate()
            .unwrap_err()
            .to_string()
            .contains("probe_interval"));
    }
}
