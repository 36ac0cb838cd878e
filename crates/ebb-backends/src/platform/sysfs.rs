//! The host's devices in sysfs, under a root that tests point at a tree they
//! build: each CPU's frequency scaling (read and written), the disks with
//! their I/O counters, which disk holds a file (a VM's image), the RAPL
//! energy counters, and the mains and batteries.

use super::PlatformError;
use ebb_core::power::{PowerReading, Watts};
use ebb_core::devices::{CpuFreq, CpuSetting, DiskSample};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A sysfs attribute, trimmed. Read at most a page: that is all sysfs
/// serves, and a stray file in a test tree cannot make it read forever.
fn read(path: &Path) -> Result<String, PlatformError> {
    let err = |source| PlatformError::Sysfs { path: path.to_owned(), source };
    let mut text = String::new();
    std::fs::File::open(path).map_err(err)?.take(4096).read_to_string(&mut text).map_err(err)?;
    Ok(text.trim().to_string())
}

fn read_num(path: &Path) -> Result<u64, PlatformError> {
    let text = read(path)?;
    text.parse().map_err(|_| PlatformError::Sysfs {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{text:?} is not a number")),
    })
}

fn write(path: &Path, value: &str) -> Result<(), PlatformError> {
    std::fs::write(path, value).map_err(|source| PlatformError::Write { path: path.to_owned(), value: value.to_string(), source })
}

fn cpufreq_dir(root: &Path, cpu: u32) -> PathBuf {
    root.join(format!("devices/system/cpu/cpu{cpu}/cpufreq"))
}

/// Every online CPU's frequency scaling, in CPU order.
pub fn read_cpufreq(root: &Path) -> Result<Vec<CpuFreq>, PlatformError> {
    let base = root.join("devices/system/cpu");
    let mut cpus: Vec<u32> = std::fs::read_dir(&base)
        .map_err(|source| PlatformError::Sysfs { path: base.clone(), source })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("cpu")?.parse().ok())
        .collect();
    cpus.sort_unstable();
    let mut out = vec![];
    for cpu in cpus {
        let dir = cpufreq_dir(root, cpu);
        let online = base.join(format!("cpu{cpu}/online"));
        if !dir.is_dir() || read(&online).is_ok_and(|v| v == "0") {
            continue;
        }
        out.push(CpuFreq {
            cpu,
            governor: read(&dir.join("scaling_governor"))?,
            governors: read(&dir.join("scaling_available_governors"))?.split_whitespace().map(String::from).collect(),
            max_khz: read_num(&dir.join("scaling_max_freq"))?,
            hw_min_khz: read_num(&dir.join("cpuinfo_min_freq"))?,
            hw_max_khz: read_num(&dir.join("cpuinfo_max_freq"))?,
        });
    }
    if out.is_empty() {
        return Err(PlatformError::NoCpufreq { path: base });
    }
    Ok(out)
}

/// Writes one CPU's governor, then its frequency cap (either may be left out).
pub fn write_cpufreq(root: &Path, s: &CpuSetting) -> Result<(), PlatformError> {
    let dir = cpufreq_dir(root, s.cpu);
    if let Some(g) = &s.governor {
        write(&dir.join("scaling_governor"), g)?;
    }
    if let Some(k) = s.max_khz {
        write(&dir.join("scaling_max_freq"), &k.to_string())?;
    }
    Ok(())
}

