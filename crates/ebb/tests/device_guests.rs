//! Device power (the seed's Figure 2) through the real `ebb` binary, against
//! sysfs trees the tests build: CPUs with cpufreq files and disks with I/O
//! counters. The real-guest test maps a running guest's image (its real
//! st_dev) to one of the tree's disks. Disk standby is recorded, not run (no
//! disk_standby_command): no real disk and no real cpufreq is ever touched.
//! These run one at a time with the other real-guest tests (.config/nextest.toml).

mod common;
use ebb_backends::devices::test_tree::cpu;
use common::*;
use ebb_daemon::api_types::{DevicesView, Event};
use ebb_core::devices::DiskState;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn governor(root: &Path, n: u32) -> String {
    std::fs::read_to_string(root.join(format!("devices/system/cpu/cpu{n}/cpufreq/scaling_governor"))).unwrap().trim().to_string()
}

/// A spinning disk as sysfs lays it out, with fixed I/O counters.
fn disk(root: &Path, name: &str) -> PathBuf {
    let dir = root.join("devices/pci0000:00/ata1/host0/block").join(name);
    std::fs::create_dir_all(dir.join("queue")).unwrap();
    std::fs::create_dir_all(root.join("block")).unwrap();
    std::os::unix::fs::symlink(root.join("devices/pci0000:00/ata1"), dir.join("device")).unwrap();
    std::os::unix::fs::symlink(&dir, root.join("block").join(name)).unwrap();
    std::fs::write(dir.join("queue/rotational"), "1\n").unwrap();
    std::fs::write(dir.join("removable"), "0\n").unwrap();
    std::fs::write(dir.join("stat"), "10 0 800 5 20 0 1600 9 0 12 14 0 0 0 0\n").unwrap();
    dir
}

/// Makes the tree say that `file` lives on partition 1 of `disk`: its real
/// device number (`st_dev`) links to that partition under `dev/block`.
fn holds(root: &Path, disk_dir: &Path, file: &Path) {
    let dev = std::fs::metadata(file).unwrap().dev();
    let (major, minor) = (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff), ((dev >> 12) & 0xffff_ff00) | (dev & 0xff));
    let name = disk_dir.file_name().unwrap().to_str().unwrap();
    let part = disk_dir.join(format!("{name}1"));
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.join("partition"), "1\n").unwrap();
    std::fs::create_dir_all(root.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(&part, root.join(format!("dev/block/{major}:{minor}"))).unwrap();
}

fn devices(agent: &AgentProc) -> Option<DevicesView> {
    agent.status().power?.devices
}

fn kinds<'a>(events: &'a [Event], kind: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

