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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ebb_core::Bytes;
use sha2::{Digest, Sha256};
use virt::connect::Connect;
use virt::domain::Domain;

/// The libvirt URI the lab uses unless told otherwise.
pub const DEFAULT_URI: &str = "qemu:///system";
/// Where built images are cached unless `EBB_GUEST_DIR` says otherwise. Under
/// /var/cache (not /root) so libvirt's qemu user can read the files.
pub const DEFAULT_GUEST_DIR: &str = "/var/cache/ebb/guest";
/// The line the guest's /init prints on its console once it is up.
pub const READY_MARKER: &str = "EBB-GUEST-READY";

/// Files of `guest/`, embedded; all of them go into the image's cache key.
const GUEST_FILES: &[(&str, &str)] = &[
    ("build-image.sh", include_str!("../../../guest/build-image.sh")),
    ("init", include_str!("../../../guest/init")),
    ("ebb-mem", include_str!("../../../guest/ebb-mem")),
    ("cgi-bin/status", include_str!("../../../guest/cgi-bin/status")),
    ("cgi-bin/mem", include_str!("../../../guest/cgi-bin/mem")),
    ("cgi-bin/release", include_str!("../../../guest/cgi-bin/release")),
    ("cgi-bin/hit", include_str!("../../../guest/cgi-bin/hit")),
    ("cgi-bin/hits", include_str!("../../../guest/cgi-bin/hits")),
    ("cgi-bin/bulk", include_str!("../../../guest/cgi-bin/bulk")),
    ("cgi-bin/cpu", include_str!("../../../guest/cgi-bin/cpu")),
    ("cgi-bin/disk", include_str!("../../../guest/cgi-bin/disk")),
    ("cgi-bin/work", include_str!("../../../guest/cgi-bin/work")),
    ("cgi-bin/net", include_str!("../../../guest/cgi-bin/net")),
];

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

// ---------------------------------------------------------------------------
// The image

/// A built guest image: a kernel and an initramfs, readable by libvirt's qemu user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's version string, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// The cache key: sha256 of the embedded guest files and the kernel version.
    pub key: String,
}

impl GuestImage {
    /// Returns the cached image, building it first when the cache lacks it.
    /// Cache: `$EBB_GUEST_DIR` or `/var/cache/ebb/guest`, one folder per key.
    pub fn ensure() -> Result<GuestImage> {
        let base = std::env::var_os("EBB_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR));
        Self::ensure_in(&base)
    }

    /// As [`GuestImage::ensure`], with the cache at `base`.
    pub fn ensure_in(base: &Path) -> Result<GuestImage> {
        let kernel_version = newest_kernel_version()?;
        let key = image_key(&kernel_version);
        let dir = base.join(&key);
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            kernel_version: kernel_version.clone(),
            key: key.clone(),
        };
        if image.kernel.is_file() && image.initrd.is_file() {
            return Ok(image);
        }
        create_dir_0755(base)?;
        // Build beside the final folder, then rename: a crash leaves only a
        // `.build-*` folder, never a half image under the key.
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = base.join(format!(".build-{key}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = build_into(&tmp, &kernel_version).and_then(|out| {
            match std::fs::rename(&out, &dir) {
                Ok(()) => Ok(()),
                // Another process finished the same image first: use theirs.
                Err(_) if image.kernel.is_file() && image.initrd.is_file() => Ok(()),
                Err(e) => Err(io_err("move the built image to", &dir)(e)),
            }
        });
        let _ = std::fs::remove_dir_all(&tmp);
        result?;
        set_mode(&dir, 0o755)?;
        Ok(image)
    }
}

fn create_dir_0755(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("create the folder", dir))?;
    set_mode(dir, 0o755)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set the permissions of", path))
}

/// Writes the embedded guest files to `tmp/src`, runs the build script into
/// `tmp/out` and returns `tmp/out`.
fn build_into(tmp: &Path, kernel_version: &str) -> Result<PathBuf> {
    let src = tmp.join("src");
    let out = tmp.join("out");
    for (name, text) in GUEST_FILES {
        let path = src.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create the folder", parent))?;
        }
        std::fs::write(&path, text).map_err(io_err("write", &path))?;
        set_mode(&path, 0o755)?;
    }
    let output = Command::new("sh")
        .arg(src.join("build-image.sh"))
        .arg(&out)
        .env("EBB_GUEST_KVER", kernel_version)
        .env("TMPDIR", tmp)
        .output()
        .map_err(io_err("run sh for", &src.join("build-image.sh")))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(LabError::ImageBuild {
            out,
            status: output.status.to_string(),
            output: text.trim().to_string(),
        });
    }
    set_mode(&out, 0o755)?;
    Ok(out)
}

