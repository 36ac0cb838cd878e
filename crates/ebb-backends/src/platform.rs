//! The `Platform` trait: the host's side of power (DESIGN.md): where its
//! power comes from (a UPS through NUT, batteries and mains through sysfs),
//! its devices (CPU frequency and disks in sysfs), and the dangerous actions
//! (power off, disk standby), which run only when configured. Without a
//! configured command they are recorded, not run: tests and a careful first
//! deployment see the decision without losing the host or waking a disk.

use crate::devices;
use crate::nut::{NutClient, NutError, UpsReading};
use ebb_core::devices::{CpuFreq, CpuSetting, DiskSample};
use ebb_core::power::{rapl_watts, Measured, PowerReading, Watts};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{error}; no reading from it since {since} UTC")]
    Ups { error: NutError, since: String },
    #[error("upsd at {addr} has not answered since {since} UTC: a reading has run past its bound of {bound:?}")]
    UpsStale { addr: String, since: String, bound: Duration },
    #[error("cannot read {}: {source}", path.display())]
    Sysfs { path: PathBuf, source: std::io::Error },
    #[error("cannot write {value:?} to {}: {source}", path.display())]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("no CPU under {} has cpufreq (no frequency scaling driver, as in most VMs): ebb leaves the CPU frequency alone", path.display())]
    NoCpufreq { path: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
}

pub trait Platform: Send {
    /// Where the host's power comes from now; None when no source is
    /// configured and sysfs shows no power supply.
    fn power(&mut self) -> Result<Option<PowerReading>, PlatformError>;
    /// Powers the host down. Returns what was done, in words.
    fn power_off(&mut self) -> Result<String, PlatformError>;
    /// Every online CPU's frequency scaling.
    fn cpufreq(&mut self) -> Result<Vec<CpuFreq>, PlatformError>;
    /// Writes one CPU's governor and/or frequency cap.
    fn set_cpufreq(&mut self, setting: &CpuSetting) -> Result<(), PlatformError>;
    /// The disks that can spin down, with their I/O counters.
    fn disks(&mut self) -> Result<Vec<DiskSample>, PlatformError>;
    /// The whole disks that hold `file` (empty when none is known).
    fn disks_of(&mut self, file: &Path) -> Result<Vec<String>, PlatformError>;
    /// Puts a disk in standby (ATA STANDBY IMMEDIATE). Returns what was done, in words.
    fn disk_standby(&mut self, disk: &str) -> Result<String, PlatformError>;
    /// The host's draw as measured on the host itself (RAPL); None where
    /// nothing measures it, and at the first call (a rate needs two).
    fn measured(&mut self) -> Result<Option<Measured>, PlatformError> {
        Ok(None)
    }
}

/// A UPS served by upsd: `name@host:port`.
#[derive(Clone, Debug)]
pub struct UpsAddress {
    pub ups: String,
    pub client: NutClient,
}

/// Reads a UPS on threads of its own, so that the tick never waits on upsd:
/// each call takes the last finished reading and starts the next. A reading
/// is bounded as a whole (`power.timeout`), so the one a tick takes is at
/// most a tick and a reading old.
pub struct UpsPoller {
    ups: UpsAddress,
    /// The reading under way: when it started, and where its result comes.
    running: Option<(Instant, mpsc::Receiver<Result<UpsReading, NutError>>)>,
    last: Option<Result<UpsReading, NutError>>,
    /// When upsd last gave a reading (at first, when polling began).
    answered: SystemTime,
}

impl UpsPoller {
    pub fn new(ups: UpsAddress) -> UpsPoller {
        UpsPoller { ups, running: None, last: None, answered: SystemTime::now() }
    }

    /// How long a reading may run: its own deadline, plus a second for its
    /// thread to hand it over. Past it the reading is stuck, which its
    /// deadline should make impossible, and said so rather than trusted.
    fn bound(&self) -> Duration {
        self.ups.client.timeout() + Duration::from_secs(1)
    }

    fn start(&mut self) {
        let (tx, rx) = mpsc::channel();
        let UpsAddress { ups, client } = self.ups.clone();
        // A thread that cannot start drops `tx`: seen below as a reading without result.
        let _ = std::thread::Builder::new().name("ebb-ups".into()).spawn(move || {
            let _ = tx.send(client.read(&ups));
        });
        self.running = Some((Instant::now(), rx));
    }