#[test]
fn a_running_guests_disk_is_guarded_an_idle_one_sleeps_and_the_cpus_save_until_the_guest_works() {
    let prefix = "ebb-dev-";
    // The leftovers first: their QEMUs may hold the image.
    let lab = lab(prefix);
    let name = format!("{prefix}a");
    let img = DiskImage::new(&name);
    let (_lab, dir, [g]) = guests_on(lab, prefix, ["a"], 256, |_, spec| {
        spec.disk = Some(img.0.clone());
        spec.vcpus = 2;
    });

    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    cpu(root, 0, "performance", "performance powersave");
    cpu(root, 1, "schedutil", "performance powersave schedutil");
    let sda = disk(root, "sda");
    disk(root, "sdb");
    holds(root, &sda, &img.0);

    // An idle emulated guest burns well under a fifth of the host's two CPUs;
    // two busy vCPUs, well over a third, even on a shared host.
    let agent_lines = format!("uri = \"{URI}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"");
    let rest = format!(
        "[memory]\nenabled = false\n[power]\nsysfs = \"{}\"\n[power.devices]\ncpufreq = true\ncpu_low = 0.2\ncpu_high = 0.3\ncpu_low_after = \"3s\"\ndisk_idle_after = \"3s\"\n",
        root.display()
    );
    let mut agent = AgentProc::start(dir.path(), &agent_lines, &rest);

    // sdb: no I/O and no VM on it: standby (recorded). sda: holds the guest's image.
    let d = agent.wait("sdb in standby", Duration::from_secs(30), |a| {
        let d = devices(a)?;
        d.disks.as_ref()?.disks.iter().any(|v| v.name == "sdb" && matches!(v.state, DiskState::Standby { .. })).then_some(d)
    });
    let sda_state = &d.disks.as_ref().unwrap().disks.iter().find(|v| v.name == "sda").unwrap().state;
    assert!(matches!(sda_state, DiskState::Guarded { vms } if vms.iter().any(|v| v.as_str() == name)), "{sda_state:?}");
    let text = agent.text(&["power"]);
    assert!(text.contains(&format!("guarded: holds the image of running {name}")) && text.contains("recorded a standby of sdb"), "{text}");
    let events = agent.events(None);
    let standbys = kinds(&events, "disk_standby");
    assert_eq!(standbys.len(), 1, "once, and only sdb: {standbys:?}");
    assert!(standbys[0].text.starts_with("sdb: no I/O for") && standbys[0].outcome.as_deref() == Some("ok"), "{standbys:?}");
    let metrics = agent.text(&["metrics"]);
    assert!(metrics.contains("ebb_disk_standby{disk=\"sdb\"} 1") && metrics.contains("ebb_disk_guarded{disk=\"sda\"} 1"), "{metrics}");

    // The guest idles: the CPUs save power (the governor file changes in the tree).
    wait_for("powersave on both CPUs", Duration::from_secs(60), || (governor(root, 0) == "powersave" && governor(root, 1) == "powersave").then_some(()));
    let saved = agent.events(None);
    let save = kinds(&saved, "cpufreq");
    assert!(save.iter().any(|e| e.text.contains("saving power") && e.text.contains("cpu1 governor schedutil → powersave")), "{save:?}");
    assert!(agent.text(&["power"]).contains("saving power (set by ebb)"));
    assert!(agent.text(&["metrics"]).contains("ebb_cpufreq_saving 1"));

    // Work in the guest: given back at once, each CPU to what was found.
    g.cpu_workload(2, 300).unwrap();
    wait_for("the governors given back", Duration::from_secs(60), || (governor(root, 0) == "performance" && governor(root, 1) == "schedutil").then_some(()));
    let back = agent.events(None);
    assert!(kinds(&back, "cpufreq").iter().any(|e| e.text.contains("giving back what ebb found")), "{back:?}");
    // While it works, no save (the band and the hold).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(governor(root, 0), "performance");

    // Idle again: saving again; then a clean stop gives the CPUs back.
    g.cpu_workload(0, 1).unwrap();
    wait_for("powersave again", Duration::from_secs(60), || (governor(root, 0) == "powersave").then_some(()));
    // The guest stops: its disk is no longer guarded by it.
    g.domain().destroy().unwrap();
    agent.wait("sda no longer guarded by the guest", Duration::from_secs(30), |a| {
        let d = devices(a)?;
        let sda = d.disks?.disks.into_iter().find(|v| v.name == "sda")?;
        (!matches!(&sda.state, DiskState::Guarded { vms } if vms.iter().any(|v| v.as_str() == name))).then_some(())
    });
    agent.stop();
    assert_eq!((governor(root, 0).as_str(), governor(root, 1).as_str()), ("performance", "schedutil"), "given back at stop");
    g.remove().unwrap();
}

/// The test driver's one domain, `test`, reports no CPU counters: the VMs
/// use nothing, so the CPUs save as soon as the hold ends.
fn test_driver_agent(dir: &Path, root: &Path, devices: &str) -> AgentProc {
    let rest = format!("[memory]\nenabled = false\n[power]\nsysfs = \"{}\"\n[power.devices]\n{devices}", root.display());
    AgentProc::start(dir, "uri = \"test:///default\"\ntick = \"200ms\"", &rest)
}

#[test]
fn a_sysfs_without_cpufreq_is_named_and_no_disk_sleeps_under_an_image_whose_disk_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("devices/system/cpu/cpu0")).unwrap();
    disk(tree.path(), "sdb");
    let agent = test_driver_agent(dir.path(), tree.path(), "cpufreq = true\ncpu_low_after = \"1s\"\ndisk_idle_after = \"1s\"\n");
    let d = agent.wait("the disk held", Duration::from_secs(20), |a| {
        let d = devices(a)?;
        d.disks.as_ref()?.disks.first().filter(|v| matches!(v.state, DiskState::Held { .. })).map(|_| d.clone())
    });
    // The test driver's `test` runs on /guest/diskimage1, which is nowhere here.
    let DiskState::Held { why } = &d.disks.unwrap().disks[0].state else { unreachable!() };
    assert!(why.contains("test's /guest/diskimage1"), "{why}");
    let e = d.cpu.unwrap().error.unwrap();
    assert!(e.contains("no CPU under") && e.contains("has cpufreq"), "{e}");
    std::thread::sleep(Duration::from_secs(2));
    let events = agent.events(None);
    assert_eq!(kinds(&events, "cpufreq_failed").len(), 1, "journaled once: {events:?}");
    assert!(kinds(&events, "disk_standby").is_empty() && kinds(&events, "cpufreq").is_empty());
    assert!(agent.text(&["power"]).contains("cpus: not read: no CPU under"));
}

