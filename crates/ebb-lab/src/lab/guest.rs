//! The lab (a libvirt connection and the guest image) and its guests: their
//! lifecycle and the HTTP endpoints of the workloads inside them.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ebb_core::Bytes;
use virt::connect::Connect;
use virt::domain::Domain;

use super::image::{create_dir_0755, GuestImage};
use super::net::{in_netns, LAB_NETNS};
use super::spec::GuestSpec;
use super::{io_err, LabError, Result, READY_MARKER};

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
