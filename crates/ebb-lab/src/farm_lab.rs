//! A farm of hosts on one machine, for the multi-host tests (issue 11; farm
//! research §4a, §5; the scripts in farm-lab/ it ports): a LAN made of
//! network namespaces (a bridge in `ebbt-lan`, one veth per member,
//! 10.251.0.0/24: the coordinator .1, hosts .11, .12…, a client .100), and
//! per host a privileged libvirtd of its own (in the host's netns and a
//! private mount namespace whose libvirt folders are the host's), a tiny
//! diskless VNC domain listening on the host's address, a cgroup v1 freezer
//! group that stands for the host's power (frozen = suspended), and a
//! Wake-on-LAN "NIC": a thread in the host's netns that thaws the group
//! when a magic packet for the host's MAC arrives. A host's power, as its
//! BMC sees it, is a placeholder domain on qemu:///system (`bmc::PowerDomain`,
//! for virtualbmc and sushy-tools): the host's suspend powers it off, and
//! the host's power rail thaws the group when a BMC powers it on. Everything
//! is removed on drop, and leftovers of a killed run at the next start.
//!
//! Traffic stays in the namespaces made here; the system libvirtd is not used.

use crate::bmc::PowerDomain;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Every namespace, link and cgroup made here starts with this.
pub const PREFIX: &str = "ebbt-";
/// The namespace that holds the LAN's bridge.
pub const LAN_NS: &str = "ebbt-lan";
/// The coordinator's namespace and address.
pub const COORD_NS: &str = "ebbt-coord";
pub const COORD_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// A client device's namespace and address.
pub const CLIENT_NS: &str = "ebbt-cl";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 100);
/// The LAN's broadcast address (where Wake-on-LAN goes).
pub const BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 255);
/// The VNC port of each host's VM, on the host's address.
pub const VNC_PORT: u16 = 5901;
/// The hosts' libvirt folders and logs.
const DIR: &str = "/var/tmp/ebbt-farm";
const FREEZER: &str = "/sys/fs/cgroup/freezer";

type Result<T> = std::result::Result<T, String>;

/// One farm host: its namespace, libvirtd, VM, freezer group and NIC.
pub struct FarmHost {
    pub name: String,
    /// Its network namespace (`ebbt-NAME`).
    pub ns: String,
    pub ip: Ipv4Addr,
    /// Its eth0's MAC, `aa:bb:…`.
    pub mac: String,
    /// Its libvirtd's URI.
    pub uri: String,
    /// Its VM (`ebbt-NAME-vm`), VNC on `ip:VNC_PORT`.
    pub vm: String,
    /// Its freezer group's folder.
    pub cgroup: PathBuf,
    /// Its power as its BMC sees it: running while the host is up.
    pub power: PowerDomain,
    root: PathBuf,
    wakes: Arc<AtomicUsize>,
    power_ons: Arc<AtomicUsize>,
}

impl FarmHost {
    /// The argv that runs a command (appended after it) in this host: in its
    /// netns and its freezer group, as `AgentProc::start_through` wants.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ > {}/cgroup.procs && exec nsenter --net=/var/run/netns/{} -- \"$@\"", self.cgroup.display(), self.ns),
            "sh".into(),
        ]
    }

    /// The command that suspends this host (its agent's `[farm.sleep] command`):
    /// run by the agent, in the group, it powers the host's BMC view off,
    /// freezes with the group and returns once thawed.
    pub fn suspend_command(&self) -> Vec<String> {
        let off = format!("virsh -c {} destroy {} >/dev/null 2>&1", crate::bmc::URI, self.power.name());
        vec!["sh".into(), "-c".into(), format!("{off}; echo FROZEN > {}/freezer.state", self.cgroup.display())]
    }

    /// Its freezer group's state: THAWED, FREEZING or FROZEN.
    pub fn freezer_state(&self) -> String {
        std::fs::read_to_string(self.cgroup.join("freezer.state")).unwrap_or_default().trim().to_string()
    }

    /// How many magic packets for its MAC its NIC has caught (each thaws it).
    pub fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }

    /// How many times a BMC powered it on while it was off (each thaws it).
    pub fn power_ons(&self) -> usize {
        self.power_ons.load(Ordering::SeqCst)
    }

    /// `virsh -c URI args…`, its output or why it failed; at most 20 s (a
    /// frozen host's libvirtd does not answer).
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        run("timeout", &[&["20", "virsh", "-c", &self.uri][..], args].concat())
    }

    /// Whether its VM has a managed save image (read from the host's
    /// folder: a frozen libvirtd does not answer).
    pub fn vm_saved(&self) -> bool {
        self.root.join("lib/qemu/save").join(format!("{}.save", self.vm)).exists()
    }

    /// Its VM's state (`virsh domstate`): only while the host is awake.
    pub fn vm_state(&self) -> String {
        self.virsh(&["domstate", &self.vm]).unwrap_or_else(|e| e).trim().to_string()
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.cgroup.join("freezer.state"), "THAWED");
    }
}

