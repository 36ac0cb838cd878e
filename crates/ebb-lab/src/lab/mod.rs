//! The real-guest lab: builds ebb's small test guest (the host's Debian kernel
//! plus a busybox initramfs, see `guest/`), runs guests of it under libvirt
//! (`qemu:///system`, software-emulated: nested KVM hangs on these machines)
//! and talks to them over a loopback-only HTTP forward.
//!
//! `ebb demo` and the real-guest integration tests use it; the agent does not.
//! The guest files are embedded so the binary works from any directory.
//! Two network paths: QEMU's user-mode forward on 127.0.0.1, and `LabNet`, a
//! network namespace the lab makes with a bridge and a libvirtd of its own,
//! where a guest's virtio-net is on a tap and ebb and its clients talk real
//! TCP to it. Network rule: this module only ever connects to 127.0.0.1 or to
//! guests on that namespace's bridge.

mod guest;
mod image;
mod net;
mod spec;
mod upsd;
#[cfg(test)]
mod tests;

pub use guest::{Guest, GuestStatus, Lab};
pub use image::GuestImage;
pub use net::{LabNet, LAB_BRIDGE, LAB_NETNS, LAB_NET_HOST};
pub(crate) use net::in_netns;
pub use spec::GuestSpec;
pub use upsd::{TestCa, Upsd, UpsdCert};

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The libvirt URI the lab uses unless told otherwise.
pub const DEFAULT_URI: &str = "qemu:///system";
/// Where built images are cached unless `EBB_GUEST_DIR` says otherwise. Under
/// /var/cache (not /root) so libvirt's qemu user can read the files.
pub const DEFAULT_GUEST_DIR: &str = "/var/cache/ebb/guest";
/// The line the guest's /init prints on its console once it is up.
pub const READY_MARKER: &str = "EBB-GUEST-READY";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("libvirt at {uri} is not reachable: run scripts/setup-host.sh (starts libvirtd)")]
    Connect {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("no guest kernel in /boot (looked for /boot/vmlinuz-*): install linux-image-amd64 (scripts/setup-host.sh)")]
    NoKernel,
    #[error("could not {action} {}: check that the path is writable by this user and the disk has room", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the guest image into {} failed ({status}); build-image.sh said:\n{output}\nrun scripts/setup-host.sh if a package is missing", out.display())]
    ImageBuild { out: PathBuf, status: String, output: String },
    #[error("libvirt could not {action} domain {name}")]
    Libvirt {
        action: &'static str,
        name: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("domain {name} already exists: remove it (virsh undefine {name}) or call Lab::remove_leftovers first")]
    Exists { name: String },
    #[error("guest {name} did not become ready within {timeout:?}: read its console log {}", log.display())]
    NotReady { name: String, timeout: Duration, log: PathBuf },
    #[error("guest {name} stopped while booting: read its console log {}", log.display())]
    Stopped { name: String, log: PathBuf },
    #[error("guest {name} has no HTTP forward: set GuestSpec::http_port or lab_net to use its web endpoints")]
    NoHttp { name: String },
    #[error("HTTP GET {path} on guest {name} ({addr}) failed: is the guest up and its httpd alive? (see its console log)")]
    Http {
        name: String,
        addr: SocketAddr,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("could not bring up the lab's network namespace {ns} ({status}): {output}\nrun as root, with iproute2, util-linux and libvirt (scripts/setup-host.sh)")]
    NetNs { ns: String, status: String, output: String },
    #[error("guest {name} answered GET {path} with {status_line}: {body}")]
    HttpStatus { name: String, path: String, status_line: String, body: String },
    #[error("guest {name}'s {path} lacks a numeric {field}; it answered:\n{body}")]
    BadAnswer { name: String, path: String, field: &'static str, body: String },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io { action, path, source }
}

/// An agent's config file: its socket and journal, then `agent_lines`
/// (more of the `[agent]` table, as it comes first) and the `rest`.
pub fn agent_config_text(socket: &std::path::Path, journal: &std::path::Path, agent_lines: &str, rest: &str) -> String {
    format!("[agent]\nsocket = \"{}\"\njournal = \"{}\"\n{agent_lines}\n{rest}\n", socket.display(), journal.display())
}

/// A free TCP port on 127.0.0.1 (bound, read, released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work")
}
