//! The agent's own cost: CPU share and peak RSS of `ebb run` watching many
//! libvirt test-driver domains, against the bulk libvirt call alone.

use ebb_backends::libvirt::{test_node_xml, LibvirtHypervisor};
use ebb_backends::Hypervisor;
use super::spawn_ebb_run;
use std::process::Command;
use std::time::{Duration, Instant};

use super::wait_path;

fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// Clock ticks per second for /proc's CPU times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

pub(super) fn overhead(domains: usize, seconds: u64, tick: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let node = dir.path().join("node.xml");
    std::fs::write(&node, test_node_xml(domains)).map_err(|e| e.to_string())?;
    let uri = format!("test://{}", node.display());
    let tick_d = ebb_daemon::config::parse_duration(tick).map_err(|e| e.to_string())?;

    // Baseline: the one bulk libvirt call the agent makes per tick, alone.
    let mut hv = LibvirtHypervisor::connect(&uri).map_err(|e| e.to_string())?;
    let _ = hv.observe().map_err(|e| e.to_string())?;
    let n = 200;
    let started = Instant::now();
    let mut seen = 0;
    for _ in 0..n {
        seen = hv.observe().map_err(|e| e.to_string())?.vms.len();
    }
    let observe_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    drop(hv);

    let config = dir.path().join("ebb.toml");
    let socket = dir.path().join("ebb.sock");
    std::fs::write(
        &config,
        format!(
            "[agent]\nuri = \"{uri}\"\ntick = \"{tick}\"\nsocket = \"{}\"\njournal = \"{}\"\n",
            socket.display(),
            dir.path().join("journal.db").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = spawn_ebb_run(Command::new(exe), &config).map_err(|e| format!("cannot start ebb run: {e}"))?;
    let pid = child.id();
    let result = (|| {
        wait_path(&socket, Duration::from_secs(10))?;
        // Warm up: the first ticks read every domain's metadata and XML.
        std::thread::sleep(Duration::from_secs(5));
        let (c0, t0) = (cpu_ticks(pid)?, Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        let (c1, wall) = (cpu_ticks(pid)?, t0.elapsed().as_secs_f64());
        let share = (c1 - c0) as f64 / USER_HZ / wall * 100.0;
        let hwm = status_kib(pid, "VmHWM:");
        let rss = status_kib(pid, "VmRSS:");
        let per_tick = 1000.0 / tick_d.as_millis() as f64;
        println!("agent overhead, {domains} test-driver domains ({seen} observed), tick {tick}, {seconds} s measured:");
        println!("  CPU: {share:.3}% of one core (target < 1%)");
        println!("  peak RSS: {:.1} MiB, RSS now {:.1} MiB (target < 30 MiB)", hwm as f64 / 1024.0, rss as f64 / 1024.0);
        println!(
            "  baseline, the bulk libvirt call alone: {observe_ms:.2} ms per tick = {:.3}% of one core at this tick; ebb's whole tick costs {:.1}x that",
            observe_ms * per_tick / 10.0,
            share / (observe_ms * per_tick / 10.0).max(1e-9)
        );
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
