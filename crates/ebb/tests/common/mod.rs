//! Shared by the integration tests: the real `ebb` binary run as the agent
//! and as the CLI, and polling helpers.
#![allow(dead_code)]

use ebb_daemon::api_types::{Event, Status, VmInfo};
pub use ebb_lab::lab::free_port;
use ebb_lab::lab::{Guest, GuestSpec, Lab};
use ebb_core::Bytes;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const EBB: &str = env!("CARGO_BIN_EXE_ebb");
/// The libvirt the real-guest tests use (scripts/setup-host.sh starts it).
pub const URI: &str = "qemu:///system";

/// The lab, with any guest of an earlier run under `prefix` removed.
pub fn lab(prefix: &str) -> Lab {
    let lab = Lab::connect(URI).expect("libvirtd must run: scripts/setup-host.sh starts it");
    lab.remove_leftovers(prefix).unwrap();
    lab
}

/// Defines and starts a guest of `mib` MiB with its HTTP service on a free
/// loopback port and its console in `dir`; `edit` adjusts the rest.
pub fn boot(lab: &Lab, dir: &Path, name: &str, mib: u64, edit: impl FnOnce(&mut GuestSpec)) -> Guest {
    let mut spec = GuestSpec::new(name, Bytes::from_mib(mib));
    spec.http_port = Some(free_port());
    spec.console_log = dir.join(format!("{name}.console.log"));
    edit(&mut spec);
    lab.create(&spec).unwrap()
}

/// Waits for each guest to boot, up to 180 s, naming the one that did not.
pub fn ready(guests: &[&Guest]) {
    for g in guests {
        g.wait_ready(Duration::from_secs(180)).unwrap_or_else(|e| panic!("{} did not boot: {e}", g.name()));
    }
}

/// A real-guest test's start: the lab (with any guest of an earlier run
/// under `prefix` removed), a temporary folder for the guests' consoles and
/// the agent's files, and a guest `{prefix}{suffix}` of `mib` MiB for each
/// of `suffixes` (see `boot`; `edit(i, spec)` adjusts the i-th), booted in
/// that order and then waited for until all are ready.
pub fn guests<const N: usize>(
    prefix: &str,
    suffixes: [&str; N],
    mib: u64,
    edit: impl FnMut(usize, &mut GuestSpec),
) -> (Lab, TempDir, [Guest; N]) {
    guests_on(lab(prefix), prefix, suffixes, mib, edit)
}

/// As `guests`, on `lab`, which the caller cleared of `prefix`'s leftovers
/// (the lab network's libvirtd; or the lab cleared before a test makes disk
/// images a leftover guest may still hold).
pub fn guests_on<const N: usize>(
    lab: Lab,
    prefix: &str,
    suffixes: [&str; N],
    mib: u64,
    mut edit: impl FnMut(usize, &mut GuestSpec),
) -> (Lab, TempDir, [Guest; N]) {
    let dir = tempfile::tempdir().unwrap();
    let guests = std::array::from_fn(|i| boot(&lab, dir.path(), &format!("{prefix}{}", suffixes[i]), mib, |s| edit(i, s)));
    ready(&guests.each_ref());
    (lab, dir, guests)
}

/// An `ebb run` process with its own socket and journal in `dir`.
pub struct AgentProc {
    pub child: Child,
    pub socket: PathBuf,
    pub journal: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// What `ebb run` was started through (empty: nothing).
    pub wrapper: Vec<String>,
}

impl AgentProc {
    /// Writes a config (agent socket and journal in `dir`, plus `extra`,
    /// which may add to the [agent] table as it comes first) and starts it.
    pub fn start(dir: &Path, agent_lines: &str, rest: &str) -> AgentProc {
        AgentProc::start_through(dir, agent_lines, rest, &[])
    }

    /// As `start`, through `wrapper` (a program and its arguments that end
    /// by running the command after them: prlimit, nsenter).
    pub fn start_through(dir: &Path, agent_lines: &str, rest: &str, wrapper: &[String]) -> AgentProc {
        let (config, socket, journal) = write_config(dir, agent_lines, rest);
        AgentProc::spawn(dir, wrapper.to_vec(), config, socket, journal)
    }

    /// An agent on a config, socket and journal of the caller's.
    pub fn start_with(dir: &Path, config: PathBuf, socket: PathBuf, journal: PathBuf) -> AgentProc {
        AgentProc::spawn(dir, Vec::new(), config, socket, journal)
    }

    /// A new agent on this one's config, socket and journal, started the
    /// same way: a restart, after `stop` or `kill9`.
    pub fn start_again(&self) -> AgentProc {
        let dir = self.log.parent().expect("the log is in the agent's folder");
        AgentProc::spawn(dir, self.wrapper.clone(), self.config.clone(), self.socket.clone(), self.journal.clone())
    }