    /// The last finished reading, or why there is none.
    pub fn reading(&mut self) -> Result<UpsReading, PlatformError> {
        if self.running.is_none() && self.last.is_none() {
            self.start();
        }
        if let Some((started, rx)) = &self.running {
            // The first reading is awaited (within its bound): the agent
            // needs to know its power source from its first tick on.
            let wait = match self.last {
                None => self.bound().saturating_sub(started.elapsed()),
                Some(_) => Duration::ZERO,
            };
            let done = match rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Err(NutError::Io {
                    addr: self.ups.client.addr().to_string(),
                    detail: "the reading's thread ended without a result".into(),
                })),
            };
            if let Some(r) = done {
                if r.is_ok() {
                    self.answered = SystemTime::now();
                }
                self.last = Some(r);
                self.running = None;
            }
        }
        let stuck = self.running.as_ref().is_some_and(|(started, _)| started.elapsed() >= self.bound());
        if self.running.is_none() {
            self.start();
        }
        let since = utc_clock(self.answered);
        match (&self.last, stuck) {
            (Some(Ok(r)), false) => Ok(r.clone()),
            (Some(Err(e)), false) => Err(PlatformError::Ups { error: e.clone(), since }),
            _ => Err(PlatformError::UpsStale { addr: self.ups.client.addr().to_string(), since, bound: self.bound() }),
        }
    }
}

