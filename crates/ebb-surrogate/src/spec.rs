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
use std::net::SocketAddr;
use std::time::Duration;

/// Transport of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
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

    /// Checks the spec on its own; `Surrogate::add_vm` also checks the
    /// services of one VM against each other.
    pub fn validate(&self) -> Result<(), SpecError> {
        let service = || self.name.clone();
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(SpecError::BadName {
                name: self.name.clone(),
            });
        }
        if self.listen == self.backend {
            return Err(SpecError::ListenIsBackend {
                service: service(),
                addr: self.listen,
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

impl Limits {
    /// Rejects bounds that would make the surrogate spin or never answer.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &'static str, why: &'static str| Err(SpecError::BadLimit { field, why });
        if self.max_held_bytes == 0 {
            return bad("max_held_bytes", "must be at least 1 byte");
        }
        if self.max_held_bytes_per_vm < self.max_held_bytes {
            return bad(
                "max_held_bytes_per_vm",
                "must be at least max_held_bytes, or no connection could fill its own buffer",
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
    #[error("service {service} listens on its own backend address {addr}: the surrogate would forward to itself; point backend at the VM's forward")]
    ListenIsBackend { service: String, addr: SocketAddr },
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
