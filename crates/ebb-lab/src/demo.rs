//! `ebb demo`: the main job on a fresh machine. Three small real guests,
//! a pool smaller than their sum, and a memory-hungry workload in one of
//! them: memory visibly moves from the idle guests to the busy one and
//! back, with no oom kill. The guests are removed afterwards.

use ebb_daemon::api_types::VmInfo;
use ebb_daemon::client::Client;
use ebb_daemon::config::Config;
use crate::lab::{free_port, Guest, GuestSpec, GuestStatus, Lab};
use ebb_daemon::run::{libvirt_connector, run_with};
use ebb_core::Bytes;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Plain log lines instead of a live display (for CI and logs).
    #[arg(long)]
    pub no_tty: bool,
    /// libvirt URI of the host to run the demo guests on.
    #[arg(long, default_value = "qemu:///system")]
    pub uri: String,
    /// MiB the busy guest's workload allocates.
    #[arg(long, default_value_t = 300)]
    pub workload_mib: u64,
    /// Serve the live web view at this address during the demo (e.g.
    /// 127.0.0.1:8740); its URL, with a fresh write token, is printed.
    #[arg(long, value_name = "ADDR")]
    pub web: Option<String>,
    /// After the demo, keep the guests and the agent (and the web view)
    /// until Ctrl-C, to look around.
    #[arg(long)]
    pub stay: bool,
}