/// Thaws every host of the farm on drop, and keeps them thawed from then
/// on (an agent may suspend its host again meanwhile): declared after the
/// agents, it is dropped before them, so they can be stopped (a frozen
/// process takes no signal, not even SIGKILL, and waiting on it hangs).
pub struct ThawGuard {
    groups: Vec<PathBuf>,
    keep_thawed: Arc<AtomicBool>,
}

impl Drop for ThawGuard {
    fn drop(&mut self) {
        self.keep_thawed.store(true, Ordering::SeqCst);
        for cg in &self.groups {
            let _ = std::fs::write(cg.join("freezer.state"), "THAWED");
        }
    }
}

/// The farm: its LAN, hosts and their NICs.
pub struct FarmLab {
    pub hosts: Vec<FarmHost>,
    stop: Arc<AtomicBool>,
    /// Set when the thaw guard drops: the power rails thaw any host that freezes.
    keep_thawed: Arc<AtomicBool>,
    nics: Vec<JoinHandle<()>>,
}

impl FarmLab {
    /// The LAN and one host per name (`h1`, `h2`…, at 10.251.0.11…), each
    /// with its libvirtd and its VM running; leftovers of an earlier run
    /// are removed first.
    pub fn start(names: &[&str]) -> Result<FarmLab> {
        remove_leftovers();
        let mut farm = FarmLab { hosts: Vec::new(), stop: Arc::new(AtomicBool::new(false)), keep_thawed: Arc::new(AtomicBool::new(false)), nics: Vec::new() };
        ip(&["netns", "add", LAN_NS])?;
        ip(&["-n", LAN_NS, "link", "add", "ebbt-br", "type", "bridge"])?;
        ip(&["-n", LAN_NS, "link", "set", "ebbt-br", "up"])?;
        member("coord", COORD_IP)?;
        member("cl", CLIENT_IP)?;
        // The libvirtds start together: the first start takes seconds.
        let mut starts = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let addr = Ipv4Addr::new(10, 251, 0, 11 + i as u8);
            let mac = member(name, addr)?;
            let root = Path::new(DIR).join(name).join("root");
            let cgroup = Path::new(FREEZER).join(format!("{PREFIX}{name}"));
            std::fs::create_dir_all(&cgroup).map_err(|e| format!("cannot make {}: {e}", cgroup.display()))?;
            let power = PowerDomain::define(&format!("{PREFIX}{name}"))?;
            power.power_on()?;
            let host = FarmHost {
                name: name.to_string(),
                ns: format!("{PREFIX}{name}"),
                ip: addr,
                mac,
                uri: format!("qemu+unix:///system?socket={}/run/libvirt-sock", root.display()),
                vm: format!("{PREFIX}{name}-vm"),
                cgroup,
                power,
                root,
                wakes: Arc::new(AtomicUsize::new(0)),
                power_ons: Arc::new(AtomicUsize::new(0)),
            };
            starts.push(start_libvirtd(&host)?);
            farm.hosts.push(host);
        }
        for (host, mut start) in farm.hosts.iter().zip(starts) {
            let status = start.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("libvirtd of {} did not start ({status})", host.name));
            }
        }
        for host in &farm.hosts {
            let deadline = Instant::now() + Duration::from_secs(30);
            while host.virsh(&["version"]).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("libvirtd of {} did not answer within 30 s", host.name));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            start_vm(host)?;
            farm.nics.push(nic(host, farm.stop.clone())?);
            farm.nics.push(power_rail(host, farm.stop.clone(), farm.keep_thawed.clone())?);
        }
        Ok(farm)
    }

    pub fn host(&self, name: &str) -> &FarmHost {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// A guard that thaws every host when dropped (see `ThawGuard`).
    pub fn thaw_guard(&self) -> ThawGuard {
        ThawGuard { groups: self.hosts.iter().map(|h| h.cgroup.clone()).collect(), keep_thawed: self.keep_thawed.clone() }
    }

    /// `program` run in the namespace `ns` (`nsenter --net`: /sys stays whole).
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{ns}")).arg("--").arg(program);
        c
    }

    /// Runs `f` on a thread in the namespace `ns`: its sockets are there.
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        crate::lab::in_netns(ns, f)
    }
}

