//! `LabNet`: the lab's own network namespace, with a bridge and a libvirtd
//! whose guests sit on taps on it.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::guest::Lab;
use super::{io_err, LabError, Result};

/// The network namespace of `LabNet`.
pub const LAB_NETNS: &str = "ebb-lab";
/// Its bridge, and the namespace's own address on it (ebb's and the clients').
pub const LAB_BRIDGE: &str = "ebb-br0";
pub const LAB_NET_HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Where the namespace's libvirtd keeps its folders.
const LAB_NET_DIR: &str = "/var/lib/ebb/lab-net";

/// A network namespace with a bridge (10.77.0.1/24) and a privileged libvirtd
/// whose QEMUs run in it (scripts/lab-netns.sh), so a guest's virtio-net is on
/// a tap on that bridge: a realistic path for load, where QEMU's user-mode
/// forward is the first bottleneck. ebb runs in the namespace (`command`)
/// and so do its clients (`run`). Brought up on first use and kept, like the
/// system libvirtd; nothing in it reaches beyond it.
pub struct LabNet {
    uri: String,
}

impl LabNet {
    /// The namespace and its libvirtd, brought up unless they are already.
    pub fn ensure() -> Result<LabNet> {
        let out = Command::new("sh")
            .args(["-c", include_str!("../../../../scripts/lab-netns.sh"), "lab-netns.sh", "up", LAB_NETNS, LAB_NET_DIR])
            .output()
            .map_err(io_err("run sh for", Path::new("scripts/lab-netns.sh")))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || text.is_empty() {
            return Err(LabError::NetNs {
                ns: LAB_NETNS.into(),
                status: out.status.to_string(),
                output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(LabNet { uri: text.lines().last().unwrap_or_default().to_string() })
    }

    /// The URI of the namespace's libvirtd.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The lab on the namespace's libvirtd.
    pub fn lab(&self) -> Result<Lab> {
        Lab::connect(&self.uri)
    }

    /// Guest `n`'s address on the bridge.
    pub fn guest_ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, 10 + n)
    }

    /// `program` run inside the namespace (`nsenter --net`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{LAB_NETNS}")).arg("--").arg(program);
        c
    }

    /// Runs `f` on a thread inside the namespace: what it connects to is
    /// reached from there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        in_netns(LAB_NETNS, f)
    }
}

/// Runs `f` on a thread that entered the network namespace `ns` (setns is
/// per thread, and sockets stay in the namespace they were made in).
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