const PREFIX: &str = "ebb-demo-";
const GUESTS: usize = 3;
const GUEST_MAX: Bytes = Bytes::from_mib(512);
const POOL: Bytes = Bytes::from_mib(900);

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let started = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
    let say = |msg: &str| println!("[{:5.1}s] {msg}", started.elapsed().as_secs_f64());

    let lab = block_in_place(|| Lab::connect(&args.uri)).map_err(|e| e.to_string())?;
    let leftovers = block_in_place(|| lab.remove_leftovers(PREFIX)).map_err(|e| e.to_string())?;
    if !leftovers.is_empty() {
        say(&format!("removed leftovers of an earlier demo: {}", leftovers.join(", ")));
    }
    say("preparing the guest image (built once, then cached)");
    block_in_place(|| lab.image().map(|_| ())).map_err(|e| e.to_string())?;

    say(&format!("booting {GUESTS} guests of {GUEST_MAX} each (software-emulated, ~10-20 s)"));
    let mut guests: Vec<Guest> = Vec::new();
    for i in 1..=GUESTS {
        let mut spec = GuestSpec::new(format!("{PREFIX}{i}"), GUEST_MAX);
        spec.http_port = Some(free_port());
        spec.console_log = dir.path().join(format!("{PREFIX}{i}.log"));
        guests.push(block_in_place(|| lab.create(&spec)).map_err(|e| e.to_string())?);
    }
    for g in &guests {
        let took = block_in_place(|| g.wait_ready(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        say(&format!("{} is up ({:.1} s)", g.name(), took.as_secs_f64()));
    }

    let socket = dir.path().join("ebb.sock");
    let cfg_text = format!(
        "[agent]\nuri = \"{}\"\ndomains = [\"{PREFIX}*\"]\ntick = \"1s\"\nsocket = \"{}\"\njournal = \"{}\"\n[memory]\npool = \"{}MiB\"\n",
        args.uri,
        socket.display(),
        dir.path().join("journal.db").display(),
        POOL.0 >> 20,
    ) + &web_section(&args, dir.path())?;
    let cfg = Config::parse(&cfg_text).map_err(|e| format!("demo config: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_with(cfg, libvirt_connector(), async {
        let _ = stopped.await;
    }));
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline && !agent.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(addr) = &args.web {
        let token = std::fs::read_to_string(dir.path().join("web.token")).unwrap_or_default();
        say(&format!("the web view: http://{addr}/?token={}", token.trim()));
    }
    let mut screen = Screen { tty: !args.no_tty, started, last_line: Instant::now() - Duration::from_secs(60) };

    let outcome = async {
        let title = format!("ebb: a {POOL} pool for {GUESTS} guests of {GUEST_MAX} (their sum is {})", Bytes(GUEST_MAX.0 * GUESTS as u64));
        say(&title);
        // Phase 1: the guests are idle, the pool is short: ebb reclaims.
        let phase = "1/3 the guests are idle and the pool is short: ebb inflates their balloons";
        let converged = screen
            .watch(&client, &guests, phase, Duration::from_secs(60), |vms, _| {
                let sum: Bytes = vms.iter().filter_map(|v| v.memory.actual).sum();
                sum <= POOL && vms.len() == GUESTS && vms.iter().all(|v| v.memory.target == v.memory.actual)
            })
            .await?;
        if !converged {
            return Err(format!("the guests did not fit the {POOL} pool within 60 s"));
        }
        let totals: Vec<String> = guests
            .iter()
            .map(|g| block_in_place(|| g.status()).map_or("?".into(), |s| s.mem_available.to_string()))
            .collect();
        // MemAvailable, not MemTotal: a deflate-on-OOM guest's MemTotal keeps the balloon's pages.
        say(&format!("phase 1 done: the guests fit the pool; the guests themselves now have {} available", totals.join(", ")));

        // Phase 2: one guest needs memory: ebb gives it, taking from the idle ones.
        let busy = &guests[0];
        block_in_place(|| busy.start_mem_workload(args.workload_mib, 8, 250, 20)).map_err(|e| e.to_string())?;
        let phase = format!("2/3 {} allocates {} MiB: ebb deflates its balloon and takes from the idle guests", busy.name(), args.workload_mib);
        let want = args.workload_mib;
        let held = screen
            .watch(&client, &guests, &phase, Duration::from_secs(90), |_, statuses| {
                statuses[0].as_ref().is_some_and(|s| s.workload_state == "holding" && s.workload_mib >= want)
            })
            .await?;
        let status = block_in_place(|| busy.status()).map_err(|e| e.to_string())?;
        if !held {
            return Err(format!("the workload did not get its {want} MiB within 90 s (state {}, {} MiB)", status.workload_state, status.workload_mib));
        }
        if status.oom_kills > 0 {
            return Err(format!("{} reported {} oom kills", busy.name(), status.oom_kills));
        }
        say(&format!("phase 2 done: {} holds {want} MiB, oom kills in the guest: {}", busy.name(), status.oom_kills));

        // Phase 3: the workload ends: memory flows back to an even split.
        block_in_place(|| busy.release_mem_workload()).map_err(|e| e.to_string())?;
        let phase = format!("3/3 {} released its memory: ebb evens the pool out again", busy.name());
        screen
            .watch(&client, &guests, &phase, Duration::from_secs(25), |vms, _| {
                let sizes: Vec<u64> = vms.iter().filter_map(|v| v.memory.actual.map(|b| b.0)).collect();
                let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
                vms.iter().all(|v| v.memory.target == v.memory.actual) && hi - lo < Bytes::from_mib(64).0
            })
            .await?;
        let oom: u64 = guests.iter().filter_map(|g| block_in_place(|| g.status()).ok()).map(|s| s.oom_kills).sum();
        if oom > 0 {
            return Err(format!("the guests reported {oom} oom kills"));
        }
        Ok(())
    }
    .await;

    if args.stay {
        say("the demo is over; the guests and the agent stay until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
    let events = client.events(None, 10_000).await.unwrap_or_default();
    let actions = events.iter().filter(|e| e.kind == "set_balloon_target").count();
    let _ = stop.send(());
    let _ = agent.await;
    say("removing the demo guests");
    for g in guests {
        let _ = block_in_place(|| g.remove());
    }
    match outcome {
        Ok(()) => {
            say(&format!("demo done in {:.0} s: {actions} balloon changes, no oom kill", started.elapsed().as_secs_f64()));
            Ok(())
        }
        Err(e) => Err(format!("demo failed: {e}")),
    }
}

/// `[web]` with a fresh write token (a file in `dir`, root's alone), or
/// nothing without `--web`.
fn web_section(args: &DemoArgs, dir: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(addr) = &args.web else { return Ok(String::new()) };
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("--web {addr:?}: give an address with a port, e.g. 127.0.0.1:8740"));
    }
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).map_err(|e| format!("cannot read /dev/urandom for the web token: {e}"))?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("web.token");
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).and_then(|mut f| f.write_all(token.as_bytes())).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(format!("[web]\nlisten = \"{addr}\"\nwrite_token_file = \"{}\"\n", path.display()))
}

