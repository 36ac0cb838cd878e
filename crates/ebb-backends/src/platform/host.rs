//! The real host: NUT and sysfs for readings, configured commands for the
//! dangerous actions.

use super::sysfs::{self, read_power_supply, read_rapl, RaplZone};
use super::{HostSlept, Platform, PlatformError, UpsAddress, UpsPoller};
use ebb_core::devices::{CpuFreq, CpuSetting, DiskSample};
use ebb_core::power::{rapl_watts, Measured, PowerReading, Watts};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The real host: NUT and sysfs for readings, a configured command for power-off.
/// Made with `new`; its fields are public only for callers that still
/// spell it out.
pub struct HostPlatform {
    pub ups: Option<UpsPoller>,
    /// Root under which `class/power_supply`, cpufreq and the disks are
    /// read (`/sys`; a test tree in tests).
    pub sysfs: PathBuf,
    /// The command that powers the host down; None: recorded, not run.
    pub power_off_command: Option<Vec<String>>,
    /// The command that puts the host to sleep (`[farm.sleep] command`); None: recorded, not run.
    pub sleep_command: Option<Vec<String>>,
    /// The command that puts a disk in standby, given `/dev/NAME` after its
    /// arguments (`hdparm -y`); None: recorded, not run.
    pub disk_standby_command: Option<Vec<String>>,
    /// Every power-off and standby asked for, in words (what ran, or what would have).
    pub recorded: Arc<Mutex<Vec<String>>>,
    /// The last RAPL reading: when, and each package's counter.
    pub rapl_last: Option<(Instant, Vec<RaplZone>)>,
}

impl HostPlatform {
    /// The host whose sysfs is under `sysfs` (`/sys`). Its power is read
    /// from `ups` when one is given (polled on threads of its own), from
    /// sysfs otherwise; a power-off and a disk standby run their command
    /// when one is given and are only recorded when not.
    pub fn new(
        sysfs: PathBuf,
        ups: Option<UpsAddress>,
        power_off_command: Option<Vec<String>>,
        disk_standby_command: Option<Vec<String>>,
        sleep_command: Option<Vec<String>>,
    ) -> HostPlatform {
        HostPlatform {
            ups: ups.map(UpsPoller::new),
            sysfs,
            power_off_command,
            sleep_command,
            disk_standby_command,
            recorded: Arc::default(),
            rapl_last: None,
        }
    }

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
                source: u.source(),
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

    fn sleep_host(&mut self, state: &str) -> Result<HostSlept, PlatformError> {
        let done = match &self.sleep_command {
            None => HostSlept::Recorded(format!("recorded a host {state} (no farm.sleep.command is configured, so the host stays up)")),
            Some(cmd) => HostSlept::Resumed(run("host sleep", cmd)?),
        };
        let text = match &done {
            HostSlept::Resumed(t) | HostSlept::Recorded(t) => t.clone(),
        };
        self.recorded.lock().expect("recorded").push(text);
        Ok(done)
    }

    fn cpufreq(&mut self) -> Result<Vec<CpuFreq>, PlatformError> {
        sysfs::read_cpufreq(&self.sysfs)
    }

    fn set_cpufreq(&mut self, setting: &CpuSetting) -> Result<(), PlatformError> {
        sysfs::write_cpufreq(&self.sysfs, setting)
    }

    fn disks(&mut self) -> Result<Vec<DiskSample>, PlatformError> {
        sysfs::read_disks(&self.sysfs)
    }

    fn disks_of(&mut self, file: &Path) -> Result<Vec<String>, PlatformError> {
        sysfs::disks_of(&self.sysfs, file)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host(sysfs: &Path) -> HostPlatform {
        HostPlatform::new(sysfs.to_owned(), None, None, None, None)
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
        super::sysfs::test_tree::cpu(t.path(), 0, "performance", "performance powersave");
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
    fn host_sleep_runs_only_a_configured_command_and_says_which() {
        let mut p = host(Path::new("/nonexistent"));
        assert!(matches!(p.sleep_host("suspend"), Ok(HostSlept::Recorded(t)) if t.contains("recorded a host suspend")));
        p.sleep_command = Some(vec!["true".into()]);
        assert_eq!(p.sleep_host("suspend").unwrap(), HostSlept::Resumed("ran true".into()));
        p.sleep_command = Some(vec!["false".into()]);
        assert!(matches!(p.sleep_host("suspend"), Err(PlatformError::Command { .. })));
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
