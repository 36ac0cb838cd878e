//! A real etcd of one member on loopback, in a temporary directory, for
//! the farm's tests and the lab: Debian's `etcd` (etcd-server, installed by
//! scripts/setup-host.sh) on free ports, stopped and removed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalEtcd {
    child: Child,
    url: String,
    /// Its client and peer ports.
    ports: (u16, u16),
    /// Holds the data and the log; removed on drop.
    dir: tempfile::TempDir,
    /// Where it listens: loopback, or an address in a network namespace.
    at: At,
}

/// A network namespace and etcd's address in it; None: loopback.
#[derive(Clone, Default)]
struct At(Option<(String, std::net::Ipv4Addr)>);

impl At {
    fn ip(&self) -> std::net::Ipv4Addr {
        self.0.as_ref().map_or(std::net::Ipv4Addr::LOCALHOST, |a| a.1)
    }
}

/// Two ports free now. Another process may take one before etcd binds it:
/// `start` then tries again with others.
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl LocalEtcd {
    /// Starts etcd and returns once it answers (within 20 s).
    pub async fn start() -> Result<LocalEtcd, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(e) => return Ok(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start() -> Result<LocalEtcd, String> {
        let dir = tempfile::Builder::new().prefix("ebb-etcd-").tempdir().map_err(|e| format!("cannot make etcd's directory: {e}"))?;
        let ports = free_ports().map_err(|e| format!("cannot find free ports: {e}"))?;
        let at = At::default();
        let child = spawn(dir.path(), ports, &at)?;
        let mut etcd = LocalEtcd { child, url: format!("http://127.0.0.1:{}", ports.0), ports, dir, at };
        etcd.wait_answering().await?;
        Ok(etcd)
    }

    /// Starts etcd in the network namespace `netns`, on `ip` (ports 2379
    /// and 2380: the namespace is the test's own), and returns once it answers.
    pub async fn start_in(netns: &str, ip: std::net::Ipv4Addr) -> Result<LocalEtcd, String> {
        let dir = tempfile::Builder::new().prefix("ebb-etcd-").tempdir().map_err(|e| format!("cannot make etcd's directory: {e}"))?;
        let ports = (2379, 2380);
        let at = At(Some((netns.to_string(), ip)));
        let child = spawn(dir.path(), ports, &at)?;
        let mut etcd = LocalEtcd { child, url: format!("http://{ip}:{}", ports.0), ports, dir, at };
        etcd.wait_answering().await?;
        Ok(etcd)
    }

    async fn wait_answering(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited ({status}): {}", self.log_tail()));
            }
            if healthy(&self.at, self.ports.0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("etcd at {} did not answer within 20 s: {}", self.url, self.log_tail()))
    }

    /// Kills etcd (its data stays): the farm's store goes away.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped etcd again on the same ports and data.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.child = spawn(self.dir.path(), self.ports, &self.at)?;
        self.wait_answering().await
    }

    /// Its client URL, `http://127.0.0.1:PORT` (or its address in its namespace).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The last lines of its log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

/// Whether etcd on `port` says it is healthy (its `/health`: a member that
/// has a leader and serves reads).
fn healthy(at: &At, port: u16) -> bool {
    let ip = at.ip();
    let ask = move || -> std::io::Result<String> {
        let mut s = TcpStream::connect((ip, port))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let answer = match &at.0 {
        Some((ns, _)) => crate::lab::in_netns(ns, ask).and_then(|a| a),
        None => ask(),
    };
    answer.is_ok_and(|a| a.contains(r#""health":"true""#))
}

/// etcd on `ports` (client, peer) with its data and log in `dir`.
fn spawn(dir: &Path, (client, peer): (u16, u16), at: &At) -> Result<Child, String> {
    let ip = at.ip();
    let url = format!("http://{ip}:{client}");
    let peer_url = format!("http://{ip}:{peer}");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("etcd.log")).map_err(|e| format!("cannot open etcd's log: {e}"))?;
    let mut cmd = match &at.0 {
        Some((ns, _)) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}")).args(["--", "etcd"]);
            c
        }
        None => Command::new("etcd"),
    };
    cmd.args(["--name", "ebb-test", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("ebb-test={peer_url}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run etcd ({e}): install etcd-server (scripts/setup-host.sh)"))
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
