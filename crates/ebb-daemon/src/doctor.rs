//! `ebb doctor`: what the config asks of this host, checked on it, one line
//! each with what to fix. A finding that blocks a configured feature makes
//! the command fail; advice does not.

use crate::config::Config;
use ebb_core::{Bytes, VmState};
use std::fmt;
use std::path::Path;

/// Where libvirt's qemu driver keeps managed saves (qemu:///system).
const SAVE_DIR: &str = "/var/lib/libvirt/qemu/save";
/// Below this hard limit on descriptors, a crowd at the surrogate is refused early.
const FEW_FDS: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Advice,
    /// A configured feature cannot work until this is fixed.
    Blocks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.verdict {
            Verdict::Ok => "ok     ",
            Verdict::Advice => "advice ",
            Verdict::Blocks => "BLOCKS ",
        };
        write!(f, "{tag}{}", self.text)
    }
}

fn found(verdict: Verdict, text: impl Into<String>) -> Finding {
    Finding { verdict, text: text.into() }
}

/// Every check, guests first.
pub fn doctor(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let to_save = guests(cfg, &mut out);
    folders(cfg, &mut out);
    save_space(to_save, &mut out);
    cgroups(&mut out);
    power(cfg, &mut out);
    descriptors(&mut out);
    out
}

/// libvirt and each managed guest; returns what sleeping them would write
/// (the memory of the managed guests that may be saved).
fn guests(cfg: &Config, out: &mut Vec<Finding>) -> Bytes {
    let uri = &cfg.agent.uri;
    let mut hv = match ebb_backends::connect(uri) {
        Ok(hv) => hv,
        Err(e) => {
            out.push(found(Verdict::Blocks, format!("{e} (agent.uri)")));
            return Bytes::ZERO;
        }
    };
    let obs = match hv.observe() {
        Ok(o) => o,
        Err(e) => {
            out.push(found(Verdict::Blocks, format!("libvirt at {uri} does not list its domains: {e}")));
            return Bytes::ZERO;
        }
    };
    let ours: Vec<_> = obs.vms.iter().filter(|v| cfg.agent.is_ebbs(v.id.as_str())).collect();
    out.push(found(Verdict::Ok, format!("libvirt at {uri} answers: {} domains, {} of them in agent.domains", obs.vms.len(), ours.len())));
    let mut to_save = Bytes::ZERO;
    for v in ours {
        let r = crate::check::resolve_live(cfg, hv.as_mut(), &v.id);
        if !r.settings.managed {
            continue;
        }
        let name = &v.id;
        if r.sleep.is_some() || cfg.power.budget.is_some() {
            to_save += v.balloon.as_ref().map_or(Bytes::ZERO, |b| b.maximum);
        }
        let running = v.state == VmState::Running;
        match &v.balloon {
            None if cfg.memory.enabled => out.push(found(
                Verdict::Blocks,
                format!("{name}: no balloon device: ebb cannot size its memory; add <memballoon model='virtio'> to its domain (or set managed = false)"),
            )),
            None => {}
            Some(b) if running && b.stats.is_none() && cfg.memory.enabled => out.push(found(
                Verdict::Blocks,
                format!("{name}: its guest reports no memory statistics: set <stats period='1'/> in its <memballoon> (virsh dommemstat {name} --period 1 --live --config) and load virtio_balloon in the guest"),
            )),
            Some(b) => match b.features.risk() {
                Some(risk) => out.push(found(Verdict::Advice, format!("{name}: {risk}"))),
                None => out.push(found(Verdict::Ok, format!("{name}: balloon with statistics{}", if running { "" } else { " (not running: read at its start)" }))),
            },
        }
        if let Some(min) = r.realloc.as_ref().and_then(|x| x.vcpus_min).filter(|_| running) {
            if let Err(e) = hv.guest_vcpus(&v.id) {
                out.push(found(
                    Verdict::Blocks,
                    format!("{name}: vcpus_min = {min} needs the QEMU guest agent, which did not answer ({e}): add its channel (org.qemu.guest_agent.0) and run qemu-ga in the guest"),
                ));
            }
        }
    }
    to_save
}