/// The disks that can spin down: real devices (a `device` link: no loop,
/// ram, zram, dm or nbd), rotational (an SSD has no spindle to stop), not
/// removable; each with its sectors read plus written from `stat`.
pub fn read_disks(root: &Path) -> Result<Vec<DiskSample>, PlatformError> {
    let base = root.join("block");
    let mut out = vec![];
    for entry in std::fs::read_dir(&base).map_err(|source| PlatformError::Sysfs { path: base.clone(), source })? {
        let Some(name) = entry.ok().and_then(|e| e.file_name().to_str().map(String::from)) else { continue };
        let dir = base.join(&name);
        if !dir.join("device").exists()
            || read(&dir.join("queue/rotational")).map_or(true, |r| r != "1")
            || read(&dir.join("removable")).is_ok_and(|r| r == "1")
        {
            continue;
        }
        let stat = read(&dir.join("stat"))?;
        let f: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        // Fields 3 and 7: sectors read, sectors written.
        let (Some(r), Some(w)) = (f.get(2), f.get(6)) else {
            return Err(PlatformError::Sysfs {
                path: dir.join("stat"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{stat:?} has no sector counts")),
            });
        };
        out.push(DiskSample { name, io: r + w });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// glibc's dev_t layout.
fn major_minor(dev: u64) -> (u64, u64) {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff), ((dev >> 12) & 0xffff_ff00) | (dev & 0xff))
}

/// The whole disks that hold `file`: its device (`st_dev`, or the device
/// itself for a block device node) through `<root>/dev/block/MAJ:MIN`; a
/// partition gives its disk, a device-mapper or md device the disks under
/// it (`slaves`). Empty when sysfs knows no block device for it (tmpfs,
/// btrfs's anonymous devices, NFS).
pub fn disks_of(root: &Path, file: &Path) -> Result<Vec<String>, PlatformError> {
    let meta = std::fs::metadata(file).map_err(|source| PlatformError::Sysfs { path: file.to_owned(), source })?;
    let dev = if meta.file_type().is_block_device() { meta.rdev() } else { meta.dev() };
    let (major, minor) = major_minor(dev);
    let link = root.join(format!("dev/block/{major}:{minor}"));
    let Ok(dir) = std::fs::canonicalize(&link) else { return Ok(vec![]) };
    let mut out = vec![];
    whole_disks(&dir, &mut out, 0);
    out.sort();
    out.dedup();
    Ok(out)
}

fn whole_disks(dir: &Path, out: &mut Vec<String>, depth: u32) {
    let slaves: Vec<PathBuf> = std::fs::read_dir(dir.join("slaves"))
        .map(|d| d.filter_map(|e| std::fs::canonicalize(e.ok()?.path()).ok()).collect())
        .unwrap_or_default();
    if !slaves.is_empty() && depth < 8 {
        for s in slaves {
            whole_disks(&s, out, depth + 1);
        }
        return;
    }
    let disk = if dir.join("partition").exists() { dir.parent() } else { Some(dir) };
    if let Some(name) = disk.and_then(|d| d.file_name()).and_then(|n| n.to_str()) {
        out.push(name.to_string());
    }
}

/// One RAPL package zone's energy counter.
#[derive(Clone, Debug, PartialEq)]
pub struct RaplZone {
    pub name: String,
    pub energy_uj: u64,
    pub range_uj: u64,
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

/// Builds sysfs trees for tests (this crate's and the agent's).
pub mod test_tree {
    use super::*;

    /// A CPU with cpufreq in a test tree.
    pub fn cpu(root: &Path, n: u32, governor: &str, governors: &str) {
        let d = cpufreq_dir(root, n);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("scaling_governor", governor),
            ("scaling_available_governors", governors),
            ("scaling_max_freq", "3000000"),
            ("cpuinfo_min_freq", "800000"),
            ("cpuinfo_max_freq", "3000000"),
        ] {
            std::fs::write(d.join(f), format!("{v}\n")).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::test_tree::cpu;

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

    /// A disk (and optionally a partition of it) in a test tree, as sysfs lays them out.
    pub fn disk(root: &Path, name: &str, rotational: &str, sectors: (u64, u64)) -> PathBuf {
        let dir = root.join("devices/pci0000:00/block").join(name);
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::create_dir_all(root.join("block")).unwrap();
        std::fs::create_dir_all(root.join("devices/pci0000:00/ata1")).unwrap();
        let _ = std::os::unix::fs::symlink(root.join("devices/pci0000:00/ata1"), dir.join("device"));
        let _ = std::os::unix::fs::symlink(&dir, root.join("block").join(name));
        std::fs::write(dir.join("queue/rotational"), format!("{rotational}\n")).unwrap();
        std::fs::write(dir.join("removable"), "0\n").unwrap();
        std::fs::write(dir.join("stat"), format!("10 0 {} 5 20 0 {} 9 0 12 14 0 0 0 0\n", sectors.0, sectors.1)).unwrap();
        dir
    }

    #[test]
    fn cpufreq_is_read_written_and_its_absence_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("devices/system/cpu/cpufreq")).unwrap();
        let e = read_cpufreq(t.path()).unwrap_err().to_string();
        assert!(e.contains("no CPU") && e.contains("devices/system/cpu"), "{e}");
        cpu(t.path(), 0, "performance", "performance powersave");
        cpu(t.path(), 1, "schedutil", "performance schedutil");
        cpu(t.path(), 2, "performance", "performance");
        std::fs::write(t.path().join("devices/system/cpu/cpu2/online"), "0\n").unwrap();
        let cpus = read_cpufreq(t.path()).unwrap();
        assert_eq!(cpus.len(), 2, "the offline CPU is left out");
        assert_eq!((cpus[1].governor.as_str(), cpus[1].governors.len(), cpus[1].max_khz, cpus[1].hw_min_khz), ("schedutil", 2, 3_000_000, 800_000));
        write_cpufreq(t.path(), &CpuSetting { cpu: 1, governor: Some("performance".into()), max_khz: Some(1_500_000) }).unwrap();
        let cpus = read_cpufreq(t.path()).unwrap();
        assert_eq!((cpus[1].governor.as_str(), cpus[1].max_khz), ("performance", 1_500_000));
        // A missing file is named.
        std::fs::remove_file(cpufreq_dir(t.path(), 0).join("scaling_max_freq")).unwrap();
        let e = read_cpufreq(t.path()).unwrap_err().to_string();
        assert!(e.contains("cpu0/cpufreq/scaling_max_freq"), "{e}");
    }

    #[test]
    fn only_real_spinning_disks_are_listed_with_their_sector_counts() {
        let t = tempfile::tempdir().unwrap();
        disk(t.path(), "sda", "1", (100, 50));
        disk(t.path(), "nvme0n1", "0", (1, 1));
        // A loop device: no `device` link.
        let lo = t.path().join("devices/virtual/block/loop0");
        std::fs::create_dir_all(lo.join("queue")).unwrap();
        std::fs::write(lo.join("queue/rotational"), "1\n").unwrap();
        std::os::unix::fs::symlink(&lo, t.path().join("block/loop0")).unwrap();
        assert_eq!(read_disks(t.path()).unwrap(), vec![DiskSample { name: "sda".into(), io: 150 }]);
        std::fs::write(t.path().join("block/sda/stat"), "garbage\n").unwrap();
        assert!(read_disks(t.path()).unwrap_err().to_string().contains("sda/stat"));
    }

    #[test]
    fn a_file_maps_to_the_whole_disk_under_its_partition_or_mapper() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("image.raw");
        std::fs::write(&file, "x").unwrap();
        assert!(disks_of(t.path(), &file).unwrap().is_empty(), "no dev/block entry: no disk");
        let (major, minor) = major_minor(std::fs::metadata(&file).unwrap().dev());
        let sdb = disk(t.path(), "sdb", "1", (0, 0));
        std::fs::create_dir_all(sdb.join("sdb1")).unwrap();
        std::fs::write(sdb.join("sdb1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(t.path().join("dev/block")).unwrap();
        let link = t.path().join(format!("dev/block/{major}:{minor}"));
        std::os::unix::fs::symlink(sdb.join("sdb1"), &link).unwrap();
        assert_eq!(disks_of(t.path(), &file).unwrap(), vec!["sdb"]);
        // An LVM volume on two disks: both hold it.
        let sdc = disk(t.path(), "sdc", "1", (0, 0));
        let dm = t.path().join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(sdb.join("sdb1"), dm.join("slaves/sdb1")).unwrap();
        std::os::unix::fs::symlink(&sdc, dm.join("slaves/sdc")).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&dm, &link).unwrap();
        assert_eq!(disks_of(t.path(), &file).unwrap(), vec!["sdb", "sdc"]);
        assert!(disks_of(t.path(), &t.path().join("missing.img")).unwrap_err().to_string().contains("missing.img"));
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(major_minor(0x0803), (8, 3));
        assert_eq!(major_minor((259 << 8) | 1), (259, 1));
        assert_eq!(major_minor(0x0000_1000_0000_0000 | (0x12345 & 0xff) | ((0x12345 & !0xff) << 12)), (0x1000, 0x12345));
    }
}
