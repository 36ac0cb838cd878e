//! The `Platform` trait: the host's side of power (DESIGN.md): where its
//! power comes from (a UPS through NUT, batteries and mains through sysfs)
//! and the dangerous actions (power off), which run only when configured.
//! Without a configured command a power-off is recorded, not run: tests and
//! a careful first deployment see the decision without losing the host.

use crate::nut::{NutClient, NutError};
use ebb_core::power::{PowerReading, Watts};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Nut(#[from] NutError),
    #[error("cannot read {}: {source}", path.display())]
    Sysfs { path: PathBuf, source: std::io::Error },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
}

pub trait Platform: Send {
    /// Where the host's power comes from now; None when no source is
    /// configured and sysfs shows no power supply.
    fn power(&mut self) -> Result<Option<PowerReading>, PlatformError>;
    /// Powers the host down. Returns what was done, in words.
    fn power_off(&mut self) -> Result<String, PlatformError>;
}

/// A UPS served by upsd: `name@host:port`.
#[derive(Clone, Debug)]
pub struct UpsAddress {
    pub ups: String,
    pub client: NutClient,
}

/// The real host: NUT and sysfs for readings, a configured command for power-off.
pub struct HostPlatform {
    pub ups: Option<UpsAddress>,
    /// Root under which `class/power_supply` is read (`/sys`; a test tree in tests).
    pub sysfs: PathBuf,
    /// The command that powers the host down; None: recorded, not run.
    pub power_off_command: Option<Vec<String>>,
    /// Every power-off asked for, in words (what ran, or what would have).
    pub recorded: Arc<Mutex<Vec<String>>>,
}

impl Platform for HostPlatform {
    fn power(&mut self) -> Result<Option<PowerReading>, PlatformError> {
        if let Some(u) = &self.ups {
            let r = u.client.read(&u.ups)?;
            return Ok(Some(PowerReading {
                source: format!("UPS {}@{}", u.ups, u.client.addr()),
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
            Some(cmd) => {
                let (prog, args) = cmd.split_first().ok_or_else(|| PlatformError::Command {
                    what: "power off".into(),
                    detail: "power_off_command is empty".into(),
                })?;
                let out = Command::new(prog).args(args).output().map_err(|e| PlatformError::Command {
                    what: format!("running {}", cmd.join(" ")),
                    detail: e.to_string(),
                })?;
                if !out.status.success() {
                    return Err(PlatformError::Command {
                        what: format!("{} ({})", cmd.join(" "), out.status),
                        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                format!("ran {}", cmd.join(" "))
            }
        };
        self.recorded.lock().expect("recorded").push(done.clone());
        Ok(done)
    }
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

    #[test]
    fn power_off_runs_only_a_configured_command() {
        let mut p = HostPlatform { ups: None, sysfs: PathBuf::from("/nonexistent"), power_off_command: None, recorded: Default::default() };
        assert!(p.power_off().unwrap().contains("recorded"));
        p.power_off_command = Some(vec!["true".into()]);
        assert_eq!(p.power_off().unwrap(), "ran true");
        p.power_off_command = Some(vec!["false".into()]);
        assert!(matches!(p.power_off(), Err(PlatformError::Command { .. })));
        assert_eq!(p.recorded.lock().unwrap().len(), 2);
    }
}