impl Drop for FarmLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for n in self.nics.drain(..) {
            let _ = n.join();
        }
        for h in &self.hosts {
            h.thaw();
            let _ = h.virsh(&["destroy", &h.vm]);
            let _ = h.virsh(&["undefine", &h.vm, "--managed-save"]);
        }
        remove_leftovers();
    }
}

/// A member of the LAN: netns `ebbt-NAME` with eth0 at `addr`, its peer on
/// the bridge. Returns eth0's MAC.
fn member(name: &str, addr: Ipv4Addr) -> Result<String> {
    let ns = format!("{PREFIX}{name}");
    let peer = format!("{PREFIX}{name}-p");
    ip(&["netns", "add", &ns])?;
    ip(&["link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
    ip(&["link", "set", &peer, "netns", LAN_NS])?;
    ip(&["-n", LAN_NS, "link", "set", &peer, "master", "ebbt-br", "up"])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "brd", "+", "dev", "eth0"])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    let out = ip(&["-n", &ns, "-br", "link", "show", "eth0"])?;
    out.split_whitespace().nth(2).map(str::to_string).ok_or_else(|| format!("no MAC for {ns}'s eth0: {out}"))
}

/// Starts the host's virtlogd and libvirtd (they daemonize) in its netns,
/// its freezer group and a mount namespace where libvirt's folders are the
/// host's own (farm-lab/host-libvirtd.sh). `nsenter --net`, not `ip netns
/// exec`, which remounts /sys and hides the cgroups from libvirt.
fn start_libvirtd(h: &FarmHost) -> Result<std::process::Child> {
    let r = &h.root;
    for d in ["run", "lib", "log", "cache", "etc/qemu"] {
        std::fs::create_dir_all(r.join(d)).map_err(|e| format!("cannot make {}: {e}", r.join(d).display()))?;
    }
    for e in std::fs::read_dir("/etc/libvirt").map_err(|e| format!("cannot read /etc/libvirt: {e}"))?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "conf") {
            std::fs::copy(&p, r.join("etc").join(e.file_name())).map_err(|e| format!("cannot copy {}: {e}", p.display()))?;
        }
    }
    let r = r.display();
    let script = format!(
        "mount --bind '{r}/run' /run/libvirt && mount --bind '{r}/lib' /var/lib/libvirt && mount --bind '{r}/etc' /etc/libvirt && \
         mount --bind '{r}/log' /var/log/libvirt && mount --bind '{r}/cache' /var/cache/libvirt && \
         virtlogd -d --pid-file '{r}/run/virtlogd.pid' && libvirtd -d --pid-file '{r}/run/libvirtd.pid'"
    );
    let outer = format!(
        "echo $$ > {}/cgroup.procs && exec nsenter --net=/var/run/netns/{} -- unshare --mount --propagation private sh -ec \"$0\"",
        h.cgroup.display(),
        h.ns
    );
    Command::new("sh")
        .args(["-c", &outer, &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))
}

/// Defines and starts the host's diskless 32 MiB VM, VNC on its address
/// (farm-lab/vnc-domain.sh).
fn start_vm(h: &FarmHost) -> Result<()> {
    let xml = format!(
        "<domain type='qemu'><name>{}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <graphics type='vnc' port='{VNC_PORT}' autoport='no' listen='{ip}'><listen type='address' address='{ip}'/></graphics>\
         <video><model type='vga'/></video><memballoon model='none'/></devices></domain>",
        h.vm,
        ip = h.ip
    );
    let file = h.root.join(format!("{}.xml", h.vm));
    std::fs::write(&file, xml).map_err(|e| e.to_string())?;
    h.virsh(&["define", &file.to_string_lossy()])?;
    h.virsh(&["start", &h.vm])?;
    Ok(())
}

