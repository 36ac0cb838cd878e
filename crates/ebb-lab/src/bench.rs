//! `ebb bench`: benchmarks that print figures, each beside a baseline
//! measured in the same run. No thresholds are asserted: the targets are
//! printed next to the figures for a person to read.

use ebb_daemon::config::Config;
use crate::lab::{free_port, Guest, GuestSpec, Lab};
use ebb_daemon::run::{libvirt_connector, run_with};
use ebb_backends::libvirt::{test_node_xml, LibvirtHypervisor};
use ebb_backends::Hypervisor;
use ebb_core::{Bytes, VmId};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// CPU share and peak RSS of `ebb run` watching many libvirt test-driver domains.
    Overhead {
        #[arg(long, default_value_t = 100)]
        domains: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value = "2s")]
        tick: String,
    },
    /// The surrogate on a real guest. Wake latency: a request to the sleeping
    /// VM through ebb, against starting the same managed save by hand and
    /// asking the service directly. Awake, on both awake paths (ebb's splice
    /// and the kernel path's nftables DNAT): bulk throughput, the request
    /// rate of 50 concurrent clients and small-request p99 through ebb
    /// against the host forward directly. 200 clients at once, through ebb
    /// to the sleeping VM and directly to the awake one. Then a crowd
    /// (`--crowd` clients at once) at a guest on a real network path (a tap
    /// in the lab's network namespace): through ebb to the sleeping VM, and
    /// straight at the awake one (0 skips it).
    Surrogate {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 10_000)]
        crowd: usize,
    },
    /// Reallocation's benefit on real guests: a cpu-bound guest counts the
    /// rounds of a fixed computation it gets through per minute, with ebb
    /// against static weights, same run: capped at 30 % of a CPU (cpu_cap_max
    /// 1.0) beside an idle and a busy neighbour, then uncapped and pinned to
    /// one CPU with the busy neighbour (cpus = "0-1").
    Realloc {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        /// Length of each measured window.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Power events on real guests and a real upsd (dummy-ups): the time from
    /// the UPS reporting low battery to the last of 3 guests saved, and from
    /// mains power back to all restored.
    Power {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Reclaim on real guests: ebb's adaptive step against a one-shot setmem,
    /// for an idle guest (time) and a guest under memory load (oom kills).
    Reclaim {
        #[arg(long, default_value = "qemu:///system")]
        uri: String,
    },
}

pub async fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Overhead { domains, seconds, tick } => overhead(domains, seconds, &tick),
        BenchCommand::Reclaim { uri } => reclaim(&uri).await,
        BenchCommand::Realloc { uri, seconds } => realloc(&uri, seconds).await,
        BenchCommand::Power { uri, rounds } => power(&uri, rounds).await,
        BenchCommand::Surrogate { uri, rounds, crowd } => {
            surrogate(&uri, rounds).await?;
            match crowd {
                0 => Ok(()),
                n => surrogate_crowd(n).await,
            }
        }
    }
}

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

fn overhead(domains: usize, seconds: u64, tick: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let node = dir.path().join("node.xml");
    std::fs::write(&node, test_node_xml(domains)).map_err(|e| e.to_string())?;
    let uri = format!("test://{}", node.display());
    let tick_d = ebb_daemon::config::parse_duration(tick)?;

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
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config)
        .env("EBB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start ebb run: {e}"))?;
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

