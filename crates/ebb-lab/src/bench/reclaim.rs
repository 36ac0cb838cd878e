//! Reclaim on real guests: ebb's adaptive step against a one-shot setmem,
//! for an idle guest (time) and a guest under memory load (oom kills).

use crate::lab::{free_port, Guest, GuestSpec, Lab};
use ebb_backends::libvirt::LibvirtHypervisor;
use ebb_backends::Hypervisor;
use ebb_core::{Bytes, VmId};
use ebb_daemon::config::Config;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

/// Polls the balloon's live size (the same reading for both contenders)
/// until it is at most `target` plus 1 MiB; the time it took, or None.
fn wait_balloon(hv: &mut LibvirtHypervisor, vm: &VmId, target: Bytes, started: Instant, limit: Duration) -> Option<Duration> {
    while started.elapsed() < limit {
        let cur = hv.balloon_now(vm).ok()?;
        if cur <= target + Bytes::from_mib(1) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn oom_kills(g: &Guest) -> usize {
    g.console_log().matches("Out of memory: Killed process").count()
}

pub(super) async fn reclaim(uri: &str) -> Result<(), String> {
    let prefix = "ebb-bench-reclaim-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let boot = |name: &str| -> Result<Guest, String> {
        let mut spec = GuestSpec::new(format!("{prefix}{name}"), Bytes::from_mib(512));
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{name}.log"));
        // Stock balloons: this bench measures what a careless balloon does.
        spec.stock_balloon();
        block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())
    };
    let idle = boot("idle")?;
    let load_oneshot = boot("load-oneshot")?;
    let load_ebb = boot("load-ebb")?;
    for g in [&idle, &load_oneshot, &load_ebb] {
        block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    }
    let target = Bytes::from_mib(256);
    let mut hv = LibvirtHypervisor::connect(uri).map_err(|e| e.to_string())?;
    let id = VmId::new(idle.name());
    let mut oneshot_times = vec![];
    let mut ebb_times = vec![];
    for round in 0..3 {
        // One-shot: one setmem to the target.
        let t0 = Instant::now();
        hv.set_memory(&id, target).map_err(|e| e.to_string())?;
        let t = block_in_place(|| wait_balloon(&mut hv, &id, target, t0, Duration::from_secs(30))).ok_or("one-shot setmem did not land in 30 s")?;
        oneshot_times.push(t);
        restore(&mut hv, &id)?;
        // ebb: an agent whose pool leaves this guest exactly the same target.
        let t = ebb_reclaim(uri, &id, target, dir.path(), round, &mut hv).await?;
        ebb_times.push(t);
        restore(&mut hv, &id)?;
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (one, adaptive) = (med(&mut oneshot_times), med(&mut ebb_times));
    println!("reclaim 256 MiB of idle memory from a 512 MiB guest (median of 3):");
    println!("  one-shot setmem: {:.0} ms", one.as_secs_f64() * 1000.0);
    println!(
        "  ebb, adaptive step: {:.0} ms = {:.2}x one-shot (target within 1.5x)",
        adaptive.as_secs_f64() * 1000.0,
        adaptive.as_secs_f64() / one.as_secs_f64()
    );

    // Under load: each guest holds 300 MiB (tmpfs, no swap), then is asked down to 256 MiB.
    for g in [&load_oneshot, &load_ebb] {
        block_in_place(|| g.start_mem_workload(300, 16, 50, 0)).map_err(|e| e.to_string())?;
    }
    for g in [&load_oneshot, &load_ebb] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while block_in_place(|| g.status()).map(|s| s.workload_state != "holding").unwrap_or(true) {
            if Instant::now() > deadline {
                return Err(format!("{} did not reach its 300 MiB load", g.name()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let lid = VmId::new(load_oneshot.name());
    hv.set_memory(&lid, target).map_err(|e| e.to_string())?;
    let eid = VmId::new(load_ebb.name());
    ebb_hold(uri, &eid, target, dir.path(), Duration::from_secs(20)).await?;
    println!("a guest holding 300 MiB (no swap) asked down to 256 MiB, after 20 s, then 20 requests to its service:");
    for (who, g, id) in [("one-shot setmem", &load_oneshot, &lid), ("ebb", &load_ebb, &eid)] {
        let size = hv.balloon_now(id).map_err(|e| e.to_string())?;
        let answered = (0..20).filter(|_| block_in_place(|| g.status()).is_ok()).count();
        let available = block_in_place(|| g.status()).map(|s| s.mem_available.to_string()).unwrap_or_else(|_| "unknown (no answer)".into());
        println!(
            "  {who}: balloon at {size}, guest has {available} available, {answered}/20 requests answered, {} oom kills",
            block_in_place(|| oom_kills(g))
        );
    }
    drop(hv);
    for g in [idle, load_oneshot, load_ebb] {
        let _ = block_in_place(|| g.remove());
    }
    Ok(())
}

fn restore(hv: &mut LibvirtHypervisor, id: &VmId) -> Result<(), String> {
    hv.set_memory(id, Bytes::from_mib(512)).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cur = hv.balloon_now(id).map_err(|e| e.to_string())?;
        if cur >= Bytes::from_mib(511) || Instant::now() > deadline {
            // Let the guest's stats catch up with its new size.
            std::thread::sleep(Duration::from_secs(3));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bench_config(uri: &str, vm: &VmId, pool: Bytes, dir: &Path, tag: &str) -> Result<Config, String> {
    Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{vm}\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\npool = \"{}KiB\"\n",
        dir.join(format!("{tag}.sock")).display(),
        dir.join(format!("{tag}.db")).display(),
        pool.kib()
    ))
    .map_err(|e| e.to_string())
}

/// Runs an agent whose pool is `target` for this one guest and returns the
/// time from its start to the balloon reaching the target.
async fn ebb_reclaim(uri: &str, vm: &VmId, target: Bytes, dir: &Path, round: usize, hv: &mut LibvirtHypervisor) -> Result<Duration, String> {
    let cfg = bench_config(uri, vm, target, dir, &format!("reclaim-{round}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t0 = Instant::now();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let t = block_in_place(|| wait_balloon(hv, vm, target, t0, Duration::from_secs(60)));
    let _ = stop.send(());
    let _ = agent.await;
    t.ok_or_else(|| "ebb did not reach the target in 60 s".to_string())
}

/// Runs an agent with a pool of `target` for a loaded guest for `limit`.
async fn ebb_hold(uri: &str, vm: &VmId, target: Bytes, dir: &Path, limit: Duration) -> Result<(), String> {
    let cfg = bench_config(uri, vm, target, dir, "hold")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(limit).await;
    let _ = stop.send(());
    let _ = agent.await;
    Ok(())
}
