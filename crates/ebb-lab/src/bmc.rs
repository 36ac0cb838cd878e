//! Real BMCs for the farm's wake tests (farm research §4), each stopped and
//! removed on drop, like `LocalEtcd`:
//! - [`PowerDomain`]: a placeholder libvirt domain on qemu:///system that
//!   stands for a host's power (diskless, 32 MiB, software-emulated);
//! - [`VirtualBmc`]: IPMI over LAN for it (virtualbmc's vbmcd with a config
//!   of its own, a BMC on 127.0.0.1:<free port>);
//! - [`Sushy`]: Redfish for it (sushy-tools' emulator on 127.0.0.1:<free
//!   port>, the domain addressed by UUID);
//! - [`WolNet`]: two network namespaces joined by a veth pair, where a
//!   Wake-on-LAN magic packet is sent from one and caught in the other.
//!
//! virtualbmc and sushy-tools come from PyPI into a venv on Debian's python3
//! (scripts/setup-host.sh). Traffic stays on loopback or in the namespaces
//! made here.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where scripts/setup-host.sh puts the BMC emulators; `EBB_BMC_VENV` overrides.
pub const DEFAULT_BMC_VENV: &str = "/var/lib/ebb-lab/bmc-venv";
/// The libvirt the placeholders live in.
pub const URI: &str = "qemu:///system";
/// The name every placeholder domain starts with.
pub const DOMAIN_PREFIX: &str = "ebb-test-wake-";
/// The test BMCs' user and password.
pub const BMC_USER: &str = "admin";
pub const BMC_PASSWORD: &str = "ebb-test-pw";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A number unique in this process, for names.
fn seq() -> usize {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn venv_bin(name: &str) -> Result<PathBuf, String> {
    let venv = std::env::var("EBB_BMC_VENV").unwrap_or_else(|_| DEFAULT_BMC_VENV.to_string());
    let bin = PathBuf::from(venv).join("bin").join(name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} is missing: run scripts/setup-host.sh (virtualbmc and sushy-tools in a venv)", bin.display()))
    }
}