fn wait_path(p: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !p.exists() {
        if Instant::now() > deadline {
            return Err(format!("{} did not appear", p.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

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

async fn reclaim(uri: &str) -> Result<(), String> {
    let prefix = "ebb-bench-reclaim-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let boot = |name: &str| -> Result<Guest, String> {
        let mut spec = GuestSpec::new(format!("{prefix}{name}"), Bytes::from_mib(512));
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{name}.log"));
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

async fn power(uri: &str, rounds: usize) -> Result<(), String> {
    let prefix = "ebb-bench-power-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let mut guests = vec![];
    for i in 0..3 {
        let mut spec = GuestSpec::new(format!("{prefix}{i}"), Bytes::from_mib(256));
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{i}.log"));
        guests.push(block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())?);
    }
    for g in &guests {
        block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    }
    let upsd = crate::lab::Upsd::start("OL").map_err(|e| e.to_string())?;
    let cfg_text = format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"\nsocket = \"{}\"\njournal = \"{}\"\n\
         [memory]\nenabled = false\n[power]\nups = \"{}\"\n",
        dir.path().join("power.sock").display(),
        dir.path().join("power.db").display(),
        upsd.ups()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(Config::parse(&cfg_text)?, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let active = |want: bool| guests.iter().all(|g| g.domain().is_active().unwrap_or(!want) == want);
    let wait = |want: bool, what: &str| -> Result<Duration, String> {
        let t0 = Instant::now();
        while !active(want) {
            if t0.elapsed() > Duration::from_secs(120) {
                return Err(format!("{what} did not happen within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t0.elapsed())
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut down, mut up) = (vec![], vec![]);
    for _ in 0..rounds {
        upsd.set("OB LB").map_err(|e| e.to_string())?;
        down.push(block_in_place(|| wait(false, "saving the 3 guests"))?);
        upsd.set("OL").map_err(|e| e.to_string())?;
        up.push(block_in_place(|| wait(true, "restoring the 3 guests"))?);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let _ = stop.send(());
    let _ = agent.await;
    for g in guests {
        let _ = block_in_place(|| g.remove());
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    println!("power events, 3 guests of 256 MiB, a real upsd (dummy-ups), 1 s tick, median of {rounds}:");
    println!("  the UPS says OB LB -> the last guest saved: {:.1} s (includes up to 1 s of tick and the UPS driver's own poll)", med(&mut down));
    println!("  the UPS says OL -> every guest restored: {:.1} s", med(&mut up));
    Ok(())
}

async fn realloc(uri: &str, seconds: u64) -> Result<(), String> {
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
        let cfg = Config::parse(&cfg_text)?;
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

/// Sends one GET and returns the time to the first byte of the answer.
fn first_byte(port: u16, limit: Duration) -> Result<Duration, String> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Ok(t0.elapsed()),
        Ok(_) => Err("the connection closed with no answer".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// GETs `path` and reads the whole answer: (time, bytes read).
fn get_all(port: u16, path: &str, limit: Duration) -> Result<(Duration, usize), String> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok((t0.elapsed(), total)),
            Ok(n) => total += n,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `n` clients at once, each GETting its own `/cgi-bin/hit?i`: how many got
/// their own answer within `limit`, and when the last of those came.
fn crowd(port: u16, n: usize, limit: Duration) -> (usize, Duration) {
    let t0 = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(limit.saturating_sub(t0.elapsed()).max(Duration::from_millis(1)))).ok()?;
                use std::io::{Read, Write};
                s.write_all(format!("GET /cgi-bin/hit?{i} HTTP/1.0\r\nHost: ebb-bench\r\n\r\n").as_bytes()).ok()?;
                let mut text = String::new();
                s.read_to_string(&mut text).ok()?;
                text.contains(&format!(" hit {i}\n")).then(|| t0.elapsed())
            })
        })
        .collect();
    let done: Vec<Duration> = clients.into_iter().filter_map(|c| c.join().ok().flatten()).collect();
    (done.len(), done.into_iter().max().unwrap_or_default())
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// `clients` at once, each GETting `/` `per_client` times on a
/// new connection each: the time it took, each answered request's time, and
/// how many got no answer within 10 s.
fn concurrent(port: u16, clients: usize, per_client: usize) -> (Duration, Vec<Duration>, usize) {
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(per_client);
                let mut failed = 0;
                for _ in 0..per_client {
                    match get_all(port, "/", Duration::from_secs(10)) {
                        Ok((took, n)) if n > 0 => times.push(took),
                        _ => failed += 1,
                    }
                }
                (times, failed)
            })
        })
        .collect();
    let (mut times, mut failed) = (vec![], 0);
    for t in threads {
        let (t, f) = t.join().unwrap_or_default();
        times.extend(t);
        failed += f;
    }
    (t0.elapsed(), times, failed)
}

/// The awake overhead on both awake paths against the guest's host forward
/// directly, all in the same run: the agent already running serves `listen`
/// on the splice; a second agent serves another port on the kernel path
/// (it has no sleep settings, so it leaves the VM alone). Each figure
/// alternates direct, splice and kernel so drift and the host's other load
/// hit all three alike.
async fn awake_overhead(uri: &str, g: &Guest, vm: &VmId, backend: u16, listen: u16, dir: &Path) -> Result<(), String> {
    let kernel_listen = free_port();
    let socket = dir.join("kernel.sock");
    let cfg = Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{vm}\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
         [surrogate]\nawake_path = \"kernel\"\n\
         [[vm.{vm}.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{kernel_listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n",
        socket.display(),
        dir.join("kernel.db").display()
    ))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let result = async {
        wait_path(&socket, Duration::from_secs(10))?;
        let client = ebb_daemon::client::Client::new(&socket);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = client.vm(vm.as_str()).await;
            let paths = info.ok().and_then(|v| v.surrogate).map(|s| s.awake_paths).unwrap_or_default();
            if paths.iter().any(|p| p.contains("kernel, forwarding now")) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the kernel path did not take over within 30 s: {paths:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ports = [("direct to the host forward", backend), ("through ebb, splice", listen), ("through ebb, kernel path", kernel_listen)];
        block_in_place(|| awake_figures(g, &ports))
    }
    .await;
    let _ = stop.send(());
    let _ = agent.await;
    result
}

/// Bulk throughput, the request rate of 50 concurrent clients, and the p99
/// of small requests one at a time, on each of `ports` (the first is direct).
fn awake_figures(g: &Guest, ports: &[(&str, u16); 3]) -> Result<(), String> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mib = 32;
    g.http_get(&format!("/cgi-bin/bulk?mib={mib}")).map_err(|e| e.to_string())?;
    let mut bulk = [Duration::ZERO; 3];
    for _ in 0..3 {
        for (i, (_, port)) in ports.iter().enumerate() {
            let (took, bytes) = get_all(*port, "/bulk.bin", Duration::from_secs(60))?;
            if bytes < mib << 20 {
                return Err(format!("the bulk transfer read {bytes} bytes, fewer than {mib} MiB"));
            }
            bulk[i] += took;
        }
    }
    let rates = bulk.map(|sum| 3.0 * mib as f64 / sum.as_secs_f64());
    println!("awake, {mib} MiB GET x3 (the guest's httpd, sendfile), target >= 90 % of direct:");
    for (i, (what, _)) in ports.iter().enumerate() {
        println!("  {what}: {:.1} MiB/s = {:.0} %", rates[i], 100.0 * rates[i] / rates[0]);
    }

    // 50 clients at once overflow the test guest (busybox httpd's listen
    // backlog is 9, behind QEMU's host forward): that figure shows how each
    // path copes with the guest's collapse; 8 at once stay under the
    // backlog and show the paths' own cost.
    for (clients, per_client, rounds) in [(50, 2, 2), (8, 20, 2)] {
        let mut took = [Duration::ZERO; 3];
        let mut answered = [0usize; 3];
        let mut lost = [0usize; 3];
        let mut lat: [Vec<Duration>; 3] = Default::default();
        for _ in 0..rounds {
            for (i, (_, port)) in ports.iter().enumerate() {
                let (t, times, failed) = concurrent(*port, clients, per_client);
                took[i] += t;
                answered[i] += times.len();
                lost[i] += failed;
                lat[i].extend(times);
            }
        }
        let rate = |i: usize| answered[i] as f64 / took[i].as_secs_f64();
        println!(
            "awake, {clients} clients at once, {rounds} x {} small GETs, a connection each, target >= 90 % of direct:",
            clients * per_client
        );
        for (i, (what, _)) in ports.iter().enumerate() {
            let p99 = if lat[i].is_empty() { Duration::ZERO } else { percentile(&mut lat[i], 0.99) };
            println!(
                "  {what}: {:.0} requests/s = {:.0} %, p99 {:.0} ms, {} unanswered within 10 s",
                rate(i),
                100.0 * rate(i) / rate(0),
                ms(p99),
                lost[i]
            );
        }
    }

    let n = 300;
    let mut one: [Vec<Duration>; 3] = Default::default();
    for _ in 0..n {
        for (i, (_, port)) in ports.iter().enumerate() {
            one[i].push(get_all(*port, "/", Duration::from_secs(10))?.0);
        }
    }
    let p50 = one.clone().map(|mut v| percentile(&mut v, 0.5));
    let p99 = one.map(|mut v| percentile(&mut v, 0.99));
    println!("awake, {n} small GETs one at a time, target p99 added < 1 ms:");
    for (i, (what, _)) in ports.iter().enumerate() {
        println!(
            "  {what}: p50 {:.2} ms, p99 {:.2} ms; added p50 {:.2} ms, p99 {:.2} ms",
            ms(p50[i]),
            ms(p99[i]),
            ms(p50[i]) - ms(p50[0]),
            ms(p99[i]) - ms(p99[0])
        );
    }
    Ok(())
}

async fn surrogate(uri: &str, rounds: usize) -> Result<(), String> {
    let prefix = "ebb-bench-wake-";
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(|e| e.to_string())?;
    let mut spec = GuestSpec::new(format!("{prefix}a"), Bytes::from_mib(512));
    spec.http_port = Some(free_port());
    spec.console_log = dir.path().join("a.log");
    let g = block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())?;
    block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    let (vm, backend, listen) = (VmId::new(g.name()), spec.http_port.unwrap_or_default(), free_port());
    let mut hv = LibvirtHypervisor::connect(uri).map_err(|e| e.to_string())?;

    // Baseline: save, then start by hand and poll the service every 5 ms.
    let mut direct = vec![];
    for _ in 0..rounds {
        hv.save(&vm).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        hv.start(&vm).map_err(|e| e.to_string())?;
        let answered = loop {
            // A short limit per attempt: a host forward may accept and hang while
            // the guest is not listening yet, which would flatter ebb.
            if first_byte(backend, Duration::from_millis(250)).is_ok() {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("the guest's service did not answer within 60 s of start".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        direct.push(answered);
    }

    // ebb: the agent holds the port; each round it sleeps the VM on request
    // and one client's first byte of answer is timed.
    let socket = dir.path().join("wake.sock");
    let cfg = Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{vm}\"]\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
         [surrogate]\nawake_path = \"splice\"\n\
         [[vm.{vm}.service]]\nname = \"http\"\nlisten = \"127.0.0.1:{listen}\"\nbackend = \"127.0.0.1:{backend}\"\nhttp = true\n",
        socket.display(),
        dir.path().join("wake.db").display()
    ))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    wait_path(&socket, Duration::from_secs(10))?;
    let client = ebb_daemon::client::Client::new(&socket);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut through = vec![];
    for _ in 0..rounds {
        client.sleep(vm.as_str()).await.map_err(|e| e.to_string())?;
        through.push(block_in_place(|| first_byte(listen, Duration::from_secs(60)))?);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (d, t) = (percentile(&mut direct, 0.5), percentile(&mut through, 0.5));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("wake latency, 512 MiB guest, median of {rounds}:");
    println!("  start of the managed save by hand -> the service's first answer: {:.0} ms", ms(d));
    println!("  a request to the sleeping VM through ebb -> first byte of its answer: {:.0} ms", ms(t));
    println!("  ebb adds {:.0} ms (target < 50 ms)", ms(t) - ms(d));

    awake_overhead(uri, &g, &vm, backend, listen, dir.path()).await?;

    // 200 clients at once: to the sleeping VM through ebb, and straight to the
    // awake VM's host forward.
    let n = 200;
    let limit = Duration::from_secs(30);
    client.sleep(vm.as_str()).await.map_err(|e| e.to_string())?;
    let (ok_through, last_through) = block_in_place(|| crowd(listen, n, limit));
    let (ok_direct, last_direct) = block_in_place(|| crowd(backend, n, limit));
    println!("{n} clients at once, each its own request, {}s limit:", limit.as_secs());
    println!("  through ebb to the sleeping VM: {ok_through} answered, the last after {:.1} s", last_through.as_secs_f64());
    println!("  straight to the awake VM's host forward: {ok_direct} answered, the last after {:.1} s", last_direct.as_secs_f64());

    let _ = stop.send(());
    let _ = agent.await;
    drop(hv);
    let _ = block_in_place(|| g.remove());
    Ok(())
}

/// `n` clients at once at a guest on the lab's network namespace (its
/// virtio-net on a tap, ebb and the clients in the namespace): straight at
/// the awake guest, then through ebb at the same guest asleep. Per outcome:
/// answered, refused (ebb's 503 with its reason), lost; and the answered
/// clients' time from connect to the end of the answer.
async fn surrogate_crowd(n: usize) -> Result<(), String> {
    use crate::crowd;
    use crate::lab::{LabNet, LAB_NETNS, LAB_NET_HOST};
    let prefix = "ebb-bench-crowd-";
    let e = |e: crate::lab::LabError| e.to_string();
    let net = block_in_place(LabNet::ensure).map_err(e)?;
    let lab = block_in_place(|| net.lab()).map_err(e)?;
    block_in_place(|| lab.remove_leftovers(prefix)).map_err(e)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ip = LabNet::guest_ip(2);
    let mut spec = GuestSpec::new(format!("{prefix}a"), Bytes::from_mib(256));
    spec.lab_net = Some(ip);
    spec.console_log = dir.path().join("crowd.log");
    let g = block_in_place(|| lab.create(&spec)).map_err(e)?;
    block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(e)?;
    let (direct_addr, listen) = (std::net::SocketAddr::from((ip, 80)), std::net::SocketAddr::from((LAB_NET_HOST, 8081)));
    let limit = Duration::from_secs(120);
    let run_crowd = |addr| block_in_place(|| net.run(|| crowd::run(addr, n, |_| "/".into(), limit)));
    let direct = run_crowd(direct_addr).map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;

    // ebb in the namespace, a child process: its listener must be there.
    let socket = dir.path().join("crowd.sock");
    let config = dir.path().join("crowd.toml");
    let (wake, replay) = (30, 30);
    std::fs::write(
        &config,
        format!(
            "[agent]\nuri = \"{}\"\ndomains = [\"{}\"]\ntick = \"30s\"\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\nenabled = false\n\
             [surrogate]\nwake_deadline = \"{wake}s\"\nreplay_deadline = \"{replay}s\"\n\
             [[vm.{}.service]]\nname = \"http\"\nlisten = \"{listen}\"\nbackend = \"{direct_addr}\"\nhttp = true\n",
            net.uri(),
            g.name(),
            socket.display(),
            dir.path().join("crowd.db").display(),
            g.name()
        ),
    )
    .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut agent = net
        .command(exe)
        .args(["run", "--config"])
        .arg(&config)
        .env("EBB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start ebb run in {LAB_NETNS}: {e}"))?;
    let through = async {
        wait_path(&socket, Duration::from_secs(10))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = ebb_daemon::client::Client::new(&socket);
        client.sleep(g.name()).await.map_err(|e| e.to_string())?;
        run_crowd(listen).map_err(|e| e.to_string())?.map_err(|e| e.to_string())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = block_in_place(|| g.remove());
    let through = through?;

    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
    println!("{n} clients at once, GET / on a guest's busybox httpd on a tap in netns {LAB_NETNS} (ebb and clients there too):");
    for (what, c) in [("straight at the awake guest", &direct), ("through ebb to the sleeping guest", &through)] {
        println!(
            "  {what}: {} answered, {} refused, {} lost; answered in p50 {}, p99 {}; slowest client {:.1} s",
            c.answered(),
            c.refused(),
            c.lost(),
            ms(c.answer_time(0.5)),
            ms(c.answer_time(0.99)),
            c.slowest().as_secs_f64()
        );
        println!("    {:?}", c.tally());
    }
    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "  through ebb asleep vs straight awake: answered {:.2}x, p50 {}, p99 {} (ebb's bound per client: wake_deadline {wake} s + replay_deadline {replay} s)",
        through.answered() as f64 / direct.answered().max(1) as f64,
        ratio(through.answer_time(0.5), direct.answer_time(0.5)),
        ratio(through.answer_time(0.99), direct.answer_time(0.99))
    );
    Ok(())
}