fn image_key(kernel_version: &str) -> String {
    let mut h = Sha256::new();
    for (name, text) in GUEST_FILES {
        // Length-prefixed so no two file sets hash alike by shifting bytes.
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(b"kernel:");
    h.update(kernel_version.as_bytes());
    let digest = h.finalize();
    digest.iter().take(8).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The version of the newest `/boot/vmlinuz-*` (the one the build script picks too).
fn newest_kernel_version() -> Result<String> {
    let entries = std::fs::read_dir("/boot").map_err(|_| LabError::NoKernel)?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
        .max_by(|a, b| version_key(a).cmp(&version_key(b)))
        .ok_or(LabError::NoKernel)
}

/// `6.1.0-56-amd64` → runs of digits compare as numbers, the rest as text.
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut parts = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            parts.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            parts.push((0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    parts
}

// ---------------------------------------------------------------------------
// The domain

/// What a lab guest looks like.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub name: String,
    /// The guest's physical memory (`<memory>`): the most the balloon can give it.
    pub max_memory: Bytes,
    /// The balloon target at boot (`<currentMemory>`).
    pub memory: Bytes,
    pub vcpus: u32,
    /// Host port forwarded from 127.0.0.1 to the guest's httpd on port 80.
    pub http_port: Option<u16>,
    /// Started at boot, e.g. `mem:200:8:250:0` (MIB:STEP_MIB:INTERVAL_MS:HOLD_S).
    pub workload: Option<String>,
    /// Balloon statistics period in seconds (0 turns the stats off).
    pub stats_period_s: u32,
    /// libvirt's `autodeflate`: the guest may take balloon pages back under OOM.
    /// Note: with it on, the guest's MemTotal no longer shrinks as the balloon grows.
    pub deflate_on_oom: bool,
    /// false → `<memballoon model='none'/>`.
    pub balloon: bool,
    /// The guest's serial console is written here (qemu must be able to create it).
    pub console_log: PathBuf,
    /// A complete `<…>` element in ebb's namespace, put inside `<metadata>`.
    pub metadata: Option<String>,
    /// A CPU cap: each vCPU may run `.1` µs per `.0` µs (`<cputune>`).
    pub cpu_cap: Option<(u64, u64)>,
    /// A raw disk image the guest sees as /dev/vda (virtio).
    pub disk: Option<PathBuf>,
    /// Its disk's own I/O limit, bytes per second (`<iotune><total_bytes_sec>`).
    pub disk_limit: Option<u64>,
    /// A channel for the QEMU guest agent, which the image starts.
    pub guest_agent: bool,
    /// Its own disk I/O weight (`<blkiotune><weight>`).
    pub io_weight: Option<u32>,
    /// A second NIC (the guest's eth1), of type `ethernet` on a host tap of
    /// this name that libvirt makes and removes: nothing is behind it, so
    /// what the guest sends there ends on the tap.
    pub tap: Option<String>,
    /// Its address on the bridge of `LabNet` (instead of the user-mode
    /// forward): the guest must be created through `LabNet::lab`.
    pub lab_net: Option<Ipv4Addr>,
}

impl GuestSpec {
    /// One vCPU, `memory` both max and current, balloon with 1 s stats,
    /// no network, console log at `/var/log/ebb/lab/<name>.console.log`.
    pub fn new(name: impl Into<String>, memory: Bytes) -> GuestSpec {
        let name = name.into();
        GuestSpec {
            console_log: PathBuf::from(format!("/var/log/ebb/lab/{name}.console.log")),
            name,
            max_memory: memory,
            memory,
            vcpus: 1,
            http_port: None,
            workload: None,
            stats_period_s: 1,
            deflate_on_oom: false,
            balloon: true,
            metadata: None,
            cpu_cap: None,
            disk: None,
            io_weight: None,
            guest_agent: false,
            disk_limit: None,
            tap: None,
            lab_net: None,
        }
    }

    /// The guest kernel's command line.
    pub fn cmdline(&self) -> String {
        let mut c = format!("console=ttyS0 quiet panic=-1 ebb.name={}", self.name);
        if let Some(ip) = self.lab_net {
            let _ = write!(c, " ebb.ip={ip}/24");
        } else if self.http_port.is_some() {
            c.push_str(" ebb.net=1");
        }
        if let Some(w) = &self.workload {
            let _ = write!(c, " ebb.workload={w}");
        }
        c
    }

    /// The libvirt domain XML for this guest booted from `image`.
    pub fn domain_xml(&self, image: &GuestImage) -> String {
        let e = xml_escape;
        let mut x = String::new();
        let _ = writeln!(x, "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>");
        let _ = writeln!(x, "  <name>{}</name>", e(&self.name));
        let _ = writeln!(x, "  <description>ebb lab guest</description>");
        if let Some(m) = &self.metadata {
            let _ = writeln!(x, "  <metadata>\n    {m}\n  </metadata>");
        }
        let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", self.max_memory.kib());
        let _ = writeln!(x, "  <currentMemory unit='KiB'>{}</currentMemory>", self.memory.min(self.max_memory).kib());
        let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", self.vcpus.max(1));
        if let Some((period, quota)) = self.cpu_cap {
            let _ = writeln!(x, "  <cputune><period>{period}</period><quota>{quota}</quota></cputune>");
        }
        if let Some(w) = self.io_weight {
            let _ = writeln!(x, "  <blkiotune><weight>{w}</weight></blkiotune>");
        }
        let _ = writeln!(x, "  <os>");
        let _ = writeln!(x, "    <type arch='x86_64'>hvm</type>");
        let _ = writeln!(x, "    <kernel>{}</kernel>", e(&image.kernel.to_string_lossy()));
        let _ = writeln!(x, "    <initrd>{}</initrd>", e(&image.initrd.to_string_lossy()));
        let _ = writeln!(x, "    <cmdline>{}</cmdline>", e(&self.cmdline()));
        let _ = writeln!(x, "  </os>");
        let _ = writeln!(x, "  <features><acpi/></features>");
        let _ = writeln!(x, "  <clock offset='utc'/>");
        // A dead guest should stay dead (and be seen), not reboot in a loop.
        let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>");
        let _ = writeln!(x, "  <on_reboot>destroy</on_reboot>");
        let _ = writeln!(x, "  <on_crash>destroy</on_crash>");
        let _ = writeln!(x, "  <devices>");
        let _ = writeln!(x, "    <controller type='usb' model='none'/>");
        let _ = writeln!(x, "    <serial type='file'>");
        let _ = writeln!(x, "      <source path='{}'/>", e(&self.console_log.to_string_lossy()));
        let _ = writeln!(x, "      <target port='0'/>");
        let _ = writeln!(x, "    </serial>");
        if let Some(disk) = &self.disk {
            let _ = writeln!(x, "    <disk type='file' device='disk'>");
            let _ = writeln!(x, "      <driver name='qemu' type='raw' cache='none'/>");
            let _ = writeln!(x, "      <source file='{}'/>", e(&disk.to_string_lossy()));
            let _ = writeln!(x, "      <target dev='vda' bus='virtio'/>");
            if let Some(l) = self.disk_limit {
                let _ = writeln!(x, "      <iotune><total_bytes_sec>{l}</total_bytes_sec></iotune>");
            }
            let _ = writeln!(x, "    </disk>");
        }
        if self.lab_net.is_some() {
            // On the lab namespace's bridge, in the user-mode NIC's slot.
            let _ = writeln!(x, "    <interface type='bridge'>");
            let _ = writeln!(x, "      <source bridge='{LAB_BRIDGE}'/>");
            let _ = writeln!(x, "      <model type='virtio'/>");
            let _ = writeln!(x, "      <rom enabled='no'/>");
            let _ = writeln!(x, "      <address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>");
            let _ = writeln!(x, "    </interface>");
        }
        if let Some(tap) = &self.tap {
            // After the user-mode NIC's slot 0x9, so it is eth1; no PXE ROM.
            let _ = writeln!(x, "    <interface type='ethernet'>");
            let _ = writeln!(x, "      <target dev='{}' managed='yes'/>", e(tap));
            let _ = writeln!(x, "      <model type='virtio'/>");
            let _ = writeln!(x, "      <rom enabled='no'/>");
            let _ = writeln!(x, "      <address type='pci' domain='0x0000' bus='0x00' slot='0x0a' function='0x0'/>");
            let _ = writeln!(x, "    </interface>");
        }
        if self.guest_agent {
            let _ = writeln!(x, "    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>");
        }
        if self.balloon {
            let deflate = if self.deflate_on_oom { " autodeflate='on'" } else { "" };
            let _ = writeln!(x, "    <memballoon model='virtio'{deflate}>");
            let _ = writeln!(x, "      <stats period='{}'/>", self.stats_period_s);
            let _ = writeln!(x, "    </memballoon>");
        } else {
            let _ = writeln!(x, "    <memballoon model='none'/>");
        }
        let _ = writeln!(x, "  </devices>");
        if let (Some(port), None) = (self.http_port, self.lab_net) {
            // QEMU user networking through qemu:commandline: no bridge, no
            // host address but the loopback forward. addr=0x9 keeps the NIC
            // off the balloon's PCI slot.
            let _ = writeln!(x, "  <qemu:commandline>");
            let _ = writeln!(x, "    <qemu:arg value='-netdev'/>");
            let _ = writeln!(x, "    <qemu:arg value='user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:80'/>");
            let _ = writeln!(x, "    <qemu:arg value='-device'/>");
            let _ = writeln!(x, "    <qemu:arg value='virtio-net-pci,netdev=n0,addr=0x9'/>");
            let _ = writeln!(x, "  </qemu:commandline>");
        }
        x.push_str("</domain>\n");
        x
    }
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// A free TCP port on 127.0.0.1 (bound, read, released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 must work")
}

// ---------------------------------------------------------------------------
// The lab

/// A libvirt connection plus the guest image (built on first use).
pub struct Lab {
    conn: Connect,
    uri: String,
    image: OnceLock<GuestImage>,
}

impl Lab {
    pub fn connect(uri: &str) -> Result<Lab> {
        // libvirt's default handler prints every error to stderr; ours carry them.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri))
            .map_err(|source| LabError::Connect { uri: uri.to_string(), source })?;
        Ok(Lab { conn, uri: uri.to_string(), image: OnceLock::new() })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    /// The guest image, built or found in the cache on first call.
    pub fn image(&self) -> Result<&GuestImage> {
        if let Some(i) = self.image.get() {
            return Ok(i);
        }
        let image = GuestImage::ensure()?;
        Ok(self.image.get_or_init(|| image))
    }

    /// Use this image instead of [`GuestImage::ensure`]'s.
    pub fn with_image(self, image: GuestImage) -> Lab {
        let cell = OnceLock::new();
        let _ = cell.set(image);
        Lab { image: cell, ..self }
    }

    /// Defines a persistent domain for `spec` and starts it. Does not wait
    /// for the guest to boot: see [`Guest::wait_ready`].
    pub fn create(&self, spec: &GuestSpec) -> Result<Guest> {
        let image = self.image()?.clone();
        if self.conn.lookup_domain_by_name(&spec.name).is_ok() {
            return Err(LabError::Exists { name: spec.name.clone() });
        }
        if let Some(dir) = spec.console_log.parent() {
            create_dir_0755(dir)?;
        }
        // A stale log would show an old READY line.
        match std::fs::remove_file(&spec.console_log) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove the old console log", &spec.console_log)(e)),
        }
        let lv = |action| {
            let name = spec.name.clone();
            move |source| LabError::Libvirt { action, name, source }
        };
        let dom = self.conn.define_domain_xml(&spec.domain_xml(&image)).map_err(lv("define"))?;
        let mut guest = Guest {
            conn: self.conn.clone(),
            dom,
            name: spec.name.clone(),
            http_port: spec.http_port,
            http: match (spec.lab_net, spec.http_port) {
                (Some(ip), _) => Some((SocketAddr::from((ip, 80)), Some(LAB_NETNS))),
                (None, Some(port)) => Some((SocketAddr::from((Ipv4Addr::LOCALHOST, port)), None)),
                (None, None) => None,
            },
            console_log: spec.console_log.clone(),
            removed: false,
        };
        if let Err(source) = guest.dom.create() {
            let _ = guest.remove_inner();
            return Err(lv("start")(source));
        }
        Ok(guest)
    }

    /// Destroys and undefines every domain whose name starts with `prefix`
    /// (leftovers of a run that crashed). Returns their names.
    pub fn remove_leftovers(&self, prefix: &str) -> Result<Vec<String>> {
        let doms = self.conn.list_all_domains(0).map_err(|source| LabError::Libvirt {
            action: "list the domains, looking for",
            name: format!("{prefix}*"),
            source,
        })?;
        let mut removed = Vec::new();
        for dom in doms {
            let Ok(name) = dom.name() else { continue };
            if name.starts_with(prefix) {
                remove_domain(&dom, &name)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

fn remove_domain(dom: &Domain, name: &str) -> Result<()> {
    let lv = |action| move |source| LabError::Libvirt { action, name: name.to_string(), source };
    if dom.is_active().map_err(lv("query the state of"))? {
        dom.destroy().map_err(lv("destroy"))?;
    }
    if dom.is_persistent().unwrap_or(false) {
        if dom.has_managed_save(0).unwrap_or(false) {
            dom.managed_save_remove(0).map_err(lv("remove the managed save of"))?;
        }
        dom.undefine_flags(
            virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
        )
        .map_err(lv("undefine"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// A guest

/// What the guest says about itself on /cgi-bin/status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestStatus {
    pub mem_total: Bytes,
    pub mem_available: Bytes,
    /// The guest kernel's `oom_kill` counter (/proc/vmstat).
    pub oom_kills: u64,
    /// idle | allocating | holding | released | failed
    pub workload_state: String,
    /// MiB the memory workload holds now.
    pub workload_mib: u64,
    /// Every key=value line, for fields not named above.
    pub raw: BTreeMap<String, String>,
}

impl GuestStatus {
    /// Parses the `key=value` lines of /cgi-bin/status.
    pub fn parse(body: &str) -> Result<GuestStatus, &'static str> {
        let raw: BTreeMap<String, String> = body
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let num = |k: &'static str| raw.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or(k);
        Ok(GuestStatus {
            mem_total: Bytes::from_kib(num("mem_total_kib")?),
            mem_available: Bytes::from_kib(num("mem_available_kib")?),
            oom_kills: num("oom_kill")?,
            workload_state: raw.get("workload_state").cloned().unwrap_or_else(|| "idle".into()),
            workload_mib: num("workload_mib").unwrap_or(0),
            raw,
        })
    }
}

/// A running lab guest. Dropping it destroys and undefines its domain.
pub struct Guest {
    conn: Connect,
    dom: Domain,
    name: String,
    http_port: Option<u16>,
    /// Where its httpd answers, and the namespace to reach it from.
    http: Option<(SocketAddr, Option<&'static str>)>,
    console_log: PathBuf,
    removed: bool,
}

impl Guest {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The libvirt domain, for calls the lab does not wrap.
    pub fn domain(&self) -> &Domain {
        &self.dom
    }

    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    /// Sets the balloon target of the running guest (`virDomainSetMemoryFlags`, live).
    pub fn set_balloon_target(&self, size: Bytes) -> Result<()> {
        self.dom
            .set_memory_flags(size.kib(), virt::sys::VIR_DOMAIN_AFFECT_LIVE)
            .map_err(|source| LabError::Libvirt { action: "set the balloon target of", name: self.name.clone(), source })
    }

    /// Waits until the guest answers /cgi-bin/status (with an HTTP forward) or
    /// printed its ready line on the console (without one).
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let ready = match self.http {
                Some(_) => self.http_get_with("/cgi-bin/status", Duration::from_secs(2)).is_ok(),
                None => self.console_log().contains(READY_MARKER),
            };
            if ready {
                return Ok(start.elapsed());
            }
            if !self.dom.is_active().unwrap_or(true) {
                return Err(LabError::Stopped { name: self.name.clone(), log: self.console_log.clone() });
            }
            if start.elapsed() >= timeout {
                return Err(LabError::NotReady {
                    name: self.name.clone(),
                    timeout,
                    log: self.console_log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn status(&self) -> Result<GuestStatus> {
        let path = "/cgi-bin/status";
        let body = self.http_get(path)?;
        GuestStatus::parse(&body).map_err(|field| LabError::BadAnswer {
            name: self.name.clone(),
            path: path.into(),
            field,
            body,
        })
    }

    /// Starts the guest's memory workload (replacing a running one): `mib` MiB
    /// in `step_mib` pieces every `interval_ms`, held `hold_s` seconds (0: until released).
    pub fn start_mem_workload(&self, mib: u64, step_mib: u64, interval_ms: u64, hold_s: u64) -> Result<()> {
        let path = format!("/cgi-bin/mem?mib={mib}&step={step_mib}&interval={interval_ms}&hold={hold_s}");
        let body = self.http_get(&path)?;
        if !body.lines().any(|l| l.trim() == "started=1") {
            return Err(LabError::BadAnswer { name: self.name.clone(), path, field: "started", body });
        }
        Ok(())
    }

    /// Stops the memory workload and frees what it holds.
    pub fn release_mem_workload(&self) -> Result<()> {
        let path = "/cgi-bin/release";
        let body = self.http_get(path)?;
        if !body.lines().any(|l| l.trim() == "released=1") {
            return Err(LabError::BadAnswer { name: self.name.clone(), path: path.into(), field: "released", body });
        }
        Ok(())
    }

    /// Runs the guest's fixed computation for `secs`; the rounds it got through.
    pub fn work(&self, secs: u64) -> Result<u64> {
        let path = format!("/cgi-bin/work?secs={secs}");
        let body = self.http_get_with(&path, Duration::from_secs(secs + 30))?;
        body.lines()
            .find_map(|l| l.trim().strip_prefix("rounds=")?.parse().ok())
            .ok_or_else(|| LabError::BadAnswer { name: self.name.clone(), path, field: "rounds", body })
    }

    /// Writes to the guest's disk over and over for `secs`; 0 stops it.
    pub fn disk_workload(&self, secs: u64) -> Result<()> {
        self.start_workload(format!("/cgi-bin/disk?secs={secs}&mib=16"), "secs", secs)
    }

    /// Runs `threads` busy loops in the guest for `secs`; 0 threads stops them.
    pub fn cpu_workload(&self, threads: u32, secs: u64) -> Result<()> {
        self.start_workload(format!("/cgi-bin/cpu?threads={threads}&secs={secs}"), "threads", threads)
    }

    /// `senders` pingers send out of the guest's second NIC for `secs`; 0 stops them.
    pub fn net_workload(&self, secs: u64, senders: u32) -> Result<()> {
        self.start_workload(format!("/cgi-bin/net?secs={secs}&senders={senders}"), "secs", secs)
    }

    /// GETs a workload's CGI and checks it echoes `field=value` back.
    fn start_workload(&self, path: String, field: &'static str, value: impl std::fmt::Display) -> Result<()> {
        let body = self.http_get(&path)?;
        if !body.lines().any(|l| l.trim() == format!("{field}={value}")) {
            return Err(LabError::BadAnswer { name: self.name.clone(), path, field, body });
        }
        Ok(())
    }

    /// GET `path` from the guest's httpd through the 127.0.0.1 forward; the body on 2xx.
    pub fn http_get(&self, path: &str) -> Result<String> {
        self.http_get_with(path, Duration::from_secs(10))
    }

    fn http_get_with(&self, path: &str, timeout: Duration) -> Result<String> {
        let (addr, netns) = self.http.ok_or_else(|| LabError::NoHttp { name: self.name.clone() })?;
        let http = |source| LabError::Http { name: self.name.clone(), addr, path: path.to_string(), source };
        let get = || http_get_at(addr, path, timeout);
        let answer = match netns {
            Some(ns) => in_netns(ns, get).and_then(|r| r),
            None => get(),
        };
        let (status_line, body) = answer.map_err(http)?;
        let code = status_line.split_whitespace().nth(1).unwrap_or("");
        if !code.starts_with('2') {
            return Err(LabError::HttpStatus {
                name: self.name.clone(),
                path: path.to_string(),
                status_line,
                body,
            });
        }
        Ok(body)
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn console_log(&self) -> String {
        std::fs::read(&self.console_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Destroys the domain if it runs, drops its managed save, undefines it.
    pub fn remove(mut self) -> Result<()> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        remove_domain(&self.dom, &self.name)?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.remove_inner();
    }
}

/// A minimal HTTP/1.0 GET to `addr`, bounded by `timeout` per step.
/// Returns the status line and the body.
fn http_get_at(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.take(4 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    // QEMU's user-net forward accepts even when nothing listens in the guest,
    // then closes: an empty answer means "not up yet".
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no HTTP answer (connection closed)"))?;
    let status_line = head.lines().next().unwrap_or("").trim().to_string();
    if !status_line.starts_with("HTTP/") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "answer is not HTTP"));
    }
    Ok((status_line, body.to_string()))
}

// ---------------------------------------------------------------------------
// A network of its own

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
            .args(["-c", include_str!("../../../scripts/lab-netns.sh"), "lab-netns.sh", "up", LAB_NETNS, LAB_NET_DIR])
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
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
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

/// A real upsd (Debian's nut-server) serving one `dummy-ups` UPS named
/// `test` on a loopback port, in a folder of its own; its state is set by
/// rewriting the driver's file. Both daemons are stopped on drop.
pub struct Upsd {
    dir: tempfile::TempDir,
    port: u16,
    /// The certificate database upsd reads (CERTPATH), kept while it runs.
    _cert: Option<UpsdCert>,
}

impl Upsd {
    pub fn start(status: &str) -> io::Result<Upsd> {
        Upsd::start_with(status, None)
    }

    /// A upsd that takes up TLS (STARTTLS) with `cert`.
    pub fn start_tls(status: &str, cert: UpsdCert) -> io::Result<Upsd> {
        Upsd::start_with(status, Some(cert))
    }

    fn start_with(status: &str, cert: Option<UpsdCert>) -> io::Result<Upsd> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let p = dir.path().to_path_buf();
        let dev = p.join("ups.dev");
        write_ups(&dev, status)?;
        std::fs::write(p.join("nut.conf"), "MODE=standalone\n")?;
        std::fs::write(p.join("ups.conf"), format!("[test]\ndriver = dummy-ups\nport = {}\ndesc = \"ebb test\"\n", dev.display()))?;
        let tls = cert.as_ref().map_or(String::new(), |c| format!("CERTPATH {}\nCERTIDENT \"upsd\" \"{}\"\n", c.dir.path().display(), c.password));
        std::fs::write(p.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\nSTATEPATH {}\n{tls}", p.display()))?;
        std::fs::write(p.join("upsd.users"), "")?;
        let upsd = Upsd { dir, port, _cert: cert };
        for (prog, args) in [("/lib/nut/dummy-ups", &["-a", "test", "-u", "root"][..]), ("/lib/nut/upsd", &["-u", "root"][..])] {
            let out = std::process::Command::new(prog)
                .args(args)
                .env("NUT_CONFPATH", &p)
                .env("NUT_STATEPATH", &p)
                .output()
                .map_err(|e| io::Error::new(e.kind(), format!("{prog}: {e}: install nut-server (scripts/setup-host.sh)")))?;
            if !out.status.success() {
                return Err(io::Error::other(format!("{prog}: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        Ok(upsd)
    }

    /// `test@127.0.0.1:PORT`, as `power.ups` takes it.
    pub fn ups(&self) -> String {
        format!("test@127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sets `ups.status` (e.g. "OB LB"); charge 8 % when LB, else 100 %.
    pub fn set(&self, status: &str) -> io::Result<()> {
        write_ups(&self.dir.path().join("ups.dev"), status)
    }
}

/// A certificate authority of a test's own in an NSS database, made with
/// certutil (libnss3-tools) by the steps of the README's "Setting up NUT
/// for ebb": the CA in a database of its own, upsd's key in upsd's, and a
/// certificate for it issued from a request.
pub struct TestCa {
    dir: tempfile::TempDir,
    issued: std::cell::Cell<u32>,
}

/// An NSS database for upsd (its CERTPATH) holding its key and the
/// certificate `upsd` a [`TestCa`] issued for it.
pub struct UpsdCert {
    dir: tempfile::TempDir,
    password: &'static str,
}

impl TestCa {
    pub fn new() -> io::Result<TestCa> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        nss_db(d, "ca-password")?;
        let noise = noise(d);
        // A self-signed CA certificate; -2 asks: a CA? path length (-1: no limit)? critical?
        let ca = ["-S", "-n", "ups-ca", "-s", "CN=ebb test CA", "-x", "-t", "CT,,", "-v", "12", "-m", "1", "-2", "-z", &noise];
        certutil(d, &[&ca[..], &KEY, &["--keyUsage", "certSigning,crlSigning"]].concat(), "y\n-1\ny\n")?;
        std::fs::write(d.join("ca.pem"), certutil(d, &["-L", "-n", "ups-ca", "-a"], "")?)?;
        Ok(TestCa { dir, issued: std::cell::Cell::new(1) })
    }

    /// The CA's certificate in PEM, as power.ups_ca takes it.
    pub fn pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A key for upsd and a certificate for it issued for `names`, as
    /// certutil's --extSAN takes them ("ip:127.0.0.1,dns:ups.example").
    pub fn issue(&self, names: &str) -> io::Result<UpsdCert> {
        let cert = UpsdCert { dir: tempfile::tempdir()?, password: "upsd-password" };
        let (db, ca) = (cert.dir.path(), self.dir.path());
        nss_db(db, cert.password)?;
        let (csr, crt) = (path_str(&db.join("upsd.csr"))?.to_string(), path_str(&db.join("upsd.crt"))?.to_string());
        // The key stays in upsd's database; the CA signs a request for it.
        certutil(db, &[&["-R", "-s", "CN=upsd", "-a", "-o", &csr, "-z", &noise(db)][..], &KEY].concat(), "")?;
        self.issued.set(self.issued.get() + 1);
        let serial = self.issued.get().to_string();
        let sign = ["-C", "-c", "ups-ca", "-i", &csr, "-a", "-o", &crt, "-m", &serial, "-v", "12", "-Z", "SHA256", "--extSAN", names];
        certutil(ca, &[&sign[..], &["--keyUsage", "digitalSignature", "--extKeyUsage", "serverAuth"]].concat(), "")?;
        certutil(db, &["-A", "-n", "upsd", "-t", ",,", "-a", "-i", &crt], "")?;
        Ok(cert)
    }
}

/// EC P-256 keys signed with SHA-256.
const KEY: [&str; 6] = ["-k", "ec", "-q", "nistp256", "-Z", "SHA256"];

/// An empty NSS database in `dir`, its password and random seed beside it.
fn nss_db(dir: &Path, password: &str) -> io::Result<()> {
    std::fs::write(dir.join("password"), password)?;
    let mut seed = [0u8; 64];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    std::fs::write(noise(dir), seed)?;
    certutil(dir, &["-N"], "").map(drop)
}

/// The random seed certutil takes for a key (without it, it asks for keystrokes).
fn noise(dir: &Path) -> String {
    dir.join("noise").display().to_string()
}

fn path_str(p: &Path) -> io::Result<&str> {
    p.to_str().ok_or_else(|| io::Error::other(format!("{} is not UTF-8", p.display())))
}

/// certutil on the NSS database in `db` (its password file beside it),
/// `input` on its stdin: its stdout.
fn certutil(db: &Path, args: &[&str], input: &str) -> io::Result<Vec<u8>> {
    let mut child = Command::new("certutil")
        .args(args)
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .arg("-f")
        .arg(db.join("password"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("certutil: {e}: install libnss3-tools (scripts/setup-host.sh)")))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("certutil {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(out.stdout)
}

fn write_ups(dev: &Path, status: &str) -> io::Result<()> {
    let charge = if status.contains("LB") { 8 } else { 100 };
    std::fs::write(dev, format!("ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: 1200\nups.load: 25\nups.realpower: 180\n"))
}

impl Drop for Upsd {
    fn drop(&mut self) {
        for pidfile in ["upsd.pid", "dummy-ups-test.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pidfile)) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            kernel: "/var/cache/ebb/guest/k/vmlinuz".into(),
            initrd: "/var/cache/ebb/guest/k/initrd.img".into(),
            kernel_version: "6.1.0-56-amd64".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn version_order_is_numeric() {
        let mut v = vec!["6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-56-amd64", "6.10.0-1-amd64"]);
    }

    #[test]
    fn key_depends_on_kernel() {
        assert_ne!(image_key("6.1.0-56-amd64"), image_key("6.1.0-57-amd64"));
        assert_eq!(image_key("x"), image_key("x"));
    }

    #[test]
    fn xml_has_the_pieces() {
        let mut s = GuestSpec::new("ebb-t<1>", Bytes::from_mib(512));
        s.memory = Bytes::from_mib(256);
        s.http_port = Some(4321);
        s.workload = Some("mem:64".into());
        s.deflate_on_oom = true;
        s.metadata = Some("<ebb:vm xmlns:ebb='urn:x'/>".into());
        let x = s.domain_xml(&image());
        assert!(x.contains("<name>ebb-t&lt;1&gt;</name>"));
        assert!(x.contains("<memory unit='KiB'>524288</memory>"));
        assert!(x.contains("<currentMemory unit='KiB'>262144</currentMemory>"));
        assert!(x.contains("<memballoon model='virtio' autodeflate='on'>"));
        assert!(x.contains("<stats period='1'/>"));
        assert!(x.contains("hostfwd=tcp:127.0.0.1:4321-:80"));
        assert!(x.contains("ebb.net=1 ebb.workload=mem:64"));
        assert!(x.contains("<ebb:vm xmlns:ebb='urn:x'/>"));
        s.balloon = false;
        s.http_port = None;
        let x = s.domain_xml(&image());
        assert!(x.contains("<memballoon model='none'/>"));
        assert!(!x.contains("qemu:commandline>"));
        // On the lab's bridge instead of the user-mode forward.
        s.http_port = Some(4321);
        s.lab_net = Some(LabNet::guest_ip(1));
        let x = s.domain_xml(&image());
        assert!(x.contains("<source bridge='ebb-br0'/>") && x.contains("ebb.ip=10.77.0.11/24"), "{x}");
        assert!(!x.contains("hostfwd") && !x.contains("ebb.net=1"), "{x}");
    }

    #[test]
    fn status_parses() {
        let st = GuestStatus::parse(
            "hostname=a\nmem_total_kib=490000\nmem_available_kib=400000\noom_kill=2\nworkload_state=holding\nworkload_mib=64\n",
        )
        .unwrap();
        assert_eq!(st.mem_total, Bytes::from_kib(490000));
        assert_eq!(st.oom_kills, 2);
        assert_eq!(st.workload_state, "holding");
        assert_eq!(st.workload_mib, 64);
        assert_eq!(GuestStatus::parse("oom_kill=1"), Err("mem_total_kib"));
    }
}