struct Screen {
    tty: bool,
    started: Instant,
    last_line: Instant,
}

impl Screen {
    /// Shows the guests until `done` holds or `limit` passes; true if done.
    async fn watch(
        &mut self,
        client: &Client,
        guests: &[Guest],
        phase: &str,
        limit: Duration,
        done: impl Fn(&[VmInfo], &[Option<GuestStatus>]) -> bool,
    ) -> Result<bool, String> {
        let until = Instant::now() + limit;
        if !self.tty {
            println!("[{:5.1}s] phase {phase}", self.started.elapsed().as_secs_f64());
        }
        loop {
            let vms: Vec<VmInfo> = client.vms().await.map_err(|e| e.to_string())?;
            let statuses: Vec<Option<GuestStatus>> = guests.iter().map(|g| block_in_place(|| g.status()).ok()).collect();
            let finished = done(&vms, &statuses);
            self.show(phase, &vms, guests, finished);
            if finished {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(if self.tty { 400 } else { 1000 })).await;
        }
    }

    fn show(&mut self, phase: &str, vms: &[VmInfo], guests: &[Guest], finished: bool) {
        let t = self.started.elapsed().as_secs_f64();
        let by_name = |name: &str| vms.iter().find(|v| v.name == name);
        if self.tty {
            let mut out = String::from("\x1b[H\x1b[2J");
            out.push_str(&format!("ebb demo  t={t:.1}s   pool {POOL} for {GUESTS} guests of {GUEST_MAX}\nphase {phase}\n\n"));
            out.push_str("guest        size (balloon)  guest uses  ebb's target   # used  = free in guest  . given back to the host\n");
            // ebb's reading of use: a deflate-on-OOM guest's own MemTotal keeps the balloon's pages.
            for g in guests {
                let vm = by_name(g.name());
                let actual = vm.and_then(|v| v.memory.actual).unwrap_or_default();
                let target = vm.and_then(|v| v.memory.target).unwrap_or_default();
                let used = vm.and_then(|v| v.memory.used).unwrap_or_default();
                out.push_str(&format!("{:<12} {:>13}  {:>10}  {:>12}   {}\n", g.name(), actual.to_string(), used.to_string(), target.to_string(), bar(actual, used, 48)));
            }
            let sum: Bytes = vms.iter().filter_map(|v| v.memory.actual).sum();
            out.push_str(&format!("\npool used: {sum} of {POOL}\n"));
            if let Some(r) = vms.iter().rev().find_map(|v| v.memory.last_reason.as_ref().map(|r| (v, r))) {
                out.push_str(&format!("last decision ({}): {}\n", r.0.name, r.1.text));
            }
            print!("{out}");
            let _ = std::io::stdout().flush();
        } else if finished || self.last_line.elapsed() >= Duration::from_secs(2) {
            self.last_line = Instant::now();
            let parts: Vec<String> = guests
                .iter()
                .map(|g| {
                    let vm = by_name(g.name());
                    let used = vm.and_then(|v| v.memory.used).unwrap_or_default();
                    format!(
                        "{} {}→{} (uses {})",
                        g.name(),
                        vm.and_then(|v| v.memory.actual).unwrap_or_default(),
                        vm.and_then(|v| v.memory.target).unwrap_or_default(),
                        used
                    )
                })
                .collect();
            println!("[{t:5.1}s]   {}", parts.join(" | "));
        }
    }
}

/// `#` used, `=` free inside the guest, `.` given back to the host.
fn bar(actual: Bytes, used: Bytes, width: usize) -> String {
    let cells = |b: Bytes| ((b.0 as f64 / GUEST_MAX.0 as f64) * width as f64).round() as usize;
    let (a, u) = (cells(actual).min(width), cells(used.min(actual)).min(width));
    format!("[{}{}{}]", "#".repeat(u), "=".repeat(a - u), ".".repeat(width - a))
}