/// chattr +i: unwritable even for root; undone on drop.
struct Immutable(PathBuf);

impl Immutable {
    fn new(path: PathBuf) -> Immutable {
        let st = std::process::Command::new("chattr").arg("+i").arg(&path).status().unwrap();
        assert!(st.success(), "chattr +i {}", path.display());
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_governor_is_journaled_and_every_cpu_stays_as_found() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    cpu(root, 0, "performance", "performance powersave");
    cpu(root, 1, "performance", "performance powersave");
    let _lock = Immutable::new(root.join("devices/system/cpu/cpu1/cpufreq/scaling_governor"));
    let agent = test_driver_agent(dir.path(), root, "cpufreq = true\ncpu_low_after = \"1s\"\n");
    let failed = agent.wait("the failed save journaled", Duration::from_secs(20), |a| {
        a.events(None).into_iter().find(|e| e.kind == "cpufreq" && e.failed)
    });
    assert!(failed.outcome.as_deref().unwrap().contains("cpu1/cpufreq/scaling_governor"), "{failed:?}");
    assert!(failed.text.contains("the CPUs are as ebb found them"), "{failed:?}");
    // cpu0 was written first and given back.
    assert_eq!((governor(root, 0).as_str(), governor(root, 1).as_str()), ("performance", "performance"));
    let c = devices(&agent).unwrap().cpu.unwrap();
    assert!(!c.policy.saving && c.last_change.unwrap().contains("a write failed"));
    // Tried again once per hold, not every tick.
    std::thread::sleep(Duration::from_millis(1500));
    let n = agent.events(None).iter().filter(|e| e.kind == "cpufreq").count();
    assert!(n <= 3, "{n} attempts in ~2.5 s with a 1 s hold");
}

#[test]
fn the_cpus_are_given_back_at_stop_and_after_a_crash_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    cpu(root, 0, "performance", "performance"); // no powersave: the max frequency is capped
    cpu(root, 1, "ondemand", "ondemand powersave");
    let max0 = || std::fs::read_to_string(root.join("devices/system/cpu/cpu0/cpufreq/scaling_max_freq")).unwrap().trim().to_string();
    let on = "cpufreq = true\ncpu_low_after = \"1s\"\nmax_freq_fraction = 0.4\n";
    let mut agent = test_driver_agent(dir.path(), root, on);
    wait_for("saving", Duration::from_secs(20), || (max0() == "1200000" && governor(root, 1) == "powersave").then_some(()));
    agent.stop();
    assert_eq!((max0().as_str(), governor(root, 1).as_str()), ("3000000", "ondemand"), "given back at a clean stop");

    // A crash leaves the CPUs saving; the next run, with cpufreq now off, gives them back.
    let mut agent = agent.start_again();
    wait_for("saving", Duration::from_secs(20), || (max0() == "1200000").then_some(()));
    agent.kill9();
    assert_eq!(max0(), "1200000");
    let config = std::fs::read_to_string(&agent.config).unwrap().replace("cpufreq = true", "cpufreq = false");
    std::fs::write(&agent.config, config).unwrap();
    let agent = agent.start_again();
    wait_for("given back by the next run", Duration::from_secs(20), || (max0() == "3000000" && governor(root, 1) == "ondemand").then_some(()));
    let events = agent.events(None);
    assert!(kinds(&events, "cpufreq").iter().any(|e| e.text.contains("cpufreq is off in the config")), "{events:?}");
}