/// `virsh -c URI ARGS`: its stdout, or its stderr as the error.
fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh").arg("-c").arg(URI).args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run virsh ({e}): install libvirt-clients"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("virsh {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `program`, run in the network namespace `ns` if one is given (`nsenter --net`).
fn command_in(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `f` in the network namespace `ns` if one is given, else here.
fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    match ns {
        Some(ns) => crate::lab::in_netns(ns, f),
        None => Ok(f()),
    }
}

fn free_tcp_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

fn free_udp_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

/// A child in a process group of its own, so that it and whatever it forks
/// (vbmcd runs each BMC as a child process) are stopped together.
struct Group {
    child: Child,
}

impl Group {
    fn spawn(mut cmd: Command, log: &std::path::Path) -> Result<Group, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
        Ok(Group { child })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        use rustix::process::{kill_process_group, Pid, Signal};
        let pid = Pid::from_child(&self.child);
        // TERM first (vbmcd then stops its BMCs), KILL what is left after 3 s.
        let _ = kill_process_group(pid, Signal::TERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            if self.exited().is_some() && kill_process_group(pid, Signal::TERM).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill_process_group(pid, Signal::KILL);
        let _ = self.child.wait();
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// A libvirt domain that stands for a host's power: defined shut off; a
/// BMC's "power on" starts it. Destroyed and undefined on drop.
pub struct PowerDomain {
    name: String,
    uuid: String,
}

impl PowerDomain {
    /// Defines `ebb-test-wake-<pid>-<n>-<tag>`, shut off. Placeholders left
    /// by a test process that died are removed first.
    pub fn define(tag: &str) -> Result<PowerDomain, String> {
        remove_orphans();
        let name = format!("{DOMAIN_PREFIX}{}-{}-{tag}", std::process::id(), seq());
        let xml = format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>32</memory>\n  <vcpu>1</vcpu>\n  \
             <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <on_poweroff>destroy</on_poweroff>\n  \
             <devices><memballoon model='none'/></devices>\n</domain>\n"
        );
        let file = tempfile::Builder::new().prefix("ebb-wake-domain-").suffix(".xml").tempfile().map_err(|e| e.to_string())?;
        std::fs::write(file.path(), xml).map_err(|e| e.to_string())?;
        virsh(&["define", &file.path().to_string_lossy()])?;
        let uuid = match virsh(&["domuuid", &name]) {
            Ok(u) => u,
            Err(e) => {
                let _ = virsh(&["undefine", &name]);
                return Err(e);
            }
        };
        Ok(PowerDomain { name, uuid })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// `virsh domstate`: "shut off", "running", …
    pub fn state(&self) -> Result<String, String> {
        virsh(&["domstate", &self.name])
    }

    /// Waits until its state is `want`; how long that took.
    pub async fn wait_state(&self, want: &str, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let now = self.state()?;
            if now == want {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(format!("{} is {now:?}, not {want:?}, after {within:?}", self.name));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Powers it on (virsh start), as a host that is up.
    pub fn power_on(&self) -> Result<(), String> {
        virsh(&["start", &self.name]).map(drop)
    }

    /// Powers it off at once (virsh destroy), as a host that went down.
    pub fn power_off(&self) -> Result<(), String> {
        virsh(&["destroy", &self.name]).map(drop)
    }
}

impl Drop for PowerDomain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", "--managed-save", &self.name]);
    }
}

/// Removes `ebb-test-wake-<pid>-…` domains whose process is gone.
fn remove_orphans() {
    let Ok(names) = virsh(&["list", "--all", "--name"]) else { return };
    for name in names.lines().map(str::trim) {
        let Some(pid) = name.strip_prefix(DOMAIN_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = virsh(&["destroy", name]);
            let _ = virsh(&["undefine", "--managed-save", name]);
        }
    }
}

/// virtualbmc: vbmcd with a config of its own (its own config dir, pid
/// file and control port), and one IPMI BMC on 127.0.0.1:<free port> that
/// powers a [`PowerDomain`].
pub struct VirtualBmc {
    port: u16,
    /// The network namespace it runs in (its 127.0.0.1 is that one's).
    ns: Option<String>,
    dir: tempfile::TempDir,
    vbmcd: Group,
}

impl VirtualBmc {
    /// Starts vbmcd and a BMC for `domain`; returns once the BMC answers
    /// IPMI (`chassis power status`, within 20 s).
    pub async fn start(domain: &PowerDomain) -> Result<VirtualBmc, String> {
        Self::start_in(domain, None).await
    }

    /// The same inside the network namespace `ns` (a farm's management
    /// network): its BMC is on that namespace's 127.0.0.1.
    pub async fn start_in(domain: &PowerDomain, ns: Option<&str>) -> Result<VirtualBmc, String> {
        let vbmcd = venv_bin("vbmcd")?;
        let dir = tempfile::Builder::new().prefix("ebb-vbmc-").tempdir().map_err(|e| format!("cannot make vbmcd's directory: {e}"))?;
        let d = dir.path();
        let config = d.join("virtualbmc.conf");
        std::fs::create_dir_all(d.join("domains")).map_err(|e| e.to_string())?;
        let server_port = free_tcp_port()?;
        std::fs::write(
            &config,
            format!(
                "[default]\nconfig_dir = {}\npid_file = {}\nserver_port = {server_port}\n[log]\nlogfile = {}\n",
                d.join("domains").display(),
                d.join("vbmcd.pid").display(),
                d.join("vbmcd.log").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut cmd = command_in(ns, vbmcd);
        cmd.arg("--foreground").env("VIRTUALBMC_CONFIG", &config);
        let vbmcd = Group::spawn(cmd, &d.join("vbmcd.out"))?;
        let port = free_udp_port()?;
        let mut bmc = VirtualBmc { port, ns: ns.map(String::from), dir, vbmcd };
        bmc.wait_vbmcd().await?;
        let p = port.to_string();
        bmc.vbmc(&["add", domain.name(), "--address", "127.0.0.1", "--port", &p, "--username", BMC_USER, "--password", BMC_PASSWORD, "--libvirt-uri", URI])?;
        bmc.vbmc(&["start", domain.name()])?;
        bmc.wait_answering().await?;
        Ok(bmc)
    }

    /// `vbmc --no-daemon ARGS` against this vbmcd.
    fn vbmc(&self, args: &[&str]) -> Result<String, String> {
        let out = command_in(self.ns.as_deref(), venv_bin("vbmc")?)
            .arg("--no-daemon")
            .args(args)
            .env("VIRTUALBMC_CONFIG", self.dir.path().join("virtualbmc.conf"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run vbmc: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let args: Vec<&str> = args.iter().map(|a| if *a == BMC_PASSWORD { "…" } else { a }).collect();
            Err(format!("vbmc {} failed: {}\nvbmcd: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim(), self.log_tail()))
        }
    }

    async fn wait_vbmcd(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.vbmcd.exited() {
                return Err(format!("vbmcd exited ({status}): {}", self.log_tail()));
            }
            match self.vbmc(&["list"]) {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > Duration::from_secs(20) => return Err(format!("vbmcd did not answer within 20 s: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn wait_answering(&self) -> Result<(), String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(20) {
            let out = command_in(self.ns.as_deref(), "ipmitool")
                .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &self.port.to_string(), "-U", BMC_USER, "-E", "-N", "1", "-R", "1", "chassis", "power", "status"])
                .env("IPMI_PASSWORD", BMC_PASSWORD)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run ipmitool ({e}): install ipmitool (scripts/setup-host.sh)"))?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("the BMC on 127.0.0.1:{} did not answer IPMI within 20 s: {last}\nvbmcd: {}", self.port, self.log_tail()))
    }

    /// Its address for `[farm.wake] ipmi`: `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The end of vbmcd's log, for a failure's message.
    pub fn log_tail(&self) -> String {
        format!("{}\n{}", tail(&self.dir.path().join("vbmcd.log")), tail(&self.dir.path().join("vbmcd.out")))
    }
}

/// sushy-tools' Redfish emulator over qemu:///system on 127.0.0.1:<free
/// port>, seeing only the given domain (by UUID: sushy-tools 2.2 answers 500
/// for a System outside its allowed list or named otherwise).
pub struct Sushy {
    port: u16,
    uuid: String,
    /// The network namespace it runs in (its 127.0.0.1 is that one's).
    ns: Option<String>,
    /// Serves https with a self-signed certificate for 127.0.0.1.
    tls: bool,
    dir: tempfile::TempDir,
    group: Group,
}

impl Sushy {
    /// Starts the emulator over http; returns once it answers for the
    /// domain's System (within 30 s).
    pub async fn start(domain: &PowerDomain) -> Result<Sushy, String> {
        Self::start_with(domain, false, None).await
    }

    /// The same over http inside the network namespace `ns` (a farm's
    /// management network): it listens on that namespace's 127.0.0.1.
    pub async fn start_in(domain: &PowerDomain, ns: &str) -> Result<Sushy, String> {
        Self::start_with(domain, false, Some(ns)).await
    }

    /// The same over https, with a self-signed certificate for 127.0.0.1
    /// (made by openssl), as most real BMCs have; returns once it accepts
    /// connections.
    pub async fn start_tls(domain: &PowerDomain) -> Result<Sushy, String> {
        Self::start_with(domain, true, None).await
    }

    async fn start_with(domain: &PowerDomain, tls: bool, ns: Option<&str>) -> Result<Sushy, String> {
        let bin = venv_bin("sushy-emulator")?;
        let dir = tempfile::Builder::new().prefix("ebb-sushy-").tempdir().map_err(|e| format!("cannot make sushy's directory: {e}"))?;
        let port = free_tcp_port()?;
        let config = dir.path().join("sushy.conf");
        let mut text = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\nSUSHY_EMULATOR_LIBVIRT_URI = '{URI}'\n\
             SUSHY_EMULATOR_ALLOWED_INSTANCES = ['{}']\n",
            domain.uuid()
        );
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run openssl ({e}): install openssl (scripts/setup-host.sh)"))?;
            if !out.status.success() {
                return Err(format!("openssl could not make a certificate: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            text.push_str(&format!("SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n", cert.display(), key.display()));
        }
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let mut cmd = command_in(ns, bin);
        cmd.arg("--config").arg(&config);
        let group = Group::spawn(cmd, &dir.path().join("sushy.log"))?;
        let mut s = Sushy { port, uuid: domain.uuid().to_string(), ns: ns.map(String::from), tls, dir, group };
        s.wait_answering().await?;
        Ok(s)
    }

    async fn wait_answering(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let path = format!("/redfish/v1/Systems/{}", self.uuid);
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.group.exited() {
                return Err(format!("sushy-emulator exited ({status}): {}", self.log_tail()));
            }
            let (tls, port) = (self.tls, self.port);
            let up = run_in(self.ns.as_deref(), || if tls { TcpStream::connect(("127.0.0.1", port)).is_ok() } else { http_get_status(port, &path).is_some_and(|s| s == 200) })
                .unwrap_or(false);
            if up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("sushy-emulator on 127.0.0.1:{} did not answer within 30 s: {}", self.port, self.log_tail()))
    }

    /// The domain's Redfish System URL, for `[farm.wake] redfish`.
    pub fn system_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/redfish/v1/Systems/{}", self.port, self.uuid)
    }

    /// The System's `PowerState` ("On", "Off"), as Redfish reports it
    /// (over http only).
    pub fn power_state(&self) -> Option<String> {
        let path = format!("/redfish/v1/Systems/{}", self.uuid);
        let body = run_in(self.ns.as_deref(), || http_get(self.port, &path)).ok()??;
        let at = body.find("\"PowerState\"")?;
        let rest = &body[at + 12..];
        let start = rest.find('"')? + 1;
        let end = start + rest[start..].find('"')?;
        Some(rest[start..end].to_string())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("sushy.log"))
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path)?.split_whitespace().nth(1)?.parse().ok()
}

/// Two network namespaces, `ebbt-wol-<pid>-<n>-s` (the sender, the
/// coordinator's side) and `…-l` (the listener, the sleeping host's NIC),
/// joined by a veth pair on 10.251.7.0/24. Removed on drop.
pub struct WolNet {
    sender: String,
    listener: String,
}

/// The listener's subnet broadcast in a [`WolNet`].
pub const WOL_NET_BROADCAST: &str = "10.251.7.255";

impl WolNet {
    pub fn up() -> Result<WolNet, String> {
        let (pid, n) = (std::process::id(), seq());
        let net = WolNet { sender: format!("ebbt-wol-{pid}-{n}-s"), listener: format!("ebbt-wol-{pid}-{n}-l") };
        // Interface names hold 15 bytes at most.
        let (vs, vl) = (format!("ebw{}{n}s", pid % 10_000_000), format!("ebw{}{n}l", pid % 10_000_000));
        let (s, l) = (net.sender.as_str(), net.listener.as_str());
        for args in [
            vec!["netns", "add", s],
            vec!["netns", "add", l],
            vec!["link", "add", "name", &vs, "netns", s, "type", "veth", "peer", "name", &vl, "netns", l],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", l, "link", "set", "lo", "up"],
            vec!["-n", s, "addr", "add", "10.251.7.1/24", "brd", "+", "dev", &vs],
            vec!["-n", l, "addr", "add", "10.251.7.2/24", "brd", "+", "dev", &vl],
            vec!["-n", s, "link", "set", &vs, "up"],
            vec!["-n", l, "link", "set", &vl, "up"],
        ] {
            ip(&args)?;
        }
        Ok(net)
    }

    pub fn sender(&self) -> &str {
        &self.sender
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Runs `f` on a thread inside the sender's namespace.
    pub fn in_sender<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        crate::lab::in_netns(&self.sender, f)
    }

    /// A UDP socket made inside the listener's namespace, bound to
    /// 0.0.0.0:`port` (it stays there whatever thread reads it).
    pub fn listener_udp(&self, port: u16) -> std::io::Result<UdpSocket> {
        crate::lab::in_netns(&self.listener, || UdpSocket::bind(("0.0.0.0", port)))?
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip ({e}): install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Drop for WolNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        let _ = ip(&["netns", "del", &self.sender]);
        let _ = ip(&["netns", "del", &self.listener]);
    }
}