/// `HH:MM:SS` of a wall-clock time, UTC, as the CLI shows times.
fn utc_clock(t: SystemTime) -> String {
    let s = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// The real host: NUT and sysfs for readings, a configured command for power-off.
pub struct HostPlatform {
    pub ups: Option<UpsPoller>,
    /// Root under which `class/power_supply`, cpufreq and the disks are
    /// read (`/sys`; a test tree in tests).
    pub sysfs: PathBuf,
    /// The command that powers the host down; None: recorded, not run.
    pub power_off_command: Option<Vec<String>>,
    /// The command that puts a disk in standby, given `/dev/NAME` after its
    /// arguments (`hdparm -y`); None: recorded, not run.
    pub disk_standby_command: Option<Vec<String>>,
    /// Every power-off and standby asked for, in words (what ran, or what would have).
    pub recorded: Arc<Mutex<Vec<String>>>,
    /// The last RAPL reading: when, and each package's counter.
    pub rapl_last: Option<(Instant, Vec<RaplZone>)>,
}

/// One RAPL package zone's energy counter.
#[derive(Clone, Debug, PartialEq)]
pub struct RaplZone {
    pub name: String,
    pub energy_uj: u64,
    pub range_uj: u64,
}

impl HostPlatform {
    /// The command line a standby of `disk` runs.
    pub fn standby_argv(command: &[String], disk: &str) -> Vec<String> {
        let mut argv = command.to_vec();
        argv.push(format!("/dev/{disk}"));
        argv
    }
}

/// Runs a configured command; its stderr is the detail when it fails.
fn run(what: &str, argv: &[String]) -> Result<String, PlatformError> {
    let (prog, args) = argv.split_first().ok_or_else(|| PlatformError::Command { what: what.into(), detail: "the command is empty".into() })?;
    let line = argv.join(" ");
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| PlatformError::Command { what: format!("running {line}"), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(PlatformError::Command { what: format!("{line} ({})", out.status), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(format!("ran {line}"))
}

impl Platform for HostPlatform {
    fn power(&mut self) -> Result<Option<PowerReading>, PlatformError> {
        if let Some(u) = &mut self.ups {
            let r = u.reading()?;
            return Ok(Some(PowerReading {
                source: format!("UPS {}@{}{}", u.ups.ups, u.ups.client.addr(), if u.ups.client.tls().is_some() { " over TLS" } else { "" }),
                on_battery: r.on_battery && !r.on_line,
                low_battery: r.low_battery,
                forced_shutdown: r.forced_shutdown,
                charge: r.charge,
                runtime_s: r.runtime_s,
                draw: r.realpower_w.map(Watts),
                status: r.status,
            }));
        }
        read_power_supply(&self.sysfs)
    }

    fn power_off(&mut self) -> Result<String, PlatformError> {
        let done = match &self.power_off_command {
            None => "recorded a power-off (no power_off_command is configured, so the host stays up)".to_string(),
            Some(cmd) => run("power off", cmd)?,
        };
        self.recorded.lock().expect("recorded").push(done.clone());
        Ok(done)
    }

    fn cpufreq(&mut self) -> Result<Vec<CpuFreq>, PlatformError> {
        devices::read_cpufreq(&self.sysfs)
    }

    fn set_cpufreq(&mut self, setting: &CpuSetting) -> Result<(), PlatformError> {
        devices::write_cpufreq(&self.sysfs, setting)
    }

    fn disks(&mut self) -> Result<Vec<DiskSample>, PlatformError> {
        devices::read_disks(&self.sysfs)
    }

    fn disks_of(&mut self, file: &Path) -> Result<Vec<String>, PlatformError> {
        devices::disks_of(&self.sysfs, file)
    }

    fn disk_standby(&mut self, disk: &str) -> Result<String, PlatformError> {
        let done = match &self.disk_standby_command {
            None => format!("recorded a standby of {disk} (no disk_standby_command is configured, so it keeps spinning)"),
            Some(cmd) => run("disk standby", &HostPlatform::standby_argv(cmd, disk))?,
        };
        self.recorded.lock().expect("recorded").push(done.clone());
        Ok(done)
    }

    fn measured(&mut self) -> Result<Option<Measured>, PlatformError> {
        let zones = read_rapl(&self.sysfs)?;
        let now = Instant::now();
        let last = self.rapl_last.replace((now, zones.clone()));
        let Some((then, before)) = last else { return Ok(None) };
        let secs = now.duration_since(then).as_secs_f64();
        let (mut watts, mut counted) = (0.0, 0);
        for z in &zones {
            // A zone that was not there before counts from the next reading.
            let Some(b) = before.iter().find(|b| b.name == z.name) else { continue };
            if let Some(w) = rapl_watts(b.energy_uj, z.energy_uj, z.range_uj, secs) {
                watts += w.0;
                counted += 1;
            }
        }
        Ok((counted > 0).then(|| Measured { source: format!("RAPL, {counted} package(s)"), watts: Watts(watts) }))
    }
}

/// The RAPL package zones under `<root>/class/powercap` (`intel-rapl:N`,
/// not their `intel-rapl:N:M` subzones, which the package already counts).
/// Empty where the host has none (most VMs, AMD before Zen).
pub fn read_rapl(root: &Path) -> Result<Vec<RaplZone>, PlatformError> {
    let dir = root.join("class/powercap");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(vec![]) };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.matches(':').count() == 1 && n.contains("-rapl:"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let num = |f: &str| -> Result<u64, PlatformError> {
                let path = dir.join(&name).join(f);
                let text = std::fs::read_to_string(&path).map_err(|source| PlatformError::Sysfs { path: path.clone(), source })?;
                text.trim().parse().map_err(|_| PlatformError::Sysfs {
                    path,
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a number: {:?}", text.trim())),
                })
            };
            Ok(RaplZone { energy_uj: num("energy_uj")?, range_uj: num("max_energy_range_uj")?, name })
        })
        .collect()
}

/// Mains and batteries from `<root>/class/power_supply`: on battery when a
/// battery discharges and no mains supply is online.
pub fn read_power_supply(root: &Path) -> Result<Option<PowerReading>, PlatformError> {
    let dir = root.join("class/power_supply");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(None) };
    let read = |p: PathBuf| -> Option<String> { std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()) };
    let (mut mains, mut mains_online, mut battery) = (false, false, None);
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        match read(p.join("type")).as_deref() {
            Some("Mains") => {
                mains = true;
                mains_online |= read(p.join("online")).as_deref() == Some("1");
            }
            Some("Battery") if battery.is_none() => battery = Some(p),
            _ => {}
        }
    }
    if !mains && battery.is_none() {
        return Ok(None);
    }
    let num = |p: &Path, f: &str| read(p.join(f)).and_then(|v| v.parse::<f64>().ok());
    let (charge, discharging, draw, runtime_s, name) = match &battery {
        Some(b) => {
            let status = read(b.join("status")).unwrap_or_default();
            // power_now in µW; energy_now in µWh.
            let draw = num(b, "power_now").map(|uw| Watts(uw / 1e6));
            let runtime = match (num(b, "energy_now"), draw) {
                (Some(e), Some(w)) if w.0 > 0.0 => Some(e / 1e6 / w.0 * 3600.0),
                _ => None,
            };
            let name = b.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (num(b, "capacity"), status == "Discharging", draw, runtime, name)
        }
        None => (None, false, None, None, String::new()),
    };
    let on_battery = if mains { !mains_online } else { discharging };
    Ok(Some(PowerReading {
        source: if name.is_empty() { "mains (sysfs)".into() } else { format!("sysfs {name}") },
        on_battery,
        low_battery: false,
        forced_shutdown: false,
        charge,
        runtime_s,
        draw,
        status: if on_battery { "on battery".into() } else { "on mains".into() },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let d = root.join("class/power_supply").join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn mains_and_battery_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(read_power_supply(t.path()).unwrap(), None);
        supply(t.path(), "AC", &[("type", "Mains"), ("online", "1")]);
        supply(t.path(), "BAT0", &[("type", "Battery"), ("status", "Charging"), ("capacity", "80"), ("power_now", "20000000"), ("energy_now", "40000000")]);
        let r = read_power_supply(t.path()).unwrap().unwrap();
        assert!(!r.on_battery);
        assert_eq!((r.charge, r.draw, r.runtime_s), (Some(80.0), Some(Watts(20.0)), Some(7200.0)));
        supply(t.path(), "AC", &[("online", "0")]);
        supply(t.path(), "BAT0", &[("status", "Discharging")]);
        let r = read_power_supply(t.path()).unwrap().unwrap();
        assert!(r.on_battery && r.source == "sysfs BAT0", "{r:?}");
    }

    fn host(sysfs: &Path) -> HostPlatform {
        HostPlatform { ups: None, sysfs: sysfs.to_owned(), power_off_command: None, disk_standby_command: None, recorded: Default::default(), rapl_last: None }
    }

    #[test]
    fn disk_standby_runs_hdparm_on_the_device_only_when_configured() {
        let mut p = host(Path::new("/nonexistent"));
        assert_eq!(HostPlatform::standby_argv(&["hdparm".into(), "-y".into()], "sdb"), ["hdparm", "-y", "/dev/sdb"]);
        assert!(p.disk_standby("sdb").unwrap().starts_with("recorded a standby of sdb"));
        p.disk_standby_command = Some(vec!["echo".into(), "-y".into()]);
        assert_eq!(p.disk_standby("sdb").unwrap(), "ran echo -y /dev/sdb");
        p.disk_standby_command = Some(vec!["false".into()]);
        assert!(p.disk_standby("sdb").unwrap_err().to_string().contains("false /dev/sdb"));
        assert_eq!(p.recorded.lock().unwrap().len(), 2);
    }

    /// chattr +i makes a file unwritable even for root; undone on drop.
    struct Immutable(PathBuf);
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        }
    }

    #[test]
    fn an_unwritable_cpufreq_file_is_named_and_the_value_stays() {
        let t = tempfile::tempdir().unwrap();
        crate::devices::test_tree::cpu(t.path(), 0, "performance", "performance powersave");
        let gov = t.path().join("devices/system/cpu/cpu0/cpufreq/scaling_governor");
        let ok = std::process::Command::new("chattr").arg("+i").arg(&gov).status().is_ok_and(|s| s.success());
        let _undo = Immutable(gov.clone());
        if !ok {
            // Without chattr (or on a filesystem without attributes) only a non-root user sees a read-only file.
            std::fs::set_permissions(&gov, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        }
        let mut p = host(t.path());
        let e = p.set_cpufreq(&CpuSetting { cpu: 0, governor: Some("powersave".into()), max_khz: None }).unwrap_err().to_string();
        assert!(e.contains("cannot write \"powersave\"") && e.contains("cpu0/cpufreq/scaling_governor"), "{e}");
        assert_eq!(p.cpufreq().unwrap()[0].governor, "performance");
    }

    #[test]
    fn rapl_packages_measure_the_draw_and_a_bad_counter_is_named() {
        let t = tempfile::tempdir().unwrap();
        let zone = |name: &str, uj: u64| {
            let d = t.path().join("class/powercap").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("energy_uj"), format!("{uj}\n")).unwrap();
            std::fs::write(d.join("max_energy_range_uj"), "262143328850\n").unwrap();
        };
        let mut p = host(t.path());
        assert_eq!(p.measured().unwrap(), None, "no powercap: nothing measured");
        zone("intel-rapl:0", 1_000_000);
        zone("intel-rapl:0:0", 500_000); // the cores, inside package 0: not counted twice
        assert_eq!(p.measured().unwrap(), None, "a rate needs two readings");
        std::thread::sleep(std::time::Duration::from_millis(200));
        zone("intel-rapl:0", 11_000_000);
        zone("intel-rapl:0:0", 9_500_000);
        let m = p.measured().unwrap().unwrap();
        // 10 J over a bit more than 0.2 s.
        assert!(m.watts.0 > 20.0 && m.watts.0 <= 50.0 && m.source == "RAPL, 1 package(s)", "{m:?}");
        zone("intel-rapl:0", 0);
        std::fs::write(t.path().join("class/powercap/intel-rapl:0/energy_uj"), "garbage").unwrap();
        let e = p.measured().unwrap_err().to_string();
        assert!(e.contains("intel-rapl:0/energy_uj") && e.contains("garbage"), "{e}");
    }

    #[test]
    fn power_off_runs_only_a_configured_command() {
        let mut p = host(Path::new("/nonexistent"));
        assert!(p.power_off().unwrap().contains("recorded"));
        p.power_off_command = Some(vec!["true".into()]);
        assert_eq!(p.power_off().unwrap(), "ran true");
        p.power_off_command = Some(vec!["false".into()]);
        assert!(matches!(p.power_off(), Err(PlatformError::Command { .. })));
        assert_eq!(p.recorded.lock().unwrap().len(), 2);
    }
}