/// The folders of the API's socket and of the journal: ebb must write there.
fn folders(cfg: &Config, out: &mut Vec<Finding>) {
    for (what, path) in [("agent.socket", &cfg.agent.socket), ("agent.journal", &cfg.agent.journal)] {
        let dir = path.parent().unwrap_or(Path::new("/"));
        // The nearest folder that exists: ebb makes the rest.
        let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
        if !existing.is_dir() {
            out.push(found(Verdict::Blocks, format!("{what}: {} is a file, not a folder: point {what} elsewhere", existing.display())));
            continue;
        }
        match rustix::fs::access(existing, rustix::fs::Access::WRITE_OK) {
            Ok(()) => out.push(found(Verdict::Ok, format!("{what}: {} can be written", dir.display()))),
            Err(e) => out.push(found(Verdict::Blocks, format!("{what}: {} cannot be written ({e}): run ebb as root or point {what} elsewhere", existing.display()))),
        }
    }
}

/// Saving the guests that may sleep needs about their memory on disk.
fn save_space(needed: Bytes, out: &mut Vec<Finding>) {
    if needed == Bytes::ZERO {
        return;
    }
    let Some(dir) = Path::new(SAVE_DIR).ancestors().find(|d| d.exists()) else { return };
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let free = Bytes(s.f_bavail * s.f_frsize);
            if free < needed {
                out.push(found(Verdict::Blocks, format!("{SAVE_DIR}: {free} free, and saving the managed guests that may sleep needs up to {needed}: free space there, or a save fails (the guest then keeps running)")));
            } else {
                out.push(found(Verdict::Ok, format!("{SAVE_DIR}: {free} free for up to {needed} of saves")));
            }
        }
        Err(e) => out.push(found(Verdict::Advice, format!("{SAVE_DIR}: its free space cannot be read ({e})"))),
    }
}

/// CPU and disk reallocation go through the cpu and io (blkio) controllers.
fn cgroups(out: &mut Vec<Finding>) {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers");
    let missing: Vec<&str> = match &v2 {
        Ok(list) => ["cpu", "io"].into_iter().filter(|c| !list.split_whitespace().any(|x| x == *c)).collect(),
        Err(_) => ["cpu", "blkio"].into_iter().filter(|c| !Path::new("/sys/fs/cgroup").join(c).exists()).collect(),
    };
    if missing.is_empty() {
        out.push(found(Verdict::Ok, "cgroups: the cpu and io controllers are there (CPU and disk reallocation)"));
    } else {
        out.push(found(Verdict::Advice, format!("cgroups: no {} controller: libvirt cannot set the CPU weights or disk limits ebb reallocates", missing.join(" or "))));
    }
}

/// The UPS, and the CPUs' frequency scaling, when configured.
fn power(cfg: &Config, out: &mut Vec<Finding>) {
    match cfg.power.ups_reader() {
        None => {}
        Some(Err(e)) => out.push(found(Verdict::Blocks, e.to_string())),
        Some(Ok(u)) => match u.client.read(&u.ups) {
            Ok(r) => out.push(found(Verdict::Ok, format!("UPS {}@{} answers: {}", u.ups, u.client.addr(), r.status))),
            Err(e) => out.push(found(Verdict::Blocks, format!("UPS {}@{} (power.ups): {e}", u.ups, u.client.addr()))),
        },
    }
    if cfg.power.devices.cpufreq {
        let knob = cfg.power.sysfs.join("devices/system/cpu/cpu0/cpufreq/scaling_max_freq");
        match rustix::fs::access(&knob, rustix::fs::Access::WRITE_OK) {
            Ok(()) => out.push(found(Verdict::Ok, format!("cpufreq: {} can be written", knob.display()))),
            Err(e) => out.push(found(Verdict::Blocks, format!("power.devices.cpufreq: {} cannot be written ({e}): a cpufreq driver must be loaded, and ebb run as root", knob.display()))),
        }
    }
}

/// The hard limit on descriptors bounds the surrogate's clients.
fn descriptors(out: &mut Vec<Finding>) {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX);
    if hard < FEW_FDS {
        out.push(found(Verdict::Advice, format!("descriptors: the hard limit is {hard}: the surrogate refuses clients past it; raise it (LimitNOFILE=65536)")));
    } else {
        out.push(found(Verdict::Ok, format!("descriptors: the hard limit is {}", if hard == u64::MAX { "unlimited".to_string() } else { hard.to_string() })));
    }
}
