//! The rules a service spec keeps, on its own (`ServiceSpec::validate`)
//! and against every other service (`validate_services`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::error::{ListenClash, Loop};
use super::{CannedReply, Protocol, ServiceSpec, SpecError};

impl ServiceSpec {
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
                return Err(SpecError::ListenClash(Box::new(ListenClash {
                    vm: vm.to_string(),
                    first: name(first_vm, first),
                    first_addr: first.listen,
                    second: name(vm, s),
                    second_addr: s.listen,
                    protocol: s.protocol,
                })));
            }
            bucket.push((vm, s));
        }
    }
    for &(vm, services) in vms {
        for s in services {
            let bucket = listens.get(&(s.protocol, s.backend.port()));
            if let Some((target_vm, target)) = bucket.into_iter().flatten().find(|(_, t)| takes(t.listen, s.backend)) {
                return Err(SpecError::Loop(Box::new(Loop {
                    vm: vm.to_string(),
                    service: name(vm, s),
                    backend: s.backend,
                    target: name(target_vm, target),
                    target_addr: target.listen,
                })));
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
