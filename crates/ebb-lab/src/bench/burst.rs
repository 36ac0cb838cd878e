//! A burst faster than any tick, on real guests (issue 12): two guests of
//! 512 MiB in a 700 MiB pool, one idle, the other filling 300 MiB of tmpfs
//! in one write (more than it has available at its share). Three cases,
//! each on fresh guests: a balloon with deflate-on-OOM and free page
//! reporting; a stock balloon with the flat headroom; a stock balloon whose
//! needs history shows a burst before (the learned headroom).

use crate::lab::{free_port, Guest, GuestSpec, Lab};
use ebb_core::needs::VmNeeds;
use ebb_core::{Bytes, Millis, VmId};
use ebb_daemon::client::Client;
use ebb_daemon::config::Config;
use ebb_daemon::journal::Journal;
use ebb_daemon::run::{libvirt_connector, run_with};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

const POOL_MIB: u64 = 700;
const BURST_MIB: u64 = 300;
/// How long the burst is watched.
const WATCH: Duration = Duration::from_secs(40);

/// What one case measured.
struct Figures {
    at_burst: Bytes,
    available: Bytes,
    /// The most the guests held together after the burst.
    peak: Bytes,
    /// From the burst to the pool back within its limit while the guest holds the memory.
    restored: Option<Duration>,
    moves: usize,
    oom_kills: u64,
    answered: u32,
    probes: u32,
    holding: bool,
}

pub(super) async fn burst(uri: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lab = block_in_place(|| Lab::connect(uri)).map_err(|e| e.to_string())?;
    println!(
        "a burst of {BURST_MIB} MiB in one write on a guest of 512 MiB at its share of a {POOL_MIB} MiB pool, \
         beside an idle one (ebb ticks every 1 s; probes every 250 ms for {} s):",
        WATCH.as_secs()
    );
    for (tag, stock, learned) in [("safe", false, false), ("stock", true, false), ("learned", true, true)] {
        let f = case(&lab, uri, dir.path(), tag, stock, learned).await?;
        let what = match (stock, learned) {
            (false, _) => "deflate-on-OOM + free page reporting, flat headroom",
            (true, false) => "stock balloon, flat headroom",
            (true, true) => "stock balloon, headroom learned from a burst in its history",
        };
        println!("  {what}:");
        println!(
            "    at the burst: {} with {} available; the guests then held up to {} of the {POOL_MIB} MiB pool",
            f.at_burst, f.available, f.peak
        );
        let restored = match (f.restored, f.peak > Bytes::from_mib(POOL_MIB + 1)) {
            (_, false) => "never over".to_string(),
            (Some(t), true) => format!("{:.1} s", t.as_secs_f64()),
            (None, true) => format!("not within {} s", WATCH.as_secs()),
        };
        println!(
            "    pool back within its limit: {restored}; balloon moves: {}; OOM kills: {}; probes answered: {}/{}; the burst {}",
            f.moves,
            f.oom_kills,
            f.answered,
            f.probes,
            if f.holding { "holds its memory" } else { "did not survive" }
        );
    }
    Ok(())
}

async fn case(lab: &Lab, uri: &str, dir: &Path, tag: &str, stock: bool, learned: bool) -> Result<Figures, String> {
    let prefix = format!("ebb-bench-burst-{tag}-");
    block_in_place(|| lab.remove_leftovers(&prefix)).map_err(|e| e.to_string())?;
    let boot = |name: &str| -> Result<Guest, String> {
        let mut spec = GuestSpec::new(format!("{prefix}{name}"), Bytes::from_mib(512));
        spec.http_port = Some(free_port());
        spec.console_log = dir.join(format!("{tag}-{name}.log"));
        if stock {
            spec.stock_balloon();
        }
        block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())
    };
    let (busy, idle) = (boot("busy")?, boot("idle")?);
    for g in [&busy, &idle] {
        block_in_place(|| g.wait_ready(Duration::from_secs(180))).map_err(|e| e.to_string())?;
    }
    let journal = dir.join(format!("{tag}.db"));
    if learned {
        // Its history: its use once grew by the burst within a second.
        let mut needs = VmNeeds::default();
        let now = Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as u64);
        needs.record_growth(now, Bytes::from_mib(BURST_MIB));
        Journal::open(&journal).and_then(|j| j.save_needs(&VmId::new(busy.name()), &needs, now)).map_err(|e| e.to_string())?;
    }
    let socket = dir.join(format!("{tag}.sock"));
    let cfg = Config::parse(&format!(
        "[agent]\nuri = \"{uri}\"\ndomains = [\"{prefix}*\"]\ntick = \"1s\"\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\npool = \"{POOL_MIB}MiB\"\n",
        socket.display(),
        journal.display()
    ))
    .map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let figures = watch(&socket, &busy).await;
    let _ = stop.send(());
    let _ = agent.await;
    for g in [busy, idle] {
        let _ = block_in_place(|| g.remove());
    }
    figures
}

/// Waits for the pool to settle, bursts, and watches.
async fn watch(socket: &Path, busy: &Guest) -> Result<Figures, String> {
    let client = Client::new(socket);
    let pool = Bytes::from_mib(POOL_MIB);
    let sum = |vms: &[ebb_daemon::api_types::VmInfo]| -> Bytes { vms.iter().filter_map(|v| v.memory.actual).sum() };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(vms) = client.vms().await {
            let settled = vms.len() == 2 && vms.iter().all(|v| v.memory.actual.is_some() && v.memory.target == v.memory.actual);
            let floors: Bytes = vms.iter().filter_map(|v| v.memory.floor).sum();
            if settled && sum(&vms) <= pool.max(floors + Bytes::from_mib(1)) {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err("the guests did not settle in the pool within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let vms = client.vms().await.map_err(|e| e.to_string())?;
    let at_burst = vms.iter().find(|v| v.name == busy.name()).and_then(|v| v.memory.actual).unwrap_or_default();
    let available = block_in_place(|| busy.status()).map_err(|e| e.to_string())?.mem_available;
    let moves_before = moves(&client).await?;

    let t0 = Instant::now();
    block_in_place(|| busy.start_mem_workload(BURST_MIB, BURST_MIB, 0, 0)).map_err(|e| e.to_string())?;
    let (mut answered, mut probes, mut peak, mut restored, mut holding) = (0, 0, Bytes::ZERO, None, false);
    while t0.elapsed() < WATCH {
        probes += 1;
        let st = block_in_place(|| busy.status());
        answered += st.is_ok() as u32;
        holding = st.as_ref().is_ok_and(|s| s.workload_state == "holding");
        if let Ok(vms) = client.vms().await {
            let now = sum(&vms);
            peak = peak.max(now);
            if holding && peak > pool + Bytes::from_mib(1) && restored.is_none() && now <= pool + Bytes::from_mib(1) {
                restored = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let oom_kills = match block_in_place(|| busy.status()) {
        Ok(s) => s.oom_kills,
        // The service is gone: the console still tells.
        Err(_) => busy.console_log().matches("Killed process").count() as u64,
    };
    Ok(Figures {
        at_burst,
        available,
        peak,
        restored,
        moves: moves(&client).await? - moves_before,
        oom_kills,
        answered,
        probes,
        holding,
    })
}

/// Balloon targets ebb set so far (the journal's set_balloon_target entries).
async fn moves(client: &Client) -> Result<usize, String> {
    let events = client.events(None, 100_000).await.map_err(|e| e.to_string())?;
    Ok(events.iter().filter(|e| e.kind == "set_balloon_target").count())
}