    /// Runs `ebb run`, through `wrapper` unless it is empty.
    fn spawn(dir: &Path, wrapper: Vec<String>, config: PathBuf, socket: PathBuf, journal: PathBuf) -> AgentProc {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("agent-{n}.log"));
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(EBB);
                c
            }
            None => Command::new(EBB),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .env("EBB_LOG", "ebb=debug,info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start ebb");
        let mut agent = AgentProc { child, socket, journal, config, log, wrapper };
        let deadline = Instant::now() + Duration::from_secs(20);
        // A socket file may be left by a killed agent, and the socket takes
        // connections before the agent serves them (its services are bound
        // first): wait for an answer to a request.
        while !answers(&agent.socket) {
            if Instant::now() > deadline || matches!(agent.child.try_wait(), Ok(Some(_))) {
                panic!("the agent did not open its socket; its log:\n{}", agent.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(EBB).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(out.status.success(), "ebb {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ebb {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `ebb explain NAME`, or None while the agent knows nothing of the VM
    /// yet (before its first tick has seen it).
    pub fn explain(&self, vm: &str) -> Option<String> {
        let out = self.cli(&["explain", vm]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("knows nothing about") {
            return None;
        }
        assert!(out.status.success(), "ebb explain {vm} failed: {err}");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn text(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ebb {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn vms(&self) -> Vec<VmInfo> {
        self.json(&["vms"])
    }

    pub fn vm(&self, name: &str) -> Option<VmInfo> {
        self.vms().into_iter().find(|v| v.name == name)
    }

    pub fn status(&self) -> Status {
        self.json(&["status"])
    }

    pub fn events(&self, vm: Option<&str>) -> Vec<Event> {
        match vm {
            Some(vm) => self.json(&["events", "--limit", "10000", "--vm", vm]),
            None => self.json(&["events", "--limit", "10000"]),
        }
    }

    /// Polls `f` on this agent; on timeout the panic shows what it saw.
    pub fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut(&AgentProc) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n--- ebb vms\n{}\n--- ebb events\n{}",
                    String::from_utf8_lossy(&self.cli(&["vms"]).stdout),
                    String::from_utf8_lossy(&self.cli(&["events", "--limit", "40"]).stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A client's heartbeat, sent with curl over the API's socket as the
    /// README shows; `body` is its JSON (`{"vm": ..., "ttl": ...}`).
    pub fn heartbeat(&self, client: &str, body: &str) -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--unix-socket"])
            .arg(&self.socket)
            .args(["-X", "POST", "-H", "content-type: application/json", "-d", body])
            .arg(format!("http://ebb/v1/clients/{client}/heartbeat"))
            .output()
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for AgentProc {
    /// A clean stop, so an agent on the kernel path deletes its nft table:
    /// a leftover DNAT from a port a later test binds would divert its clients.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `prlimit` setting both the soft and hard RLIMIT_NOFILE (the tests run as root).
pub fn nofile(n: u64) -> Vec<String> {
    vec!["prlimit".into(), format!("--nofile={n}:{n}"), "--".into()]
}

/// Writes an agent config with its socket and journal in `dir`, plus
/// `agent_lines` (added to the [agent] table, which comes first) and `rest`.
fn write_config(dir: &Path, agent_lines: &str, rest: &str) -> (PathBuf, PathBuf, PathBuf) {
    let socket = dir.join("ebb.sock");
    let journal = dir.join("journal.db");
    let config = dir.join("ebb.toml");
    std::fs::write(&config, ebb_lab::lab::agent_config_text(&socket, &journal, agent_lines, rest)).unwrap();
    (config, socket, journal)
}

/// Polls `f` every 250 ms until it returns Some, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the agent's API answers a status request on `socket`.
pub fn answers(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let ask = || -> std::io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /v1/status HTTP/1.0\r\nHost: ebb\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(String::from_utf8_lossy(&head).into_owned())
    };
    ask().is_ok_and(|h| h.ends_with("200"))
}

/// A TCP backend on loopback that takes connections and reads them, never
/// answering: a service whose clients stay connected and silent.
pub fn idle_backend() -> u16 {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf), Ok(1..)) {}
            });
        }
    });
    port
}

/// Runs `ebb` with arguments and no agent.
pub fn ebb(args: &[&str]) -> Output {
    Command::new(EBB).args(args).output().unwrap()
}

/// A raw 64 MiB disk image where libvirt's QEMU may open it, removed on drop.
pub struct DiskImage(pub PathBuf);

impl DiskImage {
    pub fn new(name: &str) -> DiskImage {
        let dir = Path::new("/var/lib/libvirt/images");
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.img"));
        let out = Command::new("qemu-img").args(["create", "-q", "-f", "raw"]).arg(&path).arg("64M").output().unwrap();
        assert!(out.status.success(), "qemu-img: {}", String::from_utf8_lossy(&out.stderr));
        DiskImage(path)
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The web view's tokens in the tests (`web_section`).
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
pub const WRITE_TOKEN: &str = "write-token-0123456789abcdef";

/// `[web]` on 127.0.0.1:`port`, its token files (root's alone) in `dir`.
pub fn web_section(dir: &std::path::Path, port: u16) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = |name: &str, token: &str| {
        let path = dir.join(name);
        std::fs::write(&path, token).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    format!(
        "[web]\nlisten = \"127.0.0.1:{port}\"\nread_token_file = \"{}\"\nwrite_token_file = \"{}\"\n",
        file("web-read.token", READ_TOKEN),
        file("web-write.token", WRITE_TOKEN)
    )
}