/// The host's NIC in its sleep: a thread in its netns with a UDP socket on
/// port 9 that thaws the host's group at a magic packet for its MAC.
/// The thread is outside the group, as a NIC is outside the suspended CPU.
fn nic(h: &FarmHost, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let mac: Vec<u8> = h.mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<std::result::Result<_, _>>().map_err(|e| format!("MAC {}: {e}", h.mac))?;
    let mut magic = vec![0xffu8; 6];
    (0..16).for_each(|_| magic.extend_from_slice(&mac));
    let file = std::fs::File::open(format!("/var/run/netns/{}", h.ns)).map_err(|e| e.to_string())?;
    let (state, wakes) = (h.cgroup.join("freezer.state"), h.wakes.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        use std::os::fd::AsFd;
        let bound = rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
            .map_err(|e| format!("setns: {e}"))
            .and_then(|_| UdpSocket::bind("0.0.0.0:9").map_err(|e| format!("cannot bind port 9: {e}")));
        let socket = match bound {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::SeqCst) {
            if let Ok(n) = socket.recv(&mut buf) {
                if buf[..n].windows(magic.len()).any(|w| w == magic) {
                    wakes.fetch_add(1, Ordering::SeqCst);
                    let _ = std::fs::write(&state, "THAWED");
                }
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    Ok(handle)
}

/// The host's power rail: a thread that thaws the host's group when its
/// BMC has powered its placeholder domain on while the group is frozen (the
/// suspend powers it off before it freezes), and at once once
/// `keep_thawed` is set. Outside the group, as a BMC is outside the
/// suspended host.
fn power_rail(h: &FarmHost, stop: Arc<AtomicBool>, keep_thawed: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let conn = virt::connect::Connect::open(Some(crate::bmc::URI)).map_err(|e| format!("cannot connect to {}: {e}", crate::bmc::URI))?;
    let dom = conn.lookup_domain_by_name(h.power.name()).map_err(|e| format!("no domain {}: {e}", h.power.name()))?;
    let (state, power_ons) = (h.cgroup.join("freezer.state"), h.power_ons.clone());
    Ok(std::thread::spawn(move || {
        let _conn = conn;
        while !stop.load(Ordering::SeqCst) {
            let now = std::fs::read_to_string(&state).unwrap_or_default();
            if now.trim() == "FROZEN" && dom.is_active().unwrap_or(false) {
                power_ons.fetch_add(1, Ordering::SeqCst);
                let _ = std::fs::write(&state, "THAWED");
            } else if keep_thawed.load(Ordering::SeqCst) && !now.trim().is_empty() && now.trim() != "THAWED" {
                let _ = std::fs::write(&state, "THAWED");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }))
}

/// Removes what a farm (this one, or a killed run's) left: its processes
/// (thawed first), VMs' QEMUs, libvirtds, freezer groups, namespaces and folders.
fn remove_leftovers() {
    let groups: Vec<PathBuf> = std::fs::read_dir(FREEZER)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .map(|e| e.path())
        .collect();
    for g in &groups {
        let _ = std::fs::write(g.join("freezer.state"), "THAWED");
    }
    // The libvirtds first (by their pid files), then QEMUs and whatever is left in the groups.
    let mut pids = Vec::new();
    for host in std::fs::read_dir(DIR).into_iter().flatten().flatten() {
        let run = host.path().join("root/run");
        for f in ["libvirtd.pid", "virtlogd.pid"] {
            pids.extend(read_pid(&run.join(f)));
        }
        for e in std::fs::read_dir(run.join("qemu")).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                pids.extend(read_pid(&e.path()));
            }
        }
    }
    for g in &groups {
        for_each_group(g, &mut |d| {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        });
    }
    for &p in &pids {
        kill(p, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &pids {
        kill(p, rustix::process::Signal::KILL);
    }
    for g in &groups {
        // The deepest first: libvirt makes machine/… groups under its own.
        let mut dirs = Vec::new();
        for_each_group(g, &mut |d| dirs.push(d.to_path_buf()));
        for d in dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(3);
            while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(PREFIX)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
    let _ = std::fs::remove_dir_all(DIR);
}

/// `f` on `dir` and every group under it, parents first.
fn for_each_group(dir: &Path, f: &mut impl FnMut(&Path)) {
    f(dir);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            for_each_group(&e.path(), f);
        }
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn kill(pid: i32, signal: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, signal);
    }
}

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The `[agent]` lines and the rest of the config of `host`'s agent in a
/// lab farm: on its libvirtd, fast timers (a 2 s grace, a 2 s console idle),
/// etcd at `etcd_url`, its suspend the lab's (`suspend_command`), woken as
/// `wake` (the lines of its `[farm.wake]`) says.
pub fn agent_config(host: &FarmHost, etcd_url: &str, wake: &str) -> (String, String) {
    let lines = format!("uri = \"{}\"\ndomains = [\"{}\"]\ntick = \"250ms\"", host.uri, host.vm);
    let command = host.suspend_command().iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    let rest = format!(
        "[memory]\nenabled = false\n[clients]\nconsole_idle = \"2s\"\n\
         [farm]\nendpoints = [\"{etcd_url}\"]\nhost = \"{}\"\nlease_ttl = \"2s\"\ntimeout = \"500ms\"\n\
         [farm.wake]\n{wake}\n\
         [farm.sleep]\nafter = \"2s\"\nmin_awake = \"1s\"\nmax_per_hour = 30\ncommand = [{command}]\n",
        host.name,
    );
    (lines, rest)
}

/// `ebb coord`'s config in a lab farm: etcd at `etcd_url`, the BMCs'
/// login (`bmc_password_file` holds `bmc::BMC_PASSWORD`), and `gateways`
/// (`gateway_section`s).
pub fn coord_config(etcd_url: &str, bmc_password_file: &Path, gateways: &str) -> String {
    format!(
        "[farm]\nendpoints = [\"{etcd_url}\"]\nhost = \"unused\"\nlease_ttl = \"2s\"\ntimeout = \"500ms\"\nwake_resend = \"1s\"\nwake_give_up = \"30s\"\n\
         bmc_user = \"{}\"\nbmc_password_file = \"{}\"\n\
         [clients]\nsurrogate_idle = \"1s\"\n{gateways}",
        crate::bmc::BMC_USER,
        bmc_password_file.display(),
    )
}

/// A gateway section for `host`'s VM, its VNC served on `COORD_IP:port`:
/// named `label` with `host` set, or by the VM's name and routed by the
/// farm's `vms` keys.
pub fn gateway_section(host: &FarmHost, label: Option<&str>, port: u16) -> String {
    let (vm, line) = match label {
        Some(l) => (l.to_string(), format!("host = \"{}\"\n", host.name)),
        None => (host.vm.clone(), String::new()),
    };
    format!("[gateway.{vm}]\n{line}[[gateway.{vm}.service]]\nname = \"vnc\"\nlisten = \"{COORD_IP}:{port}\"\nbackend = \"{}:{VNC_PORT}\"\n", host.ip)
}

/// The farm as etcd has it, read by `ebb farm` (the binary `ebb`) from the
/// coordinator's namespace.
pub fn farm_view(ebb: &Path, etcd_url: &str) -> Result<ebb_farm::FarmView> {
    let out = FarmLab::command(COORD_NS, ebb).args(["farm", "--json", "--etcd", etcd_url]).output().map_err(|e| format!("cannot run ebb farm: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ebb farm ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// An RFB viewer's handshake to `ip:port` (security None) from the
/// client's namespace: the session, and how long the server's banner took
/// from the connect (the client's first byte to the service's).
pub fn rfb_session(ip: Ipv4Addr, port: u16) -> std::io::Result<(std::net::TcpStream, Duration)> {
    use std::io::{Error, Read, Write};
    FarmLab::run_in(CLIENT_NS, move || {
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect((ip, port))?;
        s.set_read_timeout(Some(Duration::from_secs(40)))?;
        let mut version = [0u8; 12];
        s.read_exact(&mut version)?;
        let banner = started.elapsed();
        if !version.starts_with(b"RFB 003.") {
            return Err(Error::other(format!("not an RFB banner: {version:?}")));
        }
        s.write_all(b"RFB 003.008\n")?;
        let mut n = [0u8; 1];
        s.read_exact(&mut n)?;
        let mut types = vec![0u8; n[0] as usize];
        s.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(Error::other(format!("no security type None: {types:?}")));
        }
        s.write_all(&[1])?;
        let mut result = [0u8; 4];
        s.read_exact(&mut result)?;
        if result != [0; 4] {
            return Err(Error::other(format!("security result {result:?}")));
        }
        s.write_all(&[1])?;
        // ServerInit: width, height, pixel format (16), name length, name.
        let mut init = [0u8; 24];
        s.read_exact(&mut init)?;
        let mut name = vec![0u8; u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize];
        s.read_exact(&mut name)?;
        Ok((s, banner))
    })?
}
