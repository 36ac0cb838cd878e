//! Reallocation's benefit on real guests: a cpu-bound guest's rounds per
//! minute with ebb against static weights, caps and pinning.

use crate::lab::{free_port, GuestSpec, Lab};
use ebb_core::Bytes;
use ebb_daemon::config::Config;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::time::Duration;
use tokio::task::block_in_place;

pub(super) async fn realloc(uri: &str, seconds: u64) -> Result<(), String> {
    let prefix = "ebb-bench-realloc-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let boot = |name: &str, cap: Option<(u64, u64)>| {
        let mut spec = GuestSpec::new(format!("{prefix}{name}"), Bytes::from_mib(256));
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{name}.log"));
        spec.cpu_cap = cap;
        block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())
    };
    let worker = boot("worker", Some((100_000, 30_000)))?;
    let neighbour = boot("neighbour", None)?;
    for g in [&worker, &neighbour] {
        block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    }
    let socket = dir.path().join("realloc.sock");
    // The worker may be raised to a whole CPU and pinned within both CPUs.
    let cfg_text = format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{prefix}*\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
         [vm.{}.realloc]\ncpu_cap_max = 1.0\ncpus = \"0-1\"\n",
        socket.display(),
        dir.path().join("realloc.db").display(),
        worker.name()
    );
    let per_minute = |rounds: u64| rounds as f64 * 60.0 / seconds as f64;
    let live = virt::sys::VIR_DOMAIN_AFFECT_LIVE;
    // (what the worker is beside, whether the neighbour is busy, the
    // worker's cap in µs per 100 ms, whether both are pinned to CPU 0)
    let scenarios = [
        ("an idle neighbour, capped at 30% of a CPU", false, 30_000, false),
        ("a busy neighbour, capped at 30% of a CPU", true, 30_000, false),
        ("a busy neighbour, uncapped, both pinned to CPU 0", true, -1, true),
    ];
    let mut rows = vec![];
    let mut changes_before = 0;
    for (what, busy_neighbour, quota, pinned) in scenarios {
        block_in_place(|| neighbour.cpu_workload(u32::from(busy_neighbour), seconds * 3 + 120)).map_err(|e| e.to_string())?;
        // The guests' own weights, caps and pinning for the static window.
        let own = virt::domain::SchedulerInfo {
            scheduler_type: "posix".into(),
            cpu_shares: Some(1024),
            vcpu_bw: virt::domain::SchedBandwidth { period: Some(100_000), quota: Some(quota) },
            ..Default::default()
        };
        worker.domain().set_scheduler_parameters_flags(&own, live).map_err(|e| e.to_string())?;
        let map: u8 = if pinned { 0b01 } else { 0b11 };
        for g in [&worker, &neighbour] {
            g.domain().pin_vcpu_flags(0, &[map], live).map_err(|e| e.to_string())?;
        }
        let fixed = block_in_place(|| worker.work(seconds)).map_err(|e| e.to_string())?;
        // ebb: the agent runs from the start of the window, so its reaction
        // time (class_after) is inside the figure.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = Config::parse(&cfg_text).map_err(|e| e.to_string())?;
        let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
            let _ = stopped.await;
        }));
        let with_ebb = block_in_place(|| worker.work(seconds)).map_err(|e| e.to_string())?;
        // What ebb said of the worker's CPU at the end of the window.
        let client = ebb_daemon::client::Client::new(&socket);
        let said: Vec<String> = match client.explain(worker.name()).await {
            Ok(e) => e.summary.into_iter().filter(|l| l.starts_with("Why") || l.starts_with("Its vCPUs")).collect(),
            Err(e) => vec![format!("(explain failed: {e})")],
        };
        let _ = stop.send(());
        let _ = agent.await;
        let journal = ebb_daemon::journal::Journal::open(&dir.path().join("realloc.db")).map_err(|e| e.to_string())?;
        let changes = journal
            .events(Some(worker.name()), 10_000)
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|e| e.kind == "set_tune" || e.kind == "set_pins")
            .count();
        rows.push((what, per_minute(fixed), per_minute(with_ebb), changes - changes_before, said));
        changes_before = changes;
    }
    for g in [worker, neighbour] {
        let _ = block_in_place(|| g.remove());
    }
    println!("a cpu-bound guest, rounds of a fixed computation per minute, {seconds} s windows, static weights vs ebb:");
    for (what, fixed, with_ebb, changes, said) in rows {
        println!(
            "  beside {what}: static {fixed:.0}/min; with ebb {with_ebb:.0}/min = {:.2}x ({changes} changes by ebb)",
            with_ebb / fixed.max(1.0)
        );
        for line in said {
            println!("    ebb at the end: {line}");
        }
    }
    println!("  (beside a busy neighbour on both CPUs the two conflict: ebb leaves their weights alone by design;");
    println!("   pinned to one CPU with it, ebb moves the worker to the free CPU instead)");
    Ok(())
}
